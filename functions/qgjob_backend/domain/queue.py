"""Queue position and ETA: where a run stands in its pool and when it should finish.

Pure and deterministic (no AWS, no clock): the dispatcher, which has just read a pool's
backlog and agents to plan, turns them into a small :class:`PoolSnapshot`; a run poll
reads the snapshot back and answers with :func:`run_queue`, so a poll stays one read of
the run plus one of its pool's snapshot, whatever the fleet and the backlog.

The estimate replays the backlog in its order (most urgent first, then oldest: the
order the planner takes it in) onto the pool's lanes, one per online agent, each free at
its expected time (now when idle, when its batch should end when busy). Each job goes to
the lane where it would *finish* first: a lane that holds its group's app costs the
test's estimate, any other lane the target's install time as well (earliest finish time
list scheduling, the rule the planner's packing approximates: a group spreads over more
agents only when that ends it sooner). A private lab's lane takes only its org's jobs.
It is an estimate: tests run longer or shorter than estimated, new urgent work jumps
ahead, and the planner keeps a split that would save less than an install. Polls see it
refreshed every few seconds while the pool is busy.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from qgjob_backend.domain.models import Agent, AgentStatus, Job, Run, group_key_for
from qgjob_backend.domain.planner import usable_estimate
from qgjob_backend.schema import Target

# The runs a snapshot names (the first in the queue): with the rest of it, at most 1 KB,
# one write unit. A run further back is answered from the pool's totals (approximate).
MAX_SNAPSHOT_RUNS = 12
# Groups whose busy agents' expected end a snapshot keeps (for runs with nothing queued).
MAX_SNAPSHOT_GROUPS = 8
# Private labs a snapshot names as having an online agent.
MAX_SNAPSHOT_LABS = 8


@dataclass(frozen=True)
class RunPlace:
    """One run's place in its pool's queue."""

    position: int  # 1: its first queued job is the next of the pool to start
    jobs_ahead: int  # queued jobs of the pool before its first queued one
    start_at: float | None  # when its first queued job should start (None: no agent)
    finish_at: float | None  # when its last queued job should end


@dataclass(frozen=True)
class PoolSnapshot:
    """A pool's (target's) queue and agents as one plan read them."""

    target: Target
    taken_at: float
    queued: int  # jobs in the backlog read (at least this many when ``truncated``)
    truncated: bool  # the read stopped at the plan's backlog window
    # priority -> (queued jobs, their estimated seconds)
    queued_by_priority: Mapping[int, tuple[int, float]]
    idle: int  # online agents without a batch (not drained)
    busy: int  # agents running a batch
    offline: int  # registered agents that are not online, or drained and idle
    shared_online: int  # online agents of the shared fleet (any org)
    lab_orgs: tuple[str, ...]  # org_digest of the orgs with an online private-lab agent
    next_free_at: float | None  # the earliest a busy agent should be free again
    drain_at: float | None  # when the backlog read should be done (None: no agent)
    runs: Mapping[str, RunPlace] = field(default_factory=dict)  # by run_digest, in order
    # Jobs ahead of any run not in ``runs`` (at least).
    unlisted_ahead: int = 0
    # group digest -> the latest expected end of its busy agents' batches
    groups_free_at: Mapping[str, float] = field(default_factory=dict)

    @property
    def online(self) -> int:
        return self.idle + self.busy

    def place_of(self, run_id: str) -> RunPlace | None:
        return self.runs.get(run_digest(run_id))

    def serves(self, org_id: str) -> bool:
        """Whether any online agent of the pool may run this org's jobs."""
        return self.shared_online > 0 or org_digest(org_id) in self.lab_orgs

    def same_estimates(self, other: PoolSnapshot | None) -> bool:
        """Whether ``other`` says the same, apart from when it was taken (a write saved)."""
        if other is None:
            return False
        return _content(self) == _content(other)


@dataclass(frozen=True)
class RunQueue:
    """What a run poll says about the run's queue (see :func:`run_queue`)."""

    position: int | None  # None: behind the runs the snapshot names
    jobs_ahead: int | None
    estimated_start_at: float | None
    estimated_finish_at: float | None
    eta_seconds: float | None
    as_of: float
    approximate: bool  # a lower bound from the pool's totals, not the run's own place
    no_agent: bool  # no online agent of the target may run it: nothing moves


def group_digest(group_key: str) -> str:
    """A short, stable name for a group in a snapshot (group keys reach 120 characters);
    a snapshot names 8 at most, so 32 bits make a false match about one in 500 million."""
    return hashlib.blake2b(group_key.encode("utf-8"), digest_size=4).hexdigest()


def run_digest(run_id: str) -> str:
    """A run as a snapshot names it: 10 characters instead of 24."""
    return hashlib.blake2b(run_id.encode("utf-8"), digest_size=5).hexdigest()


def org_digest(org_id: str) -> str:
    """An org as a snapshot names it (a fixed 8 characters: org ids reach 64)."""
    return group_digest("org/" + org_id)


def job_estimate(job: Job, unknown_s: float) -> float:
    """The planner's rule: the stamped estimate, or ``unknown_s`` without a usable one."""
    return usable_estimate(job.estimate_s, unknown_s)


@dataclass
class _Lane:
    free_at: float
    holds: str | None
    lab: str | None
    version: int = 0


def pool_snapshot(
    target: Target,
    backlog: Sequence[Job],
    agents: Sequence[Agent],
    now: float,
    *,
    online_after: float,
    install_s: float,
    unknown_estimate_s: float,
    truncated: bool = False,
    max_runs: int = MAX_SNAPSHOT_RUNS,
) -> PoolSnapshot:
    """The pool's snapshot from a plan's reads: ``backlog`` in backlog order and every
    agent of ``target``. An idle agent is online when seen after ``online_after`` (as
    the planner counts it); a busy one holds a lease, so it is."""
    lanes: list[_Lane] = []
    idle = busy = offline = shared = 0
    labs: set[str] = set()
    groups_free_at: dict[str, float] = {}
    next_free_at: float | None = None
    for agent in sorted(agents, key=lambda a: a.agent_id):
        if agent.target is not target:
            continue
        # A drained agent ends the batch it holds and takes no other: no lane.
        serves = agent.drained_at is None
        if agent.batch_id is not None and agent.status is not AgentStatus.OFFLINE:
            busy += 1
            free_at = max(now, agent.batch_expected_free_at or now)
            next_free_at = free_at if next_free_at is None else min(next_free_at, free_at)
            if agent.batch_group:
                digest = group_digest(agent.batch_group)
                groups_free_at[digest] = max(groups_free_at.get(digest, free_at), free_at)
            lane = _Lane(free_at, agent.batch_group, agent.lab_org_id)
        elif agent.status is AgentStatus.IDLE and agent.last_seen >= online_after and serves:
            idle += 1
            holds = None
            if agent.installed is not None:
                holds = group_key_for(
                    agent.installed.org_id, agent.installed.app_version_id, target
                )
            lane = _Lane(now, holds, agent.lab_org_id)
        else:
            offline += 1
            continue
        if not serves:
            continue
        lanes.append(lane)
        if agent.lab_org_id is None:
            shared += 1
        else:
            labs.add(org_digest(agent.lab_org_id))

    by_priority: dict[int, tuple[int, float]] = {}
    places: dict[str, list[float]] = {}  # run id -> [first index, start, finish]
    order: list[str] = []
    schedule = _Schedule(lanes, install_s)
    for index, job in enumerate(backlog):
        seconds = job_estimate(job, unknown_estimate_s)
        count, total = by_priority.get(job.priority, (0, 0.0))
        by_priority[job.priority] = (count + 1, total + seconds)
        slot = schedule.place(job, seconds)
        place = places.get(job.run_id)
        if place is None:
            order.append(job.run_id)
            place = places[job.run_id] = [index, math.inf, -math.inf]
        if slot is None:
            place[1] = place[2] = math.nan  # no lane may run it: no estimate for the run
        elif not math.isnan(place[1]):
            place[1] = min(place[1], slot[0])
            place[2] = max(place[2], slot[1])

    runs: dict[str, RunPlace] = {}
    for position, run_id in enumerate(order[:max_runs], start=1):
        first, start, finish = places[run_id]
        placed = not math.isnan(start)
        runs[run_digest(run_id)] = RunPlace(
            position, int(first), start if placed else None, finish if placed else None
        )
    unlisted_ahead = int(places[order[max_runs]][0]) if len(order) > max_runs else len(backlog)
    latest = sorted(groups_free_at.items(), key=lambda item: (-item[1], item[0]))
    return PoolSnapshot(
        target=target,
        taken_at=now,
        queued=len(backlog),
        truncated=truncated,
        queued_by_priority=dict(sorted(by_priority.items())),
        idle=idle,
        busy=busy,
        offline=offline,
        shared_online=shared,
        lab_orgs=tuple(sorted(labs)[:MAX_SNAPSHOT_LABS]),
        next_free_at=next_free_at,
        drain_at=schedule.drain_at if lanes else None,
        runs=runs,
        unlisted_ahead=unlisted_ahead,
        groups_free_at=dict(sorted(latest[:MAX_SNAPSHOT_GROUPS])),
    )


class _Schedule:
    """Earliest-finish list scheduling onto lanes, O(log) per job with lazy heaps: one
    heap of every lane of each lab (None: the shared fleet) by free time, one per group
    of the lanes holding it; an entry is stale once its lane's version moved on."""

    def __init__(self, lanes: list[_Lane], install_s: float) -> None:
        self._lanes = lanes
        self._install_s = install_s
        self._by_lab: dict[str | None, list[tuple[float, int, int]]] = {}
        self._by_group: dict[str, list[tuple[float, int, int]]] = {}
        for index in range(len(lanes)):
            self._push(index)
        self.drain_at = max((lane.free_at for lane in lanes), default=0.0)

    def _push(self, index: int) -> None:
        lane = self._lanes[index]
        entry = (lane.free_at, index, lane.version)
        heapq.heappush(self._by_lab.setdefault(lane.lab, []), entry)
        if lane.holds is not None:
            heapq.heappush(self._by_group.setdefault(lane.holds, []), entry)

    def _top(self, heap: list[tuple[float, int, int]] | None, org_id: str) -> int | None:
        while heap:
            _, index, version = heap[0]
            lane = self._lanes[index]
            if lane.version == version and lane.lab in (None, org_id):
                return index
            heapq.heappop(heap)
        return None

    def place(self, job: Job, seconds: float) -> tuple[float, float] | None:
        """Where the job runs: its (start, end), or None when no lane may run it."""
        group = job.group_key
        candidates = [
            self._top(self._by_group.get(group), job.org_id),
            self._top(self._by_lab.get(None), job.org_id),
            self._top(self._by_lab.get(job.org_id), job.org_id),
        ]
        best: tuple[float, float, int] | None = None
        for index in candidates:
            if index is None:
                continue
            lane = self._lanes[index]
            start = lane.free_at + (0.0 if lane.holds == group else self._install_s)
            end = start + seconds
            # Ties go to the lane listed first: the one that holds the app.
            if best is None or end < best[1]:
                best = (start, end, index)
        if best is None:
            return None
        start, end, index = best
        lane = self._lanes[index]
        lane.free_at, lane.holds, lane.version = end, group, lane.version + 1
        self._push(index)
        self.drain_at = max(self.drain_at, end)
        return start, end


def run_queue(run: Run, snapshot: PoolSnapshot | None, now: float) -> RunQueue | None:
    """A run's queue place from its counters and its pool's snapshot; None when the run
    has nothing queued or active (finished), or no snapshot was taken yet."""
    queued = run.counts.get("queued", 0)
    active = run.counts.get("active", 0)
    if snapshot is None or (queued <= 0 and active <= 0):
        return None
    no_agent = not snapshot.serves(run.org_id)
    group_end = _group_free_at(snapshot, run, run.target)
    approximate = False
    if queued <= 0:
        # Every job of the run is on an agent: done when its group's batches end, or as
        # the snapshot placed them (it may predate the plan that gave them out).
        position: int | None = 0
        ahead: int | None = 0
        start: float | None = None
        placed = snapshot.place_of(run.run_id)
        ends = [t for t in (group_end, placed.finish_at if placed else None) if t is not None]
        finish = max(ends) if ends else None
    else:
        place = snapshot.place_of(run.run_id)
        if place is not None:
            position, ahead, start, finish = (
                place.position,
                place.jobs_ahead,
                place.start_at,
                place.finish_at,
            )
        else:
            # Behind the runs the snapshot names, or beyond the backlog it read (or
            # submitted since): at least behind all of those.
            approximate = True
            position, ahead = None, snapshot.unlisted_ahead
            start = finish = snapshot.drain_at
        if finish is not None and group_end is not None:
            finish = max(finish, group_end)
    if no_agent:
        start = finish = None
    eta = None if finish is None else max(0.0, finish - now)
    return RunQueue(
        position=position,
        jobs_ahead=ahead,
        estimated_start_at=start,
        estimated_finish_at=finish,
        eta_seconds=eta,
        as_of=snapshot.taken_at,
        approximate=approximate,
        no_agent=no_agent,
    )


def _content(snapshot: PoolSnapshot) -> tuple[object, ...]:
    """What a snapshot says, times to the second, without when it was taken."""

    def second(value: float | None) -> int | None:
        return None if value is None else round(value)

    return (
        snapshot.target,
        snapshot.queued,
        snapshot.truncated,
        tuple((p, n, round(s)) for p, (n, s) in snapshot.queued_by_priority.items()),
        snapshot.idle,
        snapshot.busy,
        snapshot.offline,
        snapshot.shared_online,
        snapshot.lab_orgs,
        second(snapshot.next_free_at),
        second(snapshot.drain_at),
        tuple(
            (r, p.position, p.jobs_ahead, second(p.start_at), second(p.finish_at))
            for r, p in snapshot.runs.items()
        ),
        snapshot.unlisted_ahead,
        tuple((g, second(t)) for g, t in snapshot.groups_free_at.items()),
    )


def moved_run_queue(
    run: Run, home: PoolSnapshot | None, overflow: PoolSnapshot | None, now: float
) -> RunQueue | None:
    """The queue place of a run whose jobs partly moved to its overflow pool: its place in
    each pool a snapshot lists it in, ending when the later one ends.

    A run listed only in the overflow pool's snapshot (its home snapshot would only say
    "behind everything", the home pool's drain) is placed there, and still ends no sooner
    than its home group's running batches. A run listed in neither keeps its home answer.
    """
    here = run_queue(run, home, now)
    if run.overflow is None or run.moved <= 0 or overflow is None or here is None:
        return here
    there = run_queue(replace(run, target=run.overflow), overflow, now)
    listed_here = home is not None and home.place_of(run.run_id) is not None
    if there is None or overflow.place_of(run.run_id) is None:
        # Its moved jobs wait nowhere the snapshot sees; those on agents still count.
        return _ending_no_sooner(here, _group_free_at(overflow, run, run.overflow), now)
    if not listed_here:
        home_end = None if home is None else _group_free_at(home, run, run.target)
        return _ending_no_sooner(there, home_end, now)
    starts = [t for t in (here.estimated_start_at, there.estimated_start_at) if t is not None]
    return _ending_no_sooner(
        replace(here, estimated_start_at=min(starts) if starts else None),
        there.estimated_finish_at,
        now,
    )


def _group_free_at(snapshot: PoolSnapshot, run: Run, target: Target) -> float | None:
    """When the busy agents running the run's app version on ``target`` should be free."""
    return snapshot.groups_free_at.get(
        group_digest(group_key_for(run.org_id, run.app_version_id, target))
    )


def _ending_no_sooner(queue: RunQueue, end: float | None, now: float) -> RunQueue:
    """``queue``, finishing no sooner than ``end`` (a run with no agent stays without)."""
    if end is None or queue.no_agent or queue.estimated_finish_at is None:
        return queue
    finish = max(queue.estimated_finish_at, end)
    return replace(queue, estimated_finish_at=finish, eta_seconds=max(0.0, finish - now))
