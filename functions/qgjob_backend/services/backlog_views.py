"""A stored job as the planning cores see it (planner, preemption, overflow)."""

from __future__ import annotations

from qgjob_backend.domain.models import Job
from qgjob_backend.domain.planner import BacklogJob


def backlog_view(job: Job) -> BacklogJob:
    return BacklogJob(
        job_id=job.job_id,
        group_key=job.group_key,
        org_id=job.org_id,
        app_version_id=job.app_version_id,
        target=job.target.value,
        priority=job.priority,
        enqueued_at=job.created_at,
        position=job.position,
        estimate_s=job.estimate_s,
        test_path=job.test_path,
        avoid_agent_id=job.last_agent_id,
        retried_at=job.updated_at if job.last_agent_id else 0.0,
    )
