"""A replayed submit (same idempotency key) reports the current state (issue 8, item 6)."""

from __future__ import annotations

from typing import Any

import boto3

from qgjob_backend.config import Config
from tests.integration.conftest import ApiCaller, dispatch_queue

JOB = {
    "org_id": "acme",
    "app_version_id": "v1",
    "target": "device",
    "test_path": "tests/login.spec.js",
    "idempotency_key": "ci-build-41",
}
SUITE = {
    "org_id": "acme",
    "app_version_id": "v1",
    "target": "device",
    "test_paths": ["tests/login.spec.js", "tests/pay.spec.js"],
    "idempotency_key": "ci-build-42",
}


def _finish_every_job(
    agent_client: ApiCaller,
    session: boto3.Session,
    config: Config,
    outcome: dict[str, str],
) -> None:
    """One agent leases the batch and reports `outcome[test_path]` for each job."""
    assert dispatch_queue(session, config) == {"batchItemFailures": []}
    registered = agent_client.post("/agents/register", {"target": "device", "device_id": "d1"})
    assert registered.status == 200, registered.body
    agent = f"/agents/{registered.body['agent_id']}"
    batch = agent_client.post(f"{agent}/lease").body["batch"]
    batch_id = batch["batch_id"]
    assert agent_client.post(f"{agent}/batches/{batch_id}/installed").status == 200
    for job in batch["jobs"]:
        path = f"{agent}/jobs/{job['job_id']}"
        assert agent_client.post(f"{path}/start", {"batch_id": batch_id}).status == 200
        report = {"batch_id": batch_id, "status": outcome[job["test_path"]], "duration_s": 1.0}
        assert agent_client.post(f"{path}/result", report).status == 200
    assert agent_client.post(f"{agent}/batches/{batch_id}/complete").status == 200


def _without_key(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "idempotency_key"}


def test_a_replay_after_the_job_passed_says_passed(
    client: ApiCaller, agent_client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    first = client.post("/jobs", JOB)
    assert first.status == 201, first.body
    assert first.body["status"] == "queued"
    _finish_every_job(agent_client, aws_session, config, {JOB["test_path"]: "passed"})

    replay = client.post("/jobs", JOB)

    assert replay.status == 200, replay.body
    assert replay.body["replayed"] is True
    assert replay.body["job_id"] == first.body["job_id"]
    assert replay.body["status"] == "passed"
    assert client.get(f"/jobs/{first.body['job_id']}").body["status"] == "passed"
    assert (first.body["counts"], replay.body["counts"]) == ({"queued": 1}, {"passed": 1})


def test_a_replayed_run_counts_its_jobs_as_they_are_now(
    client: ApiCaller, agent_client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    first = client.post("/runs", SUITE)
    assert first.status == 201, first.body
    assert (first.body["status"], first.body["counts"]) == ("queued", {"queued": 2})
    early = client.post("/runs", SUITE).body
    assert (early["replayed"], early["status"], early["counts"]) == (True, "queued", {"queued": 2})
    outcome = {"tests/login.spec.js": "passed", "tests/pay.spec.js": "failed"}
    _finish_every_job(agent_client, aws_session, config, outcome)

    replay = client.post("/runs", SUITE)

    assert replay.status == 200, replay.body
    assert replay.body["run_id"] == first.body["run_id"]
    assert replay.body["status"] is None  # the jobs differ: the counts say how
    assert replay.body["counts"] == {"passed": 1, "failed": 1}


def test_a_submit_without_a_key_is_new_work_and_queued(client: ApiCaller) -> None:
    first = client.post("/jobs", _without_key(JOB)).body
    second = client.post("/jobs", _without_key(JOB)).body

    assert first["job_id"] != second["job_id"]
    assert (second["replayed"], second["status"], second["counts"]) == (
        False,
        "queued",
        {"queued": 1},
    )
