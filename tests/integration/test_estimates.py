"""Duration estimates through the real handlers on moto: reports feed the Estimates table,
admission stamps jobs with it, and the planner hears when busy agents are free again."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

import qgjob_backend.services.dispatch as dispatch_module
from qgjob_backend.adapters.dynamodb import DynamoEstimateStore
from qgjob_backend.config import Config
from qgjob_backend.domain.estimates import DurationEstimate, EstimateKey
from qgjob_backend.domain.planner import BusyAgent
from qgjob_backend.schema import Target
from tests.integration.conftest import ApiCaller, dispatch_queue, state_store_of
from tests.unit.fakes import PlanSpy

SUITE = {
    "org_id": "acme",
    "app_version_id": "v9",
    "target": "emulator",
    "test_paths": ["tests/login.spec.js", "tests/cart.spec.js", "tests/pay.spec.js"],
}
DURATIONS = {"tests/login.spec.js": 11.0, "tests/cart.spec.js": 22.0, "tests/pay.spec.js": 33.0}


def _estimates(session: boto3.Session, config: Config) -> DynamoEstimateStore:
    return DynamoEstimateStore(session.client("dynamodb"), config.estimates_table)


_state = state_store_of


def _key(path: str) -> EstimateKey:
    return EstimateKey("acme", Target.EMULATOR, path)


def _try_lease(agent_client: ApiCaller, device: str) -> dict[str, Any] | None:
    registered = agent_client.post("/agents/register", {"target": "emulator", "device_id": device})
    assert registered.status == 200
    leased = agent_client.post(f"/agents/emulator-{device}/lease")
    assert leased.status == 200
    batch = leased.body["batch"]
    return None if batch is None else dict(batch)


def _lease(agent_client: ApiCaller, device: str) -> dict[str, Any]:
    batch = _try_lease(agent_client, device)
    assert batch is not None
    return batch


def _run(agent_client: ApiCaller, device: str, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Starts and reports every job of the batch (passed, with DURATIONS); returns the bodies."""
    bodies = []
    for job in batch["jobs"]:
        path = f"/agents/emulator-{device}/jobs/{job['job_id']}"
        agent_client.post(f"{path}/start", {"batch_id": batch["batch_id"]})
        body = {
            "batch_id": batch["batch_id"],
            "status": "passed",
            "duration_s": DURATIONS[job["test_path"]],
        }
        assert agent_client.post(f"{path}/result", body).status == 200
        bodies.append(body)
    return bodies


def test_reported_durations_and_installs_become_estimates(
    client: ApiCaller, agent_client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    client.post("/runs", SUITE)
    dispatch_queue(aws_session, config)
    batch = _lease(agent_client, "a")
    installed = agent_client.post(f"/agents/emulator-a/batches/{batch['batch_id']}/installed")
    assert installed.status == 200

    _run(agent_client, "a", batch)

    store = _estimates(aws_session, config)
    found = store.test_estimates([_key(p) for p in DURATIONS])
    assert {k.test_path: e.mean_s for k, e in found.items()} == {
        j["test_path"]: DURATIONS[j["test_path"]] for j in batch["jobs"]
    }
    for job in batch["jobs"]:
        expected = DurationEstimate().updated(DURATIONS[job["test_path"]], job["job_id"])
        assert found[_key(job["test_path"])] == expected
    install = store.install_estimates([Target.EMULATOR])[Target.EMULATOR]
    assert install.samples == 1
    assert install.recent_ids == (batch["batch_id"],)


def test_a_replayed_report_is_not_counted_twice(
    client: ApiCaller, agent_client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    client.post("/runs", SUITE)
    dispatch_queue(aws_session, config)
    batch = _lease(agent_client, "a")
    bodies = _run(agent_client, "a", batch)
    first = batch["jobs"][0]

    replay = agent_client.post(f"/agents/emulator-a/jobs/{first['job_id']}/result", bodies[0])

    assert replay.status == 200
    assert replay.body["status"] == "passed"
    estimate = _estimates(aws_session, config).test_estimates([_key(first["test_path"])])
    assert estimate[_key(first["test_path"])].samples == 1


def test_admission_stamps_each_job_with_its_tests_estimate(
    client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    store = _estimates(aws_session, config)
    store.record_test_duration(_key("tests/cart.spec.js"), "earlier-job", 40.0, 0.0)

    run = client.post("/runs", SUITE).body
    assert dispatch_queue(aws_session, config) == {"batchItemFailures": []}

    jobs = _state(aws_session, config).get_jobs(run["job_ids"])
    stamped = {j.test_path: j.estimate_s for j in jobs}
    assert stamped == {
        "tests/login.spec.js": None,
        "tests/cart.spec.js": DurationEstimate().updated(40.0).estimate_s,
        "tests/pay.spec.js": None,
    }
    assert all(j.admitted for j in jobs)


def test_a_busy_agents_expected_free_time_reaches_the_planner(
    client: ApiCaller,
    agent_client: ApiCaller,
    aws_session: boto3.Session,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client.post("/runs", SUITE)
    dispatch_queue(aws_session, config)
    first = _lease(agent_client, "a")
    state = _state(aws_session, config)
    committed = state.get_batch(first["batch_id"])
    assert committed is not None
    assert committed.expected_end_at is not None
    assert committed.expected_end_at > committed.created_at
    agent = state.get_agent("emulator-a")
    assert agent is not None
    assert agent.batch_expected_free_at == committed.expected_end_at
    spy = PlanSpy()
    monkeypatch.setattr(dispatch_module, "plan_batches", spy)

    client.post("/runs", {**SUITE, "app_version_id": "v10"})
    dispatch_queue(aws_session, config)
    _try_lease(agent_client, "b")  # whether b gets work is the planner's call

    last = spy.calls[-1]
    assert last["busy"] == [
        BusyAgent("emulator-a", "emulator", committed.group_key, committed.expected_end_at)
    ]
    assert last["install_s"] == {"emulator": config.default_install_seconds[Target.EMULATOR]}
    paths = {j.test_path for j in last["backlog"]}
    assert "tests/login.spec.js" in paths


def test_an_estimates_outage_never_fails_a_report_or_an_admission(
    client: ApiCaller, agent_client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    client.post("/runs", SUITE)
    dispatch_queue(aws_session, config)
    batch = _lease(agent_client, "a")
    aws_session.client("dynamodb").delete_table(TableName=config.estimates_table)

    installed = agent_client.post(f"/agents/emulator-a/batches/{batch['batch_id']}/installed")
    _run(agent_client, "a", batch)
    complete = agent_client.post(f"/agents/emulator-a/batches/{batch['batch_id']}/complete")
    later = client.post("/runs", {**SUITE, "app_version_id": "v10"}).body

    assert installed.status == 200
    assert complete.status == 200
    for job in batch["jobs"]:
        assert client.get(f"/jobs/{job['job_id']}").body["status"] == "passed"
    assert dispatch_queue(aws_session, config) == {"batchItemFailures": []}
    jobs = _state(aws_session, config).get_jobs(later["job_ids"])
    assert all(j.admitted and j.estimate_s is None for j in jobs)
    # Planning goes on with the default install time: the new work goes to an agent.
    leased = [_try_lease(agent_client, device) for device in ("b", "a")]
    assert any(batch and batch["jobs"] for batch in leased)


def test_a_start_renews_a_late_batchs_expected_end_on_the_agent(
    client: ApiCaller,
    agent_client: ApiCaller,
    aws_session: boto3.Session,
    config: Config,
) -> None:
    client.post("/runs", SUITE)
    dispatch_queue(aws_session, config)
    batch = _lease(agent_client, "a")
    state = _state(aws_session, config)
    # As if the batch was committed long ago and ran late: its expected end has passed.
    assert state.renew_batch_free_at("emulator-a", batch["batch_id"], 1_000.0)
    first = batch["jobs"][0]["job_id"]

    started = agent_client.post(
        f"/agents/emulator-a/jobs/{first}/start", {"batch_id": batch["batch_id"]}
    )

    assert started.status == 200
    job = state.get_job(first)
    assert job is not None
    assert job.started_at is not None
    assert job.rest_of_batch_s is not None
    assert job.rest_of_batch_s > 0
    agent = state.get_agent("emulator-a")
    assert agent is not None
    assert agent.batch_expected_free_at == job.started_at + job.rest_of_batch_s
