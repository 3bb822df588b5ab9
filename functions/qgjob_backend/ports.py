"""Ports: what the services need from the outside world.

Every state-changing method is one conditional write (or one transaction) in the
DynamoDB adapter: it returns None/False when its precondition no longer holds, so a
step run twice, late or concurrently changes nothing the second time. The in-memory
fake used by unit tests honours the same preconditions.

Counters (domain.progress): every method that moves a job to another counter (create,
commit, cancel, finish, requeue, time out) moves its run's counters and its org's metrics
in the same conditional write, so ``get_run`` and ``org_metrics`` each read a bounded,
constant number of items and never drift. A job's run must exist before its jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from qgjob_backend.domain.builds import Build
from qgjob_backend.domain.estimates import DurationEstimate, EstimateKey
from qgjob_backend.domain.models import Agent, AppRef, Batch, Job, Run
from qgjob_backend.domain.queue import PoolSnapshot
from qgjob_backend.domain.vault import AuditRecord, VaultMessage
from qgjob_backend.schema import JobStatus, Target


@dataclass(frozen=True)
class JobOutcome:
    status: JobStatus
    duration_s: float
    message: str | None
    output_excerpt: str | None
    output_key: str | None
    session_id: str | None = None  # the BrowserStack session the result came from
    # The test's uploaded attachments (build_protocol.ReportedArtifact dicts).
    artifacts: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Finish:
    """One result for StateStore.finish_jobs: ``job`` as the caller read it (it names the
    run and org whose counters move)."""

    job: Job
    agent_id: str
    batch_id: str
    outcome: JobOutcome


@dataclass(frozen=True)
class JobPage:
    """Jobs of a run in submission order; ``more``: later positions follow."""

    jobs: list[Job]
    more: bool


@dataclass(frozen=True)
class OrgMetrics:
    jobs_by_status: dict[str, int]
    batches: int
    installs: int
    agent_app_pairs: int


class StateStore(Protocol):
    # ----------------------------------------------------------------- runs
    def get_run(self, run_id: str, *, consistent: bool = True) -> Run | None:
        """The run and its counters: one item. ``consistent=False`` (half the cost) may
        lag the latest writes by a moment, never show them out of order."""

    def create_run(self, run: Run) -> bool:
        """Writes the run if no run has that id; False when it already exists. Its job ids
        must be ``domain.progress.run_job_ids`` of the run (ValueError otherwise)."""

    def create_jobs(self, jobs: Sequence[Job]) -> None:
        """Writes each job that does not exist yet, counting it queued on its run and org;
        existing ones are left untouched (and not counted again). LookupError when a
        job's run does not exist."""

    def run_jobs(self, run_id: str, after: int, limit: int, *, total: int) -> JobPage:
        """Up to ``limit`` jobs of the run (of ``total`` jobs, as the caller read it) with
        a position above ``after``, by position (bounded: one batch read of at most
        ``limit`` jobs; their ids derive from the run and each position)."""

    # ----------------------------------------------------------------- jobs
    def get_job(self, job_id: str) -> Job | None: ...

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]: ...

    def admit_job(self, job: Job, now: float) -> Job | None:
        """queued and not yet admitted -> in its group's backlog. None when not applicable."""

    def backlog(self, target: Target, limit: int | None = None) -> list[Job]:
        """Admitted queued jobs of a target (every group): the most urgent first, then the
        oldest; at most ``limit`` of them."""

    def move_job(self, job: Job, to: Target, now: float) -> Job | None:
        """Overflow: the waiting ``job`` moves to the ``to`` pool (its target, group and
        backlog entry; ``moved_from`` its submitted target; its run's ``moved`` count in the
        same write), only while it is queued in the backlog, allowed to move to ``to`` and
        never moved before. The moved job, or None when not (nothing written): a repeat
        moves nothing twice."""

    def overdue_job_ids(self, due_before: float) -> list[str]:
        """Running jobs whose started_at + timeout_s is before ``due_before``, earliest
        first (from a sparse index of running jobs: never a read of every batch)."""

    def unadmitted_job_ids(self, created_before: float) -> list[str]:
        """Jobs written before the cutoff but never admitted (their message may be lost)."""

    def claim_resend(self, job: Job, now: float) -> bool:
        """Still unadmitted and not re-sent by anyone since ``job`` was read: count a resend."""

    def cancel_job(self, job_id: str, now: float, *, job: Job | None = None) -> Job | None:
        """queued -> cancelled. ``job``: the caller's copy (it names the run and org whose
        counters move; without it the store reads the job)."""

    def cancel_jobs(self, jobs: Sequence[Job], now: float) -> list[Job]:
        """Each of ``jobs`` (the caller's copies) that is not final -> cancelled, as it is
        stored: queued ones leave the backlog; an assigned or running one stays on its
        batch and agent, and its agent gets a cancel mark (``Agent.cancelled_job_ids``)
        so its next heartbeat tells it to stop the test; any later result or start for it
        is refused. Counters move once per job. Returns the jobs this call cancelled
        (a job cancelled already, finished, or changed since it was read and then found
        final, is left out); repeating the call cancels nothing twice."""

    def start_job(self, job_id: str, agent_id: str, batch_id: str, now: float) -> Job | None:
        """assigned|running in this batch on this agent -> running (first start time kept)."""

    def finish_job(
        self,
        job_id: str,
        agent_id: str,
        batch_id: str,
        outcome: JobOutcome,
        now: float,
        *,
        job: Job | None = None,
    ) -> Job | None:
        """assigned|running in this batch on this agent -> final status. ``job`` as in
        cancel_job (passing it saves a read)."""

    def finish_jobs(self, finishes: Sequence[Finish], now: float) -> list[Job] | None:
        """Several finish_job in one write: all or nothing, the counters of each run and
        org moved once for all of them. The finished jobs in order, or None (nothing
        written) when any job is no longer assigned|running there."""

    def requeue_job(
        self,
        job: Job,
        batch_id: str,
        now: float,
        *,
        count_attempt: bool,
        reason: str,
        retry_of_batch: str | None = None,
        agent_id: str | None = None,
    ) -> Job | None:
        """assigned|running in this batch (on this agent, when given) -> back in the backlog
        (or error when out of attempts)."""

    def retry_failed_job(
        self,
        job: Job,
        agent_id: str,
        batch_id: str,
        tried: dict[str, Any],
        reason: str,
        now: float,
    ) -> Job | None:
        """assigned|running in this batch on this agent -> back in the backlog to be run
        again, ``tried`` (domain.models.failed_try) appended to its tries and
        ``retry_of_batch`` set to ``batch_id``; no attempt counted. None when the job is
        no longer this agent's in this batch (nothing written)."""

    # --------------------------------------------------------------- agents
    def get_agent(self, agent_id: str) -> Agent | None: ...

    def register_agent(
        self,
        agent_id: str,
        target: Target,
        device_id: str,
        installed: AppRef | None,
        now: float,
        *,
        credential_hash: str,
        lab_org_id: str | None = None,
        fleet_hash: str | None = None,
    ) -> Agent | None:
        """Creates or revives an agent with a new credential. An agent holding a batch
        keeps it (it resumes). None when another fleet token registered this agent id."""

    def touch_agent(self, agent_id: str, now: float, credential_hash: str) -> Agent | None:
        """Records a sign of life of this registration; None when the agent is unknown,
        marked offline, or registered since with another credential."""

    def set_agent_connection(
        self, agent_id: str, credential_hash: str, connection_id: str, now: float
    ) -> Agent | None:
        """The agent's push connection is now ``connection_id`` (a sign of life too); None
        when the agent is unknown, offline, or registered since with another credential."""

    def clear_agent_connection(self, agent_id: str, connection_id: str) -> bool:
        """Forgets the agent's push connection, only if it is still ``connection_id``."""

    def agent_for_connection(self, connection_id: str) -> str | None:
        """The id of the agent whose push connection is ``connection_id`` (one index read;
        eventually consistent: a connection stored a moment ago may not be found yet)."""

    def list_agents(self, target: Target) -> list[Agent]:
        """Every agent of ``target`` (any status), by agent id."""

    def silent_agent_ids(self, silent_since: float) -> list[str]:
        """Idle agents without a batch last seen before ``silent_since``, oldest first
        (from a sparse index of idle agents: never a scan of every agent)."""

    def record_install(self, agent_id: str, batch_id: str, app: AppRef, now: float) -> bool:
        """The agent now holds app (only while it holds this batch)."""

    def release_agent(self, agent_id: str, batch_id: str, *, offline: bool, now: float) -> bool:
        """Frees the agent from this batch: idle again, or offline."""

    def renew_batch_free_at(self, agent_id: str, batch_id: str, free_at: float) -> bool:
        """Sets when the agent's batch is now expected to end (``batch_expected_free_at``),
        only while it holds ``batch_id``: False otherwise. Moves no index."""

    def request_yield(self, agent_id: str, batch_id: str, now: float) -> bool:
        """Asks the agent to end ``batch_id`` after its current test and hand back the rest
        (``Agent.yield_requested``), only while it holds that batch: False otherwise
        (it finished or lost it meanwhile). Repeating it changes nothing."""

    def mark_agent_offline(self, agent_id: str, silent_since: float, now: float) -> bool:
        """An idle agent silent since before silent_since -> offline."""

    def deregister_agent(self, agent_id: str, now: float) -> bool:
        """An agent without a batch -> offline."""

    # -------------------------------------------------------------- batches
    def commit_batch(self, batch: Batch, now: float) -> bool:
        """Atomically: agent idle -> busy, batch created, every job queued -> assigned,
        with the counters of their runs and org (+1 batch). At most config.MAX_BATCH_JOBS
        jobs (ValueError otherwise).

        False (and nothing written) when any precondition fails, e.g. another
        dispatcher assigned one of the jobs or the agent first.
        """

    def commit_batches(self, batches: Sequence[Batch], now: float) -> list[Batch]:
        """``commit_batch`` for each batch (fewer, shared counter writes): the batches that
        committed, in order. A batch whose precondition fails is not written; the others
        still are."""

    def get_batch(self, batch_id: str) -> Batch | None: ...

    def extend_lease(self, batch_id: str, agent_id: str, until: float) -> bool: ...

    def lapsed_batches(self, now: float) -> list[Batch]:
        """Batches whose lease ran out (active ones, and expired ones not yet cleaned up),
        by lease end. Reads only batches whose index check time is due; it may move the
        check time of a batch whose lease was extended since (no change a caller sees)."""

    def time_out_job(self, job: Job, now: float) -> Job | None:
        """running in the same batch since the same start -> timed_out."""

    def expire_batch(self, batch_id: str, now: float) -> bool:
        """active with a lapsed lease -> expired (a heartbeat can no longer extend it)."""

    def close_batch(self, batch: Batch, now: float) -> bool:
        """active (its agent finished) -> done, or expired -> cleaned; leaves the lease index."""

    # -------------------------------------------------------------- metrics
    def org_metrics(self, org_id: str) -> OrgMetrics:
        """The org's counters (jobs by counter, batches, first installs, distinct agent /
        app version / target pairs): a constant number of reads, whatever its history."""


class EstimateConflict(RuntimeError):
    """An estimate kept changing under a record call (concurrent writers); not recorded."""


class EstimateStore(Protocol):
    """Duration estimates (advisory: callers survive any failure of these methods).

    A record call is one optimistic-concurrency update: read the estimate, add the sample
    (``DurationEstimate.updated``), write it back only if nobody wrote in between (else
    re-read and retry a few times, then raise EstimateConflict). The sample id (a job or
    batch id) makes it idempotent: a sample already counted is not counted again.
    """

    def test_estimates(self, keys: Sequence[EstimateKey]) -> dict[EstimateKey, DurationEstimate]:
        """The estimates that exist among ``keys`` (one batch read; missing keys left out)."""

    def install_estimates(self, targets: Sequence[Target]) -> dict[Target, DurationEstimate]:
        """The install estimates that exist among ``targets``."""

    def record_test_duration(
        self, key: EstimateKey, sample_id: str, duration_s: float, now: float
    ) -> bool:
        """Counts one run of a test; False when that sample id was already counted."""

    def record_install_duration(
        self, target: Target, sample_id: str, duration_s: float, now: float
    ) -> bool:
        """Counts one app install on a target; False when already counted."""


class JobQueue(Protocol):
    def send(self, jobs: Sequence[Job]) -> list[str]:
        """Sends one message per job (group = its group key); returns ids that failed."""

    def depth(self) -> int:
        """Messages in the queue, visible or in flight (SQS's approximate counts)."""

    def request_plan(self) -> None:
        """Asks the dispatcher to plan. Every request goes to one message group, so plans
        run one at a time (they never race), and requests queued together make one plan."""


class AgentNotifier(Protocol):
    """The push channel: posts a message to one agent's WebSocket connection."""

    def send(self, connection_id: str, message: Mapping[str, Any]) -> bool:
        """Posts ``message`` as JSON; False when the connection is gone (HTTP 410), so the
        caller can forget it. Any other failure raises."""


class ArtifactStore(Protocol):
    def put_text(self, key: str, text: str) -> None: ...


@dataclass(frozen=True)
class TokenRecord:
    token_hash: str
    kind: str
    org_id: str | None
    created_at: float
    label: str | None = None
    target: str | None = None  # a fleet token scoped to one target
    # Revoked tokens stay as records (who had access, until when); they never authenticate.
    revoked_at: float | None = None
    replaced_by: str | None = None  # the hash of the token a rotation issued in its place


class TokenStore(Protocol):
    def put(self, record: TokenRecord) -> bool: ...

    def get(self, token_hash: str) -> TokenRecord | None: ...

    def revoke(
        self, token_hash: str, now: float, replaced_by: str | None = None
    ) -> TokenRecord | None:
        """Marks the token revoked (one conditional write): the revoked record, or None
        when there is no such token or it was revoked already (nothing written)."""


# ---------------------------------------------------------------- builds
@dataclass(frozen=True)
class BuildPage:
    builds: list[Build]
    more: bool  # later app versions follow


class BuildStore(Protocol):
    """An org's app builds, one item per (org, app version)."""

    def get_build(self, org_id: str, app_version_id: str) -> Build | None: ...

    def save_build(self, build: Build, expected_version: int | None) -> bool:
        """Writes ``build`` only if the stored one still has ``expected_version`` (None:
        only if there is none); False when someone wrote in between."""

    def list_builds(self, org_id: str, after: str | None, limit: int) -> BuildPage:
        """Up to ``limit`` of the org's builds by app version id, after ``after`` (one
        query of one partition: bounded by ``limit``)."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    sha256_b64: str | None  # S3's SHA-256 of the object, when it has one


@dataclass(frozen=True)
class PresignedForm:
    url: str
    fields: dict[str, str]


class UploadStore(Protocol):
    """Presigned links to the artifacts bucket: bytes never pass through the API."""

    def presigned_put(
        self, key: str, size: int, sha256_b64: str, content_type: str, expires_s: int
    ) -> str:
        """A PUT URL whose signature covers Content-Length, Content-Type and the SHA-256."""

    def presigned_get(self, key: str, expires_s: int) -> str: ...

    def presigned_post(self, key_prefix: str, max_bytes: int, expires_s: int) -> PresignedForm:
        """A POST form for any key under ``key_prefix``, each body at most ``max_bytes``."""

    def head(self, key: str) -> StoredObject | None:
        """The object's size and checksum (one HEAD), None when there is none."""


# ----------------------------------------------------------------- vault
# The results vault (services.vault) over three ports: the BrowserStack results API, an
# object store for the raw archives, and the audit store. Each has a boto3/requests
# adapter and an in-memory fake (tests/unit/fakes.py).


class ResultsApiUnreachable(RuntimeError):
    """The results API could not be reached (connection refused, reset, timed out)."""


class MissingCredentials(RuntimeError):
    """No results-API credentials are stored for the org (set them with infra.admin)."""


@dataclass(frozen=True)
class FetchedSession:
    """One answer of the results API, as received."""

    status: int
    body: bytes  # at most max_bytes of it
    source: str  # the URL asked (never carries credentials)
    retry_after_s: float | None = None  # the Retry-After header, in seconds
    too_large: bool = False  # the body was over max_bytes (``body`` is then empty)
    size: int | None = None  # the body's size when known (Content-Length or read)


class ResultsApi(Protocol):
    def fetch_session(self, org_id: str, session_id: str, max_bytes: int) -> FetchedSession:
        """One GET of the session's record with the org's credentials; no retries.
        Raises ResultsApiUnreachable (network) or MissingCredentials."""


class ObjectStore(Protocol):
    def put_new(self, key: str, body: bytes, content_type: str) -> bool:
        """Writes the object (encrypted at rest) only if no object has that key; False
        when one already exists (it is left untouched). Any failure raises."""

    def get(self, key: str) -> bytes | None: ...

    def presigned_get(self, key: str, expires_s: int) -> str:
        """A URL that GETs the object for ``expires_s`` seconds, without credentials."""


class AuditStore(Protocol):
    def put(self, record: AuditRecord) -> bool:
        """Writes the record if its (job_id, attempt) has none; False when one exists."""

    def get(self, job_id: str, attempt: int) -> AuditRecord | None: ...

    def for_job(self, job_id: str) -> list[AuditRecord]:
        """The job's records by attempt (one query: a job has a few attempts at most)."""


class VaultQueue(Protocol):
    def send(self, message: VaultMessage) -> None:
        """Asks the vault to archive one attempt's session record (at least once)."""


class PoolSnapshotStore(Protocol):
    """One snapshot per pool (target) of its queue and agents (domain.queue)."""

    def put_snapshot(self, snapshot: PoolSnapshot, min_interval_s: float) -> bool:
        """Writes the pool's snapshot unless the stored one was taken less than
        ``min_interval_s`` before it (one conditional write: plans racing in several
        containers write one between them); False when not written."""

    def get_snapshot(self, target: Target) -> PoolSnapshot | None:
        """The pool's latest snapshot (one eventually consistent read of one item)."""


# ---------------------------------------------------------- org settings
@dataclass(frozen=True)
class OrgSettings:
    """What an operator set for one org (``infra.admin orgs set``); an org that never set
    anything has the defaults, at version 0."""

    org_id: str
    # The pool the org's emulator and device runs overflow to when their submission does
    # not say (SuiteSubmission.overflow absent); None: they never move.
    overflow: Target | None = None
    updated_at: float | None = None
    version: int = 0  # one more on every write; each write names the one it replaces


class OrgSettingsStore(Protocol):
    """One item per org: a submission reads at most one, an operator writes one."""

    def get(self, org_id: str, *, consistent: bool = True) -> OrgSettings | None:
        """The org's stored settings (one GetItem), None when it never set any.
        ``consistent=False`` (half the cost) may miss a write of the last moment."""

    def put(self, settings: OrgSettings, expected_version: int | None) -> bool:
        """Writes ``settings`` (one conditional PutItem) only if the stored ones still have
        ``expected_version`` (None: only if there are none); False (nothing written) when
        someone wrote in between."""
