"""The dispatcher's step after planning: running batches asked to yield at their next test
boundary to priority-1 work still waiting (``domain.preemption`` decides which)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Agent, Batch, BatchState, Job
from qgjob_backend.domain.planner import IdleAgent, usable_estimate
from qgjob_backend.domain.preemption import (
    PreemptionPolicy,
    RunningBatch,
    YieldRequest,
    plan_yields,
    urgent_need,
)
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.backlog_views import backlog_view

logger = Logger(child=True)


class UrgentYields:
    def __init__(self, store: StateStore, policy: PreemptionPolicy, max_reads: int) -> None:
        self._store = store
        self._policy = policy
        # Deciding yields reads at most this many running batches (and their jobs).
        self._max_reads = max_reads

    def ask(
        self,
        backlogs: dict[Target, list[Job]],
        pools: dict[Target, list[Agent]],
        idle: dict[str | None, list[IdleAgent]],
        committed: Sequence[Batch],
        now: float,
        install_s: dict[str, float],
    ) -> list[YieldRequest]:
        """The step after planning: asks running batches to yield at their next test
        boundary for priority-1 work still waiting (``domain.preemption.plan_yields``).

        Reads nothing unless priority-1 work waits in a pool whose idle agents are too few
        for it; then at most ``max_reads`` running batches and their jobs. Each ask is
        a conditional write on the agent (it still holds that batch); asking twice changes
        nothing. Returns the yields asked.
        """
        policy = self._policy
        taken = {job_id for batch in committed for job_id in batch.job_ids}
        given = {batch.agent_id for batch in committed}
        waiting = [
            backlog_view(job)
            for backlog in backlogs.values()
            for job in backlog
            if job.job_id not in taken
        ]
        if not policy.enabled or all(j.priority > policy.urgent_priority for j in waiting):
            return []
        reads = self._max_reads
        asked: list[YieldRequest] = []
        labs = sorted({a.lab_org_id or "" for agents in pools.values() for a in agents})
        for lab_key in labs:
            lab = lab_key or None
            jobs = waiting if lab is None else [j for j in waiting if j.org_id == lab]
            free = [a for a in idle.get(lab, []) if a.agent_id not in given]
            urgent = {(j.target, j.group_key) for j in jobs if j.priority <= policy.urgent_priority}
            held = {
                (a.target.value, a.batch_group)
                for agents in pools.values()
                for a in agents
                if a.batch_id and a.lab_org_id == lab
            }
            # Batches are read only where they may yield: an urgent group's app is on a
            # busy agent, or the need (an upper bound, before reading) exceeds the idle.
            short = {
                Target(target)
                for target, key in urgent
                if (target, key) in held
                or urgent_need(jobs, target, policy) > sum(a.target == target for a in free)
            }
            running: list[RunningBatch] = []
            for target in sorted(short):
                for agent in pools.get(target, []):
                    if agent.lab_org_id != lab or not agent.batch_id or agent.agent_id in given:
                        continue
                    seen = self._running_batch(agent, now, install_s, read=reads > 0)
                    reads -= 1
                    if seen is not None:
                        running.append(seen)
            if running:
                asked += plan_yields(jobs, free, running, now, policy, install_s)
        done = []
        for request in asked:
            if self._store.request_yield(request.agent_id, request.batch_id, now):
                done.append(request)
                logger.info(
                    "batch asked to yield to urgent work",
                    extra={
                        "agent_id": request.agent_id,
                        "batch_id": request.batch_id,
                        "at": request.at,
                        "handed_back": len(request.job_ids),
                    },
                )
        return done

    def _running_batch(
        self, agent: Agent, now: float, install_s: dict[str, float], *, read: bool
    ) -> RunningBatch | None:
        """A busy agent's batch as the preemption core sees it. Without ``read`` (the
        plan's reads are spent) only its expected free time is known: it cannot yield."""
        assert agent.batch_id is not None
        group = agent.batch_group or ""
        free_at = agent.batch_expected_free_at or now
        unread = RunningBatch(agent.agent_id, agent.target.value, group, 10, (), (), free_at)
        if not read:
            return unread
        batch = self._store.get_batch(agent.batch_id)
        if batch is None or batch.state is not BatchState.ACTIVE:
            return None
        own = {j.job_id: j for j in self._store.get_jobs(batch.job_ids)}
        jobs = [own[i] for i in batch.job_ids if i in own and own[i].batch_id == batch.batch_id]
        started = [j for j in jobs if j.status is JobStatus.RUNNING]
        rest = [j for j in jobs if j.status is JobStatus.ASSIGNED]
        if not started and not rest:
            return None
        unknown = self._policy.unknown_estimate_s
        if started:
            current = started[-1]
            ends = (current.started_at or now) + usable_estimate(current.estimate_s, unknown)
        elif batch.install_required and batch.installed_at is None:
            ends = batch.created_at + install_s.get(batch.target.value, 0.0)
        else:
            ends = now  # between two tests (or its start untold yet)
        return RunningBatch(
            agent_id=agent.agent_id,
            target=batch.target.value,
            group_key=batch.group_key,
            priority=min(j.priority for j in started + rest),
            remaining_job_ids=tuple(j.job_id for j in rest),
            remaining_estimates_s=tuple(j.estimate_s for j in rest),
            current_ends_at=max(now, ends),
            batch_id=batch.batch_id,
            yielding=agent.yield_requested,
            planned_free_at=agent.batch_expected_free_at,  # what plan() tells the planner
        )
