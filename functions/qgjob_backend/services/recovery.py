"""Putting a batch's unfinished jobs back, shared by batch release and lease expiry."""

from __future__ import annotations

from qgjob_backend.domain.models import Batch
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import JobStatus


def requeue_unfinished(
    store: StateStore, batch: Batch, now: float, reason: str, *, agent_lost: bool
) -> int:
    """Returns the batch's jobs that never finished to the backlog; finished results stay.

    When the agent was lost, a job that was running counts one attempt (it may be what
    killed the agent); when the agent handed the batch back itself, nothing counts.
    Each requeue is conditional on the job still belonging to this batch, so running
    this twice requeues nothing twice. Returns how many jobs left the batch.
    """
    requeued = 0
    for job in store.get_jobs(batch.job_ids):
        if job.batch_id != batch.batch_id:
            continue
        if job.status not in (JobStatus.ASSIGNED, JobStatus.RUNNING):
            continue
        counted = agent_lost and job.status is JobStatus.RUNNING
        if store.requeue_job(job, batch.batch_id, now, count_attempt=counted, reason=reason):
            requeued += 1
    return requeued
