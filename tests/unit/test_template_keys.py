"""No GSI partition key is a constant, and no Scan is left in functions/ (issue 9, item 4).

Every GSI of the expanded template either keys on an attribute that names one item or one
run (``UNIQUE_KEYS``), or is listed in ``shards.SHARDS`` with its partition attribute; the
adapter's item builders then write many distinct values of that attribute for many items.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from qgjob_backend.adapters.dynamodb.agents import idle_shard, target_shard
from qgjob_backend.adapters.dynamodb.batches import batch_to_item
from qgjob_backend.adapters.dynamodb.jobs import backlog_shard, job_to_item
from qgjob_backend.adapters.dynamodb.shards import SHARDS, all_shard_keys, shard_key
from qgjob_backend.domain.models import Batch, BatchState, Job, group_key_for
from qgjob_backend.schema import JobStatus, Target
from tests.unit.sam_template import expanded_template

# Partition keys whose values are item or run ids: as many partitions as items.
UNIQUE_KEYS = {"connection-index": "connection_id"}
FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"


def _gsis() -> list[tuple[str, str, str]]:
    found = []
    for logical_id, resource in expanded_template()["Resources"].items():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        for index in resource["Properties"].get("GlobalSecondaryIndexes", []):
            hash_key = next(
                k["AttributeName"] for k in index["KeySchema"] if k["KeyType"] == "HASH"
            )
            found.append((logical_id, index["IndexName"], hash_key))
    return found


def test_every_gsi_partition_key_is_sharded_or_an_id() -> None:
    gsis = _gsis()
    assert len(gsis) >= 7
    for table, name, hash_key in gsis:
        if name in UNIQUE_KEYS:
            assert hash_key == UNIQUE_KEYS[name], (table, name)
            continue
        assert name in SHARDS, f"{table} {name}: partition key {hash_key} is not sharded"
        attribute, shards = SHARDS[name]
        assert hash_key == attribute, (table, name)
        assert shards > 1


@pytest.mark.parametrize("index", sorted(SHARDS))
def test_the_shard_helpers_spread_many_ids_over_every_shard(index: str) -> None:
    values = {shard_key(index, "p", f"id-{n}") for n in range(500)}
    assert values == set(all_shard_keys(index, "p"))
    assert len(values) == SHARDS[index][1] > 1


def _job(n: int) -> Job:
    return Job(
        job_id=f"job-{n}",
        run_id="run-1",
        org_id="acme",
        app_version_id="v1",
        target=Target.EMULATOR,
        test_path="t.spec.js",
        priority=5,
        status=JobStatus.QUEUED,
        created_at=1.0,
        updated_at=1.0,
        timeout_s=60,
        max_attempts=3,
    )


def _batch(n: int) -> Batch:
    return Batch(
        batch_id=f"batch-{n}",
        agent_id="a",
        group_key=group_key_for("acme", "v1", Target.EMULATOR),
        org_id="acme",
        app_version_id="v1",
        target=Target.EMULATOR,
        job_ids=["j"],
        state=BatchState.ACTIVE,
        created_at=1.0,
        lease_expires_at=2.0,
        install_required=False,
    )


def _distinct(values: Any) -> int:
    return len(set(values))


def test_the_writers_put_many_items_of_one_target_on_many_partitions() -> None:
    ids = range(200)
    assert _distinct(job_to_item(_job(n))["unadmitted_shard"] for n in ids) > 1
    assert _distinct(backlog_shard(_job(n)) for n in ids) > 1
    assert _distinct(batch_to_item(_batch(n))["lease_shard"] for n in ids) > 1
    assert _distinct(target_shard(Target.EMULATOR, f"a-{n}") for n in ids) > 1
    assert _distinct(idle_shard(f"a-{n}") for n in ids) > 1


def test_no_scan_in_functions() -> None:
    calls = [
        f"{path.relative_to(FUNCTIONS)}:{n}"
        for path in FUNCTIONS.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"scan\(|[\"']scan[\"']|Scan\b", line)
    ]
    assert calls == []
