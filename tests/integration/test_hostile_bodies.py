"""Hostile bodies get a 4xx with a message on every route, and write nothing (issue 8, 4-5)."""

from __future__ import annotations

import json

import boto3
import pytest

from qgjob_backend.config import Config
from qgjob_backend.handlers.body import MAX_JSON_DEPTH
from tests.integration.conftest import ApiCaller, receive_all

JOB = {"org_id": "acme", "app_version_id": "v1", "test_path": "tests/a.spec.js"}
SUITE = {"org_id": "acme", "app_version_id": "v1", "test_paths": ["tests/a.spec.js"]}

CLIENT_ROUTES = ["/jobs", "/runs", "/jobs/job-x/cancel"]
AGENT_ROUTES = [
    "/agents/register",
    "/agents/device-d1/heartbeat",
    "/agents/device-d1/lease",
    "/agents/device-d1/batches/b1/installed",
    "/agents/device-d1/jobs/j1/start",
    "/agents/device-d1/jobs/j1/result",
    "/agents/device-d1/batches/b1/complete",
    "/agents/device-d1/deregister",
]


def _nested(depth: int, *, objects: bool = False) -> bytes:
    """`depth` levels of arrays (or of objects) around a 1: 2 bytes a level."""
    opener, closer = ('{"a":', "}") if objects else ("[", "]")
    return (opener * depth + "1" + closer * depth).encode()


def _jobs_in_table(session: boto3.Session, config: Config) -> int:
    return int(
        session.client("dynamodb").scan(TableName=config.jobs_table, Select="COUNT")["Count"]
    )


@pytest.fixture
def agent(agent_client: ApiCaller) -> ApiCaller:
    """The agent `device-d1`, registered: its routes get past auth to the body check."""
    registered = agent_client.post("/agents/register", {"target": "device", "device_id": "d1"})
    assert registered.status == 200, registered.body
    return agent_client


def _caller(path: str, client: ApiCaller, agent: ApiCaller) -> ApiCaller:
    return agent if path.startswith("/agents/") else client


@pytest.mark.parametrize("path", CLIENT_ROUTES + AGENT_ROUTES)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_a_400_on_every_post_route(
    client: ApiCaller,
    agent: ApiCaller,
    aws_session: boto3.Session,
    config: Config,
    path: str,
    depth: int,
) -> None:
    response = _caller(path, client, agent).post(path, raw_body=_nested(depth))

    assert response.status == 400, response.body
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in response.body["message"]
    assert _jobs_in_table(aws_session, config) == 0


@pytest.mark.parametrize("path", ["/jobs", "/runs", "/agents/register"])
def test_deep_nesting_inside_a_field_is_a_400(
    client: ApiCaller, agent: ApiCaller, path: str
) -> None:
    body = b'{"org_id": "acme", "app_version_id": "v1", "test_path": ' + _nested(1000) + b"}"

    response = _caller(path, client, agent).post(path, raw_body=body)

    assert response.status == 400, response.body
    assert "nested deeper" in response.body["message"]


def test_nesting_up_to_the_limit_is_validated_as_usual(client: ApiCaller) -> None:
    inner = _nested(MAX_JSON_DEPTH - 1, objects=True)
    body = b'{"org_id": "acme", "app_version_id": "v1", "test_path": ' + inner + b"}"

    response = client.post("/jobs", raw_body=body)

    assert response.status == 422
    assert "test_path" in response.body["message"]


def test_brackets_inside_strings_do_not_count_as_nesting(client: ApiCaller) -> None:
    response = client.post("/jobs", {**JOB, "test_path": "tests/" + "[{" * 200 + ".spec.js"})

    assert response.status == 201, response.body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs", [JOB]),
        ("/jobs", [JOB, JOB]),
        ("/runs", [SUITE]),
        ("/runs", [SUITE, SUITE]),
        ("/jobs", "tests/a.spec.js"),
        ("/jobs", 1),
        ("/runs", True),
        ("/jobs", None),  # the JSON text `null`
    ],
)
def test_a_body_that_is_not_an_object_is_a_422_naming_body_and_writes_nothing(
    client: ApiCaller, aws_session: boto3.Session, config: Config, path: str, body: object
) -> None:
    response = client.post(path, raw_body=json.dumps(body).encode())

    assert response.status == 422, response.body
    assert response.body["message"].startswith("body: ")
    assert "JSON object" in response.body["message"]
    assert _jobs_in_table(aws_session, config) == 0
    assert receive_all(aws_session, config.jobs_queue_url) == []


@pytest.mark.parametrize("path", ["/agents/register", "/agents/device-d1/lease"])
def test_an_array_body_on_an_agent_route_is_a_422(agent: ApiCaller, path: str) -> None:
    body = [{"target": "device", "device_id": "d1"}]

    response = agent.post(path, raw_body=json.dumps(body).encode())

    assert response.status == 422, response.body
    assert response.body["message"].startswith("body: ")


@pytest.mark.parametrize(
    "number",
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 5000],
)
@pytest.mark.parametrize("path", ["/jobs", "/agents/device-d1/jobs/j1/result"])
def test_numbers_json_cannot_carry_are_a_400(
    client: ApiCaller, agent: ApiCaller, path: str, number: str
) -> None:
    body = f'{{"org_id": "acme", "priority": {number}, "duration_s": {number}}}'.encode()

    response = _caller(path, client, agent).post(path, raw_body=body)

    assert response.status == 400, response.body
    assert response.body["message"].startswith("body: ")


def test_an_empty_body_on_a_route_that_needs_one_is_still_a_422(client: ApiCaller) -> None:
    response = client.post("/jobs", raw_body=b"")

    assert response.status == 422
    assert "body" in response.body["message"]


def test_an_empty_object_on_a_route_without_a_body_is_accepted(agent: ApiCaller) -> None:
    assert agent.post("/agents/device-d1/lease", {}).body["batch"] is None
