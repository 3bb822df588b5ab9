"""VaultService over in-memory fakes of its three ports, and the API side that feeds it
(AgentService queues a message per result that carries a BrowserStack session)."""

from __future__ import annotations

import hashlib

import pytest

from qgjob_backend.domain.vault import Outcome, VaultMessage, archive_key
from qgjob_backend.ports import FetchedSession, MissingCredentials, ResultsApiUnreachable
from qgjob_backend.schema import JobStatus, SuiteSubmission, Target
from qgjob_backend.services.agents import ReportedResult
from qgjob_backend.services.vault import ArchiveFailed, VaultRetryLater, VaultService, VaultSettings
from tests.unit.fakes import (
    FakeClock,
    MemoryAuditStore,
    MemoryObjectStore,
    MemoryVaultQueue,
    ScriptedResultsApi,
    build_memory_services,
)

URL = "https://bs.test/app-automate/sessions/s1.json"
BODY = b'{"automation_session": {"status": "passed"}}'
MESSAGE = VaultMessage(org_id="acme", job_id="j1", attempt=1, session_id="s1")


def ok(body: bytes = BODY) -> FetchedSession:
    return FetchedSession(200, body, URL, size=len(body))


def status(code: int, retry_after: float | None = None) -> FetchedSession:
    return FetchedSession(code, b"", URL, retry_after_s=retry_after)


class Rig:
    def __init__(self, *script: FetchedSession | Exception, **settings: float) -> None:
        self.api = ScriptedResultsApi(*script)
        self.objects = MemoryObjectStore()
        self.audit = MemoryAuditStore()
        self.sleeps: list[float] = []
        self.counts: list[str] = []
        self.vault = VaultService(
            self.api,
            self.objects,
            self.audit,
            clock=lambda: 100.0,
            sleep=self.sleeps.append,
            settings=VaultSettings(**settings),  # type: ignore[arg-type]
            count=self.counts.append,
        )


def test_archives_then_audits() -> None:
    rig = Rig(ok())

    record = rig.vault.archive(MESSAGE)

    assert rig.objects.objects == {archive_key("acme", "j1", 1): BODY}
    assert record.outcome is Outcome.ARCHIVED
    assert record.sha256 == hashlib.sha256(BODY).hexdigest()
    assert rig.audit.get("j1", 1) == record


def test_backoff_doubles_honours_retry_after_and_is_capped() -> None:
    rig = Rig(status(503), status(429, 5.0), status(503), ok(), max_attempts=6, max_delay_s=4.0)

    rig.vault.archive(MESSAGE)

    assert rig.sleeps == [0.5, 4.0, 2.0]  # 0.5; max(1.0, 5.0) capped at 4.0; 2.0


def test_the_time_budget_stops_retrying_before_the_attempts_run_out() -> None:
    rig = Rig(status(503, 8.0), max_attempts=10, max_delay_s=8.0, max_wait_s=20.0)

    with pytest.raises(VaultRetryLater):
        rig.vault.archive(MESSAGE)

    assert rig.sleeps == [8.0, 8.0]  # a third wait would pass 20 s
    assert rig.audit.records == {}


def test_a_connection_error_is_retried() -> None:
    rig = Rig(ResultsApiUnreachable("reset"), ok())

    assert rig.vault.archive(MESSAGE).outcome is Outcome.ARCHIVED
    assert rig.sleeps == [0.5]


def test_an_object_store_failure_writes_no_record_and_counts_it() -> None:
    rig = Rig(ok())
    rig.objects.fail_with = PermissionError("denied")

    with pytest.raises(ArchiveFailed):
        rig.vault.archive(MESSAGE)

    assert rig.audit.records == {}
    assert rig.counts.count("VaultArchiveFailures") == 1


def test_a_duplicate_fetches_nothing() -> None:
    rig = Rig(ok())
    first = rig.vault.archive(MESSAGE)

    assert rig.vault.archive(MESSAGE) == first
    assert len(rig.api.calls) == 1
    assert rig.objects.puts == 1


def test_missing_credentials_come_back_later() -> None:
    rig = Rig(MissingCredentials("none"))

    with pytest.raises(VaultRetryLater):
        rig.vault.archive(MESSAGE)
    assert rig.sleeps == []


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (status(401), Outcome.UNAUTHORIZED),
        (status(403), Outcome.UNAUTHORIZED),
        (status(404), Outcome.NOT_FOUND),
        (status(400), Outcome.REJECTED),
        (ok(b"<html>"), Outcome.MALFORMED),
        (ok(b"[1]"), Outcome.MALFORMED),
        (ok(b"{" + b" " * 100 + b"}"), Outcome.TOO_LARGE),
    ],
)
def test_answers_never_archived_are_audited_once_without_retry(
    answer: FetchedSession, outcome: Outcome
) -> None:
    rig = Rig(answer, max_bytes=64)

    record = rig.vault.archive(MESSAGE)

    assert record.outcome is outcome
    assert record.s3_key is None
    assert rig.objects.objects == {}
    assert len(rig.api.calls) == 1
    assert rig.sleeps == []


def test_entries_carry_links_only_for_archives() -> None:
    rig = Rig(ok())
    rig.vault.archive(MESSAGE)
    rig.api.script = [status(401)]
    rig.vault.archive(MESSAGE.model_copy(update={"attempt": 2}))

    links = [(e.record.attempt, e.link) for e in rig.vault.entries("j1")]

    assert links == [(1, "memory://vault/acme/j1/1.json?expires=300"), (2, None)]


def test_a_message_is_validated() -> None:
    with pytest.raises(ValueError, match="session_id"):
        VaultMessage(org_id="acme", job_id="j1", attempt=1, session_id="../x")
    with pytest.raises(ValueError, match="attempt"):
        VaultMessage(org_id="acme", job_id="j1", attempt=0, session_id="s1")


# ------------------------------------------------------------------ the API side


def _one_running_browserstack_job(queue: MemoryVaultQueue, retries: int = 0):  # type: ignore[no-untyped-def]
    svc = build_memory_services(clock=FakeClock(1_000.0), vault_queue=queue)
    suite = SuiteSubmission(
        org_id="acme",
        app_version_id="v1",
        target=Target.BROWSERSTACK,
        test_paths=["a.spec.ts"],
        retries=retries,
    )
    [job] = svc.submissions.submit("acme", suite).jobs
    svc.dispatcher.admit(job.job_id)
    svc.queue.request_plan()
    agent = svc.as_agent.register(Target.BROWSERSTACK, "bs1", None).agent_id
    leased = svc.as_agent.lease(agent)
    assert leased is not None
    svc.as_agent.start(agent, job.job_id, leased.batch.batch_id)
    return svc, agent, leased.batch.batch_id, job.job_id


def _report(svc, agent: str, batch: str, job: str, status: JobStatus, session: str | None):  # type: ignore[no-untyped-def]
    return svc.agents.progress(
        svc.as_agent.credential(agent),
        batch,
        results=[ReportedResult(job, status, 1.0, None, None, session)],
    )


def test_a_result_with_a_session_is_sent_to_the_vault_and_kept_on_the_job() -> None:
    queue = MemoryVaultQueue()
    svc, agent, batch, job = _one_running_browserstack_job(queue)

    _report(svc, agent, batch, job, JobStatus.PASSED, "sess1")

    assert queue.sent == [VaultMessage(org_id="acme", job_id=job, attempt=1, session_id="sess1")]
    stored = svc.store.get_job(job)
    assert stored is not None
    assert stored.session_id == "sess1"


def test_a_result_without_a_session_sends_nothing() -> None:
    queue = MemoryVaultQueue()
    svc, agent, batch, job = _one_running_browserstack_job(queue)

    _report(svc, agent, batch, job, JobStatus.PASSED, None)

    assert queue.sent == []


def test_a_failed_send_fails_the_call_and_its_replay_sends_again() -> None:
    queue = MemoryVaultQueue()
    svc, agent, batch, job = _one_running_browserstack_job(queue)
    queue.fail_next = 1

    with pytest.raises(RuntimeError, match="vault queue unavailable"):
        _report(svc, agent, batch, job, JobStatus.PASSED, "sess1")
    _report(svc, agent, batch, job, JobStatus.PASSED, "sess1")  # the agent retries

    assert [m.session_id for m in queue.sent] == ["sess1"]
    assert svc.store.get_job(job).status is JobStatus.PASSED  # type: ignore[union-attr]


def test_an_errored_attempt_that_is_retried_is_archived_as_its_own_attempt() -> None:
    queue = MemoryVaultQueue()
    svc, agent, batch, job = _one_running_browserstack_job(queue, retries=1)

    _report(svc, agent, batch, job, JobStatus.ERROR, "sess1")
    _report(svc, agent, batch, job, JobStatus.ERROR, "sess1")  # a replay of that report

    assert [(m.attempt, m.session_id) for m in queue.sent] == [(1, "sess1"), (1, "sess1")]
    assert svc.store.get_job(job).status is JobStatus.QUEUED  # type: ignore[union-attr]
