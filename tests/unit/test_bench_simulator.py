"""The simulator and the schedule checker on tiny traces computed by hand, for every policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import pytest

from bench.metrics import compute_metrics, percentile
from bench.policies import (
    FifoPolicy,
    FixedBatchPolicy,
    GroupSequentialPolicy,
    LptShardsPolicy,
    QgjobPolicy,
)
from bench.simulator import (
    Assignment,
    PlanningState,
    PolicyError,
    QueuedJob,
    Schedule,
    Segment,
    SimulationStalled,
    Yield,
    schedule_from_json,
    schedule_to_json,
    simulate,
    validate_schedule,
)
from bench.trace import Family, Trace, parse_trace
from qgjob_backend.domain.planner import PlanningPolicy
from qgjob_backend.domain.preemption import PreemptionPolicy
from tests.unit.fakes import PlanSpy

A = Family("acme", "v1", "emulator")
B = Family("acme", "v2", "emulator")


def make_trace(
    agents: int = 2,
    jobs: Sequence[tuple[str, Family, float, float]] = (),
    warm: dict[int, tuple[str, str]] | None = None,
    install_s: float = 10.0,
    priorities: dict[str, int] | None = None,
) -> Trace:
    """``agents`` cold emulators e1..eN; jobs: (id, family, duration, arrival)."""
    warm = warm or {}
    priorities = priorities or {}
    data: dict[str, Any] = {
        "agents": [
            {
                "id": f"e{i}",
                "target": "emulator",
                "installed": (
                    {"org_id": warm[i][0], "app_version_id": warm[i][1]} if i in warm else None
                ),
            }
            for i in range(1, agents + 1)
        ],
        "install_s": {"emulator": install_s},
        "jobs": [
            {
                "id": job_id,
                "arrival_s": arrival,
                "org_id": family.org_id,
                "app_version_id": family.app_version_id,
                "target": family.target,
                "test_path": f"tests/{job_id}.spec.ts",
                "priority": priorities.get(job_id, 5),
                "duration_s": duration,
                "estimate_s": duration,
            }
            for job_id, family, duration, arrival in jobs
        ],
    }
    return parse_trace(data)


# A: 40 + 30 + 20 + 10 = 100 s, B: 50 s, all at 0, install 10 s.
SMALL_JOBS = [
    ("a1", A, 40.0, 0.0),
    ("a2", A, 30.0, 0.0),
    ("a3", A, 20.0, 0.0),
    ("a4", A, 10.0, 0.0),
    ("b1", B, 50.0, 0.0),
]


def lanes(schedule: Schedule) -> dict[str, list[tuple[str, str | None, float, float]]]:
    return {
        agent: [(s.kind, s.job_id or s.app_version_id, s.start_s, s.end_s) for s in segs]
        for agent, segs in schedule.items()
    }


def test_fifo_takes_the_oldest_job_and_installs_whenever_the_version_differs() -> None:
    trace = make_trace(2, SMALL_JOBS)

    result = simulate(trace, FifoPolicy())

    assert lanes(result.schedule) == {
        "e1": [
            ("install", "v1", 0, 10),
            ("test", "a1", 10, 50),
            ("test", "a4", 50, 60),  # e1 holds v1 already
            ("install", "v2", 60, 70),
            ("test", "b1", 70, 120),
        ],
        "e2": [("install", "v1", 0, 10), ("test", "a2", 10, 40), ("test", "a3", 40, 60)],
    }
    metrics = compute_metrics(trace, result.schedule)
    assert (metrics.makespan_s, metrics.installs) == (120, 3)
    assert metrics.installs_lower_bound_at_makespan == 2  # one per family at T=120
    assert metrics.mean_wait_s == pytest.approx((10 + 10 + 40 + 50 + 70) / 5)
    assert metrics.p95_wait_s == 70
    assert metrics.p95_wait_s_by_priority[5] == 70
    assert metrics.p95_wait_s_by_priority[1] is None
    assert metrics.utilization == pytest.approx((120 + 60) / (2 * 120))


def test_group_sequential_runs_each_family_whole_on_one_agent() -> None:
    result = simulate(make_trace(2, SMALL_JOBS), GroupSequentialPolicy())

    assert lanes(result.schedule) == {
        "e1": [
            ("install", "v1", 0, 10),
            ("test", "a1", 10, 50),
            ("test", "a2", 50, 80),
            ("test", "a3", 80, 100),
            ("test", "a4", 100, 110),
        ],
        "e2": [("install", "v2", 0, 10), ("test", "b1", 10, 60)],
    }


def test_fixed_batch_cuts_families_into_fixed_size_batches() -> None:
    trace = make_trace(2, SMALL_JOBS)

    result = simulate(trace, FixedBatchPolicy(batch_jobs=2))

    assert lanes(result.schedule) == {
        "e1": [("install", "v1", 0, 10), ("test", "a1", 10, 50), ("test", "a2", 50, 80)],
        "e2": [
            ("install", "v1", 0, 10),
            ("test", "a3", 10, 30),
            ("test", "a4", 30, 40),
            ("install", "v2", 40, 50),
            ("test", "b1", 50, 100),
        ],
    }
    metrics = compute_metrics(trace, result.schedule)
    assert (metrics.makespan_s, metrics.installs) == (100, 3)


def test_lpt_shards_splits_the_big_family_longest_first() -> None:
    trace = make_trace(3, SMALL_JOBS)

    result = simulate(trace, LptShardsPolicy())

    # 3 free agents, 2 families: A gets 2 shards by LPT ({a1, a4} and {a2, a3}: 50 s each).
    assert lanes(result.schedule) == {
        "e1": [("install", "v1", 0, 10), ("test", "a1", 10, 50), ("test", "a4", 50, 60)],
        "e2": [("install", "v1", 0, 10), ("test", "a2", 10, 40), ("test", "a3", 40, 60)],
        "e3": [("install", "v2", 0, 10), ("test", "b1", 10, 60)],
    }
    metrics = compute_metrics(trace, result.schedule)
    assert (metrics.makespan_s, metrics.installs) == (60, 3)
    assert metrics.installs_lower_bound_at_makespan == 3  # and 60 is the makespan bound


def test_qgjob_runs_the_dispatchers_planner() -> None:
    trace = make_trace(2, SMALL_JOBS)

    whole = simulate(trace, QgjobPolicy())
    capped = simulate(trace, QgjobPolicy(PlanningPolicy(max_batch_jobs=2, aging_seconds=120)))

    assert lanes(whole.schedule) == lanes(simulate(trace, GroupSequentialPolicy()).schedule)
    # Cap 2: e1 takes a1, a2; e2 takes B. When e2 is free at 60, installing v1 there
    # would end A less than min_split_gain_s sooner, so e1 runs the rest of A.
    assert lanes(capped.schedule) == {
        "e1": [
            ("install", "v1", 0, 10),
            ("test", "a1", 10, 50),
            ("test", "a2", 50, 80),
            ("test", "a3", 80, 100),
            ("test", "a4", 100, 110),
        ],
        "e2": [("install", "v2", 0, 10), ("test", "b1", 10, 60)],
    }


def test_a_warm_agent_skips_the_install() -> None:
    trace = make_trace(1, [("a1", A, 40.0, 0.0)], warm={1: ("acme", "v1")})

    result = simulate(trace, FifoPolicy())

    assert lanes(result.schedule) == {"e1": [("test", "a1", 0, 40)]}
    assert compute_metrics(trace, result.schedule).installs_lower_bound_at_makespan == 0


def test_arrivals_wake_the_policy_and_waits_count_from_arrival() -> None:
    trace = make_trace(1, [("a1", A, 40.0, 0.0), ("a2", A, 30.0, 5.0), ("b1", B, 10.0, 100.0)])

    result = simulate(trace, FifoPolicy())

    assert lanes(result.schedule) == {
        "e1": [
            ("install", "v1", 0, 10),
            ("test", "a1", 10, 50),
            ("test", "a2", 50, 80),
            ("install", "v2", 100, 110),
            ("test", "b1", 110, 120),
        ]
    }
    metrics = compute_metrics(trace, result.schedule)
    assert metrics.mean_wait_s == pytest.approx((10 + 45 + 10) / 3)
    assert metrics.installs_lower_bound_at_makespan is None  # arrivals: no bound at T


class WaitUntil:
    """Assigns nothing before ``ready_s``; then each idle agent takes one waiting job."""

    name = "wait_until"

    def __init__(self, ready_s: float, *, time_dependent: bool = True) -> None:
        self.ready_s = ready_s
        self.time_dependent = time_dependent
        self.calls: list[float] = []

    def plan(self, state: PlanningState) -> list[Assignment]:
        self.calls.append(state.now)
        if state.now < self.ready_s:
            return []
        return [
            Assignment(agent.agent_id, job.family, (job.job_id,))
            for agent, job in zip(state.idle, state.backlog, strict=False)
        ]


def test_the_dispatcher_schedule_replans_while_jobs_wait_with_idle_agents() -> None:
    trace = make_trace(1, [("a1", A, 40.0, 0.0)])
    policy = WaitUntil(100.0)

    result = simulate(trace, policy, tick_s=60.0)

    assert policy.calls == [0.0, 60.0, 120.0]
    assert lanes(result.schedule) == {"e1": [("install", "v1", 120, 130), ("test", "a1", 130, 170)]}


def test_a_policy_that_never_assigns_stalls_the_simulation() -> None:
    with pytest.raises(SimulationStalled, match="1 jobs wait"):
        simulate(make_trace(1, [("a1", A, 40.0, 0.0)]), WaitUntil(1e9), tick_s=None)


class Scripted:
    name = "scripted"

    def __init__(self, *assignments: Assignment) -> None:
        self.assignments = list(assignments)

    def plan(self, state: PlanningState) -> list[Assignment]:
        out, self.assignments = self.assignments, []
        return out


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (Assignment("e9", A, ("a1",)), "not idle"),
        (Assignment("e1", A, ()), "empty batch"),
        (Assignment("e1", A, ("a1", "a1")), "repeated job"),
        (Assignment("e1", A, ("b1",)), "not waiting in family"),
        (Assignment("e1", A, ("zz",)), "not waiting in family"),
        (Assignment("e1", Family("acme", "v1", "device"), ("a1",)), "given to a emulator"),
    ],
)
def test_impossible_batches_are_policy_errors(assignment: Assignment, message: str) -> None:
    trace = make_trace(1, [("a1", A, 40.0, 0.0), ("b1", B, 5.0, 0.0)])

    with pytest.raises(PolicyError, match=message):
        simulate(trace, Scripted(assignment))


def test_the_planner_never_sees_true_durations() -> None:
    seen: list[QueuedJob] = []

    class Spy(FifoPolicy):
        def plan(self, state: PlanningState) -> list[Assignment]:
            seen.extend(state.backlog)
            return super().plan(state)

    data_trace = make_trace(1, [("a1", A, 40.0, 0.0)])
    trace = data_trace.model_copy(
        update={"jobs": [data_trace.jobs[0].model_copy(update={"estimate_s": None})]}
    )
    simulate(trace, Spy())

    assert "duration_s" not in {f.name for f in fields(QueuedJob)}
    assert seen[0].estimate_s is None


def test_busy_agents_expose_their_family_and_expected_free_time() -> None:
    states: list[PlanningState] = []

    class Spy(FifoPolicy):
        def plan(self, state: PlanningState) -> list[Assignment]:
            states.append(state)
            return super().plan(state)

    trace = make_trace(2, [("a1", A, 40.0, 0.0), ("b1", B, 50.0, 0.0), ("a2", A, 5.0, 20.0)])
    simulate(trace, Spy(), tick_s=None)

    # Nobody is idle when a2 arrives at 20: the next call is when e1 is free at 50.
    assert [s.now for s in states] == [0.0, 50.0]
    later = states[1]
    assert [(a.agent_id, a.installed) for a in later.idle] == [("e1", ("acme", "v1"))]
    assert [(b.agent_id, b.family, b.job_ids) for b in later.busy] == [("e2", B, ("b1",))]
    assert later.busy[0].expected_free_s == 60.0  # install 10 + estimate 50


def late_trace(a1_true_s: float) -> Trace:
    """e1 runs A (a1, a2, a3: 100 s estimated each, install 10 s) while e2 idles; b1
    arrives at 350, while e1 still runs A, so the policy plans again with e1 busy."""
    base = make_trace(
        2,
        [
            ("a1", A, a1_true_s, 0.0),
            ("a2", A, 100.0, 0.0),
            ("a3", A, 200.0, 0.0),
            ("b1", B, 50.0, 350.0),
        ],
    )
    jobs = [j.model_copy(update={"estimate_s": 100.0}) for j in base.jobs]
    return base.model_copy(update={"jobs": jobs})


@pytest.mark.parametrize(
    ("a1_true_s", "free_at"),
    [
        (300.0, 310.0 + 200.0),  # a2 starts 200 s late at 310: renewed to 310 + a2, a3
        (130.0, 310.0),  # a2 and a3 start 30 s late: within the drift, 10 + 300 stands
    ],
)
def test_qgjob_tells_the_planner_a_batchs_end_renewed_by_its_starts(
    a1_true_s: float, free_at: float
) -> None:
    spy = PlanSpy()

    result = simulate(late_trace(a1_true_s), QgjobPolicy(planner=spy), tick_s=None)

    assert lanes(result.schedule)["e1"][:2] == [
        ("install", "v1", 0.0, 10.0),
        ("test", "a1", 10.0, 10.0 + a1_true_s),
    ]
    at_b1 = next(c for c in spy.calls if c["now"] == 350.0)
    assert [(b.agent_id, b.expected_free_at) for b in at_b1["busy"]] == [("e1", free_at)]


# ------------------------------------------------------------------ validate_schedule
def good_schedule() -> tuple[Trace, Schedule]:
    trace = make_trace(2, SMALL_JOBS)
    return trace, simulate(trace, FifoPolicy()).schedule


def test_a_simulated_schedule_is_valid_and_survives_json() -> None:
    trace, schedule = good_schedule()

    assert validate_schedule(trace, schedule) == []
    assert schedule_from_json(schedule_to_json(schedule)) == schedule


def test_validate_catches_a_missing_job() -> None:
    trace, schedule = good_schedule()
    schedule["e2"] = schedule["e2"][:-1]  # drop a3

    assert validate_schedule(trace, schedule) == ["a3: runs 0 times (expected exactly once)"]


def test_validate_catches_a_job_run_twice_and_overlaps() -> None:
    trace, schedule = good_schedule()
    schedule["e2"].append(replace(schedule["e1"][1], start_s=55.0, end_s=95.0))  # a1 again

    problems = validate_schedule(trace, schedule)

    assert "a1: runs 2 times (expected exactly once)" in problems
    assert any("e2[3]: starts at 55.0 before 60.0 (overlap)" in p for p in problems)


def test_validate_catches_a_test_without_its_install() -> None:
    trace, schedule = good_schedule()
    schedule["e1"] = [s for s in schedule["e1"] if s.app_version_id != "v2"] + [
        replace(schedule["e1"][-1], start_s=60.0, end_s=110.0)
    ]

    problems = validate_schedule(trace, schedule)

    assert any("b1 runs without its app installed" in p for p in problems)


def test_validate_catches_early_starts_wrong_lengths_wrong_agents() -> None:
    trace = make_trace(1, [("a1", A, 40.0, 50.0)])
    early = {
        "e1": [
            Segment("install", "acme", "v1", 0.0, 10.0),
            Segment("test", "acme", "v1", 10.0, 45.0, "a1"),
        ],
        "x9": [],
    }

    problems = validate_schedule(trace, early)

    assert "x9: not an agent of the trace" in problems
    assert any("a1 starts before its arrival 50.0" in p for p in problems)
    assert any("lasts 35.0 s, expected 40.0 s" in p for p in problems)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.95) == 0.0
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([float(i) for i in range(1, 21)], 0.95) == 19.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_a_time_independent_policy_is_not_asked_again_without_a_change() -> None:
    policy = WaitUntil(100.0, time_dependent=False)

    with pytest.raises(SimulationStalled):
        simulate(make_trace(1, [("a1", A, 40.0, 0.0)]), policy, tick_s=60.0)
    assert policy.calls == [0.0]


# ------------------------------------------------------------------ yields (preemption)
class Yielding:
    """Urgent work first: an idle agent takes every waiting job of the most urgent family
    (priority, then arrival); while priority-1 work waits, ``victim`` is asked to yield."""

    name = "yielding"
    time_dependent = False

    def __init__(self, victim: str = "e1") -> None:
        self.victim = victim
        self.seen: list[PlanningState] = []

    def plan(self, state: PlanningState) -> list[Assignment]:
        out = []
        waiting = sorted(state.backlog, key=lambda j: (j.priority, j.arrival_s, j.position))
        for agent in state.idle:
            if not waiting:
                break
            family = waiting[0].family
            ids = tuple(j.job_id for j in waiting if j.family == family)
            waiting = [j for j in waiting if j.family != family]
            out.append(Assignment(agent.agent_id, family, ids))
        return out

    def yields(self, state: PlanningState) -> list[Yield]:
        self.seen.append(state)
        if any(j.priority == 1 for j in state.backlog):
            return [Yield(self.victim)]
        return []


# e1: install 0-10, a1 10-50, a2 50-80, a3 80-100, a4 100-110; u1 (priority 1) at 45.
URGENT_AT_45 = [*SMALL_JOBS[:4], ("u1", B, 5.0, 45.0)]


def test_a_yield_ends_the_batch_at_the_next_test_boundary() -> None:
    trace = make_trace(1, URGENT_AT_45, priorities={"u1": 1})

    result = simulate(trace, Yielding())

    # a1 began before the yield and finishes; a2..a4 wait again (from their arrival at 0)
    # and run after u1, with a reinstall of v1.
    assert lanes(result.schedule) == {
        "e1": [
            ("install", "v1", 0, 10),
            ("test", "a1", 10, 50),
            ("install", "v2", 50, 60),
            ("test", "u1", 60, 65),
            ("install", "v1", 65, 75),
            ("test", "a2", 75, 105),
            ("test", "a3", 105, 125),
            ("test", "a4", 125, 135),
        ]
    }
    assert validate_schedule(trace, result.schedule) == []
    assert (result.yields, result.handed_back) == (1, 3)
    waits = compute_metrics(trace, result.schedule).p95_wait_s_by_priority
    assert waits[1] == 15.0  # u1 waited for a1's end and its install, not for a2..a4


def test_the_yield_state_shows_the_current_test_and_what_is_left() -> None:
    trace = make_trace(1, URGENT_AT_45, priorities={"u1": 1})
    policy = Yielding()

    simulate(trace, policy)

    at_45 = next(s for s in policy.seen if s.now == 45.0)
    [view] = at_45.busy
    assert (view.current_job_id, view.current_end_s) == ("a1", 50.0)  # began 10, estimate 40
    assert view.remaining_job_ids == ("a2", "a3", "a4")
    assert not view.yielding
    assert [j.job_id for j in at_45.backlog] == ["u1"]


def test_a_yield_during_the_install_hands_back_every_test_and_keeps_the_app() -> None:
    trace = make_trace(1, [*SMALL_JOBS[:2], ("u1", A, 5.0, 4.0)], priorities={"u1": 1})

    result = simulate(trace, Yielding())

    # At 4 e1 installs v1 (until 10): it yields there; u1 (same app) runs first, no install.
    assert lanes(result.schedule) == {
        "e1": [
            ("install", "v1", 0, 10),
            ("test", "u1", 10, 15),
            ("test", "a1", 15, 55),
            ("test", "a2", 55, 85),
        ]
    }
    assert validate_schedule(trace, result.schedule) == []
    assert (result.yields, result.handed_back) == (1, 2)


def test_yielding_an_agent_on_its_last_test_changes_nothing() -> None:
    trace = make_trace(1, [("a1", A, 40.0, 0.0), ("u1", B, 5.0, 20.0)], priorities={"u1": 1})

    result = simulate(trace, Yielding())

    assert lanes(result.schedule)["e1"][:2] == [("install", "v1", 0, 10), ("test", "a1", 10, 50)]
    assert result.yields == 0


def test_yielding_an_idle_agent_is_a_policy_error() -> None:
    class YieldsIdle(Scripted):
        time_dependent = False  # without the error it stalls rather than ticks for ever

        def yields(self, state: PlanningState) -> list[Yield]:
            return [Yield("e2")]

    trace = make_trace(2, SMALL_JOBS[:2])

    with pytest.raises(PolicyError, match="'e2' is not busy"):
        simulate(trace, YieldsIdle(Assignment("e1", A, ("a1",))))  # a2 waits, e2 idles


def urgent_day() -> Trace:
    """Two agents busy with long priority-5 batches when a priority-1 job arrives."""
    long_a = [(f"a{i}", A, 100.0, 0.0) for i in range(6)]
    long_b = [(f"b{i}", B, 100.0, 0.0) for i in range(6)]
    urgent = Family("acme", "hotfix", "emulator")
    return make_trace(2, [*long_a, *long_b, ("u1", urgent, 20.0, 150.0)], priorities={"u1": 1})


def test_ours_shortens_a_running_batch_for_priority_1_work() -> None:
    trace = urgent_day()

    on = simulate(trace, QgjobPolicy())
    off = simulate(trace, QgjobPolicy(preemption=PreemptionPolicy(enabled=False)))

    def u1_start(result: Any) -> float:
        return next(
            s.start_s for segs in result.schedule.values() for s in segs if s.job_id == "u1"
        )

    assert validate_schedule(trace, on.schedule) == []
    assert on.yields == 1
    # The yielding agent's test that began at 110 ends at 210; u1 installs (10 s) and starts.
    assert u1_start(on) == 220.0
    assert u1_start(off) > 500.0  # without it, u1 waits for a whole batch to end


def test_ours_without_priority_1_work_is_unchanged_by_preemption() -> None:
    trace = make_trace(2, [*SMALL_JOBS, ("c1", A, 30.0, 25.0), ("c2", B, 30.0, 35.0)])

    on = simulate(trace, QgjobPolicy())
    off = simulate(trace, QgjobPolicy(preemption=PreemptionPolicy(enabled=False)))

    assert on.yields == 0
    assert lanes(on.schedule) == lanes(off.schedule)
