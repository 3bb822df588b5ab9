"""Use cases of clients: submit jobs and suites, read them back, cancel."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Job, Run
from qgjob_backend.domain.progress import run_job_ids
from qgjob_backend.domain.queue import RunQueue
from qgjob_backend.observability import correlate
from qgjob_backend.ports import JobQueue, OrgMetrics, StateStore
from qgjob_backend.schema import JobPayload, JobStatus, SuiteSubmission, Target
from qgjob_backend.services.errors import Conflict, Forbidden, NotFound, ServiceError
from qgjob_backend.services.estimates import EstimateService

logger = Logger(child=True)

# The most jobs one page of GET /runs/{id}/jobs holds (one index query, one batch read).
MAX_PAGE_JOBS = 100
# The most jobs one POST /runs/{id}/cancel call cancels (one index query, one batch read,
# a few transactions): a run of 1,000 jobs is ten bounded calls, never one long one.
MAX_CANCEL_PAGE = 100


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SubmitResult:
    run: Run
    jobs: list[Job]
    created: bool


@dataclass(frozen=True)
class CancelPage:
    run: Run  # after this page was cancelled (its counters)
    cancelled: int  # jobs this call cancelled
    seen: int  # jobs of the run on this page
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True)
class RunProgress:
    run: Run
    queue: RunQueue | None  # None: nothing waiting, or no estimate yet


@dataclass(frozen=True)
class JobsPage:
    run: Run
    jobs: list[Job]
    next_cursor: str | None  # None: this was the last page


def page_cursor(run_id: str, after: int) -> str:
    """An opaque cursor: the page after position ``after`` of this run."""
    raw = json.dumps({"run": run_id, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_position(run_id: str, cursor: str) -> int:
    """The position a cursor of this run continues after; 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        after = data["after"]
        valid = data["run"] == run_id and type(after) is int and after >= 0
    except (binascii.Error, ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise ServiceError(
            "cursor: not a cursor of this run; pass the next_cursor of the previous page"
        )
    return int(after)


def as_suite(payload: JobPayload) -> SuiteSubmission:
    fields = payload.model_dump(exclude={"test_path"})
    return SuiteSubmission(**fields, test_paths=[payload.test_path])


class SubmissionService:
    def __init__(
        self,
        store: StateStore,
        queue: JobQueue,
        clock: Callable[[], float],
        new_id: Callable[[], str],
        build_sha256: Callable[[str, str], str | None] | None = None,
        estimates: EstimateService | None = None,
        queue_of: Callable[[Run], RunQueue | None] | None = None,
        org_overflow: Callable[[str, Target], Target | None] | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._clock = clock
        self._new_id = new_id
        # The sha256 of an org's app version's ready build (None: it has none); without
        # it (builds not deployed) runs do not say whether a build exists.
        self._build_sha256 = build_sha256
        # Stamps each job with its test's estimate as it is written (None: no estimates).
        self._estimates = estimates
        # A run's place in its pool's queue (PoolSnapshotService); None: not known.
        self._queue_of = queue_of
        # The pool an org's runs of a target overflow to when the submission does not say
        # (OrgSettingsService.default_overflow: at most one read); None: never.
        self._org_overflow = org_overflow

    def submit(self, org_id: str, suite: SuiteSubmission) -> SubmitResult:
        """Writes a run and its jobs straight into their group's backlog, then asks the
        dispatcher for a plan (one message, however many jobs).

        With an idempotency key, ids derive from (org, key): a retried request finds
        the same run, heals a partial earlier write and never creates a second one.
        """
        if suite.org_id != org_id:
            raise Forbidden(f"org_id: token belongs to org '{org_id}', not '{suite.org_id}'")
        # A submission without overflow hashes as it did before the field existed; the
        # org's default overflow is not part of the request and never enters the hash.
        unhashed = {"idempotency_key"} | ({"overflow"} if suite.overflow is None else set())
        fingerprint = _digest(suite.model_dump_json(exclude=unhashed))
        overflow = self._overflow_of(org_id, suite)
        if suite.idempotency_key:
            run_id = "run-" + _digest(org_id, suite.idempotency_key)[:20]
        else:
            run_id = "run-" + self._new_id()
        correlate(run_id)  # the run id is its jobs' correlation id, from this line on
        now = self._clock()
        run = Run(
            run_id=run_id,
            org_id=org_id,
            app_version_id=suite.app_version_id,
            target=suite.target,
            priority=suite.priority,
            job_ids=run_job_ids(run_id, len(suite.test_paths)),
            fingerprint=fingerprint,
            created_at=now,
            build_sha256=self._build_of(org_id, suite.app_version_id),
            overflow=overflow,
        )
        created = self._store.create_run(run)
        if not created:
            existing = self._store.get_run(run_id)
            if existing is None:  # pragma: no cover - a run is never deleted
                raise Conflict("run id collision; retry the request")
            if existing.fingerprint != fingerprint:
                raise Conflict(
                    "idempotency_key: already used for a different submission; "
                    "use a new key for new work"
                )
            run = existing
        jobs = [
            Job(
                job_id=job_id,
                run_id=run.run_id,
                org_id=org_id,
                app_version_id=suite.app_version_id,
                target=suite.target,
                test_path=test_path,
                priority=suite.priority,
                status=JobStatus.QUEUED,
                created_at=run.created_at,
                updated_at=now,
                timeout_s=suite.timeout_s,
                max_attempts=1 + suite.retries,
                failure_retries=suite.failure_retries,
                # The run's, as first written: a replay heals its jobs with the overflow it
                # had then, even if the org's default changed since.
                overflow=run.overflow,
                position=position,
                # Written into the backlog: no admission step (one write and one SQS
                # message per job fewer than admitting them through jobs.fifo).
                admitted=True,
            )
            for position, (job_id, test_path) in enumerate(
                zip(run.job_ids, suite.test_paths, strict=True)
            )
        ]
        jobs = self._stamped(jobs)
        self._store.create_jobs(jobs)
        stored = jobs if created else self._store.get_jobs(run.job_ids)
        if any(j.status is JobStatus.QUEUED for j in stored):
            self._ask_for_plan()
        logger.info(
            "run submitted" if created else "run replayed (idempotency key)",
            extra={"run_id": run.run_id, "org_id": org_id, "jobs": len(jobs)},
        )
        return SubmitResult(run, stored, created)

    def _overflow_of(self, org_id: str, suite: SuiteSubmission) -> Target | None:
        """What the submission says ('none': never), else its org's default. The default is
        not part of the request (nor of its fingerprint): a replay keeps its run's."""
        if suite.overflow is not None:
            return suite.overflow.pool
        if self._org_overflow is None:
            return None
        return self._org_overflow(org_id, suite.target)

    def _build_of(self, org_id: str, app_version_id: str) -> str | None:
        """The run's note of its build: accepted without one (an agent may hold it)."""
        if self._build_sha256 is None:
            return None
        return self._build_sha256(org_id, app_version_id) or ""

    def _stamped(self, jobs: list[Job]) -> list[Job]:
        """The jobs with their tests' current estimates (advisory: see EstimateService)."""
        if self._estimates is None:
            return jobs
        found = self._estimates.for_jobs(jobs)
        return [replace(j, estimate_s=found[j.job_id]) if j.job_id in found else j for j in jobs]

    def _ask_for_plan(self) -> None:
        try:
            self._queue.request_plan()
        except Exception:
            # The jobs are durable in their backlog; the dispatcher's schedule plans them.
            logger.exception("plan request failed; the schedule will plan these jobs")

    def cancel(self, org_id: str, job_id: str) -> Job:
        """Cancels a job that is not final: a queued one at once; an assigned or running
        one too, and its agent stops the test at its next heartbeat. Repeating it is
        fine (the cancelled job again); a finished job is a 409."""
        job = self.job(org_id, job_id)
        if not job.is_final:
            done = self._store.cancel_jobs([job], self._clock())
            if done:
                return done[0]
        current = self._store.get_job(job_id) or job
        if current.status is JobStatus.CANCELLED:
            return current
        if not current.is_final:  # pragma: no cover - it kept changing under us
            raise Conflict(f"job {job_id} changed while being cancelled; retry")
        raise Conflict(f"job {job_id} already finished ({current.status.value}); nothing to cancel")

    def cancel_run(
        self, org_id: str, run_id: str, cursor: str | None = None, limit: int = MAX_CANCEL_PAGE
    ) -> CancelPage:
        """Cancels one page of the run's jobs (after ``cursor``, in submission order):
        bounded work per call, however large the run. Call again with ``next_cursor``
        until it is None. Idempotent: a page cancelled before cancels nothing again."""
        if not 1 <= limit <= MAX_CANCEL_PAGE:
            raise ServiceError(f"limit: must be between 1 and {MAX_CANCEL_PAGE}")
        after = -1 if cursor is None else cursor_position(run_id, cursor)
        run = self.run(org_id, run_id)  # another org's run: 404
        page = self._store.run_jobs(run_id, after, limit, total=len(run.job_ids))
        open_jobs = [j for j in page.jobs if not j.is_final]
        done = self._store.cancel_jobs(open_jobs, self._clock()) if open_jobs else []
        more = page.more and bool(page.jobs)
        next_cursor = page_cursor(run_id, page.jobs[-1].position) if more else None
        logger.info(
            "run cancel page",
            extra={"run_id": run_id, "cancelled": len(done), "more": next_cursor is not None},
        )
        after_cancel = self._store.get_run(run_id)  # its counters moved by the cancels
        assert after_cancel is not None  # read above; a run is never deleted
        return CancelPage(after_cancel, len(done), len(page.jobs), next_cursor)

    # ----------------------------------------------------------- queries
    def job(self, org_id: str, job_id: str) -> Job:
        job = self._store.get_job(job_id)
        if job is None or job.org_id != org_id:
            raise NotFound(f"job {job_id} not found")
        return job

    def run(self, org_id: str, run_id: str) -> Run:
        """The run and its counters: one read of one item, however many jobs it has (an
        eventually consistent read: a poll may lag the latest result by a moment)."""
        run = self._store.get_run(run_id, consistent=False)
        if run is None or run.org_id != org_id:
            raise NotFound(f"run {run_id} not found")
        return run

    def run_progress(self, org_id: str, run_id: str) -> RunProgress:
        """The run and its place in its pool's queue: one read of the run and, while it
        has jobs waiting or running, one of its pool's snapshot (constant work)."""
        run = self.run(org_id, run_id)
        queue = self._queue_of(run) if self._queue_of is not None else None
        return RunProgress(run, queue)

    def run_jobs(
        self, org_id: str, run_id: str, cursor: str | None = None, limit: int = MAX_PAGE_JOBS
    ) -> JobsPage:
        """One page of a run's jobs in submission order, and the cursor of the next."""
        if not 1 <= limit <= MAX_PAGE_JOBS:
            raise ServiceError(f"limit: must be between 1 and {MAX_PAGE_JOBS}")
        after = -1 if cursor is None else cursor_position(run_id, cursor)
        run = self.run(org_id, run_id)
        page = self._store.run_jobs(run_id, after, limit, total=len(run.job_ids))
        more = page.more and bool(page.jobs)
        next_cursor = page_cursor(run_id, page.jobs[-1].position) if more else None
        return JobsPage(run, page.jobs, next_cursor)

    def metrics(self, org_id: str) -> OrgMetrics:
        return self._store.org_metrics(org_id)
