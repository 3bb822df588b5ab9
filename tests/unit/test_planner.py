"""The pure planning core: which idle agent gets which batch of which group."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import replace

import pytest

from qgjob_backend.domain.models import AppRef, group_key_for
from qgjob_backend.domain.planner import (
    BacklogJob,
    BusyAgent,
    IdleAgent,
    PlannedBatch,
    PlanningPolicy,
    late_groups,
    plan_batches,
)
from tests.unit.backlog import backlog_jobs

NOW = 10_000.0
POLICY = PlanningPolicy(max_batch_jobs=5, aging_seconds=100.0)
INSTALL = {"emulator": 60.0, "device": 120.0, "browserstack": 90.0}


# ``count`` jobs of one group, positions 0..count-1 (suite order), waiting since NOW.
jobs = functools.partial(backlog_jobs, enqueued_at=NOW)


def agent(agent_id: str, target: str = "emulator", installed: AppRef | None = None) -> IdleAgent:
    return IdleAgent(agent_id=agent_id, target=target, installed=installed)


def busy(agent_id: str, group: str, free_in: float, target: str = "emulator") -> BusyAgent:
    return BusyAgent(agent_id, target, group, NOW + free_in)


def plan(
    backlog: list[BacklogJob],
    agents: list[IdleAgent],
    policy: PlanningPolicy = POLICY,
    running: list[BusyAgent] | None = None,
) -> list[PlannedBatch]:
    return plan_batches(backlog, agents, NOW, policy, running or [], INSTALL)


def by_agent(batches: list[PlannedBatch]) -> dict[str, PlannedBatch]:
    return {b.agent_id: b for b in batches}


# ------------------------------------------------------------------ basics
def test_empty_backlog_plans_nothing() -> None:
    assert plan([], [agent("a1"), agent("a2")]) == []


def test_no_agents_plans_nothing() -> None:
    assert plan(jobs("acme", "v1", 3), []) == []


def test_each_batch_job_carries_the_estimated_tests_from_its_start_to_the_batchs_end() -> None:
    # Run order: longest first within the group; a test without an estimate counts the
    # policy's unknown_estimate_s. What a start renews the agent's expected end from.
    backlog = [
        replace(j, estimate_s=e)
        for j, e in zip(jobs("acme", "v1", 3), [20.0, None, 50.0], strict=True)
    ]

    (batch,) = plan(backlog, [agent("a1")])

    unknown = POLICY.unknown_estimate_s
    assert batch.job_ids == (backlog[1].job_id, backlog[2].job_id, backlog[0].job_id)
    assert batch.rests_s == (unknown + 70.0, 70.0, 20.0)
    assert batch.expected_s == INSTALL["emulator"] + batch.rests_s[0]


def test_a_small_group_goes_to_one_agent_with_one_install() -> None:
    # Splitting 3 one-minute tests would save a minute and cost an install per agent.
    backlog = jobs("acme", "v1", 3)

    batches = plan(backlog, [agent("a1"), agent("a2"), agent("a3")])

    assert len(batches) == 1
    (batch,) = batches
    assert batch.job_ids == tuple(j.job_id for j in backlog)
    assert batch.group_key == "acme/v1/emulator"
    assert (batch.org_id, batch.app_version_id, batch.target) == ("acme", "v1", "emulator")
    assert batch.install_required is True
    assert batch.expected_s == pytest.approx(60.0 + 3 * 60.0)


def test_agents_of_another_target_are_left_alone() -> None:
    assert plan(jobs("acme", "v1", 3), [agent("d1", "device"), agent("b1", "browserstack")]) == []


def test_batches_never_mix_groups_or_targets() -> None:
    backlog = (
        jobs("acme", "v1", 3)
        + jobs("acme", "v2", 3)
        + jobs("globex", "v1", 3)
        + jobs("acme", "v1", 3, target="device")
    )
    agents = [agent(f"e{i}") for i in range(4)] + [agent(f"d{i}", "device") for i in range(2)]
    index = {j.job_id: j for j in backlog}

    batches = plan(backlog, agents)

    assert len(batches) == 4
    for batch in batches:
        members = [index[j] for j in batch.job_ids]
        assert {j.group_key for j in members} == {batch.group_key}
        assert {j.target for j in members} == {batch.target}
        assert batch.agent_id.startswith("d" if batch.target == "device" else "e")


def test_batches_are_capped_by_count_and_by_estimated_duration() -> None:
    backlog = jobs("acme", "v1", 30, estimate_s=100.0)
    by_count = PlanningPolicy(max_batch_jobs=4, max_batch_seconds=10_000)
    by_time = PlanningPolicy(max_batch_jobs=50, max_batch_seconds=450)

    assert [len(b.job_ids) for b in plan(backlog, [agent("a1")], by_count)] == [4]
    # 450 s of 100 s tests: four, plus a fifth only if it ends within half a test.
    assert [len(b.job_ids) for b in plan(backlog, [agent("a1")], by_time)] == [5]


def test_a_test_without_estimate_counts_the_policys_default() -> None:
    backlog = jobs("acme", "v1", 2, estimate_s=None)
    policy = PlanningPolicy(unknown_estimate_s=42.0)

    (batch,) = plan(backlog, [agent("a1")], policy)

    assert batch.expected_s == pytest.approx(60.0 + 2 * 42.0)


def test_install_time_comes_per_target_with_a_default() -> None:
    backlog = jobs("acme", "v1", 1, target="device")
    policy = PlanningPolicy(default_install_s=7.0)

    (with_install,) = plan_batches(backlog, [agent("d1", "device")], NOW, policy, (), INSTALL)
    (default,) = plan_batches(backlog, [agent("d1", "device")], NOW, policy)

    assert with_install.expected_s == pytest.approx(120.0 + 60.0)
    assert default.expected_s == pytest.approx(7.0 + 60.0)


def test_epoch_timestamps_with_sub_second_durations_plan_fine() -> None:
    now = 1_795_271_027.95
    backlog = [BacklogJob("j0", "acme/v1/emulator", "acme", "v1", "emulator", 7, now - 300, 0, 3.3)]
    idle = [agent("i0"), agent("i1")]

    batches = plan_batches(backlog, idle, now, PlanningPolicy(), (), {"emulator": 2.6})

    assert [b.job_ids for b in batches] == [("j0",)]


# ------------------------------------------------------------------ splitting
def test_a_large_group_is_split_over_every_idle_agent_when_that_ends_it_soonest() -> None:
    # 40 x 100 s on 6 agents with a 60 s install: T = 60 + 4000 / 6, k = 6.
    backlog = jobs("acme", "v1", 40, estimate_s=100.0)
    policy = PlanningPolicy(max_batch_jobs=50, max_batch_seconds=10_000)

    batches = plan(backlog, [agent(f"a{i}") for i in range(1, 7)], policy)

    assert len(batches) == 6
    assert all(b.install_required for b in batches)
    # Guided self-scheduling: each takes about half its share (333 s) and comes back.
    assert [len(b.job_ids) for b in batches] == [3] * 6
    planned = [j for b in batches for j in b.job_ids]
    assert len(set(planned)) == len(planned)


def test_a_split_that_gains_less_than_the_split_gain_buys_no_install() -> None:
    # 30 x 100 s and 10 x 100 s on 5 agents, 60 s installs. The earliest layout ends at
    # about 872 s with both groups split (6 installs). The small group kept on one agent
    # ends at 1,060 s, less than min_split_gain_s (300 s) later, and then the big group
    # needs only ceil(3000 / 1000) = 3 agents: 4 installs, the fifth agent stays idle.
    backlog = jobs("acme", "big", 30, estimate_s=100.0) + jobs(
        "acme", "small", 10, estimate_s=100.0
    )
    policy = PlanningPolicy(max_batch_jobs=50, max_batch_seconds=10_000)
    agents = [agent(f"a{i}") for i in range(1, 6)]

    def agents_per_group(batches: list[PlannedBatch]) -> dict[str, int]:
        return {app: sum(b.app_version_id == app for b in batches) for app in ("big", "small")}

    assert agents_per_group(plan(backlog, agents, policy)) == {"big": 3, "small": 1}
    # With no split gain asked for, every agent starts now: the big group on 4 (the small
    # group's second piece follows a big piece on one of them).
    eager = replace(policy, min_split_gain_s=0.0)
    assert agents_per_group(plan(backlog, agents, eager)) == {"big": 4, "small": 1}


def test_a_pool_with_nothing_queued_still_ends_with_its_running_batches() -> None:
    # 8 x 60 s on 4 idle emulators ends soonest split 4 ways (180 s, 4 installs). A device
    # batch runs for 2,000 s more with no device work queued: the fleet ends then anyway,
    # so the emulators spend the slack on installs: one agent, one install, ends at 540 s.
    suite = jobs("acme", "v1", 8)
    emulators = [agent(f"e{i}") for i in range(4)]
    device_batch = busy("d1", group_key_for("globex", "v9", "device"), 2_000.0, "device")

    assert len(plan(suite, emulators)) == 4
    (batch,) = plan(suite, emulators, running=[device_batch])
    assert batch.job_ids == tuple(j.job_id for j in suite[: POLICY.max_batch_jobs])


def test_a_split_gain_above_what_the_splits_buy_keeps_every_group_whole() -> None:
    # Two groups of 20 x 100 s on 4 agents, 60 s installs: each split over 2 agents ends at
    # 1,060 s; either kept on one agent ends at 2,060 s, far more than 300 s later.
    backlog = jobs("acme", "a", 20, estimate_s=100.0) + jobs("acme", "b", 20, estimate_s=100.0)
    policy = PlanningPolicy(max_batch_jobs=50, max_batch_seconds=10_000)

    batches = plan(backlog, [agent(f"a{i}") for i in range(1, 5)], policy)

    assert sorted(b.app_version_id for b in batches) == ["a", "a", "b", "b"]
    # A split gain above the 1,000 s it buys keeps both whole: one agent each.
    frugal = replace(policy, min_split_gain_s=1_100.0)
    kept = plan(backlog, [agent(f"a{i}") for i in range(1, 5)], frugal)
    assert sorted(b.app_version_id for b in kept) == ["a", "b"]


def test_warm_agents_share_a_large_group_without_installs() -> None:
    backlog = jobs("acme", "v1", 8)
    warm = AppRef("acme", "v1")

    batches = plan(backlog, [agent("a1", installed=warm), agent("a2", installed=warm)])

    assert sorted((b.agent_id, b.install_required) for b in batches) == [
        ("a1", False),
        ("a2", False),
    ]
    # Guided self-scheduling: each takes half of its half (2 of 8); the rest waits for
    # whichever is free first.
    assert [len(b.job_ids) for b in batches] == [2, 2]


def test_an_idle_agent_holding_a_group_keeps_working_on_it() -> None:
    backlog = jobs("acme", "v1", 2) + jobs("acme", "v2", 2)

    batches = plan(backlog, [agent("a1", installed=AppRef("acme", "v2"))])

    assert [(b.app_version_id, b.install_required) for b in batches] == [("v2", False)]


def retried(job: BacklogJob, on: str, at: float = NOW - 5.0) -> BacklogJob:
    """``job`` put back in the queue after it failed on agent ``on`` at ``at``."""
    return replace(job, avoid_agent_id=on, retried_at=at)


def test_a_retried_job_goes_to_another_idle_agent_than_the_one_it_failed_on() -> None:
    # a1 holds the app and would take the whole group; the retried test still goes to a2.
    first, *rest = jobs("acme", "v1", 3)
    backlog = [retried(first, "a1"), *rest]
    warm = AppRef("acme", "v1")

    batches = by_agent(plan(backlog, [agent("a1", installed=warm), agent("a2")]))

    assert first.job_id not in batches["a1"].job_ids
    assert batches["a2"].job_ids == (first.job_id,)
    assert batches["a2"].install_required is True


def test_a_retried_job_alone_waits_for_another_agent_due_soon() -> None:
    job = retried(jobs("acme", "v1", 1)[0], "a1")
    soon = [busy("a2", "globex/v9/emulator", free_in=30.0)]
    late = [busy("a2", "globex/v9/emulator", free_in=POLICY.retry_elsewhere_within_s + 60)]

    assert plan([job], [agent("a1")], running=soon) == []
    # No other agent soon: it runs again where it failed rather than wait.
    assert [b.job_ids for b in plan([job], [agent("a1")], running=late)] == [(job.job_id,)]
    assert [b.job_ids for b in plan([job], [agent("a1")])] == [(job.job_id,)]


def test_a_retried_job_stops_waiting_for_another_agent_after_the_window() -> None:
    waited = retried(jobs("acme", "v1", 1)[0], "a1", at=NOW - POLICY.retry_elsewhere_within_s - 1)
    soon = [busy("a2", "globex/v9/emulator", free_in=30.0)]

    assert [b.agent_id for b in plan([waited], [agent("a1")], running=soon)] == ["a1"]


def test_an_idle_agent_left_without_work_takes_a_retry_another_agent_left() -> None:
    # a2 holds another app the layout would not spend an install on; the retry is for it.
    job = retried(jobs("acme", "v1", 1)[0], "a1")
    agents = [agent("a1", installed=AppRef("acme", "v1")), agent("a2")]

    (batch,) = plan([job], agents)

    assert batch.agent_id == "a2"


def test_a_suite_of_very_short_tests_is_not_spread_one_test_per_warm_agent() -> None:
    # Ten warm agents: spreading costs no install, but every batch costs a lease, a commit
    # and a close; 20 tests of 1 s fill no more than one min_batch_seconds batch.
    short = jobs("acme", "v1", 20, estimate_s=1.0)
    warm = [agent(f"a{i}", installed=AppRef("acme", "v1")) for i in range(10)]
    policy = replace(POLICY, max_batch_jobs=25)

    assert [len(b.job_ids) for b in plan(short, warm, policy)] == [20]
    spread = plan(short, warm, replace(policy, min_batch_seconds=0.0))
    assert len(spread) == 10
    # Tests longer than the minimum are spread as before.
    long = jobs("acme", "v1", 20, estimate_s=60.0)
    assert len(plan(long, warm, policy)) == 10


def test_the_split_gain_knob_can_differ_per_pool() -> None:
    # 8 tests of 60 s: one agent ends 480 s after its install, four 120 s after theirs. A
    # split gain of 300 s buys the split; 600 s does not, on the pool it is set for only.
    policy = replace(POLICY, split_gain_by_target=(("device", 600.0),))
    emulators = [agent(f"e{i}") for i in range(4)]
    devices = [agent(f"d{i}", "device") for i in range(4)]

    assert len(plan(jobs("acme", "v1", 8), emulators, policy)) == 4
    assert len(plan(jobs("acme", "v1", 8, target="device"), devices, policy)) == 1
    assert len(plan(jobs("acme", "v1", 8, target="device"), devices, POLICY)) == 4
    assert policy.for_target("emulator") is policy
    assert policy.for_target("device").min_split_gain_s == 600.0


def test_same_app_version_of_another_org_is_not_warm() -> None:
    (batch,) = plan(jobs("acme", "v1", 3), [agent("a1", installed=AppRef("globex", "v1"))])

    assert batch.install_required is True


def test_a_short_tail_waits_for_the_busy_agent_holding_its_app() -> None:
    # The busy agent is free in 30 s and holds the app: a second install buys nothing.
    tail = jobs("acme", "v1", 3)
    running = [busy("emulator-1", "acme/v1/emulator", free_in=30.0)]

    assert plan(tail, [agent("emulator-2")], running=running) == []
    assert len(plan(tail, [agent("emulator-2")])) == 1


def test_a_long_backlog_behind_a_busy_agent_gets_another_agent() -> None:
    backlog = jobs("acme", "v1", 60, estimate_s=100.0)
    running = [busy("emulator-1", "acme/v1/emulator", free_in=300.0)]

    (batch,) = plan(backlog, [agent("emulator-2")], running=running)

    assert batch.install_required is True
    assert batch.app_version_id == "v1"


def test_an_urgent_group_takes_an_idle_agent_before_a_busy_agent_is_free() -> None:
    backlog = jobs("acme", "urgent", 3, priority=1) + jobs("acme", "v1", 3, priority=9)
    running = [busy("emulator-1", "acme/v1/emulator", free_in=400.0)]

    (batch,) = plan(backlog, [agent("emulator-2")], running=running)

    assert batch.app_version_id == "urgent"


# ------------------------------------------------------------------ urgency and fairness
@pytest.mark.parametrize(
    ("priority", "warm_agent_runs", "install"),
    [
        # Priority 1 starts now, on the agent holding a less urgent group's app: that
        # group pays a reinstall later.
        (1, "acme/urgent/emulator", True),
        # Any other class waits for the busy agent (free in 500 s) rather than cost the
        # less urgent group its warm agent.
        (3, "acme/held/emulator", False),
    ],
)
def test_only_priority_1_takes_a_warm_agent_from_a_less_urgent_group(
    priority: int, warm_agent_runs: str, install: bool
) -> None:
    backlog = jobs("acme", "urgent", 2, priority=priority) + jobs("acme", "held", 10, priority=5)
    warm = agent("warm", installed=AppRef("acme", "held"))
    running = [busy("busy", "acme/other/emulator", free_in=500.0)]

    (batch,) = plan(backlog, [warm], running=running)

    assert (batch.agent_id, batch.group_key) == ("warm", warm_agent_runs)
    assert batch.install_required is install


def test_a_more_urgent_group_waits_for_warm_agents_rather_than_cost_a_reinstall() -> None:
    # Every agent holds the app of a waiting priority-5 group. The priority-3 group runs
    # after the short one (at ~3 min), not in place of it (a reinstall for its group).
    backlog = (
        jobs("acme", "short", 2, priority=5)
        + jobs("acme", "long", 10, priority=5)
        + jobs("acme", "urgent", 2, priority=3)
    )
    agents = [
        agent("w1", installed=AppRef("acme", "short")),
        agent("w2", installed=AppRef("acme", "long")),
    ]

    batches = by_agent(plan(backlog, agents))

    assert batches["w1"].group_key == "acme/short/emulator"
    assert batches["w2"].group_key == "acme/long/emulator"
    assert not any(b.install_required for b in batches.values())


def test_more_groups_than_agents_serves_the_most_urgent_first() -> None:
    backlog = (
        jobs("acme", "low", 2, priority=5)
        + jobs("acme", "urgent", 2, priority=1)
        + jobs("acme", "lowest", 2, priority=10)
    )

    batches = plan(backlog, [agent("a1"), agent("a2")])

    assert sorted(b.app_version_id for b in batches) == ["low", "urgent"]


def test_equal_urgency_starts_the_largest_group_first() -> None:
    backlog = jobs("acme", "small", 2) + jobs("acme", "large", 6)

    batches = plan(backlog, [agent("a1")])

    assert [b.app_version_id for b in batches] == ["large"]


@pytest.mark.parametrize(
    ("waited", "winner"),
    [
        (0.0, "fresh-p2"),
        (600.0, "fresh-p2"),  # 9 - 6 levels = class 3: still less urgent than 2
        (800.0, "old-p9"),  # 9 - 8 levels: class 2 like the fresh group, and older
    ],
)
def test_aging_lets_a_long_waiting_low_priority_group_win(waited: float, winner: str) -> None:
    backlog = jobs("acme", "old-p9", 2, priority=9, enqueued_at=NOW - waited) + jobs(
        "acme", "fresh-p2", 2, priority=2, enqueued_at=NOW
    )

    assert [b.app_version_id for b in plan(backlog, [agent("a1")])] == [winner]


def test_aged_work_never_passes_priority_1() -> None:
    backlog = jobs("acme", "old-p9", 6, priority=9, enqueued_at=NOW - 50_000) + jobs(
        "acme", "fresh-p1", 2, priority=1, enqueued_at=NOW
    )

    assert [b.app_version_id for b in plan(backlog, [agent("a1")])] == ["fresh-p1"]


def test_inside_a_group_urgent_then_oldest_then_longest_tests_go_first() -> None:
    slow = jobs("acme", "v1", 2, priority=7, prefix="slow")
    fast = jobs("acme", "v1", 2, priority=2, prefix="fast")
    long_one = jobs("acme", "v1", 1, priority=2, prefix="long", estimate_s=200.0)
    policy = PlanningPolicy(max_batch_jobs=10)

    (batch,) = plan(slow + fast + long_one, [agent("a1")], policy)

    assert batch.job_ids == ("long-000", "fast-000", "fast-001", "slow-000", "slow-001")


def test_an_org_far_above_its_fair_share_yields_to_an_org_without_agents() -> None:
    # acme runs 5 of the pool's 6 agents (share 3, plus the 2 of slack); globex has none,
    # so its smaller group goes first.
    backlog = jobs("acme", "a2", 8) + jobs("globex", "g1", 3)
    running = [busy(f"e{i}", f"acme/a{i}/emulator", 900.0) for i in range(1, 6)]
    idle = [agent("e6")]

    fair = plan(backlog, idle, running=running)
    unfair = plan(backlog, idle, PlanningPolicy(max_batch_jobs=5, fair_share=False), running)
    within_share = plan(backlog, idle, running=running[:4])

    assert [b.org_id for b in fair] == ["globex"]
    assert [b.org_id for b in unfair] == ["acme"]  # largest first
    assert [b.org_id for b in within_share] == ["acme"]  # 4 < 5 / 2 + 2: no yielding


URGENT_POLICY = PlanningPolicy(max_batch_jobs=25, aging_seconds=100.0, urgent_piece_s=300.0)


def test_late_groups_are_those_that_arrived_after_the_pools_oldest_waiting_job() -> None:
    early = backlog_jobs("acme", "v1", 2, enqueued_at=NOW - 600.0)
    late = jobs("acme", "v2", 2)
    assert late_groups(early + late) == {"acme/v2/emulator"}
    assert late_groups(late) == frozenset()
    assert late_groups([]) == frozenset()


@pytest.mark.parametrize(("older_work", "urgent_agents"), [(True, 2), (False, 1)])
def test_urgent_work_arriving_into_a_queue_runs_in_pieces_on_several_agents(
    older_work: bool, urgent_agents: int
) -> None:
    # 10 x 50 s = 500 s of priority 1: on one agent its last test waits 450 s. Cut into
    # 300 s pieces it takes both agents, but only when it arrived after waiting work; a
    # split over both would gain 250 s, less than min_split_gain_s, so else it stays whole.
    urgent = jobs("acme", "urgent", 10, priority=1, estimate_s=50.0)
    older = backlog_jobs("acme", "old", 1, priority=9, enqueued_at=NOW - 60.0)
    backlog = urgent + (older if older_work else [])
    agents = [agent("a0"), agent("a1")]

    batches = plan(backlog, agents, URGENT_POLICY)

    on_urgent = [b for b in batches if b.group_key == urgent[0].group_key]
    assert len(on_urgent) == urgent_agents
    assert all(b.install_required for b in on_urgent)
    if older_work:
        assert all(b.expected_s - INSTALL["emulator"] <= 300.0 for b in on_urgent)
    without_pieces = replace(URGENT_POLICY, urgent_piece_s=math.inf)
    whole = plan(backlog, agents, without_pieces)
    assert len([b for b in whole if b.group_key == urgent[0].group_key]) == 1


def test_a_long_urgent_arrival_in_a_long_plan_still_runs_in_pieces() -> None:
    # 6,000 s of older work keep the plan's horizon far beyond a piece: 80 x 50 s of
    # priority 1 still goes to every agent in pieces of at most 300 s, not in slices of
    # an agent's whole room.
    older = backlog_jobs("acme", "old", 20, priority=9, enqueued_at=NOW - 60.0, estimate_s=300.0)
    urgent = jobs("acme", "urgent", 80, priority=1, estimate_s=50.0)
    agents = [agent(f"a{i}") for i in range(4)]

    batches = plan(older + urgent, agents, URGENT_POLICY)

    on_urgent = [b for b in batches if b.group_key == urgent[0].group_key]
    assert len(on_urgent) == 4
    assert all(b.expected_s - INSTALL["emulator"] <= 300.0 for b in on_urgent)


def test_urgent_pieces_do_not_count_against_the_installs_the_plan_may_spend() -> None:
    # The device pool ends late, so the emulator pool has slack to spend on installs. Its
    # urgent pieces (3 x 300 s) are bought by the urgency: the older group is still kept
    # whole on one agent, as if no pieces were cut.
    older = backlog_jobs("acme", "old", 10, priority=9, enqueued_at=NOW - 60.0, estimate_s=50.0)
    urgent = jobs("acme", "urgent", 18, priority=1, estimate_s=50.0)
    slow = jobs("globex", "slow", 50, target="device", estimate_s=100.0)
    agents = [agent(f"a{i}") for i in range(4)] + [agent("d0", "device")]

    batches = plan(older + urgent + slow, agents, URGENT_POLICY)

    assert len([b for b in batches if b.group_key == urgent[0].group_key]) == 3
    (on_older,) = [b for b in batches if b.group_key == older[0].group_key]
    assert len(on_older.job_ids) == len(older)  # the whole group: it is not split


# ------------------------------------------------------------------ order and determinism
def test_same_input_gives_the_same_plan_whatever_the_input_order() -> None:
    backlog = (
        jobs("acme", "v1", 7, priority=3)
        + jobs("acme", "v2", 4, priority=3)
        + jobs("globex", "v9", 6, priority=1, target="device")
    )
    agents = [
        agent("e1"),
        agent("e2", installed=AppRef("acme", "v2")),
        agent("e3"),
        agent("d1", "device"),
    ]
    expected = plan(backlog, agents)

    rng = random.Random(99)
    for _ in range(20):
        shuffled_jobs, shuffled_agents = list(backlog), list(agents)
        rng.shuffle(shuffled_jobs)
        rng.shuffle(shuffled_agents)
        assert plan(shuffled_jobs, shuffled_agents) == expected


# ------------------------------------------------------------------ properties
def _random_state(
    rng: random.Random,
) -> tuple[list[BacklogJob], list[IdleAgent], list[BusyAgent]]:
    targets = ["emulator", "device", "browserstack"]
    orgs = ["acme", "globex"]
    apps = ["v1", "v2", "v3"]
    backlog: list[BacklogJob] = []
    for g in range(rng.randint(0, 8)):
        org, app, target = rng.choice(orgs), rng.choice(apps), rng.choice(targets)
        enqueued = NOW - rng.uniform(0, 2000)
        for i in range(rng.randint(1, 14)):
            backlog.append(
                BacklogJob(
                    job_id=f"g{g}-j{i}",
                    group_key=group_key_for(org, app, target),
                    org_id=org,
                    app_version_id=app,
                    target=target,
                    priority=rng.randint(1, 10),
                    enqueued_at=enqueued + rng.uniform(0, 5),
                    position=i,
                    estimate_s=rng.choice([None, rng.uniform(0.1, 400.0)]),
                )
            )
    idle = []
    for a in range(rng.randint(0, 7)):
        installed = None
        if rng.random() < 0.5:
            installed = AppRef(rng.choice(orgs), rng.choice(apps))
        idle.append(IdleAgent(f"agent-{a}", rng.choice(targets), installed))
    running = [
        BusyAgent(
            f"busy-{b}",
            rng.choice(targets),
            group_key_for(rng.choice(orgs), rng.choice(apps), rng.choice(targets)),
            NOW + rng.uniform(-100, 3000),
        )
        for b in range(rng.randint(0, 4))
    ]
    return backlog, idle, running


def test_random_states_keep_every_planning_invariant() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        backlog, idle, running = _random_state(rng)
        cap = rng.randint(1, 6)
        policy = PlanningPolicy(
            max_batch_jobs=cap,
            aging_seconds=rng.choice([30.0, 120.0]),
            max_batch_seconds=rng.choice([60.0, 900.0]),
        )
        install_s = {t: rng.choice([0.5, 60.0, 300.0]) for t in INSTALL}
        index = {j.job_id: j for j in backlog}
        agent_index = {a.agent_id: a for a in idle}

        batches = plan_batches(backlog, idle, NOW, policy, running, install_s)

        planned = [job_id for b in batches for job_id in b.job_ids]
        assert len(planned) == len(set(planned)), "a job was planned twice"
        assert set(planned) <= set(index), "a job that is not in the backlog was planned"
        assert len({b.agent_id for b in batches}) == len(batches), "an agent got two batches"
        for batch in batches:
            assert 1 <= len(batch.job_ids) <= cap
            members = [index[j] for j in batch.job_ids]
            assert {j.group_key for j in members} == {batch.group_key}
            assert {j.target for j in members} == {batch.target}
            assert agent_index[batch.agent_id].target == batch.target
            warm = agent_index[batch.agent_id].installed == members[0].app
            assert batch.install_required is not warm
        waiting = {index[j].group_key for j in set(index) - set(planned)}
        for idle_agent in idle:
            held = idle_agent.installed and group_key_for(
                idle_agent.installed.org_id, idle_agent.installed.app_version_id, idle_agent.target
            )
            # An idle agent never idles next to work for the app it already holds.
            if held in waiting:
                assert idle_agent.agent_id in {b.agent_id for b in batches}
