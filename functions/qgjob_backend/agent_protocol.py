"""The device-agent protocol: the one definition shared by the API and the `qgjob agent`.

Wire models, the credential format, the agent-id rule and the size limits live here so
the two sides cannot drift. Like ``schema.py`` this module imports nothing but pydantic,
the standard library and the schema, because the CLI ships it too
(``cli/qgjob/agent_protocol.py`` is a link to this file).

Identity, in two steps:

1. ``POST /agents/register`` with a **fleet token** (``Authorization: Bearer qgj_agent_…``).
   A fleet token may do nothing else. It may be scoped to one target and to one org
   (a private lab: its agents get only that org's batches).
2. The answer carries an **agent credential** (``qgja.<agent_id>.<secret>``), bound to
   that one registration. Every other agent call sends it as the bearer token. A newer
   registration of the same device replaces it, and the old one is refused (409).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Relative: the same file is qgjob_backend.agent_protocol here and qgjob.agent_protocol in
# the CLI, each beside its own copy of the schema.
from .build_protocol import (
    MAX_ARTIFACTS_PER_RESULT,
    ArtifactUploadForm,
    BuildDownload,
    ReportedArtifact,
)
from .schema import Identifier, JobStatus, Target

# ----------------------------------------------------------------- identity
CREDENTIAL_PREFIX = "qgja."
# The separator between device and lab org in an agent id: never part of an Identifier,
# so a private lab's agent id can never equal a shared agent's.
LAB_SEPARATOR = "@"


def agent_id_for(target: Target | str, device_id: str, lab_org_id: str | None = None) -> str:
    """Stable across restarts, so an agent that comes back resumes its own batch.

    A private lab's agents are namespaced by their org: two labs may both have a
    ``pixel-7`` without one replacing the other's registration.
    """
    target_value = target.value if isinstance(target, Target) else target
    agent_id = f"{target_value}-{device_id}"
    return f"{agent_id}{LAB_SEPARATOR}{lab_org_id}" if lab_org_id else agent_id


def format_credential(agent_id: str, secret: str) -> str:
    return f"{CREDENTIAL_PREFIX}{agent_id}.{secret}"


def parse_credential(token: str) -> tuple[str, str] | None:
    """(agent_id, secret) of an agent credential, or None when ``token`` is not one.

    The secret never contains a '.', an agent id may: split at the last one.
    """
    if not token.startswith(CREDENTIAL_PREFIX):
        return None
    agent_id, dot, secret = token[len(CREDENTIAL_PREFIX) :].rpartition(".")
    if not dot or not agent_id or not secret:
        return None
    return agent_id, secret


# ------------------------------------------------------------------- limits
MAX_MESSAGE_CHARS = 2000  # a result's one-line reason
MAX_OUTPUT_CHARS = 64 * 1024  # the output an agent sends with a result
OUTPUT_EXCERPT_CHARS = 2000  # the tail of it kept on the job (the rest goes to S3)
MAX_BATCH_ID_CHARS = 128
MAX_REPORTED_DURATION_S = 7 * 24 * 3600
# A BrowserStack App Automate session id (40 hex characters there; any short URL-safe
# token here). Optional in every result: older agents never send it.
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
SESSION_ID_DESCRIPTION = (
    "The BrowserStack App Automate session the test ran in (browserstack runner): the "
    "results vault archives that session's record."
)

ReportStatus = Literal["passed", "failed", "error", "timed_out"]
ARTIFACTS_DESCRIPTION = (
    "Attachments of the test (screenshots, videos, traces) the agent uploaded with the "
    "batch's artifact form, each under artifacts/<org>/<batch>/<job>/."
)
Artifacts = Annotated[list[ReportedArtifact], Field(max_length=MAX_ARTIFACTS_PER_RESULT)]
RETRYABLE_DESCRIPTION = (
    "false: an error that would come back on any agent and any attempt (BrowserStack "
    "refused the credentials: 401/403), so the job ends as error at once instead of being "
    "retried. Only with status error; omitted (true) by default and by older agents."
)


def _checked_retryable(status: object, retryable: bool) -> bool:
    # (status None: invalid itself, and reported as such.)
    if not retryable and status is not None and status != "error":
        raise ValueError("only an error result can be not retryable (false)")
    return retryable


# ----------------------------------------------------------------- requests
class InstalledApp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org_id: Identifier
    app_version_id: Identifier


class RegisterAgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Target
    device_id: Identifier
    installed: InstalledApp | None = None


class BatchRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BATCH_ID_CHARS)]


class ReportedOutcome(BaseModel):
    """A test's result as an agent reports it (alone, or as one of a progress call's)."""

    model_config = ConfigDict(extra="forbid")
    status: ReportStatus = Field(
        description="The test's outcome; error means infrastructure, not the test."
    )
    duration_s: float = Field(ge=0, le=MAX_REPORTED_DURATION_S)
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS)] | None = None
    output: Annotated[str, StringConstraints(max_length=MAX_OUTPUT_CHARS)] | None = None
    session_id: SessionId | None = Field(default=None, description=SESSION_ID_DESCRIPTION)
    artifacts: Artifacts = Field(default_factory=list, description=ARTIFACTS_DESCRIPTION)
    retryable: bool = Field(default=True, description=RETRYABLE_DESCRIPTION)

    @field_validator("retryable")
    @classmethod
    def _only_errors_are_final(cls, retryable: bool, info: ValidationInfo) -> bool:
        return _checked_retryable(info.data.get("status"), retryable)


class ReportRequest(ReportedOutcome):
    batch_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BATCH_ID_CHARS)]


MAX_PROGRESS_RESULTS = 10  # results in one progress call (10 x 64 KB of output < 1 MB)
# `qgjob agent --report-every`: tests that start within this long of the agent's last
# progress call are told in its next one, so short tests share calls; the run view lags by
# at most this.
DEFAULT_REPORT_EVERY_S = 5.0
JobId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_BATCH_ID_CHARS)]


class ProgressResult(ReportedOutcome):
    """One test's result in a progress call (a ReportRequest of the batch in the path)."""

    job_id: JobId


class ProgressRequest(BaseModel):
    """Everything an agent has to say about its batch since its last call, in one request.

    Applied in this order, each step as its own route would (``installed``, ``result``,
    ``start``, ``complete``), and stopped at the first step refused (the lease was lost):
    the steps after it are answered as not applied. A replay of the same request is
    accepted again and changes nothing.
    """

    model_config = ConfigDict(extra="forbid")
    installed: bool = Field(
        default=False, description="The batch's app is installed (as POST .../installed)."
    )
    results: Annotated[list[ProgressResult], Field(max_length=MAX_PROGRESS_RESULTS)] = Field(
        default_factory=list,
        description="Results of tests of this batch, in the order they ran (one or more).",
    )
    start: JobId | None = Field(
        default=None, description="The batch's job the agent starts next (as .../start)."
    )
    complete: bool = Field(
        default=False,
        description=(
            "The batch is done (as POST .../complete): its unfinished jobs go back and the "
            "agent takes new work. Not with start."
        ),
    )

    @model_validator(mode="after")
    def _complete_starts_nothing(self) -> ProgressRequest:
        if self.complete and self.start is not None:
            raise ValueError("complete: a batch that starts a job is not complete")
        return self


# ---------------------------------------------------------------- responses
class AgentView(BaseModel):
    agent_id: str
    target: Target
    status: str
    batch_id: str | None
    lease_seconds: float
    heartbeat_seconds: float
    lease_expires_at: float | None = None
    lab_org_id: str | None = Field(
        default=None, description="Set for a private lab's agent: it runs only this org's jobs."
    )
    credential: str | None = Field(
        default=None,
        description=(
            "Set by register only: the bearer token of every later call of this agent "
            "registration. It is shown once and never stored in clear."
        ),
    )
    push_url: str | None = Field(
        default=None,
        description=(
            "Set by register when the deployment has a push channel: a WebSocket URL the "
            "agent connects to (with its credential) to hear of a new batch at once."
        ),
    )
    idle_poll_seconds: float | None = Field(
        default=None,
        description=(
            "How long an idle agent connected to the push channel waits between leases "
            "(its safety poll); an idle agent sends no heartbeats."
        ),
    )
    cancelled_job_ids: list[str] = Field(
        default_factory=list,
        description=(
            "Jobs of the agent's current batch that were cancelled: the agent stops the "
            "one it runs (killing its process tree) and skips the others; their results "
            "are not applied."
        ),
    )
    yield_requested: bool = Field(
        default=False,
        description=(
            "The dispatcher needs this agent for urgent work: it finishes and reports the "
            "test it runs, then completes its batch (the jobs it did not start go back, "
            "counting no attempt) and leases again."
        ),
    )


class BatchJob(BaseModel):
    job_id: str
    test_path: str
    timeout_s: int
    status: JobStatus
    correlation_id: str | None = Field(
        default=None,
        description=(
            "The job's correlation id (its run's id): the agent puts it on its log lines "
            "about the job and sends it back as X-Correlation-Id with its reports."
        ),
    )


class BatchView(BaseModel):
    batch_id: str
    org_id: str
    app_version_id: str
    target: Target
    install_required: bool
    lease_expires_at: float
    jobs: list[BatchJob]
    build: BuildDownload | None = Field(
        default=None,
        description=(
            "The app version's build (a presigned GET, its sha256 and size); null when "
            "none was uploaded (the agent installs what it already holds, if anything)."
        ),
    )
    artifacts: ArtifactUploadForm | None = Field(
        default=None, description="Where the agent uploads its tests' attachments."
    )


class LeaseResponse(BaseModel):
    batch: BatchView | None
    wait_s: float | None = Field(
        default=None,
        description=(
            "With no batch: how long to wait before the next lease when no push arrives "
            "(the agent's own --poll-seconds applies when it has no push channel)."
        ),
    )


class RequeueView(BaseModel):
    requeued: int


class ProgressItem(BaseModel):
    job_id: str
    accepted: bool
    status: JobStatus | None = Field(
        default=None, description="The job's status after the step (when accepted)."
    )
    message: str | None = Field(default=None, description="Why the step was refused.")


class ProgressResponse(BaseModel):
    installed: bool | None = Field(
        default=None, description="Whether the install was recorded (None: not asked)."
    )
    results: list[ProgressItem] = Field(default_factory=list)
    started: ProgressItem | None = None
    completed: bool | None = Field(
        default=None, description="Whether the batch was completed (None: not asked)."
    )
    requeued: int | None = Field(
        default=None, description="Set when the batch was completed: the jobs put back."
    )
    cancelled_job_ids: list[str] = Field(
        default_factory=list,
        description="Jobs of this batch that were cancelled: stop and skip them.",
    )
    yield_requested: bool = Field(
        default=False,
        description=(
            "Set while the batch is asked to yield to urgent work: complete it after the "
            "test that runs now (see AgentView.yield_requested)."
        ),
    )
