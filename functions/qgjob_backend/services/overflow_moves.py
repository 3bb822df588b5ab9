"""The dispatcher's step before planning: waiting jobs of runs submitted with overflow move
to BrowserStack when it would finish them sooner (``domain.overflow`` decides which)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Job
from qgjob_backend.domain.overflow import OverflowPolicy, plan_overflow
from qgjob_backend.domain.planner import BusyAgent, IdleAgent
from qgjob_backend.observability import correlated
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import Target
from qgjob_backend.services.backlog_views import backlog_view

logger = Logger(child=True)


def may_overflow(job: Job) -> bool:
    """Its run allowed it to move and it has not moved yet."""
    return job.overflow is not None and job.moved_from is None and job.target is not job.overflow


class OverflowMoves:
    def __init__(self, store: StateStore, policy: OverflowPolicy) -> None:
        self._store = store
        self._policy = policy

    def move(
        self,
        backlogs: dict[Target, list[Job]],
        idle: Mapping[str | None, Sequence[IdleAgent]],
        busy: Mapping[str | None, Sequence[BusyAgent]],
        install_s: dict[str, float],
        now: float,
    ) -> None:
        """Moves the waiting jobs that may overflow to BrowserStack when it would finish
        them sooner (domain.overflow), before planning, and ``backlogs`` with them.

        ``idle`` and ``busy`` are the agents by lab (None: the shared fleet). An org with
        a private lab runs its jobs on the lab's agents and the shared fleet, so its jobs
        are estimated against both (every waiting job counted against them: a pessimistic
        guess for the lab's lanes); the other orgs' jobs against the shared fleet only.
        Each move is a conditional write: a job assigned, cancelled or moved since the
        read stays put."""
        jobs = {job.job_id: job for backlog in backlogs.values() for job in backlog}
        allowed = {job_id for job_id, job in jobs.items() if may_overflow(job)}
        shared_idle, shared_busy = list(idle.get(None, ())), list(busy.get(None, ()))
        for lab in sorted(lab for lab in {*idle, *busy} if lab is not None):
            own = {job_id for job_id in allowed if jobs[job_id].org_id == lab}
            if own:
                lab_idle = shared_idle + list(idle.get(lab, ()))
                lab_busy = shared_busy + list(busy.get(lab, ()))
                self._move(backlogs, jobs, own, lab_idle, lab_busy, install_s, now)
                allowed -= own
        if allowed:
            self._move(backlogs, jobs, allowed, shared_idle, shared_busy, install_s, now)

    def _move(
        self,
        backlogs: dict[Target, list[Job]],
        jobs: dict[str, Job],
        allowed: set[str],
        idle: Sequence[IdleAgent],
        busy: Sequence[BusyAgent],
        install_s: dict[str, float],
        now: float,
    ) -> None:
        views = [backlog_view(job) for job in jobs.values()]
        moves = plan_overflow(views, allowed, idle, now, self._policy, busy, install_s)
        moved_from: dict[Target, set[str]] = {}
        for move in moves:
            job = jobs[move.job_id]
            done = self._store.move_job(job, Target(move.to_target), now)
            if done is None:
                continue
            jobs[job.job_id] = done
            moved_from.setdefault(job.target, set()).add(job.job_id)
            backlogs[done.target].append(done)
            with correlated(job.run_id):
                logger.info(
                    "job moved to another pool (overflow)",
                    extra={
                        "job_id": job.job_id,
                        "from": job.target.value,
                        "to": done.target.value,
                        "home_finish_at": move.home_finish_at,
                        "remote_finish_at": move.remote_finish_at,
                    },
                )
        # Out of their home pools' backlogs in one pass per pool, however many moved.
        for home, moved in moved_from.items():
            backlogs[home] = [j for j in backlogs[home] if j.job_id not in moved]
