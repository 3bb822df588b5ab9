"""Lower bounds on makespan and installs, on cases small enough to check by hand."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.bounds import (
    FamilyLoad,
    Pool,
    installs_lower_bound,
    makespan_lower_bound,
    pool_makespan_lower_bound,
    pools_of,
    release_lower_bound,
)
from bench.trace import Trace, parse_trace


def make_trace(
    agents: list[tuple[str, str, tuple[str, str] | None]],
    jobs: list[tuple[str, str, str, float, float]],
    install_s: dict[str, float] | None = None,
) -> Trace:
    """agents: (id, target, installed); jobs: (org, app, target, duration, arrival)."""
    data: dict[str, Any] = {
        "agents": [
            {
                "id": agent_id,
                "target": target,
                "installed": None if app is None else {"org_id": app[0], "app_version_id": app[1]},
            }
            for agent_id, target, app in agents
        ],
        "install_s": install_s or {"emulator": 10.0, "device": 20.0},
        "jobs": [
            {
                "id": f"j{i}",
                "arrival_s": arrival,
                "org_id": org,
                "app_version_id": app,
                "target": target,
                "test_path": f"t{i}",
                "priority": 5,
                "duration_s": duration,
            }
            for i, (org, app, target, duration, arrival) in enumerate(jobs)
        ],
    }
    return parse_trace(data)


def cold(*loads: tuple[float, float], install: float = 10.0) -> tuple[FamilyLoad, ...]:
    return tuple(FamilyLoad(total, longest, install) for total, longest in loads)


def test_one_family_split_over_two_agents() -> None:
    # P=100 (4 x 25), s=10, m=2: T=60 with k=2 (100 + 20 = 2 x 60); below 60, k=3: 130 > 2T.
    pool = Pool("emulator", 2, cold((100, 25)))

    assert pool_makespan_lower_bound(pool) == pytest.approx(60.0)


def test_one_agent_runs_everything_with_one_install_per_family() -> None:
    pool = Pool("emulator", 1, cold((50, 10), (30, 10)))

    assert pool_makespan_lower_bound(pool) == pytest.approx(100.0)  # 50 + 30 + 2 x 10


def test_a_long_test_bounds_the_makespan() -> None:
    pool = Pool("emulator", 5, cold((100, 100)))

    assert pool_makespan_lower_bound(pool) == pytest.approx(110.0)  # s + longest test


def test_the_bound_can_lie_inside_a_piece_of_constant_shard_counts() -> None:
    # m=3, A: P=90, B: P=30, s=10. With k_A=3, k_B=1 the busy time is 160 <= 3T from
    # T=53.33, and k_A(T)=3 holds on [40, 55): the bound is 160/3, not a breakpoint.
    pool = Pool("emulator", 3, cold((90, 10), (30, 10)))

    assert pool_makespan_lower_bound(pool) == pytest.approx(160 / 3)


def test_a_warm_family_needs_no_install() -> None:
    # One agent holds the app: all 100 s run without an install (the formula,
    # which ignores warm agents for the makespan, would say 110).
    pool = Pool("emulator", 1, (FamilyLoad(100, 25, 10, warm_agents=1),))

    assert pool_makespan_lower_bound(pool) == pytest.approx(100.0)
    assert pool.families[0].shards(100.0) == 0


def test_empty_pool_has_no_bound() -> None:
    assert pool_makespan_lower_bound(Pool("emulator", 3, ())) == 0.0


def test_bound_is_the_smallest_feasible_horizon_on_random_pools() -> None:
    rng = random.Random(42)
    for _ in range(300):
        families = tuple(
            FamilyLoad(
                total_s=rng.uniform(10, 2000),
                longest_s=rng.uniform(5, 10),
                install_s=rng.choice((10.0, 60.0, 120.0)),
                warm_agents=rng.choice((0, 0, 0, 1, 2)),
            )
            for _ in range(rng.randint(1, 6))
        )
        pool = Pool("p", rng.randint(1, 12), families)

        bound = pool_makespan_lower_bound(pool)

        def busy(horizon: float, pool: Pool = pool) -> float:
            return sum(f.total_s + f.shards(horizon) * f.install_s for f in pool.families)

        floor = max(f.floor_s for f in families)
        assert bound >= floor - 1e-9
        assert busy(bound) <= pool.agents * bound * (1 + 1e-7)
        below = bound * (1 - 1e-6)
        assert below < floor or busy(below) > pool.agents * below


def test_trace_bound_is_the_worst_pool_and_counts_families_per_target() -> None:
    trace = make_trace(
        [("e1", "emulator", None), ("e2", "emulator", None), ("d1", "device", None)],
        [
            ("acme", "v1", "emulator", 25, 0),
            ("acme", "v1", "emulator", 25, 0),
            ("acme", "v1", "emulator", 25, 0),
            ("acme", "v1", "emulator", 25, 0),
            ("acme", "v1", "device", 30, 0),  # same app on another target: its own family
        ],
    )

    pools = {p.target: p for p in pools_of(trace)}
    assert [f.total_s for f in pools["emulator"].families] == [100]
    assert makespan_lower_bound(trace) == pytest.approx(60.0)  # emulator 60 > device 50
    assert installs_lower_bound(trace, 60.0) == 3  # 2 emulator shards + 1 device
    assert installs_lower_bound(trace, 110.0) == 2  # one per family when time allows


def test_installs_bound_subtracts_warm_families() -> None:
    trace = make_trace(
        [("e1", "emulator", ("acme", "v1")), ("e2", "emulator", ("acme", "old"))],
        [("acme", "v1", "emulator", 30, 0), ("acme", "v2", "emulator", 30, 0)],
    )

    assert makespan_lower_bound(trace) == pytest.approx(40.0)  # v2 needs 10 + 30
    assert installs_lower_bound(trace, 40.0) == 1  # v1 is warm on e1, v2 needs one


def test_installs_bound_rejects_an_impossible_makespan() -> None:
    trace = make_trace([("e1", "emulator", None)], [("acme", "v1", "emulator", 30, 0)])

    with pytest.raises(ValueError, match="no schedule"):
        installs_lower_bound(trace, 5.0)


def test_release_bound_sees_late_arrivals() -> None:
    trace = make_trace(
        [("e1", "emulator", None), ("e2", "emulator", None)],
        [
            ("acme", "v1", "emulator", 20, 0),
            ("acme", "v2", "emulator", 30, 100),
            ("acme", "v2", "emulator", 30, 100),
        ],
    )

    # After t=100: 60 s of tests + one install of v2 on 2 agents -> 135; and one v2 job
    # cannot end before 100 + 10 (install) + 30 = 140.
    assert release_lower_bound(trace) == pytest.approx(140.0)
    assert makespan_lower_bound(trace) == pytest.approx(140.0)
