"""Overflow to BrowserStack: which queued jobs of a busy pool move to the ``browserstack``
pool because it would finish them sooner.

Pure and deterministic (no AWS, no clock), like the planner: the dispatcher calls it before
it plans, and so does the simulator's ``qgjob`` policy. Only jobs whose suite allowed it
(``qgjob submit --overflow browserstack``) move, only from an emulator or device pool, and
only while they are waiting (the dispatcher moves each one with a conditional write that
fails once it is assigned or moved).

The estimate is a fluid one, per pool: the pool's agents are lanes, free now (idle) or at
their batch's expected end (busy); the pool's queue is the estimated work of its waiting jobs
plus one install per waiting group whose app no agent of the pool holds. The pool finishes
its queue when the lanes, filled level from the earliest free, hold all of it
(:func:`finish_level`). A job at the tail of its home pool's queue finishes there when the
home pool finishes. On BrowserStack it would finish (``_PoolState.finish_with``) the sooner
of: after BrowserStack's other queued work (spread over its lanes), its group's work there
with it on the k earliest lanes, each after its own install (the upload: an install is not
shared by lanes), k growing only while one more lane shortens the group by an install and
``split_gain_s`` (as BrowserStack's planner splits); or on the lanes already holding its
app, after the group's work queued there (a new lane only if it is sooner by that gain).

Jobs move one at a time, from the tail of the home pool's queue (what the home pool would
reach last): the least urgent allowed group first, and inside a group the reverse of its
run order (least urgent, newest, shortest first), so that a job never moves while a job the
home pool would run after it stays; a job moves only when BrowserStack's estimated finish
with it is sooner than the home pool's by ``OverflowPolicy.margin_s``. The first job that
does not gain enough ends the pool's moves: every later candidate would gain less (the home
pool ends sooner, BrowserStack later, after each move). Home pools are taken latest finish
first, and at most ``max_moves`` jobs move per call.

Moved jobs join BrowserStack's queue with their own priority, so they may delay
BrowserStack's own work of the same class (``python -m bench.overflow`` measures it). The
estimates are the home target's (a test's BrowserStack duration is not known before it ran
there), and the fluid model ignores how the planner packs groups: the margin absorbs both.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from qgjob_backend.domain.models import group_key_for
from qgjob_backend.domain.planner import (
    BacklogJob,
    BusyAgent,
    IdleAgent,
    PlanningPolicy,
    usable_estimate,
)

BROWSERSTACK = "browserstack"
# The run counter of its jobs moved to BrowserStack (the run view's "moved").
MOVED_COUNTER = "moved"
# The pools whose jobs may overflow: BrowserStack itself never does.
OVERFLOW_SOURCES = ("emulator", "device")


@dataclass(frozen=True)
class OverflowPolicy:
    """When a waiting job moves to BrowserStack (one place for the defaults)."""

    # A move must bring the job's estimated end forward by at least this many seconds:
    # BrowserStack minutes are paid for, and a move that gains less than an install's worth
    # is within the noise of the estimates.
    min_gain_s: float = 120.0
    # ... and by this fraction of the job's estimated wait at home (estimates err more on
    # a long queue).
    min_gain_fraction: float = 0.1
    # At most this many jobs move per call: the dispatcher writes each one.
    max_moves: int = 100
    # The same defaults the planner counts with (PlanningPolicy is the source of truth).
    unknown_estimate_s: float = PlanningPolicy.unknown_estimate_s
    # How much one more agent must shorten a group for BrowserStack's planner to split it
    # there (PlanningPolicy.min_split_gain_s): the estimate spreads a moved group only so.
    split_gain_s: float = PlanningPolicy.min_split_gain_s
    default_install_s: float = PlanningPolicy.default_install_s

    def margin_s(self, now: float, home_finish: float) -> float:
        """How much sooner BrowserStack must finish a job that would end at home at
        ``home_finish`` for it to move."""
        return max(self.min_gain_s, self.min_gain_fraction * max(0.0, home_finish - now))


@dataclass(frozen=True)
class OverflowMove:
    """One waiting job moved from its home pool to BrowserStack."""

    job_id: str
    from_target: str
    from_group_key: str
    to_target: str
    to_group_key: str
    # The estimates that decided it (for logs and the benchmark).
    home_finish_at: float
    remote_finish_at: float


def finish_level(free_at: Sequence[float], work_s: float) -> float:
    """When lanes free at ``free_at`` (sorted) finish ``work_s`` seconds of work spread over
    them level from the earliest free (water-filling); infinity without lanes."""
    if not free_at:
        return math.inf
    level = free_at[0]
    remaining = max(0.0, work_s)
    for count in range(1, len(free_at) + 1):
        upper = free_at[count] if count < len(free_at) else math.inf
        room = (upper - level) * count  # what the `count` lowest lanes hold up to `upper`
        if remaining <= room:
            return level + remaining / count
        remaining -= room
        level = upper
    return math.inf  # unreachable: the last room is infinite


class _PoolState:
    """A pool's lanes and queued work, as the fluid estimate counts them."""

    def __init__(
        self,
        target: str,
        jobs: Sequence[BacklogJob],
        idle: Iterable[IdleAgent],
        busy: Iterable[BusyAgent],
        now: float,
        install_s: float,
        policy: OverflowPolicy,
    ) -> None:
        self.target = target
        self.install_s = install_s
        self.free_at: list[float] = []
        # When each lane holding a group's app is free (sorted): those run it uninstalled.
        self.holders: dict[str, list[float]] = {}
        for agent in idle:
            self.free_at.append(now)
            if agent.installed is not None:
                key = group_key_for(agent.installed.org_id, agent.installed.app_version_id, target)
                self.holders.setdefault(key, []).append(now)
        for running in busy:
            free_at = max(now, running.expected_free_at)
            self.free_at.append(free_at)
            self.holders.setdefault(running.group_key, []).append(free_at)
        self.free_at.sort()
        for lanes in self.holders.values():
            lanes.sort()
        # Waiting jobs and work per group: an install is counted while a group has a job
        # waiting and no agent holds its app.
        self.waiting: dict[str, int] = {}
        self.group_work: dict[str, float] = {}
        self.work_s = 0.0
        for job in jobs:
            self.add(job.group_key, usable_estimate(job.estimate_s, policy.unknown_estimate_s))

    def _install(self, group_key: str) -> float:
        """The lane time a group's install costs in the queue: none when an agent holds it."""
        return 0.0 if group_key in self.holders else self.install_s

    def add(self, group_key: str, estimate_s: float) -> None:
        if not self.waiting.get(group_key):
            self.work_s += self._install(group_key)
        self.waiting[group_key] = self.waiting.get(group_key, 0) + 1
        self.group_work[group_key] = self.group_work.get(group_key, 0.0) + estimate_s
        self.work_s += estimate_s

    def remove(self, group_key: str, estimate_s: float) -> None:
        self.waiting[group_key] -= 1
        self.group_work[group_key] -= estimate_s
        self.work_s -= estimate_s
        if not self.waiting[group_key]:
            self.work_s -= self._install(group_key)

    def finish_with(self, group_key: str, estimate_s: float, split_gain_s: float) -> float:
        """When one more job of ``group_key`` would be done here, the sooner of two ways.

        On lanes that install the group: once the pool's other queued work is done (spread
        over every lane), the group's work here with the job runs on the k earliest lanes,
        each after its own install (an install is not shared); k grows only while one more
        lane shortens the group by ``split_gain_s`` and an install, as the planner splits.
        Or on the lanes already holding its app, after the group's work queued there: the
        planner installs it on another lane only when that is sooner by the same gain.
        """
        group_s = self.group_work.get(group_key, 0.0)
        work = group_s + estimate_s
        others = self.work_s - group_s
        if self.waiting.get(group_key):
            others -= self._install(group_key)
        base = finish_level(self.free_at, others)
        lanes = sorted(max(free_at, base) for free_at in self.free_at)
        gain = max(self.install_s, split_gain_s)
        k = 1
        while k < len(lanes) and work / (k * (k + 1)) >= gain:
            k += 1
        installing = max(finish_level(lanes[:k], work), lanes[0] + estimate_s) + self.install_s
        holding = self.holders.get(group_key)
        if not holding:
            return installing
        warm = max(finish_level(holding, work), holding[0] + estimate_s)
        # The planner gives a group already running another agent only for that gain too.
        return installing if installing + gain <= warm else warm

    @property
    def finish(self) -> float:
        return finish_level(self.free_at, self.work_s)


def plan_overflow(
    backlog: Iterable[BacklogJob],
    allowed: Collection[str],
    agents: Sequence[IdleAgent],
    now: float,
    policy: OverflowPolicy,
    busy: Sequence[BusyAgent] = (),
    install_s: Mapping[str, float] | None = None,
) -> list[OverflowMove]:
    """The waiting jobs to move to BrowserStack now (see the module doc), in move order.

    ``backlog``: the waiting jobs of every pool (as the planner gets them); ``allowed``: the
    ids of those whose suite may overflow; ``agents`` / ``busy``: the idle and busy agents
    of every pool; ``install_s``: the install time per target.
    """
    installs = dict(install_s or {})
    by_target: dict[str, list[BacklogJob]] = {}
    for job in backlog:
        by_target.setdefault(job.target, []).append(job)

    def pool(target: str) -> _PoolState:
        return _PoolState(
            target,
            by_target.get(target, []),
            (a for a in agents if a.target == target),
            (b for b in busy if b.target == target),
            now,
            installs.get(target, policy.default_install_s),
            policy,
        )

    remote = pool(BROWSERSTACK)
    if not remote.free_at:
        return []
    homes = []
    for target in OVERFLOW_SOURCES:
        candidates = [j for j in by_target.get(target, []) if j.job_id in allowed]
        if candidates:
            homes.append((pool(target), candidates))
    # The pool that would finish last overflows first.
    homes.sort(key=lambda item: (-item[0].finish, item[0].target))
    moves: list[OverflowMove] = []
    for home, candidates in homes:
        for job in _tail_first(candidates, policy):
            if len(moves) >= policy.max_moves:
                return moves
            estimate = usable_estimate(job.estimate_s, policy.unknown_estimate_s)
            remote_key = group_key_for(job.org_id, job.app_version_id, BROWSERSTACK)
            home_finish = home.finish
            remote_finish = remote.finish_with(remote_key, estimate, policy.split_gain_s)
            if remote_finish > home_finish - policy.margin_s(now, home_finish):
                break  # every later candidate of this pool gains less
            home.remove(job.group_key, estimate)
            remote.add(remote_key, estimate)
            moves.append(
                OverflowMove(
                    job_id=job.job_id,
                    from_target=job.target,
                    from_group_key=job.group_key,
                    to_target=BROWSERSTACK,
                    to_group_key=remote_key,
                    home_finish_at=home_finish,
                    remote_finish_at=remote_finish,
                )
            )
    return moves


def _tail_first(jobs: Sequence[BacklogJob], policy: OverflowPolicy) -> list[BacklogJob]:
    """Allowed jobs in the order the home pool would reach them last first: groups least
    urgent first (then newest), each group's jobs in the reverse of its run order."""
    groups: dict[str, list[BacklogJob]] = {}
    for job in jobs:
        groups.setdefault(job.group_key, []).append(job)

    def run_order(job: BacklogJob) -> tuple[int, float, float, int, str]:
        # The planner's order inside a group (planner._Group): most urgent, oldest,
        # longest first.
        estimate = usable_estimate(job.estimate_s, policy.unknown_estimate_s)
        return (job.priority, job.enqueued_at, -estimate, job.position, job.job_id)

    def group_order(key: str) -> tuple[int, float, str]:
        members = groups[key]
        return (
            min(j.priority for j in members),
            min(j.enqueued_at for j in members),
            key,
        )

    ordered: list[BacklogJob] = []
    for key in sorted(groups, key=group_order, reverse=True):
        ordered.extend(sorted(groups[key], key=run_order, reverse=True))
    return ordered


def apply_moves(backlog: Iterable[BacklogJob], moves: Iterable[OverflowMove]) -> list[BacklogJob]:
    """The backlog as the planner sees it after ``moves``: each moved job in its
    BrowserStack group."""
    moved = {m.job_id: m for m in moves}
    out = []
    for job in backlog:
        move = moved.get(job.job_id)
        if move is not None:
            job = replace(job, target=move.to_target, group_key=move.to_group_key)
        out.append(job)
    return out


__all__ = [
    "BROWSERSTACK",
    "MOVED_COUNTER",
    "OVERFLOW_SOURCES",
    "OverflowMove",
    "OverflowPolicy",
    "apply_moves",
    "finish_level",
    "plan_overflow",
]
