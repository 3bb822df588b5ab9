"""Device-agent use cases: register, heartbeat, lease, install, start, report, release."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Agent, AgentStatus, AppRef, Batch, BatchState, Job
from qgjob_backend.ports import ArtifactStore, JobOutcome, StateStore
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.dispatch import DispatchService
from qgjob_backend.services.errors import Conflict, NotFound
from qgjob_backend.services.estimates import EstimateService
from qgjob_backend.services.recovery import requeue_unfinished

logger = Logger(child=True)

OUTPUT_EXCERPT_CHARS = 2000
DEREGISTER_ATTEMPTS = 3


def agent_id_for(target: Target, device_id: str) -> str:
    """Stable across restarts, so an agent that comes back resumes its own batch."""
    return f"{target.value}-{device_id}"


@dataclass(frozen=True)
class LeasedBatch:
    batch: Batch
    jobs: list[Job]


@dataclass(frozen=True)
class Heartbeat:
    agent: Agent
    lease_expires_at: float | None


class AgentService:
    def __init__(
        self,
        store: StateStore,
        artifacts: ArtifactStore,
        dispatcher: DispatchService,
        clock: Callable[[], float],
        lease_seconds: float,
        new_id: Callable[[], str],
        estimates: EstimateService,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._dispatcher = dispatcher
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._new_id = new_id
        self._estimates = estimates

    def register(self, target: Target, device_id: str, installed: AppRef | None) -> Agent:
        agent_id = agent_id_for(target, device_id)
        agent = self._store.register_agent(
            agent_id, target, device_id, installed, self._clock(), session_id=self._new_id()
        )
        logger.info("agent registered", extra={"agent_id": agent_id, "status": agent.status})
        return agent

    def _live_agent(self, agent_id: str, session: str | None) -> Agent:
        agent = self._store.touch_agent(agent_id, self._clock())
        if agent is None:
            raise NotFound(
                f"agent {agent_id} is not registered (or was marked offline): register again"
            )
        _require_session(agent, session)
        return agent

    def _check_session(self, agent_id: str, session: str | None) -> None:
        if session is not None:
            _require_session(self._store.get_agent(agent_id), session, agent_id)

    def heartbeat(self, agent_id: str, session: str | None = None) -> Heartbeat:
        agent = self._live_agent(agent_id, session)
        if agent.batch_id is None:
            return Heartbeat(agent, None)
        until = self._clock() + self._lease_seconds
        if not self._store.extend_lease(agent.batch_id, agent_id, until):
            raise Conflict(f"batch {agent.batch_id}: lease lost; stop it and lease again")
        return Heartbeat(agent, until)

    def lease(self, agent_id: str, session: str | None = None) -> LeasedBatch | None:
        """The agent's current batch (resume after a restart) or a freshly planned one."""
        agent = self._live_agent(agent_id, session)
        if agent.batch_id is None and agent.status is AgentStatus.IDLE:
            # An idle agent is the moment to plan: no need to wait for the schedule.
            self._dispatcher.plan([agent.target])
            agent = self._store.get_agent(agent_id) or agent
        if agent.batch_id is None:
            return None
        batch = self._store.get_batch(agent.batch_id)
        until = self._clock() + self._lease_seconds
        if (
            batch is None
            or batch.state is not BatchState.ACTIVE
            or not self._store.extend_lease(batch.batch_id, agent_id, until)
        ):
            # A release that crashed half-way left the agent holding a closed batch:
            # free it, so it neither idles forever nor blocks its group.
            self._store.release_agent(agent_id, agent.batch_id, offline=False, now=self._clock())
            return None
        jobs = [
            j
            for j in self._store.get_jobs(batch.job_ids)
            if j.batch_id == batch.batch_id and j.status in (JobStatus.ASSIGNED, JobStatus.RUNNING)
        ]
        # extend_lease succeeded: the lease now ends at `until` (or later, if it already did).
        batch = replace(batch, lease_expires_at=max(batch.lease_expires_at, until))
        return LeasedBatch(batch, jobs)

    def _own_batch(self, agent_id: str, batch_id: str) -> Batch:
        batch = self._store.get_batch(batch_id)
        if batch is None or batch.agent_id != agent_id:
            raise NotFound(f"batch {batch_id} not found for agent {agent_id}")
        return batch

    def record_install(self, agent_id: str, batch_id: str, session: str | None = None) -> None:
        self._check_session(agent_id, session)
        batch = self._own_batch(agent_id, batch_id)
        now = self._clock()
        if not self._store.record_install(agent_id, batch_id, batch.app, now):
            raise Conflict(f"batch {batch_id}: lease lost; install not recorded")
        if batch.installed_at is None:
            # The batch's first install report (a repeat is also deduplicated by batch id).
            self._estimates.record_install(batch, now)
        logger.info("app installed", extra={"agent_id": agent_id, "group": batch.group_key})

    def start(self, agent_id: str, job_id: str, batch_id: str, session: str | None = None) -> Job:
        self._check_session(agent_id, session)
        job = self._store.start_job(job_id, agent_id, batch_id, self._clock())
        if job is None:
            raise Conflict(
                f"job {job_id} is no longer assigned to batch {batch_id} on {agent_id} "
                "(lease lost or job cancelled): skip it"
            )
        return job

    def report(
        self,
        agent_id: str,
        job_id: str,
        batch_id: str,
        status: JobStatus,
        duration_s: float,
        message: str | None,
        output: str | None,
        session: str | None = None,
    ) -> Job:
        self._check_session(agent_id, session)
        current = self._store.get_job(job_id)
        if current is None:
            raise NotFound(f"job {job_id} not found")
        now = self._clock()
        if status is JobStatus.ERROR and current.attempts + 1 < current.max_attempts:
            # Infrastructure errors are retried; the test itself did not fail.
            retried = self._store.requeue_job(
                current,
                batch_id,
                now,
                count_attempt=True,
                reason=message or "agent error",
                retry_of_batch=batch_id,
            )
            if retried is not None:
                logger.info("job errored; requeued", extra={"job_id": job_id})
                return retried
        output_key = None
        if output:
            # Keyed by batch so a rejected late report can never overwrite the real output.
            output_key = f"results/{current.org_id}/{job_id}/{batch_id}.log"
            self._artifacts.put_text(output_key, output)
        outcome = JobOutcome(
            status=status,
            duration_s=duration_s,
            message=message,
            output_excerpt=output[-OUTPUT_EXCERPT_CHARS:] if output else None,
            output_key=output_key,
        )
        job = self._store.finish_job(job_id, agent_id, batch_id, outcome, now)
        if job is not None:
            # Only the report that made the job final counts (a replay never gets here).
            self._estimates.record_test(job)
            return job
        replay = self._store.get_job(job_id)
        if replay and replay.batch_id == batch_id and replay.status is status:
            return replay  # the same report delivered twice
        if replay and status is JobStatus.ERROR and replay.retry_of_batch == batch_id:
            return replay  # the same error report, which already put the job back
        logger.warning(
            "late report rejected",
            extra={"job_id": job_id, "agent_id": agent_id, "batch_id": batch_id},
        )
        raise Conflict(
            f"job {job_id}: result rejected, the lease of batch {batch_id} was lost "
            "and the job was handed to another agent"
        )

    def complete(self, agent_id: str, batch_id: str, session: str | None = None) -> int:
        """The agent is done with the batch; anything it did not finish goes back."""
        self._check_session(agent_id, session)
        batch = self._own_batch(agent_id, batch_id)
        now = self._clock()
        requeued = 0
        if batch.state is BatchState.ACTIVE:
            requeued = requeue_unfinished(
                self._store,
                batch,
                now,
                f"released unfinished by agent {agent_id}",
                agent_lost=False,
            )
        # Agent first: if we crash before closing the batch, its lease lapses and the
        # reaper closes it; the other order could leave the agent holding a closed batch.
        self._store.release_agent(agent_id, batch_id, offline=False, now=now)
        if batch.state is BatchState.ACTIVE:
            self._store.close_batch(batch, now)
        logger.info("batch complete", extra={"batch_id": batch_id, "requeued": requeued})
        return requeued

    def deregister(self, agent_id: str, session: str | None = None) -> int:
        """Hands back any batch and marks the agent offline.

        A plan may give the agent a batch between the release and the offline write
        (the write then fails its no-batch condition): release that one too and retry.
        """
        requeued = 0
        for _ in range(DEREGISTER_ATTEMPTS):
            agent = self._store.get_agent(agent_id)
            if agent is None:
                raise NotFound(f"agent {agent_id} is not registered")
            _require_session(agent, session)
            if agent.batch_id:
                requeued += self.complete(agent_id, agent.batch_id)
            if self._store.deregister_agent(agent_id, self._clock()):
                logger.info(
                    "agent deregistered", extra={"agent_id": agent_id, "requeued": requeued}
                )
                return requeued
        raise Conflict(f"agent {agent_id} kept receiving batches while deregistering; retry")


def _require_session(agent: Agent | None, session: str | None, agent_id: str = "") -> None:
    """A call from a process whose registration another process has since replaced.

    Calls without a session (older agents) are not checked.
    """
    if session is None:
        return
    if agent is None:
        raise NotFound(f"agent {agent_id} is not registered: register again")
    if agent.session_id != session:
        raise Conflict(
            f"agent {agent.agent_id}: another process registered this device since; "
            "this process must stop (one agent process per --device-id)"
        )
