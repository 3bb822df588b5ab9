"""API Lambda: parses requests, authenticates, calls a service, maps errors. Nothing else."""

from __future__ import annotations

import base64
import json
import sys
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from qgjob_backend import __version__
from qgjob_backend.agent_protocol import (
    AgentView,
    BatchRef,
    LeaseResponse,
    ProgressItem,
    ProgressRequest,
    ProgressResponse,
    RegisterAgentRequest,
    ReportRequest,
    RequeueView,
    parse_credential,
)
from qgjob_backend.build_protocol import (
    MAX_BUILDS_PAGE,
    ArtifactView,
    BuildCompleteRequest,
    BuildPageView,
    BuildUploadRequest,
    BuildUploadResponse,
    BuildView,
)
from qgjob_backend.domain.models import Agent, AppRef
from qgjob_backend.handlers.api_models import (
    AuditView,
    ErrorView,
    HealthView,
    JobPageView,
    JobView,
    MetricsView,
    ResultView,
    RunCancelView,
    RunView,
    SubmitResponse,
    agent_view,
    batch_view,
)
from qgjob_backend.handlers.body import check_body
from qgjob_backend.observability import (
    CORRELATION_HEADER,
    JOBS_SUBMITTED,
    EmfMetrics,
    correlate,
    joined,
    observed,
    valid_correlation_id,
)
from qgjob_backend.schema import FINAL_STATUSES, JobPayload, JobStatus, SuiteSubmission
from qgjob_backend.services.agents import AgentCredential, ReportedResult, Step
from qgjob_backend.services.auth import Principal, require_fleet, require_org
from qgjob_backend.services.builds import BuildService, build_view
from qgjob_backend.services.errors import Forbidden, ServiceError, Unauthorized, Unavailable
from qgjob_backend.services.submission import (
    MAX_CANCEL_PAGE,
    MAX_PAGE_JOBS,
    SubmitResult,
    as_suite,
)
from qgjob_backend.wiring import LazyServices

MAX_BODY_BYTES = 1024 * 1024

logger = Logger()
app = APIGatewayRestResolver(enable_validation=True)
app.configure_openapi(
    title="qgjob API",
    version=__version__,
    description="Submit AppWright test jobs, follow runs, and serve device agents.",
    security_schemes={
        "bearerAuth": HTTPBearer(
            description=(
                "An org token; for POST /agents/register a fleet token; for every other "
                "agent route the agent credential that register returned."
            )
        )
    },
    security=[{"bearerAuth": []}],
)

# Not `metrics`: that is the GET /metrics route's function.
emf_metrics = EmfMetrics()
services = LazyServices(emf_metrics)


def _error(status: int, message: str, **extra: Any) -> Response[Any]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body={"message": message, **extra},
    )


def _org() -> str:
    org_id: str = app.context["org_id"]
    return org_id


def _created(result: SubmitResult, single: bool) -> Response[SubmitResponse]:
    if result.created:
        emf_metrics.count(JOBS_SUBMITTED, len(result.jobs), target=result.run.target.value)
    body = SubmitResponse.of(result.run, result.jobs, single=single, replayed=not result.created)
    return Response(
        status_code=HTTPStatus.CREATED if result.created else HTTPStatus.OK,
        content_type=content_types.APPLICATION_JSON,
        body=body,
    )


# -------------------------------------------------------------- clients
# What lambda_handler and the error handlers answer before or instead of a route.
_ERRORS: dict[int, str] = {
    400: "Malformed request (body, or cursor): the message says what to fix.",
    401: "No token, or not a valid one.",
    403: "A token of the wrong kind for this route (org, fleet, agent), or another agent's.",
    404: "Not found (another org's runs and jobs are not found either).",
    409: "Conflicts with the current state: the message says why.",
    413: f"Body larger than {MAX_BODY_BYTES} bytes.",
    503: "Temporarily unavailable: retry shortly.",
}
_ORG_ROUTE_ERRORS = (400, 401, 403, 404, 413, 503)
# Agent routes: also 409 (a lease taken away, a batch not the agent's current one).
_AGENT_ROUTE_ERRORS = (400, 401, 403, 404, 409, 413, 503)
_VALIDATION_ERROR = "A field is invalid: `errors` names each field and what is wrong with it."


def _responses(*errors: int, ok: dict[int, str] | None = None) -> dict[int, OpenAPIResponse]:
    """Every status a route answers: its successes (``ok``, with the route's own body;
    default 200), these ``errors`` (an ErrorView), and the 422 of request validation."""
    documented: dict[int, OpenAPIResponse] = {
        code: {"description": text} for code, text in (ok or {200: "OK"}).items()
    }
    for code in errors:
        documented[code] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"model": ErrorView}},
        }
    return documented


@app.get("/health", summary="Liveness check (no token needed)", responses=_responses(400, 404, 413))
def health() -> HealthView:
    return HealthView(status="ok", version=__version__)


@app.post(
    "/jobs",
    summary="Submit one test job",
    responses=_responses(
        *_ORG_ROUTE_ERRORS, 409, ok={201: "Created.", 200: "Replayed: the idempotency key's job."}
    ),
)
def submit_job(payload: JobPayload) -> Response[SubmitResponse]:
    return _created(services().submissions.submit(_org(), as_suite(payload)), single=True)


@app.post(
    "/runs",
    summary="Submit a suite: many tests of one app version and target",
    responses=_responses(
        *_ORG_ROUTE_ERRORS, 409, ok={201: "Created.", 200: "Replayed: the idempotency key's run."}
    ),
)
def submit_run(suite: SuiteSubmission) -> Response[SubmitResponse]:
    return _created(services().submissions.submit(_org(), suite), single=False)


@app.get("/jobs/<job_id>", summary="Status of one job", responses=_responses(*_ORG_ROUTE_ERRORS))
def get_job(job_id: str) -> JobView:
    return JobView.of(services().submissions.job(_org(), job_id))


@app.get(
    "/jobs/<job_id>/result",
    summary="Result of a job, or 202 while it is not finished",
    responses=_responses(
        *_ORG_ROUTE_ERRORS, ok={200: "Finished.", 202: "Not finished yet (finished: false)."}
    ),
)
def get_result(job_id: str) -> Response[ResultView]:
    job = services().submissions.job(_org(), job_id)
    if job.status not in FINAL_STATUSES:
        body = ResultView(
            job_id=job.job_id,
            status=job.status,
            finished=False,
            message=f"not finished yet: job is {job.status.value}",
        )
        return Response(202, content_types.APPLICATION_JSON, body)
    body = ResultView(
        job_id=job.job_id,
        status=job.status,
        finished=True,
        passed=job.status is JobStatus.PASSED,
        duration_s=job.duration_s,
        message=job.message,
        output=job.output_excerpt,
        output_key=job.output_key,
        output_url=_output_url(job.output_key),
        agent_id=job.agent_id,
        finished_at=job.finished_at,
        session_id=job.session_id,
        artifacts=_artifact_views(job.artifacts),
    )
    return Response(200, content_types.APPLICATION_JSON, body)


def _output_url(key: str | None) -> str | None:
    builds = services().builds
    return builds.output_link(key) if key and builds is not None else None


def _artifact_views(artifacts: list[dict[str, Any]]) -> list[ArtifactView]:
    builds = services().builds
    if builds is None:  # no links without the presigner; the keys still show
        return [ArtifactView(**a) for a in artifacts]
    return builds.artifact_views(artifacts)


# --------------------------------------------------------------- builds
def _builds() -> BuildService:
    builds = services().builds
    if builds is None:
        raise Unavailable("app builds are not deployed here (no BUILDS_TABLE)")
    return builds


@app.post(
    "/builds",
    summary="Start an upload of an app build: a presigned PUT (or nothing: same bytes)",
    responses=_responses(
        *_ORG_ROUTE_ERRORS,
        409,
        ok={201: "Upload started: PUT the bytes, then complete.", 200: "Same bytes: stored."},
    ),
)
def start_build_upload(request: BuildUploadRequest) -> Response[BuildUploadResponse]:
    ticket = _builds().start_upload(_org(), request)
    body = BuildUploadResponse(build=build_view(ticket.build), upload=ticket.upload)
    status = HTTPStatus.CREATED if ticket.created else HTTPStatus.OK
    return Response(status, content_types.APPLICATION_JSON, body)


@app.post(
    "/builds/<app_version_id>/complete",
    summary="Complete an upload: checks the stored object, then it is the version's build",
    responses=_responses(*_ORG_ROUTE_ERRORS, 409),
)
def complete_build_upload(app_version_id: str, request: BuildCompleteRequest) -> BuildView:
    return build_view(_builds().complete(_org(), app_version_id, request.sha256))


@app.get(
    "/builds/<app_version_id>",
    summary="An app version's build (another org's is not found)",
    responses=_responses(*_ORG_ROUTE_ERRORS),
)
def get_build(app_version_id: str) -> BuildView:
    return build_view(_builds().get(_org(), app_version_id))


@app.get(
    "/builds",
    summary="The org's app builds by app version id, a page at a time",
    responses=_responses(*_ORG_ROUTE_ERRORS),
)
def list_builds(
    limit: Annotated[
        int, Query(ge=1, le=MAX_BUILDS_PAGE, description="Builds per page.")
    ] = MAX_BUILDS_PAGE,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="The next_cursor of the previous page."),
    ] = None,
) -> BuildPageView:
    page = _builds().page(_org(), cursor, limit)
    return BuildPageView(builds=[build_view(b) for b in page.builds], next_cursor=page.next_cursor)


@app.get(
    "/jobs/<job_id>/audit",
    summary="The results vault's audit records of a job, with short-lived archive links",
    responses=_responses(*_ORG_ROUTE_ERRORS),
)
def get_audit(job_id: str) -> AuditView:
    job = services().submissions.job(_org(), job_id)  # another org's job: 404
    vault = services().vault
    entries = vault.entries(job.job_id) if vault is not None else []
    return AuditView.of(job.job_id, entries)


@app.post(
    "/jobs/<job_id>/cancel",
    summary="Cancel a job: a queued one at once, a started one is stopped by its agent",
    responses=_responses(*_ORG_ROUTE_ERRORS, 409),
)
def cancel_job(job_id: str) -> JobView:
    return JobView.of(services().submissions.cancel(_org(), job_id))


@app.post(
    "/runs/<run_id>/cancel",
    summary="Cancel a run, one page of its jobs per call (repeat with next_cursor)",
    responses=_responses(*_ORG_ROUTE_ERRORS),
)
def cancel_run(
    run_id: str,
    limit: Annotated[
        int, Query(ge=1, le=MAX_CANCEL_PAGE, description="Jobs per call.")
    ] = MAX_CANCEL_PAGE,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="The next_cursor of the previous call."),
    ] = None,
) -> RunCancelView:
    page = services().submissions.cancel_run(_org(), run_id, cursor, limit)
    return RunCancelView(
        run_id=run_id,
        cancelled=page.cancelled,
        next_cursor=page.next_cursor,
        run=RunView.of(page.run),
    )


@app.get(
    "/runs/<run_id>",
    summary="A run's progress: jobs by state, queue position and ETA (CI polls this)",
    responses=_responses(*_ORG_ROUTE_ERRORS),
)
def get_run(run_id: str) -> RunView:
    progress = services().submissions.run_progress(_org(), run_id)
    return RunView.of(progress.run, progress.queue)


@app.get(
    "/runs/<run_id>/jobs",
    summary="A run's jobs, a page at a time, in the order the suite listed them",
    responses=_responses(*_ORG_ROUTE_ERRORS),
)
def get_run_jobs(
    run_id: str,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_JOBS, description="Jobs per page.")
    ] = MAX_PAGE_JOBS,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="The next_cursor of the previous page."),
    ] = None,
) -> JobPageView:
    page = services().submissions.run_jobs(_org(), run_id, cursor, limit)
    return JobPageView.of(page.run, page.jobs, page.next_cursor)


@app.get(
    "/metrics",
    summary="Counters for the token's org: jobs by status, batches, installs",
    responses=_responses(*_ORG_ROUTE_ERRORS),
)
def metrics() -> MetricsView:
    return MetricsView.of(services().submissions.metrics(_org()))


# --------------------------------------------------------------- agents
# lambda_handler has already authenticated these callers: register with a fleet token,
# every other agent route with an agent credential (see agent_protocol).
def _credential(agent_id: str) -> AgentCredential:
    """The caller's credential, which must be the agent's named in the path."""
    credential: AgentCredential = app.context["agent"]
    if credential.agent_id != agent_id:
        raise Forbidden(
            f"this credential belongs to agent {credential.agent_id}, not to agent {agent_id}"
        )
    return credential


def _agent_view(
    agent: Agent, lease_expires_at: float | None = None, credential: str | None = None
) -> AgentView:
    config = services().config
    view = agent_view(
        agent, config.lease_seconds, config.heartbeat_seconds, lease_expires_at, credential
    )
    if credential is None:
        return view
    # The registering process learns how to wait while idle: push, and a safety poll.
    return view.model_copy(
        update={"push_url": config.push_url, "idle_poll_seconds": config.idle_poll_seconds}
    )


@app.post(
    "/agents/register",
    summary="Register (or re-register) a device agent; the answer carries its credential",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def register_agent(request: RegisterAgentRequest) -> AgentView:
    installed = (
        AppRef(request.installed.org_id, request.installed.app_version_id)
        if request.installed
        else None
    )
    fleet: Principal = app.context["fleet"]
    registration = services().agents.register(fleet, request.target, request.device_id, installed)
    # Only the registering process learns its credential; later views never show it.
    return _agent_view(registration.agent, credential=registration.credential)


@app.post(
    "/agents/<agent_id>/heartbeat",
    summary="Keep the agent's lease",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def heartbeat(agent_id: str) -> AgentView:
    beat = services().agents.heartbeat(_credential(agent_id))
    return _agent_view(beat.agent, beat.lease_expires_at)


@app.post(
    "/agents/<agent_id>/lease",
    summary="The agent's batch: current one, or a new one",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def lease(agent_id: str) -> LeaseResponse:
    leased = services().agents.lease(_credential(agent_id))
    if leased is None:
        return LeaseResponse(batch=None, wait_s=services().config.idle_poll_seconds)
    batch = leased.batch
    correlate(joined(job.run_id for job in leased.jobs))
    builds = services().builds
    if builds is None:
        return LeaseResponse(batch=batch_view(batch, leased.jobs))
    # The build to install (one read) and the batch's artifact form (a signature): the
    # form must outlive every test of the batch, whose lease heartbeats keep extending.
    seconds = sum(j.timeout_s for j in leased.jobs) + services().config.lease_seconds
    return LeaseResponse(
        batch=batch_view(
            batch,
            leased.jobs,
            build=builds.download(batch.org_id, batch.app_version_id),
            artifacts=builds.artifact_form(batch.org_id, batch.batch_id, seconds),
        )
    )


@app.post(
    "/agents/<agent_id>/batches/<batch_id>/installed",
    summary="App installed",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def installed(agent_id: str, batch_id: str) -> RequeueView:
    services().agents.record_install(_credential(agent_id), batch_id)
    return RequeueView(requeued=0)


@app.post(
    "/agents/<agent_id>/jobs/<job_id>/start",
    summary="A test starts",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def start_job(agent_id: str, job_id: str, request: BatchRef) -> JobView:
    return JobView.of(services().agents.start(_credential(agent_id), job_id, request.batch_id))


@app.post(
    "/agents/<agent_id>/jobs/<job_id>/result",
    summary="A test's result",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def report_result(agent_id: str, job_id: str, request: ReportRequest) -> JobView:
    job = services().agents.report(
        _credential(agent_id),
        job_id,
        request.batch_id,
        JobStatus(request.status),
        request.duration_s,
        request.message,
        request.output,
        request.session_id,
        artifacts=request.artifacts,
        retryable=request.retryable,
    )
    return JobView.of(job)


@app.post(
    "/agents/<agent_id>/batches/<batch_id>/progress",
    summary="Install, results, next start, completion of a batch: one call for several",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def batch_progress(agent_id: str, batch_id: str, request: ProgressRequest) -> ProgressResponse:
    done = services().agents.progress(
        _credential(agent_id),
        batch_id,
        installed=request.installed,
        results=[
            ReportedResult(
                r.job_id,
                JobStatus(r.status),
                r.duration_s,
                r.message,
                r.output,
                r.session_id,
                tuple(r.artifacts),
                r.retryable,
            )
            for r in request.results
        ],
        start=request.start,
        complete=request.complete,
    )
    return ProgressResponse(
        installed=done.installed,
        results=[_progress_item(step) for step in done.results],
        started=_progress_item(done.started) if done.started else None,
        completed=done.completed,
        requeued=done.requeued,
        cancelled_job_ids=done.cancelled,
        yield_requested=done.yield_requested,
    )


def _progress_item(step: Step) -> ProgressItem:
    return ProgressItem(
        job_id=step.job_id, accepted=step.accepted, status=step.status, message=step.refused
    )


@app.post(
    "/agents/<agent_id>/batches/<batch_id>/complete",
    summary="Batch done; frees the agent",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def complete_batch(agent_id: str, batch_id: str) -> RequeueView:
    return RequeueView(requeued=services().agents.complete(_credential(agent_id), batch_id))


@app.post(
    "/agents/<agent_id>/deregister",
    summary="Agent going away; its batch is released",
    responses=_responses(*_AGENT_ROUTE_ERRORS),
)
def deregister(agent_id: str) -> RequeueView:
    return RequeueView(requeued=services().agents.deregister(_credential(agent_id)))


# --------------------------------------------------------------- errors
@app.exception_handler(ServiceError)
def on_service_error(error: ServiceError) -> Response[Any]:
    return _error(error.status_code, error.message)


@app.exception_handler(RequestValidationError)
def on_invalid_request(error: RequestValidationError) -> Response[Any]:
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return _error(400, "body: not valid JSON; send a JSON object")
    details = []
    for problem in problems:
        location = [str(part) for part in problem.get("loc", ()) if part not in ("body",)]
        field = ".".join(location) or "body"
        details.append({"field": field, "message": problem.get("msg", "invalid")})
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return _error(422, message, errors=details)


@app.not_found
def on_not_found(_: NotFoundError) -> Response[Any]:
    event = app.current_event
    return _error(404, f"no such endpoint: {event.http_method} {event.path}")


@app.exception_handler([ClientError, BotoCoreError])
def on_aws_error(error: Exception) -> Response[Any]:
    logger.exception("AWS call failed")
    return _error(503, "qgjob is temporarily unavailable; retry shortly")


# --------------------------------------------------------------- entry
PUBLIC_PATHS = frozenset({"/health"})


REGISTER_PATH = "/agents/register"


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _authenticate(event: dict[str, Any]) -> dict[str, Any]:
    """Who is calling, checked before the body is even validated (no token -> 401).

    Registering an agent needs a fleet token, every other agent route the credential of
    an agent registration (its agent is checked against the path in the route), every
    other route an org token.
    """
    path = event.get("path") or "/"
    if path in PUBLIC_PATHS:
        return {}
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    token = _bearer(headers)
    credential = parse_credential(token) if token else None
    is_agent_route = path.startswith("/agents/") or path == "/agents"
    if is_agent_route and path != REGISTER_PATH:
        if credential is not None:
            return {"agent": AgentCredential(*credential)}
        services().tokens.authenticate(headers.get("authorization"))  # 401 when no token
        raise Forbidden(
            "agent routes need the agent credential that POST /agents/register returned "
            "(a fleet token may only register)"
        )
    if credential is not None:
        raise Unauthorized(
            "an agent credential is only for its agent's own routes; "
            "register with a fleet token, submit with an org token"
        )
    principal = services().tokens.authenticate(headers.get("authorization"))
    if path == REGISTER_PATH:
        return {"fleet": require_fleet(principal)}
    return {"org_id": require_org(principal)}


def _as_json(event: dict[str, Any]) -> dict[str, Any]:
    """The API speaks only JSON: a body is parsed as JSON whatever Content-Type says."""
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "content-type"}
    multi = {
        k: v
        for k, v in (event.get("multiValueHeaders") or {}).items()
        if k.lower() != "content-type"
    }
    headers["Content-Type"] = "application/json"
    multi["Content-Type"] = ["application/json"]
    return {**event, "headers": headers, "multiValueHeaders": multi}


def _reply(status: int, message: str) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": message}),
        "isBase64Encoded": False,
    }


MAX_PATH_SEGMENT = 200


def _text_body(event: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The event with its body as text, and the body's size in bytes.

    Raises ValueError when a base64 body is not valid base64 of UTF-8 text.
    """
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return event, len(body.encode("utf-8"))
    raw = base64.b64decode(body, validate=True)
    return {**event, "body": raw.decode("utf-8"), "isBase64Encoded": False}, len(raw)


def _within_stage(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its path relative to the stage. An HTTP API on a named stage sends
    ``path`` with the stage prefix (``/v1/runs``); a REST API, or the $default stage, does
    not (then the event is returned as it is)."""
    stage = (event.get("requestContext") or {}).get("stage")
    path = event.get("path")
    if not isinstance(stage, str) or not isinstance(path, str) or stage == "$default":
        return event
    prefix = f"/{stage}"
    if path != prefix and not path.startswith(prefix + "/"):
        return event
    return {**event, "path": path[len(prefix) :] or "/"}


def _correlation_id(event: dict[str, Any]) -> str | None:
    """The caller's X-Correlation-Id when it is a valid one (an agent sends its jobs'),
    else API Gateway's request id. A submit replaces it with its run's id."""
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    echoed = valid_correlation_id(headers.get(CORRELATION_HEADER))
    request_id = (event.get("requestContext") or {}).get("requestId")
    return echoed or (request_id if isinstance(request_id, str) else None)


@logger.inject_lambda_context
@observed(emf_metrics, _correlation_id)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    event = _within_stage(event)
    path = event.get("path") or "/"
    if any(len(segment) > MAX_PATH_SEGMENT for segment in path.split("/")):
        return _reply(404, f"no such resource: a path segment is over {MAX_PATH_SEGMENT} chars")
    try:
        identity = _authenticate(event)
    except ServiceError as error:
        return _reply(error.status_code, error.message)
    try:
        event, size = _text_body(event)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return _reply(400, "body: not UTF-8 text; send a JSON object")
    if size > MAX_BODY_BYTES:
        return _reply(413, f"body: larger than {MAX_BODY_BYTES} bytes")
    # Deep nesting, non-JSON numbers and non-object bodies: refused here, because the
    # resolver's own parsing turns the first two into a 5xx and accepts `[job]` as a job.
    rejection = check_body(event.get("body") or "")
    if rejection is not None:
        return _reply(rejection.status, rejection.message)
    app.append_context(**identity)
    return app.resolve(_as_json(event), context)


def openapi_document() -> str:
    """The OpenAPI document as the API really answers (what `make openapi` commits).

    Powertools documents every 422 with its own error shape and cannot clear security on
    one route; the API answers 422 with an ErrorView and /health needs no token.
    """
    document: dict[str, Any] = json.loads(app.get_openapi_json_schema())
    error_ref = {"$ref": "#/components/schemas/ErrorView"}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if "422" in operation["responses"]:
                operation["responses"]["422"] = {
                    "description": _VALIDATION_ERROR,
                    "content": {"application/json": {"schema": error_ref}},
                }
            if path in PUBLIC_PATHS:
                operation["security"] = []
    schemas = document["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return json.dumps(document, indent=2)


if __name__ == "__main__":
    if "--openapi" in sys.argv:
        print(openapi_document())
    else:
        print("usage: python -m qgjob_backend.handlers.api --openapi", file=sys.stderr)
