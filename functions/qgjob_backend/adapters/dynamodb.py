"""DynamoDB implementation of the StateStore, TokenStore and EstimateStore ports.

Every state change is a conditional UpdateItem/PutItem or a TransactWriteItems; a
failed condition is reported as None/False, never raised, because under at-least-once
delivery "someone already did this" is the normal case.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from qgjob_backend.domain.estimates import DurationEstimate, EstimateKey
from qgjob_backend.domain.models import (
    Agent,
    AgentStatus,
    AppRef,
    Batch,
    BatchState,
    Job,
    Run,
)
from qgjob_backend.ports import EstimateConflict, JobOutcome, OrgMetrics, TokenRecord
from qgjob_backend.schema import JobStatus, Target

Item = dict[str, Any]

BACKLOG_INDEX = "backlog-index"
UNADMITTED_INDEX = "unadmitted-index"
TARGET_INDEX = "target-index"
LEASE_INDEX = "lease-index"
ORG_INDEX = "org-index"
UNADMITTED_SHARD = "pending"
ACTIVE_LEASE_SHARD = "active"
TRANSACTION_LIMIT = 100
REGISTER_ATTEMPTS = 5

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [_to_dynamo(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    return value


def serialize(item: Item) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo(v)) for k, v in item.items() if v is not None}


def deserialize(item: dict[str, Any]) -> Item:
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def _values(**values: Any) -> dict[str, Any]:
    return {f":{k}": _serializer.serialize(_to_dynamo(v)) for k, v in values.items()}


def _is_condition_failure(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


def backlog_sort_key(job: Job) -> str:
    return f"{job.group_key}#{job.priority:02d}#{job.created_at:020.6f}#{job.position:05d}"


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------- item mapping
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
    }
    if job.status is JobStatus.QUEUED and not job.admitted:
        item["unadmitted_shard"] = UNADMITTED_SHARD
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
        estimate_s=_optional_float(item.get("estimate_s")),
    )


def run_to_item(run: Run) -> Item:
    return {
        "run_id": run.run_id,
        "org_id": run.org_id,
        "app_version_id": run.app_version_id,
        "target": run.target.value,
        "priority": run.priority,
        "job_ids": run.job_ids,
        "fingerprint": run.fingerprint,
        "created_at": run.created_at,
    }


def run_from_item(item: Item) -> Run:
    return Run(
        run_id=item["run_id"],
        org_id=item["org_id"],
        app_version_id=item["app_version_id"],
        target=Target(item["target"]),
        priority=int(item["priority"]),
        job_ids=list(item["job_ids"]),
        fingerprint=item["fingerprint"],
        created_at=float(item["created_at"]),
    )


def agent_from_item(item: Item) -> Agent:
    installed = None
    if item.get("installed_org") and item.get("installed_app"):
        installed = AppRef(item["installed_org"], item["installed_app"])
    return Agent(
        agent_id=item["agent_id"],
        target=Target(item["target"]),
        device_id=item["device_id"],
        status=AgentStatus(item["status"]),
        last_seen=float(item["last_seen"]),
        registered_at=float(item["registered_at"]),
        installed=installed,
        batch_id=item.get("batch_id"),
        batch_group=item.get("batch_group"),
        credential_hash=item.get("credential_hash") or None,
        lab_org_id=item.get("lab_org_id") or None,
        fleet_hash=item.get("fleet_hash") or None,
        batch_expected_free_at=_optional_float(item.get("batch_expected_free_at")),
    )


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
        item["lease_shard"] = ACTIVE_LEASE_SHARD
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
        expected_end_at=_optional_float(item.get("expected_end_at")),
    )


class DynamoStateStore:
    """StateStore over five DynamoDB tables (see template.yaml)."""

    def __init__(
        self,
        client: Any,
        *,
        jobs_table: str,
        runs_table: str,
        agents_table: str,
        batches_table: str,
    ) -> None:
        self._db = client
        self._jobs = jobs_table
        self._runs = runs_table
        self._agents = agents_table
        self._batches = batches_table

    # ------------------------------------------------------------ helpers
    def _get(self, table: str, key: Item) -> Item | None:
        response = self._db.get_item(TableName=table, Key=serialize(key), ConsistentRead=True)
        raw = response.get("Item")
        return deserialize(raw) if raw else None

    def _update(self, table: str, key: Item, **kwargs: Any) -> Item | None:
        """A conditional update returning the new item, or None when the condition failed."""
        try:
            response = self._db.update_item(
                TableName=table, Key=serialize(key), ReturnValues="ALL_NEW", **kwargs
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return None
            raise
        return deserialize(response["Attributes"])

    def _put_new(self, table: str, key_name: str, item: Item) -> bool:
        try:
            self._db.put_item(
                TableName=table,
                Item=serialize(item),
                ConditionExpression=f"attribute_not_exists({key_name})",
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def _query(self, **kwargs: Any) -> Iterator[Item]:
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(**kwargs):
            for raw in page.get("Items", []):
                yield deserialize(raw)

    def _scan(self, **kwargs: Any) -> Iterator[Item]:
        paginator = self._db.get_paginator("scan")
        for page in paginator.paginate(**kwargs):
            for raw in page.get("Items", []):
                yield deserialize(raw)

    # --------------------------------------------------------------- runs
    def get_run(self, run_id: str) -> Run | None:
        item = self._get(self._runs, {"run_id": run_id})
        return run_from_item(item) if item else None

    def create_run(self, run: Run) -> bool:
        return self._put_new(self._runs, "run_id", run_to_item(run))

    def create_jobs(self, jobs: Sequence[Job]) -> None:
        for start in range(0, len(jobs), TRANSACTION_LIMIT):
            chunk = jobs[start : start + TRANSACTION_LIMIT]
            puts = [
                {
                    "Put": {
                        "TableName": self._jobs,
                        "Item": serialize(job_to_item(job)),
                        "ConditionExpression": "attribute_not_exists(job_id)",
                    }
                }
                for job in chunk
            ]
            try:
                self._db.transact_write_items(TransactItems=puts)
            except ClientError as error:
                if not _is_condition_failure(error):
                    raise
                # A replay after a partial write: add only the jobs still missing.
                for job in chunk:
                    self._put_new(self._jobs, "job_id", job_to_item(job))

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
            ExpressionAttributeValues=_values(
                true=True,
                target=job.target.value,
                bk=backlog_sort_key(job),
                now=now,
                queued=JobStatus.QUEUED.value,
                **extra,
            ),
        )
        return job_from_item(item) if item else None

    def backlog(self, target: Target) -> list[Job]:
        items = self._query(
            TableName=self._jobs,
            IndexName=BACKLOG_INDEX,
            KeyConditionExpression="backlog_target = :target",
            ExpressionAttributeValues=_values(target=target.value),
        )
        return [job_from_item(item) for item in items]

    def unadmitted_job_ids(self, created_before: float) -> list[str]:
        items = self._query(
            TableName=self._jobs,
            IndexName=UNADMITTED_INDEX,
            KeyConditionExpression="unadmitted_shard = :shard AND created_at < :cutoff",
            ExpressionAttributeValues=_values(shard=UNADMITTED_SHARD, cutoff=created_before),
        )
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
            ExpressionAttributeValues=_values(next=job.resends + 1, seen=job.resends, now=now),
        )
        return item is not None

    def cancel_job(self, job_id: str, now: float) -> Job | None:
        item = self._update(
            self._jobs,
            {"job_id": job_id},
            UpdateExpression=(
                "SET #s = :cancelled, finished_at = :now, updated_at = :now, "
                "message = :msg REMOVE backlog_target, backlog_key, unadmitted_shard"
            ),
            ConditionExpression="#s = :queued",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(
                cancelled=JobStatus.CANCELLED.value,
                queued=JobStatus.QUEUED.value,
                now=now,
                msg="cancelled before it started",
            ),
        )
        return job_from_item(item) if item else None

    def start_job(self, job_id: str, agent_id: str, batch_id: str, now: float) -> Job | None:
        item = self._update(
            self._jobs,
            {"job_id": job_id},
            # A restarted agent re-starting its running job keeps the first start, so the
            # job's timeout still bounds a test that keeps crashing its agent.
            UpdateExpression=(
                "SET #s = :running, started_at = if_not_exists(started_at, :now), updated_at = :now"
            ),
            ConditionExpression="batch_id = :b AND agent_id = :a AND #s IN (:assigned, :running)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(
                running=JobStatus.RUNNING.value,
                assigned=JobStatus.ASSIGNED.value,
                now=now,
                b=batch_id,
                a=agent_id,
            ),
        )
        return job_from_item(item) if item else None

    def finish_job(
        self, job_id: str, agent_id: str, batch_id: str, outcome: JobOutcome, now: float
    ) -> Job | None:
        sets = ["#s = :final", "finished_at = :now", "updated_at = :now", "duration_s = :dur"]
        values: dict[str, Any] = {
            "final": outcome.status.value,
            "now": now,
            "dur": outcome.duration_s,
            "b": batch_id,
            "a": agent_id,
            "assigned": JobStatus.ASSIGNED.value,
            "running": JobStatus.RUNNING.value,
        }
        optional = {
            "message": outcome.message,
            "output_excerpt": outcome.output_excerpt,
            "output_key": outcome.output_key,
        }
        # A result replaces everything an earlier attempt left behind.
        removes = ["retry_of_batch"]
        for name, value in optional.items():
            if value is None:
                removes.append(name)
            else:
                sets.append(f"{name} = :{name}")
                values[name] = value
        item = self._update(
            self._jobs,
            {"job_id": job_id},
            UpdateExpression="SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
            ConditionExpression="batch_id = :b AND agent_id = :a AND #s IN (:assigned, :running)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(**values),
        )
        return job_from_item(item) if item else None

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
        common = _values(
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
            common.update(_values(a=agent_id))
        if attempts >= job.max_attempts:
            item = self._update(
                self._jobs,
                {"job_id": job.job_id},
                UpdateExpression=(
                    "SET #s = :error, attempts = :attempts, finished_at = :now, "
                    "updated_at = :now, message = :reason"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={**common, **_values(error=JobStatus.ERROR.value)},
            )
        else:
            requeued = replace(job, status=JobStatus.QUEUED)
            # Only an agent's own error report marks the job, so its retried delivery is
            # recognised; a requeue by the reaper clears the mark.
            if retry_of_batch:
                marker, removed = "retry_of_batch = :retry_of, ", ""
                extra = _values(retry_of=retry_of_batch)
            else:
                marker, removed, extra = "", ", retry_of_batch", {}
            item = self._update(
                self._jobs,
                {"job_id": job.job_id},
                UpdateExpression=(
                    "SET #s = :queued, attempts = :attempts, updated_at = :now, message = :reason, "
                    f"{marker}backlog_target = :target, backlog_key = :bk "
                    f"REMOVE batch_id, agent_id, started_at{removed}"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    **common,
                    **_values(
                        queued=JobStatus.QUEUED.value,
                        target=job.target.value,
                        bk=backlog_sort_key(requeued),
                    ),
                    **extra,
                },
            )
        return job_from_item(item) if item else None

    # ------------------------------------------------------------- agents
    def get_agent(self, agent_id: str) -> Agent | None:
        item = self._get(self._agents, {"agent_id": agent_id})
        return agent_from_item(item) if item else None

    def register_agent(
        self,
        agent_id: str,
        target: Target,
        device_id: str,
        installed: AppRef | None,
        now: float,
        *,
        credential_hash: str,
        lab_org_id: str | None = None,
        fleet_hash: str | None = None,
    ) -> Agent | None:
        sets = [
            "#t = :target",
            "device_id = :device",
            "last_seen = :now",
            "registered_at = :now",
            "#s = :idle",
            "credential_hash = :cred",
        ]
        values: dict[str, Any] = {
            "target": target.value,
            "device": device_id,
            "now": now,
            "idle": AgentStatus.IDLE.value,
            "cred": credential_hash,
            "fleet": fleet_hash or "",
        }
        removed = ["session_id"]  # the clear-text session of older registrations
        for name, value in (("lab_org_id", lab_org_id), ("fleet_hash", fleet_hash)):
            if value:
                sets.append(f"{name} = :{name}")
                values[name] = value
            else:
                removed.append(name)
        # What the device holds is what the agent says now: after a restart with nothing
        # to report, the next batch installs again rather than trust a wiped device.
        if installed is not None:
            sets += ["installed_org = :iorg", "installed_app = :iapp"]
            values.update(iorg=installed.org_id, iapp=installed.app_version_id)
        else:
            removed += ["installed_org", "installed_app"]
        # Only the fleet token that registered an agent id may register it again.
        same_fleet = "(attribute_not_exists(fleet_hash) OR fleet_hash = :fleet)"
        for _ in range(REGISTER_ATTEMPTS):
            item = self._update(
                self._agents,
                {"agent_id": agent_id},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE " + ", ".join(removed),
                ConditionExpression=f"attribute_not_exists(batch_id) AND {same_fleet}",
                ExpressionAttributeNames={"#t": "target", "#s": "status"},
                ExpressionAttributeValues=_values(**values),
            )
            if item is None:
                # It still holds a batch: it restarted mid-batch and will resume it.
                item = self._update(
                    self._agents,
                    {"agent_id": agent_id},
                    UpdateExpression=(
                        "SET last_seen = :now, #s = :busy, credential_hash = :cred "
                        "REMOVE session_id"
                    ),
                    ConditionExpression=f"attribute_exists(batch_id) AND {same_fleet}",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues=_values(
                        now=now,
                        busy=AgentStatus.BUSY.value,
                        cred=credential_hash,
                        fleet=fleet_hash or "",
                    ),
                )
            if item is not None:
                return agent_from_item(item)
            holder = self.get_agent(agent_id)
            if holder is not None and holder.fleet_hash not in (None, fleet_hash):
                return None
            # Otherwise its batch came or went between the two writes: try again.
        raise RuntimeError(f"agent {agent_id}: registration kept racing with its batch")

    def touch_agent(self, agent_id: str, now: float, credential_hash: str) -> Agent | None:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET last_seen = :now",
            ConditionExpression="#s <> :offline AND credential_hash = :cred",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(
                now=now, offline=AgentStatus.OFFLINE.value, cred=credential_hash
            ),
        )
        return agent_from_item(item) if item else None

    def list_agents(self, target: Target) -> list[Agent]:
        items = self._query(
            TableName=self._agents,
            IndexName=TARGET_INDEX,
            KeyConditionExpression="#t = :target",
            ExpressionAttributeNames={"#t": "target"},
            ExpressionAttributeValues=_values(target=target.value),
        )
        return [agent_from_item(item) for item in items]

    def list_all_agents(self) -> list[Agent]:
        return [agent_from_item(item) for item in self._scan(TableName=self._agents)]

    def record_install(self, agent_id: str, batch_id: str, app: AppRef, now: float) -> bool:
        agent = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET installed_org = :org, installed_app = :app, last_seen = :now",
            ConditionExpression="batch_id = :b",
            ExpressionAttributeValues=_values(
                org=app.org_id, app=app.app_version_id, now=now, b=batch_id
            ),
        )
        if agent is None:
            return False
        self._update(
            self._batches,
            {"batch_id": batch_id},
            UpdateExpression="SET installed_at = if_not_exists(installed_at, :now)",
            ConditionExpression="agent_id = :a",
            ExpressionAttributeValues=_values(now=now, a=agent_id),
        )
        return True

    def release_agent(self, agent_id: str, batch_id: str, *, offline: bool, now: float) -> bool:
        status = AgentStatus.OFFLINE if offline else AgentStatus.IDLE
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression=(
                "SET #s = :status, updated_at = :now "
                "REMOVE batch_id, batch_group, batch_expected_free_at"
            ),
            ConditionExpression="batch_id = :b",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(status=status.value, now=now, b=batch_id),
        )
        return item is not None

    def mark_agent_offline(self, agent_id: str, silent_since: float, now: float) -> bool:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET #s = :offline, updated_at = :now",
            ConditionExpression=(
                "#s = :idle AND last_seen < :cutoff AND attribute_not_exists(batch_id)"
            ),
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(
                offline=AgentStatus.OFFLINE.value,
                idle=AgentStatus.IDLE.value,
                cutoff=silent_since,
                now=now,
            ),
        )
        return item is not None

    def deregister_agent(self, agent_id: str, now: float) -> bool:
        item = self._update(
            self._agents,
            {"agent_id": agent_id},
            UpdateExpression="SET #s = :offline, updated_at = :now",
            ConditionExpression="attribute_exists(agent_id) AND attribute_not_exists(batch_id)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(offline=AgentStatus.OFFLINE.value, now=now),
        )
        return item is not None

    # ------------------------------------------------------------ batches
    def commit_batch(self, batch: Batch, now: float) -> bool:
        if len(batch.job_ids) + 2 > TRANSACTION_LIMIT:
            raise ValueError(f"a batch holds at most {TRANSACTION_LIMIT - 2} jobs")
        agent_values: dict[str, Any] = {
            "busy": AgentStatus.BUSY.value,
            "idle": AgentStatus.IDLE.value,
            "b": batch.batch_id,
            "g": batch.group_key,
            "now": now,
        }
        if batch.expected_end_at is None:
            free_at = " REMOVE batch_expected_free_at"
        else:
            free_at = ", batch_expected_free_at = :free"
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
                    "ConditionExpression": "#s = :idle AND attribute_not_exists(batch_id)",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": _values(**agent_values),
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
        for job_id in batch.job_ids:
            items.append(
                {
                    "Update": {
                        "TableName": self._jobs,
                        "Key": serialize({"job_id": job_id}),
                        "UpdateExpression": (
                            "SET #s = :assigned, batch_id = :b, agent_id = :a, updated_at = :now "
                            "REMOVE backlog_target, backlog_key"
                        ),
                        "ConditionExpression": "#s = :queued AND attribute_exists(backlog_target)",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": _values(
                            assigned=JobStatus.ASSIGNED.value,
                            queued=JobStatus.QUEUED.value,
                            b=batch.batch_id,
                            a=batch.agent_id,
                            now=now,
                        ),
                    }
                }
            )
        try:
            self._db.transact_write_items(TransactItems=items)
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

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
            ExpressionAttributeValues=_values(
                until=until, active=BatchState.ACTIVE.value, a=agent_id
            ),
        )
        if item is not None:
            return True
        # Not extended: fine if it is still ours and active (a longer lease already stands).
        current = self.get_batch(batch_id)
        return bool(current and current.state is BatchState.ACTIVE and current.agent_id == agent_id)

    def lapsed_batches(self, now: float) -> list[Batch]:
        items = self._query(
            TableName=self._batches,
            IndexName=LEASE_INDEX,
            KeyConditionExpression="lease_shard = :shard AND lease_expires_at < :now",
            ExpressionAttributeValues=_values(shard=ACTIVE_LEASE_SHARD, now=now),
        )
        return [batch_from_item(item) for item in items]

    def active_batches(self) -> list[Batch]:
        items = self._query(
            TableName=self._batches,
            IndexName=LEASE_INDEX,
            KeyConditionExpression="lease_shard = :shard",
            ExpressionAttributeValues=_values(shard=ACTIVE_LEASE_SHARD),
        )
        return [b for b in map(batch_from_item, items) if b.state is BatchState.ACTIVE]

    def time_out_job(self, job: Job, now: float) -> Job | None:
        if job.batch_id is None or job.started_at is None:
            return None
        item = self._update(
            self._jobs,
            {"job_id": job.job_id},
            UpdateExpression=(
                "SET #s = :timed_out, finished_at = :now, updated_at = :now, message = :msg"
            ),
            ConditionExpression="#s = :running AND batch_id = :b AND started_at = :started",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(
                timed_out=JobStatus.TIMED_OUT.value,
                running=JobStatus.RUNNING.value,
                b=job.batch_id,
                started=job.started_at,
                now=now,
                msg=f"no result within timeout_s={job.timeout_s}",
            ),
        )
        return job_from_item(item) if item else None

    def expire_batch(self, batch_id: str, now: float) -> bool:
        item = self._update(
            self._batches,
            {"batch_id": batch_id},
            UpdateExpression="SET #st = :expired",
            ConditionExpression="#st = :active AND lease_expires_at < :now",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues=_values(
                expired=BatchState.EXPIRED.value, active=BatchState.ACTIVE.value, now=now
            ),
        )
        return item is not None

    def close_batch(self, batch: Batch, now: float) -> bool:
        final = BatchState.DONE if batch.state is BatchState.ACTIVE else BatchState.EXPIRED
        item = self._update(
            self._batches,
            {"batch_id": batch.batch_id},
            UpdateExpression="SET #st = :final, finished_at = :now REMOVE lease_shard",
            ConditionExpression="#st = :current AND attribute_exists(lease_shard)",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues=_values(
                final=final.value, current=batch.state.value, now=now
            ),
        )
        return item is not None

    # ------------------------------------------------------------ metrics
    def org_metrics(self, org_id: str) -> OrgMetrics:
        statuses: Counter[str] = Counter()
        for item in self._scan(
            TableName=self._jobs,
            FilterExpression="org_id = :org",
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_values(org=org_id),
        ):
            statuses[item["status"]] += 1
        batches = list(
            self._query(
                TableName=self._batches,
                IndexName=ORG_INDEX,
                KeyConditionExpression="org_id = :org",
                ExpressionAttributeValues=_values(org=org_id),
            )
        )
        installs = sum(1 for b in batches if b.get("installed_at") is not None)
        pairs = {(b["agent_id"], b["app_version_id"], b["target"]) for b in batches}
        return OrgMetrics(dict(statuses), len(batches), installs, len(pairs))


class DynamoTokenStore:
    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def put(self, record: TokenRecord) -> bool:
        try:
            self._db.put_item(
                TableName=self._table,
                Item=serialize(
                    {
                        "token_hash": record.token_hash,
                        "kind": record.kind,
                        "org_id": record.org_id,
                        "created_at": record.created_at,
                        "label": record.label,
                        "target": record.target,
                    }
                ),
                ConditionExpression="attribute_not_exists(token_hash)",
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def get(self, token_hash: str) -> TokenRecord | None:
        response = self._db.get_item(
            TableName=self._table, Key=serialize({"token_hash": token_hash})
        )
        raw = response.get("Item")
        if not raw:
            return None
        item = deserialize(raw)
        return TokenRecord(
            token_hash=item["token_hash"],
            kind=item["kind"],
            org_id=item.get("org_id"),
            created_at=float(item["created_at"]),
            label=item.get("label"),
            target=item.get("target"),
        )


# ------------------------------------------------------------------ estimates
ESTIMATE_KEY = "estimate_key"
ESTIMATE_UPDATE_ATTEMPTS = 4
BATCH_GET_LIMIT = 100


def estimate_key_of_test(key: EstimateKey) -> str:
    return f"test/{key.target.value}/{key.org_id}/{key.test_path}"


def estimate_key_of_install(target: Target) -> str:
    return f"install/{target.value}"


def estimate_from_item(item: Item) -> DurationEstimate:
    return DurationEstimate(
        mean_s=float(item.get("mean_s", 0.0)),
        var_s2=float(item.get("var_s2", 0.0)),
        samples=int(item.get("samples", 0)),
        recent_ids=tuple(item.get("recent_ids", ())),
    )


class DynamoEstimateStore:
    """EstimateStore over the Estimates table (see template.yaml).

    One item per estimate, keyed by ``estimate_key``:

    * ``test/<target>/<org_id>/<test_path>``: one org's test on one target. Neither the org
      id nor the target can contain ``/``, so the key is unambiguous; the planner reads many
      with one BatchGetItem.
    * ``install/<target>``: app installs on a target.

    An update reads the item (strongly consistent), adds the sample with the pure
    ``DurationEstimate.updated`` and writes it back on the condition that ``samples`` still
    holds the value read (or that the item still does not exist): optimistic concurrency,
    retried a few times. The item keeps the ids of its last samples, so a replayed report,
    or a retry of a write whose response was lost, is not counted twice.
    """

    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    # --------------------------------------------------------------- reads
    def _batch_get(self, keys: Sequence[str]) -> dict[str, DurationEstimate]:
        found: dict[str, DurationEstimate] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            chunk = [serialize({ESTIMATE_KEY: k}) for k in unique[start : start + BATCH_GET_LIMIT]]
            request: dict[str, Any] = {self._table: {"Keys": chunk}}
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                for raw in response.get("Responses", {}).get(self._table, []):
                    item = deserialize(raw)
                    found[item[ESTIMATE_KEY]] = estimate_from_item(item)
                request = response.get("UnprocessedKeys") or {}
        return found

    def test_estimates(self, keys: Sequence[EstimateKey]) -> dict[EstimateKey, DurationEstimate]:
        by_key = {estimate_key_of_test(k): k for k in keys}
        found = self._batch_get(list(by_key))
        return {by_key[k]: estimate for k, estimate in found.items()}

    def install_estimates(self, targets: Sequence[Target]) -> dict[Target, DurationEstimate]:
        by_key = {estimate_key_of_install(t): t for t in targets}
        found = self._batch_get(list(by_key))
        return {by_key[k]: estimate for k, estimate in found.items()}

    # -------------------------------------------------------------- writes
    def record_test_duration(
        self, key: EstimateKey, sample_id: str, duration_s: float, now: float
    ) -> bool:
        attributes = {
            "kind": "test",
            "org_id": key.org_id,
            "target": key.target.value,
            "test_path": key.test_path,
        }
        return self._record(estimate_key_of_test(key), attributes, sample_id, duration_s, now)

    def record_install_duration(
        self, target: Target, sample_id: str, duration_s: float, now: float
    ) -> bool:
        attributes = {"kind": "install", "target": target.value}
        return self._record(estimate_key_of_install(target), attributes, sample_id, duration_s, now)

    def _record(
        self, key: str, attributes: Item, sample_id: str, duration_s: float, now: float
    ) -> bool:
        for _ in range(ESTIMATE_UPDATE_ATTEMPTS):
            response = self._db.get_item(
                TableName=self._table, Key=serialize({ESTIMATE_KEY: key}), ConsistentRead=True
            )
            raw = response.get("Item")
            current = estimate_from_item(deserialize(raw)) if raw else None
            before = current or DurationEstimate()
            after = before.updated(duration_s, sample_id)
            if after is before:
                return False  # already counted, or not a usable sample
            item: Item = {
                ESTIMATE_KEY: key,
                **attributes,
                "mean_s": after.mean_s,
                "var_s2": after.var_s2,
                "samples": after.samples,
                "estimate_s": after.estimate_s,
                "recent_ids": list(after.recent_ids),
                "updated_at": now,
            }
            condition: dict[str, Any]
            if current is None:
                condition = {"ConditionExpression": f"attribute_not_exists({ESTIMATE_KEY})"}
            else:
                condition = {
                    "ConditionExpression": "samples = :seen",
                    "ExpressionAttributeValues": _values(seen=current.samples),
                }
            try:
                self._db.put_item(TableName=self._table, Item=serialize(item), **condition)
            except ClientError as error:
                if _is_condition_failure(error):
                    continue  # someone else wrote in between: read again
                raise
            return True
        raise EstimateConflict(
            f"estimate {key}: still changing after {ESTIMATE_UPDATE_ATTEMPTS} attempts"
        )
