"""POST /runs/{id}/cancel and /jobs/{id}/cancel through the real handler on moto, and an
agent hearing of the cancel in its heartbeat and progress answers."""

from __future__ import annotations

import boto3

from qgjob_backend.config import Config
from tests.integration.conftest import AgentCaller, ApiCaller, dispatch_queue

SUITE = {
    "org_id": "acme",
    "app_version_id": "v9",
    "target": "device",
    "test_paths": ["tests/a.spec.js", "tests/b.spec.js", "tests/c.spec.js"],
}


def test_a_run_is_cancelled_page_by_page_and_its_agent_is_told(
    client: ApiCaller, agent_client: AgentCaller, aws_session: boto3.Session, config: Config
) -> None:
    run = client.post("/runs", SUITE).body
    dispatch_queue(aws_session, config)
    assert agent_client.post("/agents/register", {"target": "device", "device_id": "d1"}).status
    batch = agent_client.post("/agents/device-d1/lease").body["batch"]
    batch_id = batch["batch_id"]
    first = batch["jobs"][0]["job_id"]
    started = agent_client.post(f"/agents/device-d1/jobs/{first}/start", {"batch_id": batch_id})
    assert started.body["status"] == "running"

    page = client.post(f"/runs/{run['run_id']}/cancel?limit=2")

    assert page.status == 200, page.body
    assert page.body["cancelled"] == 2
    assert page.body["next_cursor"]
    rest = client.post(f"/runs/{run['run_id']}/cancel?cursor={page.body['next_cursor']}")
    assert (rest.status, rest.body["cancelled"], rest.body["next_cursor"]) == (200, 1, None)
    assert rest.body["run"]["counts"] == {"cancelled": 3}
    assert rest.body["run"]["finished"] is True
    # The agent's next heartbeat names the cancelled jobs of its batch.
    beat = agent_client.post("/agents/device-d1/heartbeat")
    assert beat.status == 200
    assert sorted(beat.body["cancelled_job_ids"]) == sorted(j["job_id"] for j in batch["jobs"])
    # Its late "passed" is not applied; the progress answer names the cancels too.
    late = agent_client.post(
        f"/agents/device-d1/batches/{batch_id}/progress",
        {"results": [{"job_id": first, "status": "passed", "duration_s": 3.0}], "complete": True},
    )
    assert late.status == 200, late.body
    assert late.body["results"][0] == {
        "job_id": first,
        "accepted": True,
        "status": "cancelled",
        "message": None,
    }
    assert late.body["completed"] is True
    assert set(late.body["cancelled_job_ids"]) == {j["job_id"] for j in batch["jobs"]}
    view = client.get(f"/runs/{run['run_id']}").body
    assert view["counts"] == {"cancelled": 3}
    jobs = client.get(f"/runs/{run['run_id']}/jobs").body["jobs"]
    assert {j["status"] for j in jobs} == {"cancelled"}
    # Repeating is safe.
    again = client.post(f"/runs/{run['run_id']}/cancel")
    assert (again.status, again.body["cancelled"]) == (200, 0)


def test_run_cancel_errors(
    client: ApiCaller, other_org_token: str, aws_session: boto3.Session, config: Config
) -> None:
    run = client.post("/runs", SUITE).body
    path = f"/runs/{run['run_id']}/cancel"

    assert client.post(path, token=other_org_token).status == 404
    assert client.post("/runs/run-nope/cancel").status == 404
    assert client.post(path, token=None).status == 401
    assert client.post(f"{path}?cursor=garbage").status == 400
    assert client.post(f"{path}?limit=0").status == 422
    assert client.post(f"{path}?limit=101").status == 422
    assert client.get(f"/runs/{run['run_id']}").body["counts"] == {"queued": 3}


def test_job_cancel_of_a_started_job_and_of_a_finished_one(
    client: ApiCaller, agent_client: AgentCaller, aws_session: boto3.Session, config: Config
) -> None:
    run = client.post("/runs", {**SUITE, "test_paths": ["tests/a.spec.js"]}).body
    (job_id,) = run["job_ids"]
    dispatch_queue(aws_session, config)
    agent_client.post("/agents/register", {"target": "device", "device_id": "d2"})
    batch_id = agent_client.post("/agents/device-d2/lease").body["batch"]["batch_id"]
    agent_client.post(f"/agents/device-d2/jobs/{job_id}/start", {"batch_id": batch_id})

    cancelled = client.post(f"/jobs/{job_id}/cancel")

    assert cancelled.status == 200, cancelled.body
    assert cancelled.body["status"] == "cancelled"
    assert cancelled.body["message"] == "cancelled while running on agent device-d2"
    assert client.post(f"/jobs/{job_id}/cancel").body["status"] == "cancelled"  # repeat

    other = client.post("/runs", {**SUITE, "app_version_id": "v10", "test_paths": ["t/x.js"]})
    (done_id,) = other.body["job_ids"]
    dispatch_queue(aws_session, config)
    agent_client.post("/agents/device-d2/batches/" + batch_id + "/complete")
    batch2 = agent_client.post("/agents/device-d2/lease").body["batch"]["batch_id"]
    agent_client.post(f"/agents/device-d2/jobs/{done_id}/start", {"batch_id": batch2})
    agent_client.post(
        f"/agents/device-d2/jobs/{done_id}/result",
        {"batch_id": batch2, "status": "passed", "duration_s": 1.0},
    )
    finished = client.post(f"/jobs/{done_id}/cancel")
    assert finished.status == 409
    assert "already finished" in finished.body["message"]
