"""Dispatcher use cases: admit jobs into group backlogs, then plan and commit batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import AgentStatus, Batch, BatchState, Job
from qgjob_backend.domain.planner import (
    BacklogJob,
    IdleAgent,
    PlannedBatch,
    PlanningPolicy,
    plan_batches,
)
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import JobStatus, Target

logger = Logger(child=True)


def backlog_view(job: Job) -> BacklogJob:
    return BacklogJob(
        job_id=job.job_id,
        group_key=job.group_key,
        org_id=job.org_id,
        app_version_id=job.app_version_id,
        target=job.target.value,
        priority=job.priority,
        enqueued_at=job.created_at,
        position=job.position,
    )


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
    )


@dataclass(frozen=True)
class DispatchSettings:
    lease_seconds: float
    agent_offline_seconds: float
    policy: PlanningPolicy


class DispatchService:
    def __init__(
        self,
        store: StateStore,
        clock: Callable[[], float],
        new_id: Callable[[], str],
        settings: DispatchSettings,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id
        self._settings = settings

    def admit(self, job_id: str) -> Job | None:
        """Puts a queued job into its group's backlog. Safe to repeat: later calls do nothing."""
        job = self._store.get_job(job_id)
        if job is None:
            logger.warning("message for an unknown job dropped", extra={"job_id": job_id})
            return None
        if job.admitted or job.status is not JobStatus.QUEUED:
            return None
        admitted = self._store.admit_job(job, self._clock())
        if admitted is not None:
            logger.debug("job admitted", extra={"job_id": job_id, "group": job.group_key})
        return admitted

    def plan(self, targets: Iterable[Target] | None = None) -> list[Batch]:
        """Plans each target's pool with the pure planner and commits every batch it can."""
        committed: list[Batch] = []
        for target in sorted(set(targets) if targets is not None else set(Target)):
            committed.extend(self._plan_target(target))
        return committed

    def _plan_target(self, target: Target) -> list[Batch]:
        backlog = self._store.backlog(target)
        if not backlog:
            return []
        now = self._clock()
        fresh_after = now - self._settings.agent_offline_seconds
        agents = [a for a in self._store.list_agents(target) if a.last_seen >= fresh_after]
        idle = [
            IdleAgent(a.agent_id, a.target.value, a.installed)
            for a in agents
            if a.status is AgentStatus.IDLE and a.batch_id is None
        ]
        if not idle:
            return []
        busy_groups = {a.batch_group for a in agents if a.batch_id and a.batch_group}
        planned = plan_batches(
            [backlog_view(j) for j in backlog], idle, now, self._settings.policy, busy_groups
        )
        committed = []
        for plan in planned:
            batch = self._to_batch(plan, now)
            if self._store.commit_batch(batch, now):
                committed.append(batch)
                logger.info(
                    "batch assigned",
                    extra={
                        "batch_id": batch.batch_id,
                        "agent_id": batch.agent_id,
                        "group": batch.group_key,
                        "jobs": len(batch.job_ids),
                        "install_required": batch.install_required,
                    },
                )
            else:
                # Another dispatcher or lease call won the race for this agent or these jobs.
                logger.info("batch not committed (lost a race)", extra={"agent_id": plan.agent_id})
        return committed

    def _to_batch(self, plan: PlannedBatch, now: float) -> Batch:
        return batch_of(plan, "batch-" + self._new_id(), now, self._settings.lease_seconds)
