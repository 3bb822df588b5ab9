"""Batches: the atomic assignment of jobs to an agent, leases, timeouts, and org metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aws_lambda_powertools import Logger
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
    ORG_TOTALS,
    PAIR_KIND,
    Counted,
    CountingTables,
    counts_of,
    org_counter_update,
    org_shard_key,
    pair_key,
    run_counter_update,
)
from qgjob_backend.adapters.dynamodb.shards import (
    LEASE_INDEX,
    all_shard_keys,
    merged,
    shard_key,
)
from qgjob_backend.config import MAX_BATCH_JOBS
from qgjob_backend.domain.models import AgentStatus, Batch, BatchState, Job, rests_by_job
from qgjob_backend.domain.progress import METRIC_SHARDS, moved, nonzero
from qgjob_backend.ports import OrgMetrics
from qgjob_backend.schema import JobStatus, Target

logger = Logger(child=True)

ACTIVE_LEASE_PREFIX = "active"


def lease_shard(batch_id: str) -> str:
    return shard_key(LEASE_INDEX, ACTIVE_LEASE_PREFIX, batch_id)


def batch_to_item(batch: Batch) -> Item:
    item: Item = {
        "batch_id": batch.batch_id,
        "agent_id": batch.agent_id,
        "group_key": batch.group_key,
        "org_id": batch.org_id,
        "app_version_id": batch.app_version_id,
        "target": batch.target.value,
        "job_ids": batch.job_ids,
        "state": batch.state.value,
        "created_at": batch.created_at,
        "lease_expires_at": batch.lease_expires_at,
        "install_required": batch.install_required,
        "installed_at": batch.installed_at,
        "finished_at": batch.finished_at,
        "expected_end_at": batch.expected_end_at,
    }
    if batch.state is BatchState.ACTIVE:
        # lease-index sorts on lease_check_at, not lease_expires_at: a heartbeat moves only
        # the latter (no index write); the reaper moves the check time when it finds the
        # lease extended (one index write per lease period). Keys only, for the same reason.
        item["lease_shard"] = lease_shard(batch.batch_id)
        item["lease_check_at"] = batch.lease_expires_at
    return item


def batch_from_item(item: Item) -> Batch:
    return Batch(
        batch_id=item["batch_id"],
        agent_id=item["agent_id"],
        group_key=item["group_key"],
        org_id=item["org_id"],
        app_version_id=item["app_version_id"],
        target=Target(item["target"]),
        job_ids=list(item["job_ids"]),
        state=BatchState(item["state"]),
        created_at=float(item["created_at"]),
        lease_expires_at=float(item["lease_expires_at"]),
        install_required=bool(item["install_required"]),
        installed_at=item.get("installed_at"),
        finished_at=item.get("finished_at"),
        expected_end_at=optional_float(item.get("expected_end_at")),
    )


class BatchStore(CountingTables):
    """The batches table, and the transactions that span it, the jobs and the agents."""

    # ------------------------------------------------------------ batches
    def commit_batch(self, batch: Batch, now: float) -> bool:
        """One batch's commit: see ``commit_batches``."""
        return bool(self.commit_batches([batch], now))

    def commit_batches(self, batches: Sequence[Batch], now: float) -> list[Batch]:
        """Commits each batch whose preconditions hold; returns those, in order.

        Batches are packed into as few transactions as fit (100 items): each batch's agent
        (idle -> busy), its item and its jobs (queued -> assigned), and once per
        transaction the counters of every run and org the batches touch. A plan spreads a
        suite over many agents, so sharing those counter writes saves two doubled writes
        per batch. A transaction is all or nothing: when it is cancelled, the batches whose
        items caused it are dropped (nothing of them written) and the rest is tried again.
        """
        for batch in batches:
            if len(batch.job_ids) > MAX_BATCH_JOBS:
                raise ValueError(f"a batch holds at most {MAX_BATCH_JOBS} jobs")
        runs = self._runs_of([job_id for batch in batches for job_id in batch.job_ids])
        # A batch naming a job that does not exist cannot commit: its condition would fail.
        ready = [b for b in batches if all(j in runs for j in b.job_ids)]
        committed: list[Batch] = []
        for group in self._packed(ready, runs):
            committed += self._commit_group(group, runs, now)
        for batch in committed:
            self._count_pair(batch)
        return committed

    def _packed(self, batches: Sequence[Batch], runs: dict[str, str]) -> list[list[Batch]]:
        """Consecutive batches per transaction, while they fit and touch no item twice
        (DynamoDB refuses a transaction that does; a plan never makes such batches)."""
        groups: list[list[Batch]] = []
        touched: set[str] = set()
        for batch in batches:
            keys = {f"agent:{batch.agent_id}", *(f"job:{j}" for j in batch.job_ids)}
            fits = bool(groups) and touched.isdisjoint(keys)
            if fits:
                items, _ = self._group_items([*groups[-1], batch], runs, 0.0)
                fits = len(items) <= TRANSACTION_LIMIT
            if fits:
                groups[-1].append(batch)
                touched |= keys
            else:
                groups.append([batch])
                touched = set(keys)
        return groups

    def _commit_group(self, group: list[Batch], runs: dict[str, str], now: float) -> list[Batch]:
        remaining = list(group)
        while remaining:
            items, owners = self._group_items(remaining, runs, now)
            if len(items) > TRANSACTION_LIMIT:  # pragma: no cover - MAX_BATCH_JOBS prevents it
                raise ValueError(f"a batch commit of {len(items)} items is over one transaction")
            try:
                self._db.transact_write_items(TransactItems=items)
                return remaining
            except ClientError as error:
                if not is_condition_failure(error):
                    raise
                culprits = _cancelling_owners(error, owners)
            if not culprits:
                # Only a counter's condition failed (a run missing): each batch on its own.
                if len(remaining) == 1:
                    return []
                return [b for b in remaining if self._commit_group([b], runs, now)]
            remaining = [b for index, b in enumerate(remaining) if index not in culprits]
        return []

    def _group_items(
        self, group: Sequence[Batch], runs: dict[str, str], now: float
    ) -> tuple[list[dict[str, Any]], list[int | None]]:
        """The transaction of a group of batches, and for each item the index of the batch
        it belongs to (None: a counter shared by the group)."""
        items: list[dict[str, Any]] = []
        owners: list[int | None] = []
        for index, batch in enumerate(group):
            for item in self._batch_items(batch, now):
                items.append(item)
                owners.append(index)
        per_run = Counter(runs[job_id] for batch in group for job_id in batch.job_ids)
        for run_id, jobs in sorted(per_run.items()):
            items.append(
                run_counter_update(
                    self._runs, run_id, moved(JobStatus.QUEUED, JobStatus.ASSIGNED, jobs)
                )
            )
            owners.append(None)
        per_org: dict[str, list[Batch]] = {}
        for batch in group:
            per_org.setdefault(batch.org_id, []).append(batch)
        for org_id, org_batches in sorted(per_org.items()):
            assigned = moved(
                JobStatus.QUEUED, JobStatus.ASSIGNED, sum(len(b.job_ids) for b in org_batches)
            )
            items.append(
                org_counter_update(
                    self._runs,
                    org_id,
                    org_batches[0].batch_id,
                    assigned,
                    batches=len(org_batches),
                )
            )
            owners.append(None)
        return items, owners

    def _batch_items(self, batch: Batch, now: float) -> list[dict[str, Any]]:
        """The agent idle -> busy, the batch's item, each job queued -> assigned."""
        agent_values: dict[str, Any] = {
            "busy": AgentStatus.BUSY.value,
            "idle": AgentStatus.IDLE.value,
            "b": batch.batch_id,
            "g": batch.group_key,
            "now": now,
        }
        # A busy agent leaves the idle index (its heartbeats never write an index).
        if batch.expected_end_at is None:
            free_at = " REMOVE idle_shard, batch_expected_free_at"
        else:
            free_at = ", batch_expected_free_at = :free REMOVE idle_shard"
            agent_values["free"] = batch.expected_end_at
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._agents,
                    "Key": serialize({"agent_id": batch.agent_id}),
                    "UpdateExpression": (
                        "SET #s = :busy, batch_id = :b, batch_group = :g, updated_at = :now"
                        + free_at
                    ),
                    # A drained agent (infra.admin agents drain) gets no batch, even from a plan
                    # that read it before the drain.
                    "ConditionExpression": (
                        "#s = :idle AND attribute_not_exists(batch_id) "
                        "AND attribute_not_exists(drained_at)"
                    ),
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": expression_values(**agent_values),
                }
            },
            {
                "Put": {
                    "TableName": self._batches,
                    "Item": serialize(batch_to_item(batch)),
                    "ConditionExpression": "attribute_not_exists(batch_id)",
                }
            },
        ]
        rests = rests_by_job(batch)
        for job_id in batch.job_ids:
            job_values: dict[str, Any] = {
                "assigned": JobStatus.ASSIGNED.value,
                "queued": JobStatus.QUEUED.value,
                "b": batch.batch_id,
                "a": batch.agent_id,
                "now": now,
            }
            sets = "#s = :assigned, batch_id = :b, agent_id = :a, updated_at = :now"
            removes = "backlog_target, backlog_key"
            # Always set or removed: a requeued job must not keep its last batch's rest.
            if job_id in rests:
                sets += ", rest_of_batch_s = :rest"
                job_values["rest"] = rests[job_id]
            else:
                removes += ", rest_of_batch_s"
            items.append(
                {
                    "Update": {
                        "TableName": self._jobs,
                        "Key": serialize({"job_id": job_id}),
                        "UpdateExpression": f"SET {sets} REMOVE {removes}",
                        "ConditionExpression": "#s = :queued AND attribute_exists(backlog_target)",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": expression_values(**job_values),
                    }
                }
            )
        return items

    def _runs_of(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Each job's run (it never changes: an eventually consistent read will do, with a
        strongly consistent one for any job it did not see yet); a missing job is absent."""
        runs: dict[str, str] = {}
        for consistent in (False, True):
            missing = [j for j in dict.fromkeys(job_ids) if j not in runs]
            if not missing:
                break
            for start in range(0, len(missing), BATCH_GET_LIMIT):
                request: dict[str, Any] = {
                    self._jobs: {
                        "Keys": [
                            serialize({"job_id": j})
                            for j in missing[start : start + BATCH_GET_LIMIT]
                        ],
                        "ProjectionExpression": "job_id, run_id",
                        "ConsistentRead": consistent,
                    }
                }
                while request:
                    response = self._db.batch_get_item(RequestItems=request)
                    for raw in response.get("Responses", {}).get(self._jobs, []):
                        item = deserialize(raw)
                        runs[item["job_id"]] = item["run_id"]
                    request = response.get("UnprocessedKeys") or {}
        return runs

    def _count_pair(self, batch: Batch) -> None:
        """Counts (agent, app version, target) once per org: a marker item put only if
        absent, in one transaction with the counter. Best effort, after the commit: a pair
        missed here (the call failed) is counted by its next batch."""
        key = pair_key(batch.org_id, batch.agent_id, batch.app_version_id, batch.target.value)
        try:
            seen = self._db.get_item(
                TableName=self._runs,
                Key=serialize({"run_id": key}),
                ProjectionExpression="run_id",
            )
            if "Item" in seen:
                return
            marker = {
                "run_id": key,
                "kind": PAIR_KIND,
                "org_id": batch.org_id,
                "agent_id": batch.agent_id,
                "app_version_id": batch.app_version_id,
                "target": batch.target.value,
            }
            self._transact(
                [
                    {
                        "Put": {
                            "TableName": self._runs,
                            "Item": serialize(marker),
                            "ConditionExpression": "attribute_not_exists(run_id)",
                        }
                    },
                    org_counter_update(self._runs, batch.org_id, key, agent_app_pairs=1),
                ]
            )
        except ClientError:
            logger.warning("agent/app pair not counted", extra={"batch_id": batch.batch_id})

    def get_batch(self, batch_id: str) -> Batch | None:
        item = self._get(self._batches, {"batch_id": batch_id})
        return batch_from_item(item) if item else None

    def extend_lease(self, batch_id: str, agent_id: str, until: float) -> bool:
        item = self._update(
            self._batches,
            {"batch_id": batch_id},
            UpdateExpression="SET lease_expires_at = :until",
            ConditionExpression="#st = :active AND agent_id = :a AND lease_expires_at < :until",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues=expression_values(
                until=until, active=BatchState.ACTIVE.value, a=agent_id
            ),
        )
        if item is not None:
            return True
        # Not extended: fine if it is still ours and active (a longer lease already stands).
        current = self.get_batch(batch_id)
        return bool(current and current.state is BatchState.ACTIVE and current.agent_id == agent_id)

    def lapsed_batches(self, now: float) -> list[Batch]:
        """Due check times from every lease shard, then the batches themselves (strongly
        consistent): those whose real lease ran out are returned; a batch whose lease was
        extended since gets its check time moved to its lease's end (conditional on the
        check time read, so a repeat or a racing reaper writes nothing)."""
        streams = (
            self._query(
                TableName=self._batches,
                IndexName=LEASE_INDEX,
                KeyConditionExpression="lease_shard = :shard AND lease_check_at < :now",
                ExpressionAttributeValues=expression_values(shard=value, now=now),
            )
            for value in all_shard_keys(LEASE_INDEX, ACTIVE_LEASE_PREFIX)
        )
        due = merged(streams, lambda i: (float(i["lease_check_at"]), i["batch_id"]))
        lapsed: list[Batch] = []
        for item in self._get_items(self._batches, "batch_id", [i["batch_id"] for i in due]):
            if "lease_shard" not in item:
                continue  # closed since the index was read
            batch = batch_from_item(item)
            if batch.lease_expires_at < now:
                lapsed.append(batch)
            else:
                self._update(
                    self._batches,
                    {"batch_id": batch.batch_id},
                    UpdateExpression="SET lease_check_at = :until",
                    ConditionExpression=(
                        "attribute_exists(lease_shard) AND lease_check_at = :seen "
                        "AND lease_expires_at = :until"
                    ),
                    ExpressionAttributeValues=expression_values(
                        until=batch.lease_expires_at, seen=item["lease_check_at"]
                    ),
                )
        lapsed.sort(key=lambda b: (b.lease_expires_at, b.batch_id))
        return lapsed

    def time_out_job(self, job: Job, now: float) -> Job | None:
        if job.batch_id is None or job.started_at is None:
            return None
        message = f"no result within timeout_s={job.timeout_s}"
        done = self._counted_update(
            Counted(job.run_id, job.org_id, job.job_id, JobStatus.RUNNING, JobStatus.TIMED_OUT),
            now,
            UpdateExpression=(
                "SET #s = :timed_out, finished_at = :now, updated_at = :now, message = :msg "
                "REMOVE timeout_shard, timeout_at"
            ),
            ConditionExpression="#s = :running AND batch_id = :b AND started_at = :started",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=expression_values(
                timed_out=JobStatus.TIMED_OUT.value,
                running=JobStatus.RUNNING.value,
                b=job.batch_id,
                started=job.started_at,
                now=now,
                msg=message,
            ),
        )
        if not done:
            return None
        return replace(
            job,
            status=JobStatus.TIMED_OUT,
            finished_at=now,
            updated_at=now,
            message=message,
        )

    def expire_batch(self, batch_id: str, now: float) -> bool:
        item = self._update(
            self._batches,
            {"batch_id": batch_id},
            UpdateExpression="SET #st = :expired",
            ConditionExpression="#st = :active AND lease_expires_at < :now",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues=expression_values(
                expired=BatchState.EXPIRED.value, active=BatchState.ACTIVE.value, now=now
            ),
        )
        return item is not None

    def close_batch(self, batch: Batch, now: float) -> bool:
        final = BatchState.DONE if batch.state is BatchState.ACTIVE else BatchState.EXPIRED
        item = self._update(
            self._batches,
            {"batch_id": batch.batch_id},
            UpdateExpression=(
                "SET #st = :final, finished_at = :now, expires_at = :expires "
                "REMOVE lease_shard, lease_check_at"
            ),
            ConditionExpression="#st = :current AND attribute_exists(lease_shard)",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues=expression_values(
                final=final.value,
                current=batch.state.value,
                now=now,
                expires=self._expires_at(now),
            ),
        )
        return item is not None

    # ------------------------------------------------------------ metrics
    def org_metrics(self, org_id: str) -> OrgMetrics:
        """The sum of the org's metric shards: one batch read of METRIC_SHARDS small items
        (eventually consistent: metrics may lag a second), whatever the org's history."""
        keys = [serialize({"run_id": org_shard_key(org_id, n)}) for n in range(METRIC_SHARDS)]
        request: dict[str, Any] = {self._runs: {"Keys": keys}}
        jobs: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        while request:
            response = self._db.batch_get_item(RequestItems=request)
            for raw in response.get("Responses", {}).get(self._runs, []):
                item = deserialize(raw)
                jobs.update(counts_of(item))
                totals.update({name: int(item.get(name, 0)) for name in ORG_TOTALS})
            request = response.get("UnprocessedKeys") or {}
        return OrgMetrics(
            jobs_by_status=nonzero(jobs),
            batches=totals["batches"],
            installs=totals["installs"],
            agent_app_pairs=totals["agent_app_pairs"],
        )


# BatchGetItem reads at most this many keys per request.
BATCH_GET_LIMIT = 100

# Cancellation reasons that name the item at fault; any other (throttling, validation) is
# raised: the plan fails and its request is delivered again.
_ITEM_FAULTS = frozenset({"ConditionalCheckFailed", "TransactionConflict"})


def _cancelling_owners(error: ClientError, owners: Sequence[int | None]) -> set[int]:
    """The batches whose items cancelled the transaction (raises for other causes)."""
    reasons: Sequence[Any] = error.response.get("CancellationReasons") or []
    culprits: set[int] = set()
    for index, reason in enumerate(reasons):
        code = reason.get("Code") if isinstance(reason, dict) else None
        if code in (None, "None"):
            continue
        if code not in _ITEM_FAULTS:
            raise error
        owner = owners[index] if index < len(owners) else None
        if owner is not None:
            culprits.add(owner)
    return culprits
