"""Lower bounds on the makespan and on the installs of any schedule of a trace.

Per target pool (m agents), family f = (org, app version, target) with total test time
P_f, longest test t_f and install time s_f (the pool's ``install_s``). A schedule ending
by T runs f in *shards*: contiguous runs of f's tests on one agent, each after an install
(so at most T - s_f long) except a first run on an agent that already holds f's app
(at most T long). With w_f such warm agents, f needs at least

    k_f(T) = ceil(max(0, P_f - w_f * T) / (T - s_f))

installs, which is the issue's ceil(P_f / (T - s_f)) when f is cold (w_f = 0). Hence:

* makespan >= the smallest T with  sum_f (P_f + k_f(T) * s_f) <= m * T  (LB_split), and
  makespan >= s_f + t_f for a cold family (t_f for a warm one), for every pool;
* installs of a schedule ending at T >= sum_f k_f(T) (>= the number of cold families).

For a warm family this is a little weaker than the issue's "minus families already warm"
(a warm agent can take up to T of work without any install), and valid in every case.

k_f(T) is non-increasing in T and m * T increasing, so the feasible T form a half-line:
bisection finds the piece of constant k_f's that holds the smallest feasible T, and inside
that piece the smallest T is solved exactly (a linear inequality). Both bounds also hold
for traces with arrivals (arrivals only delay work), though they are tight only when every
job arrives at 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from bench.trace import Family, Trace

_EPS = 1e-9


@dataclass(frozen=True)
class FamilyLoad:
    total_s: float  # P_f: the sum of the family's (true) test durations
    longest_s: float  # t_f: its longest test
    install_s: float  # s_f
    warm_agents: int = 0  # w_f: agents holding the family's app at time 0

    def shards(self, horizon: float) -> float:
        """k_f(T): installs the family needs to finish by ``horizon`` (inf when it cannot)."""
        cold_work = self.total_s - self.warm_agents * horizon
        if cold_work <= _EPS * max(1.0, self.total_s):
            return 0
        room = horizon - self.install_s
        if room <= 0:
            return math.inf
        return math.ceil(cold_work / room - _EPS)

    def piece_start(self, shards: float) -> float:
        """The smallest T with k_f(T) <= ``shards``."""
        if shards == 0:
            return self.total_s / self.warm_agents if self.warm_agents else 0.0
        return (self.total_s + shards * self.install_s) / (self.warm_agents + shards)

    @property
    def floor_s(self) -> float:
        """No schedule ends before the longest test (after an install when cold)."""
        return self.longest_s + (0.0 if self.warm_agents else self.install_s)


@dataclass(frozen=True)
class Pool:
    target: str
    agents: int
    families: tuple[FamilyLoad, ...]


def pools_of(trace: Trace) -> list[Pool]:
    """The trace's target pools with their families' loads (true durations)."""
    totals: dict[Family, float] = {}
    longest: dict[Family, float] = {}
    for job in trace.jobs:
        family = job.family
        totals[family] = totals.get(family, 0.0) + job.duration_s
        longest[family] = max(longest.get(family, 0.0), job.duration_s)
    warm: dict[Family, int] = {}
    for agent in trace.agents:
        if agent.installed is not None:
            family = Family(agent.installed.org_id, agent.installed.app_version_id, agent.target)
            warm[family] = warm.get(family, 0) + 1
    pools = []
    for target in sorted({a.target for a in trace.agents}):
        loads = tuple(
            FamilyLoad(totals[f], longest[f], trace.install_s[target], warm.get(f, 0))
            for f in sorted(totals)
            if f.target == target
        )
        pools.append(Pool(target, len(trace.agents_of(target)), loads))
    return pools


def _busy_time(families: Iterable[FamilyLoad], horizon: float) -> float:
    return sum(f.total_s + f.shards(horizon) * f.install_s for f in families)


def _feasible(pool: Pool, horizon: float) -> bool:
    return _busy_time(pool.families, horizon) <= pool.agents * horizon * (1 + _EPS)


def pool_makespan_lower_bound(pool: Pool) -> float:
    """max(LB_split, max_f floor_f) for one pool; 0 when the pool has no work."""
    if not pool.families:
        return 0.0
    if pool.agents < 1:
        raise ValueError(f"pool {pool.target!r} has work but no agents")
    low = max(f.floor_s for f in pool.families)
    if _feasible(pool, low):
        return low
    high = 2 * low
    while not _feasible(pool, high):
        low, high = high, 2 * high
    for _ in range(200):
        if high - low <= _EPS * high:
            break
        middle = (low + high) / 2
        low, high = (low, middle) if _feasible(pool, middle) else (middle, high)
    # Inside high's piece every k_f is fixed: the bound is linear there.
    shards = [f.shards(high) for f in pool.families]
    busy = sum(f.total_s + k * f.install_s for f, k in zip(pool.families, shards, strict=True))
    start = max(f.piece_start(k) for f, k in zip(pool.families, shards, strict=True))
    return min(high, max(low, start, busy / pool.agents))


def release_lower_bound(trace: Trace) -> float:
    """A bound that sees arrivals (0 work before the first arrival counts for nothing).

    A batch can only hold jobs that have arrived, so a family nobody holds at time 0 is
    installed after its first arrival a_f: job j ends at or after max(a_j, a_f + s) + p_j.
    And per pool, for every arrival time r, the work arriving at or after r (plus one
    install per cold family first arriving then) needs m agents for at least work / m.
    """
    warm = {
        Family(a.installed.org_id, a.installed.app_version_id, a.target)
        for a in trace.agents
        if a.installed is not None
    }
    first: dict[Family, float] = {}
    for job in trace.jobs:
        first[job.family] = min(first.get(job.family, job.arrival_s), job.arrival_s)
    bound = 0.0
    by_target: dict[str, list[tuple[float, float]]] = {}
    for job in trace.jobs:
        family = job.family
        install = 0.0 if family in warm else trace.install_s[job.target]
        ready = job.arrival_s if family in warm else max(job.arrival_s, first[family] + install)
        bound = max(bound, ready + job.duration_s)
        # Work items (release time, seconds): tests, and the install of each cold family.
        by_target.setdefault(job.target, []).append((job.arrival_s, job.duration_s))
    for family, arrival in first.items():
        if family not in warm:
            by_target[family.target].append((arrival, trace.install_s[family.target]))
    for target, items in by_target.items():
        agents = len(trace.agents_of(target))
        suffix = 0.0
        for release, seconds in sorted(items, reverse=True):
            suffix += seconds
            bound = max(bound, release + suffix / agents)
    return bound


def makespan_lower_bound(trace: Trace) -> float:
    """No schedule of the trace ends earlier: max over target pools of LB_split (and, for a
    trace with arrivals, of :func:`release_lower_bound`)."""
    split = max((pool_makespan_lower_bound(p) for p in pools_of(trace)), default=0.0)
    return split if trace.all_at_zero else max(split, release_lower_bound(trace))


def installs_lower_bound(trace: Trace, makespan_s: float) -> int:
    """No schedule ending by ``makespan_s`` installs fewer apps: sum_f k_f(makespan_s)."""
    total = 0.0
    for pool in pools_of(trace):
        for family in pool.families:
            total += family.shards(makespan_s)
    if math.isinf(total):
        raise ValueError(f"no schedule of this trace ends by {makespan_s} s")
    return int(total)
