"""AgentService.progress: install, results, the next start and completion in one call."""

from __future__ import annotations

import pytest

from qgjob_backend.domain.models import AgentStatus, BatchState
from qgjob_backend.schema import JobStatus
from qgjob_backend.services.agents import AgentCredential, Progress, ReportedResult
from qgjob_backend.services.errors import Conflict
from tests.unit.fakes import FakeClock, MemoryServices, build_memory_services
from tests.unit.test_services import (
    SETTINGS,
    ids,
    lease,
    register,
    statuses,
    submit_and_admit,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(SETTINGS, clock)


def passed(job_id: str, output: str | None = None) -> ReportedResult:
    return ReportedResult(job_id, JobStatus.PASSED, 1.5, None, output)


def progress(
    svc: MemoryServices,
    agent_id: str,
    batch_id: str,
    *,
    installed: bool = False,
    results: tuple[ReportedResult, ...] = (),
    start: str | None = None,
    complete: bool = False,
    who: AgentCredential | None = None,
) -> Progress:
    return svc.agents.progress(
        who or svc.as_agent.credential(agent_id),
        batch_id,
        installed=installed,
        results=results,
        start=start,
        complete=complete,
    )


def _state(svc: MemoryServices, job_id: str) -> tuple[object, ...]:
    job = svc.store.get_job(job_id)
    assert job is not None
    return (job.status, job.agent_id, job.batch_id, job.started_at, job.finished_at, job.attempts)


def test_a_batch_runs_with_one_call_per_test(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    in_batch = ids(leased)
    assert len(in_batch) == 3

    first = progress(svc, agent_id, batch_id, installed=True, start=in_batch[0])
    assert first.installed is True
    assert first.started is not None
    assert first.started.status is JobStatus.RUNNING
    assert svc.store.batches[batch_id].installed_at is not None
    assert statuses(svc, in_batch) == [JobStatus.RUNNING, JobStatus.ASSIGNED, JobStatus.ASSIGNED]

    second = progress(svc, agent_id, batch_id, results=(passed(in_batch[0]),), start=in_batch[1])
    assert [(s.job_id, s.status, s.accepted) for s in second.results] == [
        (in_batch[0], JobStatus.PASSED, True)
    ]
    assert second.started is not None
    assert second.started.accepted
    assert statuses(svc, in_batch)[:2] == [JobStatus.PASSED, JobStatus.RUNNING]

    # Two results at once (the second test was fast, or a blip delayed the first report)
    # and the batch's completion.
    progress(svc, agent_id, batch_id, start=in_batch[2])  # started before the blip
    last = progress(
        svc,
        agent_id,
        batch_id,
        results=(passed(in_batch[1]), passed(in_batch[2])),
        complete=True,
    )
    assert [s.accepted for s in last.results] == [True, True]
    assert (last.completed, last.requeued) == (True, 0)
    assert statuses(svc, job_ids) == [JobStatus.PASSED] * 3
    assert svc.store.batches[batch_id].state is BatchState.DONE
    agent = svc.store.get_agent(agent_id)
    assert agent is not None
    assert (agent.status, agent.batch_id) == (AgentStatus.IDLE, None)


def started_batch(svc: MemoryServices) -> tuple[str, str, list[str]]:
    """A submitted suite leased by a new agent, installed and its first test started."""
    submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    in_batch = ids(leased)
    progress(svc, agent_id, leased.batch.batch_id, installed=True, start=in_batch[0])
    return agent_id, leased.batch.batch_id, in_batch


def test_the_results_of_one_call_end_their_jobs_in_one_write(
    svc: MemoryServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_id, batch_id, in_batch = started_batch(svc)
    writes: list[str] = []
    for name in ("finish_job", "finish_jobs"):
        real = getattr(svc.store, name)

        def counted(*args: object, _real: object = real, _name: str = name, **kw: object) -> object:
            writes.append(_name)
            return _real(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(svc.store, name, counted)

    # Three short tests told in one call (`qgjob agent --report-every`): two never started.
    done = progress(svc, agent_id, batch_id, results=tuple(passed(j) for j in in_batch))

    assert [(s.job_id, s.status) for s in done.results] == [(j, JobStatus.PASSED) for j in in_batch]
    assert writes == ["finish_jobs"]
    run = svc.store.get_run(svc.store.get_job(in_batch[0]).run_id)  # type: ignore[union-attr]
    assert run is not None
    assert run.counts == {"passed": 3}


def test_a_result_sent_twice_in_one_call_is_written_once(svc: MemoryServices) -> None:
    agent_id, batch_id, in_batch = started_batch(svc)
    twice = (passed(in_batch[0]), passed(in_batch[1]), passed(in_batch[0]))

    done = progress(svc, agent_id, batch_id, results=twice)

    assert [(s.job_id, s.status) for s in done.results] == [
        (in_batch[0], JobStatus.PASSED),
        (in_batch[1], JobStatus.PASSED),
        (in_batch[0], JobStatus.PASSED),
    ]
    run = svc.store.get_run(svc.store.get_job(in_batch[0]).run_id)  # type: ignore[union-attr]
    assert run is not None
    assert run.counts["passed"] == 2


def test_when_the_shared_write_is_refused_each_result_gets_its_own_answer(
    svc: MemoryServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_id, batch_id, in_batch = started_batch(svc)
    # The shared write loses a race (say, a cancel of one job after the call read it).
    monkeypatch.setattr(svc.store, "finish_jobs", lambda finishes, now: None)

    done = progress(svc, agent_id, batch_id, results=tuple(passed(j) for j in in_batch[:2]))

    assert [(s.job_id, s.status) for s in done.results] == [
        (j, JobStatus.PASSED) for j in in_batch[:2]
    ]
    assert statuses(svc, in_batch) == [JobStatus.PASSED, JobStatus.PASSED, JobStatus.ASSIGNED]


def test_a_replayed_progress_call_is_accepted_and_changes_nothing(
    svc: MemoryServices, clock: FakeClock
) -> None:
    agent_id, batch_id, in_batch = started_batch(svc)
    call = {"results": (passed(in_batch[0]),), "start": in_batch[1]}
    once = progress(svc, agent_id, batch_id, **call)  # type: ignore[arg-type]
    before = {j: _state(svc, j) for j in in_batch}
    counters = svc.submissions.metrics("acme")
    clock.advance(5)
    again = progress(svc, agent_id, batch_id, **call)  # type: ignore[arg-type]

    assert again == once
    # Only the start's updated_at moves (as a replayed POST .../start does).
    assert {j: _state(svc, j) for j in in_batch} == before
    assert svc.submissions.metrics("acme") == counters


def test_a_lost_lease_refuses_the_results_and_applies_nothing_after_them(
    svc: MemoryServices, clock: FakeClock
) -> None:
    job_ids = submit_and_admit(svc)
    old_agent = register(svc, "d1")
    old = lease(svc, old_agent)
    batch_id = old.batch.batch_id
    progress(svc, old_agent, batch_id, installed=True, start=job_ids[0])
    progress(svc, old_agent, batch_id, results=(passed(job_ids[0]),), start=job_ids[1])
    clock.advance(SETTINGS.lease_seconds + 1)  # d1 goes silent; d2 takes its work
    new_agent = register(svc, "d2")
    svc.reaper.sweep()
    svc.plan_pending()
    assert svc.store.get_job(job_ids[1]).agent_id == new_agent  # type: ignore[union-attr]
    before = svc.store.snapshot()

    late = progress(
        svc,
        old_agent,
        batch_id,
        installed=True,
        results=(passed(job_ids[1]), passed(job_ids[0])),
        start=job_ids[2],
        complete=False,
    )

    assert late.installed is False
    # The first refusal ends the call: even the replay of an accepted result is not applied.
    assert [(s.job_id, s.accepted) for s in late.results] == [
        (job_ids[1], False),
        (job_ids[0], False),
    ]
    assert all(s.refused and s.refused.startswith("not applied") for s in late.results)
    assert late.started is not None
    assert not late.started.accepted
    assert svc.store.snapshot() == before


def test_a_refused_start_leaves_the_accepted_results_and_does_not_complete(
    svc: MemoryServices, clock: FakeClock
) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    progress(svc, agent_id, batch_id, start=job_ids[0])
    answer = progress(svc, agent_id, batch_id, results=(passed(job_ids[0]),), start="no-such-job")

    assert answer.results[0].accepted
    assert answer.started is not None
    assert not answer.started.accepted
    assert "no-such-job" in (answer.started.refused or "")
    assert svc.store.get_job(job_ids[0]).status is JobStatus.PASSED  # type: ignore[union-attr]
    assert svc.store.batches[batch_id].state is BatchState.ACTIVE


def test_complete_with_start_is_refused_by_the_protocol() -> None:
    from pydantic import ValidationError

    from qgjob_backend.agent_protocol import ProgressRequest

    with pytest.raises(ValidationError, match="complete"):
        ProgressRequest(start="j1", complete=True)
    with pytest.raises(ValidationError):
        ProgressRequest(
            results=[{"job_id": f"j{i}", "status": "passed", "duration_s": 1} for i in range(11)]
        )


def test_another_agents_credential_is_refused_before_any_step(svc: MemoryServices) -> None:
    job_ids = submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    progress(svc, agent_id, batch_id, start=job_ids[0])
    before = svc.store.snapshot()
    forged = AgentCredential(agent_id, "guessed")
    with pytest.raises(Conflict):
        progress(svc, agent_id, batch_id, installed=True, results=(passed(job_ids[0]),), who=forged)
    assert svc.store.snapshot() == before
