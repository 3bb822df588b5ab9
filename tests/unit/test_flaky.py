"""Re-running failed tests (issue 11 item 3): failure_retries, flaky results, and infra
errors that do not spend them."""

from __future__ import annotations

import pytest

from qgjob_backend.domain.models import Job
from qgjob_backend.handlers.api_models import JobView, RunView
from qgjob_backend.schema import JobStatus, SuiteSubmission, Target
from tests.unit.fakes import FakeClock, MemoryServices, build_memory_services, fake_config

SETTINGS = fake_config(lease_seconds=60.0)


@pytest.fixture
def svc() -> MemoryServices:
    return build_memory_services(SETTINGS, FakeClock(1_000_000.0))


def submit_one(svc: MemoryServices, **fields: int) -> str:
    suite = SuiteSubmission(
        org_id="acme", app_version_id="v1", target="emulator", test_paths=["t/a.js"], **fields
    )
    return svc.submissions.submit("acme", suite).run.job_ids[0]


def run_once(svc: MemoryServices, agent_id: str, job_id: str, status: JobStatus) -> Job:
    """The agent leases, starts the job and reports ``status``; returns the job after."""
    leased = svc.as_agent.lease(agent_id)
    assert leased is not None, f"{agent_id} got no batch"
    batch_id = leased.batch.batch_id
    svc.as_agent.start(agent_id, job_id, batch_id)
    answer = svc.as_agent.report(agent_id, job_id, batch_id, status, 2.0, f"{status}!", "out")
    svc.as_agent.complete(agent_id, batch_id)
    return answer


def _has_batch(svc: MemoryServices, agent_id: str) -> bool:
    svc.plan_pending()
    agent = svc.store.get_agent(agent_id)
    return agent is not None and agent.batch_id is not None


def register(svc: MemoryServices, device: str) -> str:
    return svc.as_agent.register(Target.EMULATOR, device, None).agent_id


def test_a_test_that_fails_then_passes_is_flaky_and_passes(svc: MemoryServices) -> None:
    job_id = submit_one(svc, failure_retries=2)
    first, second = register(svc, "d1"), register(svc, "d2")

    back = run_once(svc, first, job_id, JobStatus.FAILED)

    assert back.status is JobStatus.QUEUED
    assert back.message == (
        f"try 1 failed on agent {first}: failed!; re-running (1 re-run(s) left)"
    )
    # Which agent gets the re-run is the planner's choice (preferring another agent than
    # the one it failed on is issue 13 item 4); either way it is a new try.
    planned = next(a for a in (second, first) if svc.store.get_agent(a) and _has_batch(svc, a))
    passed = run_once(svc, planned, job_id, JobStatus.PASSED)
    assert passed.status is JobStatus.PASSED
    assert passed.flaky
    view = JobView.of(passed)
    assert view.flaky
    assert [(t.attempt, t.agent_id, t.status, t.message) for t in view.tries] == [
        (1, first, "failed", "failed!")
    ]
    run = svc.submissions.run("acme", passed.run_id)
    assert (run.counts, run.flaky) == ({"passed": 1}, 1)
    assert RunView.of(run).passed
    assert RunView.of(run).flaky == 1
    assert passed.attempts == 0  # no infrastructure attempt spent


def test_a_test_that_keeps_failing_fails_after_its_retries(svc: MemoryServices) -> None:
    job_id = submit_one(svc, failure_retries=1)
    agent_id = register(svc, "d1")

    assert run_once(svc, agent_id, job_id, JobStatus.FAILED).status is JobStatus.QUEUED
    final = run_once(svc, agent_id, job_id, JobStatus.FAILED)

    assert final.status is JobStatus.FAILED
    assert not final.flaky
    assert len(final.tries) == 1
    run = svc.submissions.run("acme", final.run_id)
    assert (run.counts, run.flaky) == ({"failed": 1}, 0)


def test_without_failure_retries_a_failure_is_final(svc: MemoryServices) -> None:
    job_id = submit_one(svc)
    assert run_once(svc, register(svc, "d1"), job_id, JobStatus.FAILED).status is JobStatus.FAILED


def test_an_infrastructure_error_does_not_spend_a_failure_retry(svc: MemoryServices) -> None:
    job_id = submit_one(svc, failure_retries=1, retries=1)
    agent_id = register(svc, "d1")

    errored = run_once(svc, agent_id, job_id, JobStatus.ERROR)
    assert (errored.status, errored.attempts, errored.tries) == (JobStatus.QUEUED, 1, [])
    failed = run_once(svc, agent_id, job_id, JobStatus.FAILED)
    assert failed.status is JobStatus.QUEUED  # its failure retry is still there
    assert run_once(svc, agent_id, job_id, JobStatus.PASSED).flaky


def test_a_replayed_failed_report_changes_nothing(svc: MemoryServices) -> None:
    job_id = submit_one(svc, failure_retries=1)
    agent_id = register(svc, "d1")
    leased = svc.as_agent.lease(agent_id)
    assert leased is not None
    batch_id = leased.batch.batch_id
    svc.as_agent.start(agent_id, job_id, batch_id)
    first = svc.as_agent.report(agent_id, job_id, batch_id, JobStatus.FAILED, 1.0, "x", None)

    again = svc.as_agent.report(agent_id, job_id, batch_id, JobStatus.FAILED, 1.0, "x", None)

    assert again == first
    stored = svc.store.get_job(job_id)
    assert stored is not None
    assert len(stored.tries) == 1
    assert svc.submissions.run("acme", stored.run_id).counts == {"queued": 1}
