"""Cancelling jobs: queued ones leave the backlog, started ones are marked for their agent.

A chunk of one run's jobs is cancelled in one TransactWriteItems: each job's conditional
update (its status as read: queued, or assigned/running in the batch read), one cancel
mark update per agent running any of them, the run's counters and one org metrics shard,
all moved by the chunk's totals. When any job changed since it was read the whole chunk
is refused (nothing written) and its jobs are cancelled one at a time from a fresh read,
so the counters stay exact and a repeated cancel moves nothing twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from qgjob_backend.adapters.dynamodb.codec import (
    TRANSACTION_LIMIT,
    expression_values,
    serialize,
)
from qgjob_backend.adapters.dynamodb.counters import (
    CountingTables,
    org_counter_update,
    run_counter_update,
)
from qgjob_backend.adapters.dynamodb.jobs import job_from_item
from qgjob_backend.domain.models import Job, cancel_mark, cancel_message
from qgjob_backend.domain.progress import moved
from qgjob_backend.schema import JobStatus

# Each job takes at most two actions (its update, its agent's mark), plus two counters.
JOBS_PER_CANCEL = (TRANSACTION_LIMIT - 2) // 2
# Fresh reads per job when its chunk was refused (it keeps changing under us: give up,
# the caller may repeat the cancel).
SINGLE_ATTEMPTS = 3
# Every index attribute a queued or running job may carry: a cancelled job is in none.
INDEX_ATTRIBUTES = "backlog_target, backlog_key, unadmitted_shard, timeout_shard, timeout_at"
ACTIVE = (JobStatus.ASSIGNED, JobStatus.RUNNING)


def cancelled(job: Job, now: float) -> Job:
    """The job as a successful cancel leaves it."""
    return replace(
        job,
        status=JobStatus.CANCELLED,
        finished_at=now,
        updated_at=now,
        message=cancel_message(job),
    )


class CancelStore(CountingTables):
    """StateStore.cancel_jobs over the jobs, agents and runs tables."""

    def cancel_jobs(self, jobs: Sequence[Job], now: float) -> list[Job]:
        open_jobs = [j for j in dict((j.job_id, j) for j in jobs).values() if not j.is_final]
        by_run: dict[str, list[Job]] = {}
        for job in open_jobs:
            by_run.setdefault(job.run_id, []).append(job)
        done: list[Job] = []
        for run_jobs in by_run.values():
            for start in range(0, len(run_jobs), JOBS_PER_CANCEL):
                chunk = run_jobs[start : start + JOBS_PER_CANCEL]
                if self._transact(self._cancel_items(chunk, now)):
                    done.extend(cancelled(j, now) for j in chunk)
                    continue
                for job in chunk:  # one changed since it was read: each on its own
                    one = self._cancel_one(job, now)
                    if one is not None:
                        done.append(one)
        return done

    def _cancel_one(self, job: Job, now: float) -> Job | None:
        current: Job | None = job
        for _ in range(SINGLE_ATTEMPTS):
            current = self._fresh(job.job_id)
            if current is None or current.is_final:
                return None
            if self._transact(self._cancel_items([current], now)):
                return cancelled(current, now)
        return None

    def _fresh(self, job_id: str) -> Job | None:
        item = self._get(self._jobs, {"job_id": job_id})
        return job_from_item(item) if item else None

    def _cancel_items(self, chunk: Sequence[Job], now: float) -> list[dict[str, Any]]:
        """The transaction cancelling ``chunk`` (jobs of one run), from their state read."""
        expires_at = self._expires_at(now)
        items: list[dict[str, Any]] = []
        delta: Counter[str] = Counter()
        marks: dict[str, set[str]] = {}
        for job in chunk:
            delta.update(moved(job.status, JobStatus.CANCELLED))
            values: dict[str, Any] = {
                "cancelled": JobStatus.CANCELLED.value,
                "now": now,
                "msg": cancel_message(job),
                "exp": expires_at,
            }
            if job.status is JobStatus.QUEUED:
                condition = "#s = :queued"
                values["queued"] = JobStatus.QUEUED.value
            else:
                condition = "#s IN (:assigned, :running) AND batch_id = :b"
                values.update(
                    assigned=JobStatus.ASSIGNED.value,
                    running=JobStatus.RUNNING.value,
                    b=job.batch_id or "",
                )
                if job.agent_id and job.batch_id:
                    marks.setdefault(job.agent_id, set()).add(cancel_mark(job.batch_id, job.job_id))
            items.append(
                {
                    "Update": {
                        "TableName": self._jobs,
                        "Key": serialize({"job_id": job.job_id}),
                        "UpdateExpression": (
                            "SET #s = :cancelled, finished_at = :now, updated_at = :now, "
                            f"message = :msg, expires_at = :exp REMOVE {INDEX_ATTRIBUTES}"
                        ),
                        "ConditionExpression": condition,
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": expression_values(**values),
                    }
                }
            )
        for agent_id, agent_marks in sorted(marks.items()):
            items.append(
                {
                    "Update": {
                        "TableName": self._agents,
                        "Key": serialize({"agent_id": agent_id}),
                        "UpdateExpression": "ADD cancel_marks :marks",
                        "ConditionExpression": "attribute_exists(agent_id)",
                        "ExpressionAttributeValues": expression_values(marks=agent_marks),
                    }
                }
            )
        counts = {c: d for c, d in delta.items() if d}
        first = chunk[0]
        items.append(run_counter_update(self._runs, first.run_id, counts, expires_at))
        items.append(org_counter_update(self._runs, first.org_id, first.job_id, counts))
        return items
