"""Run polls and run pages through the real handler on moto: a poll is two reads of one
item each (the run's counters, its pool's queue snapshot), the jobs come a bounded page
at a time, and every status these routes answer is in the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from qgjob_backend.config import Config
from tests.integration.conftest import ApiCaller, ApiResponse, dispatch_queue

OPENAPI = json.loads(
    (Path(__file__).parents[2] / "functions" / "qgjob_backend" / "openapi.json").read_text()
)


def suite(tests: int, version: str = "v1") -> dict[str, Any]:
    return {
        "org_id": "acme",
        "app_version_id": version,
        "test_paths": [f"tests/t{i:04d}.spec.js" for i in range(tests)],
    }


class DynamoCalls:
    """Every DynamoDB request the clients of this session make (a botocore event hook)."""

    def __init__(self, session: boto3.Session) -> None:
        self.calls: list[tuple[str, str, bool | None]] = []
        session.events.register("before-parameter-build.dynamodb", self._record)

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        table = params.get("TableName") or ",".join(sorted(params.get("RequestItems") or {}))
        self.calls.append((model.name, table, params.get("ConsistentRead")))

    def during(self, call: Any) -> list[tuple[str, str, bool | None]]:
        start = len(self.calls)
        call()
        return self.calls[start:]


@pytest.fixture
def dynamo_calls(aws_session: boto3.Session) -> DynamoCalls:
    # Listed before `client` in a test, so the hook is there before any client is built.
    return DynamoCalls(aws_session)


def documented(method: str, path: str, response: ApiResponse) -> ApiResponse:
    """The response, after checking the OpenAPI document lists its status for the route."""
    route = path.split("?")[0]
    for template, operations in OPENAPI["paths"].items():
        parts, actual = template.split("/"), route.split("/")
        if len(parts) == len(actual) and all(
            p == a or p.startswith("{") for p, a in zip(parts, actual, strict=True)
        ):
            assert str(response.status) in operations[method.lower()]["responses"], (
                f"{method} {template} answered {response.status}, not in the OpenAPI document"
            )
            return response
    raise AssertionError(f"{path} is not in the OpenAPI document")


def get(client: ApiCaller, path: str, **kwargs: Any) -> ApiResponse:
    return documented("GET", path, client.get(path, **kwargs))


def test_a_run_poll_reads_two_items_however_large_the_run_and_backlog(
    dynamo_calls: DynamoCalls, client: ApiCaller, config: Config
) -> None:
    small = client.post("/runs", suite(10, "small")).body
    large = client.post("/runs", suite(200, "large")).body

    polls = [
        dynamo_calls.during(lambda run=run: get(client, f"/runs/{run['run_id']}"))
        for run in (small, large)
    ]

    # The run's counters and its pool's queue snapshot (position, ETA): one item each,
    # eventually consistent (half a unit each).
    two_reads = [("GetItem", config.runs_table, False)] * 2
    assert polls == [two_reads, two_reads]


def test_a_run_reports_progress_from_its_counters(
    client: ApiCaller, agent_client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    run = client.post("/runs", suite(3)).body
    view = get(client, f"/runs/{run['run_id']}").body
    assert (view["total"], view["counts"], view["finished"], view["passed"]) == (
        3,
        {"queued": 3},
        False,
        False,
    )
    dispatch_queue(aws_session, config)
    agent_client.post("/agents/register", {"target": "emulator", "device_id": "e1"})
    batch = agent_client.post("/agents/emulator-e1/lease").body["batch"]
    assert get(client, f"/runs/{run['run_id']}").body["counts"] == {"active": 3}

    for job, status in zip(batch["jobs"], ("passed", "passed", "failed"), strict=True):
        path = f"/agents/emulator-e1/jobs/{job['job_id']}"
        agent_client.post(f"{path}/start", {"batch_id": batch["batch_id"]})
        body = {"batch_id": batch["batch_id"], "status": status, "duration_s": 1.0}
        assert agent_client.post(f"{path}/result", body).status == 200
        agent_client.post(f"{path}/result", body)  # a retried delivery counts nothing

    view = get(client, f"/runs/{run['run_id']}").body
    assert (view["counts"], view["finished"], view["passed"]) == (
        {"passed": 2, "failed": 1},
        True,
        False,
    )
    metrics = documented("GET", "/metrics", client.get("/metrics")).body
    assert metrics["jobs_by_status"] == {"passed": 2, "failed": 1}
    assert (metrics["batches"], metrics["agent_app_pairs"]) == (1, 1)


def pages(client: ApiCaller, run_id: str, limit: int) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = get(client, f"/runs/{run_id}/jobs{query}")
        assert page.status == 200, page.body
        yield page.body
        cursor = page.body["next_cursor"]
        if cursor is None:
            return


def test_a_runs_jobs_come_a_page_at_a_time_in_suite_order(client: ApiCaller) -> None:
    run = client.post("/runs", suite(120)).body

    read = list(pages(client, run["run_id"], 50))

    assert [len(p["jobs"]) for p in read] == [50, 50, 20]
    assert [j["job_id"] for p in read for j in p["jobs"]] == run["job_ids"]
    assert read[0]["jobs"][0]["test_path"] == "tests/t0000.spec.js"
    assert [len(p["jobs"]) for p in pages(client, run["run_id"], 40)] == [40] * 3
    default = get(client, f"/runs/{run['run_id']}/jobs").body
    assert len(default["jobs"]) == 100
    assert default["next_cursor"]


def test_a_page_request_is_checked(client: ApiCaller, other_org_token: str) -> None:
    run = client.post("/runs", suite(3)).body
    other = client.post("/runs", suite(3, "v2")).body
    run_id = run["run_id"]
    first = get(client, f"/runs/{run_id}/jobs?limit=1").body

    for limit in ("0", "101", "x"):
        answer = get(client, f"/runs/{run_id}/jobs?limit={limit}")
        assert answer.status == 422
        assert "limit" in answer.body["message"]
    for cursor in ("garbage", "e30", first["next_cursor"] + "x"):
        answer = get(client, f"/runs/{run_id}/jobs?cursor={cursor}")
        assert answer.status == 400, cursor
        assert "cursor" in answer.body["message"]
    foreign = get(client, f"/runs/{other['run_id']}/jobs?cursor={first['next_cursor']}")
    assert foreign.status == 400  # another run's cursor
    for path in (f"/runs/{run_id}", f"/runs/{run_id}/jobs"):
        assert get(client, path, token=other_org_token).status == 404
        assert get(client, path, token=None).status == 401
    assert get(client, "/runs/run-unknown/jobs").status == 404
    assert get(client, "/runs/org%23acme%230").status == 404  # a metrics shard is no run
