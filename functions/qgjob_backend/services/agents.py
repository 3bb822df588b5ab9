"""Device-agent use cases: register, heartbeat, lease, install, start, report, release."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from aws_lambda_powertools import Logger

from qgjob_backend.agent_protocol import OUTPUT_EXCERPT_CHARS, agent_id_for, format_credential
from qgjob_backend.build_protocol import ReportedArtifact
from qgjob_backend.domain.batch_end import renewed_free_at
from qgjob_backend.domain.models import (
    Agent,
    AgentStatus,
    AppRef,
    Batch,
    BatchState,
    Job,
    failed_try,
)
from qgjob_backend.domain.vault import VaultMessage
from qgjob_backend.observability import INSTALLS, JOBS_FINISHED, NO_METRICS, MetricsPort
from qgjob_backend.ports import ArtifactStore, Finish, JobOutcome, StateStore
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.auth import Principal, hash_token
from qgjob_backend.services.builds import checked_artifacts
from qgjob_backend.services.errors import Conflict, Forbidden, NotFound
from qgjob_backend.services.estimates import EstimateService
from qgjob_backend.services.recovery import requeue_unfinished

logger = Logger(child=True)

DEREGISTER_ATTEMPTS = 3


@dataclass(frozen=True)
class AgentCredential:
    """What an agent call proves: the registration of ``agent_id`` that knows ``secret``."""

    agent_id: str
    secret: str


@dataclass(frozen=True)
class Registration:
    agent: Agent
    credential: str  # shown to the registering process once; only its hash is kept


@dataclass(frozen=True)
class LeasedBatch:
    batch: Batch
    jobs: list[Job]


@dataclass(frozen=True)
class ReportedResult:
    """One test's result as an agent reports it."""

    job_id: str
    status: JobStatus
    duration_s: float
    message: str | None = None
    output: str | None = None
    session_id: str | None = None  # a BrowserStack session: archived by the vault
    # Uploaded attachments (screenshots, videos, traces) under the job's artifact prefix.
    artifacts: tuple[ReportedArtifact, ...] = ()
    # False: an error no retry can cure (BrowserStack refused the credentials); the job
    # ends as error instead of going back to the queue.
    retryable: bool = True


@dataclass(frozen=True)
class _Finishing:
    """A result checked and ready for the write that makes its job final."""

    current: Job
    agent_id: str
    batch_id: str
    outcome: JobOutcome
    attempt: int  # 1-based: infrastructure attempts and failed tries before it
    session_id: str | None

    @property
    def status(self) -> JobStatus:
        return self.outcome.status


@dataclass(frozen=True)
class Step:
    """One step of a progress call: ``status`` is the job's after an accepted step, None
    with ``refused`` (why) when it was not applied."""

    job_id: str
    status: JobStatus | None
    refused: str | None = None

    @property
    def accepted(self) -> bool:
        return self.refused is None


@dataclass
class Progress:
    """The answer to a progress call; None: that step was not asked for."""

    installed: bool | None = None
    results: list[Step] = field(default_factory=list)
    started: Step | None = None
    completed: bool | None = None
    requeued: int | None = None
    # Jobs of the batch cancelled since it was committed: the agent stops and skips them.
    cancelled: list[str] = field(default_factory=list)
    # The batch is asked to yield to urgent work: complete it after the current test.
    yield_requested: bool = False


@dataclass(frozen=True)
class Heartbeat:
    agent: Agent
    lease_expires_at: float | None

    @property
    def cancelled(self) -> list[str]:
        """Jobs of the agent's batch that were cancelled: stop them now."""
        return self.agent.cancelled_job_ids


class AgentService:
    def __init__(
        self,
        store: StateStore,
        artifacts: ArtifactStore,
        clock: Callable[[], float],
        lease_seconds: float,
        estimates: EstimateService,
        request_plan: Callable[[], None],
        new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(32),
        archive: Callable[[VaultMessage], None] | None = None,
        touch_seconds: float = 0.0,
        metrics: MetricsPort = NO_METRICS,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._estimates = estimates
        self._request_plan = request_plan
        self._new_secret = new_secret
        # Sends a result's BrowserStack session to the results vault (None: no vault).
        self._archive = archive
        # A lease writes the agent's last_seen only when it is older than this (0: always).
        self._touch_seconds = touch_seconds
        # Jobs finished (by target and status) and installs, counted where they happen.
        self._metrics = metrics

    def register(
        self, fleet: Principal, target: Target, device_id: str, installed: AppRef | None
    ) -> Registration:
        """A new registration of the device (it supersedes any earlier one).

        ``fleet`` is the fleet token's principal: its target scope limits what it may
        register, its org makes the agent a private lab's.
        """
        if fleet.target is not None and fleet.target is not target:
            raise Forbidden(f"target: this fleet token registers only {fleet.target.value} agents")
        agent_id = agent_id_for(target, device_id, fleet.org_id)
        secret = self._new_secret()
        agent = self._store.register_agent(
            agent_id,
            target,
            device_id,
            installed,
            self._clock(),
            credential_hash=hash_token(secret),
            lab_org_id=fleet.org_id,
            fleet_hash=fleet.token_hash or None,
        )
        if agent is None:
            raise Conflict(
                f"device_id: agent {agent_id} belongs to another fleet token; "
                "use another --device-id"
            )
        logger.info(
            "agent registered",
            extra={"agent_id": agent_id, "status": agent.status, "lab_org_id": fleet.org_id},
        )
        if agent.batch_id is None:
            self._agent_idle()
        return Registration(agent, format_credential(agent_id, secret))

    def _agent_idle(self) -> None:
        """An agent became free: the moment to plan (the dispatcher plans, not this call).

        Best effort: if the request is lost, the dispatcher's schedule plans anyway.
        """
        try:
            self._request_plan()
        except Exception:
            logger.warning("plan request failed; the schedule will plan", exc_info=True)

    def _refused(self, credential: AgentCredential) -> NotFound | Conflict:
        """Why a registration's call was refused (read only once a write has failed)."""
        agent = self._store.get_agent(credential.agent_id)
        if agent is None or agent.status is AgentStatus.OFFLINE:
            return NotFound(
                f"agent {credential.agent_id} is not registered (or was marked offline): "
                "register again"
            )
        return _superseded(agent)

    def _live_agent(self, credential: AgentCredential) -> Agent:
        """Records a sign of life of this registration (one conditional write)."""
        agent = self._store.touch_agent(
            credential.agent_id, self._clock(), hash_token(credential.secret)
        )
        if agent is None:
            raise self._refused(credential)
        return agent

    def _authorized(self, credential: AgentCredential) -> Agent:
        """The agent, when ``credential`` is its current registration's."""
        agent = self._store.get_agent(credential.agent_id)
        if agent is None:
            raise NotFound(f"agent {credential.agent_id} is not registered: register again")
        if not _holds(agent, credential):
            raise _superseded(agent)
        return agent

    def heartbeat(self, credential: AgentCredential) -> Heartbeat:
        """Extends the lease of the agent's batch: one read and one write of the batch.

        A busy agent's sign of life is its batch's lease, so its heartbeats never write
        the agent item (nor the agents' indexes). An idle agent's heartbeat (older agents
        send them) counts as a sign of life, as a lease does.
        """
        agent = self._authorized(credential)
        agent_id = agent.agent_id
        if agent.batch_id is None:
            return Heartbeat(self._live_agent(credential), None)
        until = self._clock() + self._lease_seconds
        if not self._store.extend_lease(agent.batch_id, agent_id, until):
            raise Conflict(f"batch {agent.batch_id}: lease lost; stop it and lease again")
        return Heartbeat(agent, until)

    def lease(self, credential: AgentCredential) -> LeasedBatch | None:
        """The batch the dispatcher assigned to the agent (or the one it resumes after a
        restart), or None. Constant work: it never plans, whatever the fleet or backlog.

        The credential is checked on a read; the sign of life is written only when the
        agent's last one is older than ``touch_seconds`` (a conditional write, refused for
        a credential superseded since the read).
        """
        agent = self._authorized(credential)
        if agent.status is AgentStatus.OFFLINE:
            raise self._refused(credential)
        if self._clock() - agent.last_seen >= self._touch_seconds:
            agent = self._live_agent(credential)
        agent_id = agent.agent_id
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

    def record_install(self, credential: AgentCredential, batch_id: str) -> None:
        self._record_install(self._authorized(credential).agent_id, batch_id)

    def _record_install(self, agent_id: str, batch_id: str) -> None:
        batch = self._own_batch(agent_id, batch_id)
        now = self._clock()
        if not self._store.record_install(agent_id, batch_id, batch.app, now):
            raise Conflict(f"batch {batch_id}: lease lost; install not recorded")
        if batch.installed_at is None:
            # The batch's first install report (a repeat is also deduplicated by batch id).
            self._estimates.record_install(batch, now)
            self._metrics.count(INSTALLS, target=batch.target.value)
        logger.info("app installed", extra={"agent_id": agent_id, "group": batch.group_key})

    def start(self, credential: AgentCredential, job_id: str, batch_id: str) -> Job:
        return self._start(self._authorized(credential), job_id, batch_id)

    def _start(self, agent: Agent, job_id: str, batch_id: str) -> Job:
        agent_id = agent.agent_id
        now = self._clock()
        job = self._store.start_job(job_id, agent_id, batch_id, now)
        if job is None:
            current = self._store.get_job(job_id)
            if _cancelled_in(current, agent_id, batch_id):
                assert current is not None
                return current  # accepted, status cancelled: the agent skips it
            raise Conflict(
                f"job {job_id} is no longer assigned to batch {batch_id} on {agent_id} "
                "(lease lost or job cancelled): skip it"
            )
        self._renew_free_at(agent, batch_id, job, now)
        return job

    def _renew_free_at(self, agent: Agent, batch_id: str, job: Job, now: float) -> None:
        """The agent's batch is now expected to end at this start plus the job's rest of
        batch (domain.batch_end): written when that moved by more than the drift. Advisory
        (the planner then reads the older figure), so a failed write never fails the start."""
        stored = agent.batch_expected_free_at if agent.batch_id == batch_id else None
        renewed = renewed_free_at(stored, now, job.rest_of_batch_s)
        if renewed is None:
            return
        try:
            self._store.renew_batch_free_at(agent.agent_id, batch_id, renewed)
        except Exception:
            logger.warning(
                "could not renew the batch's expected end; the planner keeps the older one",
                extra={"agent_id": agent.agent_id, "batch_id": batch_id},
                exc_info=True,
            )

    def report(
        self,
        credential: AgentCredential,
        job_id: str,
        batch_id: str,
        status: JobStatus,
        duration_s: float,
        message: str | None,
        output: str | None,
        session_id: str | None = None,
        artifacts: Sequence[ReportedArtifact] = (),
        retryable: bool = True,
    ) -> Job:
        agent_id = self._authorized(credential).agent_id
        prepared = self._prepare(
            agent_id,
            job_id,
            batch_id,
            status,
            duration_s,
            message,
            output,
            session_id,
            artifacts=artifacts,
            retryable=retryable,
        )
        return prepared if isinstance(prepared, Job) else self._finish_one(prepared)

    def _prepare(
        self,
        agent_id: str,
        job_id: str,
        batch_id: str,
        status: JobStatus,
        duration_s: float,
        message: str | None,
        output: str | None,
        session_id: str | None = None,
        *,
        artifacts: Sequence[ReportedArtifact] = (),
        retryable: bool = True,
    ) -> Job | _Finishing:
        """Applies one result, up to the write that makes its job final: that one is
        returned, for the caller to write alone or with the call's other results. An
        ``error`` goes back to the queue while the job has attempts left, unless the agent
        says no retry can cure it (``retryable`` False): then, like a last attempt's
        error, it ends the job."""
        current = self._store.get_job(job_id)
        if current is None:
            raise NotFound(f"job {job_id} not found")
        if _cancelled_in(current, agent_id, batch_id):
            # Cancelled while this agent ran it: the result is not applied (never a late
            # passed), but the agent did nothing wrong and goes on with its batch.
            return current
        if _failure_retried(current, agent_id, batch_id, status):
            return current  # a retried delivery of the failed report that re-queued it
        if current.agent_id != agent_id or current.batch_id != batch_id:
            # Not this agent's job in this batch (any more): nothing it sends may change
            # the job or its output, unless it repeats an error report already applied.
            if self._error_applied(current, agent_id, batch_id, status):
                # The attempt that errored is the one before the requeue counted it.
                self._archive_session(current, current.attempts, session_id)
                return current
            raise self._late_report(job_id, agent_id, batch_id)
        # This report's attempt (1-based): infrastructure attempts and failed tries.
        attempt = current.attempts + len(current.tries) + 1
        now = self._clock()
        if status is JobStatus.FAILED and len(current.tries) < current.failure_retries:
            # A failed test with re-runs left: back to the backlog, the try recorded (a
            # later pass is flaky). A plan now gives it to another agent when one is free.
            tried = failed_try(
                current, agent_id, batch_id, status, duration_s, message, output, now
            )
            left = current.failure_retries - len(current.tries) - 1
            reason = (
                f"try {tried['attempt']} failed on agent {agent_id}"
                f"{': ' + message if message else ''}; re-running ({left} re-run(s) left)"
            )[:2000]
            retried = self._store.retry_failed_job(current, agent_id, batch_id, tried, reason, now)
            if retried is not None:
                logger.info("test failed; re-running", extra={"job_id": job_id})
                self._archive_session(current, attempt, session_id)
                self._agent_idle()
                return retried
        if status is JobStatus.ERROR and not retryable:
            logger.info("job errored; not retryable, so not requeued", extra={"job_id": job_id})
        elif status is JobStatus.ERROR and current.attempts + 1 < current.max_attempts:
            # Infrastructure errors are retried; the test itself did not fail. The write
            # is conditional on this agent and batch still holding the job.
            retried = self._store.requeue_job(
                current,
                batch_id,
                now,
                count_attempt=True,
                reason=message or "agent error",
                retry_of_batch=batch_id,
                agent_id=agent_id,
            )
            if retried is not None:
                logger.info("job errored; requeued", extra={"job_id": job_id})
                self._archive_session(current, attempt, session_id)
                return retried
        output_key = None
        if output and len(output) > OUTPUT_EXCERPT_CHARS:
            # Only output the excerpt cannot hold goes to S3 (one PUT): most tests' output
            # fits, and then the excerpt on the job is the whole of it (output_key None),
            # whatever the status. Keyed by batch so a rejected late report can never
            # overwrite the real output.
            output_key = f"results/{current.org_id}/{job_id}/{batch_id}.log"
            self._artifacts.put_text(output_key, output)
        outcome = JobOutcome(
            status=status,
            duration_s=duration_s,
            message=message,
            output_excerpt=output[-OUTPUT_EXCERPT_CHARS:] if output else None,
            output_key=output_key,
            session_id=session_id,
            artifacts=tuple(checked_artifacts(current.org_id, batch_id, job_id, artifacts)),
        )
        return _Finishing(current, agent_id, batch_id, outcome, attempt, session_id)

    def _finish_one(self, finishing: _Finishing) -> Job:
        """Writes one result that makes its job final; a replay of it is accepted again."""
        f = finishing
        # `current` names the run and org whose counters move: passing it saves a read.
        job = self._store.finish_job(
            f.current.job_id, f.agent_id, f.batch_id, f.outcome, self._clock(), job=f.current
        )
        if job is not None:
            return self._finished(f, job)
        job_id, agent_id, batch_id, status = f.current.job_id, f.agent_id, f.batch_id, f.status
        attempt, session_id = f.attempt, f.session_id
        replay = self._store.get_job(job_id)
        if (
            replay
            and replay.batch_id == batch_id
            and replay.agent_id == agent_id
            and replay.status is status
        ):
            # The same report delivered twice: the vault message again, in case the first
            # delivery's send failed (the vault is idempotent per job and attempt).
            self._archive_session(replay, attempt, session_id)
            return replay
        if replay and self._error_applied(replay, agent_id, batch_id, status):
            self._archive_session(replay, replay.attempts, session_id)
            return replay
        raise self._late_report(job_id, agent_id, batch_id)

    def _finished(self, finishing: _Finishing, job: Job) -> Job:
        """What follows the write that made a job final (a replay never gets here)."""
        self._estimates.record_test(job)
        self._metrics.count(JOBS_FINISHED, target=job.target.value, status=job.status.value)
        self._archive_session(job, finishing.attempt, finishing.session_id)
        return job

    def _finish_all(self, finishing: Sequence[_Finishing]) -> list[Job | Conflict | NotFound]:
        """The results of one progress call that make their jobs final, in one write when
        there are several (their run's and org's counters move once); when that write is
        refused, one by one, so each gets its own answer."""
        if len(finishing) > 1:
            written = self._store.finish_jobs(
                [Finish(f.current, f.agent_id, f.batch_id, f.outcome) for f in finishing],
                self._clock(),
            )
            if written is not None:
                return [self._finished(f, job) for f, job in zip(finishing, written, strict=True)]
        answers: list[Job | Conflict | NotFound] = []
        for f in finishing:
            try:
                answers.append(self._finish_one(f))
            except (Conflict, NotFound) as error:
                answers.append(error)
        return answers

    def _archive_session(self, job: Job, attempt: int, session_id: str | None) -> None:
        """Asks the vault to archive the attempt's BrowserStack session record.

        Sent after the result is applied; a failed send raises (the agent's call gets a
        503 and is retried, and the replay sends again), so no session is left out.
        """
        if session_id is None or self._archive is None:
            return
        self._archive(
            VaultMessage(
                org_id=job.org_id, job_id=job.job_id, attempt=max(1, attempt), session_id=session_id
            )
        )

    def _error_applied(self, job: Job, agent_id: str, batch_id: str, status: JobStatus) -> bool:
        """A retried delivery of this agent's error report, which already put the job back."""
        if status is not JobStatus.ERROR or job.retry_of_batch != batch_id:
            return False
        batch = self._store.get_batch(batch_id)  # only on this rare path
        return batch is not None and batch.agent_id == agent_id

    @staticmethod
    def _late_report(job_id: str, agent_id: str, batch_id: str) -> Conflict:
        logger.warning(
            "late report rejected",
            extra={"job_id": job_id, "agent_id": agent_id, "batch_id": batch_id},
        )
        return Conflict(
            f"job {job_id}: result rejected, batch {batch_id} of agent {agent_id} does not "
            "hold it (its lease was lost and the job was handed back or to another agent)"
        )

    def complete(self, credential: AgentCredential, batch_id: str, *, idle: bool = True) -> int:
        """The agent is done with the batch; anything it did not finish goes back.

        ``idle``: the agent takes more work now (False when it is going away)."""
        return self._complete(self._authorized(credential).agent_id, batch_id, idle=idle)

    def _complete(self, agent_id: str, batch_id: str, *, idle: bool) -> int:
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
        released = self._store.release_agent(agent_id, batch_id, offline=False, now=now)
        if batch.state is BatchState.ACTIVE:
            self._store.close_batch(batch, now)
        if released and idle:
            self._agent_idle()
        logger.info("batch complete", extra={"batch_id": batch_id, "requeued": requeued})
        return requeued

    def progress(
        self,
        credential: AgentCredential,
        batch_id: str,
        *,
        installed: bool = False,
        results: Sequence[ReportedResult] = (),
        start: str | None = None,
        complete: bool = False,
    ) -> Progress:
        """What an agent did in its batch since its last call, in one request: the install,
        results, the next start, the batch's completion, in that order. Each step is the
        one its own route takes (same conditions, same idempotency: a replay changes
        nothing), and the first one refused (the lease was lost, or the job is not this
        batch's) ends the call: the steps after it are not applied. The credential is
        checked once for all of them."""
        agent = self._authorized(credential)
        agent_id = agent.agent_id
        progress = Progress()
        if agent.batch_id == batch_id:
            progress.cancelled = agent.cancelled_job_ids
            progress.yield_requested = agent.yield_requested
        refused: str | None = None
        if installed:
            try:
                self._record_install(agent_id, batch_id)
                progress.installed = True
            except (Conflict, NotFound) as error:
                progress.installed = False
                refused = error.message
        # Results that end their jobs are written together once the others are applied.
        finishing: dict[int, _Finishing] = {}
        first_of: dict[str, int] = {}  # job id -> the index of its result in this call
        repeats: dict[int, int] = {}  # a result sent twice in one call -> its first copy
        for result in results:
            if refused is not None:
                progress.results.append(Step(result.job_id, None, _not_applied(refused)))
                continue
            if result.job_id in first_of and first_of[result.job_id] in finishing:
                # The same job twice in one call: one write, both get its answer (as a
                # replayed call would).
                repeats[len(progress.results)] = first_of[result.job_id]
                progress.results.append(Step(result.job_id, None, "not written yet"))
                continue
            first_of.setdefault(result.job_id, len(progress.results))
            try:
                prepared = self._prepare(
                    agent_id,
                    result.job_id,
                    batch_id,
                    result.status,
                    result.duration_s,
                    result.message,
                    result.output,
                    result.session_id,
                    artifacts=result.artifacts,
                    retryable=result.retryable,
                )
            except (Conflict, NotFound) as error:
                refused = error.message
                progress.results.append(Step(result.job_id, None, refused))
                continue
            if isinstance(prepared, Job):
                progress.results.append(Step(result.job_id, prepared.status))
            else:
                finishing[len(progress.results)] = prepared
                progress.results.append(Step(result.job_id, None, "not written yet"))
        answers = self._finish_all(list(finishing.values()))
        for index, answer in zip(finishing, answers, strict=True):
            job_id = progress.results[index].job_id
            if isinstance(answer, Job):
                progress.results[index] = Step(job_id, answer.status)
            elif refused is None:
                refused = answer.message
                progress.results[index] = Step(job_id, None, refused)
            else:
                progress.results[index] = Step(job_id, None, answer.message)
        for index, first in repeats.items():
            progress.results[index] = progress.results[first]
        if start is not None:
            if refused is not None:
                progress.started = Step(start, None, _not_applied(refused))
            else:
                try:
                    progress.started = Step(start, self._start(agent, start, batch_id).status)
                except (Conflict, NotFound) as error:
                    refused = error.message
                    progress.started = Step(start, None, refused)
        if complete and refused is None:
            try:
                progress.requeued = self._complete(agent_id, batch_id, idle=True)
                progress.completed = True
            except NotFound:
                progress.completed = False
        elif complete:
            progress.completed = False
        return progress

    def deregister(self, credential: AgentCredential) -> int:
        """Hands back any batch and marks the agent offline.

        A plan may give the agent a batch between the release and the offline write
        (the write then fails its no-batch condition): release that one too and retry.
        """
        requeued = 0
        for _ in range(DEREGISTER_ATTEMPTS):
            agent = self._authorized(credential)
            if agent.batch_id:
                requeued += self.complete(credential, agent.batch_id, idle=False)
            if self._store.deregister_agent(agent.agent_id, self._clock()):
                logger.info(
                    "agent deregistered", extra={"agent_id": agent.agent_id, "requeued": requeued}
                )
                return requeued
        raise Conflict(
            f"agent {credential.agent_id} kept receiving batches while deregistering; retry"
        )


def _failure_retried(job: Job, agent_id: str, batch_id: str, status: JobStatus) -> bool:
    """The job's last failed try is this agent's report in this batch (a replay of it)."""
    if status is not JobStatus.FAILED or not job.tries:
        return False
    last = job.tries[-1]
    return bool(last.get("agent_id") == agent_id and last.get("batch_id") == batch_id)


def _cancelled_in(job: Job | None, agent_id: str, batch_id: str) -> bool:
    """The job was cancelled while this agent's batch held it."""
    return (
        job is not None
        and job.status is JobStatus.CANCELLED
        and job.agent_id == agent_id
        and job.batch_id == batch_id
    )


def _not_applied(refused: str) -> str:
    return f"not applied: an earlier step was refused ({refused})"


def _holds(agent: Agent, credential: AgentCredential) -> bool:
    expected = agent.credential_hash or ""
    return bool(expected) and hmac.compare_digest(expected, hash_token(credential.secret))


def _superseded(agent: Agent) -> Conflict:
    return Conflict(
        f"agent {agent.agent_id}: this credential is not the agent's current registration "
        "(another process registered this device since, or it is forged); this process "
        "must stop (one agent process per --device-id)"
    )
