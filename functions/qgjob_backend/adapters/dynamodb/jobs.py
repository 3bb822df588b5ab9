"""Runs and jobs: submission, admission into group backlogs, and each job's transitions.

Each transition that moves a job to another counter (domain.progress) is one
TransactWriteItems: the job's conditional update, its run's counters and one shard of its
org's metrics. When the job's condition fails nothing is written, so a replayed
transition never moves a counter twice. assigned -> running moves no counter: start_job
stays one conditional UpdateItem.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import (
    TRANSACTION_LIMIT,
    Item,
    deserialize,
    expression_values,
    is_condition_failure,
    optional_float,
    serialize,
)
from qgjob_backend.adapters.dynamodb.counters import (
    RUN_KIND,
    Counted,
    CountingTables,
    cancelled_items,
    counter_attribute,
    counts_of,
    org_counter_update,
    run_counter_update,
)
from qgjob_backend.adapters.dynamodb.shards import (
    BACKLOG_INDEX,
    TIMEOUT_INDEX,
    UNADMITTED_INDEX,
    all_shard_keys,
    merged,
    shard_key,
)
from qgjob_backend.domain.models import Job, Run
from qgjob_backend.domain.overflow import MOVED_COUNTER
from qgjob_backend.domain.progress import FLAKY, moved, nonzero, run_job_id, run_job_ids
from qgjob_backend.ports import Finish, JobOutcome, JobPage
from qgjob_backend.schema import JobStatus, Target

# A job chunk's transaction also moves its run's counters and one org metrics shard.
JOBS_PER_CREATE = TRANSACTION_LIMIT - 2
UNADMITTED_PREFIX = "pending"
# Sparse: only running jobs carry timeout_shard and timeout_at (started_at + timeout_s),
# set by start_job, removed by every transition out of running.
RUNNING_PREFIX = "running"
TIMEOUT_ATTRIBUTES = "timeout_shard, timeout_at"


def backlog_sort_key(job: Job) -> str:
    """Most urgent first, then oldest: a plan that reads only the head of the backlog
    (its window) sees the work that must go first."""
    return f"{job.priority:02d}#{job.created_at:020.6f}#{job.group_key}#{job.position:05d}"


def backlog_shard(job: Job) -> str:
    """The job's backlog partition: its target, spread over the index's shards."""
    return shard_key(BACKLOG_INDEX, job.target.value, job.job_id)


def unadmitted_shard(job_id: str) -> str:
    return shard_key(UNADMITTED_INDEX, UNADMITTED_PREFIX, job_id)


def job_to_item(job: Job) -> Item:
    item: Item = {
        "job_id": job.job_id,
        "run_id": job.run_id,
        "org_id": job.org_id,
        "app_version_id": job.app_version_id,
        "target": job.target.value,
        "test_path": job.test_path,
        "priority": job.priority,
        "status": job.status.value,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "timeout_s": job.timeout_s,
        "max_attempts": job.max_attempts,
        "position": job.position,
        "attempts": job.attempts,
        "group_key": job.group_key,
        "admitted": job.admitted,
        "agent_id": job.agent_id,
        "batch_id": job.batch_id,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration_s": job.duration_s,
        "message": job.message,
        "output_excerpt": job.output_excerpt,
        "output_key": job.output_key,
        "retry_of_batch": job.retry_of_batch,
        "resends": job.resends,
        "estimate_s": job.estimate_s,
        "rest_of_batch_s": job.rest_of_batch_s,
        "session_id": job.session_id,
        "artifacts": job.artifacts or None,
        "failure_retries": job.failure_retries or None,
        "tries": job.tries or None,
        "last_agent_id": job.last_agent_id,
        "overflow": job.overflow.value if job.overflow else None,
        "moved_from": job.moved_from.value if job.moved_from else None,
    }
    if job.status is JobStatus.QUEUED and not job.admitted:
        item["unadmitted_shard"] = unadmitted_shard(job.job_id)
    elif job.status is JobStatus.QUEUED:
        item["backlog_target"] = backlog_shard(job)
        item["backlog_key"] = backlog_sort_key(job)
    return item


def job_from_item(item: Item) -> Job:
    return Job(
        job_id=item["job_id"],
        run_id=item["run_id"],
        org_id=item["org_id"],
        app_version_id=item["app_version_id"],
        target=Target(item["target"]),
        test_path=item["test_path"],
        priority=int(item["priority"]),
        status=JobStatus(item["status"]),
        created_at=float(item["created_at"]),
        updated_at=float(item["updated_at"]),
        timeout_s=int(item["timeout_s"]),
        max_attempts=int(item["max_attempts"]),
        position=int(item.get("position", 0)),
        attempts=int(item.get("attempts", 0)),
        admitted=bool(item.get("admitted", False)),
        agent_id=item.get("agent_id"),
        batch_id=item.get("batch_id"),
        started_at=item.get("started_at"),
        finished_at=item.get("finished_at"),
        duration_s=item.get("duration_s"),
        message=item.get("message"),
        output_excerpt=item.get("output_excerpt"),
        output_key=item.get("output_key"),
        retry_of_batch=item.get("retry_of_batch"),
        resends=int(item.get("resends", 0)),
        estimate_s=optional_float(item.get("estimate_s")),
        rest_of_batch_s=optional_float(item.get("rest_of_batch_s")),
        session_id=item.get("session_id"),
        artifacts=list(item.get("artifacts") or []),
        failure_retries=int(item.get("failure_retries") or 0),
        tries=list(item.get("tries") or []),
        last_agent_id=item.get("last_agent_id"),
        overflow=Target(item["overflow"]) if item.get("overflow") else None,
        moved_from=Target(item["moved_from"]) if item.get("moved_from") else None,
    )


def run_to_item(run: Run) -> Item:
    """The run without its job ids (they derive from the run id and each position): the
    item stays well under 1 KB however large the suite, so each counter write costs one
    write unit and each poll half a read unit."""
    if run.job_ids != run_job_ids(run.run_id, len(run.job_ids)):
        raise ValueError("a run's job ids must be domain.progress.run_job_ids of the run")
    return {
        "run_id": run.run_id,
        "kind": RUN_KIND,
        "org_id": run.org_id,
        "app_version_id": run.app_version_id,
        "target": run.target.value,
        "priority": run.priority,
        "total": len(run.job_ids),
        "fingerprint": run.fingerprint,
        "created_at": run.created_at,
        "build_sha256": run.build_sha256,
        "overflow": run.overflow.value if run.overflow else None,
    }


def run_from_item(item: Item) -> Run | None:
    """The run, or None for the other items of the runs table (org metrics, pairs)."""
    if item.get("kind", RUN_KIND) != RUN_KIND or "org_id" not in item:
        return None
    run_id = item["run_id"]
    return Run(
        run_id=run_id,
        org_id=item["org_id"],
        app_version_id=item["app_version_id"],
        target=Target(item["target"]),
        priority=int(item["priority"]),
        # Runs written before the counters listed their job ids (and have no counters).
        job_ids=list(item.get("job_ids") or run_job_ids(run_id, int(item["total"]))),
        fingerprint=item["fingerprint"],
        created_at=float(item["created_at"]),
        counts=nonzero(counts_of(item)),
        build_sha256=item.get("build_sha256"),
        flaky=int(item.get(counter_attribute(FLAKY), 0)),
        overflow=Target(item["overflow"]) if item.get("overflow") else None,
        moved=int(item.get(counter_attribute(MOVED_COUNTER), 0)),
    )


class JobStore(CountingTables):
    """The runs and jobs tables."""

    # --------------------------------------------------------------- runs
    def get_run(self, run_id: str, *, consistent: bool = True) -> Run | None:
        response = self._db.get_item(
            TableName=self._runs, Key=serialize({"run_id": run_id}), ConsistentRead=consistent
        )
        raw = response.get("Item")
        return run_from_item(deserialize(raw)) if raw else None

    def create_run(self, run: Run) -> bool:
        return self._put_new(self._runs, "run_id", run_to_item(run))

    def create_jobs(self, jobs: Sequence[Job]) -> None:
        by_run: dict[str, list[Job]] = {}
        for job in jobs:
            by_run.setdefault(job.run_id, []).append(job)
        for run_jobs in by_run.values():
            for start in range(0, len(run_jobs), JOBS_PER_CREATE):
                self._create_chunk(run_jobs[start : start + JOBS_PER_CREATE])

    def _create_chunk(self, chunk: Sequence[Job]) -> None:
        """One transaction: the jobs, +n queued on their run and on one org shard."""
        first = chunk[0]
        puts = [self._put_job(job) for job in chunk]
        counted = moved(None, JobStatus.QUEUED, len(chunk))
        items = [
            *puts,
            run_counter_update(self._runs, first.run_id, counted),
            org_counter_update(self._runs, first.org_id, first.job_id, counted),
        ]
        try:
            self._db.transact_write_items(TransactItems=items)
            return
        except ClientError as error:
            if not is_condition_failure(error):
                raise
            failed = cancelled_items(error)
        if len(chunk) in failed:
            raise LookupError(f"run {first.run_id} not found: create the run before its jobs")
        # A replay after a partial write: add only the jobs still missing, each counted.
        for job in chunk:
            one = moved(None, JobStatus.QUEUED)
            self._transact(
                [
                    self._put_job(job),
                    run_counter_update(self._runs, job.run_id, one),
                    org_counter_update(self._runs, job.org_id, job.job_id, one),
                ]
            )

    def _put_job(self, job: Job) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._jobs,
                "Item": serialize(job_to_item(job)),
                "ConditionExpression": "attribute_not_exists(job_id)",
            }
        }

    def run_jobs(self, run_id: str, after: int, limit: int, *, total: int) -> JobPage:
        """A page of the run's jobs by position. Their ids derive from the run and each
        position (domain.progress.run_job_id), so no index is needed: one strongly
        consistent batch read of the page (never older than the run's counters)."""
        positions = range(max(0, after + 1), min(total, after + 1 + limit))
        jobs = self.get_jobs([run_job_id(run_id, position) for position in positions])
        jobs.sort(key=lambda j: j.position)
        return JobPage(jobs, more=positions.stop < total)

    def _known(self, job_id: str, job: Job | None) -> Job | None:
        """The caller's copy of the job (its run and org never change), or a fresh read."""
        if job is None:
            return self.get_job(job_id)
        if job.job_id != job_id:
            raise ValueError(f"job {job.job_id} given for job {job_id}")
        return job

    # --------------------------------------------------------------- jobs
    def get_job(self, job_id: str) -> Job | None:
        item = self._get(self._jobs, {"job_id": job_id})
        return job_from_item(item) if item else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        found: dict[str, Job] = {}
        unique = list(dict.fromkeys(job_ids))
        for start in range(0, len(unique), 100):
            keys = [serialize({"job_id": j}) for j in unique[start : start + 100]]
            request: dict[str, Any] = {self._jobs: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                for raw in response.get("Responses", {}).get(self._jobs, []):
                    job = job_from_item(deserialize(raw))
                    found[job.job_id] = job
                request = response.get("UnprocessedKeys") or {}
        return [found[j] for j in unique if j in found]

    def admit_job(self, job: Job, now: float) -> Job | None:
        # The estimate the dispatcher looked up rides along (kept as is when there is none).
        estimate = "" if job.estimate_s is None else ", estimate_s = :est"
        extra = {} if job.estimate_s is None else {"est": job.estimate_s}
        item = self._update(
            self._jobs,
            {"job_id": job.job_id},
            UpdateExpression=(
                "SET admitted = :true, backlog_target = :target, backlog_key = :bk, "
                f"updated_at = :now{estimate} REMOVE unadmitted_shard"
            ),
            ConditionExpression="attribute_exists(unadmitted_shard) AND #s = :queued",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                true=True,
                target=backlog_shard(job),
                bk=backlog_sort_key(job),
                now=now,
                queued=JobStatus.QUEUED.value,
                **extra,
            ),
        )
        return job_from_item(item) if item else None

    def backlog(self, target: Target, limit: int | None = None) -> list[Job]:
        """Most urgent, then oldest, at most ``limit``: each shard read in backlog_key
        order (a page at a time, only while it can still make the cut), merged, cut."""
        shards = all_shard_keys(BACKLOG_INDEX, target.value)
        page = 1000 if limit is None else max(1, min(1000, 2 * -(-limit // len(shards))))

        def shard(value: str) -> Iterator[Item]:
            return self._query(
                TableName=self._jobs,
                IndexName=BACKLOG_INDEX,
                KeyConditionExpression="backlog_target = :shard",
                ExpressionAttributeValues=expression_values(shard=value),
                PaginationConfig={"PageSize": page},
            )

        items = merged((shard(value) for value in shards), lambda i: i["backlog_key"], limit)
        return [job_from_item(item) for item in items]

    def unadmitted_job_ids(self, created_before: float) -> list[str]:
        """Oldest first, from every shard of the index."""
        return self._job_ids_before(
            UNADMITTED_INDEX, UNADMITTED_PREFIX, "unadmitted_shard", "created_at", created_before
        )

    def overdue_job_ids(self, due_before: float) -> list[str]:
        """Running jobs whose timeout_at is before ``due_before``, from every shard of the
        timeout index (earliest first): only due items are read, never every batch."""
        return self._job_ids_before(
            TIMEOUT_INDEX, RUNNING_PREFIX, "timeout_shard", "timeout_at", due_before
        )

    def _job_ids_before(
        self, index: str, prefix: str, shard_attr: str, sort_attr: str, before: float
    ) -> list[str]:
        """The job ids of a sharded sparse index whose sort key is below ``before``, every
        shard queried and merged in sort-key order."""
        streams = (
            self._query(
                TableName=self._jobs,
                IndexName=index,
                KeyConditionExpression=f"{shard_attr} = :shard AND {sort_attr} < :before",
                ExpressionAttributeValues=expression_values(shard=value, before=before),
            )
            for value in all_shard_keys(index, prefix)
        )
        items = merged(streams, lambda i: (float(i[sort_attr]), i["job_id"]))
        return [item["job_id"] for item in items]

    def claim_resend(self, job: Job, now: float) -> bool:
        item = self._update(
            self._jobs,
            {"job_id": job.job_id},
            UpdateExpression="SET resends = :next, last_sent_at = :now",
            ConditionExpression=(
                "attribute_exists(unadmitted_shard) AND "
                "(attribute_not_exists(resends) OR resends = :seen)"
            ),
            ExpressionAttributeValues=expression_values(
                next=job.resends + 1, seen=job.resends, now=now
            ),
        )
        return item is not None

    def cancel_job(self, job_id: str, now: float, *, job: Job | None = None) -> Job | None:
        current = self._known(job_id, job)
        if current is None:
            return None
        message = "cancelled before it started"
        done = self._counted_update(
            Counted(current.run_id, current.org_id, job_id, JobStatus.QUEUED, JobStatus.CANCELLED),
            now,
            UpdateExpression=(
                "SET #s = :cancelled, finished_at = :now, updated_at = :now, "
                "message = :msg REMOVE backlog_target, backlog_key, unadmitted_shard"
            ),
            ConditionExpression="#s = :queued",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                cancelled=JobStatus.CANCELLED.value,
                queued=JobStatus.QUEUED.value,
                now=now,
                msg=message,
            ),
        )
        if not done:
            return None
        return replace(
            current,
            status=JobStatus.CANCELLED,
            finished_at=now,
            updated_at=now,
            message=message,
        )

    def start_job(self, job_id: str, agent_id: str, batch_id: str, now: float) -> Job | None:
        item = self._update(
            self._jobs,
            {"job_id": job_id},
            # A restarted agent re-starting its running job keeps the first start, so the
            # job's timeout still bounds a test that keeps crashing its agent.
            UpdateExpression=(
                "SET #s = :running, started_at = if_not_exists(started_at, :now), "
                "updated_at = :now, timeout_shard = :tshard, "
                "timeout_at = if_not_exists(started_at, :now) + timeout_s"
            ),
            ConditionExpression="batch_id = :b AND agent_id = :a AND #s IN (:assigned, :running)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                running=JobStatus.RUNNING.value,
                assigned=JobStatus.ASSIGNED.value,
                now=now,
                b=batch_id,
                a=agent_id,
                tshard=shard_key(TIMEOUT_INDEX, RUNNING_PREFIX, job_id),
            ),
        )
        return job_from_item(item) if item else None

    def finish_job(
        self,
        job_id: str,
        agent_id: str,
        batch_id: str,
        outcome: JobOutcome,
        now: float,
        *,
        job: Job | None = None,
    ) -> Job | None:
        current = self._known(job_id, job)
        if current is None:
            return None
        counted, update, finished = _finish(current, agent_id, batch_id, outcome, now)
        return finished if self._counted_update(counted, now, **update) else None

    def finish_jobs(self, finishes: Sequence[Finish], now: float) -> list[Job] | None:
        if not finishes:
            return []
        if len({f.job.job_id for f in finishes}) != len(finishes):
            raise ValueError("finish_jobs: a job given twice")
        built = [_finish(f.job, f.agent_id, f.batch_id, f.outcome, now) for f in finishes]
        if not self._counted_updates([(counted, update) for counted, update, _ in built], now):
            return None
        return [finished for _, _, finished in built]

    def requeue_job(
        self,
        job: Job,
        batch_id: str,
        now: float,
        *,
        count_attempt: bool,
        reason: str,
        retry_of_batch: str | None = None,
        agent_id: str | None = None,
    ) -> Job | None:
        attempts = job.attempts + (1 if count_attempt else 0)
        common = expression_values(
            b=batch_id,
            assigned=JobStatus.ASSIGNED.value,
            running=JobStatus.RUNNING.value,
            now=now,
            attempts=attempts,
            reason=reason,
        )
        condition = "batch_id = :b AND #s IN (:assigned, :running)"
        if agent_id is not None:
            condition += " AND agent_id = :a"
            common.update(expression_values(a=agent_id))
        if attempts >= job.max_attempts:
            failed = self._counted_update(
                Counted(job.run_id, job.org_id, job.job_id, JobStatus.RUNNING, JobStatus.ERROR),
                now,
                UpdateExpression=(
                    "SET #s = :error, attempts = :attempts, finished_at = :now, "
                    f"updated_at = :now, message = :reason REMOVE {TIMEOUT_ATTRIBUTES}"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    **common,
                    **expression_values(error=JobStatus.ERROR.value),
                },
            )
            if not failed:
                return None
            return replace(
                job,
                status=JobStatus.ERROR,
                attempts=attempts,
                finished_at=now,
                updated_at=now,
                message=reason,
            )
        else:
            requeued = replace(job, status=JobStatus.QUEUED)
            # Only an agent's own error report marks the job, so its retried delivery is
            # recognised; a requeue by the reaper clears the mark.
            if retry_of_batch:
                marker, removed = "retry_of_batch = :retry_of, ", ""
                extra = expression_values(retry_of=retry_of_batch)
            else:
                marker, removed, extra = "", ", retry_of_batch", {}
            last_agent = job.agent_id or agent_id
            if last_agent:
                marker += "last_agent_id = :last_agent, "
                extra.update(expression_values(last_agent=last_agent))
            back = self._counted_update(
                Counted(job.run_id, job.org_id, job.job_id, JobStatus.RUNNING, JobStatus.QUEUED),
                now,
                UpdateExpression=(
                    "SET #s = :queued, attempts = :attempts, updated_at = :now, message = :reason, "
                    f"{marker}backlog_target = :target, backlog_key = :bk "
                    f"REMOVE batch_id, agent_id, started_at, {TIMEOUT_ATTRIBUTES}{removed}"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    **common,
                    **expression_values(
                        queued=JobStatus.QUEUED.value,
                        target=backlog_shard(job),
                        bk=backlog_sort_key(requeued),
                    ),
                    **extra,
                },
            )
            if not back:
                return None
            return replace(
                job,
                status=JobStatus.QUEUED,
                attempts=attempts,
                updated_at=now,
                message=reason,
                retry_of_batch=retry_of_batch or None,
                batch_id=None,
                agent_id=None,
                started_at=None,
                last_agent_id=last_agent or job.last_agent_id,
            )


def _finish(
    current: Job, agent_id: str, batch_id: str, outcome: JobOutcome, now: float
) -> tuple[Counted, dict[str, Any], Job]:
    """The conditional update that makes ``current`` final (assigned|running in this batch
    on this agent), the transition its counters see, and the job as it is after."""
    # A test the agent started without telling (its start goes with its result, see
    # `qgjob agent --report-every`) started its duration ago.
    started_at = current.started_at or max(0.0, now - outcome.duration_s)
    sets = [
        "#s = :final",
        "finished_at = :now",
        "updated_at = :now",
        "duration_s = :dur",
        "started_at = if_not_exists(started_at, :started)",
    ]
    values: dict[str, Any] = {
        "final": outcome.status.value,
        "now": now,
        "dur": outcome.duration_s,
        "started": started_at,
        "b": batch_id,
        "a": agent_id,
        "assigned": JobStatus.ASSIGNED.value,
        "running": JobStatus.RUNNING.value,
    }
    optional = {
        "message": outcome.message,
        "output_excerpt": outcome.output_excerpt,
        "output_key": outcome.output_key,
        "session_id": outcome.session_id,
        "artifacts": list(outcome.artifacts) or None,
    }
    # A result replaces everything an earlier attempt left behind.
    removes = ["retry_of_batch", TIMEOUT_ATTRIBUTES]
    for name, value in optional.items():
        if value is None:
            removes.append(name)
        else:
            sets.append(f"{name} = :{name}")
            values[name] = value
    # Passing after a failed try: flaky, counted on the run in the same write.
    flaky = {FLAKY: 1} if current.tries and outcome.status is JobStatus.PASSED else None
    counted = Counted(
        current.run_id, current.org_id, current.job_id, JobStatus.RUNNING, outcome.status, flaky
    )
    update: dict[str, Any] = {
        "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
        "ConditionExpression": "batch_id = :b AND agent_id = :a AND #s IN (:assigned, :running)",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": expression_values(**values),
    }
    finished = replace(
        current,
        status=outcome.status,
        agent_id=agent_id,
        batch_id=batch_id,
        started_at=started_at,
        finished_at=now,
        updated_at=now,
        duration_s=outcome.duration_s,
        message=outcome.message,
        output_excerpt=outcome.output_excerpt,
        output_key=outcome.output_key,
        session_id=outcome.session_id,
        artifacts=list(outcome.artifacts),
        retry_of_batch=None,
    )
    return counted, update, finished
