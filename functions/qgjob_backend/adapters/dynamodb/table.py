"""The base of the state store: its tables and conditional read/write helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import Item, deserialize, is_condition_failure, serialize


class DynamoTables:
    """The state tables and the read/write helpers every aggregate's store uses."""

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
            if is_condition_failure(error):
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
            if is_condition_failure(error):
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
