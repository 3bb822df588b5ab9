"""The EstimateStore port over the estimates table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import (
    Item,
    deserialize,
    expression_values,
    is_condition_failure,
    serialize,
)
from qgjob_backend.domain.estimates import DurationEstimate, EstimateKey
from qgjob_backend.ports import EstimateConflict
from qgjob_backend.schema import Target

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
                    "ExpressionAttributeValues": expression_values(seen=current.samples),
                }
            try:
                self._db.put_item(TableName=self._table, Item=serialize(item), **condition)
            except ClientError as error:
                if is_condition_failure(error):
                    continue  # someone else wrote in between: read again
                raise
            return True
        raise EstimateConflict(
            f"estimate {key}: still changing after {ESTIMATE_UPDATE_ATTEMPTS} attempts"
        )
