"""The PoolSnapshotStore port: one item per pool in the runs table, ``pool#<target>``.

The runs table already holds other kinds under prefixed keys (``org#``, ``pair#``); a
run id never contains ``#``, and ``kind`` keeps the item out of ``run_from_item``. Three
items in all, each read by run polls (eventually consistent, half a unit each) and written
at most every few seconds by the dispatcher: far below one partition's limits (3,000
reads and 1,000 writes a second), and no index, so no GSI key at all.

The item stays within one write unit (1 KB): the snapshot is one compact JSON string,
its times whole seconds relative to ``taken_at``. ``taken_at`` is its own attribute, the
condition of the write; ``expires_at`` lets a pool that went quiet expire (TTL).
"""

from __future__ import annotations

import json
import math
from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.adapters.dynamodb.codec import (
    deserialize,
    expression_values,
    is_condition_failure,
    serialize,
)
from qgjob_backend.domain.queue import PoolSnapshot, RunPlace
from qgjob_backend.schema import Target

SNAPSHOT_KIND = "pool_snapshot"
SNAPSHOT_FORMAT = 1
# A snapshot nobody replaced for this long is gone (the pool has had no backlog).
SNAPSHOT_TTL_S = 86_400


def snapshot_key(target: Target) -> str:
    return f"pool#{target.value}"


def _offset(value: float | None, base: float) -> int | None:
    return None if value is None else math.ceil(value - base)


def _at(offset: Any, base: float) -> float | None:
    return None if offset is None else base + float(offset)


def encode(snapshot: PoolSnapshot) -> str:
    base = snapshot.taken_at
    body = {
        "v": SNAPSHOT_FORMAT,
        "q": snapshot.queued,
        "t": int(snapshot.truncated),
        "p": {str(p): [n, round(s)] for p, (n, s) in snapshot.queued_by_priority.items()},
        "a": [snapshot.idle, snapshot.busy, snapshot.offline, snapshot.shared_online],
        "l": list(snapshot.lab_orgs),
        "n": _offset(snapshot.next_free_at, base),
        "d": _offset(snapshot.drain_at, base),
        "r": {
            run_id: [
                place.position,
                place.jobs_ahead,
                _offset(place.start_at, base),
                _offset(place.finish_at, base),
            ]
            for run_id, place in snapshot.runs.items()
        },
        "u": snapshot.unlisted_ahead,
        "g": {group: _offset(at, base) for group, at in snapshot.groups_free_at.items()},
    }
    return json.dumps(body, separators=(",", ":"))


def decode(target: Target, taken_at: float, text: str) -> PoolSnapshot | None:
    """The snapshot, or None for one of another format (a newer writer's)."""
    body = json.loads(text)
    if body.get("v") != SNAPSHOT_FORMAT:
        return None
    idle, busy, offline, shared = (int(n) for n in body["a"])
    return PoolSnapshot(
        target=target,
        taken_at=taken_at,
        queued=int(body["q"]),
        truncated=bool(body["t"]),
        queued_by_priority={int(p): (int(n), float(s)) for p, (n, s) in body["p"].items()},
        idle=idle,
        busy=busy,
        offline=offline,
        shared_online=shared,
        lab_orgs=tuple(str(lab) for lab in body["l"]),
        next_free_at=_at(body["n"], taken_at),
        drain_at=_at(body["d"], taken_at),
        runs={
            str(run_id): RunPlace(int(pos), int(ahead), _at(start, taken_at), _at(end, taken_at))
            for run_id, (pos, ahead, start, end) in body["r"].items()
        },
        unlisted_ahead=int(body["u"]),
        groups_free_at={
            str(group): at
            for group, offset in body["g"].items()
            if (at := _at(offset, taken_at)) is not None
        },
    )


def snapshot_item(snapshot: PoolSnapshot) -> dict[str, Any]:
    return {
        "run_id": snapshot_key(snapshot.target),
        "kind": SNAPSHOT_KIND,
        "taken_at": snapshot.taken_at,
        "expires_at": int(snapshot.taken_at) + SNAPSHOT_TTL_S,
        "snapshot": encode(snapshot),
    }


class DynamoPoolSnapshotStore:
    def __init__(self, client: Any, runs_table: str) -> None:
        self._db = client
        self._table = runs_table

    def put_snapshot(self, snapshot: PoolSnapshot, min_interval_s: float) -> bool:
        try:
            self._db.put_item(
                TableName=self._table,
                Item=serialize(snapshot_item(snapshot)),
                ConditionExpression="attribute_not_exists(taken_at) OR taken_at <= :cutoff",
                ExpressionAttributeValues=expression_values(
                    cutoff=snapshot.taken_at - min_interval_s
                ),
            )
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def get_snapshot(self, target: Target) -> PoolSnapshot | None:
        response = self._db.get_item(
            TableName=self._table,
            Key=serialize({"run_id": snapshot_key(target)}),
            ConsistentRead=False,
        )
        raw = response.get("Item")
        if not raw:
            return None
        item = deserialize(raw)
        if item.get("kind") != SNAPSHOT_KIND:
            return None
        return decode(target, float(item["taken_at"]), str(item["snapshot"]))
