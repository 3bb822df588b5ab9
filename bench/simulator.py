"""A discrete-event simulator of the device pools, driven by a planning policy.

Events are job arrivals and agents becoming idle. Whenever one happens, the policy is
called with a :class:`PlanningState`: the waiting jobs as the planner sees them (their
``estimate_s``, never their true duration), the idle agents with what they hold, the busy
agents with their family and expected free time, and the time. It returns
:class:`Assignment` batches (agent, family, ordered job ids). Executing a batch installs the
family's app when the agent does not hold it (it holds it afterwards), then runs the tests
back to back with their true ``duration_s``. A job the trace lets ``overflow`` may also be
given to a ``browserstack`` agent, as a job of its family on that target (org, app,
browserstack), which installs with BrowserStack's install time.

A policy whose answer depends on the time (``time_dependent``, e.g. ours: a group's
urgency ages) may leave an agent idle now and give it work later with nothing else having
happened. In qgjob that is when the idle agent leases again: agents poll every second
(``qgjob agent --poll-seconds 1``) and every lease plans; the dispatcher also plans on a
one-minute schedule. So while jobs wait and agents of their target idle, a time-dependent
policy is asked again every ``tick_s`` (default 1 s). Policies that depend only on the
state (every baseline) would answer the same, so they are not asked again.

A policy may also shorten running batches (``yields``, see :class:`Yield`; ours does it
for priority-1 work in a busy pool): the agent finishes the test it is on and hands the
rest back, which go back to waiting; the schedule keeps only what ran.

The result is a full schedule: per agent, its installs and tests in time order.
:func:`validate_schedule` checks any schedule against its trace independently.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from bench.trace import OVERFLOW_TARGET, App, Family, JobSpec, Trace

# Idle agents lease, and so plan, every second (qgjob agent --poll-seconds default 1.0).
DEFAULT_TICK_S = 1.0
# Only for BusyAgentView.expected_free_s: a test without an estimate counts this long.
UNKNOWN_ESTIMATE_S = 90.0
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class QueuedJob:
    """A waiting job as a planner sees it: no true duration, only the estimate (if any)."""

    job_id: str
    arrival_s: float
    org_id: str
    app_version_id: str
    target: str
    test_path: str
    priority: int
    estimate_s: float | None
    position: int  # index in the trace: the order of submission
    overflow: bool = False  # it may also run on an OVERFLOW_TARGET agent

    @classmethod
    def of(cls, job: JobSpec, position: int) -> QueuedJob:
        """What the planner may see of a trace job: everything but its true duration."""
        return cls(
            job.id,
            job.arrival_s,
            job.org_id,
            job.app_version_id,
            job.target,
            job.test_path,
            job.priority,
            job.estimate_s,
            position,
            job.overflow,
        )

    @property
    def family(self) -> Family:
        return Family(self.org_id, self.app_version_id, self.target)

    def may_run_as(self, family: Family) -> bool:
        """True for its own family and, when it may overflow, its OVERFLOW_TARGET one."""
        return family == self.family or (
            self.overflow and family == Family(self.org_id, self.app_version_id, OVERFLOW_TARGET)
        )


@dataclass(frozen=True)
class IdleAgentView:
    agent_id: str
    target: str
    installed: App | None


@dataclass(frozen=True)
class BusyAgentView:
    agent_id: str
    target: str
    family: Family  # what it runs (and so holds) now
    job_ids: tuple[str, ...]
    started_s: float
    expected_free_s: float  # from install_s and the estimates (UNKNOWN_ESTIMATE_S if none)
    # What its agent reported, as of the call's ``now`` (the agent reports each start):
    # the test it is on (None: installing) and when it started, when that is expected to
    # end (its start plus its estimate, or now when it runs over), and the jobs it has
    # not started, in order.
    current_job_id: str | None = None
    current_end_s: float | None = None
    remaining_job_ids: tuple[str, ...] = ()
    current_started_s: float | None = None
    yielding: bool = False  # it was asked to yield: it stops after its current test


@dataclass(frozen=True)
class PlanningState:
    now: float
    backlog: Sequence[QueuedJob]  # in arrival order (arrival_s, then trace order)
    idle: Sequence[IdleAgentView]  # sorted by agent id
    busy: Sequence[BusyAgentView]  # sorted by agent id
    install_s: Mapping[str, float]

    def pool_size(self, target: str) -> int:
        return sum(a.target == target for a in self.idle) + sum(
            a.target == target for a in self.busy
        )


@dataclass(frozen=True)
class Assignment:
    agent_id: str
    family: Family
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Yield:
    """Shorten ``agent_id``'s batch: it finishes the test (or install) it is on and hands
    back the rest, as a qgjob agent does when the dispatcher asks it to yield."""

    agent_id: str


class Policy(Protocol):
    """Decides batches. May keep state (a fresh instance per simulation). Optional attribute
    ``time_dependent`` (default True): False promises that the answer depends only on the
    state, not on ``now``, so the simulator does not ask again without a change."""

    name: str

    def plan(self, state: PlanningState) -> Sequence[Assignment]: ...


# Optional, beside ``plan``: ``yields(state) -> Sequence[Yield]``, asked after every event
# while jobs wait (after ``plan``; as in ``plan``'s state, its busy views carry the current
# test and the jobs not started). A yielded agent's batch ends at its next test boundary: the tests
# that began finish, the others go back to waiting (with their own arrival time) and the
# agent is free at that boundary. A policy without it (every baseline) never yields.


@dataclass(frozen=True)
class Segment:
    kind: Literal["install", "test"]
    org_id: str
    app_version_id: str
    start_s: float
    end_s: float
    job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "app_version_id": self.app_version_id,
            "org_id": self.org_id,
        }
        if self.job_id is not None:
            data["job_id"] = self.job_id
        data["start_s"] = round(self.start_s, 3)
        data["end_s"] = round(self.end_s, 3)
        return data


Schedule = dict[str, list[Segment]]  # agent id -> its installs and tests in time order


def schedule_to_json(schedule: Schedule) -> dict[str, Any]:
    return {"agents": {a: [s.to_json() for s in segs] for a, segs in sorted(schedule.items())}}


def schedule_from_json(data: Mapping[str, Any]) -> Schedule:
    return {
        agent_id: [
            Segment(
                kind=item["kind"],
                org_id=item["org_id"],
                app_version_id=item["app_version_id"],
                start_s=float(item["start_s"]),
                end_s=float(item["end_s"]),
                job_id=item.get("job_id"),
            )
            for item in items
        ]
        for agent_id, items in data["agents"].items()
    }


class PolicyError(RuntimeError):
    """A policy returned a batch that cannot be run (a bug in the policy)."""


class SimulationStalled(RuntimeError):
    """Jobs wait, nothing is running or arriving, and the policy assigns nothing."""


@dataclass
class SimResult:
    policy: str
    schedule: Schedule
    planning_calls: int = 0
    planning_s_total: float = 0.0  # wall time spent in the policy (report only)
    planning_s_max: float = 0.0
    yields: int = 0  # batches shortened at a test boundary
    handed_back: int = 0  # jobs those batches gave back


@dataclass
class _AgentState:
    agent_id: str
    target: str
    installed: App | None
    busy: BusyAgentView | None = None
    # The batch it runs: (job, true start, true end) per test, and when its install (or
    # its start, without one) ends; its test segments are the tail of its schedule lane.
    tests: list[tuple[QueuedJob, float, float]] = field(default_factory=list)
    install_end_s: float = 0.0


@dataclass
class _Simulation:
    trace: Trace
    policy: Policy
    tick_s: float | None
    result: SimResult = field(init=False)
    ticking: bool = field(init=False)
    agents: dict[str, _AgentState] = field(init=False)
    pending: dict[str, QueuedJob] = field(default_factory=dict)
    waiting_by_target: Counter[str] = field(default_factory=Counter)
    waiting_overflow: int = 0  # waiting jobs that an OVERFLOW_TARGET agent may also take
    frees: list[tuple[float, str]] = field(default_factory=list)  # heap of (time, agent id)

    def __post_init__(self) -> None:
        self.result = SimResult(self.policy.name, {a.id: [] for a in self.trace.agents})
        self.ticking = bool(self.tick_s) and getattr(self.policy, "time_dependent", True)
        self.agents = {
            a.id: _AgentState(a.id, a.target, a.installed_app) for a in self.trace.agents
        }
        self.durations = {j.id: j.duration_s for j in self.trace.jobs}
        views = [QueuedJob.of(j, i) for i, j in enumerate(self.trace.jobs)]
        self.arrivals = sorted(views, key=lambda v: (v.arrival_s, v.position))

    def run(self) -> SimResult:
        next_arrival = 0
        tick: float | None = None
        while True:
            candidates = []
            if next_arrival < len(self.arrivals):
                candidates.append(self.arrivals[next_arrival].arrival_s)
            if self.frees:
                candidates.append(self.frees[0][0])
            if tick is not None:
                candidates.append(tick)
            if not candidates:
                break
            now = min(candidates)
            while (
                next_arrival < len(self.arrivals) and self.arrivals[next_arrival].arrival_s <= now
            ):
                self._arrive(self.arrivals[next_arrival])
                next_arrival += 1
            while self.frees and self.frees[0][0] <= now:
                _, agent_id = heapq.heappop(self.frees)
                self.agents[agent_id].busy = None
            tick = None
            if self._someone_can_work():
                self._plan(now)
                if self.ticking and self.tick_s and self._someone_can_work():
                    tick = (math.floor(now / self.tick_s + _TOLERANCE) + 1) * self.tick_s
            if self.pending and hasattr(self.policy, "yields"):
                self._ask_yields(now)
        if self.pending:
            raise SimulationStalled(
                f"{self.policy.name}: {len(self.pending)} jobs wait and nothing will happen"
            )
        return self.result

    def _arrive(self, job: QueuedJob) -> None:
        self.pending[job.job_id] = job
        self.waiting_by_target[job.target] += 1
        self.waiting_overflow += job.overflow

    def _someone_can_work(self) -> bool:
        return any(
            a.busy is None
            and (
                self.waiting_by_target[a.target] > 0
                or (a.target == OVERFLOW_TARGET and self.waiting_overflow > 0)
            )
            for a in self.agents.values()
        )

    def _plan(self, now: float) -> None:
        ordered = sorted(self.agents.values(), key=lambda a: a.agent_id)
        state = PlanningState(
            now=now,
            backlog=list(self.pending.values()),
            idle=[IdleAgentView(a.agent_id, a.target, a.installed) for a in ordered if not a.busy],
            busy=[self._running_view(a, now) for a in ordered if a.busy is not None],
            install_s=self.trace.install_s,
        )
        started = time.perf_counter()
        assignments = self.policy.plan(state)
        spent = time.perf_counter() - started
        self.result.planning_calls += 1
        self.result.planning_s_total += spent
        self.result.planning_s_max = max(self.result.planning_s_max, spent)
        for assignment in assignments:
            self._start(assignment, now)

    def _check(self, assignment: Assignment) -> _AgentState:
        agent = self.agents.get(assignment.agent_id)
        name = self.policy.name
        if agent is None or agent.busy is not None:
            raise PolicyError(f"{name}: agent {assignment.agent_id!r} is not idle")
        if assignment.family.target != agent.target:
            raise PolicyError(f"{name}: {assignment.family} given to a {agent.target} agent")
        if not assignment.job_ids or len(set(assignment.job_ids)) != len(assignment.job_ids):
            raise PolicyError(f"{name}: empty batch or repeated job for {assignment.agent_id}")
        for job_id in assignment.job_ids:
            job = self.pending.get(job_id)
            if job is None or not job.may_run_as(assignment.family):
                raise PolicyError(
                    f"{name}: job {job_id!r} is not waiting in family {assignment.family}"
                )
        return agent

    def _start(self, assignment: Assignment, now: float) -> None:
        agent = self._check(assignment)
        family = assignment.family
        lane = self.result.schedule[agent.agent_id]
        clock = now
        expected = now
        if agent.installed != family.app:
            install = self.trace.install_s[agent.target]
            lane.append(
                Segment("install", family.org_id, family.app_version_id, now, now + install)
            )
            clock += install
            expected += install
            agent.installed = family.app
        agent.tests = []
        agent.install_end_s = clock
        for job_id in assignment.job_ids:
            job = self.pending.pop(job_id)
            self.waiting_by_target[job.target] -= 1
            self.waiting_overflow -= job.overflow
            end = clock + self.durations[job_id]
            lane.append(Segment("test", family.org_id, family.app_version_id, clock, end, job_id))
            agent.tests.append((job, clock, end))
            clock = end
            expected += _estimate(job)
        agent.busy = BusyAgentView(
            agent.agent_id, agent.target, family, assignment.job_ids, now, expected
        )
        heapq.heappush(self.frees, (clock, agent.agent_id))

    def _running_view(self, agent: _AgentState, now: float) -> BusyAgentView:
        """What a policy may know of a busy agent at ``now``: which of its tests began (the
        agent reports each start), their estimates, never their true durations."""
        assert agent.busy is not None
        view = agent.busy
        started = [(job, start) for job, start, _ in agent.tests if start <= now + _TOLERANCE]
        rest = tuple(job.job_id for job, start, _ in agent.tests if start > now + _TOLERANCE)
        current_start: float | None = None
        if started:
            job, current_start = started[-1]
            current: str | None = job.job_id
            expected_end = current_start + _estimate(job)
        else:  # still installing (an install takes its target's install_s exactly)
            current = None
            expected_end = agent.install_end_s
        return replace(
            view,
            current_job_id=current,
            current_end_s=max(now, expected_end),
            remaining_job_ids=rest,
            current_started_s=current_start,
        )

    def _ask_yields(self, now: float) -> None:
        ordered = sorted(self.agents.values(), key=lambda a: a.agent_id)
        state = PlanningState(
            now=now,
            backlog=list(self.pending.values()),
            idle=[IdleAgentView(a.agent_id, a.target, a.installed) for a in ordered if not a.busy],
            busy=[self._running_view(a, now) for a in ordered if a.busy is not None],
            install_s=self.trace.install_s,
        )
        started = time.perf_counter()
        yields: Sequence[Yield] = self.policy.yields(state)  # type: ignore[attr-defined]
        spent = time.perf_counter() - started
        self.result.planning_s_total += spent
        self.result.planning_s_max = max(self.result.planning_s_max, spent)
        for request in yields:
            self._yield(request, now)

    def _yield(self, request: Yield, now: float) -> None:
        """Ends the agent's batch at its next test boundary: the tests not begun by then
        go back to waiting, with their own arrival times."""
        agent = self.agents.get(request.agent_id)
        if agent is None or agent.busy is None:
            raise PolicyError(f"{self.policy.name}: agent {request.agent_id!r} is not busy")
        begun = [t for t in agent.tests if t[1] <= now + _TOLERANCE]
        rest = agent.tests[len(begun) :]
        if not rest:
            return  # on its last test: it ends there anyway
        boundary = begun[-1][2] if begun else agent.install_end_s
        lane = self.result.schedule[agent.agent_id]
        del lane[len(lane) - len(rest) :]
        for job, _, _ in rest:
            self._arrive(job)
        agent.tests = begun
        expected = begun[-1][1] + _estimate(begun[-1][0]) if begun else agent.install_end_s
        agent.busy = replace(
            agent.busy,
            job_ids=tuple(job.job_id for job, _, _ in begun),
            expected_free_s=expected,
            yielding=True,
        )
        self.frees = [(t, a) for t, a in self.frees if a != agent.agent_id]
        self.frees.append((boundary, agent.agent_id))
        heapq.heapify(self.frees)
        self.result.yields += 1
        self.result.handed_back += len(rest)


def _estimate(job: QueuedJob) -> float:
    return job.estimate_s if job.estimate_s is not None else UNKNOWN_ESTIMATE_S


def simulate(trace: Trace, policy: Policy, *, tick_s: float | None = DEFAULT_TICK_S) -> SimResult:
    """Runs the trace under ``policy``; raises PolicyError / SimulationStalled on a bad policy.

    ``tick_s``: how often a time-dependent policy is asked again while jobs wait and agents
    of their target idle (the agents' lease polling); ``None`` asks only on arrivals and
    agents becoming idle.
    """
    return _Simulation(trace, policy, tick_s).run()


def validate_schedule(trace: Trace, schedule: Mapping[str, Sequence[Segment]]) -> list[str]:
    """Every problem of ``schedule`` as a schedule of ``trace`` (empty: it is valid).

    Checks: every job runs exactly once, on an agent of its target (or, for an ``overflow``
    job, of OVERFLOW_TARGET), after its arrival and
    for its true duration; installs take the target's install time; an agent's segments
    never overlap; a test runs only on an agent holding its app (installed earlier on that
    agent, or held from the start).
    """
    problems: list[str] = []
    jobs = {j.id: j for j in trace.jobs}
    agents = {a.id: a for a in trace.agents}
    runs: Counter[str] = Counter()
    for agent_id, segments in sorted(schedule.items()):
        spec = agents.get(agent_id)
        if spec is None:
            problems.append(f"{agent_id}: not an agent of the trace")
            continue
        holds = spec.installed_app
        previous_end = 0.0
        for n, seg in enumerate(segments):
            where = f"{agent_id}[{n}]"
            if seg.start_s < previous_end - _TOLERANCE:
                problems.append(f"{where}: starts at {seg.start_s} before {previous_end} (overlap)")
            previous_end = max(previous_end, seg.end_s)
            app = App(seg.org_id, seg.app_version_id)
            if seg.kind == "install":
                _expect_length(problems, where, seg, trace.install_s[spec.target])
                holds = app
                continue
            if seg.job_id is None or seg.job_id not in jobs:
                problems.append(f"{where}: unknown job {seg.job_id!r}")
                continue
            job = jobs[seg.job_id]
            runs[job.id] += 1
            family = job.family_on(spec.target) or job.family  # an overflow job may move
            problems.extend(_test_problems(where, seg, family, holds, spec.target))
            if seg.start_s < job.arrival_s - _TOLERANCE:
                problems.append(f"{where}: {job.id} starts before its arrival {job.arrival_s}")
            _expect_length(problems, where, seg, job.duration_s)
    for job_id in jobs:
        if runs[job_id] != 1:
            problems.append(f"{job_id}: runs {runs[job_id]} times (expected exactly once)")
    return problems


def _test_problems(
    where: str, seg: Segment, family: Family, holds: App | None, target: str
) -> list[str]:
    problems = []
    if family.target != target:
        problems.append(f"{where}: {seg.job_id} needs a {family.target} agent, not {target}")
    if App(seg.org_id, seg.app_version_id) != family.app:
        problems.append(f"{where}: {seg.job_id} is labelled with another app")
    if holds != family.app:
        problems.append(f"{where}: {seg.job_id} runs without its app installed")
    return problems


def _expect_length(problems: list[str], where: str, seg: Segment, seconds: float) -> None:
    if abs((seg.end_s - seg.start_s) - seconds) > 1e-3:
        problems.append(f"{where}: lasts {seg.end_s - seg.start_s} s, expected {seconds} s")
