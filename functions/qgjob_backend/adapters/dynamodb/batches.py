"""Batches: the atomic assignment of jobs to an agent, leases, timeouts, and org metrics."""

from __future__ import annotations

from collections import Counter
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import (
    TRANSACTION_LIMIT,
    Item,
    expression_values,
    is_condition_failure,
    optional_float,
    serialize,
)
from qgjob_backend.adapters.dynamodb.jobs import job_from_item
from qgjob_backend.adapters.dynamodb.table import DynamoTables
from qgjob_backend.domain.models import AgentStatus, Batch, BatchState, Job
from qgjob_backend.ports import OrgMetrics
from qgjob_backend.schema import JobStatus, Target

LEASE_INDEX = "lease-index"
ORG_INDEX = "org-index"
ACTIVE_LEASE_SHARD = "active"


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
        expected_end_at=optional_float(item.get("expected_end_at")),
    )


class BatchStore(DynamoTables):
    """The batches table, and the transactions that span it, the jobs and the agents."""

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
                        "ExpressionAttributeValues": expression_values(
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
            if is_condition_failure(error):
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
        items = self._query(
            TableName=self._batches,
            IndexName=LEASE_INDEX,
            KeyConditionExpression="lease_shard = :shard AND lease_expires_at < :now",
            ExpressionAttributeValues=expression_values(shard=ACTIVE_LEASE_SHARD, now=now),
        )
        return [batch_from_item(item) for item in items]

    def active_batches(self) -> list[Batch]:
        items = self._query(
            TableName=self._batches,
            IndexName=LEASE_INDEX,
            KeyConditionExpression="lease_shard = :shard",
            ExpressionAttributeValues=expression_values(shard=ACTIVE_LEASE_SHARD),
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
            ExpressionAttributeValues=expression_values(
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
            UpdateExpression="SET #st = :final, finished_at = :now REMOVE lease_shard",
            ConditionExpression="#st = :current AND attribute_exists(lease_shard)",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues=expression_values(
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
            ExpressionAttributeValues=expression_values(org=org_id),
        ):
            statuses[item["status"]] += 1
        batches = list(
            self._query(
                TableName=self._batches,
                IndexName=ORG_INDEX,
                KeyConditionExpression="org_id = :org",
                ExpressionAttributeValues=expression_values(org=org_id),
            )
        )
        installs = sum(1 for b in batches if b.get("installed_at") is not None)
        pairs = {(b["agent_id"], b["app_version_id"], b["target"]) for b in batches}
        return OrgMetrics(dict(statuses), len(batches), installs, len(pairs))
