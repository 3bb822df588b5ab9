"""Overflow: a waiting job moves to another pool (StateStore.move_job).

One conditional update of the job (its target, group, backlog entry and ``moved_from``),
in one TransactWriteItems with its run's ``moved`` counter (and one org metrics shard):
when the job is no longer queued in a backlog, may not move there or moved before, nothing
is written, so a repeated move counts nothing twice.
"""

from __future__ import annotations

from dataclasses import replace

from qgjob_backend.adapters.dynamodb.codec import expression_values
from qgjob_backend.adapters.dynamodb.counters import Counted, CountingTables
from qgjob_backend.adapters.dynamodb.jobs import backlog_shard, backlog_sort_key
from qgjob_backend.domain.models import Job
from qgjob_backend.domain.overflow import MOVED_COUNTER
from qgjob_backend.schema import JobStatus, Target


class MoveStore(CountingTables):
    """StateStore.move_job over the jobs and runs tables."""

    def move_job(self, job: Job, to: Target, now: float) -> Job | None:
        if job.target is to:
            return None
        moved = replace(job, target=to, moved_from=job.target, updated_at=now)
        done = self._counted_update(
            Counted(
                job.run_id,
                job.org_id,
                job.job_id,
                JobStatus.QUEUED,
                JobStatus.QUEUED,
                extra={MOVED_COUNTER: 1},
            ),
            now,
            UpdateExpression=(
                "SET #t = :to, moved_from = :from, group_key = :group, "
                "backlog_target = :shard, backlog_key = :bk, updated_at = :now"
            ),
            ConditionExpression=(
                "#s = :queued AND attribute_exists(backlog_target) AND #t = :from "
                "AND overflow = :to AND attribute_not_exists(moved_from)"
            ),
            ExpressionAttributeNames={"#s": "status", "#t": "target"},
            ExpressionAttributeValues=expression_values(
                to=to.value,
                **{"from": job.target.value},
                group=moved.group_key,
                shard=backlog_shard(moved),
                bk=backlog_sort_key(moved),
                now=now,
                queued=JobStatus.QUEUED.value,
            ),
        )
        return moved if done else None
