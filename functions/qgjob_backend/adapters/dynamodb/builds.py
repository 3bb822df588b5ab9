"""The BuildStore port over the builds table: one item per (org, app version).

Keyed by org (partition) and app version (sort key): a read never crosses orgs, and a
list is one query of one org's partition, a page at a time. Every write is conditional
on the version the writer read (optimistic concurrency), so two uploads racing for one
app version cannot both win.
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
from qgjob_backend.domain.builds import Build, BuildFile
from qgjob_backend.ports import BuildPage


def _file_to_item(file: BuildFile | None) -> Item | None:
    if file is None:
        return None
    return {"sha256": file.sha256, "size": file.size, "file_name": file.file_name, "key": file.key}


def _file_from_item(raw: Any) -> BuildFile | None:
    if not isinstance(raw, dict):
        return None
    return BuildFile(
        sha256=str(raw["sha256"]),
        size=int(raw["size"]),
        file_name=str(raw["file_name"]),
        key=str(raw["key"]),
    )


def build_to_item(build: Build) -> Item:
    return {
        "org_id": build.org_id,
        "app_version_id": build.app_version_id,
        "created_at": build.created_at,
        "updated_at": build.updated_at,
        "version": build.version,
        "ready": _file_to_item(build.ready),
        "pending": _file_to_item(build.pending),
        "uploaded_at": build.uploaded_at,
        "replaced": build.replaced,
    }


def build_from_item(item: Item) -> Build:
    uploaded_at = item.get("uploaded_at")
    return Build(
        org_id=item["org_id"],
        app_version_id=item["app_version_id"],
        created_at=float(item["created_at"]),
        updated_at=float(item["updated_at"]),
        version=int(item["version"]),
        ready=_file_from_item(item.get("ready")),
        pending=_file_from_item(item.get("pending")),
        uploaded_at=None if uploaded_at is None else float(uploaded_at),
        replaced=int(item.get("replaced", 0)),
    )


class DynamoBuildStore:
    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def get_build(self, org_id: str, app_version_id: str) -> Build | None:
        response = self._db.get_item(
            TableName=self._table,
            Key=serialize({"org_id": org_id, "app_version_id": app_version_id}),
            ConsistentRead=True,
        )
        raw = response.get("Item")
        return build_from_item(deserialize(raw)) if raw else None

    def save_build(self, build: Build, expected_version: int | None) -> bool:
        if expected_version is None:
            condition: dict[str, Any] = {
                "ConditionExpression": "attribute_not_exists(org_id)",
            }
        else:
            condition = {
                "ConditionExpression": "#v = :expected",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": expression_values(expected=expected_version),
            }
        try:
            self._db.put_item(
                TableName=self._table, Item=serialize(build_to_item(build)), **condition
            )
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def list_builds(self, org_id: str, after: str | None, limit: int) -> BuildPage:
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "org_id = :org",
            "ExpressionAttributeValues": expression_values(org=org_id),
            # One more than asked: whether a next page exists, without a second query.
            "Limit": limit + 1,
            "ConsistentRead": True,
        }
        if after is not None:
            request["ExclusiveStartKey"] = serialize({"org_id": org_id, "app_version_id": after})
        response = self._db.query(**request)
        builds = [build_from_item(deserialize(raw)) for raw in response.get("Items", [])]
        return BuildPage(builds[:limit], more=len(builds) > limit)
