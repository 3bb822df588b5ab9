"""Re-running a failed test: the job goes back to its backlog with the failed try recorded.

One transaction: the job's conditional update (still this agent's, in this batch, not
final), its run's counters (active -> queued) and one org metrics shard. The try is
appended to the job's ``tries``, so a later pass is known to be flaky; no attempt is
counted (attempts budget infrastructure errors only).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from qgjob_backend.adapters.dynamodb.codec import expression_values
from qgjob_backend.adapters.dynamodb.counters import Counted, CountingTables
from qgjob_backend.adapters.dynamodb.jobs import (
    TIMEOUT_ATTRIBUTES,
    backlog_shard,
    backlog_sort_key,
)
from qgjob_backend.domain.models import Job
from qgjob_backend.schema import JobStatus


class RetryStore(CountingTables):
    """StateStore.retry_failed_job over the jobs and runs tables."""

    def retry_failed_job(
        self,
        job: Job,
        agent_id: str,
        batch_id: str,
        tried: dict[str, Any],
        reason: str,
        now: float,
    ) -> Job | None:
        requeued = replace(job, status=JobStatus.QUEUED)
        tried = {k: v for k, v in tried.items() if v is not None}
        done = self._counted_update(
            Counted(job.run_id, job.org_id, job.job_id, JobStatus.RUNNING, JobStatus.QUEUED),
            now,
            UpdateExpression=(
                "SET #s = :queued, updated_at = :now, message = :reason, "
                "tries = list_append(if_not_exists(tries, :empty), :try), "
                "retry_of_batch = :b, last_agent_id = :a, "
                "backlog_target = :target, backlog_key = :bk "
                f"REMOVE batch_id, agent_id, started_at, {TIMEOUT_ATTRIBUTES}"
            ),
            ConditionExpression="batch_id = :b AND agent_id = :a AND #s IN (:assigned, :running)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                queued=JobStatus.QUEUED.value,
                assigned=JobStatus.ASSIGNED.value,
                running=JobStatus.RUNNING.value,
                now=now,
                reason=reason,
                empty=[],
                **{"try": [tried]},
                b=batch_id,
                a=agent_id,
                target=backlog_shard(requeued),
                bk=backlog_sort_key(requeued),
            ),
        )
        if not done:
            return None
        return replace(
            job,
            status=JobStatus.QUEUED,
            updated_at=now,
            message=reason,
            tries=[*job.tries, tried],
            retry_of_batch=batch_id,
            last_agent_id=agent_id,
            batch_id=None,
            agent_id=None,
            started_at=None,
        )
