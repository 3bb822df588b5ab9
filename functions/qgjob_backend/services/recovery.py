"""Putting a batch's unfinished jobs back, shared by batch release and lease expiry."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Batch
from qgjob_backend.observability import correlated
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import JobStatus

logger = Logger(child=True)


def requeue_unfinished(
    store: StateStore, batch: Batch, now: float, reason: str, *, agent_lost: bool
) -> int:
    """Returns the batch's jobs that never finished to the backlog; finished results stay.

    When the agent was lost, a job that was running counts one attempt (it may be what
    killed the agent); when the agent handed the batch back itself, nothing counts.
    Each requeue is conditional on the job still belonging to this batch, so running
    this twice requeues nothing twice. Returns how many jobs left the batch.

    Logs one line per run whose jobs went back, under that run's correlation id: the
    batch's own lines carry the id of whichever call ran it (the reaper's sweep, the
    agent's release), so without this a run's trail would not show why its jobs waited
    again.
    """
    requeued = 0
    per_run: dict[str, int] = {}
    for job in store.get_jobs(batch.job_ids):
        if job.batch_id != batch.batch_id:
            continue
        if job.status not in (JobStatus.ASSIGNED, JobStatus.RUNNING):
            continue
        counted = agent_lost and job.status is JobStatus.RUNNING
        if store.requeue_job(job, batch.batch_id, now, count_attempt=counted, reason=reason):
            requeued += 1
            per_run[job.run_id] = per_run.get(job.run_id, 0) + 1
    for run_id, count in sorted(per_run.items()):
        with correlated(run_id):
            logger.info(
                "jobs requeued",
                extra={
                    "batch_id": batch.batch_id,
                    "agent_id": batch.agent_id,
                    "jobs": count,
                    "reason": reason,
                },
            )
    return requeued
