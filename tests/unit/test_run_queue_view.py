"""GET /runs/{id} answers the run's queue position and ETA from its pool's snapshot, which
the dispatcher writes after it plans (at most every few seconds per pool); through the
real handler and services over the in-memory fakes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from qgjob_backend.schema import SuiteSubmission, Target
from qgjob_backend.services.auth import TokenKind
from qgjob_backend.services.pool_snapshots import SNAPSHOT_MIN_INTERVAL_S, SNAPSHOT_REFRESH_S
from qgjob_backend.wiring import Services, assemble_services
from tests.unit.api_calls import api_get
from tests.unit.fakes import (
    CountingStore,
    FakeClock,
    MemoryArtifactStore,
    MemoryEstimateStore,
    MemoryJobQueue,
    MemoryPoolSnapshotStore,
    MemoryTokenStore,
    SequentialIds,
    fake_config,
)


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = CountingStore()
        self.snapshots = MemoryPoolSnapshotStore()
        self.services: Services = assemble_services(
            fake_config(batch_max_jobs=2),
            store=self.store,
            queue=MemoryJobQueue(),
            artifacts=MemoryArtifactStore(),
            token_store=MemoryTokenStore(),
            estimate_store=MemoryEstimateStore(),
            snapshot_store=self.snapshots,
            clock=self.clock,
            new_id=SequentialIds(),
        )
        self.token = self.services.tokens.create(TokenKind.ORG, "acme")

    def agents(self, count: int, target: Target = Target.EMULATOR) -> None:
        for index in range(count):
            self.store.register_agent(
                f"{target.value}-{index:05d}",
                target,
                f"d{index}",
                None,
                self.clock(),
                credential_hash="x",
            )

    def submit(self, tests: int, version: str = "v1", target: str = "emulator") -> str:
        paths = [f"tests/t{i}.spec.js" for i in range(tests)]
        suite = SuiteSubmission(
            org_id="acme", app_version_id=version, target=target, test_paths=paths
        )
        return self.services.submissions.submit("acme", suite).run.run_id

    def get(self, path: str) -> tuple[int, dict[str, Any], Counter[str]]:
        """One request through the API handler: status, body, and the state store's and
        snapshot store's calls."""
        self.store.calls.clear()
        self.snapshots.calls.clear()
        self.store.counting = True
        try:
            status, body = api_get(self.services, self.token, path)
        finally:
            self.store.counting = False
        calls = Counter(self.store.calls) + Counter(self.snapshots.calls)
        return status, body, calls


@pytest.fixture
def world() -> World:
    return World()


def test_a_run_without_any_agent_says_so(world: World) -> None:
    run_id = world.submit(3, target="device")
    world.services.dispatcher.plan()

    status, body, _ = world.get(f"/runs/{run_id}")

    assert status == 200, body
    assert body["no_agent"] is True
    assert body["queue"] == {
        "position": 1,
        "jobs_ahead": 0,
        "eta_seconds": None,
        "estimated_start_at": None,
        "estimated_finish_at": None,
        "as_of": world.clock(),
        "approximate": False,
    }


def test_a_run_behind_another_gets_its_position_and_eta(world: World) -> None:
    world.agents(1)
    first = world.submit(3, "v1")
    second = world.submit(2, "v2")
    planned_at = world.clock()
    world.services.dispatcher.plan()  # the agent gets a batch of the first run
    world.clock.advance(10)

    _, one, _ = world.get(f"/runs/{first}")
    _, two, _ = world.get(f"/runs/{second}")

    # Unknown tests are 90 s and an emulator install 60 s (the defaults): one agent runs
    # the first run's 3 tests after one install, then installs the second's app.
    assert one["queue"]["position"] == 1
    assert one["no_agent"] is False
    assert one["queue"]["estimated_finish_at"] == planned_at + 60 + 3 * 90
    assert one["queue"]["eta_seconds"] == 60 + 3 * 90 - 10
    assert (two["queue"]["position"], two["queue"]["jobs_ahead"]) == (2, 3)
    assert two["queue"]["estimated_start_at"] == planned_at + 60 + 3 * 90 + 60
    assert two["queue"]["eta_seconds"] == 60 + 3 * 90 + 60 + 2 * 90 - 10
    assert two["queue"]["as_of"] == planned_at


def test_a_finished_run_reads_no_snapshot(world: World) -> None:
    run_id = world.submit(1)
    world.services.dispatcher.plan()
    world.services.submissions.cancel_run("acme", run_id)

    _, body, calls = world.get(f"/runs/{run_id}")

    assert body["finished"] is True
    assert (body["queue"], body["no_agent"]) == (None, False)
    assert calls == {"get_run": 1}


def test_plans_write_a_snapshot_at_most_every_few_seconds_and_only_when_it_changed(
    world: World,
) -> None:
    world.submit(2, target="device")  # no device agent: nothing moves by itself
    plan = world.services.dispatcher.plan

    plan()
    plan()
    assert world.snapshots.calls == {"put_snapshot": 1}

    world.submit(1, "v2", target="device")
    world.clock.advance(SNAPSHOT_MIN_INTERVAL_S - 0.5)
    plan()  # changed, but too soon
    assert world.snapshots.calls == {"put_snapshot": 1}

    world.clock.advance(1.0)
    plan()
    assert world.snapshots.calls == {"put_snapshot": 2}
    assert world.snapshots.snapshots[Target.DEVICE].queued == 3

    world.clock.advance(SNAPSHOT_MIN_INTERVAL_S + 0.5)
    plan()  # old enough, but it would say the same
    assert world.snapshots.calls == {"put_snapshot": 2}

    world.clock.advance(SNAPSHOT_REFRESH_S)
    plan()  # unchanged, but refreshed: its as_of says it is current
    assert world.snapshots.calls == {"put_snapshot": 3}
    assert world.snapshots.snapshots[Target.DEVICE].taken_at == world.clock()


def test_a_snapshot_written_by_another_container_is_not_overwritten_too_soon(
    world: World,
) -> None:
    world.submit(1, target="device")
    world.services.dispatcher.plan()
    stored = world.snapshots.snapshots[Target.DEVICE]

    # A second dispatcher over the same store (a second container), a moment later.
    second = assemble_services(
        fake_config(),
        store=world.store,
        queue=MemoryJobQueue(),
        artifacts=MemoryArtifactStore(),
        token_store=MemoryTokenStore(),
        estimate_store=MemoryEstimateStore(),
        snapshot_store=world.snapshots,
        clock=world.clock,
        new_id=SequentialIds("other"),
    )
    world.clock.advance(1.0)
    second.dispatcher.plan()

    assert world.snapshots.calls == {"put_snapshot": 2}  # tried, refused by the condition
    assert world.snapshots.snapshots[Target.DEVICE] is stored


def test_a_failing_snapshot_store_stops_neither_plans_nor_polls(world: World) -> None:
    world.agents(1)
    run_id = world.submit(2)
    world.snapshots.fail = True

    batches = world.services.dispatcher.plan()
    status, body, _ = world.get(f"/runs/{run_id}")

    assert len(batches) == 1
    assert status == 200
    assert body["counts"] == {"active": 2}
    assert body["queue"] is None


@pytest.mark.parametrize("agents", [10, 1000])
@pytest.mark.parametrize("queued", [10, 10_000])
def test_a_run_poll_makes_the_same_calls_whatever_the_fleet_and_backlog(
    agents: int, queued: int
) -> None:
    world = World()
    world.agents(agents)
    # Busy agents, so the backlog stays queued: their batches end in 10 minutes.
    for agent in world.store.agents.values():
        agent.batch_id, agent.batch_group = f"batch-{agent.agent_id}", "other/v0/emulator"
        agent.batch_expected_free_at = world.clock() + 600
    runs = [
        world.submit(min(1000, queued - start), f"v{start}") for start in range(0, queued, 1000)
    ]
    world.services.dispatcher.plan()
    snapshot = world.snapshots.snapshots[Target.EMULATOR]
    assert (snapshot.busy, snapshot.queued) == (agents, min(queued, 2000))  # the plan's window

    status, body, calls = world.get(f"/runs/{runs[0]}")

    assert status == 200, body
    assert body["queue"]["position"] == 1
    assert body["queue"]["estimated_start_at"] == world.clock() + 600 + 60
    assert calls == {"get_run": 1, "get_snapshot": 1}
