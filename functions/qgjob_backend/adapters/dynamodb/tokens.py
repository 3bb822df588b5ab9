"""The TokenStore port over the tokens table (only token hashes are stored)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import (
    Item,
    deserialize,
    expression_values,
    is_condition_failure,
    serialize,
)
from qgjob_backend.ports import TokenRecord


def token_from_item(item: Item) -> TokenRecord:
    revoked_at = item.get("revoked_at")
    return TokenRecord(
        token_hash=item["token_hash"],
        kind=item["kind"],
        org_id=item.get("org_id"),
        created_at=float(item["created_at"]),
        label=item.get("label"),
        target=item.get("target"),
        revoked_at=None if revoked_at is None else float(revoked_at),
        replaced_by=item.get("replaced_by"),
    )


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
            if is_condition_failure(error):
                return False
            raise
        return True

    def get(self, token_hash: str) -> TokenRecord | None:
        response = self._db.get_item(
            TableName=self._table, Key=serialize({"token_hash": token_hash})
        )
        raw = response.get("Item")
        return token_from_item(deserialize(raw)) if raw else None

    def revoke(
        self, token_hash: str, now: float, replaced_by: str | None = None
    ) -> TokenRecord | None:
        sets = "revoked_at = :now" + (", replaced_by = :by" if replaced_by else "")
        values = {"now": now, **({"by": replaced_by} if replaced_by else {})}
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key=serialize({"token_hash": token_hash}),
                UpdateExpression=f"SET {sets}",
                # Revoking twice keeps the first time: the record says when access ended.
                ConditionExpression="attribute_exists(token_hash) AND attribute_not_exists("
                "revoked_at)",
                ExpressionAttributeValues=expression_values(**values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if is_condition_failure(error):
                return None
            raise
        return token_from_item(deserialize(response["Attributes"]))
