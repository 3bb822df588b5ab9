"""The OrgSettingsStore port: one item per org in the runs table, ``settings#<org_id>``.

The runs table already holds other kinds under prefixed keys (``org#``, ``pair#``,
``pool#``); a run id never contains ``#`` and an org id cannot (``schema.ID_PATTERN``),
so no key collides, and ``kind`` keeps the item out of ``run_from_item``. A submission
reads its org's item (one eventually consistent GetItem, half a read unit); an operator
writes it, rarely. Each org has its own partition key, so no key is hot, no index holds
it and nothing scans for it. It carries no ``expires_at``: a setting lasts until changed.
"""

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
from qgjob_backend.ports import OrgSettings
from qgjob_backend.schema import Target

ORG_SETTINGS_KIND = "org_settings"


def org_settings_key(org_id: str) -> str:
    return f"settings#{org_id}"


def org_settings_item(settings: OrgSettings) -> Item:
    return {
        "run_id": org_settings_key(settings.org_id),
        "kind": ORG_SETTINGS_KIND,
        "org_id": settings.org_id,
        "overflow": settings.overflow.value if settings.overflow else None,
        "updated_at": settings.updated_at,
        "version": settings.version,
    }


def org_settings_from_item(item: Item) -> OrgSettings:
    updated_at = item.get("updated_at")
    return OrgSettings(
        org_id=str(item["org_id"]),
        overflow=Target(item["overflow"]) if item.get("overflow") else None,
        updated_at=None if updated_at is None else float(updated_at),
        version=int(item["version"]),
    )


class DynamoOrgSettingsStore:
    def __init__(self, client: Any, runs_table: str) -> None:
        self._db = client
        self._table = runs_table

    def get(self, org_id: str, *, consistent: bool = True) -> OrgSettings | None:
        response = self._db.get_item(
            TableName=self._table,
            Key=serialize({"run_id": org_settings_key(org_id)}),
            ConsistentRead=consistent,
        )
        raw = response.get("Item")
        if not raw:
            return None
        item = deserialize(raw)
        if item.get("kind") != ORG_SETTINGS_KIND:
            return None
        return org_settings_from_item(item)

    def put(self, settings: OrgSettings, expected_version: int | None) -> bool:
        if expected_version is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(run_id)"}
        else:
            # The kind too: a write never replaces an item of another kind under that key.
            condition = {
                "ConditionExpression": "#k = :kind AND #v = :expected",
                "ExpressionAttributeNames": {"#k": "kind", "#v": "version"},
                "ExpressionAttributeValues": expression_values(
                    kind=ORG_SETTINGS_KIND, expected=expected_version
                ),
            }
        try:
            self._db.put_item(
                TableName=self._table, Item=serialize(org_settings_item(settings)), **condition
            )
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True
