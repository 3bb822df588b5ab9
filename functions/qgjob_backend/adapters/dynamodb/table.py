"""The base of the state store: its tables and conditional read/write helpers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import Item, deserialize, is_condition_failure, serialize

# Finished jobs, runs and closed batches carry expires_at (epoch seconds): DynamoDB's TTL
# deletes them this long after they finished. Nothing correct rests on it (emulators never
# expire items); org metrics shards and tokens never carry it.
DEFAULT_RETENTION_SECONDS = 30 * 86400.0


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
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self._db = client
        self._retention = retention_seconds
        self._jobs = jobs_table
        self._runs = runs_table
        self._agents = agents_table
        self._batches = batches_table

    # ------------------------------------------------------------ helpers
    def _expires_at(self, now: float) -> int:
        """The TTL of an item finished at ``now``."""
        return int(now + self._retention)

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

    def _get_items(self, table: str, key_name: str, ids: Sequence[str]) -> list[Item]:
        """The items of ``ids`` (strongly consistent batch reads, 100 keys each), in the
        order of ``ids``; missing ones left out."""
        found: dict[str, Item] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 100):
            keys = [serialize({key_name: i}) for i in unique[start : start + 100]]
            request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                for raw in response.get("Responses", {}).get(table, []):
                    item = deserialize(raw)
                    found[item[key_name]] = item
                request = response.get("UnprocessedKeys") or {}
        return [found[i] for i in unique if i in found]

    def _query(self, **kwargs: Any) -> Iterator[Item]:
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(**kwargs):
            for raw in page.get("Items", []):
                yield deserialize(raw)
