"""The preemption core: which running batches yield to urgent work at a test boundary."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from qgjob_backend.config import Config
from qgjob_backend.domain.models import AppRef, group_key_for
from qgjob_backend.domain.planner import BacklogJob, IdleAgent, PlanningPolicy
from qgjob_backend.domain.preemption import (
    PreemptionPolicy,
    RunningBatch,
    YieldRequest,
    plan_yields,
    urgent_need,
)
from qgjob_backend.schema import JobStatus, SuiteSubmission, Target
from qgjob_backend.services.agents import LeasedBatch, ReportedResult
from tests.unit.backlog import backlog_jobs
from tests.unit.fakes import FakeClock, MemoryServices, build_memory_services, fake_config

NOW = 50_000.0
POLICY = PreemptionPolicy()  # max_wait_s 120, urgent pieces of 600 s once work waits
PIECES = PreemptionPolicy(urgent_piece_s=900.0)  # one agent per 900 s of an urgent group
WHOLE = PreemptionPolicy(urgent_piece_s=float("inf"))  # one agent per urgent group


def jobs(
    app: str,
    count: int,
    *,
    priority: int = 1,
    target: str = "emulator",
    estimate_s: float | None = 60.0,
    org: str = "acme",
) -> list[BacklogJob]:
    return backlog_jobs(
        org,
        app,
        count,
        target=target,
        priority=priority,
        enqueued_at=NOW - 5.0,
        estimate_s=estimate_s,
        prefix=f"{app}-{target}",
    )


def running(
    agent_id: str,
    *,
    ends_in: float,
    rest: int = 5,
    priority: int = 5,
    target: str = "emulator",
    yielding: bool = False,
    estimate_s: float | None = 60.0,
) -> RunningBatch:
    ids = tuple(f"{agent_id}-rest-{i}" for i in range(rest))
    return RunningBatch(
        agent_id=agent_id,
        target=target,
        group_key=group_key_for("other", "v1", target),
        priority=priority,
        remaining_job_ids=ids,
        remaining_estimates_s=(estimate_s,) * rest,
        current_ends_at=NOW + ends_in,
        batch_id=f"batch-{agent_id}",
        yielding=yielding,
    )


def yielded(
    backlog: list[BacklogJob],
    busy: list[RunningBatch],
    idle: list[IdleAgent] | None = None,
    policy: PreemptionPolicy = POLICY,
) -> list[str]:
    return [y.agent_id for y in plan_yields(backlog, idle or [], busy, NOW, policy)]


# ------------------------------------------------------------------ when nothing yields
def test_no_urgent_work_yields_nothing() -> None:
    assert yielded(jobs("v", 3, priority=2), [running("a", ends_in=10.0)]) == []


def test_an_idle_agent_of_the_pool_takes_urgent_work_instead() -> None:
    idle = [IdleAgent("free", "emulator", None)]
    assert yielded(jobs("v", 3), [running("a", ends_in=10.0)], idle) == []


def test_an_idle_agent_of_another_pool_does_not_count() -> None:
    idle = [IdleAgent("dev", "device", None)]
    assert yielded(jobs("v", 3), [running("a", ends_in=10.0)], idle) == ["a"]


def test_a_batch_ending_within_the_bound_is_waited_for() -> None:
    # b ends by itself in 110 s (50 + 1 x 60) <= 120 s: no yield, though a's test ends sooner.
    busy = [running("a", ends_in=5.0), running("b", ends_in=50.0, rest=1)]
    assert yielded(jobs("v", 3), busy) == []


def test_just_beyond_the_bound_a_batch_yields() -> None:
    busy = [running("a", ends_in=5.0), running("b", ends_in=61.0, rest=1)]  # b free in 121 s
    assert yielded(jobs("v", 3), busy) == ["a"]


def test_disabled_policy_yields_nothing() -> None:
    off = PreemptionPolicy(enabled=False)
    assert yielded(jobs("v", 3), [running("a", ends_in=5.0)], policy=off) == []


def test_urgent_work_never_shortens_urgent_work() -> None:
    busy = [running("a", ends_in=5.0, priority=1), running("b", ends_in=5.0, priority=1)]
    assert yielded(jobs("v", 3), busy) == []


def test_a_batch_on_its_last_test_or_already_yielding_is_left_alone() -> None:
    busy = [running("last", ends_in=500.0, rest=0), running("y", ends_in=500.0, yielding=True)]
    assert yielded(jobs("v", 3), busy) == []


def test_an_already_yielding_batch_counts_as_free_at_its_boundary() -> None:
    # y frees at its boundary in 30 s: that serves the urgent group, nobody else yields.
    busy = [running("a", ends_in=5.0), running("y", ends_in=30.0, rest=9, yielding=True)]
    assert yielded(jobs("v", 3), busy) == []


# ------------------------------------------------------------------ which ones
def test_the_least_urgent_batch_yields_among_those_ending_within_the_bound() -> None:
    busy = [
        running("p3", ends_in=5.0, priority=3),
        running("p7", ends_in=90.0, priority=7),
        running("p5", ends_in=20.0, priority=5),
    ]
    assert yielded(jobs("v", 3), busy) == ["p7"]


def test_ties_in_urgency_go_to_the_soonest_boundary() -> None:
    busy = [running("late", ends_in=100.0), running("soon", ends_in=20.0)]
    assert yielded(jobs("v", 3), busy) == ["soon"]


def test_beyond_the_bound_the_soonest_boundary_yields() -> None:
    busy = [
        running("slow", ends_in=400.0, priority=9),
        running("fast", ends_in=200.0, priority=3),
    ]
    assert yielded(jobs("v", 3), busy) == ["fast"]


def test_beyond_the_bound_a_batch_ending_first_by_itself_makes_a_yield_pointless() -> None:
    # b is free by itself in 150 s (its last test); a's boundary is only in 300 s.
    busy = [running("a", ends_in=300.0), running("b", ends_in=150.0, rest=0)]
    assert yielded(jobs("v", 3), busy) == []


# ------------------------------------------------------------------ how many
def test_one_yield_per_urgent_group_not_per_job() -> None:
    busy = [running(f"a{i}", ends_in=10.0 + i) for i in range(5)]
    urgent = jobs("v1", 4) + jobs("v2", 2)
    assert yielded(urgent, busy) == ["a0", "a1"]


def older_work() -> list[BacklogJob]:
    """A less urgent job that was waiting before the urgent work arrived."""
    return backlog_jobs("acme", "old", 1, priority=5, enqueued_at=NOW - 600.0, prefix="old")


def test_a_long_urgent_group_that_arrived_into_a_queue_needs_one_agent_per_piece() -> None:
    # 20 x 100 s = 2000 s of urgent work: ceil(2000 / 900) = 3 agents, ceil(2000 / 600) = 4.
    busy = [running(f"a{i}", ends_in=10.0 + i) for i in range(5)]
    urgent = older_work() + jobs("v", 20, estimate_s=100.0)
    assert yielded(urgent, busy, policy=PIECES) == ["a0", "a1", "a2"]
    assert yielded(urgent, busy) == ["a0", "a1", "a2", "a3"]
    assert yielded(urgent, busy, policy=WHOLE) == ["a0"]


def test_urgent_work_that_was_waiting_all_along_needs_one_agent_per_group() -> None:
    # Nothing older waits (a burst at once): the planner keeps the group whole, so one.
    busy = [running(f"a{i}", ends_in=10.0 + i) for i in range(5)]
    assert yielded(jobs("v", 20, estimate_s=100.0), busy, policy=PIECES) == ["a0"]


def test_the_need_is_met_first_by_idle_agents_then_by_batches_ending_soon() -> None:
    busy = [
        running("soon", ends_in=10.0, rest=1),  # free in 70 s by itself
        running("a", ends_in=15.0),
        running("b", ends_in=20.0),
        running("c", ends_in=25.0),
    ]
    idle = [IdleAgent("free", "emulator", None)]
    urgent = jobs("v1", 1) + jobs("v2", 1) + jobs("v3", 1) + jobs("v4", 1)
    assert yielded(urgent, busy, idle) == ["a", "b"]


def test_never_more_yields_than_batches() -> None:
    busy = [running("a", ends_in=10.0), running("b", ends_in=10.0)]
    urgent = [j for n in range(6) for j in jobs(f"v{n}", 1)]
    assert yielded(urgent, busy) == ["a", "b"]


def test_urgent_need_counts_unknown_estimates_as_the_planner_does() -> None:
    policy = PreemptionPolicy(urgent_piece_s=100.0)
    assert policy.unknown_estimate_s == PlanningPolicy().unknown_estimate_s
    # 3 jobs without estimates count 90 s each: 270 s, ceil(270 / 100) = 3 pieces.
    assert urgent_need(older_work() + jobs("v", 3, estimate_s=None), "emulator", policy) == 3
    # never more pieces than jobs, at least one per group
    assert urgent_need(older_work() + jobs("v", 1, estimate_s=5000.0), "emulator", policy) == 1
    # pieces only for work that arrived after older work of the pool: one agent otherwise
    assert urgent_need(jobs("v", 3, estimate_s=None), "emulator", policy) == 1
    assert urgent_need(jobs("v", 2, priority=2), "emulator", policy) == 0


def test_pools_are_separate() -> None:
    busy = [
        running("emu", ends_in=10.0),
        running("dev", ends_in=10.0, target="device"),
        running("dev2", ends_in=20.0, target="device"),
    ]
    urgent = jobs("v", 2, target="device")
    assert yielded(urgent, busy) == ["dev"]


def test_the_request_names_the_batch_its_boundary_and_what_it_hands_back() -> None:
    batch = running("a", ends_in=12.0, rest=2)
    [request] = plan_yields(jobs("v", 1), [], [batch], NOW, POLICY)
    assert request == YieldRequest(
        agent_id="a",
        batch_id="batch-a",
        target="emulator",
        at=NOW + 12.0,
        job_ids=("a-rest-0", "a-rest-1"),
    )


def test_running_batch_rejects_mismatched_remaining() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        RunningBatch("a", "emulator", "g", 5, ("x", "y"), (1.0,), NOW)


def test_deterministic_whatever_the_input_order() -> None:
    rng = random.Random(7)
    busy = [
        running(f"a{i}", ends_in=rng.uniform(0, 400), priority=rng.randint(2, 9)) for i in range(12)
    ]
    urgent = [j for n in range(5) for j in jobs(f"v{n}", 3)]
    first = plan_yields(urgent, [], busy, NOW, POLICY)
    assert len(first) == 5
    for _ in range(5):
        rng.shuffle(busy)
        rng.shuffle(urgent)
        assert plan_yields(urgent, [], busy, NOW, POLICY) == first


# ------------------------------------------------------------------ the dispatcher's step
SVC_SETTINGS = fake_config(lease_seconds=600.0, batch_max_jobs=25, agent_offline_seconds=900.0)


def busy_pool(settings: Config = SVC_SETTINGS) -> tuple[MemoryServices, dict[str, LeasedBatch]]:
    """Two emulators, each on the first test of a six-test priority-5 batch."""
    svc = build_memory_services(settings, FakeClock(1_000_000.0))
    for org in ("acme", "beta"):
        paths = [f"tests/{org}{i}.spec.js" for i in range(6)]
        svc.submissions.submit(
            org,
            SuiteSubmission(
                org_id=org, app_version_id="v1", target="emulator", priority=5, test_paths=paths
            ),
        )
    leased = {}
    for device in ("d1", "d2"):
        agent_id = svc.as_agent.register(Target.EMULATOR, device, None).agent_id
        batch = svc.as_agent.lease(agent_id)
        assert batch is not None
        assert len(batch.jobs) == 6
        svc.as_agent.record_install(agent_id, batch.batch.batch_id)
        svc.as_agent.start(agent_id, batch.jobs[0].job_id, batch.batch.batch_id)
        leased[agent_id] = batch
    return svc, leased


def urgent(svc: MemoryServices) -> str:
    result = svc.submissions.submit(
        "acme",
        SuiteSubmission(
            org_id="acme",
            app_version_id="hotfix",
            target="emulator",
            priority=1,
            test_paths=["tests/hotfix.spec.js"],
        ),
    )
    return result.jobs[0].job_id


def test_the_dispatcher_asks_one_busy_batch_to_yield_and_it_hands_back_the_rest() -> None:
    svc, leased = busy_pool()
    svc.clock.advance(30.0)
    hotfix = urgent(svc)

    assert svc.dispatcher.plan() == []  # nobody is idle
    asked = [a for a in leased if svc.as_agent.heartbeat(a).agent.yield_requested]
    assert len(asked) == 1  # one urgent job needs one agent
    [agent_id] = asked
    batch = leased[agent_id]
    batch_id = batch.batch.batch_id
    first, rest = batch.jobs[0].job_id, [j.job_id for j in batch.jobs[1:]]
    # The agent sees it in its progress answer too, reports its test and completes.
    answer = svc.agents.progress(
        svc.as_agent.credential(agent_id),
        batch_id,
        results=[ReportedResult(first, JobStatus.PASSED, 60.0)],
        complete=True,
    )
    assert answer.yield_requested
    assert answer.completed
    assert answer.requeued == 5
    for job_id in rest:  # handed back: queued again, no attempt spent
        job = svc.store.get_job(job_id)
        assert job is not None
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
    # Its next lease is the urgent job.
    nxt = svc.as_agent.lease(agent_id)
    assert nxt is not None
    assert [j.job_id for j in nxt.jobs] == [hotfix]
    assert not svc.as_agent.heartbeat(agent_id).agent.yield_requested  # a new batch
    # The other agent was left alone; nothing is lost or run twice in the end.
    other = next(a for a in leased if a != agent_id)
    assert not svc.as_agent.heartbeat(other).agent.yield_requested


def test_no_yield_when_an_idle_agent_or_a_batch_ending_soon_can_take_it() -> None:
    svc, leased = busy_pool()
    idle = svc.as_agent.register(Target.EMULATOR, "d3", None).agent_id
    hotfix = urgent(svc)

    planned = svc.dispatcher.plan()

    assert [b.job_ids for b in planned] == [[hotfix]]
    assert planned[0].agent_id == idle
    assert not any(svc.as_agent.heartbeat(a).agent.yield_requested for a in leased)


def test_no_yield_without_urgent_work_or_when_disabled() -> None:
    svc, leased = busy_pool()
    svc.submissions.submit(
        "acme",
        SuiteSubmission(
            org_id="acme", app_version_id="v7", target="emulator", priority=2, test_paths=["t"]
        ),
    )
    svc.dispatcher.plan()
    assert not any(svc.as_agent.heartbeat(a).agent.yield_requested for a in leased)

    off, leased_off = busy_pool(replace(SVC_SETTINGS, preempt_wait_seconds=None))
    urgent(off)
    off.dispatcher.plan()
    assert not any(off.as_agent.heartbeat(a).agent.yield_requested for a in leased_off)


def test_planning_twice_asks_no_second_batch() -> None:
    svc, leased = busy_pool()
    urgent(svc)

    asks: list[str] = []
    request_yield = svc.store.request_yield

    def spy(agent_id: str, batch_id: str, now: float) -> bool:
        asks.append(agent_id)
        return request_yield(agent_id, batch_id, now)

    svc.store.request_yield = spy  # type: ignore[method-assign]
    svc.dispatcher.plan()
    svc.dispatcher.plan()  # the first batch yields already: it frees at its boundary

    assert len(asks) == 1
    assert sum(svc.as_agent.heartbeat(a).agent.yield_requested for a in leased) == 1


def test_a_batch_running_the_urgent_group_serves_its_rest() -> None:
    # "holder" already runs group v (urgent): the planner keeps v's rest for it, so no
    # other batch yields for that rest (it would only be asked again at every event).
    holder = replace(
        running("holder", ends_in=400.0, priority=1), group_key=jobs("v", 1)[0].group_key
    )
    busy = [holder, running("a", ends_in=10.0)]
    assert yielded(jobs("v", 3), busy) == []
    # ... but a second urgent group still gets an agent.
    assert yielded(jobs("v", 3) + jobs("w", 1), busy) == ["a"]
    late = older_work() + jobs("v", 20, estimate_s=100.0)
    assert urgent_need(late, "emulator", PIECES, [holder]) == 2
    assert urgent_need(late, "emulator", WHOLE, [holder]) == 0
    assert urgent_need(jobs("v", 20, estimate_s=100.0), "emulator", PIECES, [holder]) == 0


def test_a_batch_holding_the_urgent_groups_app_yields_first_even_with_agents_idle() -> None:
    # The planner gives the urgent group to the agent holding its app: make it free soon.
    group = jobs("v", 1)[0].group_key
    holder = replace(running("holder", ends_in=60.0, priority=5), group_key=group)
    idle = [IdleAgent("free", "emulator", None)]
    busy = [holder, running("a", ends_in=10.0)]
    assert yielded(jobs("v", 3), busy, idle) == ["holder"]
    # Free within the bound by itself: nobody yields.
    soon = replace(holder, remaining_job_ids=("x",), remaining_estimates_s=(30.0,))
    assert yielded(jobs("v", 3), [soon, running("a", ends_in=10.0)], idle) == []
    # Two holders: the soonest boundary yields.
    other = replace(holder, agent_id="holder2", current_ends_at=NOW + 20.0)
    assert yielded(jobs("v", 3), [holder, other], idle) == ["holder2"]


def test_a_yield_the_planner_would_not_use_is_not_asked() -> None:
    # The planner starts an urgent piece on a cold agent up to an install later rather than
    # on an agent whose app a waiting group needs, and a yielded agent is such an agent
    # (its rest waits). "cold" is free by itself at +150; "a" yields at +20, +156 install.
    cold = running("cold", ends_in=150.0, rest=0)
    busy = [cold, running("a", ends_in=20.0)]
    install = {"emulator": 156.0}
    assert [y.agent_id for y in plan_yields(jobs("v", 1), [], busy, NOW, POLICY, install)] == []
    # With installs for free the yield starts the urgent work sooner, so it is asked.
    assert [y.agent_id for y in plan_yields(jobs("v", 1), [], busy, NOW, POLICY)] == ["a"]


def test_an_idle_agent_holding_a_waiting_groups_app_counts_one_install_later() -> None:
    warm = IdleAgent("warm", "emulator", AppRef("acme", "old"))
    waiting = jobs("v", 1) + jobs("old", 2, priority=5)
    busy = [running("a", ends_in=10.0)]
    # The warm idle agent starts it at +200 (install), sooner than a yield (+10 +200).
    install = {"emulator": 200.0}
    assert plan_yields(waiting, [warm], busy, NOW, POLICY, install) == []
    # Holding an app no waiting group needs, it is simply free now.
    cold = IdleAgent("cold", "emulator", AppRef("acme", "gone"))
    assert plan_yields(waiting, [cold], busy, NOW, POLICY, install) == []
    # A batch whose group waits frees one install later too: w at +30 +200 is past the
    # bound and later than a's yield (+10 +200), so a yields; a cold w at +30 is in time.
    warm_batch = replace(running("w", ends_in=30.0, rest=0), group_key=waiting[1].group_key)
    got = plan_yields(waiting, [], [warm_batch, running("a", ends_in=10.0)], NOW, POLICY, install)
    assert [y.agent_id for y in got] == ["a"]
    cold_batch = running("w", ends_in=30.0, rest=0)
    got = plan_yields(waiting, [], [cold_batch, running("a", ends_in=10.0)], NOW, POLICY, install)
    assert got == []


def test_a_batch_ends_when_the_planner_expects_it_to() -> None:
    # The remaining estimates say +310 s, the planner +100 s: the core agrees with the
    # planner (otherwise a freed agent would be passed over and asked again and again).
    planned = replace(running("p", ends_in=10.0), planned_free_at=NOW + 100.0)
    assert yielded(jobs("v", 1), [planned, running("a", ends_in=5.0)]) == []
    assert yielded(jobs("v", 1), [running("p", ends_in=10.0), running("a", ends_in=5.0)]) == ["a"]
