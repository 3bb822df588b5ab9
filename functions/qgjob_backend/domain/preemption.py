"""Urgent work first in a busy pool: which running batches yield at their next test boundary.

Pure and deterministic (no AWS, no clock), shared by the dispatcher and the simulator.

Priority-1 work that arrives while every agent of its pool is busy would otherwise wait
for the next batch to end, up to ``PlanningPolicy.max_batch_seconds`` of somebody else's
work. Instead a running batch may be *shortened*: its agent finishes the test (or
install) it is on and hands the rest of the batch back (the path SIGTERM already takes),
so the urgent work starts at that test boundary. A yield costs the shortened batch a
replan and, usually, a reinstall later, so :func:`plan_yields` asks for as few as it can:

1. Per target pool, the urgent work (jobs of priority <= ``urgent_priority``) *needs*,
   for each group that arrived after older waiting work (``planner.late_groups``), one
   agent per ``urgent_piece_s`` of its estimated work (never more than it has jobs): the
   planner cuts such a group into pieces of that size. Any other urgent group needs one
   agent: the planner keeps a group's rest for the agents holding its app unless a split
   pays for its installs, so an agent freed for that rest would only take other work
   (and be asked again at the next event). Less, each, the running batches of the group.
2. That need is met, without any yield, by the agents that can start it within
   ``max_wait_s`` (the bound an urgent arrival may wait for a free agent): idle ones and
   running batches that end by themselves. As the planner counts it (``roomiest``), an
   agent holding the app of another waiting group starts an urgent piece one install
   later (taking it costs that group a reinstall): the planner prefers a cold agent free
   up to an install later. A yielded agent is always such an agent (its own rest waits).
3. What is left is met by yields: first among the batches whose current test ends (plus
   that install) within the bound, the least urgent work first (then the soonest);
   beyond the bound, whichever comes first of an agent free by itself and a yielding
   batch's test boundary plus the install (the soonest first, then the least urgent).
   So a yield that the planner would not use (another agent is free sooner, install
   counted) is never asked: asked anyway, the freed agent would take its own rest back
   and be asked again at the next event.

Before all that (step 0), an urgent group whose app a running batch holds is the planner's
for that agent (it lays a group out on the agents holding its app first, even while others
idle): unless one of them frees within the bound, the holder with the soonest boundary
yields, and the urgent work starts there without an install.

Never yielded: a batch running urgent work (priority-1 work never makes way for other
priority-1 work), a batch already asked to yield, and a batch on its last test (yielding
would free it no sooner). Never more yields than the need left after step 2.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from qgjob_backend.domain.models import group_key_for
from qgjob_backend.domain.planner import (
    BacklogJob,
    IdleAgent,
    PlanningPolicy,
    late_groups,
    usable_estimate,
)


@dataclass(frozen=True)
class PreemptionPolicy:
    """When a running batch yields to urgent work. One source of truth for the defaults."""

    # Jobs of this priority or more urgent (lower numbers) are urgent work.
    urgent_priority: int = 1
    # The bound: urgent work may wait this long for an agent to free up by itself before
    # a running batch is shortened for it (about an install: shorter waits are not worth
    # another batch's replan and reinstall).
    max_wait_s: float = 120.0
    # One agent per this much estimated urgent work of a group that arrived after older
    # waiting work (planner.late_groups), as the planner cuts it; one per group otherwise.
    urgent_piece_s: float = PlanningPolicy.urgent_piece_s
    # What a test without an estimate counts (the planner's own default).
    unknown_estimate_s: float = PlanningPolicy.unknown_estimate_s
    # Off: no batch ever yields.
    enabled: bool = True


@dataclass(frozen=True)
class RunningBatch:
    """A batch an agent is running, as the preemption core needs to see it."""

    agent_id: str
    target: str
    group_key: str
    # The most urgent priority among the jobs it has not finished (the current one too).
    priority: int
    # The jobs it has not started yet, in run order, and their estimates (None: unknown).
    remaining_job_ids: tuple[str, ...]
    remaining_estimates_s: tuple[float | None, ...]
    # When the test (or install) it is on now is expected to end.
    current_ends_at: float
    batch_id: str = ""
    # It was already asked to yield: it is free at current_ends_at and yields no further.
    yielding: bool = False
    # When the planner expects it free (its BusyAgent.expected_free_at): the core judges
    # a batch's own end as the planner does, or the two disagree on who takes the urgent
    # work. None: current_ends_at plus the remaining estimates.
    planned_free_at: float | None = None

    def __post_init__(self) -> None:
        if len(self.remaining_job_ids) != len(self.remaining_estimates_s):
            raise ValueError("remaining_job_ids and remaining_estimates_s differ in length")

    def expected_free_at(self, unknown_estimate_s: float) -> float:
        """When it ends by itself (at its current test's end when it yields)."""
        if self.yielding:
            return self.current_ends_at
        if self.planned_free_at is not None:
            return self.planned_free_at
        rest = sum(usable_estimate(e, unknown_estimate_s) for e in self.remaining_estimates_s)
        return self.current_ends_at + rest


@dataclass(frozen=True)
class YieldRequest:
    """Ask ``agent_id`` to stop after its current test and hand back ``job_ids``."""

    agent_id: str
    batch_id: str
    target: str
    at: float  # when its current test is expected to end
    job_ids: tuple[str, ...]


def urgent_need(
    backlog: Iterable[BacklogJob],
    target: str,
    policy: PreemptionPolicy,
    running: Sequence[RunningBatch] = (),
) -> int:
    """How many more agents the waiting urgent work of ``target``'s pool needs (step 1)."""
    work: dict[str, float] = {}
    count: dict[str, int] = {}
    pool = [job for job in backlog if job.target == target]
    late = late_groups(pool)
    for job in pool:
        if job.priority > policy.urgent_priority:
            continue
        work[job.group_key] = work.get(job.group_key, 0.0) + usable_estimate(
            job.estimate_s, policy.unknown_estimate_s
        )
        count[job.group_key] = count.get(job.group_key, 0) + 1
    holders: dict[str, int] = {}
    for batch in running:
        if batch.target == target:
            holders[batch.group_key] = holders.get(batch.group_key, 0) + 1
    need = 0
    for key, seconds in work.items():
        piece = policy.urgent_piece_s if key in late else math.inf
        pieces = math.ceil(seconds / piece - 1e-9) if piece > 0 else count[key]
        need += max(0, min(count[key], max(1, pieces)) - holders.get(key, 0))
    return need


def plan_yields(
    backlog: Iterable[BacklogJob],
    idle: Sequence[IdleAgent],
    running: Sequence[RunningBatch],
    now: float,
    policy: PreemptionPolicy,
    install_s: Mapping[str, float] | None = None,
) -> list[YieldRequest]:
    """The running batches to shorten now for the waiting urgent work, by agent id.

    ``backlog``: the waiting jobs (of any pools); ``idle``: the agents free now;
    ``running``: the batches running now. Agents and batches of one target form a pool.
    ``install_s``: the install time per target the planner uses (None: installs are free).
    """
    if not policy.enabled:
        return []
    jobs = list(backlog)
    urgent_targets = sorted({j.target for j in jobs if j.priority <= policy.urgent_priority})
    out: list[RunningBatch] = []
    for target in urgent_targets:
        pool = sorted((b for b in running if b.target == target), key=lambda b: b.agent_id)
        holders = _holders_to_yield(jobs, target, pool, now, policy)
        out += holders
        pool = [b for b in pool if b not in holders]
        need = urgent_need(jobs, target, policy, pool)
        if need <= 0:
            continue
        waiting = {j.group_key for j in jobs if j.target == target}
        install = (install_s or {}).get(target, 0.0)
        idle_at = [
            now + (install if _key(a) in waiting else 0.0) for a in idle if a.target == target
        ]
        out += _yields(pool, need, idle_at, waiting, install, now, policy)
    return [
        YieldRequest(b.agent_id, b.batch_id, b.target, b.current_ends_at, b.remaining_job_ids)
        for b in sorted(out, key=lambda b: b.agent_id)
    ]


def _key(agent: IdleAgent) -> str | None:
    app = agent.installed
    return None if app is None else group_key_for(app.org_id, app.app_version_id, agent.target)


def _holders_to_yield(
    jobs: Sequence[BacklogJob],
    target: str,
    pool: Sequence[RunningBatch],
    now: float,
    policy: PreemptionPolicy,
) -> list[RunningBatch]:
    """Step 0: an urgent group whose app a running batch of less urgent work holds goes to
    that agent (the planner puts a group on the agents holding its app first, even when
    others idle), so that batch yields, the soonest boundary of them, unless one of them
    is free within the bound anyway (or runs urgent work: it keeps the group)."""
    bound = now + policy.max_wait_s
    keys = sorted(
        {j.group_key for j in jobs if j.target == target and j.priority <= policy.urgent_priority}
    )
    chosen: list[RunningBatch] = []
    for key in keys:
        holders = [b for b in pool if b.group_key == key]
        if not holders or any(
            b.expected_free_at(policy.unknown_estimate_s) <= bound or not _can_yield(b, policy)
            for b in holders
        ):
            continue
        chosen.append(min(holders, key=lambda b: (b.current_ends_at, b.agent_id)))
    return chosen


def _can_yield(batch: RunningBatch, policy: PreemptionPolicy) -> bool:
    return (
        not batch.yielding
        and bool(batch.remaining_job_ids)
        and batch.priority > policy.urgent_priority
    )


def _yields(
    pool: Sequence[RunningBatch],
    need: int,
    idle_at: Sequence[float],
    waiting: set[str],
    install: float,
    now: float,
    policy: PreemptionPolicy,
) -> list[RunningBatch]:
    """Steps 2 and 3 for one pool: ``idle_at`` is when each idle agent can start urgent
    work as the planner counts it, ``waiting`` the pool's waiting group keys."""
    unknown = policy.unknown_estimate_s
    bound = now + policy.max_wait_s

    def natural(b: RunningBatch) -> float:
        # A yielding batch's rest waits for its app, as does a group with waiting jobs.
        warm = b.yielding or b.group_key in waiting
        return max(now, b.expected_free_at(unknown)) + (install if warm else 0.0)

    def boundary(b: RunningBatch) -> float:
        return b.current_ends_at + install  # once yielded, its rest waits for its app

    # Step 2: idle agents and batches ending by themselves within the bound cost nothing.
    need -= sum(t <= bound for t in idle_at)
    left = [b for b in pool if natural(b) > bound]
    need -= len(pool) - len(left)
    if need <= 0:
        return []
    chosen: list[RunningBatch] = []
    # Step 3a: boundaries within the bound, least urgent work first, then the soonest.
    soon = sorted(
        (b for b in left if _can_yield(b, policy) and boundary(b) <= bound),
        key=lambda b: (-b.priority, b.current_ends_at, b.agent_id),
    )
    chosen += soon[:need]
    need -= len(chosen)
    # Step 3b: beyond the bound, the earliest of an agent free by itself and a boundary.
    taken = {b.agent_id for b in chosen}
    # (time, kind, urgency, agent id): on a tie an agent free by itself (kind 0) goes
    # first, it costs nothing; idle agents beyond the bound have no batch to yield.
    events: list[tuple[float, int, int, str]] = [
        (t, 0, 0, f"\0idle{n}") for n, t in enumerate(idle_at) if t > bound
    ]
    by_id = {b.agent_id: b for b in left}
    for b in left:
        if b.agent_id in taken:
            continue
        events.append((natural(b), 0, 0, b.agent_id))
        if _can_yield(b, policy):
            events.append((boundary(b), 1, -b.priority, b.agent_id))
    heapq.heapify(events)
    while need > 0 and events:
        _, kind, _, agent_id = heapq.heappop(events)
        if agent_id in taken:
            continue  # it already served (by itself or by a yield)
        taken.add(agent_id)
        need -= 1
        if kind == 1:
            chosen.append(by_id[agent_id])
    return chosen
