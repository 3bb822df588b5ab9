"""The whole path through the real handlers on moto: submit, queue, dispatch, run, report."""

from __future__ import annotations

import json

import boto3

from qgjob_backend.config import Config
from qgjob_backend.schema import Target
from tests.integration.conftest import ApiCaller, dispatch_queue, receive_all, state_store_of

SUITE = {
    "org_id": "acme",
    "app_version_id": "v1.2.3",
    "target": "device",
    "priority": 3,
    "test_paths": ["tests/login.spec.js", "tests/cart.spec.js", "tests/pay.spec.js"],
}


def test_a_submit_writes_the_jobs_into_the_backlog_and_sends_one_plan_request(
    client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    response = client.post("/runs", SUITE)

    assert response.status == 201, response.body
    messages = receive_all(aws_session, config.jobs_queue_url)
    # The plan request carries the submit's correlation id (the run's id) to the dispatcher.
    plan_request = {"plan": True, "correlation_id": response.body["run_id"]}
    assert [json.loads(m["Body"]) for m in messages] == [plan_request]
    assert messages[0]["Attributes"]["MessageGroupId"] == "plan"
    store = state_store_of(aws_session, config)
    backlog = [j.job_id for j in store.backlog(Target.DEVICE)]
    assert backlog == response.body["job_ids"]  # in submission order, each one once


def test_suite_runs_on_one_agent_with_one_install(
    client: ApiCaller, agent_client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    run = client.post("/runs", SUITE).body
    assert dispatch_queue(aws_session, config) == {"batchItemFailures": []}
    for device in ("d1", "d2"):
        assert (
            agent_client.post("/agents/register", {"target": "device", "device_id": device}).status
            == 200
        )
    other = agent_client.post("/agents/register", {"target": "emulator", "device_id": "e1"})
    assert other.status == 200

    assert agent_client.post("/agents/emulator-e1/lease").body["batch"] is None
    leased = agent_client.post("/agents/device-d1/lease").body["batch"]
    assert agent_client.post("/agents/device-d2/lease").body["batch"] is None

    assert leased["install_required"] is True
    assert [j["job_id"] for j in leased["jobs"]] == run["job_ids"]
    batch_id = leased["batch_id"]
    assert agent_client.post(f"/agents/device-d1/batches/{batch_id}/installed").status == 200
    for job in leased["jobs"]:
        started = agent_client.post(
            f"/agents/device-d1/jobs/{job['job_id']}/start", {"batch_id": batch_id}
        )
        assert started.body["status"] == "running"
        status = "failed" if "pay" in job["test_path"] else "passed"
        reported = agent_client.post(
            f"/agents/device-d1/jobs/{job['job_id']}/result",
            {"batch_id": batch_id, "status": status, "duration_s": 1.5, "output": "ok\n" * 10},
        )
        assert reported.status == 200, reported.body
    assert agent_client.post(f"/agents/device-d1/batches/{batch_id}/complete").body == {
        "requeued": 0
    }

    view = client.get(f"/runs/{run['run_id']}").body
    assert view["finished"] is True
    assert view["passed"] is False
    assert view["counts"] == {"passed": 2, "failed": 1}
    assert "jobs" not in view  # a poll reads the counters only; the jobs are paged
    page = client.get(f"/runs/{run['run_id']}/jobs").body
    assert [j["job_id"] for j in page["jobs"]] == run["job_ids"]
    assert page["next_cursor"] is None
    assert {j["agent_id"] for j in page["jobs"]} == {"device-d1"}
    metrics = client.get("/metrics").body
    assert metrics == {
        "jobs_by_status": {"passed": 2, "failed": 1},
        "batches": 1,
        "installs": 1,
        "agent_app_pairs": 1,
    }
    result = client.get(f"/jobs/{run['job_ids'][0]}/result")
    assert result.status == 200
    assert result.body["passed"] is True
    assert result.body["output"].startswith("ok")
