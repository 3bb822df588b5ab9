"""Queue position and ETA, the pure part (domain.queue): a pool's snapshot from a plan's
reads, and a run's place in it. Deterministic: fixed times, no clock."""

from __future__ import annotations

import random

import pytest

from qgjob_backend.domain.models import Agent, AgentStatus, AppRef, Job, Run, group_key_for
from qgjob_backend.domain.queue import (
    MAX_SNAPSHOT_RUNS,
    PoolSnapshot,
    RunPlace,
    group_digest,
    pool_snapshot,
    run_digest,
    run_queue,
)
from qgjob_backend.schema import JobStatus, Target

NOW = 1_700_000_000.0
INSTALL = 30.0
UNKNOWN = 90.0


def job(
    run_id: str,
    index: int,
    *,
    org: str = "acme",
    version: str = "v1",
    estimate: float | None = 60.0,
    priority: int = 5,
) -> Job:
    return Job(
        job_id=f"{run_id}-{index:04d}",
        run_id=run_id,
        org_id=org,
        app_version_id=version,
        target=Target.EMULATOR,
        test_path=f"t{index}.spec.js",
        priority=priority,
        status=JobStatus.QUEUED,
        created_at=NOW - 100,
        updated_at=NOW - 100,
        timeout_s=600,
        max_attempts=1,
        position=index,
        admitted=True,
        estimate_s=estimate,
    )


def idle(agent_id: str, *, installed: AppRef | None = None, **extra: object) -> Agent:
    fields: dict[str, object] = {
        "agent_id": agent_id,
        "target": Target.EMULATOR,
        "device_id": agent_id,
        "status": AgentStatus.IDLE,
        "last_seen": NOW - 10,
        "registered_at": NOW - 1000,
        "installed": installed,
    }
    fields.update(extra)
    return Agent(**fields)  # type: ignore[arg-type]


def busy(agent_id: str, group: str, free_at: float, **extra: object) -> Agent:
    return idle(
        agent_id,
        status=AgentStatus.BUSY,
        batch_id=f"batch-{agent_id}",
        batch_group=group,
        batch_expected_free_at=free_at,
        **extra,
    )


def snapshot(
    backlog: list[Job], agents: list[Agent], target: Target = Target.EMULATOR, **options: object
) -> PoolSnapshot:
    return pool_snapshot(
        target,
        backlog,
        agents,
        NOW,
        online_after=NOW - 360,
        install_s=INSTALL,
        unknown_estimate_s=UNKNOWN,
        **options,  # type: ignore[arg-type]
    )


def run_of(run_id: str, counts: dict[str, int], org: str = "acme", version: str = "v1") -> Run:
    return Run(
        run_id=run_id,
        org_id=org,
        app_version_id=version,
        target=Target.EMULATOR,
        priority=5,
        job_ids=[],
        fingerprint="",
        created_at=NOW - 100,
        counts=counts,
    )


GROUP = group_key_for("acme", "v1", Target.EMULATOR)


def test_a_run_spreads_over_idle_agents_when_that_ends_it_sooner() -> None:
    backlog = [job("run-a", i) for i in range(4)]

    snap = snapshot(backlog, [idle("e1"), idle("e2")])

    # e1: install 30 + 60 + 60; e2 (free now): install 30 + 60 + 60: both end at 150 s.
    assert snap.runs == {run_digest("run-a"): RunPlace(1, 0, NOW + 30, NOW + 150)}
    assert (snap.idle, snap.busy, snap.offline, snap.shared_online) == (2, 0, 0, 2)
    assert snap.queued == 4
    assert snap.queued_by_priority == {5: (4, 240.0)}
    assert snap.drain_at == NOW + 150


def test_an_agent_that_holds_the_app_saves_the_install() -> None:
    backlog = [job("run-a", i) for i in range(2)]

    snap = snapshot(backlog, [idle("e1", installed=AppRef("acme", "v1"))])

    assert snap.place_of("run-a") == RunPlace(1, 0, NOW, NOW + 120)


def test_a_short_run_behind_a_long_one_waits_for_it_and_counts_its_jobs_ahead() -> None:
    backlog = [job("run-a", i) for i in range(3)] + [job("run-b", 0, version="v2")]

    snap = snapshot(backlog, [idle("e1", installed=AppRef("acme", "v1"))])

    assert snap.place_of("run-a") == RunPlace(1, 0, NOW, NOW + 180)
    # One agent: b's install starts when a's last test ends.
    assert snap.place_of("run-b") == RunPlace(2, 3, NOW + 180 + INSTALL, NOW + 180 + INSTALL + 60)


def test_busy_agents_take_queued_work_when_their_batch_should_end() -> None:
    backlog = [job("run-a", 0, estimate=None)]  # no history: the unknown estimate

    snap = snapshot(
        backlog, [busy("e1", GROUP, NOW + 200), busy("e2", "other/v9/emulator", NOW + 50)]
    )

    # e2 is free first but must install: 50 + 30 + 90 = 170 < 200 + 90 on e1.
    assert snap.place_of("run-a") == RunPlace(1, 0, NOW + 80, NOW + 170)
    assert snap.next_free_at == NOW + 50
    assert snap.groups_free_at == {
        group_digest(GROUP): NOW + 200,
        group_digest("other/v9/emulator"): NOW + 50,
    }


def test_offline_and_drained_agents_take_no_work() -> None:
    backlog = [job("run-a", 0)]
    agents = [
        idle("e1", last_seen=NOW - 361),  # silent longer than the offline cut
        idle("e2", drained_at=NOW - 5),
        idle("e3", status=AgentStatus.OFFLINE),
    ]

    snap = snapshot(backlog, agents)

    assert (snap.idle, snap.busy, snap.offline, snap.shared_online) == (0, 0, 3, 0)
    assert snap.place_of("run-a") == RunPlace(1, 0, None, None)
    assert snap.drain_at is None
    queue = run_queue(run_of("run-a", {"queued": 1}), snap, NOW)
    assert queue is not None
    assert (queue.no_agent, queue.eta_seconds, queue.position, queue.jobs_ahead) == (
        True,
        None,
        1,
        0,
    )


def test_a_private_lab_serves_only_its_org() -> None:
    backlog = [job("run-x", 0, org="globex"), job("run-a", 0)]
    # It holds globex's app from before it became a lab: still not globex's.
    lab = [idle("lab1", lab_org_id="acme", installed=AppRef("globex", "v1"))]

    snap = snapshot(backlog, lab)

    assert snap.place_of("run-x") == RunPlace(1, 0, None, None)  # nothing may run it
    assert snap.place_of("run-a") == RunPlace(2, 1, NOW + 30, NOW + 90)
    acme = run_queue(run_of("run-a", {"queued": 1}), snap, NOW)
    globex = run_queue(run_of("run-x", {"queued": 1}, org="globex"), snap, NOW)
    assert acme is not None
    assert globex is not None
    assert (acme.no_agent, acme.eta_seconds) == (False, 90.0)
    assert (globex.no_agent, globex.eta_seconds) == (True, None)


def test_runs_behind_the_named_ones_get_a_lower_bound() -> None:
    runs = MAX_SNAPSHOT_RUNS + 4
    backlog = [job(f"run-{i:02d}", 0, version=f"v{i}") for i in range(runs)]

    snap = snapshot(backlog, [idle("e1")])

    assert list(snap.runs) == [run_digest(f"run-{i:02d}") for i in range(MAX_SNAPSHOT_RUNS)]
    assert snap.unlisted_ahead == MAX_SNAPSHOT_RUNS
    assert snap.drain_at == NOW + runs * (INSTALL + 60)
    listed = run_queue(run_of("run-03", {"queued": 1}, version="v3"), snap, NOW + 10)
    unlisted = run_queue(run_of("run-14", {"queued": 1}, version="v14"), snap, NOW + 10)
    assert listed is not None
    assert unlisted is not None
    assert (listed.position, listed.jobs_ahead, listed.approximate) == (4, 3, False)
    assert listed.eta_seconds == 4 * (INSTALL + 60) - 10
    assert (unlisted.position, unlisted.jobs_ahead, unlisted.approximate) == (
        None,
        MAX_SNAPSHOT_RUNS,
        True,
    )
    assert unlisted.estimated_finish_at == snap.drain_at


def test_a_run_with_everything_on_agents_ends_with_its_groups_batches() -> None:
    snap = snapshot([job("run-b", 0, version="v2")], [busy("e1", GROUP, NOW + 200)])

    queue = run_queue(run_of("run-a", {"active": 2, "passed": 3}), snap, NOW + 50)

    assert queue is not None
    assert (queue.position, queue.jobs_ahead, queue.eta_seconds) == (0, 0, 150.0)
    assert queue.estimated_finish_at == NOW + 200
    assert queue.as_of == NOW


def test_a_run_with_queued_and_running_jobs_ends_after_both() -> None:
    # Its own queued test ends sooner (another idle agent) than its running batch.
    snap = snapshot([job("run-a", 5)], [busy("e1", GROUP, NOW + 500), idle("e2")])

    queue = run_queue(run_of("run-a", {"active": 5, "queued": 1}), snap, NOW)

    assert snap.place_of("run-a").finish_at == NOW + 90
    assert queue is not None
    assert queue.estimated_finish_at == NOW + 500


@pytest.mark.parametrize("counts", [{}, {"passed": 3}, {"failed": 1, "cancelled": 2}])
def test_a_finished_run_has_no_queue(counts: dict[str, int]) -> None:
    snap = snapshot([job("run-b", 0)], [idle("e1")])
    assert run_queue(run_of("run-a", counts), snap, NOW) is None


def test_no_snapshot_no_queue() -> None:
    assert run_queue(run_of("run-a", {"queued": 1}), None, NOW) is None


def test_the_estimate_passed_the_finish_is_zero_not_negative() -> None:
    snap = snapshot([job("run-a", 0)], [idle("e1")])
    queue = run_queue(run_of("run-a", {"queued": 1}), snap, NOW + 1000)
    assert queue is not None
    assert queue.eta_seconds == 0.0


def test_the_snapshot_is_deterministic_whatever_order_the_agents_come_in() -> None:
    rng = random.Random(7)
    backlog = [
        job(f"run-{r}", i, version=f"v{r % 3}", estimate=rng.choice([None, 5.0, 40.0, 300.0]))
        for r in range(6)
        for i in range(rng.randint(1, 30))
    ]
    agents = [idle(f"e{i}", installed=AppRef("acme", f"v{i % 3}")) for i in range(5)]
    agents += [
        busy(f"b{i}", group_key_for("acme", f"v{i}", "emulator"), NOW + 7 * i) for i in range(3)
    ]

    first = snapshot(backlog, agents)
    shuffled = agents[:]
    rng.shuffle(shuffled)
    again = snapshot(backlog, shuffled)

    assert again == first
    assert again.same_estimates(first)
    # Each run starts in queue order, and the positions follow it.
    positions = [place.position for place in first.runs.values()]
    assert positions == list(range(1, len(first.runs) + 1))
    aheads = [place.jobs_ahead for place in first.runs.values()]
    assert aheads == sorted(aheads)
    assert aheads[0] == 0


def test_same_estimates_ignores_only_when_it_was_taken() -> None:
    backlog = [job("run-a", 0)]
    first = snapshot(backlog, [idle("e1")])
    later = pool_snapshot(
        Target.EMULATOR,
        backlog,
        [idle("e1")],
        NOW + 0.2,
        online_after=NOW - 360,
        install_s=INSTALL,
        unknown_estimate_s=UNKNOWN,
    )
    moved = snapshot([*backlog, job("run-a", 1)], [idle("e1")])

    assert later.same_estimates(first)  # the ETA moved by 0.2 s: the same, to the second
    assert not moved.same_estimates(first)
    assert not first.same_estimates(None)


def test_a_pool_as_large_as_a_plan_reads_is_placed() -> None:
    """2,000 jobs (the plan's backlog window) on 1,000 agents."""
    backlog = [job(f"run-{i % 40}", i, version=f"v{i % 40}") for i in range(2000)]
    agents = [idle(f"e{i:04d}") for i in range(1000)]

    snap = snapshot(backlog, agents)

    assert snap.queued == 2000
    assert snap.idle == 1000
    # 2,000 jobs of 60 s on 1,000 fresh agents: two each, one install each.
    assert snap.drain_at == NOW + INSTALL + 120
