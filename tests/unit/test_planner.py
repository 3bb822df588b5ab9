"""The pure planning core: which idle agent gets which batch of which group."""

from __future__ import annotations

import random

import pytest

from qgjob_backend.domain.models import AppRef, group_key_for
from qgjob_backend.domain.planner import (
    BacklogJob,
    IdleAgent,
    PlannedBatch,
    PlanningPolicy,
    plan_batches,
)

NOW = 10_000.0
POLICY = PlanningPolicy(max_batch_jobs=5, aging_seconds=100.0)


def jobs(
    org: str,
    app: str,
    count: int,
    *,
    target: str = "emulator",
    priority: int = 5,
    enqueued_at: float = NOW,
    prefix: str | None = None,
) -> list[BacklogJob]:
    """``count`` jobs of one group, positions 0..count-1 (suite order)."""
    name = prefix or f"{org}-{app}-{target}"
    return [
        BacklogJob(
            job_id=f"{name}-{i:03d}",
            group_key=group_key_for(org, app, target),
            org_id=org,
            app_version_id=app,
            target=target,
            priority=priority,
            enqueued_at=enqueued_at,
            position=i,
        )
        for i in range(count)
    ]


def agent(agent_id: str, target: str = "emulator", installed: AppRef | None = None) -> IdleAgent:
    return IdleAgent(agent_id=agent_id, target=target, installed=installed)


def by_agent(plan: list[PlannedBatch]) -> dict[str, PlannedBatch]:
    return {b.agent_id: b for b in plan}


# ------------------------------------------------------------------ basics
def test_empty_backlog_plans_nothing() -> None:
    assert plan_batches([], [agent("a1"), agent("a2")], NOW, POLICY) == []


def test_no_agents_plans_nothing() -> None:
    assert plan_batches(jobs("acme", "v1", 3), [], NOW, POLICY) == []


def test_one_group_that_fits_goes_to_exactly_one_agent() -> None:
    backlog = jobs("acme", "v1", 4)

    plan = plan_batches(backlog, [agent("a1"), agent("a2"), agent("a3")], NOW, POLICY)

    assert len(plan) == 1
    (batch,) = plan
    assert batch.agent_id == "a1"  # agents are taken in id order: deterministic
    assert batch.job_ids == tuple(j.job_id for j in backlog)
    assert batch.group_key == "acme/v1/emulator"
    assert (batch.org_id, batch.app_version_id, batch.target) == ("acme", "v1", "emulator")
    assert batch.install_required is True


def test_group_larger_than_a_batch_is_split_across_idle_agents() -> None:
    backlog = jobs("acme", "v1", 12)  # cap 5 -> 5 + 5 + 2

    plan = plan_batches(backlog, [agent(f"a{i}") for i in range(1, 6)], NOW, POLICY)

    assert [len(b.job_ids) for b in plan] == [5, 5, 2]
    assert [b.agent_id for b in plan] == ["a1", "a2", "a3"]
    planned = [j for b in plan for j in b.job_ids]
    assert planned == [j.job_id for j in backlog]  # in suite order, each once
    assert all(b.install_required for b in plan)


def test_batches_never_exceed_the_cap_even_with_one_agent() -> None:
    plan = plan_batches(jobs("acme", "v1", 12), [agent("a1")], NOW, POLICY)

    assert len(plan) == 1
    assert len(plan[0].job_ids) == POLICY.max_batch_jobs


def test_batches_never_mix_groups_or_targets() -> None:
    backlog = (
        jobs("acme", "v1", 3)
        + jobs("acme", "v2", 3)
        + jobs("globex", "v1", 3)
        + jobs("acme", "v1", 3, target="device")
    )
    agents = [agent(f"e{i}") for i in range(4)] + [agent(f"d{i}", "device") for i in range(2)]
    index = {j.job_id: j for j in backlog}

    plan = plan_batches(backlog, agents, NOW, POLICY)

    assert len(plan) == 4
    for batch in plan:
        members = [index[j] for j in batch.job_ids]
        assert {j.group_key for j in members} == {batch.group_key}
        assert {j.target for j in members} == {batch.target}
        assert batch.agent_id.startswith("d" if batch.target == "device" else "e")


def test_agents_of_another_target_are_left_alone() -> None:
    backlog = jobs("acme", "v1", 3, target="emulator")

    plan = plan_batches(backlog, [agent("d1", "device"), agent("b1", "browserstack")], NOW, POLICY)

    assert plan == []


# ------------------------------------------------------------------ warm agents
def test_warm_agent_gets_its_group_without_install() -> None:
    backlog = jobs("acme", "v1", 3, priority=1) + jobs("acme", "v2", 3, priority=9)
    agents = [agent("a1"), agent("a2", installed=AppRef("acme", "v2"))]

    plan = by_agent(plan_batches(backlog, agents, NOW, POLICY))

    assert plan["a2"].app_version_id == "v2"
    assert plan["a2"].install_required is False
    assert plan["a1"].app_version_id == "v1"
    assert plan["a1"].install_required is True


def test_warm_agent_beats_a_more_urgent_group_it_would_have_to_install() -> None:
    backlog = jobs("acme", "v1", 3, priority=1) + jobs("acme", "v2", 3, priority=9)

    plan = plan_batches(backlog, [agent("a1", installed=AppRef("acme", "v2"))], NOW, POLICY)

    assert len(plan) == 1
    assert plan[0].app_version_id == "v2"
    assert plan[0].install_required is False


def test_same_app_version_of_another_org_is_not_warm() -> None:
    backlog = jobs("acme", "v1", 3)

    plan = plan_batches(backlog, [agent("a1", installed=AppRef("globex", "v1"))], NOW, POLICY)

    assert len(plan) == 1
    assert plan[0].install_required is True


def test_two_warm_agents_share_a_large_group_without_installs() -> None:
    backlog = jobs("acme", "v1", 8)
    warm = AppRef("acme", "v1")

    plan = plan_batches(
        backlog, [agent("a1", installed=warm), agent("a2", installed=warm)], NOW, POLICY
    )

    assert [(b.agent_id, len(b.job_ids), b.install_required) for b in plan] == [
        ("a1", 5, False),
        ("a2", 3, False),
    ]


def test_warm_agent_without_work_for_its_app_takes_another_group() -> None:
    backlog = jobs("acme", "v1", 2)
    warm = AppRef("acme", "v1")

    plan = plan_batches(
        backlog, [agent("a1", installed=warm), agent("a2", installed=warm)], NOW, POLICY
    )

    # a1 takes the whole group; a2 has nothing left to do (no pointless split).
    assert [(b.agent_id, len(b.job_ids)) for b in plan] == [("a1", 2)]


# ------------------------------------------------------------------ urgency
def test_more_groups_than_agents_serves_the_most_urgent_first() -> None:
    backlog = (
        jobs("acme", "low", 2, priority=5)
        + jobs("acme", "urgent", 2, priority=1)
        + jobs("acme", "lowest", 2, priority=10)
    )

    plan = plan_batches(backlog, [agent("a1"), agent("a2")], NOW, POLICY)

    assert [b.app_version_id for b in plan] == ["urgent", "low"]


def test_equal_priority_serves_the_oldest_group_first() -> None:
    backlog = jobs("acme", "new", 2, enqueued_at=NOW) + jobs("acme", "old", 2, enqueued_at=NOW - 5)

    plan = plan_batches(backlog, [agent("a1")], NOW, POLICY)

    assert [b.app_version_id for b in plan] == ["old"]


@pytest.mark.parametrize(
    ("waited", "winner"),
    [
        (0.0, "fresh-p1"),
        (700.0, "fresh-p1"),  # 9 - 7 levels = 2 > 1: still less urgent
        (900.0, "old-p9"),  # 9 - 9 levels = 0 < 1: aging wins
    ],
)
def test_aging_lets_a_long_waiting_low_priority_group_win(waited: float, winner: str) -> None:
    backlog = jobs("acme", "old-p9", 2, priority=9, enqueued_at=NOW - waited) + jobs(
        "acme", "fresh-p1", 2, priority=1, enqueued_at=NOW
    )

    plan = plan_batches(backlog, [agent("a1")], NOW, POLICY)

    assert [b.app_version_id for b in plan] == [winner]


def test_more_urgent_jobs_of_a_mixed_group_go_first() -> None:
    # Two runs of one app version and target share a group; the urgent run leads the batch.
    slow = jobs("acme", "v1", 3, priority=7, prefix="slow")
    fast = jobs("acme", "v1", 3, priority=2, prefix="fast")

    plan = plan_batches(slow + fast, [agent("a1")], NOW, POLICY)

    assert plan[0].job_ids == (
        "fast-000",
        "fast-001",
        "fast-002",
        "slow-000",
        "slow-001",
    )


# ------------------------------------------------------------------ order and determinism
def test_suite_order_is_kept_inside_a_batch() -> None:
    # Job ids sort in the opposite order of the suite: position must win over the id.
    backlog = [
        BacklogJob(
            job_id=f"job-{9 - i}",
            group_key="acme/v1/emulator",
            org_id="acme",
            app_version_id="v1",
            target="emulator",
            priority=5,
            enqueued_at=NOW,
            position=i,
        )
        for i in range(5)
    ]
    shuffled = list(backlog)
    random.Random(7).shuffle(shuffled)

    plan = plan_batches(shuffled, [agent("a1")], NOW, POLICY)

    assert plan[0].job_ids == ("job-9", "job-8", "job-7", "job-6", "job-5")


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
    expected = plan_batches(backlog, agents, NOW, POLICY)

    rng = random.Random(99)
    for _ in range(20):
        shuffled_jobs, shuffled_agents = list(backlog), list(agents)
        rng.shuffle(shuffled_jobs)
        rng.shuffle(shuffled_agents)
        assert plan_batches(shuffled_jobs, shuffled_agents, NOW, POLICY) == expected
    assert plan_batches(backlog, agents, NOW, POLICY) == expected


# ------------------------------------------------------------------ properties
def _random_backlog(rng: random.Random) -> tuple[list[BacklogJob], list[IdleAgent]]:
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
                )
            )
    agents = []
    for a in range(rng.randint(0, 7)):
        installed = None
        if rng.random() < 0.5:
            installed = AppRef(rng.choice(orgs), rng.choice(apps))
        agents.append(IdleAgent(f"agent-{a}", rng.choice(targets), installed))
    return backlog, agents


def test_random_backlogs_keep_every_planning_invariant() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        backlog, agents = _random_backlog(rng)
        cap = rng.randint(1, 6)
        policy = PlanningPolicy(max_batch_jobs=cap, aging_seconds=rng.choice([30.0, 120.0]))
        index = {j.job_id: j for j in backlog}
        agent_index = {a.agent_id: a for a in agents}

        plan = plan_batches(backlog, agents, NOW, policy)

        planned = [job_id for b in plan for job_id in b.job_ids]
        assert len(planned) == len(set(planned)), "a job was planned twice"
        assert set(planned) <= set(index), "a job that is not in the backlog was planned"
        assert len({b.agent_id for b in plan}) == len(plan), "an agent got two batches"
        for batch in plan:
            assert 1 <= len(batch.job_ids) <= cap
            members = [index[j] for j in batch.job_ids]
            assert {j.group_key for j in members} == {batch.group_key}
            assert {j.target for j in members} == {batch.target}
            assert agent_index[batch.agent_id].target == batch.target
            warm = agent_index[batch.agent_id].installed == members[0].app
            assert batch.install_required is not warm
        # Work is never left waiting while an agent of its target stays idle.
        busy = {b.agent_id for b in plan}
        leftover_targets = {index[j].target for j in set(index) - set(planned)}
        idle_targets = {a.target for a in agents if a.agent_id not in busy}
        assert not leftover_targets & idle_targets


def test_a_group_a_busy_agent_is_running_waits_for_it_instead_of_a_second_install() -> None:
    tail = [
        BacklogJob(f"j{i}", "acme/v1/emulator", "acme", "v1", "emulator", 5, 0.0, i)
        for i in range(3)
    ]
    cold = [IdleAgent("emulator-2", "emulator", None)]
    policy = PlanningPolicy(max_batch_jobs=25)

    assert plan_batches(tail, cold, 0.0, policy, busy_groups={"acme/v1/emulator"}) == []
    assert len(plan_batches(tail, cold, 0.0, policy)) == 1


def test_a_busy_group_with_a_full_batch_waiting_is_still_split() -> None:
    backlog = [
        BacklogJob(f"j{i}", "acme/v1/emulator", "acme", "v1", "emulator", 5, 0.0, i)
        for i in range(4)
    ]
    cold = [IdleAgent("emulator-2", "emulator", None)]

    plan = plan_batches(
        backlog, cold, 0.0, PlanningPolicy(max_batch_jobs=4), busy_groups={"acme/v1/emulator"}
    )

    assert [(p.agent_id, len(p.job_ids), p.install_required) for p in plan] == [
        ("emulator-2", 4, True)
    ]
