"""Request and response bodies of the HTTP API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from qgjob_backend.agent_protocol import AgentView, BatchJob, BatchView
from qgjob_backend.build_protocol import ArtifactUploadForm, ArtifactView, BuildDownload
from qgjob_backend.domain import progress
from qgjob_backend.domain.models import Agent, Batch, Job, Run
from qgjob_backend.domain.queue import RunQueue
from qgjob_backend.ports import OrgMetrics
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.vault import AuditEntry

BUILD_SHA_DESCRIPTION = (
    "The sha256 of the app version's build when the run was submitted (null: none, or "
    "builds are not deployed; see build_note)."
)


def build_note(run: Run) -> str | None:
    """What a run says when its app version had no build at submit (accepted anyway)."""
    if run.build_sha256 != "":
        return None
    return (
        f"no build was uploaded for app version {run.app_version_id} when this run was "
        "submitted: agents run it only with the app they already hold "
        f"(qgjob app upload --org-id {run.org_id} --app-version-id {run.app_version_id} FILE)"
    )


COUNTS_DESCRIPTION = (
    "Jobs by state, only states with jobs: queued, active (assigned to an agent or "
    "running), passed, failed, error, cancelled, timed_out."
)


class TryView(BaseModel):
    """One earlier try of a job that failed (and was re-run: failure_retries)."""

    attempt: int = Field(description="The try's number, from 1.")
    agent_id: str | None = None
    batch_id: str | None = None
    status: str
    duration_s: float | None = None
    message: str | None = None
    output: str | None = Field(default=None, description="The tail of the try's output.")
    finished_at: float | None = None


class JobView(BaseModel):
    job_id: str
    run_id: str
    org_id: str
    app_version_id: str
    target: Target
    test_path: str
    priority: int
    status: JobStatus
    attempts: int = Field(
        description=(
            "How many times the test was started, this run included: 1 for a job that ran "
            "once, 0 for one not started yet (re-runs after a failure or an infrastructure "
            "error count too)."
        )
    )
    agent_id: str | None
    batch_id: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    message: str | None
    flaky: bool = Field(default=False, description="It passed after a failed try.")
    moved_from: Target | None = Field(
        default=None,
        description=(
            "Set when the dispatcher moved it, while it waited, from this target to "
            "``target`` (overflow to BrowserStack: its run allowed it)."
        ),
    )
    tries: list[TryView] = Field(
        default_factory=list,
        description="Earlier tries that failed, in order (the job's own fields are its last).",
    )

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            job_id=job.job_id,
            run_id=job.run_id,
            org_id=job.org_id,
            app_version_id=job.app_version_id,
            target=job.target,
            test_path=job.test_path,
            priority=job.priority,
            status=job.status,
            attempts=job.runs,
            agent_id=job.agent_id,
            batch_id=job.batch_id,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_s=job.duration_s,
            message=job.message,
            flaky=job.flaky,
            moved_from=job.moved_from,
            tries=[TryView.model_validate(t) for t in job.tries],
        )


class SubmitResponse(BaseModel):
    """What a submit created or, replayed with the same idempotency key, found.

    A replay reports the jobs as they are now (one batch read of at most
    MAX_TESTS_PER_SUITE jobs), not as they were when first submitted.
    """

    run_id: str
    job_ids: list[str]
    job_id: str | None = Field(default=None, description="Set when one job was submitted.")
    status: JobStatus | None = Field(
        description="The current status shared by every job of the submission (the job's, "
        "for one job; `queued` for new work); null while its jobs differ (see `counts`)."
    )
    counts: dict[str, int] = Field(description="The submission's jobs by current status.")
    replayed: bool = Field(description="True when the idempotency key matched an earlier submit.")
    build_sha256: str | None = Field(default=None, description=BUILD_SHA_DESCRIPTION)
    build_note: str | None = Field(default=None, description="Set when there was no build.")

    @classmethod
    def of(cls, run: Run, jobs: list[Job], *, single: bool, replayed: bool) -> SubmitResponse:
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status.value] = counts.get(job.status.value, 0) + 1
        shared = {job.status for job in jobs}
        return cls(
            run_id=run.run_id,
            job_ids=run.job_ids,
            job_id=run.job_ids[0] if single else None,
            status=shared.pop() if len(shared) == 1 else None,
            counts=counts,
            replayed=replayed,
            build_sha256=run.build_sha256 or None,
            build_note=build_note(run),
        )


class QueueView(BaseModel):
    """Where a run stands in its pool's queue (its target's), from a snapshot the
    dispatcher takes of the pool's backlog and agents every few seconds while it plans.
    Estimates: from the tests' duration estimates and the queue ahead of the run."""

    position: int | None = Field(
        description=(
            "1: the run's first queued job is the next of its pool to start; 0: none of "
            "its jobs is queued (all are on agents); null: further back than the runs the "
            "snapshot names (see approximate)."
        )
    )
    jobs_ahead: int | None = Field(
        description="Queued jobs of the pool ahead of the run's first queued job (at "
        "least this many when approximate)."
    )
    eta_seconds: float | None = Field(
        description="Seconds from now until the run should finish; null when no agent "
        "serves it (no_agent) or nothing is known of its end."
    )
    estimated_start_at: float | None = Field(
        default=None, description="When its first queued job should start (epoch seconds)."
    )
    estimated_finish_at: float | None = Field(
        description="When its last job should end (epoch seconds)."
    )
    as_of: float = Field(description="When the pool's snapshot was taken (epoch seconds).")
    approximate: bool = Field(
        default=False,
        description="The run is not among the first runs of the snapshot: position is "
        "null, jobs_ahead a lower bound, the times those of the whole backlog read.",
    )

    @classmethod
    def of(cls, queue: RunQueue) -> QueueView:
        return cls(
            position=queue.position,
            jobs_ahead=queue.jobs_ahead,
            eta_seconds=None if queue.eta_seconds is None else round(queue.eta_seconds, 1),
            estimated_start_at=queue.estimated_start_at,
            estimated_finish_at=queue.estimated_finish_at,
            as_of=queue.as_of,
            approximate=queue.approximate,
        )


class RunView(BaseModel):
    """A run's progress from its counters (one read, whatever its size) and, while jobs
    wait or run, its place in its pool's queue (one more read); its jobs are at
    GET /runs/{run_id}/jobs."""

    run_id: str
    org_id: str
    app_version_id: str
    target: Target
    total: int = Field(description="Jobs in the run.")
    counts: dict[str, int] = Field(description=COUNTS_DESCRIPTION)
    finished: bool = Field(description="Every job is in a final state.")
    passed: bool = Field(description="Every job passed.")
    flaky: int = Field(default=0, description="Jobs that passed after a failed try.")
    overflow: Target | None = Field(
        default=None,
        description="The pool its waiting jobs may move to (submitted with overflow).",
    )
    moved: int = Field(
        default=0,
        description=(
            "Jobs the dispatcher moved to the overflow pool (each says moved_from at "
            "GET /runs/{run_id}/jobs)."
        ),
    )
    build_sha256: str | None = Field(default=None, description=BUILD_SHA_DESCRIPTION)
    build_note: str | None = Field(default=None, description="Set when there was no build.")
    queue: QueueView | None = Field(
        default=None,
        description="Queue position and ETA; null when nothing waits or runs, or the "
        "dispatcher has not yet planned its pool.",
    )
    no_agent: bool = Field(
        default=False,
        description="No online agent of the run's target may run it (none registered, "
        "all offline or drained, or only other orgs' labs): its queued jobs wait for one.",
    )

    @classmethod
    def of(cls, run: Run, queue: RunQueue | None = None) -> RunView:
        total = len(run.job_ids)
        finished = progress.finished(total, run.counts)
        return cls(
            run_id=run.run_id,
            org_id=run.org_id,
            app_version_id=run.app_version_id,
            target=run.target,
            total=total,
            counts=progress.nonzero(run.counts),
            finished=finished,
            passed=finished and progress.passed(total, run.counts),
            flaky=run.flaky,
            overflow=run.overflow,
            moved=run.moved,
            build_sha256=run.build_sha256 or None,
            build_note=build_note(run),
            queue=QueueView.of(queue) if queue is not None else None,
            no_agent=queue is not None and queue.no_agent,
        )


class RunCancelView(BaseModel):
    """One page of a run cancel: call again with next_cursor until it is null."""

    run_id: str
    cancelled: int = Field(description="Jobs this call cancelled (0 when repeated).")
    next_cursor: str | None = Field(
        description="Pass as `cursor` to cancel the next page; null when every page is done."
    )
    run: RunView = Field(description="The run's progress after this page.")


class JobPageView(BaseModel):
    """One page of a run's jobs, in the order the suite listed them."""

    run_id: str
    jobs: list[JobView]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )

    @classmethod
    def of(cls, run: Run, jobs: list[Job], next_cursor: str | None) -> JobPageView:
        return cls(run_id=run.run_id, jobs=[JobView.of(j) for j in jobs], next_cursor=next_cursor)


class ResultView(BaseModel):
    job_id: str
    status: JobStatus
    finished: bool
    passed: bool | None = None
    duration_s: float | None = None
    message: str | None = None
    output: str | None = Field(default=None, description="The last lines of the test output.")
    output_key: str | None = Field(default=None, description="S3 key of the full output.")
    output_url: str | None = Field(
        default=None,
        description="A short-lived link to the full output (set when output_key is).",
    )
    agent_id: str | None = None
    finished_at: float | None = None
    session_id: str | None = Field(
        default=None, description="The BrowserStack session of the result (browserstack)."
    )
    artifacts: list[ArtifactView] = Field(
        default_factory=list,
        description="The test's attachments (screenshots, videos, traces), with short-lived links.",
    )


class AuditRecordView(BaseModel):
    """One attempt's audit record: what the vault fetched and where it archived it."""

    attempt: int
    session_id: str
    outcome: str = Field(
        description=(
            "archived, or why nothing was archived: unauthorized, not_found, rejected, "
            "malformed_json, too_large."
        )
    )
    http_status: int | None = Field(description="The App Automate API's answer.")
    source: str = Field(description="The URL the record was fetched from.")
    fetched_at: float
    recorded_at: float
    s3_key: str | None = Field(description="The archive (vault/<org>/<job>/<attempt>.json).")
    sha256: str | None = Field(description="SHA-256 (hex) of the archived bytes.")
    size: int | None = Field(description="Bytes archived (or seen, when not archived).")
    detail: str | None = None
    link: str | None = Field(
        default=None, description="A presigned GET of the archive, valid link_expires_s."
    )
    link_expires_s: int | None = None


class AuditView(BaseModel):
    job_id: str
    records: list[AuditRecordView]

    @classmethod
    def of(cls, job_id: str, entries: list[AuditEntry]) -> AuditView:
        return cls(
            job_id=job_id,
            records=[
                AuditRecordView(
                    attempt=e.record.attempt,
                    session_id=e.record.session_id,
                    outcome=e.record.outcome.value,
                    http_status=e.record.http_status,
                    source=e.record.source,
                    fetched_at=e.record.fetched_at,
                    recorded_at=e.record.recorded_at,
                    s3_key=e.record.s3_key,
                    sha256=e.record.sha256,
                    size=e.record.size,
                    detail=e.record.detail,
                    link=e.link,
                    link_expires_s=e.link_expires_s if e.link else None,
                )
                for e in entries
            ],
        )


class MetricsView(BaseModel):
    """The token's org, from counters kept with every write (no scan of its history)."""

    jobs_by_status: dict[str, int] = Field(description=COUNTS_DESCRIPTION)
    batches: int = Field(description="Batches handed to agents.")
    installs: int = Field(description="App installs (at most one per batch).")
    agent_app_pairs: int = Field(
        description="Distinct (agent, app version, target) of the org's batches."
    )

    @classmethod
    def of(cls, metrics: OrgMetrics) -> MetricsView:
        return cls(**metrics.__dict__)


class ErrorView(BaseModel):
    """Every 4xx and 5xx answer: what went wrong, naming the field to fix."""

    message: str
    errors: list[dict[str, str]] | None = Field(
        default=None, description="On 422: each invalid field and what is wrong with it."
    )


class HealthView(BaseModel):
    status: str
    version: str


# ------------------------------------------------------------------ agents
# The wire models live in agent_protocol (shared with the agent); these build them.
def agent_view(
    agent: Agent,
    lease_seconds: float,
    heartbeat_seconds: float,
    lease_expires_at: float | None = None,
    credential: str | None = None,
) -> AgentView:
    return AgentView(
        agent_id=agent.agent_id,
        target=agent.target,
        status=agent.status.value,
        batch_id=agent.batch_id,
        lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds,
        lease_expires_at=lease_expires_at,
        lab_org_id=agent.lab_org_id,
        credential=credential,
        cancelled_job_ids=agent.cancelled_job_ids,
        yield_requested=agent.yield_requested,
    )


def batch_view(
    batch: Batch,
    jobs: list[Job],
    build: BuildDownload | None = None,
    artifacts: ArtifactUploadForm | None = None,
) -> BatchView:
    return BatchView(
        batch_id=batch.batch_id,
        org_id=batch.org_id,
        app_version_id=batch.app_version_id,
        target=batch.target,
        install_required=batch.install_required,
        lease_expires_at=batch.lease_expires_at,
        jobs=[
            BatchJob(
                job_id=j.job_id,
                test_path=j.test_path,
                timeout_s=j.timeout_s,
                status=j.status,
                correlation_id=j.run_id,
            )
            for j in jobs
        ],
        build=build,
        artifacts=artifacts,
    )
