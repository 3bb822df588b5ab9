"""The planning core: which idle agent gets which batch of which group.

Pure and deterministic (no AWS, no clock, no randomness), so the dispatcher Lambda,
the lease endpoint and the simulator all call this same function.

Policy:
1. Warm first: an idle agent that already holds a group's app version takes that
   group's next batch, so it installs nothing.
2. Then every group still waiting is handed, most urgent first, to a cold agent,
   except a group that a busy agent is already running with less than a full batch
   waiting: that agent holds the app and will take the rest when it is free (unless
   the group has already waited ``aging_seconds``: then a cold agent takes it).
3. Agents left over split the largest remaining groups (an extra install buys
   parallelism only when a group has more work than one batch).
A batch holds jobs of one group only (one org, one app version, one target), most
urgent and oldest first, at most ``max_batch_jobs``. Urgency is the job priority
(1 = most urgent) improved by one level per ``aging_seconds`` of waiting, so a
low-priority group cannot starve.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from qgjob_backend.domain.models import AppRef


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

    @property
    def app(self) -> AppRef:
        return AppRef(self.org_id, self.app_version_id)


@dataclass(frozen=True)
class IdleAgent:
    agent_id: str
    target: str
    installed: AppRef | None


@dataclass(frozen=True)
class PlannedBatch:
    agent_id: str
    group_key: str
    org_id: str
    app_version_id: str
    target: str
    job_ids: tuple[str, ...]
    install_required: bool


@dataclass(frozen=True)
class PlanningPolicy:
    max_batch_jobs: int = 25
    aging_seconds: float = 120.0


class _Group:
    """A group's pending jobs in run order, consumed batch by batch while planning."""

    def __init__(self, jobs: list[BacklogJob], now: float, policy: PlanningPolicy) -> None:
        jobs.sort(key=lambda j: (j.priority, j.enqueued_at, j.position, j.job_id))
        self.jobs = jobs
        self.first = jobs[0]
        self.next_index = 0
        self.batches_planned = 0
        oldest = min(j.enqueued_at for j in jobs)
        self.waited_s = max(0.0, now - oldest)
        best_priority = min(j.priority for j in jobs)
        waited_levels = max(0.0, now - oldest) / policy.aging_seconds
        self.rank = (best_priority - waited_levels, oldest, self.first.group_key)

    @property
    def remaining(self) -> int:
        return len(self.jobs) - self.next_index

    def take(self, count: int) -> tuple[str, ...]:
        chunk = self.jobs[self.next_index : self.next_index + count]
        self.next_index += len(chunk)
        self.batches_planned += 1
        return tuple(j.job_id for j in chunk)


def plan_batches(
    backlog: Iterable[BacklogJob],
    agents: Sequence[IdleAgent],
    now: float,
    policy: PlanningPolicy,
    busy_groups: Collection[str] = (),
) -> list[PlannedBatch]:
    """Assigns at most one batch to each idle agent. Targets never mix.

    ``busy_groups`` are the groups that busy agents are running right now.
    """
    by_target: dict[str, dict[str, list[BacklogJob]]] = {}
    for job in backlog:
        by_target.setdefault(job.target, {}).setdefault(job.group_key, []).append(job)

    plan: list[PlannedBatch] = []
    for target, grouped in sorted(by_target.items()):
        groups = sorted(
            (_Group(jobs, now, policy) for jobs in grouped.values()), key=lambda g: g.rank
        )
        pool = sorted((a for a in agents if a.target == target), key=lambda a: a.agent_id)
        plan.extend(_plan_pool(groups, pool, policy, frozenset(busy_groups)))
    return plan


def _plan_pool(
    groups: list[_Group], pool: list[IdleAgent], policy: PlanningPolicy, busy: frozenset[str]
) -> list[PlannedBatch]:
    planned: list[PlannedBatch] = []
    free: list[IdleAgent] = []

    for agent in pool:
        warm = next((g for g in groups if g.remaining and g.first.app == agent.installed), None)
        if warm is None:
            free.append(agent)
        else:
            planned.append(_batch(agent, warm, policy, install_required=False))

    def worth_another_install(group: _Group) -> bool:
        # A warm busy agent will take a short tail itself; a cold agent pays an install.
        return (
            group.first.group_key not in busy
            or group.remaining >= policy.max_batch_jobs
            or group.waited_s >= policy.aging_seconds
        )

    for agent in free:
        unserved = [
            g for g in groups if g.remaining and g.batches_planned == 0 and worth_another_install(g)
        ]
        if unserved:
            chosen = unserved[0]
        else:
            # Splitting costs one more install: only worth it for work beyond one batch.
            splittable = [g for g in groups if g.remaining > 0 and worth_another_install(g)]
            if not splittable:
                break
            chosen = max(splittable, key=lambda g: (g.remaining, [-x for x in g.rank[:2]]))
        planned.append(_batch(agent, chosen, policy, install_required=True))
    return planned


def _batch(
    agent: IdleAgent, group: _Group, policy: PlanningPolicy, *, install_required: bool
) -> PlannedBatch:
    first = group.first
    return PlannedBatch(
        agent_id=agent.agent_id,
        group_key=first.group_key,
        org_id=first.org_id,
        app_version_id=first.app_version_id,
        target=first.target,
        job_ids=group.take(policy.max_batch_jobs),
        install_required=install_required,
    )
