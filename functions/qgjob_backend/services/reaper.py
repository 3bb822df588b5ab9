"""Recovery sweeps: lapsed leases, silent agents, jobs whose queue message was lost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import BatchState
from qgjob_backend.observability import correlated
from qgjob_backend.ports import JobQueue, StateStore
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.recovery import requeue_unfinished

logger = Logger(child=True)


@dataclass(frozen=True)
class SweepReport:
    expired_batches: int
    requeued_jobs: int
    offline_agents: int
    resent_jobs: int
    timed_out_jobs: int
    plans_requested: int  # 1 when jobs went back to the backlog: the dispatcher plans them


@dataclass(frozen=True)
class ReaperSettings:
    agent_offline_seconds: float
    resend_grace_seconds: float
    # Agents enforce timeout_s themselves; the reaper steps in only this much later.
    timeout_grace_seconds: float = 60.0
    # While jobs.fifo holds messages, admission is behind and an unadmitted job's message
    # is most likely among them: its re-send waits, up to this long after the job was
    # written (SQS's deduplication window; later, a lost message is re-sent regardless).
    resend_hold_seconds: float = 300.0


class ReaperService:
    def __init__(
        self,
        store: StateStore,
        queue: JobQueue,
        clock: Callable[[], float],
        settings: ReaperSettings,
        queue_depth: Callable[[], int] | None = None,
    ) -> None:
        """``queue_depth``: messages in jobs.fifo, visible or in flight (SQS's approximate
        counts); without it, re-sends follow the grace and backoff alone."""
        self._store = store
        self._queue = queue
        self._clock = clock
        self._settings = settings
        self._queue_depth = queue_depth

    def sweep(self) -> SweepReport:
        targets: set[Target] = set()
        expired, requeued = self._expire_leases(targets)
        offline = self._mark_silent_agents_offline()
        resent = self._resend_lost_messages()
        timed_out = self._time_out_hung_jobs()
        if targets:
            self._queue.request_plan()
        report = SweepReport(expired, requeued, offline, resent, timed_out, int(bool(targets)))
        if any((expired, requeued, offline, resent, timed_out)):
            logger.info("sweep", extra=report.__dict__)
        return report

    def _expire_leases(self, targets: set[Target]) -> tuple[int, int]:
        expired = requeued = 0
        now = self._clock()
        for batch in self._store.lapsed_batches(now):
            if batch.state is BatchState.ACTIVE:
                # Fences the batch first: from here on a heartbeat cannot revive it.
                if not self._store.expire_batch(batch.batch_id, now):
                    continue
                batch = replace(batch, state=BatchState.EXPIRED)
                expired += 1
            reason = (
                f"agent {batch.agent_id} stopped heartbeating; lease of {batch.batch_id} lapsed"
            )
            requeued += requeue_unfinished(self._store, batch, now, reason, agent_lost=True)
            self._store.release_agent(batch.agent_id, batch.batch_id, offline=True, now=now)
            self._store.close_batch(batch, now)
            targets.add(batch.target)
            logger.warning(
                "lease lapsed",
                extra={"batch_id": batch.batch_id, "agent_id": batch.agent_id},
            )
        return expired, requeued

    def _time_out_hung_jobs(self) -> int:
        """A job running past its timeout on an agent that still heartbeats (a hung test).

        Reads only the running jobs already due (the store's timeout index), never every
        active batch; the conditional write settles a job that moved on since."""
        now = self._clock()
        grace = self._settings.timeout_grace_seconds
        timed_out = 0
        for job in self._store.get_jobs(self._store.overdue_job_ids(now - grace)):
            if job.batch_id is None or job.status is not JobStatus.RUNNING:
                continue
            if job.started_at is None or now <= job.started_at + job.timeout_s + grace:
                continue
            if self._store.time_out_job(job, now) is not None:
                timed_out += 1
                with correlated(job.run_id):  # the job's correlation id, as on its lines
                    logger.warning(
                        "job timed out", extra={"job_id": job.job_id, "agent_id": job.agent_id}
                    )
        return timed_out

    def _mark_silent_agents_offline(self) -> int:
        """Idle agents silent too long -> offline, found in the store's idle index (no scan
        of every agent; busy agents are covered by their batch's lease)."""
        now = self._clock()
        cutoff = now - self._settings.agent_offline_seconds
        marked = 0
        for agent_id in self._store.silent_agent_ids(cutoff):
            marked += self._store.mark_agent_offline(agent_id, cutoff, now)
        return marked

    def _resend_lost_messages(self) -> int:
        """Re-sends jobs never admitted, backing off per job (grace, 2x, 4x, ...).

        While the queue is merely backed up the message is still there: with a
        ``queue_depth``, while the queue holds messages a job is re-sent only once per
        hold (after 1x, 2x, ... the hold). Re-sends past SQS's 5-minute deduplication
        window would add real duplicates: the backoff keeps that to a handful. Each
        re-send is claimed with a conditional write, so two reapers never both send.
        """
        now = self._clock()
        grace = self._settings.resend_grace_seconds
        job_ids = self._store.unadmitted_job_ids(now - grace)
        if not job_ids:
            return 0
        due = [
            j
            for j in self._store.get_jobs(job_ids)
            if j.status is JobStatus.QUEUED
            and not j.admitted
            and now > j.created_at + grace * (2 ** (j.resends + 1) - 1)
        ]
        if due and self._admission_lags():
            # Held: a re-send every hold at most (one past SQS's deduplication window).
            hold = self._settings.resend_hold_seconds
            due = [j for j in due if now > j.created_at + hold * (j.resends + 1)]
        jobs = [j for j in due if self._store.claim_resend(j, now)]
        if jobs:
            failed = self._queue.send(jobs)
            logger.warning(
                "re-sent jobs never admitted", extra={"jobs": len(jobs), "failed": len(failed)}
            )
        return len(jobs)

    def _admission_lags(self) -> bool:
        """True while jobs.fifo still holds messages (the dispatcher has not caught up)."""
        if self._queue_depth is None:
            return False
        try:
            return self._queue_depth() > 0
        except Exception:  # no depth, no hold: re-send as the grace says
            logger.warning("could not read the queue's depth", exc_info=True)
            return False
