"""GET /jobs/{id} `attempts` through the real handler and DynamoDB (moto): 0 before a
job starts, 1 once it ran once, 2 after a failed try was re-run (issue 11 item 9)."""

from __future__ import annotations

from tests.integration.conftest import AgentCaller, ApiCaller


def test_attempts_counts_the_runs_of_a_test(client: ApiCaller, agent_client: AgentCaller) -> None:
    submitted = client.post(
        "/runs",
        {
            "org_id": "acme",
            "app_version_id": "v1",
            "test_paths": ["a.spec.ts", "b.spec.ts"],
            "failure_retries": 1,
        },
    )
    assert submitted.status == 201, submitted.body
    once, twice = submitted.body["job_ids"]
    assert client.get(f"/jobs/{once}").body["attempts"] == 0

    agent_id = agent_client.post("/agents/register", {"target": "emulator", "device_id": "e1"})
    agent_id = agent_id.body["agent_id"]
    batch = agent_client.post(f"/agents/{agent_id}/lease").body["batch"]
    progress = f"/agents/{agent_id}/batches/{batch['batch_id']}/progress"
    assert agent_client.post(progress, {"start": once}).status == 200
    assert client.get(f"/jobs/{once}").body["attempts"] == 1  # running: this run counts
    passed = {"job_id": once, "status": "passed", "duration_s": 1.0}
    failed = {"job_id": twice, "status": "failed", "duration_s": 1.0, "message": "boom"}
    answer = agent_client.post(progress, {"results": [passed], "start": twice})
    assert answer.status == 200, answer.body
    answer = agent_client.post(progress, {"results": [failed], "complete": True})
    assert answer.status == 200, answer.body

    ran_once = client.get(f"/jobs/{once}").body
    assert (ran_once["status"], ran_once["attempts"]) == ("passed", 1), ran_once
    requeued = client.get(f"/jobs/{twice}").body
    assert (requeued["status"], requeued["attempts"]) == ("queued", 1), requeued

    batch = agent_client.post(f"/agents/{agent_id}/lease").body["batch"]
    assert [j["job_id"] for j in batch["jobs"]] == [twice]
    progress = f"/agents/{agent_id}/batches/{batch['batch_id']}/progress"
    assert agent_client.post(progress, {"start": twice}).status == 200
    again = {"job_id": twice, "status": "passed", "duration_s": 1.0}
    assert agent_client.post(progress, {"results": [again], "complete": True}).status == 200

    flaky = client.get(f"/jobs/{twice}").body
    assert (flaky["status"], flaky["flaky"], flaky["attempts"]) == ("passed", True, 2), flaky
