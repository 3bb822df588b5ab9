"""Input validation, auth and tenancy of the HTTP API, through real proxy events."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from infra.events import HttpRequest, LambdaContext, build_proxy_event
from qgjob_backend.config import Config
from qgjob_backend.handlers import api
from qgjob_backend.wiring import Services
from tests.integration.conftest import ApiCaller, receive_all

VALID = {
    "org_id": "acme",
    "app_version_id": "v1",
    "test_path": "tests/onboarding.spec.js",
    "priority": 5,
    "target": "emulator",
}


def _without(field: str) -> dict[str, Any]:
    return {k: v for k, v in VALID.items() if k != field}


def _jobs_in_table(session: boto3.Session, config: Config) -> int:
    return int(
        session.client("dynamodb").scan(TableName=config.jobs_table, Select="COUNT")["Count"]
    )


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (_without("org_id"), 422, "org_id"),
        (_without("test_path"), 422, "test_path"),
        ({**VALID, "target": "toaster"}, 422, "target"),
        ({**VALID, "priority": 0}, 422, "priority"),
        ({**VALID, "priority": 11}, 422, "priority"),
        ({**VALID, "priority": "5"}, 422, "priority"),
        ({**VALID, "test_path": "tests/../../etc/passwd"}, 422, "test_path"),
        ({**VALID, "test_path": "/abs/path.spec.js"}, 422, "test_path"),
        ({**VALID, "test_path": ""}, 422, "test_path"),
        ({**VALID, "org_id": "a" * 65}, 422, "org_id"),
        ({**VALID, "app_version_id": "has space"}, 422, "app_version_id"),
        ({**VALID, "unexpected": 1}, 422, "unexpected"),
        ([1, 2, 3], 422, "body"),
    ],
)
def test_malformed_submission_is_rejected_naming_the_field_and_writes_nothing(
    client: ApiCaller,
    aws_session: boto3.Session,
    config: Config,
    body: Any,
    status: int,
    field: str,
) -> None:
    response = client.post("/jobs", body)

    assert response.status == status
    assert field in response.body["message"]
    assert _jobs_in_table(aws_session, config) == 0
    assert receive_all(aws_session, config.jobs_queue_url) == []


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "JSON"),
        (b"", 422, "body"),
        (json.dumps({**VALID, "test_path": "x" * (1024 * 1024)}).encode(), 413, "body"),
    ],
)
def test_unparseable_or_oversize_body_is_a_4xx(
    client: ApiCaller,
    aws_session: boto3.Session,
    config: Config,
    raw: bytes,
    status: int,
    needle: str,
) -> None:
    response = client.post("/jobs", raw_body=raw)

    assert response.status == status
    assert needle in response.body["message"]
    assert _jobs_in_table(aws_session, config) == 0


def test_suite_with_one_bad_path_writes_no_job(
    client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    suite = {**_without("test_path"), "test_paths": ["tests/ok.spec.js", "../escape.spec.js"]}

    response = client.post("/runs", suite)

    assert response.status == 422
    assert "test_paths.1" in response.body["message"]
    assert _jobs_in_table(aws_session, config) == 0


def test_no_token_is_401_and_bad_token_is_401(client: ApiCaller) -> None:
    assert client.post("/jobs", VALID, token=None).status == 401
    bad = client.post("/jobs", VALID, token="qgj_org_nope")
    assert bad.status == 401
    assert "invalid token" in bad.body["message"]
    assert client.get("/health", token=None).body["status"] == "ok"


def test_other_orgs_job_and_run_are_404(client: ApiCaller, other_org_token: str) -> None:
    created = client.post("/jobs", VALID).body
    job_id, run_id = created["job_id"], created["run_id"]

    assert client.get(f"/jobs/{job_id}").status == 200
    assert client.get(f"/jobs/{job_id}", token=other_org_token).status == 404
    assert client.get(f"/jobs/{job_id}/result", token=other_org_token).status == 404
    assert client.get(f"/runs/{run_id}", token=other_org_token).status == 404
    assert client.post(f"/jobs/{job_id}/cancel", token=other_org_token).status == 404


def test_submitting_for_another_org_is_403(client: ApiCaller) -> None:
    response = client.post("/jobs", {**VALID, "org_id": "globex"})

    assert response.status == 403
    assert "org_id" in response.body["message"]


def test_agent_token_cannot_submit_and_org_token_cannot_lease(
    client: ApiCaller, agent_client: ApiCaller
) -> None:
    assert agent_client.post("/jobs", VALID).status == 403
    register = client.post("/agents/register", {"target": "emulator", "device_id": "e1"})
    assert register.status == 403


def test_idempotency_key_returns_the_same_run_and_rejects_a_different_payload(
    client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    body = {**VALID, "idempotency_key": "ci-build-42"}
    first = client.post("/jobs", body)
    again = client.post("/jobs", body)
    changed = client.post("/jobs", {**body, "priority": 1})

    assert first.status == 201
    assert again.status == 200
    assert again.body["job_id"] == first.body["job_id"]
    assert again.body["replayed"] is True
    assert changed.status == 409
    assert "idempotency_key" in changed.body["message"]
    assert _jobs_in_table(aws_session, config) == 1


def test_result_says_not_finished_yet_until_the_job_ends(client: ApiCaller) -> None:
    job_id = client.post("/jobs", VALID).body["job_id"]

    result = client.get(f"/jobs/{job_id}/result")

    assert result.status == 202
    assert result.body["finished"] is False
    assert "not finished yet" in result.body["message"]


def test_cancel_a_queued_job(client: ApiCaller) -> None:
    job_id = client.post("/jobs", VALID).body["job_id"]

    cancelled = client.post(f"/jobs/{job_id}/cancel")

    assert cancelled.status == 200
    assert cancelled.body["status"] == "cancelled"
    assert client.get(f"/jobs/{job_id}/result").body["finished"] is True


def test_unknown_route_is_404_naming_it(client: ApiCaller) -> None:
    response = client.get("/nope")

    assert response.status == 404
    assert "GET /nope" in response.body["message"]


def test_no_token_is_401_before_the_body_is_even_read(client: ApiCaller) -> None:
    for path, body in (("/runs", {"x": 1}), ("/agents/register", {"x": 1}), ("/jobs", None)):
        response = client.post(path, body, token=None)
        assert response.status == 401, (path, response.body)
    assert client.post("/jobs", raw_body=b"{", token=None).status == 401


def test_a_json_body_is_read_as_json_whatever_the_content_type(
    client: ApiCaller, services: Services, org_token: str
) -> None:
    event = build_proxy_event(
        HttpRequest(
            "POST",
            "/v1/jobs",
            [
                ("Host", "localhost"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", f"Bearer {org_token}"),
            ],
            json.dumps(VALID).encode(),
            "127.0.0.1",
        ),
        stage="v1",
        request_id="r-1",
        account_id="123456789012",
        api_id="local",
    )

    result = api.lambda_handler(event, LambdaContext("ApiFunction", "us-east-1", "123456789012"))

    assert result["statusCode"] == 201, result["body"]


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b"\x80abc", '{"a": "\u00e9"}'.encode("latin-1")])
def test_a_body_that_is_not_utf8_is_a_400(client: ApiCaller, raw: bytes) -> None:
    response = client.post("/jobs", raw_body=raw)

    assert response.status == 400
    assert "UTF-8" in response.body["message"]


def test_an_overlong_id_in_the_path_is_a_404(client: ApiCaller) -> None:
    response = client.get("/jobs/" + "j" * 3000)

    assert response.status == 404
    assert "path segment" in response.body["message"]
