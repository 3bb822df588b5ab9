"""A result an agent marks ``retryable: false`` (BrowserStack refused the credentials)
ends the job as ``error`` through the real handler and DynamoDB (moto), with retries
left; the field is validated (only an error may carry it) and optional."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import AgentCaller, ApiCaller

REFUSED = (
    "install failed: BrowserStack App Automate: BrowserStack refused the credentials (401) "
    "for upload: check BROWSERSTACK_USERNAME and BROWSERSTACK_ACCESS_KEY on this agent "
    "(not retried)"
)


def _error(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "status": "error", "duration_s": 0, "message": REFUSED, **extra}


def test_a_non_retryable_error_ends_each_job_of_the_batch_and_requeues_none(
    client: ApiCaller, agent_client: AgentCaller
) -> None:
    submitted = client.post(
        "/runs",
        {
            "org_id": "acme",
            "app_version_id": "v1",
            "target": "browserstack",
            "test_paths": ["a.spec.ts", "b.spec.ts", "c.spec.ts"],
            "retries": 2,
        },
    )
    assert submitted.status == 201, submitted.body
    first, second, third = submitted.body["job_ids"]
    agent = agent_client.post("/agents/register", {"target": "browserstack", "device_id": "bs1"})
    agent_id = agent.body["agent_id"]
    batch = agent_client.post(f"/agents/{agent_id}/lease").body["batch"]
    assert [j["job_id"] for j in batch["jobs"]] == [first, second, third]
    progress = f"/agents/{agent_id}/batches/{batch['batch_id']}/progress"
    assert agent_client.post(progress, {"start": first}).status == 200

    # Only an error may say no retry can cure it: a 422 naming the field, nothing applied.
    bad = agent_client.post(
        progress, {"results": [{**_error(first), "status": "failed", "retryable": False}]}
    )
    assert bad.status == 422, bad.body
    assert bad.body["message"].startswith("results.0.retryable: ")
    assert client.get(f"/jobs/{first}").body["status"] == "running"

    done = agent_client.post(
        progress, {"results": [_error(first, retryable=False)], "start": second}
    )
    assert done.status == 200, done.body
    assert [(r["job_id"], r["status"]) for r in done.body["results"]] == [(first, "error")]
    # The older single-result route takes the field too.
    legacy = agent_client.post(
        f"/agents/{agent_id}/jobs/{second}/result",
        {
            "batch_id": batch["batch_id"],
            **{k: v for k, v in _error(second, retryable=False).items() if k != "job_id"},
        },
    )
    assert legacy.status == 200, legacy.body
    assert legacy.body["status"] == "error"
    # An ordinary error (the field omitted, as older agents send it) is still retried.
    assert agent_client.post(progress, {"start": third}).status == 200
    last = agent_client.post(progress, {"results": [_error(third)], "complete": True})
    assert last.status == 200, last.body
    assert [r["status"] for r in last.body["results"]] == ["queued"]
    assert last.body["requeued"] == 0

    for job_id in (first, second):
        job = client.get(f"/jobs/{job_id}").body
        assert (job["status"], job["attempts"]) == ("error", 1), job  # each ran once
        assert client.get(f"/jobs/{job_id}/result").body["message"] == REFUSED
    retried = client.get(f"/jobs/{third}").body
    assert (retried["status"], retried["attempts"]) == ("queued", 1), retried
    run = client.get(f"/runs/{submitted.body['run_id']}").body
    assert run["counts"]["error"] == 2, run
