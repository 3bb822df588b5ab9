"""An error no retry can cure (``retryable`` false: BrowserStack refused the credentials)
ends the job as ``error`` at once, even with retries left; an ordinary error still goes
back to the queue (tests/unit/test_services.py). In-memory fakes, fake clock."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qgjob_backend.agent_protocol import ProgressRequest, ReportRequest
from qgjob_backend.schema import JobStatus
from qgjob_backend.services.agents import ReportedResult
from qgjob_backend.services.errors import Conflict
from tests.unit.fakes import FakeClock, MemoryServices, build_memory_services
from tests.unit.test_services import SETTINGS, job, lease, register, submit_and_admit

REFUSED = (
    "install failed: BrowserStack App Automate: BrowserStack refused the credentials (401) "
    "for upload: check BROWSERSTACK_USERNAME and BROWSERSTACK_ACCESS_KEY on this agent "
    "(not retried)"
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(SETTINGS, clock)


def _final_error(job_id: str) -> ReportedResult:
    """The result an agent sends for a job of a batch whose install BrowserStack refused."""
    return ReportedResult(job_id, JobStatus.ERROR, 0.0, REFUSED, retryable=False)


def test_a_non_retryable_error_ends_the_job_although_retries_are_left(
    svc: MemoryServices,
) -> None:
    [job_id, *_] = submit_and_admit(svc, retries=3)
    agent_id = register(svc)
    batch_id = lease(svc, agent_id).batch.batch_id
    svc.as_agent.start(agent_id, job_id, batch_id)

    final = svc.agents.report(
        svc.as_agent.credential(agent_id),
        job_id,
        batch_id,
        JobStatus.ERROR,
        0.0,
        REFUSED,
        None,
        retryable=False,
    )

    assert final.status is JobStatus.ERROR
    assert final.message == REFUSED
    assert final.finished_at is not None
    assert final.attempts == 0  # no retry was spent: none was made
    assert not svc.store.in_backlog(job_id)
    assert job(svc, job_id) == final


def test_a_failed_install_not_retryable_ends_every_job_of_the_batch(svc: MemoryServices) -> None:
    """The agent's install step was refused (401): each job of the batch is reported
    error, not retryable, in the agent's progress calls; none goes back to the queue."""
    job_ids = submit_and_admit(svc, retries=2)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    credential = svc.as_agent.credential(agent_id)
    batch_jobs = [j.job_id for j in leased.jobs]
    assert batch_jobs == job_ids

    # As the agent sends them: each result with the next job's start, then the completion.
    progress = svc.agents.progress(credential, batch_id, start=batch_jobs[0])
    assert progress.started is not None
    assert progress.started.accepted
    for done, following in zip(batch_jobs, [*batch_jobs[1:], None], strict=True):
        progress = svc.agents.progress(
            credential,
            batch_id,
            results=[_final_error(done)],
            start=following,
            complete=following is None,
        )
        assert [(s.job_id, s.status) for s in progress.results] == [(done, JobStatus.ERROR)]

    assert progress.completed is True
    assert progress.requeued == 0
    for job_id in job_ids:
        ended = job(svc, job_id)
        assert (ended.status, ended.message, ended.attempts) == (JobStatus.ERROR, REFUSED, 0)
        assert not svc.store.in_backlog(job_id)
    assert svc.as_agent.lease(agent_id) is None  # nothing was put back to run again


def test_a_replayed_non_retryable_error_is_accepted_once(
    svc: MemoryServices, clock: FakeClock
) -> None:
    [job_id, *_] = submit_and_admit(svc, retries=2)
    agent_id = register(svc)
    batch_id = lease(svc, agent_id).batch.batch_id
    credential = svc.as_agent.credential(agent_id)
    svc.as_agent.start(agent_id, job_id, batch_id)
    result = _final_error(job_id)
    first = svc.agents.progress(credential, batch_id, results=[result])
    clock.advance(3)
    before = svc.store.snapshot()

    again = svc.agents.progress(credential, batch_id, results=[result])

    assert [s.status for s in again.results] == [s.status for s in first.results]
    assert again.results[0].accepted
    assert svc.store.snapshot() == before  # nothing written the second time


def test_a_non_retryable_error_from_another_agent_changes_nothing(svc: MemoryServices) -> None:
    [job_id, *_] = submit_and_admit(svc, retries=2)
    agent_id = register(svc)
    batch_id = lease(svc, agent_id).batch.batch_id
    svc.as_agent.start(agent_id, job_id, batch_id)
    other = register(svc, device_id="d2")
    before = job(svc, job_id)

    with pytest.raises(Conflict):
        svc.agents.report(
            svc.as_agent.credential(other),
            job_id,
            batch_id,
            JobStatus.ERROR,
            0.0,
            REFUSED,
            None,
            retryable=False,
        )

    assert job(svc, job_id) == before


# ------------------------------------------------------------------ the wire field


def test_retryable_is_optional_and_omitted_when_true() -> None:
    """Older agents never send it, and a new agent sends it only when it is false (so an
    older server, which forbids unknown fields, still takes its ordinary results)."""
    request = ProgressRequest.model_validate(
        {"results": [{"job_id": "j1", "status": "error", "duration_s": 1}]}
    )
    assert request.results[0].retryable is True
    assert "retryable" not in request.model_dump(mode="json", exclude_defaults=True)["results"][0]

    final = ProgressRequest.model_validate(
        {"results": [{"job_id": "j1", "status": "error", "duration_s": 0, "retryable": False}]}
    )
    assert final.model_dump(mode="json", exclude_defaults=True)["results"][0]["retryable"] is False


@pytest.mark.parametrize("status", ["passed", "failed", "timed_out"])
def test_only_an_error_can_be_not_retryable(status: str) -> None:
    with pytest.raises(ValidationError, match="retryable"):
        ProgressRequest.model_validate(
            {"results": [{"job_id": "j1", "status": status, "duration_s": 1, "retryable": False}]}
        )
    with pytest.raises(ValidationError, match="retryable"):
        ReportRequest.model_validate(
            {"batch_id": "b1", "status": status, "duration_s": 1, "retryable": False}
        )
    with pytest.raises(ValidationError, match="retryable"):
        ReportRequest.model_validate(
            {"batch_id": "b1", "status": "error", "duration_s": 1, "retryable": "perhaps"}
        )
