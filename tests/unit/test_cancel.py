"""Cancel that stops work (issue 11 item 2): jobs, whole runs a page at a time, agents told."""

from __future__ import annotations

from typing import Any

import pytest

from qgjob_backend.config import MAX_BATCH_JOBS
from qgjob_backend.schema import JobStatus, SuiteSubmission, Target
from qgjob_backend.services.errors import Conflict, NotFound, ServiceError
from qgjob_backend.services.submission import MAX_CANCEL_PAGE
from tests.unit.fakes import (
    CountingStore,
    FakeClock,
    MemoryServices,
    build_memory_services,
    fake_config,
)

SETTINGS = fake_config(lease_seconds=60.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(SETTINGS, clock)


def submit(svc: MemoryServices, paths: list[str], **fields: Any) -> list[str]:
    suite = SuiteSubmission(
        org_id="acme", app_version_id="v1", target="emulator", test_paths=paths, **fields
    )
    return svc.submissions.submit("acme", suite).run.job_ids


def status(svc: MemoryServices, job_id: str) -> JobStatus:
    found = svc.store.get_job(job_id)
    assert found is not None
    return found.status


def running_batch(svc: MemoryServices, paths: list[str]) -> tuple[str, str, list[str]]:
    """A run whose jobs are all in one batch of one agent, the first one running."""
    job_ids = submit(svc, paths)
    agent_id = svc.as_agent.register(Target.EMULATOR, "d1", None).agent_id
    leased = svc.as_agent.lease(agent_id)
    assert leased is not None
    assert [j.job_id for j in leased.jobs] == job_ids
    svc.as_agent.start(agent_id, job_ids[0], leased.batch.batch_id)
    return agent_id, leased.batch.batch_id, job_ids


def test_a_running_job_is_cancelled_and_its_agent_told_by_the_next_heartbeat(
    svc: MemoryServices,
) -> None:
    agent_id, batch_id, job_ids = running_batch(svc, ["tests/a.spec.js", "tests/b.spec.js"])
    assert svc.as_agent.heartbeat(agent_id).cancelled == []

    cancelled = svc.submissions.cancel("acme", job_ids[0])

    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.message == f"cancelled while running on agent {agent_id}"
    assert svc.as_agent.heartbeat(agent_id).cancelled == [job_ids[0]]
    run = svc.submissions.run("acme", svc.store.get_job(job_ids[0]).run_id)  # type: ignore[union-attr]
    assert run.counts == {"active": 1, "cancelled": 1}
    # The agent's late "passed" is not applied (the job stays cancelled), and not an error
    # for the agent: it goes on with the rest of its batch.
    late = svc.as_agent.report(agent_id, job_ids[0], batch_id, JobStatus.PASSED, 9.0, None, None)
    assert late.status is JobStatus.CANCELLED
    assert status(svc, job_ids[0]) is JobStatus.CANCELLED
    svc.as_agent.start(agent_id, job_ids[1], batch_id)
    svc.as_agent.report(agent_id, job_ids[1], batch_id, JobStatus.PASSED, 1.0, None, None)
    assert status(svc, job_ids[1]) is JobStatus.PASSED
    svc.as_agent.complete(agent_id, batch_id)
    final = svc.submissions.run("acme", run.run_id)
    assert final.counts == {"passed": 1, "cancelled": 1}
    # Released: its next batch starts without the old marks.
    assert svc.as_agent.heartbeat(agent_id).cancelled == []


def test_a_progress_answer_names_the_cancelled_jobs_and_a_start_of_one_is_skipped(
    svc: MemoryServices,
) -> None:
    agent_id, batch_id, job_ids = running_batch(svc, ["tests/a.spec.js", "tests/b.spec.js"])
    svc.submissions.cancel("acme", job_ids[1])  # assigned, not started yet

    answer = svc.agents.progress(svc.as_agent.credential(agent_id), batch_id, start=job_ids[1])

    assert answer.cancelled == [job_ids[1]]
    assert answer.started is not None
    assert (answer.started.accepted, answer.started.status) == (True, JobStatus.CANCELLED)
    assert status(svc, job_ids[1]) is JobStatus.CANCELLED


def test_a_cancelled_running_job_is_never_requeued_by_the_reaper(
    svc: MemoryServices, clock: FakeClock
) -> None:
    _, _, job_ids = running_batch(svc, ["tests/a.spec.js"])
    svc.submissions.cancel("acme", job_ids[0])

    clock.advance(3600)
    svc.reaper.sweep()

    assert status(svc, job_ids[0]) is JobStatus.CANCELLED
    run = svc.store.get_run(svc.store.get_job(job_ids[0]).run_id)  # type: ignore[union-attr]
    assert run is not None
    assert run.counts == {"cancelled": 1}


def test_a_finished_job_is_not_cancelled_and_another_orgs_job_is_not_found(
    svc: MemoryServices,
) -> None:
    agent_id, batch_id, job_ids = running_batch(svc, ["tests/a.spec.js"])
    svc.as_agent.report(agent_id, job_ids[0], batch_id, JobStatus.FAILED, 1.0, "boom", None)

    with pytest.raises(Conflict, match="already finished"):
        svc.submissions.cancel("acme", job_ids[0])
    with pytest.raises(NotFound):
        svc.submissions.cancel("globex", job_ids[0])
    assert status(svc, job_ids[0]) is JobStatus.FAILED


def test_a_run_is_cancelled_a_bounded_page_per_call_until_no_cursor(
    clock: FakeClock,
) -> None:
    store = CountingStore()
    svc = build_memory_services(SETTINGS, clock, store=store)
    job_ids = submit(svc, [f"tests/t{i}.spec.js" for i in range(1000)])
    agent_id = svc.as_agent.register(Target.EMULATOR, "d1", None).agent_id
    leased = svc.as_agent.lease(agent_id)  # some of them are assigned
    assert leased is not None
    assert 0 < len(leased.jobs) <= MAX_BATCH_JOBS
    run_id = svc.store.get_job(job_ids[0]).run_id  # type: ignore[union-attr]

    cursor: str | None = None
    calls = 0
    cancelled = 0
    while True:
        store.calls.clear()
        store.counting = True
        page = svc.submissions.cancel_run("acme", run_id, cursor)
        store.counting = False
        # Bounded: one page read, one batch of cancels, two run reads, whatever the size.
        assert store.calls["run_jobs"] == 1
        assert store.calls["cancel_jobs"] <= 1
        assert page.seen <= MAX_CANCEL_PAGE
        calls += 1
        cancelled += page.cancelled
        cursor = page.next_cursor
        if cursor is None:
            break

    assert calls == 10
    assert cancelled == 1000
    assert svc.submissions.run("acme", run_id).counts == {"cancelled": 1000}
    assert svc.as_agent.heartbeat(agent_id).cancelled == sorted(j.job_id for j in leased.jobs)
    # Safe to repeat: nothing moves twice.
    again = svc.submissions.cancel_run("acme", run_id)
    assert again.cancelled == 0
    assert svc.store.org_metrics("acme").jobs_by_status == {"cancelled": 1000}


def test_a_run_cancel_checks_the_org_the_cursor_and_the_limit(svc: MemoryServices) -> None:
    job_ids = submit(svc, ["tests/a.spec.js", "tests/b.spec.js", "tests/c.spec.js"])
    run_id = svc.store.get_job(job_ids[0]).run_id  # type: ignore[union-attr]

    with pytest.raises(NotFound):
        svc.submissions.cancel_run("globex", run_id)
    with pytest.raises(ServiceError, match="cursor"):
        svc.submissions.cancel_run("acme", run_id, "not-a-cursor")
    with pytest.raises(ServiceError, match="limit"):
        svc.submissions.cancel_run("acme", run_id, limit=MAX_CANCEL_PAGE + 1)
    first = svc.submissions.cancel_run("acme", run_id, limit=2)
    assert (first.cancelled, first.seen) == (2, 2)
    assert status(svc, job_ids[2]) is JobStatus.QUEUED
    rest = svc.submissions.cancel_run("acme", run_id, first.next_cursor, limit=2)
    assert (rest.cancelled, rest.next_cursor) == (1, None)
    assert rest.run.counts == {"cancelled": 3}
