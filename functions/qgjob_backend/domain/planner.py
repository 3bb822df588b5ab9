"""The planning core: which idle agent gets which batch of which group.

Pure and deterministic (no AWS, no clock, no randomness), so the dispatcher Lambda,
the lease endpoint and the simulator all call this same function.

The problem: a group (family) is one org's app version on one target. An agent must
install the app (``install_s`` of its target) before its first test of a group, unless
it already holds that version. Splitting a group over k agents shortens it but costs k
installs. The plan is a rolling horizon, recomputed from scratch at every call (so the
planner keeps no state between calls):

1. **Target end.** For a horizon T, :func:`_pack` lays every waiting group out on the
   pool's agents: each agent is free at its expected time (now when idle), and a group
   runs first on the agents that already hold its app, then on as few more agents as
   needed (earliest free first, one install each; never, below priority 1, an agent
   whose app another waiting group still needs: that would cost it a reinstall) for it
   to end by T; the group's work
   is spread so that all its agents end together (water-filling). The planner searches
   the smallest T for which every group fits (the lower bound LB_split's k_f(T) =
   ceil(P_f / (T - s)) installs per group is what this packing spends when agents are
   free), then plans for the smallest T, no earlier than the end of the slowest pool
   (the pools end together; a pool's running batches count even when it has nothing
   left to plan), whose layout spends at most ``split_slack`` more installs than that
   bound.
2. **Fewer installs in the slack** (:meth:`_Pool._fewer_splits`). A local search then
   keeps split groups whole, one at a time, least work first, as long as the pool still
   ends within the split gain (an install, ``min_split_gain_s``, and
   ``extra_install_gain`` of the remaining time) of that T: a split must shorten the
   plan by more than that to buy its installs. ``min_split_gain_s`` is the operator's
   installs-versus-makespan knob (per pool: ``split_gain_by_target``).
3. **Order.** Groups are laid out most urgent class first (priority 1 is the most urgent;
   a group gains one level per ``aging_seconds`` of waiting, so nothing starves), then,
   within a class, an org below its fair share of the pool (agents / orgs waiting)
   before an org above it, then the largest work (plus its waiting time) first, the
   longest-processing-time rule that keeps the tail short.
4. **Batches.** Only the idle agents' first segments of the layout are emitted: an idle
   agent gets a batch of the group the layout gives it now, or nothing when the layout
   does not need it (it would only buy an install). A batch is capped by estimated
   duration (``max_batch_seconds``) and by count, and is at most half of the agent's
   share of what its group has left (guided self-scheduling): batches shrink towards
   the end, so the agents of a group end together even when tests run longer or
   shorter than estimated, and the rest stays in the backlog for whichever of the
   group's agents is free first. A batch holds at least ``min_batch_seconds`` of work
   (or what its group has left): every batch costs the same requests and writes, so a
   suite of very short tests is not spread one test per agent.

5. **Urgent pieces.** Priority-1 work that arrived while older work of its pool waits
   (:func:`late_groups`) is laid out in pieces of at most ``urgent_piece_s`` of estimated
   work, each on its own agent (the preemption core frees one per piece), so that a long
   urgent suite's last tests do not wait for its first ones. The pieces are bought by the
   urgency, so the installs test does not count them and the local search never merges
   them. Work that was waiting all along (a burst at once) is not cut so.

Inside a group, jobs run most urgent first, then oldest, then longest first. A job put
back after it failed or was lost on an agent (``BacklogJob.avoid_agent_id``) is left by
that agent to another one of the pool that is idle or free soon (``retry_elsewhere_within_s``;
for no longer than that after it was put back), and an idle agent the layout gave nothing
takes such a job.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from qgjob_backend.domain.batch_end import rests_of_batch
from qgjob_backend.domain.models import AppRef, group_key_for

_EPS = 1e-9
# The look-ahead near the end of a pool's work (see _Pool._look_ahead).
TAIL_GROUPS_PER_AGENT = 3
LOOK_AHEAD_GROUPS = 8
# The local search for fewer splits (_Pool._fewer_splits) re-checks, once, the groups a
# changed layout newly splits.
SPLIT_SEARCH_ROUNDS = 2
# Fair share: how many agents above its share an org must hold before it yields.
FAIR_SHARE_EXCESS = 2


@dataclass(frozen=True)
class BacklogJob:
    job_id: str
    group_key: str
    org_id: str
    app_version_id: str
    target: str
    priority: int
    enqueued_at: float
    position: int = 0
    # What history says this test takes on this target (None: no history yet).
    estimate_s: float | None = None
    test_path: str = ""
    # The agent it failed (or was lost) on: another agent of the pool takes it when one is
    # idle or due to be free within PlanningPolicy.retry_elsewhere_within_s.
    avoid_agent_id: str | None = None
    retried_at: float = 0.0  # when it was put back in the queue (with avoid_agent_id)

    @property
    def app(self) -> AppRef:
        return AppRef(self.org_id, self.app_version_id)


@dataclass(frozen=True)
class IdleAgent:
    agent_id: str
    target: str
    installed: AppRef | None


@dataclass(frozen=True)
class BusyAgent:
    """An agent running a batch: it holds ``group_key``'s app when it is free again.
    ``expected_free_at`` is the commit's estimate, renewed at its tests' starts when the
    batch drifts (domain.batch_end)."""

    agent_id: str
    target: str
    group_key: str
    expected_free_at: float


@dataclass(frozen=True)
class PlannedBatch:
    agent_id: str
    group_key: str
    org_id: str
    app_version_id: str
    target: str
    job_ids: tuple[str, ...]
    install_required: bool
    expected_s: float = 0.0  # estimated install (when required) plus tests
    # Per job, in run order: the estimated tests from its start to the batch's end
    # (domain.batch_end: what renews the agent's expected free time at each start).
    rests_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class PlanningPolicy:
    max_batch_jobs: int = 25
    aging_seconds: float = 120.0
    max_batch_seconds: float = 900.0
    # A batch carries at least this much estimated work while its group has that much
    # left (0: batches as small as the layout's pieces).
    min_batch_seconds: float = 30.0
    unknown_estimate_s: float = 90.0
    default_install_s: float = 120.0
    # A split must shorten the remaining plan by more than this fraction to buy an install.
    split_slack: float = 0.02
    # ... and another agent for a group already running must shorten the plan by this
    # fraction of the remaining time (and at least by an install) to be worth its install.
    extra_install_gain: float = 0.05
    # The installs-versus-makespan knob: a split must shorten the plan by at least this
    # many seconds (and an install's worth) to buy its installs. Lower: sooner, more
    # installs; higher: fewer installs, later (`python -m bench.schedule --frontier`).
    min_split_gain_s: float = 300.0
    # Per pool: (target, min_split_gain_s) pairs that override it for that target.
    split_gain_by_target: tuple[tuple[str, float], ...] = ()
    fair_share: bool = True
    # How long a retried job may wait for an agent other than the one it failed on.
    retry_elsewhere_within_s: float = 120.0
    # Priority-1 work that arrives while older work of its pool waits (late_groups) is
    # laid out in pieces of at most this much estimated work, each on its own agent, so
    # that a long urgent suite's last tests do not wait for its first ones; each piece
    # costs an install (inf: an urgent group stays on as few agents as the split rule
    # gives it). Work that was waiting all along (a burst at once) is never cut so.
    urgent_piece_s: float = 600.0

    def for_target(self, target: str) -> PlanningPolicy:
        """The policy a target's pool plans with (its own split gain, when it has one)."""
        gain = dict(self.split_gain_by_target).get(target)
        return self if gain is None else replace(self, min_split_gain_s=gain)


def plan_batches(
    backlog: Iterable[BacklogJob],
    agents: Sequence[IdleAgent],
    now: float,
    policy: PlanningPolicy,
    busy: Sequence[BusyAgent] = (),
    install_s: Mapping[str, float] | None = None,
) -> list[PlannedBatch]:
    """Assigns at most one batch to each idle agent. Targets and groups never mix.

    ``busy`` are the agents running a batch now; ``install_s`` the install time per target
    (``policy.default_install_s`` for a target it does not name).
    """
    by_target: dict[str, list[BacklogJob]] = {}
    for job in backlog:
        by_target.setdefault(job.target, []).append(job)
    pools: list[_Pool] = []
    for target, jobs in sorted(by_target.items()):
        idle = sorted((a for a in agents if a.target == target), key=lambda a: a.agent_id)
        running = sorted((b for b in busy if b.target == target), key=lambda b: b.agent_id)
        if not idle and not running:
            continue
        install = policy.default_install_s
        if install_s is not None:
            install = install_s.get(target, install)
        pools.append(_Pool(jobs, idle, running, now, policy.for_target(target), install))
    # The pools end together: a pool that could end before the slowest one spends that
    # time saving installs rather than finishing early for nothing.
    # A pool with nothing left to plan still ends when its last batch does.
    running_end = max((b.expected_free_at - now for b in busy), default=0.0)
    common_end = max([running_end, *(pool.smallest_horizon for pool in pools)])
    plan: list[PlannedBatch] = []
    for pool in pools:
        if pool.idle:
            plan.extend(pool.plan(common_end))
    return plan


class _Group:
    """A group's waiting jobs in run order, with what planning needs to know about them."""

    def __init__(self, jobs: list[BacklogJob], now: float, policy: PlanningPolicy) -> None:
        unknown = policy.unknown_estimate_s
        self.estimates = {j.job_id: _estimate(j, unknown) for j in jobs}
        jobs.sort(
            key=lambda j: (
                j.priority,
                j.enqueued_at,
                -self.estimates[j.job_id],
                j.position,
                j.job_id,
            )
        )
        self.jobs = jobs
        self.first = jobs[0]
        self.key = self.first.group_key
        self.org_id = self.first.org_id
        self.work_s = sum(self.estimates.values())
        self.longest_s = max(self.estimates.values())
        oldest = min(j.enqueued_at for j in jobs)
        # The most estimated work one agent's piece of the group holds (see _Pool).
        self.piece_cap = math.inf
        waited_s = max(0.0, now - oldest)
        best_priority = min(j.priority for j in jobs)
        # Aging lifts a group one class per aging_seconds, up to class 2: class 1 is only
        # ever priority 1, so urgent work never queues behind aged work.
        aged = math.ceil(best_priority - waited_s / policy.aging_seconds)
        self.urgency_class = max(min(2, best_priority), aged)
        # Largest first (LPT); waiting adds to the size so that an old group cannot be
        # passed for ever by larger newcomers of its class.
        self.order = (-(self.work_s + waited_s), oldest, self.key)
        self.next_index = 0

    def take(
        self, seconds: float, max_jobs: int, skip: Callable[[BacklogJob], bool] | None = None
    ) -> tuple[tuple[str, ...], float]:
        """The next jobs worth about ``seconds`` (at least one unless ``skip`` leaves none),
        and their estimated sum. Skipped jobs keep their place for the next taker."""
        taken: list[BacklogJob] = []
        skipped: list[BacklogJob] = []
        total = 0.0
        index = self.next_index
        while index < len(self.jobs) and len(taken) < max_jobs:
            job = self.jobs[index]
            estimate = self.estimates[job.job_id]
            if taken and total + estimate / 2 > seconds:
                break
            index += 1
            if skip is not None and skip(job):
                skipped.append(job)
                continue
            taken.append(job)
            total += estimate
        self.jobs[self.next_index : index] = taken + skipped
        self.next_index += len(taken)
        return tuple(j.job_id for j in taken), total

    @property
    def remaining_s(self) -> float:
        return sum(self.estimates[j.job_id] for j in self.jobs[self.next_index :])


def _not_left_for(agent_id: str, job: BacklogJob) -> bool:
    """True unless another agent left ``job`` (a retry) for agents like ``agent_id``."""
    return job.avoid_agent_id in (None, agent_id)


def late_groups(jobs: Iterable[BacklogJob]) -> frozenset[str]:
    """The groups of one pool's waiting jobs whose oldest job arrived after the pool's
    oldest waiting job: work that arrived into a queue, not with it. For urgent work the
    planner cuts such a group into pieces (PlanningPolicy.urgent_piece_s), and the
    preemption core frees an agent for each piece."""
    oldest: dict[str, float] = {}
    for job in jobs:
        oldest[job.group_key] = min(oldest.get(job.group_key, math.inf), job.enqueued_at)
    if not oldest:
        return frozenset()
    first = min(oldest.values())
    return frozenset(key for key, at in oldest.items() if at > first + _EPS)


def usable_estimate(estimate_s: float | None, unknown_s: float) -> float:
    """A stamped estimate as planning counts it: ``unknown_s`` without a usable one."""
    if estimate_s is None or not estimate_s > 0 or math.isinf(estimate_s):
        return unknown_s
    return estimate_s


def _estimate(job: BacklogJob, unknown_s: float) -> float:
    return usable_estimate(job.estimate_s, unknown_s)


@dataclass
class _Lane:
    """One agent of the pool in a layout: when it is free and which group's app it holds."""

    agent_id: str
    free_at: float
    holds: str | None
    idle: bool


@dataclass
class _Segment:
    group: _Group
    share_s: float  # work the layout gives this agent
    install: bool
    agents: int = 0  # agents holding the group once the layout runs (filled in at the end)


class _Layout:
    """A layout being built: the lanes, each idle agent's first segment, the pieces."""

    def __init__(
        self,
        pool: _Pool,
        lanes: list[_Lane],
        horizon: float,
        whole: frozenset[str] = frozenset(),
    ) -> None:
        self.lanes = lanes
        self.horizon = horizon
        self.whole = whole  # groups kept on the agents holding their app, or on one
        self.install_s = pool.install_s
        self.now = pool.now
        self.waiting = {g.key for g in pool.groups}
        self.first: dict[str, _Segment] = {}
        self.pieces = 0  # installs the layout spends
        self.bound_pieces = 0  # sum of k_f(horizon): what the lower bound would spend
        self.split_groups: set[str] = set()  # groups given an install beyond their first
        self.holding: dict[str, list[int]] = {}
        for index, lane in enumerate(lanes):
            if lane.holds is not None:
                self.holding.setdefault(lane.holds, []).append(index)
        # Agents by when they are free, in two heaps: those holding the app of a group
        # still to be laid out (taking one costs that group an install later) and the
        # others. Lazy: an entry whose lane changed heap or time is skipped when popped.
        self._heaps: tuple[list[tuple[float, int]], list[tuple[float, int]]] = ([], [])
        for index in range(len(lanes)):
            self._push(index)

    def _warm(self, index: int) -> bool:
        return self.lanes[index].holds in self.waiting

    def _push(self, index: int) -> None:
        heapq.heappush(self._heaps[self._warm(index)], (self.lanes[index].free_at, index))

    def _top(self, warm: bool) -> tuple[float, int] | None:
        heap = self._heaps[warm]
        while heap:
            free_at, index = heap[0]
            if self._warm(index) == warm and free_at == self.lanes[index].free_at:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _holders(self, key: str) -> list[int]:
        return [i for i in self.holding.get(key, ()) if self.lanes[i].holds == key]

    def served(self, group: _Group) -> bool:
        return group.key in self.holding and bool(self._holders(group.key))

    def absorb_warm(self, group: _Group) -> float:
        """Puts the group on agents holding its app, each up to the horizon; returns the
        work left for other agents."""
        self.waiting.discard(group.key)
        if group.key not in self.holding:  # nobody holds it: all of it needs installs
            room = self.horizon - self.now - self.install_s
            self.bound_pieces += math.ceil(group.work_s / room - _EPS) if room > 0 else 1
            return group.work_s
        rest = group.work_s
        # Latest free first: the agents free soonest stay available for groups that need
        # another agent (an idle agent holding this app still works on it when no other
        # group needs it, see _Pool._batches).
        warm = sorted(self._holders(group.key), key=lambda i: (-self.lanes[i].free_at, i))
        capacity = 0.0
        for index in warm:
            # No longer counted as an install later: its group is laid out.
            self._push(index)
            room = self.horizon - self.lanes[index].free_at
            capacity += max(0.0, room)
            if rest > _EPS and room > _EPS:
                piece = min(room, rest, group.piece_cap)
                self.place(index, group, piece, install=False)
                rest -= piece
        cold = max(0.0, group.work_s - capacity)
        if cold > _EPS:
            room = self.horizon - self.now - self.install_s
            self.bound_pieces += math.ceil(cold / room - _EPS) if room > 0 else 1
        return rest

    def roomiest(self) -> tuple[int, float] | None:
        """The agent a new piece goes to, and its room, or None when no agent has room
        left: the agent free first, or one holding the app of a group still to be laid
        out when that starts the piece sooner, counting the install its group then pays
        (only priority 1 meets such agents: _pack lays the other classes' warm work out
        first), or when it is the only one with room."""
        cold, warm = self._top(False), self._top(True)
        if cold is not None:
            free_at, index = cold
            room = self.horizon - free_at - self.install_s
            # A warm agent that starts sooner, install counted, also has more room: the
            # fallback below always fits when this one did.
            if room > _EPS and (warm is None or free_at <= warm[0] + self.install_s):
                return index, room
        if warm is not None:
            free_at, index = warm
            room = self.horizon - free_at - self.install_s
            if room > _EPS:
                return index, room
        return None

    def place(self, index: int, group: _Group, work: float, *, install: bool) -> None:
        lane = self.lanes[index]
        # Another piece on an agent that holds the group already (an urgent group's pieces,
        # when no other agent has room) needs no install.
        install = install and lane.holds != group.key
        if install:
            self.pieces += 1
            if group.piece_cap < math.inf:
                # An urgent piece is bought by the urgency, not by the makespan: the
                # installs test (frugal) does not count it against the layout.
                self.bound_pieces += 1
            if group.key in self.holding and self._holders(group.key):
                self.split_groups.add(group.key)
        if lane.idle and lane.agent_id not in self.first:
            self.first[lane.agent_id] = _Segment(group, work, install)
        lane.free_at += work + (self.install_s if install else 0.0)
        if lane.holds != group.key:
            lane.holds = group.key
            self.holding.setdefault(group.key, []).append(index)
        self._push(index)

    def splits_group(self, group: _Group) -> bool:
        """May the group get agents beyond those holding its app (more than one when none
        does)?"""
        return group.key not in self.whole

    @property
    def end_s(self) -> float:
        return max((lane.free_at for lane in self.lanes), default=self.now)

    def finish(self) -> _Layout:
        for segment in self.first.values():
            segment.agents = self.holders(segment.group.key)
        return self

    def holders(self, key: str) -> int:
        """Agents holding the group's app once the layout has run (at least 1)."""
        return max(1, len(self._holders(key)))


class _Pool:
    """One target pool: its groups, its idle and busy agents, its install time."""

    def __init__(
        self,
        jobs: list[BacklogJob],
        idle: Sequence[IdleAgent],
        busy: Sequence[BusyAgent],
        now: float,
        policy: PlanningPolicy,
        install_s: float,
    ) -> None:
        grouped: dict[str, list[BacklogJob]] = {}
        for job in jobs:
            grouped.setdefault(job.group_key, []).append(job)
        self.groups = sorted(
            (_Group(members, now, policy) for members in grouped.values()),
            key=lambda g: (g.urgency_class, g.order),
        )
        # Layouts count seconds from now: epoch timestamps next to sub-second durations
        # would lose the precision the horizon search needs.
        self.now = 0.0
        self.clock = now
        self.policy = policy
        self.install_s = max(0.0, install_s)
        self.idle = idle
        self.busy = busy
        if policy.urgent_piece_s < math.inf:
            late = late_groups(jobs)
            for group in self.groups:
                if group.urgency_class == 1 and group.key in late:
                    group.piece_cap = max(policy.urgent_piece_s, group.longest_s)

    def _lanes(self) -> list[_Lane]:
        lanes = [
            _Lane(
                a.agent_id,
                self.now,
                None
                if a.installed is None
                else group_key_for(a.installed.org_id, a.installed.app_version_id, a.target),
                idle=True,
            )
            for a in self.idle
        ]
        lanes += [
            _Lane(b.agent_id, max(0.0, b.expected_free_at - self.clock), b.group_key, idle=False)
            for b in self.busy
        ]
        return lanes

    @functools.cached_property
    def _earliest(self) -> tuple[float, _Layout]:
        found = self._search(lambda layout: True)
        if found is None:  # the search's upper end always fits: one agent does everything
            raise AssertionError("no feasible layout")
        return found

    @property
    def smallest_horizon(self) -> float:
        """The earliest end this pool's layout reaches."""
        return self._earliest[0]

    def plan(self, common_end: float) -> list[PlannedBatch]:
        smallest, layout = self._earliest
        slack = self.policy.split_slack

        def frugal(candidate: _Layout) -> bool:
            # Few installs more than the lower bound's k_f(T) at this horizon.
            return candidate.pieces <= candidate.bound_pieces + max(
                1.0, slack * candidate.bound_pieces
            )

        found = self._search(frugal, low=max(smallest, common_end))
        if found is not None:
            horizon, layout = found
            if layout.split_groups:
                layout = self._fewer_splits(horizon, layout)
        return self._batches(self._look_ahead(layout))

    def _fewer_splits(self, horizon: float, layout: _Layout) -> _Layout:
        """Spends the layout's slack on installs: a local search that keeps split groups
        whole (on the agents holding their app, or on one) while the pool still ends within
        the split gain of ``horizon``.

        A split must shorten the plan by more than its installs cost: by an install, by
        ``min_split_gain_s`` and by ``extra_install_gain`` of the remaining time. Groups
        are tried one by one, least work first (the split that gains least); a group that
        the changed layout newly splits is tried in a second round. The result is the
        earliest layout with the kept groups whole.
        """
        policy = self.policy
        gain = max(
            self.install_s,
            policy.min_split_gain_s,
            policy.extra_install_gain * (horizon - self.now),
        )
        limit = horizon + gain
        work = {g.key: g.work_s for g in self.groups}
        whole: frozenset[str] = frozenset()
        candidates = layout.split_groups
        # Urgent pieces are cut for the wait, not the makespan: their cap keeps them apart
        # in any layout, so trying to keep such a group whole would only cost a layout.
        pieced = {g.key for g in self.groups if g.piece_cap < math.inf}
        for _ in range(SPLIT_SEARCH_ROUNDS):
            kept = False
            for key in sorted(candidates - whole - pieced, key=lambda k: (work[k], k)):
                if self._pack(limit, whole=whole | {key}) is not None:
                    whole, kept = whole | {key}, True
            probe = self._pack(limit, whole=whole) if kept else None
            if probe is None or not probe.split_groups - whole:
                break
            candidates = probe.split_groups
        if not whole:
            return layout
        found = self._search(lambda candidate: True, low=horizon, whole=whole)
        return found[1] if found is not None and found[0] <= limit + _EPS else layout

    def _look_ahead(self, layout: _Layout) -> _Layout:
        """Near the end, where the greedy order (largest group first) leaves agents ending
        unevenly: when one idle agent is to install a group, also try the next few groups
        of the same class in its place and keep the layout that ends first."""
        starting = [a for a in self.idle if (s := layout.first.get(a.agent_id)) and s.install]
        lanes = len(self.idle) + len(self.busy)
        if len(starting) != 1 or len(self.groups) > TAIL_GROUPS_PER_AGENT * lanes:
            return layout
        agent_id = starting[0].agent_id
        chosen = layout.first[agent_id].group
        held = {lane.holds for lane in self._lanes()}
        candidates = [
            g
            for g in self.groups
            if g is not chosen
            and g.urgency_class == chosen.urgency_class
            and g.key not in held
            # The look-ahead never lets a group pass another against fair share.
            and (g.key in self._yielding) <= (chosen.key in self._yielding)
        ][:LOOK_AHEAD_GROUPS]
        best, best_end = layout, layout.end_s
        for group in candidates:
            alternative = self._pack(layout.horizon, first=(agent_id, group), whole=layout.whole)
            if alternative is not None and alternative.end_s < best_end - _EPS:
                best, best_end = alternative, alternative.end_s
        return best

    def _search(
        self,
        accept: Callable[[_Layout], bool],
        low: float | None = None,
        *,
        whole: frozenset[str] = frozenset(),
    ) -> tuple[float, _Layout] | None:
        """The smallest horizon (to a fraction of a percent) with a layout that ``accept``s,
        and that layout; None if not even the upper end of the search has one."""
        lanes = self._lanes()
        work = sum(g.work_s for g in self.groups)
        if low is None:
            longest = max(g.longest_s for g in self.groups)
            on_lanes = sum(lane.free_at - self.now for lane in lanes)
            low = self.now + max(longest, (work + on_lanes) / max(1, len(lanes)))
        # An urgent group's pieces hold at least its longest test each (but the last), so it
        # pays at most one install per job and one more.
        installs = sum(len(g.jobs) + 1 if g.piece_cap < math.inf else 1 for g in self.groups)
        high = max(lane.free_at for lane in lanes) + work + self.install_s * installs
        high = max(high, low)

        def attempt(horizon: float) -> _Layout | None:
            layout = self._pack(horizon, whole=whole)
            return layout if layout is not None and accept(layout) else None

        best = attempt(low)
        if best is not None:
            return low, best
        # The answer is usually a little above the low end: step up geometrically to a
        # horizon that fits, then bisect.
        step = max(1.0, 0.05 * (low - self.now))
        while low + step < high:
            best = attempt(low + step)
            if best is not None:
                high = low + step
                break
            low, step = low + step, step * 2
        else:
            best = attempt(high)
            if best is None:
                return None
        while high - low > max(1.0, 0.002 * (high - self.now)):
            middle = (low + high) / 2
            layout = attempt(middle)
            if layout is not None:
                high, best = middle, layout
            else:
                low = middle
        return high, best

    def _pack(
        self,
        horizon: float,
        *,
        first: tuple[str, _Group] | None = None,
        whole: frozenset[str] = frozenset(),
    ) -> _Layout | None:
        """Lays every group out so that it ends by ``horizon``; None when one cannot.
        A group in ``whole`` gets no agent beyond those holding its app, and one when none
        does (see _fewer_splits).

        Per urgency class: first each group on the agents holding its app (earliest free
        first, each filled up to the horizon; below priority 1 this is done for every
        class at once, so that no group takes the agent another group's app is on), then
        whole agents for the groups' work
        beyond that (the agent free the longest first), then each group's remainder on the
        agent where it fits most tightly (best fit, largest remainder first), and only
        a remainder that fits nowhere split over several agents.
        """
        lanes = self._lanes()
        layout = _Layout(self, lanes, horizon, whole)
        if first is not None:
            agent_id, group = first
            index = next(i for i, lane in enumerate(lanes) if lane.agent_id == agent_id)
            layout.waiting.discard(group.key)
            layout.place(index, group, group.work_s, install=True)
        deferred = self._yielding
        classes = self._classes()
        if first is not None:
            classes = [[g for g in c if g is not first[1]] for c in classes]
        rest: dict[str, float] = {}
        every_warm_laid_out = False
        for urgency_class in classes:
            if not urgency_class:
                continue
            pending = urgency_class
            if not every_warm_laid_out and urgency_class[0].urgency_class > 1:
                # Below priority 1, every group first runs on the agents holding its app, so
                # a more urgent group does not take them (it would cost a reinstall): it
                # takes another agent, or waits for one of them.
                every_warm_laid_out = True
                pending = [g for c in classes for g in c if g.key not in rest]
            for group in pending:
                if group.key in rest:
                    continue
                served = layout.served(group)
                rest[group.key] = layout.absorb_warm(group)
                if served and not layout.splits_group(group) and rest[group.key] > _EPS:
                    return None
            # Whole agents first, for the work beyond a remainder.
            for group in filter(layout.splits_group, urgency_class):
                while rest[group.key] > _EPS:
                    found = layout.roomiest()
                    if found is None:
                        break
                    index, room = found
                    room = min(room, group.piece_cap)
                    if room < group.longest_s or rest[group.key] < room - _EPS:
                        break  # what is left is a remainder, placed below
                    layout.place(index, group, room, install=True)
                    rest[group.key] -= room
            # Then the remainders, largest first, each on the agent free first, split over
            # several agents only when it fits on none.
            remainders = sorted(
                urgency_class, key=lambda g: (g.key in deferred, -rest[g.key], g.order)
            )
            for group in remainders:
                while rest[group.key] > _EPS:
                    found = layout.roomiest()
                    # A piece must hold the longest test; an urgent group's last piece is
                    # cut from what is left of it, which may be less.
                    fits = group.longest_s
                    if group.piece_cap < math.inf:
                        fits = min(fits, rest[group.key])
                    if found is None or found[1] < fits - _EPS:
                        return None
                    index, room = found
                    piece = min(room, rest[group.key], group.piece_cap)
                    if piece < rest[group.key] - _EPS and not layout.splits_group(group):
                        return None
                    layout.place(index, group, piece, install=True)
                    rest[group.key] -= piece
        return layout.finish()

    @functools.cached_property
    def _running_per_org(self) -> dict[str, int]:
        """Busy agents per org (a group key starts with its org, see group_key_for)."""
        running: dict[str, int] = {}
        for agent in self.busy:
            org = agent.group_key.split("/", 1)[0]
            running[org] = running.get(org, 0) + 1
        return running

    @functools.cached_property
    def _yielding(self) -> frozenset[str]:
        """Fair share: the groups of orgs that hold at least FAIR_SHARE_EXCESS agents more
        than their share of the pool (agents / orgs waiting) while another org waiting
        here has none. They yield to the other groups of their urgency class."""
        if not self.policy.fair_share:
            return frozenset()
        running = self._running_per_org
        waiting = {g.org_id for g in self.groups}
        share = (len(self.idle) + len(self.busy)) / len(waiting)
        greedy = {org for org, count in running.items() if count >= share + FAIR_SHARE_EXCESS}
        if not greedy or all(running.get(org, 0) for org in waiting):
            return frozenset()
        return frozenset(g.key for g in self.groups if g.org_id in greedy)

    def _classes(self) -> list[list[_Group]]:
        """Groups by urgency class, each in layout order: largest first, groups that
        yield for fair share after the others."""
        classes: dict[int, list[_Group]] = {}
        for group in self.groups:
            classes.setdefault(group.urgency_class, []).append(group)
        yielding = self._yielding
        return [
            sorted(classes[c], key=lambda g: g.key in yielding)  # stable: keeps the order
            for c in sorted(classes)
        ]

    def _left_for_others(self, agent_id: str) -> Callable[[BacklogJob], bool] | None:
        """Which jobs ``agent_id`` leaves to another agent: those that last ran on it,
        when another agent of the pool is idle or due to be free soon enough."""
        within = self.policy.retry_elsewhere_within_s
        soon = self.clock + within
        others = any(a.agent_id != agent_id for a in self.idle) or any(
            b.agent_id != agent_id and b.expected_free_at <= soon for b in self.busy
        )
        if not others:
            return None
        # Only for so long after it was put back: a busy pool must not keep it waiting.
        since = self.clock - within
        return lambda job: job.avoid_agent_id == agent_id and job.retried_at >= since

    def _batches(self, layout: _Layout) -> list[PlannedBatch]:
        planned: list[PlannedBatch] = []
        policy = self.policy
        by_key = {g.key: g for g in self.groups}
        for agent in self.idle:
            segment = layout.first.get(agent.agent_id)
            if segment is None:
                # Not needed elsewhere: it keeps working on the group whose app it holds.
                held = agent.installed and group_key_for(
                    agent.installed.org_id, agent.installed.app_version_id, agent.target
                )
                group = by_key.get(held) if held else None
                if group is None:
                    continue
                segment = _Segment(group, group.remaining_s, False, layout.holders(group.key))
            group = segment.group
            if group.next_index >= len(group.jobs):
                continue
            # Guided self-scheduling: half of this agent's share of what the group has left.
            fair_part = group.work_s / segment.agents
            if segment.agents > 1:
                fair_part /= 2
            # ... but never less than min_batch_seconds: a batch costs a lease, a commit
            # and a close whatever it holds, which very short tests spread thin waste.
            seconds = min(
                policy.max_batch_seconds,
                max(policy.min_batch_seconds, min(segment.share_s, fair_part)),
            )
            job_ids, estimated = group.take(
                seconds, max(1, policy.max_batch_jobs), self._left_for_others(agent.agent_id)
            )
            if not job_ids:
                continue
            planned.append(self._batch(agent, group, job_ids, estimated, segment.install))
        return planned + self._retries_elsewhere(planned)

    def _batch(
        self,
        agent: IdleAgent,
        group: _Group,
        job_ids: tuple[str, ...],
        estimated: float,
        install: bool,
    ) -> PlannedBatch:
        first = group.first
        return PlannedBatch(
            agent_id=agent.agent_id,
            group_key=group.key,
            org_id=first.org_id,
            app_version_id=first.app_version_id,
            target=first.target,
            job_ids=job_ids,
            install_required=install,
            expected_s=estimated + (self.install_s if install else 0.0),
            rests_s=rests_of_batch([group.estimates[j] for j in job_ids]),
        )

    def _retries_elsewhere(self, planned: list[PlannedBatch]) -> list[PlannedBatch]:
        """Idle agents the layout left without work take the retried jobs that another
        agent of the pool left for them (an install when they do not hold the app)."""
        busy = {p.agent_id for p in planned}
        extra: list[PlannedBatch] = []
        for agent in self.idle:
            if agent.agent_id in busy:
                continue
            held = agent.installed and group_key_for(
                agent.installed.org_id, agent.installed.app_version_id, agent.target
            )
            not_left_for_it = functools.partial(_not_left_for, agent.agent_id)
            for group in self.groups:
                job_ids, estimated = group.take(
                    self.policy.max_batch_seconds,
                    max(1, self.policy.max_batch_jobs),
                    not_left_for_it,
                )
                if job_ids:
                    extra.append(self._batch(agent, group, job_ids, estimated, held != group.key))
                    break
        return extra
