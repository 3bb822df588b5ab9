"""Request and response bodies of the HTTP API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from qgjob_backend.domain.models import Agent, Batch, Job, Run
from qgjob_backend.ports import OrgMetrics
from qgjob_backend.schema import FINAL_STATUSES, Identifier, JobStatus, Target

MAX_OUTPUT_CHARS = 64 * 1024


class JobView(BaseModel):
    job_id: str
    run_id: str
    org_id: str
    app_version_id: str
    target: Target
    test_path: str
    priority: int
    status: JobStatus
    attempts: int
    agent_id: str | None
    batch_id: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    message: str | None

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
            attempts=job.attempts,
            agent_id=job.agent_id,
            batch_id=job.batch_id,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_s=job.duration_s,
            message=job.message,
        )


class SubmitResponse(BaseModel):
    run_id: str
    job_ids: list[str]
    job_id: str | None = Field(default=None, description="Set when one job was submitted.")
    status: JobStatus = JobStatus.QUEUED
    replayed: bool = Field(description="True when the idempotency key matched an earlier submit.")


class RunView(BaseModel):
    run_id: str
    org_id: str
    app_version_id: str
    target: Target
    total: int
    counts: dict[str, int]
    finished: bool
    passed: bool
    jobs: list[JobView]

    @classmethod
    def of(cls, run: Run, jobs: list[Job]) -> RunView:
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status.value] = counts.get(job.status.value, 0) + 1
        finished = len(jobs) == len(run.job_ids) and all(j.status in FINAL_STATUSES for j in jobs)
        return cls(
            run_id=run.run_id,
            org_id=run.org_id,
            app_version_id=run.app_version_id,
            target=run.target,
            total=len(run.job_ids),
            counts=counts,
            finished=finished,
            passed=finished and all(j.status is JobStatus.PASSED for j in jobs),
            jobs=[JobView.of(j) for j in jobs],
        )


class ResultView(BaseModel):
    job_id: str
    status: JobStatus
    finished: bool
    passed: bool | None = None
    duration_s: float | None = None
    message: str | None = None
    output: str | None = Field(default=None, description="The last lines of the test output.")
    output_key: str | None = Field(default=None, description="S3 key of the full output.")
    agent_id: str | None = None
    finished_at: float | None = None


class MetricsView(BaseModel):
    jobs_by_status: dict[str, int]
    batches: int
    installs: int
    agent_app_pairs: int

    @classmethod
    def of(cls, metrics: OrgMetrics) -> MetricsView:
        return cls(**metrics.__dict__)


class HealthView(BaseModel):
    status: str
    version: str


# ------------------------------------------------------------------ agents
class InstalledApp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org_id: Identifier
    app_version_id: Identifier


class RegisterAgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Target
    device_id: Identifier
    installed: InstalledApp | None = None


class AgentView(BaseModel):
    agent_id: str
    target: Target
    status: str
    batch_id: str | None
    lease_seconds: float
    heartbeat_seconds: float
    lease_expires_at: float | None = None
    session_id: str | None = Field(
        default=None,
        description="Set by register: send it back as X-Qgjob-Agent-Session on agent calls.",
    )

    @classmethod
    def of(
        cls,
        agent: Agent,
        lease_seconds: float,
        heartbeat_seconds: float,
        lease_expires_at: float | None = None,
    ) -> AgentView:
        return cls(
            agent_id=agent.agent_id,
            target=agent.target,
            status=agent.status.value,
            batch_id=agent.batch_id,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            lease_expires_at=lease_expires_at,
        )

    def with_session(self, session_id: str | None) -> AgentView:
        return self.model_copy(update={"session_id": session_id})


class BatchJob(BaseModel):
    job_id: str
    test_path: str
    timeout_s: int
    status: JobStatus


class BatchView(BaseModel):
    batch_id: str
    org_id: str
    app_version_id: str
    target: Target
    install_required: bool
    lease_expires_at: float
    jobs: list[BatchJob]

    @classmethod
    def of(cls, batch: Batch, jobs: list[Job]) -> BatchView:
        return cls(
            batch_id=batch.batch_id,
            org_id=batch.org_id,
            app_version_id=batch.app_version_id,
            target=batch.target,
            install_required=batch.install_required,
            lease_expires_at=batch.lease_expires_at,
            jobs=[
                BatchJob(
                    job_id=j.job_id, test_path=j.test_path, timeout_s=j.timeout_s, status=j.status
                )
                for j in jobs
            ],
        )


class LeaseResponse(BaseModel):
    batch: BatchView | None


class BatchRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ReportRequest(BatchRef):
    status: Literal["passed", "failed", "error", "timed_out"] = Field(
        description="The test's outcome; error means infrastructure, not the test."
    )
    duration_s: float = Field(ge=0, le=7 * 24 * 3600)
    message: Annotated[str, StringConstraints(max_length=2000)] | None = None
    output: Annotated[str, StringConstraints(max_length=MAX_OUTPUT_CHARS)] | None = None


class RequeueView(BaseModel):
    requeued: int
