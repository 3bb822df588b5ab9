"""Domain entities. Plain dataclasses: no AWS, no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qgjob_backend.schema import FINAL_STATUSES, JobStatus, Target

# SQS limits MessageGroupId to 128 characters.
MAX_GROUP_KEY_LENGTH = 128


def group_key_for(org_id: str, app_version_id: str, target: Target | str) -> str:
    """The grouping key: jobs sharing it install the same app on the same kind of device.

    It is also the SQS MessageGroupId, qualified by org so two orgs never share a group.
    """
    target_value = target.value if isinstance(target, Target) else target
    key = f"{org_id}/{app_version_id}/{target_value}"
    if len(key) <= MAX_GROUP_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{org_id[:48]}/{app_version_id[:48]}/{target_value}/{digest}"


@dataclass(frozen=True)
class AppRef:
    """An installed app build; versions of different orgs never count as the same app."""

    org_id: str
    app_version_id: str


@dataclass
class Run:
    run_id: str
    org_id: str
    app_version_id: str
    target: Target
    priority: int
    job_ids: list[str]
    fingerprint: str
    created_at: float
    # Jobs per counter of domain.progress (assigned and running share "active"), kept in
    # the same writes as each job's transitions; only counters above zero are present.
    counts: dict[str, int] = field(default_factory=dict)
    # Jobs that passed after a failed try (counted in the write that made them pass).
    flaky: int = 0
    # The sha256 of the app version's build when the run was submitted: "" when it had
    # none (agents install only what they already hold), None when not known (builds
    # not deployed, or a run older than builds).
    build_sha256: str | None = None
    # The pool its waiting jobs may move to (SuiteSubmission.overflow), and how many did
    # (counted in the write that moved each one).
    overflow: Target | None = None
    moved: int = 0


@dataclass
class Job:
    job_id: str
    run_id: str
    org_id: str
    app_version_id: str
    target: Target
    test_path: str
    priority: int
    status: JobStatus
    created_at: float
    updated_at: float
    timeout_s: int
    max_attempts: int
    position: int = 0  # order within its run: tests of a suite run in the order given
    attempts: int = 0
    admitted: bool = False
    agent_id: str | None = None
    batch_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    message: str | None = None
    output_excerpt: str | None = None
    output_key: str | None = None
    # The batch whose agent reported an infrastructure error that put this job back:
    # lets a retried delivery of that same report be recognised as a replay.
    retry_of_batch: str | None = None
    # Re-sends by the reaper of a job whose queue message never arrived (backs off).
    resends: int = 0
    # What history said this test takes on this target when the job was admitted (None:
    # no history yet); stamped at admission so planning needs no extra reads.
    estimate_s: float | None = None
    # Set when it joins a batch: the batch's estimated tests from this job's start to the
    # batch's end (domain.batch_end; None: committed before batches carried it).
    rest_of_batch_s: float | None = None
    # The attachments of its last result (screenshots, videos, traces) the agent uploaded:
    # dicts of build_protocol.ReportedArtifact (name, key, content_type, size).
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    # The BrowserStack App Automate session of its last result (browserstack runner).
    session_id: str | None = None
    # Re-runs a failed test may still get (SuiteSubmission.failure_retries), and each try
    # that failed before the current one: dicts of domain.models.failed_try (attempt,
    # agent_id, batch_id, status, duration_s, message, output, finished_at).
    failure_retries: int = 0
    tries: list[dict[str, Any]] = field(default_factory=list)
    # The agent this job last ran on before it was put back in the queue (a failed try,
    # an infrastructure error, a lapsed lease): the planner prefers another one for it.
    last_agent_id: str | None = None
    # The pool it may move to while it waits (its run's overflow), and, once the
    # dispatcher moved it there (domain.overflow), the target it was submitted for.
    overflow: Target | None = None
    moved_from: Target | None = None

    @property
    def flaky(self) -> bool:
        """It passed after a try that failed."""
        return self.status is JobStatus.PASSED and bool(self.tries)

    @property
    def runs(self) -> int:
        """How many times the test was started: 1 for a job that ran once, 0 for one that
        never started. ``attempts`` counts only the infrastructure attempts spent (each
        lost or errored run sent back to the queue), ``tries`` the failed runs re-run;
        the current run counts once it started, unless it is the errored last attempt
        that ``attempts`` already counted (a lost agent's job out of attempts)."""
        current = self.started_at is not None and not (
            self.status is JobStatus.ERROR and self.attempts >= self.max_attempts
        )
        return self.attempts + len(self.tries) + (1 if current else 0)

    @property
    def group_key(self) -> str:
        return group_key_for(self.org_id, self.app_version_id, self.target)

    @property
    def app(self) -> AppRef:
        return AppRef(self.org_id, self.app_version_id)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class AgentStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    OFFLINE = "offline"


@dataclass
class Agent:
    agent_id: str
    target: Target
    device_id: str
    status: AgentStatus
    last_seen: float
    registered_at: float
    installed: AppRef | None = None
    batch_id: str | None = None
    batch_group: str | None = None  # the group of the batch it holds
    # The hash of this registration's credential, set anew by every registration: a
    # second process registering the same device supersedes the first, whose later
    # calls are refused.
    credential_hash: str | None = None
    # A private lab's agent runs only this org's jobs (None: a shared agent, any org).
    lab_org_id: str | None = None
    # The fleet token that registered it: only that token may register it again.
    fleet_hash: str | None = None
    # When the batch it holds is expected to end (set with the batch, cleared on release).
    batch_expected_free_at: float | None = None
    # Its push-channel connection (API Gateway WebSocket), while it has one.
    connection_id: str | None = None
    # Jobs cancelled while in one of its batches, as cancel_mark(batch, job): its next
    # heartbeat (or progress answer) tells it to stop them. Cleared when it is released.
    cancel_marks: frozenset[str] = frozenset()
    # Set by an operator (infra.admin agents drain): the agent finishes the batch it holds
    # and is given no other, across restarts, until it is undrained.
    drained_at: float | None = None
    # The dispatcher asked it to end this batch after its current test and hand back the
    # rest, for urgent work (domain.preemption). Only meant while it still holds that batch.
    yield_batch_id: str | None = None

    @property
    def yield_requested(self) -> bool:
        """Whether it was asked to yield the batch it holds now."""
        return self.batch_id is not None and self.yield_batch_id == self.batch_id

    @property
    def cancelled_job_ids(self) -> list[str]:
        """The jobs of the batch it holds that were cancelled (sorted)."""
        if self.batch_id is None:
            return []
        prefix = cancel_mark(self.batch_id, "")
        return sorted(m[len(prefix) :] for m in self.cancel_marks if m.startswith(prefix))


# The tail of a failed try's output kept on the job (its try's report; JUnit shows it).
TRY_OUTPUT_CHARS = 1000


def failed_try(
    job: Job,
    agent_id: str,
    batch_id: str,
    status: JobStatus,
    duration_s: float,
    message: str | None,
    output: str | None,
    now: float,
) -> dict[str, Any]:
    """The record of one failed try of ``job`` (its next ``tries`` entry)."""
    return {
        "attempt": len(job.tries) + 1,
        "agent_id": agent_id,
        "batch_id": batch_id,
        "status": status.value,
        "duration_s": duration_s,
        "message": message,
        "output": output[-TRY_OUTPUT_CHARS:] if output else None,
        "finished_at": now,
    }


def cancel_mark(batch_id: str, job_id: str) -> str:
    """What an agent item holds for a job of its batch ``batch_id`` that was cancelled."""
    return f"{batch_id}#{job_id}"


def cancel_message(job: Job) -> str:
    """The message a job gets when it is cancelled in ``job``'s state."""
    if job.status is JobStatus.QUEUED or job.agent_id is None:
        return "cancelled before it started"
    if job.status is JobStatus.ASSIGNED:
        return f"cancelled before it started on agent {job.agent_id}"
    return f"cancelled while running on agent {job.agent_id}"


class BatchState(StrEnum):
    ACTIVE = "active"
    DONE = "done"
    EXPIRED = "expired"


@dataclass
class Batch:
    batch_id: str
    agent_id: str
    group_key: str
    org_id: str
    app_version_id: str
    target: Target
    job_ids: list[str]
    state: BatchState
    created_at: float
    lease_expires_at: float
    install_required: bool
    installed_at: float | None = None
    finished_at: float | None = None
    # now + the planner's estimate (install when required, plus the tests) at commit.
    expected_end_at: float | None = None
    requeued: list[str] = field(default_factory=list)
    # Per job, in job_ids' order: what each job's rest_of_batch_s is set to at commit
    # (the planner's PlannedBatch.rests_s; empty: none known). Kept on the jobs only.
    rests_s: list[float] = field(default_factory=list)

    @property
    def app(self) -> AppRef:
        return AppRef(self.org_id, self.app_version_id)


def rests_by_job(batch: Batch) -> dict[str, float]:
    """Each job's rest_of_batch_s as the batch's commit sets it (none when the batch
    carries no rests, or not one per job)."""
    if len(batch.rests_s) != len(batch.job_ids):
        return {}
    return dict(zip(batch.job_ids, batch.rests_s, strict=True))
