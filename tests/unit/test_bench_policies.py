"""The qgjob policy is the dispatcher's planning function; the baselines' building blocks."""

from __future__ import annotations

import pytest

import bench.policies
import qgjob_backend.services.dispatch
from bench.generate import generate
from bench.policies import (
    POLICIES,
    QgjobPolicy,
    lpt_split,
    make_policy,
    shard_counts,
)
from bench.simulator import QueuedJob, simulate, validate_schedule
from qgjob_backend.domain import planner
from qgjob_backend.domain.planner import PlanningPolicy
from tests.unit.fakes import PlanSpy


def test_the_simulator_and_the_dispatcher_call_the_same_planning_function() -> None:
    # The function object the dispatcher Lambda imports (DispatchService._plan_target).
    dispatchers = vars(qgjob_backend.services.dispatch)["plan_batches"]

    assert vars(bench.policies)["plan_batches"] is dispatchers
    assert dispatchers is planner.plan_batches
    assert QgjobPolicy().planner is dispatchers


def test_qgjob_policy_calls_plan_batches_like_the_dispatcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = PlanSpy()
    monkeypatch.setattr(bench.policies, "plan_batches", spy)
    trace = generate("ci_burst", 3, jobs=150, agents=6)

    result = simulate(trace, QgjobPolicy())

    assert validate_schedule(trace, result.schedule) == []
    first = spy.calls[0]
    assert first["now"] == 0.0
    assert first["policy"] == PlanningPolicy()
    # One call for every pool at once, like DispatchService.plan: pools end together.
    assert {j.target for j in first["backlog"]} == {j.target for j in trace.jobs}
    assert {a.target for a in first["agents"]} == {a.target for a in trace.agents}
    assert first["install_s"] == dict(trace.install_s)
    view = first["backlog"][0]
    job = next(j for j in trace.jobs if j.id == view.job_id)
    assert view.group_key == f"{job.org_id}/{job.app_version_id}/{job.target}"
    assert (view.enqueued_at, view.estimate_s, view.test_path) == (
        job.arrival_s,
        job.estimate_s,
        job.test_path,
    )
    # Busy agents are passed on with their group and when they should be free.
    later = next(c for c in spy.calls if c["busy"])
    for agent in later["busy"]:
        assert agent.expected_free_at > later["now"]
        assert agent.group_key.endswith("/" + agent.target)


def test_lpt_split_puts_the_longest_test_on_the_least_loaded_shard() -> None:
    jobs = [
        QueuedJob(f"j{d}", 0.0, "o", "v", "emulator", "t", 5, float(d), i)
        for i, d in enumerate((10, 40, 20, 30))
    ]

    shards = lpt_split(jobs, 2)

    assert [([j.job_id for j in members], load) for members, load in shards] == [
        (["j40", "j10"], 50.0),
        (["j30", "j20"], 50.0),
    ]


def test_shard_counts_fill_the_free_agents_or_cap_shards_at_a_fair_share() -> None:
    def family(*durations: float) -> list[QueuedJob]:
        return [
            QueuedJob(f"j{i}", 0.0, "o", "v", "emulator", "t", 5, d, i)
            for i, d in enumerate(durations)
        ]

    big, small = family(*[10.0] * 10), family(10.0, 10.0)
    assert shard_counts([big, small], 4) == [3, 1]  # 100/3 > 20/1 ... one shard per agent
    assert shard_counts([small], 5) == [2]  # never more shards than jobs
    # More families than agents: ceil(P / L), L = 140 / 2 = 70 -> 2 + 1 + 1.
    assert shard_counts([big, small, family(20.0)], 2) == [2, 1, 1]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_makes_a_valid_schedule_on_every_scenario_shape(name: str) -> None:
    for scenario in ("multi_org_day", "warm_start", "skewed_priorities", "many_tiny"):
        trace = generate(scenario, 2, jobs=120, agents=7)
        result = simulate(trace, make_policy(name))
        assert validate_schedule(trace, result.schedule) == [], (name, scenario)


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("random")
