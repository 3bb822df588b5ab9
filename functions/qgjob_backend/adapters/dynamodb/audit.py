"""The vault's AuditStore over the audit table: one item per (job_id, attempt).

Keyed by job id (random ids: the items spread over partitions) and attempt; a job's
records are one Query of its partition (a job has at most 1 + retries attempts).
Written once, with a conditional put, and never updated.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import (
    deserialize,
    expression_values,
    is_condition_failure,
    serialize,
)
from qgjob_backend.domain.vault import MAX_ATTEMPT, AuditRecord, Outcome


def audit_to_item(record: AuditRecord) -> dict[str, Any]:
    return record.to_dict()


def audit_from_item(item: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        job_id=item["job_id"],
        attempt=int(item["attempt"]),
        org_id=item["org_id"],
        session_id=item["session_id"],
        outcome=Outcome(item["outcome"]),
        http_status=None if item.get("http_status") is None else int(item["http_status"]),
        source=item["source"],
        fetched_at=float(item["fetched_at"]),
        recorded_at=float(item["recorded_at"]),
        s3_key=item.get("s3_key"),
        sha256=item.get("sha256"),
        size=None if item.get("size") is None else int(item["size"]),
        detail=item.get("detail"),
    )


class DynamoAuditStore:
    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def put(self, record: AuditRecord) -> bool:
        try:
            self._db.put_item(
                TableName=self._table,
                Item=serialize(audit_to_item(record)),
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def get(self, job_id: str, attempt: int) -> AuditRecord | None:
        response = self._db.get_item(
            TableName=self._table,
            Key=serialize({"job_id": job_id, "attempt": attempt}),
            ConsistentRead=True,
        )
        raw = response.get("Item")
        return audit_from_item(deserialize(raw)) if raw else None

    def for_job(self, job_id: str) -> list[AuditRecord]:
        response = self._db.query(
            TableName=self._table,
            KeyConditionExpression="job_id = :j",
            ExpressionAttributeValues=expression_values(j=job_id),
            Limit=MAX_ATTEMPT,
        )
        return [audit_from_item(deserialize(item)) for item in response.get("Items", [])]
