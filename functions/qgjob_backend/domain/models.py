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
    # The sha256 of the app version's build when the run was submitted: "" when it had
    # none (agents install only what they already hold), None when not known (builds
    # not deployed, or a run older than builds).
    build_sha256: str | None = None


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
    # The attachments of its last result (screenshots, videos, traces) the agent uploaded:
    # dicts of build_protocol.ReportedArtifact (name, key, content_type, size).
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    # The BrowserStack App Automate session of its last result (browserstack runner).
    session_id: str | None = None

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

    @property
    def app(self) -> AppRef:
        return AppRef(self.org_id, self.app_version_id)
