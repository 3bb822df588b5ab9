"""The queue place of a run whose jobs partly moved to BrowserStack (domain.queue
.moved_run_queue, PoolSnapshotService.run_queue): it counts the pool its moved jobs
wait in, not only its home pool. Fixed times, no clock."""

from __future__ import annotations

from dataclasses import replace

from qgjob_backend.domain.models import Agent, Job, Run
from qgjob_backend.domain.queue import (
    PoolSnapshot,
    moved_run_queue,
    run_queue,
)
from qgjob_backend.schema import Target
from qgjob_backend.services.pool_snapshots import PoolSnapshotService, SnapshotSettings
from tests.unit.fakes import FakeClock, MemoryPoolSnapshotStore
from tests.unit.test_queue_eta import NOW, UNKNOWN, busy, idle, job, run_of, snapshot

BS = Target.BROWSERSTACK


def bs_job(run_id: str, index: int, **options: object) -> Job:
    return replace(job(run_id, index, **options), target=BS)  # type: ignore[arg-type]


def bs_agent(agent_id: str, **extra: object) -> Agent:
    return idle(agent_id, target=BS, **extra)


def bs_snapshot(backlog: list[Job], agents: list[Agent]) -> PoolSnapshot:
    return snapshot(backlog, agents, BS)


def moved_run(counts: dict[str, int], moved: int) -> Run:
    return replace(run_of("run-a", counts), overflow=BS, moved=moved)


# The emulator pool: one agent busy for an hour, then run-b's 20 jobs ahead of anything.
HOME_BUSY = busy("e1", "acme/other/emulator", NOW + 3600)
HOME = snapshot([job("run-b", i, version="v2") for i in range(20)], [HOME_BUSY])


def test_a_run_whose_waiting_jobs_all_moved_is_placed_in_the_overflow_pool() -> None:
    run = moved_run({"queued": 3}, moved=3)
    there = bs_snapshot([bs_job("run-a", i) for i in range(3)], [bs_agent("b1")])

    before = run_queue(run, HOME, NOW)
    after = moved_run_queue(run, HOME, there, NOW)

    assert before is not None
    assert after is not None
    # Home alone says "behind everything": after run-b, an hour from now at least.
    assert before.approximate
    assert before.estimated_finish_at is not None
    assert before.estimated_finish_at > NOW + 3600
    # On BrowserStack: install 30 s, then three 60 s tests on its one idle agent.
    assert after.estimated_finish_at == NOW + 30 + 180
    assert after.eta_seconds == 210
    assert (after.position, after.jobs_ahead, after.approximate) == (1, 0, False)


def test_a_run_waiting_in_both_pools_ends_with_the_later_and_starts_with_the_sooner() -> None:
    run = moved_run({"queued": 4}, moved=2)
    home = snapshot([job("run-a", 0), job("run-a", 1)], [idle("e1")])
    there = bs_snapshot([bs_job("run-a", i) for i in range(2, 4)], [busy_bs("b1", NOW + 500)])

    here = run_queue(run, home, NOW)
    queue = moved_run_queue(run, home, there, NOW)

    assert here is not None
    assert queue is not None
    assert here.estimated_finish_at == NOW + 30 + 120  # the emulator part ends first
    # b1 frees at +500, installs 30 s, runs two 60 s tests.
    assert queue.estimated_finish_at == NOW + 500 + 30 + 120
    assert queue.estimated_start_at == here.estimated_start_at == NOW + 30
    assert queue.position == here.position  # its place in its own pool


def busy_bs(agent_id: str, free_at: float, group: str = "acme/other/browserstack") -> Agent:
    return busy(agent_id, group, free_at, target=BS)


def test_moved_jobs_running_on_browserstack_count_after_the_home_part() -> None:
    run = moved_run({"queued": 1, "active": 2}, moved=2)
    home = snapshot([job("run-a", 0)], [idle("e1", installed=None)])
    # Its two moved jobs run on b1 until +900; nothing of it waits there.
    there = bs_snapshot([], [busy_bs("b1", NOW + 900, group="acme/v1/browserstack")])

    queue = moved_run_queue(run, home, there, NOW)

    assert queue is not None
    assert queue.estimated_finish_at == NOW + 900
    assert queue.eta_seconds == 900


def test_a_run_that_moved_nothing_gets_its_home_answer() -> None:
    run = moved_run({"queued": 3}, moved=0)
    there = bs_snapshot([bs_job("run-a", i) for i in range(3)], [bs_agent("b1")])

    assert moved_run_queue(run, HOME, there, NOW) == run_queue(run, HOME, NOW)


def _service(store: MemoryPoolSnapshotStore) -> PoolSnapshotService:
    settings = SnapshotSettings(unknown_estimate_s=UNKNOWN, agent_offline_seconds=360.0)
    return PoolSnapshotService(store, FakeClock(NOW), settings)


def test_a_poll_reads_the_overflow_pools_snapshot_only_for_a_run_that_moved_jobs() -> None:
    store = MemoryPoolSnapshotStore()
    store.snapshots[Target.EMULATOR] = HOME
    store.snapshots[BS] = bs_snapshot([bs_job("run-a", i) for i in range(3)], [bs_agent("b1")])
    service = _service(store)

    stayed = service.run_queue(moved_run({"queued": 3}, moved=0))
    assert store.calls["get_snapshot"] == 1
    assert stayed is not None
    assert stayed.approximate

    moved = service.run_queue(moved_run({"queued": 3}, moved=3))
    assert store.calls["get_snapshot"] == 3
    assert moved is not None
    assert moved.eta_seconds == 210


def test_an_unreadable_overflow_snapshot_leaves_the_home_answer() -> None:
    class HalfDown(MemoryPoolSnapshotStore):
        def get_snapshot(self, target: Target) -> PoolSnapshot | None:
            if target is BS:
                raise RuntimeError("snapshot store down")
            return super().get_snapshot(target)

    store = HalfDown()
    store.snapshots[Target.EMULATOR] = HOME
    run = moved_run({"queued": 3}, moved=3)

    assert _service(store).run_queue(run) == run_queue(run, HOME, NOW)
