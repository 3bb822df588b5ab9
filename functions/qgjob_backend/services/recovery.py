"""Putting a batch's unfinished jobs back, shared by batch release and lease expiry."""

from __future__ import annotations

from qgjob_backend.domain.models import Batch
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import JobStatus


def requeue_unfinished(store: StateStore, batch: Batch, now: float, reason: str) -> int:
    """Returns the batch's jobs that never finished to the backlog; finished results stay.

    A job that was running counts one attempt (it may be what killed the agent); one
    never started does not. Each requeue is conditional on the job still belonging to
    this batch, so running this twice requeues nothing twice.
    """
    requeued = 0
    for job in store.get_jobs(batch.job_ids):
        if job.batch_id != batch.batch_id:
            continue
        if job.status not in (JobStatus.ASSIGNED, JobStatus.RUNNING):
            continue
        counted = job.status is JobStatus.RUNNING
        if store.requeue_job(job, batch.batch_id, now, count_attempt=counted, reason=reason):
            requeued += 1
    return requeued
