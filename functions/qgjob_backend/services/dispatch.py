"""Dispatcher use cases: admit jobs into group backlogs, then plan and commit batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Agent, AgentStatus, Batch, BatchState, Job
from qgjob_backend.domain.overflow import OverflowPolicy
from qgjob_backend.domain.planner import (
    BacklogJob,
    BusyAgent,
    IdleAgent,
    PlannedBatch,
    PlanningPolicy,
    plan_batches,
)
from qgjob_backend.domain.preemption import PreemptionPolicy
from qgjob_backend.observability import (
    NO_METRICS,
    MetricsPort,
    correlated,
    joined,
    report_pools,
)
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.backlog_views import backlog_view
from qgjob_backend.services.estimates import EstimateService
from qgjob_backend.services.overflow_moves import OverflowMoves, may_overflow
from qgjob_backend.services.pool_snapshots import PoolSnapshotService
from qgjob_backend.services.urgent_yields import UrgentYields

logger = Logger(child=True)


def _running(agent: Agent, now: float) -> BusyAgent | None:
    """A busy agent as the planner sees it: it holds its group's app and is free again
    when its batch should end (None: it runs no batch)."""
    if not (agent.batch_id and agent.batch_group):
        return None
    free_at = agent.batch_expected_free_at or now
    return BusyAgent(agent.agent_id, agent.target.value, agent.batch_group, free_at)


def batch_of(plan: PlannedBatch, batch_id: str, now: float, lease_seconds: float) -> Batch:
    """A planned batch as it is committed: active, leased from now."""
    return Batch(
        batch_id=batch_id,
        agent_id=plan.agent_id,
        group_key=plan.group_key,
        org_id=plan.org_id,
        app_version_id=plan.app_version_id,
        target=Target(plan.target),
        job_ids=list(plan.job_ids),
        state=BatchState.ACTIVE,
        created_at=now,
        lease_expires_at=now + lease_seconds,
        install_required=plan.install_required,
        expected_end_at=now + plan.expected_s,
        rests_s=list(plan.rests_s),
    )


@dataclass(frozen=True)
class AdmissionReads:
    """What admitting a batch of messages needs, read up front with two batch reads."""

    jobs: dict[str, Job] = field(default_factory=dict)
    estimates: dict[str, float] = field(default_factory=dict)  # job id -> seconds


@dataclass(frozen=True)
class DispatchSettings:
    lease_seconds: float
    agent_offline_seconds: float
    policy: PlanningPolicy
    # A plan reads at most this many waiting jobs per target (most urgent, then oldest):
    # its cost is bounded however long the backlog grows.
    backlog_window: int = 2000
    # When a running batch yields to waiting priority-1 work (domain.preemption).
    preemption: PreemptionPolicy = field(default_factory=PreemptionPolicy)
    # Deciding yields reads at most this many running batches (and their jobs) per plan:
    # only when priority-1 work waits and the idle agents are too few for it.
    preempt_reads: int = 50
    # When waiting jobs of runs submitted with overflow move to BrowserStack.
    overflow: OverflowPolicy = field(default_factory=OverflowPolicy)


class DispatchService:
    def __init__(
        self,
        store: StateStore,
        clock: Callable[[], float],
        new_id: Callable[[], str],
        settings: DispatchSettings,
        estimates: EstimateService,
        on_assigned: Callable[[Sequence[Batch]], None] | None = None,
        snapshots: PoolSnapshotService | None = None,
        metrics: MetricsPort = NO_METRICS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id
        self._settings = settings
        self._estimates = estimates
        # Told of the batches a plan committed (the push channel wakes their agents).
        self._on_assigned = on_assigned
        # Told what each plan read, for runs' queue positions and ETAs (GET /runs/{id}).
        self._snapshots = snapshots
        # Queue depth, oldest queued age and agents per pool, from the reads a plan makes.
        self._metrics = metrics
        self._overflow = OverflowMoves(store, settings.overflow)
        self._yields = UrgentYields(store, settings.preemption, settings.preempt_reads)

    def prefetch(self, job_ids: Sequence[str]) -> AdmissionReads:
        """Reads the jobs of many messages and their tests' estimates in two batch reads.

        Only an optimisation: when it fails, ``admit`` reads each job itself.
        """
        try:
            jobs = self._store.get_jobs(job_ids)
        except Exception:
            logger.warning("batch read of jobs failed; admitting one by one", exc_info=True)
            return AdmissionReads()
        waiting = [j for j in jobs if not j.admitted and j.status is JobStatus.QUEUED]
        return AdmissionReads({j.job_id: j for j in jobs}, self._estimates.for_jobs(waiting))

    def admit(self, job_id: str, reads: AdmissionReads | None = None) -> Job | None:
        """Puts a queued job into its group's backlog. Safe to repeat: later calls do nothing.

        The job is stamped with its test's current estimate, so planning needs no extra
        read. A job read in ``reads`` may be stale: the conditional write settles it.
        """
        job = reads.jobs.get(job_id) if reads is not None else None
        prefetched = job is not None
        if job is None:
            job = self._store.get_job(job_id)
        if job is None:
            logger.warning("message for an unknown job dropped", extra={"job_id": job_id})
            return None
        if job.admitted or job.status is not JobStatus.QUEUED:
            return None
        if prefetched and reads is not None:
            estimate = reads.estimates.get(job_id)
        else:
            estimate = self._estimates.for_jobs([job]).get(job_id)
        stamped = replace(job, estimate_s=estimate) if estimate is not None else job
        admitted = self._store.admit_job(stamped, self._clock())
        if admitted is not None:
            logger.debug("job admitted", extra={"job_id": job_id, "group": job.group_key})
        return admitted

    def plan(self, targets: Iterable[Target] | None = None) -> list[Batch]:
        """Plans with the pure planner and commits every batch it can.

        Only the dispatcher calls it, for one plan request at a time (see
        ``JobQueue.request_plan``), so plans never race. ``targets`` are the pools that
        asked; the planner still sees every pool with waiting jobs, because pools are
        planned to end together (see ``plan_batches``), so a batch may go to an idle agent
        of another pool. Reads are bounded: the head of each backlog (``backlog_window``
        jobs) and the agents of each pool (of a pool with nothing waiting, for when its
        running batches end; none at all when nothing waits anywhere).
        """
        wanted = set(targets) if targets is not None else set(Target)
        window = self._settings.backlog_window
        backlogs = {target: self._store.backlog(target, window) for target in Target}
        # Jobs that may still overflow: BrowserStack's agents count, even with no work of
        # its own waiting.
        overflowing = any(may_overflow(job) for backlog in backlogs.values() for job in backlog)
        if overflowing:
            wanted.add(Target.BROWSERSTACK)
        if not any(backlogs[target] for target in wanted) and not overflowing:
            report_pools(self._metrics, backlogs, {}, self._clock(), 0.0)  # no agents read
            return []
        now = self._clock()
        fresh_after = now - self._settings.agent_offline_seconds
        # Agents by lab: None is the shared fleet (any org), an org id a private lab.
        idle: dict[str | None, list[IdleAgent]] = {}
        busy: dict[str | None, list[BusyAgent]] = {}
        install_s: dict[str, float] = {}
        pools: dict[Target, list[Agent]] = {}
        for target, backlog in backlogs.items():
            if not backlog and not (overflowing and target is Target.BROWSERSTACK):
                continue
            # A drained agent is no capacity for waiting work: no new batch, no work held
            # back for it while busy, not online for the metrics and the run ETAs.
            pools[target] = [a for a in self._store.list_agents(target) if a.drained_at is None]
            for agent in pools[target]:
                lab = agent.lab_org_id
                if agent.status is AgentStatus.IDLE and agent.batch_id is None:
                    if agent.last_seen < fresh_after:
                        continue  # an idle agent proves it is alive by leasing
                    idle.setdefault(lab, []).append(
                        IdleAgent(agent.agent_id, target.value, agent.installed)
                    )
                elif (running := _running(agent, now)) is not None:
                    busy.setdefault(lab, []).append(running)
            install_s[target.value] = self._estimates.install_seconds(target)
        if overflowing:
            self._overflow.move(backlogs, idle, busy, install_s, now)
        if self._snapshots is not None:
            self._snapshots.observe(backlogs, pools, install_s, now, window)
        report_pools(self._metrics, backlogs, pools, now, fresh_after)
        if not any(Target(a.target) in wanted for agents in idle.values() for a in agents):
            self._yields.ask(backlogs, pools, idle, [], now, install_s)
            return []
        # A pool with nothing to plan still ends when its running batches do: the planner
        # plans the other pools to end no sooner (plan_batches). Read only now that there
        # is something to plan.
        for target in Target:
            if target not in pools:
                for agent in self._store.list_agents(target):
                    if (running := _running(agent, now)) is not None:
                        busy.setdefault(agent.lab_org_id, []).append(running)
        waiting = [backlog_view(job) for backlog in backlogs.values() for job in backlog]
        planned: list[PlannedBatch] = []
        # A private lab runs only its org's jobs: plan those first, then the shared fleet
        # gets everything not yet given out (a lab's org may use both).
        for lab in sorted(lab for lab in idle if lab is not None):
            lab_jobs = [job for job in waiting if job.org_id == lab]
            if lab_jobs:
                planned += self._plan(lab_jobs, idle[lab], busy.get(lab, []), now, install_s)
        if idle.get(None):
            taken = {job_id for plan in planned for job_id in plan.job_ids}
            rest = [job for job in waiting if job.job_id not in taken]
            planned += self._plan(rest, idle[None], busy.get(None, []), now, install_s)
        labs = {a.agent_id: lab for lab, agents in idle.items() for a in agents}
        batches = []
        for plan in planned:
            if labs.get(plan.agent_id) not in (None, plan.org_id):
                logger.error(
                    "plan gave a lab agent another org's batch",
                    extra={"agent_id": plan.agent_id, "org_id": plan.org_id},
                )
                continue
            batches.append(self._to_batch(plan, now))
        # One call: the store shares the run and org counter writes between the batches.
        committed = self._store.commit_batches(batches, now) if batches else []
        done = {batch.batch_id for batch in committed}
        run_of = {job.job_id: job.run_id for backlog in backlogs.values() for job in backlog}
        for batch in batches:
            if batch.batch_id in done:
                # The line carries its jobs' correlation ids (their runs').
                with correlated(joined(run_of.get(job_id) for job_id in batch.job_ids)):
                    logger.info(
                        "batch assigned",
                        extra={
                            "batch_id": batch.batch_id,
                            "agent_id": batch.agent_id,
                            "group": batch.group_key,
                            "jobs": len(batch.job_ids),
                            "job_ids": batch.job_ids,
                            "install_required": batch.install_required,
                        },
                    )
            else:
                # The agent or a job changed since the plan read them (a cancel, a
                # deregistration): nothing of this batch was written.
                logger.info("batch not committed (lost a race)", extra={"agent_id": batch.agent_id})
        if committed and self._on_assigned is not None:
            try:
                self._on_assigned(committed)
            except Exception:  # a wake-up is an optimisation: the agent's safety poll remains
                logger.warning("could not notify agents of their batches", exc_info=True)
        self._yields.ask(backlogs, pools, idle, committed, now, install_s)
        return committed

    def _plan(
        self,
        jobs: list[BacklogJob],
        idle: list[IdleAgent],
        busy: list[BusyAgent],
        now: float,
        install_s: dict[str, float],
    ) -> list[PlannedBatch]:
        if not jobs:
            return []
        return plan_batches(jobs, idle, now, self._settings.policy, busy=busy, install_s=install_s)

    def _to_batch(self, plan: PlannedBatch, now: float) -> Batch:
        return batch_of(plan, "batch-" + self._new_id(), now, self._settings.lease_seconds)
