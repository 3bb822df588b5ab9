"""Pools' queue snapshots on DynamoDB (moto): the adapter's round trip, its write
condition and size, and a run poll through the real handler that answers the queue from
the snapshot the dispatcher wrote (two reads of one item each, whatever the backlog)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from qgjob_backend.adapters.dynamodb.snapshots import DynamoPoolSnapshotStore, snapshot_key
from qgjob_backend.config import Config
from qgjob_backend.domain.queue import (
    MAX_SNAPSHOT_GROUPS,
    MAX_SNAPSHOT_LABS,
    MAX_SNAPSHOT_RUNS,
    PoolSnapshot,
    RunPlace,
    group_digest,
    org_digest,
    run_digest,
)
from qgjob_backend.schema import Target
from tests.integration.conftest import AgentCaller, ApiCaller, dispatch_queue
from tests.integration.test_run_polls import DynamoCalls, get, suite
from tests.integration.test_run_polls import dynamo_calls as dynamo_calls  # the fixture

NOW = 1_764_600_000.0


def full_snapshot(taken_at: float = NOW) -> PoolSnapshot:
    """As large as a snapshot gets: every list at its cap, long ids, large numbers."""
    return PoolSnapshot(
        target=Target.DEVICE,
        taken_at=taken_at,
        queued=2000,
        truncated=True,
        queued_by_priority={p: (200, 123_456.7) for p in range(1, 11)},
        idle=1000,
        busy=1000,
        offline=1000,
        shared_online=1000,
        lab_orgs=tuple(org_digest(f"org-{i}" * 10) for i in range(MAX_SNAPSHOT_LABS)),
        next_free_at=taken_at + 12.2,
        drain_at=taken_at + 86_400.5,
        runs={
            run_digest(f"run-{i:020x}"): RunPlace(
                i + 1, 1999 - i, taken_at + 3600 * i, taken_at + 86_000
            )
            for i in range(MAX_SNAPSHOT_RUNS)
        },
        unlisted_ahead=1999,
        groups_free_at={
            group_digest(f"g{i}"): taken_at + 999.1 for i in range(MAX_SNAPSHOT_GROUPS)
        },
    )


@pytest.fixture
def snapshots(aws_session: boto3.Session, config: Config) -> DynamoPoolSnapshotStore:
    return DynamoPoolSnapshotStore(aws_session.client("dynamodb"), config.runs_table)


def test_a_snapshot_comes_back_as_written_to_the_second(
    snapshots: DynamoPoolSnapshotStore,
) -> None:
    written = full_snapshot()
    assert snapshots.put_snapshot(written, 5.0)

    read = snapshots.get_snapshot(Target.DEVICE)

    assert read is not None
    # Times are kept in whole seconds after taken_at (rounded up: never too early).
    assert read.runs == written.runs
    assert (read.next_free_at, read.drain_at) == (NOW + 13, NOW + 86_401)
    assert read.groups_free_at == {g: NOW + 1000 for g in written.groups_free_at}
    assert read.queued_by_priority == {p: (200, 123_457.0) for p in range(1, 11)}
    assert read.lab_orgs == written.lab_orgs
    assert (read.queued, read.truncated, read.idle, read.busy, read.offline) == (
        2000,
        True,
        1000,
        1000,
        1000,
    )
    assert snapshots.get_snapshot(Target.EMULATOR) is None


def test_a_snapshot_is_not_replaced_within_the_interval_nor_by_an_older_one(
    snapshots: DynamoPoolSnapshotStore,
) -> None:
    assert snapshots.put_snapshot(full_snapshot(NOW), 5.0)
    assert not snapshots.put_snapshot(full_snapshot(NOW + 4.9), 5.0)
    assert not snapshots.put_snapshot(full_snapshot(NOW - 60), 5.0)  # a late, older plan
    assert snapshots.put_snapshot(full_snapshot(NOW + 5.0), 5.0)

    read = snapshots.get_snapshot(Target.DEVICE)
    assert read is not None
    assert read.taken_at == NOW + 5.0


def test_the_largest_snapshot_costs_one_write_unit(
    snapshots: DynamoPoolSnapshotStore, aws_session: boto3.Session, config: Config
) -> None:
    snapshots.put_snapshot(full_snapshot(), 5.0)
    raw = aws_session.client("dynamodb").get_item(
        TableName=config.runs_table, Key={"run_id": {"S": snapshot_key(Target.DEVICE)}}
    )["Item"]

    # DynamoDB's item size: names plus values (a string its UTF-8 bytes, a number at most
    # 21 bytes). One write unit is 1 KB.
    size = sum(
        len(name.encode()) + (len(value["S"].encode()) if "S" in value else 21)
        for name, value in raw.items()
    )
    assert size <= 1024, size


def test_a_run_poll_answers_the_queue_the_dispatcher_saw(
    dynamo_calls: DynamoCalls,
    client: ApiCaller,
    agent_client: AgentCaller,
    aws_session: boto3.Session,
    config: Config,
) -> None:
    agent_client.post("/agents/register", {"target": "emulator", "device_id": "e1"})
    first = client.post("/runs", suite(3, "v1")).body
    second = client.post("/runs", {**suite(2, "v2"), "target": "device"}).body
    dispatch_queue(aws_session, config)  # the plan request: both pools planned

    answers: dict[str, dict[str, Any]] = {}
    polls = []
    for run in (first, second):
        run_id = run["run_id"]
        polls.append(
            dynamo_calls.during(
                lambda run_id=run_id: answers.update({run_id: get(client, f"/runs/{run_id}").body})
            )
        )

    # The run's item and its pool's snapshot: two eventually consistent reads.
    two_reads = [("GetItem", config.runs_table, False)] * 2
    assert polls == [two_reads, two_reads]
    one: dict[str, Any] = answers[first["run_id"]]
    two: dict[str, Any] = answers[second["run_id"]]
    assert one["counts"] == {"active": 3}  # the emulator got them
    assert one["no_agent"] is False
    assert one["queue"]["position"] == 0  # nothing queued: all on the agent
    assert one["queue"]["eta_seconds"] > 0
    assert two["no_agent"] is True  # no device agent
    assert (two["queue"]["position"], two["queue"]["jobs_ahead"]) == (1, 0)
    assert two["queue"]["eta_seconds"] is None
    assert get(client, "/runs/pool%23device").status == 404  # a snapshot is no run
