"""The use cases (submit, dispatch, agent protocol, reaper) over in-memory fakes, fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from qgjob_backend.agent_protocol import agent_id_for, parse_credential
from qgjob_backend.domain.models import AgentStatus, AppRef, BatchState, Job
from qgjob_backend.schema import JobStatus, SuiteSubmission, Target
from qgjob_backend.services.agents import AgentCredential, LeasedBatch
from qgjob_backend.services.auth import Principal, TokenKind
from qgjob_backend.services.errors import Conflict, Forbidden, NotFound
from qgjob_backend.services.reaper import SweepReport
from qgjob_backend.services.submission import SubmitResult
from tests.unit.fakes import (
    FakeClock,
    MemoryServices,
    build_memory_services,
    fake_config,
    legacy_submit,
)

LEASE = 60.0
GRACE = 30.0
OFFLINE = 180.0
SETTINGS = fake_config(
    lease_seconds=LEASE,
    batch_max_jobs=25,
    resend_grace_seconds=GRACE,
    agent_offline_seconds=OFFLINE,
    aging_seconds=120.0,
)
PATHS = ("tests/login.spec.js", "tests/cart.spec.js", "tests/pay.spec.js")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(SETTINGS, clock)


# ------------------------------------------------------------------ helpers
def suite(**overrides: Any) -> SuiteSubmission:
    fields: dict[str, Any] = {
        "org_id": "acme",
        "app_version_id": "v1",
        "target": "emulator",
        "priority": 5,
        "test_paths": list(PATHS),
    }
    fields.update(overrides)
    return SuiteSubmission(**fields)


def submit(svc: MemoryServices, **overrides: Any) -> SubmitResult:
    submission = suite(**overrides)
    return svc.submissions.submit(submission.org_id, submission)


def submit_and_admit(svc: MemoryServices, **overrides: Any) -> list[str]:
    """A submitted suite: its jobs are written straight into their backlog."""
    result = submit(svc, **overrides)
    for job in result.jobs:
        assert job.admitted
        assert svc.store.in_backlog(job.job_id)
    return [j.job_id for j in result.jobs]


def register(
    svc: MemoryServices,
    device_id: str = "d1",
    target: Target = Target.EMULATOR,
    installed: AppRef | None = None,
) -> str:
    return svc.as_agent.register(target, device_id, installed).agent_id


def lease(svc: MemoryServices, agent_id: str) -> LeasedBatch:
    leased = svc.as_agent.lease(agent_id)
    assert leased is not None, f"{agent_id} got no batch"
    return leased


def job(svc: MemoryServices, job_id: str) -> Job:
    found = svc.store.get_job(job_id)
    assert found is not None
    return found


def statuses(svc: MemoryServices, job_ids: Sequence[str]) -> list[JobStatus]:
    return [job(svc, j).status for j in job_ids]


def report(
    svc: MemoryServices,
    agent_id: str,
    job_id: str,
    batch_id: str,
    status: JobStatus = JobStatus.PASSED,
    message: str | None = None,
    output: str | None = None,
) -> Job:
    return svc.as_agent.report(agent_id, job_id, batch_id, status, 1.5, message, output)


def run_to_end(svc: MemoryServices, agent_id: str, leased: LeasedBatch) -> None:
    batch_id = leased.batch.batch_id
    for queued in leased.jobs:
        svc.as_agent.start(agent_id, queued.job_id, batch_id)
        report(svc, agent_id, queued.job_id, batch_id)
    svc.as_agent.complete(agent_id, batch_id)


def run_all(svc: MemoryServices, agent_id: str) -> int:
    """Leases and runs batches until the agent gets no more work; returns how many.

    The planner may cut a group into several batches: tests that are not about batching
    do not depend on where it cuts.
    """
    count = 0
    while (leased := svc.as_agent.lease(agent_id)) is not None:
        run_to_end(svc, agent_id, leased)
        count += 1
    return count


def ids(leased: LeasedBatch) -> list[str]:
    return [j.job_id for j in leased.jobs]


# ================================================================== submit
def test_submit_writes_queued_jobs_into_the_backlog_and_asks_for_one_plan(
    svc: MemoryServices,
) -> None:
    requests = svc.queue.plan_requests
    result = submit(svc, retries=3, timeout_s=90)

    assert result.created is True
    assert result.run.job_ids == [j.job_id for j in result.jobs]
    assert [j.test_path for j in result.jobs] == list(PATHS)
    assert [j.position for j in result.jobs] == [0, 1, 2]
    for stored in svc.store.get_jobs(result.run.job_ids):
        assert stored.status is JobStatus.QUEUED
        assert stored.admitted is True
        assert svc.store.in_backlog(stored.job_id)
        assert stored.max_attempts == 4
        assert stored.timeout_s == 90
        assert stored.run_id == result.run.run_id
    assert svc.queue.sent == []  # no message per job: one plan request for the run
    assert svc.queue.plan_requests == requests + 1


def test_ids_derive_from_the_idempotency_key(svc: MemoryServices) -> None:
    first = submit(svc, idempotency_key="ci-build-42")
    again = submit(svc, idempotency_key="ci-build-42")

    assert again.created is False
    assert again.run.run_id == first.run.run_id
    assert [j.job_id for j in again.jobs] == first.run.job_ids
    assert len(svc.store.runs) == 1
    assert len(svc.store.jobs) == 3


def test_the_same_key_in_another_org_is_another_run(svc: MemoryServices) -> None:
    ours = submit(svc, idempotency_key="build-1")
    theirs = submit(svc, org_id="globex", idempotency_key="build-1")

    assert theirs.created is True
    assert theirs.run.run_id != ours.run.run_id
    assert set(theirs.run.job_ids).isdisjoint(ours.run.job_ids)


def test_without_a_key_every_submission_is_a_new_run(svc: MemoryServices) -> None:
    first = submit(svc)
    second = submit(svc)

    assert first.run.run_id != second.run.run_id
    assert len(svc.store.jobs) == 6


def test_a_reused_key_with_another_payload_is_a_conflict(svc: MemoryServices) -> None:
    submit(svc, idempotency_key="k1")
    before = svc.store.snapshot()

    with pytest.raises(Conflict, match="idempotency_key"):
        submit(svc, idempotency_key="k1", priority=1)

    assert svc.store.snapshot() == before


def test_a_replay_writes_and_sends_nothing_again(svc: MemoryServices) -> None:
    submit(svc, idempotency_key="k1")
    before = svc.store.snapshot()

    again = submit(svc, idempotency_key="k1")

    assert svc.store.snapshot() == before
    assert svc.queue.sent == []
    assert all(j.admitted for j in again.jobs)


def test_replay_heals_a_crash_between_the_run_and_its_jobs(svc: MemoryServices) -> None:
    svc.store.fail_next("create_jobs", RuntimeError("lambda killed"))
    with pytest.raises(RuntimeError):
        submit(svc, idempotency_key="k1")
    (run,) = svc.store.runs.values()
    assert svc.store.get_jobs(run.job_ids) == []
    requests = svc.queue.plan_requests

    healed = submit(svc, idempotency_key="k1")

    assert healed.created is False
    assert [j.job_id for j in healed.jobs] == run.job_ids
    assert statuses(svc, run.job_ids) == [JobStatus.QUEUED] * 3
    assert all(svc.store.in_backlog(job_id) for job_id in run.job_ids)
    assert svc.queue.plan_requests == requests + 1


def test_replay_writes_only_the_missing_jobs(svc: MemoryServices, clock: FakeClock) -> None:
    first = submit(svc, idempotency_key="k1")
    kept, lost = first.run.job_ids[:2], first.run.job_ids[2]
    svc.store.drop_job(lost)  # as if the write of the last job never happened
    kept_before = svc.store.get_jobs(kept)
    clock.advance(5)

    healed = submit(svc, idempotency_key="k1")

    assert [j.job_id for j in healed.jobs] == first.run.job_ids
    assert svc.store.get_jobs(kept) == kept_before  # existing jobs untouched
    restored = job(svc, lost)
    assert (restored.status, restored.position, restored.test_path) == (
        JobStatus.QUEUED,
        2,
        PATHS[2],
    )
    assert restored.created_at == first.run.created_at
    assert svc.store.in_backlog(lost)


def test_a_queue_outage_still_accepts_and_the_scheduled_plan_assigns_the_jobs(
    svc: MemoryServices, clock: FakeClock
) -> None:
    agent_id = register(svc)
    svc.queue.error = ConnectionError("sqs unreachable")

    result = submit(svc)

    assert result.created is True
    assert statuses(svc, result.run.job_ids) == [JobStatus.QUEUED] * 3
    svc.queue.error = None
    clock.advance(GRACE + 1)
    assert svc.reaper.sweep().resent_jobs == 0  # nothing to re-send: they are in the backlog
    assert svc.queue.sent == []

    svc.dispatcher.plan()  # the schedule's plan
    assert ids(lease(svc, agent_id)) == result.run.job_ids


def test_a_queue_outage_on_a_legacy_run_is_re_sent_after_grace(
    svc: MemoryServices, clock: FakeClock
) -> None:
    svc.queue.error = ConnectionError("sqs unreachable")
    job_ids = legacy_submit(svc)
    svc.queue.error = None

    clock.advance(GRACE)  # not yet older than the grace period
    assert svc.reaper.sweep().resent_jobs == 0
    assert svc.queue.sent == []

    clock.advance(1)
    assert svc.reaper.sweep().resent_jobs == 3
    assert sorted(svc.queue.sent_ids) == sorted(job_ids)

    for job_id in job_ids:
        svc.dispatcher.admit(job_id)
    svc.queue.sent.clear()
    assert svc.reaper.sweep().resent_jobs == 0
    assert svc.queue.sent == []


def test_partly_failed_sends_still_accept_and_get_resent(
    svc: MemoryServices, clock: FakeClock
) -> None:
    svc.queue.failing = lambda job: job.position == 1

    job_ids = legacy_submit(svc)

    lost = job_ids[1]
    assert lost not in svc.queue.sent_ids
    svc.queue.failing = lambda job: False
    svc.queue.sent.clear()
    for job_id in job_ids:
        if job_id != lost:
            svc.dispatcher.admit(job_id)

    clock.advance(GRACE + 1)
    assert svc.reaper.sweep().resent_jobs == 1
    assert svc.queue.sent_ids == [lost]
    assert svc.dispatcher.admit(lost) is not None


def test_submitting_for_another_org_is_forbidden_and_writes_nothing(svc: MemoryServices) -> None:
    with pytest.raises(Forbidden, match="org_id"):
        svc.submissions.submit("globex", suite(org_id="acme"))

    assert svc.store.runs == {}
    assert svc.store.jobs == {}
    assert svc.queue.sent == []


def test_another_orgs_job_and_run_are_not_found(svc: MemoryServices) -> None:
    result = submit(svc)

    with pytest.raises(NotFound):
        svc.submissions.job("globex", result.run.job_ids[0])
    with pytest.raises(NotFound):
        svc.submissions.run("globex", result.run.run_id)
    with pytest.raises(NotFound):
        svc.submissions.cancel("globex", result.run.job_ids[0])
    assert svc.submissions.job("acme", result.run.job_ids[0]).job_id == result.run.job_ids[0]
    run = svc.submissions.run("acme", result.run.run_id)
    assert run.counts == {"queued": 3}
    with pytest.raises(NotFound):
        svc.submissions.run_jobs("globex", result.run.run_id)
    page = svc.submissions.run_jobs("acme", result.run.run_id)
    assert [j.job_id for j in page.jobs] == run.job_ids
    assert page.next_cursor is None


# ================================================================== admit and plan
def test_admitting_twice_is_a_no_op(svc: MemoryServices, clock: FakeClock) -> None:
    job_id = legacy_submit(svc)[0]

    admitted = svc.dispatcher.admit(job_id)
    assert admitted is not None
    assert admitted.admitted is True
    assert svc.store.in_backlog(job_id)
    before = svc.store.snapshot()
    clock.advance(10)

    assert svc.dispatcher.admit(job_id) is None
    assert svc.store.snapshot() == before


def test_admit_ignores_unknown_and_cancelled_jobs(svc: MemoryServices) -> None:
    job_id = legacy_submit(svc)[0]
    svc.submissions.cancel("acme", job_id)

    assert svc.dispatcher.admit("job-unknown") is None
    assert svc.dispatcher.admit(job_id) is None
    assert not svc.store.in_backlog(job_id)


def test_unadmitted_jobs_are_never_planned(svc: MemoryServices) -> None:
    legacy_submit(svc)
    register(svc)

    assert svc.dispatcher.plan() == []


def test_jobs_wait_in_the_backlog_until_an_agent_of_their_target_comes(
    svc: MemoryServices,
) -> None:
    job_ids = submit_and_admit(svc, target="device")
    register(svc, "e1", Target.EMULATOR)

    assert svc.dispatcher.plan() == []
    assert statuses(svc, job_ids) == [JobStatus.QUEUED] * 3

    agent_id = register(svc, "d1", Target.DEVICE)
    (batch,) = svc.dispatcher.plan()
    assert batch.agent_id == agent_id == "device-d1"
    assert batch.job_ids
    assert batch.job_ids == job_ids[: len(batch.job_ids)]  # in suite order


# ================================================================== agent protocol
def test_happy_path_lease_install_start_report_complete(
    svc: MemoryServices, clock: FakeClock
) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    assert agent_id == agent_id_for(Target.EMULATOR, "d1")

    leased = lease(svc, agent_id)
    batch = leased.batch
    in_batch = ids(leased)
    assert in_batch == job_ids[: len(in_batch)]  # the suite's first tests, in order
    assert batch.install_required is True
    assert batch.lease_expires_at == clock() + LEASE
    assert (batch.org_id, batch.app_version_id, batch.target) == ("acme", "v1", Target.EMULATOR)
    assert statuses(svc, in_batch) == [JobStatus.ASSIGNED] * len(in_batch)
    assert statuses(svc, job_ids[len(in_batch) :]) == [JobStatus.QUEUED] * (3 - len(in_batch))
    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert (agent.status, agent.batch_id) == (AgentStatus.BUSY, batch.batch_id)

    svc.as_agent.record_install(agent_id, batch.batch_id)
    stored_agent = svc.store.get_agent(agent_id)
    assert stored_agent is not None
    assert stored_agent.installed == AppRef("acme", "v1")

    clock.advance(2)
    started = svc.as_agent.start(agent_id, job_ids[0], batch.batch_id)
    assert started.status is JobStatus.RUNNING
    assert started.started_at == clock()

    output = "line\n" * 1000
    clock.advance(3)
    done = report(svc, agent_id, job_ids[0], batch.batch_id, output=output, message="ok")
    assert done.status is JobStatus.PASSED
    assert done.finished_at == clock()
    assert done.duration_s == 1.5
    assert done.message == "ok"
    assert done.output_key == f"results/acme/{job_ids[0]}/{batch.batch_id}.log"
    assert svc.artifacts.objects[done.output_key] == output
    assert done.output_excerpt == output[-2000:]

    # The rest of the suite, in as many batches as the planner cuts, on the same agent:
    # the app is installed once.
    failed_id = job_ids[1]
    batches = 0
    while True:
        for queued in [j for j in leased.jobs if j.job_id != job_ids[0]]:
            svc.as_agent.start(agent_id, queued.job_id, leased.batch.batch_id)
            outcome = JobStatus.FAILED if queued.job_id == failed_id else JobStatus.PASSED
            reported = report(svc, agent_id, queued.job_id, leased.batch.batch_id, outcome)
            assert reported.status is outcome
        assert svc.as_agent.complete(agent_id, leased.batch.batch_id) == 0
        batches += 1
        closed = svc.store.get_batch(leased.batch.batch_id)
        assert closed is not None
        assert closed.state is BatchState.DONE
        assert not svc.store.in_lease_index(leased.batch.batch_id)
        idle = svc.store.get_agent(agent_id)
        assert idle is not None
        assert (idle.status, idle.batch_id) == (AgentStatus.IDLE, None)
        next_batch = svc.as_agent.lease(agent_id)
        if next_batch is None:
            break
        leased = next_batch
        assert leased.batch.install_required is False
    metrics = svc.submissions.metrics("acme")
    assert metrics.jobs_by_status == {"passed": 2, "failed": 1}
    assert (metrics.batches, metrics.installs, metrics.agent_app_pairs) == (batches, 1, 1)
    assert svc.submissions.metrics("globex").batches == 0


@pytest.mark.parametrize("status", [JobStatus.PASSED, JobStatus.FAILED])
def test_output_that_fits_the_excerpt_is_kept_on_the_job_without_an_s3_object(
    svc: MemoryServices, status: JobStatus
) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    whole = "x" * 2000  # exactly the excerpt's size: the excerpt is the whole output
    svc.as_agent.start(agent_id, job_ids[0], batch_id)
    done = report(svc, agent_id, job_ids[0], batch_id, status, output=whole)

    assert (done.output_excerpt, done.output_key) == (whole, None)
    assert svc.artifacts.objects == {}  # no PUT
    stored = svc.submissions.job("acme", job_ids[0])  # what the result view shows
    assert (stored.output_excerpt, stored.output_key) == (whole, None)

    longer = whole + "y"  # one more character: the full output goes to S3
    svc.as_agent.start(agent_id, job_ids[1], batch_id)
    kept = report(svc, agent_id, job_ids[1], batch_id, status, output=longer)
    assert kept.output_key == f"results/acme/{job_ids[1]}/{batch_id}.log"
    assert svc.artifacts.objects == {kept.output_key: longer}
    assert kept.output_excerpt == longer[-2000:]


def test_lease_resumes_the_same_batch_after_a_restart(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    first = lease(svc, agent_id)
    svc.as_agent.start(agent_id, job_ids[0], first.batch.batch_id)
    report(svc, agent_id, job_ids[0], first.batch.batch_id)

    # The process restarts: it registers again and asks for work.
    restarted = svc.as_agent.register(Target.EMULATOR, "d1", None)
    assert restarted.status is AgentStatus.BUSY
    assert restarted.batch_id == first.batch.batch_id
    resumed = lease(svc, agent_id)

    assert resumed.batch.batch_id == first.batch.batch_id
    assert ids(resumed) == ids(first)[1:]  # finished jobs are not handed out


def test_install_is_recorded_once_and_the_next_batch_of_that_app_needs_none(
    svc: MemoryServices, clock: FakeClock
) -> None:
    submit_and_admit(svc)
    agent_id = register(svc)
    first = lease(svc, agent_id)
    svc.as_agent.record_install(agent_id, first.batch.batch_id)
    installed_at = svc.store.batches[first.batch.batch_id].installed_at
    clock.advance(5)
    svc.as_agent.record_install(agent_id, first.batch.batch_id)  # a retried request
    assert svc.store.batches[first.batch.batch_id].installed_at == installed_at
    run_to_end(svc, agent_id, first)

    submit_and_admit(svc, test_paths=["tests/again.spec.js"])
    second = lease(svc, agent_id)

    assert second.batch.install_required is False
    metrics = svc.submissions.metrics("acme")
    assert (metrics.batches, metrics.installs, metrics.agent_app_pairs) == (2, 1, 1)


def test_another_app_version_needs_an_install(svc: MemoryServices) -> None:
    submit_and_admit(svc)
    agent_id = register(svc)
    first = lease(svc, agent_id)
    svc.as_agent.record_install(agent_id, first.batch.batch_id)
    run_to_end(svc, agent_id, first)
    run_all(svc, agent_id)  # whatever is left of v1

    submit_and_admit(svc, app_version_id="v2")
    assert lease(svc, agent_id).batch.install_required is True


def test_install_of_someone_elses_or_a_released_batch_is_refused(svc: MemoryServices) -> None:
    submit_and_admit(svc)
    agent_id = register(svc)
    other = register(svc, "d2")
    leased = lease(svc, agent_id)

    with pytest.raises(NotFound):
        svc.as_agent.record_install(other, leased.batch.batch_id)
    svc.as_agent.complete(agent_id, leased.batch.batch_id)
    with pytest.raises(Conflict):
        svc.as_agent.record_install(agent_id, leased.batch.batch_id)
    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert agent.installed is None


def test_start_is_refused_for_another_agent_or_batch(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    other = register(svc, "d2")
    leased = lease(svc, agent_id)

    with pytest.raises(Conflict):
        svc.as_agent.start(other, job_ids[0], leased.batch.batch_id)
    with pytest.raises(Conflict):
        svc.as_agent.start(agent_id, job_ids[0], "batch-other")
    assert job(svc, job_ids[0]).status is JobStatus.ASSIGNED


def test_a_late_report_after_the_reaper_took_the_job_is_rejected(
    svc: MemoryServices, clock: FakeClock
) -> None:
    job_ids = submit_and_admit(svc)
    old_agent = register(svc, "d1")
    old = lease(svc, old_agent)
    svc.as_agent.start(old_agent, job_ids[0], old.batch.batch_id)
    clock.advance(LEASE + 1)  # d1 goes silent; d2 is ready
    new_agent = register(svc, "d2")

    sweep = svc.reaper.sweep()

    assert (sweep.expired_batches, sweep.requeued_jobs, sweep.plans_requested) == (
        1,
        len(old.jobs),
        1,
    )
    assert svc.plan_pending() == 1  # the reaper's plan request gives d2 the work
    taken = job(svc, job_ids[0])
    assert taken.agent_id == new_agent
    assert taken.batch_id != old.batch.batch_id
    before = svc.store.snapshot()

    for status in (JobStatus.PASSED, JobStatus.ERROR):
        with pytest.raises(Conflict, match="lease"):
            report(svc, old_agent, job_ids[0], old.batch.batch_id, status, output="late")

    assert svc.store.snapshot() == before
    assert job(svc, job_ids[0]) == taken


def test_a_late_report_for_a_requeued_job_leaves_it_queued(
    svc: MemoryServices, clock: FakeClock
) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    svc.as_agent.start(agent_id, job_ids[0], leased.batch.batch_id)
    clock.advance(LEASE + 1)
    svc.reaper.sweep()
    requeued = job(svc, job_ids[0])
    assert requeued.status is JobStatus.QUEUED

    with pytest.raises(Conflict):
        report(svc, agent_id, job_ids[0], leased.batch.batch_id)

    assert job(svc, job_ids[0]) == requeued
    assert svc.store.in_backlog(job_ids[0])


def test_the_same_report_delivered_twice_is_applied_once(
    svc: MemoryServices, clock: FakeClock
) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    batch_id = lease(svc, agent_id).batch.batch_id
    svc.as_agent.start(agent_id, job_ids[0], batch_id)
    first = report(svc, agent_id, job_ids[0], batch_id, JobStatus.FAILED, "assertion")
    clock.advance(7)

    again = report(svc, agent_id, job_ids[0], batch_id, JobStatus.FAILED, "assertion")

    assert again == first  # accepted, but nothing was written the second time
    assert job(svc, job_ids[0]).finished_at == first.finished_at


def test_a_different_second_result_for_a_finished_job_is_rejected(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    batch_id = lease(svc, agent_id).batch.batch_id
    first = report(svc, agent_id, job_ids[0], batch_id, JobStatus.PASSED)

    with pytest.raises(Conflict):
        report(svc, agent_id, job_ids[0], batch_id, JobStatus.FAILED)
    assert job(svc, job_ids[0]) == first


def test_an_error_with_retries_left_requeues_the_job(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc, retries=1)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    svc.as_agent.start(agent_id, job_ids[0], batch_id)

    retried = report(svc, agent_id, job_ids[0], batch_id, JobStatus.ERROR, "adb died")

    assert retried.status is JobStatus.QUEUED
    assert retried.attempts == 1
    assert (retried.batch_id, retried.agent_id, retried.started_at) == (None, None, None)
    assert retried.message == "adb died"
    assert svc.store.in_backlog(job_ids[0])
    assert svc.as_agent.complete(agent_id, batch_id) == len(leased.jobs) - 1  # the untouched

    # Second and last attempt: the error is final.
    again = lease(svc, agent_id)
    assert job_ids[0] in [j.job_id for j in again.jobs]
    svc.as_agent.start(agent_id, job_ids[0], again.batch.batch_id)
    final = report(svc, agent_id, job_ids[0], again.batch.batch_id, JobStatus.ERROR, "adb died")
    assert final.status is JobStatus.ERROR
    assert final.finished_at is not None
    assert not svc.store.in_backlog(job_ids[0])


def test_an_error_without_retries_is_final(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc, retries=0)
    agent_id = register(svc)
    batch_id = lease(svc, agent_id).batch.batch_id
    svc.as_agent.start(agent_id, job_ids[0], batch_id)

    final = report(svc, agent_id, job_ids[0], batch_id, JobStatus.ERROR, "no device")

    assert final.status is JobStatus.ERROR
    assert final.message == "no device"
    assert final.finished_at is not None
    assert not svc.store.in_backlog(job_ids[0])


def test_a_retried_error_report_is_accepted_once(svc: MemoryServices, clock: FakeClock) -> None:
    """The agent's HTTP client retries a result after a lost response (5xx/timeout).

    The duplicate must neither count a second attempt nor be answered with 409, which
    tells the agent its lease was lost and makes it abandon the rest of its batch.
    """
    job_ids = submit_and_admit(svc, retries=2)
    agent_id = register(svc)
    batch_id = lease(svc, agent_id).batch.batch_id
    svc.as_agent.start(agent_id, job_ids[0], batch_id)
    first = report(svc, agent_id, job_ids[0], batch_id, JobStatus.ERROR, "adb died")
    clock.advance(1)

    again = report(svc, agent_id, job_ids[0], batch_id, JobStatus.ERROR, "adb died")

    assert again.status is JobStatus.QUEUED
    assert job(svc, job_ids[0]).attempts == first.attempts == 1


def test_complete_requeues_unfinished_jobs_and_keeps_results(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    assert ids(leased)[:2] == job_ids[:2]
    svc.as_agent.start(agent_id, job_ids[0], batch_id)
    report(svc, agent_id, job_ids[0], batch_id)
    svc.as_agent.start(agent_id, job_ids[1], batch_id)  # running when the agent stops

    assert svc.as_agent.complete(agent_id, batch_id) == len(leased.jobs) - 1

    assert statuses(svc, job_ids) == [JobStatus.PASSED, JobStatus.QUEUED, JobStatus.QUEUED]
    # Handed back by a healthy agent: the interrupted job does not lose an attempt.
    assert [job(svc, j).attempts for j in job_ids] == [0, 0, 0]
    assert [svc.store.in_backlog(j) for j in job_ids] == [False, True, True]
    batch = svc.store.get_batch(batch_id)
    assert batch is not None
    assert batch.state is BatchState.DONE
    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert (agent.status, agent.batch_id) == (AgentStatus.IDLE, None)
    # Completing again changes nothing.
    before = svc.store.snapshot()
    assert svc.as_agent.complete(agent_id, batch_id) == 0
    assert svc.store.snapshot() == before


def test_complete_of_another_agents_batch_is_not_found(svc: MemoryServices) -> None:
    submit_and_admit(svc)
    agent_id = register(svc)
    other = register(svc, "d2")
    batch_id = lease(svc, agent_id).batch.batch_id
    before = svc.store.snapshot()

    with pytest.raises(NotFound):
        svc.as_agent.complete(other, batch_id)
    assert svc.store.snapshot() == before


def test_deregister_releases_the_batch(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    svc.as_agent.start(agent_id, job_ids[0], batch_id)

    assert svc.as_agent.deregister(agent_id) == len(leased.jobs)

    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert (agent.status, agent.batch_id) == (AgentStatus.OFFLINE, None)
    assert statuses(svc, job_ids) == [JobStatus.QUEUED] * 3
    batch = svc.store.get_batch(batch_id)
    assert batch is not None
    assert batch.state is BatchState.DONE
    with pytest.raises(NotFound):
        svc.as_agent.lease(agent_id)  # offline until it registers again
    with pytest.raises(NotFound):
        svc.as_agent.deregister("emulator-unknown")

    register(svc)
    again = ids(lease(svc, agent_id))
    assert again == job_ids[: len(again)]


def test_deregister_of_an_idle_agent_marks_it_offline(svc: MemoryServices) -> None:
    agent_id = register(svc)

    assert svc.as_agent.deregister(agent_id) == 0

    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert agent.status is AgentStatus.OFFLINE


def test_heartbeat_extends_the_lease(svc: MemoryServices, clock: FakeClock) -> None:
    submit_and_admit(svc)
    agent_id = register(svc)
    batch = lease(svc, agent_id).batch
    clock.advance(LEASE - 10)

    beat = svc.as_agent.heartbeat(agent_id)

    assert beat.lease_expires_at == clock() + LEASE
    clock.advance(20)  # past the first lease, within the extended one
    assert svc.reaper.sweep().expired_batches == 0
    stored = svc.store.get_batch(batch.batch_id)
    assert stored is not None
    assert stored.state is BatchState.ACTIVE


def test_heartbeat_without_a_batch_has_no_lease(svc: MemoryServices) -> None:
    agent_id = register(svc)

    beat = svc.as_agent.heartbeat(agent_id)

    assert (beat.agent.agent_id, beat.lease_expires_at) == (agent_id, None)
    with pytest.raises(NotFound):
        svc.as_agent.heartbeat("emulator-ghost")


# ================================================================== reaper
def _lapsed_batch_with_mixed_progress(
    svc: MemoryServices, clock: FakeClock
) -> tuple[str, str, list[str]]:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    assert ids(leased)[:2] == job_ids[:2]
    svc.as_agent.start(agent_id, job_ids[0], batch_id)
    report(svc, agent_id, job_ids[0], batch_id)
    svc.as_agent.start(agent_id, job_ids[1], batch_id)  # job 2 never started
    clock.advance(LEASE + 1)
    return agent_id, batch_id, job_ids


def test_reaper_expires_a_lapsed_lease_and_requeues_unfinished_jobs(
    svc: MemoryServices, clock: FakeClock
) -> None:
    agent_id, batch_id, job_ids = _lapsed_batch_with_mixed_progress(svc, clock)
    passed = job(svc, job_ids[0])
    unfinished = len(svc.store.batches[batch_id].job_ids) - 1

    sweep = svc.reaper.sweep()

    assert (sweep.expired_batches, sweep.requeued_jobs) == (1, unfinished)
    batch = svc.store.get_batch(batch_id)
    assert batch is not None
    assert batch.state is BatchState.EXPIRED
    assert not svc.store.in_lease_index(batch_id)
    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert (agent.status, agent.batch_id) == (AgentStatus.OFFLINE, None)
    assert job(svc, job_ids[0]) == passed  # a finished result is kept
    running, assigned = job(svc, job_ids[1]), job(svc, job_ids[2])
    assert (running.status, running.attempts) == (JobStatus.QUEUED, 1)
    assert (assigned.status, assigned.attempts) == (JobStatus.QUEUED, 0)
    assert svc.store.in_backlog(job_ids[1])
    assert svc.store.in_backlog(job_ids[2])
    assert "heartbeat" in (running.message or "")


def test_reaper_leaves_a_live_lease_alone(svc: MemoryServices, clock: FakeClock) -> None:
    submit_and_admit(svc)
    agent_id = register(svc)
    lease(svc, agent_id)
    clock.advance(LEASE - 1)
    before = svc.store.snapshot()

    sweep = svc.reaper.sweep()

    assert (sweep.expired_batches, sweep.requeued_jobs, sweep.offline_agents) == (0, 0, 0)
    assert svc.store.snapshot() == before


def test_a_heartbeat_after_the_reaper_ran_is_not_found(
    svc: MemoryServices, clock: FakeClock
) -> None:
    agent_id, _, _ = _lapsed_batch_with_mixed_progress(svc, clock)
    svc.reaper.sweep()

    with pytest.raises(NotFound, match="register again"):
        svc.as_agent.heartbeat(agent_id)


def test_a_heartbeat_on_a_fenced_batch_is_a_conflict(svc: MemoryServices, clock: FakeClock) -> None:
    agent_id, batch_id, _ = _lapsed_batch_with_mixed_progress(svc, clock)
    unfinished = len(svc.store.batches[batch_id].job_ids) - 1
    # The reaper fenced the batch, then crashed before cleaning up.
    assert svc.store.expire_batch(batch_id, clock())

    with pytest.raises(Conflict, match="lease lost"):
        svc.as_agent.heartbeat(agent_id)
    assert svc.as_agent.lease(agent_id) is None  # no resuming an expired batch

    # The next sweep finishes the cleanup.
    sweep = svc.reaper.sweep()
    assert (sweep.expired_batches, sweep.requeued_jobs) == (0, unfinished)
    assert not svc.store.in_lease_index(batch_id)


def test_running_the_reaper_twice_changes_nothing_the_second_time(
    svc: MemoryServices, clock: FakeClock
) -> None:
    _lapsed_batch_with_mixed_progress(svc, clock)
    register(svc, "idle-one")
    clock.advance(OFFLINE + 1)
    first = svc.reaper.sweep()
    assert first.expired_batches == 1
    assert first.offline_agents == 1
    before = svc.store.snapshot()

    second = svc.reaper.sweep()

    assert second == SweepReport(0, 0, 0, 0, 0, 0)
    assert svc.store.snapshot() == before


def test_a_silent_idle_agent_goes_offline_and_gets_no_work(
    svc: MemoryServices, clock: FakeClock
) -> None:
    agent_id = register(svc)
    clock.advance(OFFLINE + 1)
    job_ids = submit_and_admit(svc)

    assert svc.dispatcher.plan() == []  # too quiet to trust, even before the reaper runs
    assert svc.reaper.sweep().offline_agents == 1
    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert agent.status is AgentStatus.OFFLINE
    assert svc.dispatcher.plan() == []
    assert statuses(svc, job_ids) == [JobStatus.QUEUED] * 3
    with pytest.raises(NotFound):
        svc.as_agent.lease(agent_id)


def test_an_agent_seen_recently_stays_online(svc: MemoryServices, clock: FakeClock) -> None:
    agent_id = register(svc)
    clock.advance(OFFLINE - 1)
    svc.as_agent.heartbeat(agent_id)
    clock.advance(OFFLINE - 1)

    assert svc.reaper.sweep().offline_agents == 0
    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert agent.status is AgentStatus.IDLE


def test_repeated_lease_loss_exhausts_the_attempts(svc: MemoryServices, clock: FakeClock) -> None:
    (job_id,) = submit_and_admit(svc, retries=1, test_paths=["tests/crashy.spec.js"])

    for attempt in (1, 2):
        agent_id = register(svc)
        leased = lease(svc, agent_id)
        assert [j.job_id for j in leased.jobs] == [job_id]
        svc.as_agent.start(agent_id, job_id, leased.batch.batch_id)
        clock.advance(LEASE + 1)
        svc.reaper.sweep()
        assert job(svc, job_id).attempts == attempt

    final = job(svc, job_id)
    assert final.status is JobStatus.ERROR
    assert final.finished_at is not None
    assert not svc.store.in_backlog(job_id)
    register(svc)
    assert svc.as_agent.lease(agent_id) is None


def test_lease_loss_before_start_does_not_count_an_attempt(
    svc: MemoryServices, clock: FakeClock
) -> None:
    (job_id,) = submit_and_admit(svc, retries=0, test_paths=["tests/a.spec.js"])

    for _ in range(3):
        agent_id = register(svc)
        lease(svc, agent_id)
        clock.advance(LEASE + 1)
        svc.reaper.sweep()

    assert (job(svc, job_id).status, job(svc, job_id).attempts) == (JobStatus.QUEUED, 0)


# ================================================================== cancel
def test_cancel_queued_jobs_and_not_finished_ones(svc: MemoryServices, clock: FakeClock) -> None:
    job_ids = submit_and_admit(svc)
    clock.advance(3)

    cancelled = svc.submissions.cancel("acme", job_ids[2])

    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at == clock()
    assert not svc.store.in_backlog(job_ids[2])
    assert svc.submissions.cancel("acme", job_ids[2]).status is JobStatus.CANCELLED  # repeat

    agent_id = register(svc)
    leased = lease(svc, agent_id)
    handed_out = ids(leased)
    assert handed_out == job_ids[: len(handed_out)]
    assert job_ids[2] not in handed_out  # the cancelled job is not handed out
    svc.as_agent.start(agent_id, job_ids[0], leased.batch.batch_id)
    report(svc, agent_id, job_ids[0], leased.batch.batch_id)
    with pytest.raises(Conflict, match="already finished"):
        svc.submissions.cancel("acme", job_ids[0])
    assert job(svc, job_ids[0]).status is JobStatus.PASSED


def test_a_cancelled_never_admitted_job_is_not_resent(
    svc: MemoryServices, clock: FakeClock
) -> None:
    svc.queue.error = ConnectionError("down")
    job_ids = legacy_submit(svc)
    svc.queue.error = None
    svc.submissions.cancel("acme", job_ids[0])
    clock.advance(GRACE + 1)

    svc.reaper.sweep()

    assert sorted(svc.queue.sent_ids) == sorted(job_ids[1:])


# ================================================================== the fake itself
def test_the_fake_store_hands_out_copies(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    copy = job(svc, job_ids[0])
    copy.status = JobStatus.PASSED
    run = svc.store.get_run(copy.run_id)
    assert run is not None
    run.job_ids.clear()

    assert job(svc, job_ids[0]).status is JobStatus.QUEUED
    stored_run = svc.store.get_run(copy.run_id)
    assert stored_run is not None
    assert stored_run.job_ids == job_ids


# ================================================================= timeouts
def test_a_hung_job_on_a_heartbeating_agent_times_out_after_its_timeout_and_grace(
    svc: MemoryServices, clock: FakeClock
) -> None:
    job_ids = submit_and_admit(svc, timeout_s=100)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    svc.as_agent.start(agent_id, job_ids[0], batch_id)

    clock.advance(100 + LEASE - 1)
    svc.as_agent.heartbeat(agent_id)  # the agent is alive; only the test hangs
    assert svc.reaper.sweep().timed_out_jobs == 0
    assert job(svc, job_ids[0]).status is JobStatus.RUNNING

    clock.advance(2)
    svc.as_agent.heartbeat(agent_id)
    assert svc.reaper.sweep().timed_out_jobs == 1
    hung = job(svc, job_ids[0])
    assert hung.status is JobStatus.TIMED_OUT
    assert "timeout_s=100" in (hung.message or "")
    assert job(svc, job_ids[1]).status is JobStatus.ASSIGNED  # not started: untouched
    with pytest.raises(Conflict):
        report(svc, agent_id, job_ids[0], batch_id)
    assert svc.reaper.sweep().timed_out_jobs == 0  # a second sweep changes nothing


def test_resends_back_off_while_the_queue_is_only_backed_up(
    svc: MemoryServices, clock: FakeClock
) -> None:
    legacy_submit(svc, 1, send=False)
    start = clock()
    sent_before = len(svc.queue.sent)
    resent_at = []
    for _ in range(8 * int(GRACE)):
        clock.advance(1)
        if svc.reaper.sweep().resent_jobs:
            resent_at.append(round(clock() - start))
    assert len(svc.queue.sent) > sent_before
    # Just past grace, 3x grace, 7x grace: not every sweep.
    assert resent_at == [int(GRACE) + 1, 3 * int(GRACE) + 1, 7 * int(GRACE) + 1]


def test_deregister_also_hands_back_a_batch_assigned_while_it_ran(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    original = svc.store.deregister_agent
    raced = []

    def plan_sneaks_in(agent: str, now: float) -> bool:
        if not raced:  # the first offline write loses to a plan that assigns a batch
            raced.append(svc.dispatcher.plan([Target.EMULATOR]))
        return original(agent, now)

    svc.store.deregister_agent = plan_sneaks_in  # type: ignore[method-assign]

    requeued = svc.as_agent.deregister(agent_id)

    assert len(raced[0]) == 1
    assert requeued == len(raced[0][0].job_ids)
    gone = svc.store.get_agent(agent_id)
    assert gone is not None
    assert (gone.status, gone.batch_id) == (AgentStatus.OFFLINE, None)
    assert statuses(svc, job_ids) == [JobStatus.QUEUED] * 3


# ============================================================ agent identity
def _register(
    svc: MemoryServices, device_id: str, fleet: Principal, target: Target = Target.EMULATOR
) -> AgentCredential:
    registration = svc.agents.register(fleet, target, device_id, None)
    parsed = parse_credential(registration.credential)
    assert parsed is not None
    assert parsed[0] == registration.agent.agent_id
    return AgentCredential(*parsed)


def _lease(svc: MemoryServices, who: AgentCredential) -> LeasedBatch | None:
    svc.plan_pending()  # the dispatcher handles the plan requests queued so far
    return svc.agents.lease(who)


def _every_call(svc: MemoryServices, who: AgentCredential, job_id: str, batch_id: str) -> list:
    return [
        lambda: svc.agents.heartbeat(who),
        lambda: svc.agents.lease(who),
        lambda: svc.agents.record_install(who, batch_id),
        lambda: svc.agents.start(who, job_id, batch_id),
        lambda: svc.agents.report(who, job_id, batch_id, JobStatus.PASSED, 1.0, None, "x"),
        lambda: svc.agents.report(who, job_id, batch_id, JobStatus.ERROR, 1.0, None, None),
        lambda: svc.agents.complete(who, batch_id),
        lambda: svc.agents.deregister(who),
    ]


def test_a_second_process_on_the_same_device_supersedes_the_first(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    first = _register(svc, "d1", svc.fleet)
    leased = _lease(svc, first)
    assert leased is not None
    batch_id = leased.batch.batch_id
    svc.agents.start(first, job_ids[0], batch_id)

    second = _register(svc, "d1", svc.fleet)  # same device, new process

    assert second.agent_id == first.agent_id
    assert second.secret != first.secret
    for call in _every_call(svc, first, job_ids[0], batch_id):
        with pytest.raises(Conflict, match="not the agent's current registration"):
            call()
    resumed = _lease(svc, second)
    assert resumed is not None
    assert resumed.batch.batch_id == batch_id  # the new process resumes the batch
    assert job(svc, job_ids[0]).status is JobStatus.RUNNING
    assert svc.artifacts.objects == {}  # the refused report wrote no output


def test_a_forged_credential_for_an_agent_changes_nothing(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    real = _register(svc, "d1", svc.fleet)
    leased = _lease(svc, real)
    assert leased is not None
    batch_id = leased.batch.batch_id
    svc.agents.start(real, job_ids[0], batch_id)
    before = svc.store.get_agent(real.agent_id)

    forged = AgentCredential(real.agent_id, "guessed")
    for call in _every_call(svc, forged, job_ids[0], batch_id):
        with pytest.raises(Conflict):
            call()
    assert svc.store.get_agent(real.agent_id) == before  # not even its last_seen moved
    assert job(svc, job_ids[0]).status is JobStatus.RUNNING


def test_another_agents_error_report_leaves_the_job_alone(svc: MemoryServices) -> None:
    """Issue 8 item 2: the requeue path checks the reporter holds the job."""
    job_ids = submit_and_admit(svc)
    holder = _register(svc, "b", svc.fleet)
    leased = _lease(svc, holder)
    assert leased is not None
    batch_id = leased.batch.batch_id
    svc.agents.start(holder, job_ids[0], batch_id)
    other = _register(svc, "c", svc.fleet)

    for _ in range(3):
        with pytest.raises(Conflict, match="does not hold it"):
            svc.agents.report(other, job_ids[0], batch_id, JobStatus.ERROR, 1.0, "x", None)

    after = job(svc, job_ids[0])
    assert (after.status, after.attempts, after.agent_id) == (
        JobStatus.RUNNING,
        0,
        holder.agent_id,
    )
    svc.agents.report(holder, job_ids[0], batch_id, JobStatus.PASSED, 1.0, None, None)
    assert job(svc, job_ids[0]).status is JobStatus.PASSED


def test_a_fleet_token_scoped_to_a_target_registers_only_that_target(svc: MemoryServices) -> None:
    devices_only = Principal(TokenKind.AGENT, None, Target.DEVICE, "devices-token")

    with pytest.raises(Forbidden, match="target: this fleet token registers only device"):
        svc.agents.register(devices_only, Target.EMULATOR, "d1", None)
    assert svc.store.agents == {}
    assert _register(svc, "d1", devices_only, Target.DEVICE).agent_id == "device-d1"


def test_a_device_id_registered_by_another_fleet_token_is_refused(svc: MemoryServices) -> None:
    first = _register(svc, "d1", svc.fleet)
    other_fleet = Principal(TokenKind.AGENT, None, None, "another-fleet")

    with pytest.raises(Conflict, match="device_id: agent emulator-d1 belongs to another fleet"):
        svc.agents.register(other_fleet, Target.EMULATOR, "d1", None)
    svc.agents.heartbeat(first)  # the first registration still stands


def test_a_private_lab_runs_only_its_orgs_jobs(svc: MemoryServices) -> None:
    acme_lab = Principal(TokenKind.AGENT, "acme", None, "acme-lab-token")
    other_jobs = submit_and_admit(svc, org_id="globex", app_version_id="g1")
    lab = _register(svc, "pixel", acme_lab)
    assert lab.agent_id == agent_id_for(Target.EMULATOR, "pixel", "acme") == "emulator-pixel@acme"

    assert _lease(svc, lab) is None  # globex's jobs wait for a shared agent

    acme_jobs = submit_and_admit(svc, org_id="acme")
    leased = _lease(svc, lab)
    assert leased is not None
    assert leased.batch.org_id == "acme"
    assert set(leased.batch.job_ids) <= set(acme_jobs)
    shared = _register(svc, "pixel", svc.fleet)  # the same device name in the shared fleet
    assert shared.agent_id == "emulator-pixel"
    got = _lease(svc, shared)
    assert got is not None
    assert set(got.batch.job_ids) <= set(other_jobs)


def test_a_lab_org_may_also_use_the_shared_fleet(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc, org_id="acme")
    shared = _register(svc, "d1", svc.fleet)
    leased = _lease(svc, shared)
    assert leased is not None
    assert set(leased.batch.job_ids) <= set(job_ids)
