"""The planning policies the benchmark compares: ours (``qgjob``) and four classic ones.

* ``qgjob``: the dispatcher's planning core, ``qgjob_backend.domain.planner.plan_batches``,
  called the way ``DispatchService._plan_target`` calls it: per target pool with a waiting
  backlog and idle agents, the backlog as ``BacklogJob`` (``enqueued_at`` = arrival,
  ``position`` = submission order), the idle agents as ``IdleAgent`` with what they hold,
  and ``busy_groups`` = the groups busy agents of that pool are running. Made with an
  ``OverflowPolicy`` (``bench.overflow``), it first moves waiting ``overflow`` jobs to the
  ``browserstack`` pool with ``qgjob_backend.domain.overflow.plan_overflow``, as the
  dispatcher does before it plans; a moved job stays moved.
* ``fifo``: no grouping. Each idle agent takes the oldest waiting job of its target (an idle
  agent already holding that job's app first); it installs whenever the version differs.
* ``group_sequential``: each family goes whole to one agent and runs to the end; families
  in order of their oldest job (larger estimated work first on ties), an agent holding a
  family's app takes that family first. A family a busy agent runs waits for that agent.
* ``fixed_batch``: families cut into batches of 10 jobs (arrival order); an idle agent takes
  a batch of the app it holds if there is one, else the oldest batch.
* ``lpt_shards``: test sharding as CI tools do it. When jobs first show up, the new
  families of a pool are sharded for the pool's free agents (``slots`` = idle agents minus
  shards still queued, see ``shard_counts``): with no more families than slots, one shard
  each and then one more for the family with the longest shards until there is one shard
  per slot; with more families than slots, ceil(P_f / L) shards, L = new estimated work /
  slots. Each family is cut into its shards longest-processing-time-first (longest test to
  the least loaded shard); one install per shard. An idle agent takes a shard of the app
  it holds if there is one, else the longest shard.

Baselines see what the planner sees: estimates only, ``UNKNOWN_ESTIMATE_S`` when a test has
none. Make a fresh policy per simulation (``make_policy``): some keep state.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from bench.simulator import (
    UNKNOWN_ESTIMATE_S,
    Assignment,
    BusyAgentView,
    IdleAgentView,
    PlanningState,
    Policy,
    QueuedJob,
    Yield,
)
from bench.trace import App, Family
from qgjob_backend.domain.batch_end import renewed_free_at
from qgjob_backend.domain.models import AppRef, group_key_for
from qgjob_backend.domain.overflow import OverflowMove, OverflowPolicy, apply_moves, plan_overflow
from qgjob_backend.domain.planner import (
    BacklogJob,
    BusyAgent,
    IdleAgent,
    PlannedBatch,
    PlanningPolicy,
    plan_batches,
)
from qgjob_backend.domain.preemption import PreemptionPolicy, RunningBatch, plan_yields

DEFAULT_PLANNING = PlanningPolicy()
DEFAULT_PREEMPTION = PreemptionPolicy()
FIXED_BATCH_JOBS = 10
Planner = Callable[..., Sequence[PlannedBatch]]


def estimate(job: QueuedJob) -> float:
    return job.estimate_s if job.estimate_s is not None else UNKNOWN_ESTIMATE_S


def _families(jobs: Iterable[QueuedJob]) -> dict[Family, list[QueuedJob]]:
    """Jobs by family, families in order of their first job, jobs in the given order."""
    grouped: dict[Family, list[QueuedJob]] = {}
    for job in jobs:
        grouped.setdefault(job.family, []).append(job)
    return grouped


def _pick(agent: IdleAgentView, candidates: Sequence[Family]) -> Family | None:
    """The first candidate family whose app the agent holds, else its first of the target."""
    fitting = [f for f in candidates if f.target == agent.target]
    return next((f for f in fitting if f.app == agent.installed), fitting[0] if fitting else None)


class QgjobPolicy:
    """Ours: a thin adapter around the dispatcher's ``plan_batches``."""

    name = "qgjob"
    time_dependent = True  # urgency ages with the waiting time

    def __init__(
        self,
        planning: PlanningPolicy = DEFAULT_PLANNING,
        planner: Planner | None = None,
        overflow: OverflowPolicy | None = None,
        preemption: PreemptionPolicy = DEFAULT_PREEMPTION,
    ) -> None:
        self._planning = planning
        self._preemption = preemption
        self._planner: Planner = planner if planner is not None else plan_batches
        self._views: dict[str, BacklogJob] = {}
        # What the dispatcher keeps for running batches: each job's rest of batch (from
        # its PlannedBatch.rests_s) and each batch's expected end, renewed at its starts
        # as the agents service does (domain.batch_end), by (agent id, batch start).
        self._rests: dict[str, float] = {}
        self._free_at: dict[tuple[str, float], float] = {}
        self._overflow = overflow  # None: no job overflows
        self.moves: list[OverflowMove] = []  # every job moved to browserstack, in order

    @property
    def planner(self) -> Planner:
        return self._planner

    def backlog_job(self, job: QueuedJob) -> BacklogJob:
        view = self._views.get(job.job_id)
        if view is None:
            view = BacklogJob(
                job_id=job.job_id,
                group_key=group_key_for(job.org_id, job.app_version_id, job.target),
                org_id=job.org_id,
                app_version_id=job.app_version_id,
                target=job.target,
                priority=job.priority,
                enqueued_at=job.arrival_s,
                position=job.position,
                estimate_s=job.estimate_s,
                test_path=job.test_path,
            )
            self._views[job.job_id] = view
        return view

    def plan(self, state: PlanningState) -> list[Assignment]:
        if self._overflow is not None:
            self._move(state)
        waiting = {self.backlog_job(j).target for j in state.backlog}
        idle = [a for a in _idle_agents(state) if a.target in waiting]
        if not idle:
            return []
        busy = self._busy_agents(state)
        backlog = [self.backlog_job(j) for j in state.backlog]
        planned = self._planner(
            backlog, idle, state.now, self._planning, busy, dict(state.install_s)
        )
        for p in planned:
            self._rests.update(zip(p.job_ids, p.rests_s, strict=False))
        return [
            Assignment(p.agent_id, Family(p.org_id, p.app_version_id, p.target), p.job_ids)
            for p in planned
        ]

    def yields(self, state: PlanningState) -> list[Yield]:
        """The running batches to shorten for waiting priority-1 work, from the
        dispatcher's preemption core (``qgjob_backend.domain.preemption.plan_yields``)."""
        policy = self._preemption
        if not policy.enabled or all(j.priority > policy.urgent_priority for j in state.backlog):
            return []
        running = []
        for b in state.busy:
            if b.current_end_s is None:
                continue
            unfinished = [*([b.current_job_id] if b.current_job_id else []), *b.remaining_job_ids]
            running.append(
                RunningBatch(
                    agent_id=b.agent_id,
                    target=b.target,
                    group_key=group_key_for(*b.family),
                    priority=min((self._views[j].priority for j in unfinished), default=10),
                    remaining_job_ids=b.remaining_job_ids,
                    remaining_estimates_s=tuple(
                        self._views[j].estimate_s for j in b.remaining_job_ids
                    ),
                    current_ends_at=b.current_end_s,
                    yielding=b.yielding,
                    planned_free_at=self._expected_free_at(b),  # as plan() tells the planner
                )
            )
        idle = _idle_agents(state)
        backlog = [self.backlog_job(j) for j in state.backlog]
        yields = plan_yields(backlog, idle, running, state.now, policy, dict(state.install_s))
        return [Yield(y.agent_id) for y in yields]

    def _busy_agents(self, state: PlanningState) -> list[BusyAgent]:
        """Busy agents as the dispatcher tells the planner: free when their batch is
        expected to end, as renewed by their starts."""
        return [
            BusyAgent(b.agent_id, b.target, group_key_for(*b.family), self._expected_free_at(b))
            for b in state.busy
        ]

    def _expected_free_at(self, busy: BusyAgentView) -> float:
        """The batch's expected end as the agent item holds it: the commit's, renewed at
        the start of its current test when that moved it by more than the drift (the
        agents service on a start). A yielding batch ends at its current test's end."""
        if busy.yielding:
            return busy.expected_free_s
        key = (busy.agent_id, busy.started_s)
        stored = self._free_at.get(key, busy.expected_free_s)
        if busy.current_job_id is not None and busy.current_started_s is not None:
            renewed = renewed_free_at(
                stored, busy.current_started_s, self._rests.get(busy.current_job_id)
            )
            if renewed is not None:
                stored = self._free_at[key] = renewed
        return stored

    def _move(self, state: PlanningState) -> None:
        """Moves waiting overflow jobs to browserstack (their views stay moved)."""
        assert self._overflow is not None
        backlog = [self.backlog_job(j) for j in state.backlog]
        moved = {m.job_id for m in self.moves}
        allowed = {j.job_id for j in state.backlog if j.overflow and j.job_id not in moved}
        if not allowed:
            return
        moves = plan_overflow(
            backlog,
            allowed,
            _idle_agents(state),
            state.now,
            self._overflow,
            self._busy_agents(state),
            dict(state.install_s),
        )
        for view in apply_moves([self._views[m.job_id] for m in moves], moves):
            self._views[view.job_id] = view
        self.moves.extend(moves)


def _idle_agents(state: PlanningState) -> list[IdleAgent]:
    return [IdleAgent(a.agent_id, a.target, _app_ref(a.installed)) for a in state.idle]


def _app_ref(app: App | None) -> AppRef | None:
    return None if app is None else AppRef(app.org_id, app.app_version_id)


class FifoPolicy:
    name = "fifo"
    time_dependent = False

    def plan(self, state: PlanningState) -> list[Assignment]:
        free: dict[str, list[IdleAgentView]] = {}
        for agent in state.idle:
            free.setdefault(agent.target, []).append(agent)
        out = []
        for job in state.backlog:
            agents = free.get(job.target)
            if not agents:
                if not any(free.values()):
                    break
                continue
            agent = next((a for a in agents if a.installed == job.family.app), agents[0])
            agents.remove(agent)
            out.append(Assignment(agent.agent_id, job.family, (job.job_id,)))
        return out


class GroupSequentialPolicy:
    name = "group_sequential"
    time_dependent = False

    def plan(self, state: PlanningState) -> list[Assignment]:
        running = {b.family for b in state.busy}
        grouped = _families(state.backlog)
        order = sorted(
            (f for f in grouped if f not in running),
            key=lambda f: (grouped[f][0].arrival_s, -sum(map(estimate, grouped[f]))),
        )
        out = []
        for agent in state.idle:
            family = _pick(agent, order)
            if family is not None:
                order.remove(family)
                out.append(
                    Assignment(agent.agent_id, family, tuple(j.job_id for j in grouped[family]))
                )
        return out


class FixedBatchPolicy:
    name = "fixed_batch"
    time_dependent = False

    def __init__(self, batch_jobs: int = FIXED_BATCH_JOBS) -> None:
        self._size = batch_jobs

    def plan(self, state: PlanningState) -> list[Assignment]:
        batches: list[tuple[Family, tuple[str, ...]]] = []
        for family, jobs in _families(state.backlog).items():
            ids = [j.job_id for j in jobs]
            batches.extend(
                (family, tuple(ids[i : i + self._size])) for i in range(0, len(ids), self._size)
            )
        out = []
        for agent in state.idle:
            chosen = _pick(agent, [f for f, _ in batches])
            if chosen is not None:
                index = next(i for i, (f, _) in enumerate(batches) if f == chosen)
                out.append(Assignment(agent.agent_id, chosen, batches.pop(index)[1]))
        return out


@dataclass(frozen=True)
class Shard:
    family: Family
    job_ids: tuple[str, ...]
    load_s: float  # estimated
    seq: int  # creation order, for ties


def lpt_split(jobs: Sequence[QueuedJob], shards: int) -> list[tuple[list[QueuedJob], float]]:
    """Longest-processing-time-first: each job, longest first, to the least loaded shard."""
    bins: list[list[QueuedJob]] = [[] for _ in range(shards)]
    heap = [(0.0, i) for i in range(shards)]
    for job in sorted(jobs, key=lambda j: (-estimate(j), j.position)):
        load, i = heapq.heappop(heap)
        bins[i].append(job)
        heapq.heappush(heap, (load + estimate(job), i))
    loads = {i: load for load, i in heap}
    return [(bins[i], loads[i]) for i in range(shards) if bins[i]]


class LptShardsPolicy:
    name = "lpt_shards"
    time_dependent = False

    def __init__(self) -> None:
        self._queue: list[Shard] = []
        self._sharded: set[str] = set()
        self._made = 0

    def plan(self, state: PlanningState) -> list[Assignment]:
        new = [j for j in state.backlog if j.job_id not in self._sharded]
        if new:
            self._shard(new, state)
        out = []
        for agent in state.idle:
            fitting = [s for s in self._queue if s.family.target == agent.target]
            if not fitting:
                continue
            warm = [s for s in fitting if s.family.app == agent.installed]
            shard = max(warm or fitting, key=lambda s: (s.load_s, -s.seq))
            self._queue.remove(shard)
            out.append(Assignment(agent.agent_id, shard.family, shard.job_ids))
        return out

    def _shard(self, new: Sequence[QueuedJob], state: PlanningState) -> None:
        grouped = _families(new)
        for target in sorted({f.target for f in grouped}):
            families = [f for f in grouped if f.target == target]
            queued = sum(s.family.target == target for s in self._queue)
            idle = sum(a.target == target for a in state.idle)
            counts = shard_counts([grouped[f] for f in families], idle - queued)
            for family, count in zip(families, counts, strict=True):
                for members, load in lpt_split(grouped[family], count):
                    ids = tuple(j.job_id for j in members)
                    self._queue.append(Shard(family, ids, load, self._made))
                    self._made += 1
                    self._sharded.update(ids)


def shard_counts(families: Sequence[Sequence[QueuedJob]], slots: int) -> list[int]:
    """Shards per family for ``slots`` free agents (never more shards than jobs).

    At most as many families as slots: one shard each, then one more for the family whose
    shards are the longest until there is one shard per slot (this minimises the longest
    shard). More families than slots: ceil(P_f / L) shards, L = new work /
    slots, so no shard is longer than one agent's fair share.
    """
    work = [sum(map(estimate, jobs)) for jobs in families]
    if len(families) > slots:
        fair_share = sum(work) / max(1, slots)
        return [
            min(len(jobs), max(1, math.ceil(w / fair_share - 1e-9)))
            for jobs, w in zip(families, work, strict=True)
        ]
    counts = [1] * len(families)
    while sum(counts) < slots:
        open_ = [i for i in range(len(families)) if counts[i] < len(families[i])]
        if not open_:
            break
        widest = max(open_, key=lambda i: (work[i] / counts[i], -i))
        counts[widest] += 1
    return counts


POLICIES: dict[str, Callable[[], Policy]] = {
    "qgjob": QgjobPolicy,
    "fifo": FifoPolicy,
    "group_sequential": GroupSequentialPolicy,
    "fixed_batch": FixedBatchPolicy,
    "lpt_shards": LptShardsPolicy,
}
BASELINES = tuple(name for name in POLICIES if name != "qgjob")


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
