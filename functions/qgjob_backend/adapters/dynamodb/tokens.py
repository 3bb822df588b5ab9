"""The TokenStore port over the tokens table (only token hashes are stored)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import deserialize, is_condition_failure, serialize
from qgjob_backend.ports import TokenRecord


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
