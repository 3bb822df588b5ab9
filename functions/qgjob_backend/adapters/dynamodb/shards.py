"""Sharded partition keys of the sparse GSIs: no index partition is a constant.

Each index that would otherwise gather its items under one value (a target, "pending",
"active") spreads them over ``SHARDS[index]`` partitions, ``f"{prefix}#{n}"`` with
``n = crc32(item id) % shards``. The shard of an item is a pure function of its id, so
every writer sets the same key, and a reader queries every shard (a bounded, constant
number of queries) and merges them in sort-key order.

Why 8: one GSI partition takes about 1,000 writes/s; a 1,000-test submit or a fleet of a
few hundred agents puts bursts of a few thousand writes/s on one index, which 8 spread
below that, while a reader pays 8 small queries (a plan reads 3 targets x 8 backlog
shards; the reaper a few x 8 per sweep). More shards would only add empty queries.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from zlib import crc32

T = TypeVar("T")

BACKLOG_INDEX = "backlog-index"
UNADMITTED_INDEX = "unadmitted-index"
LEASE_INDEX = "lease-index"
TARGET_INDEX = "target-index"
IDLE_INDEX = "idle-index"
TIMEOUT_INDEX = "timeout-index"

# index -> (partition key attribute, number of shards). tests/unit/test_template_keys.py
# checks that every GSI of template.yaml either is listed here or has a key that is an
# item's own id (run_id, connection_id).
SHARDS: dict[str, tuple[str, int]] = {
    BACKLOG_INDEX: ("backlog_target", 8),
    UNADMITTED_INDEX: ("unadmitted_shard", 8),
    LEASE_INDEX: ("lease_shard", 8),
    TARGET_INDEX: ("target_shard", 8),
    IDLE_INDEX: ("idle_shard", 8),
    TIMEOUT_INDEX: ("timeout_shard", 8),
}


def shard_count(index: str) -> int:
    return SHARDS[index][1]


def shard_key(index: str, prefix: str, item_id: str) -> str:
    """The partition key value of an item (id ``item_id``) in ``index``."""
    return f"{prefix}#{crc32(item_id.encode()) % shard_count(index)}"


def all_shard_keys(index: str, prefix: str) -> list[str]:
    """Every partition key value of ``prefix`` in ``index``: what a reader queries."""
    return [f"{prefix}#{n}" for n in range(shard_count(index))]


def merged(
    streams: Iterable[Iterator[T]], key: Callable[[T], Any], limit: int | None = None
) -> list[T]:
    """The shards' streams (each in sort-key order) merged in that order, cut at ``limit``.

    Lazy: a shard's next page is read only while its items can still make the cut.
    """
    merged_stream = heapq.merge(*streams, key=key)
    if limit is not None:
        return list(itertools.islice(merged_stream, limit))
    return list(merged_stream)
