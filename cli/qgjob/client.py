"""HTTP client for the qgjob API (see the contract), over `requests`.

Every method returns the decoded JSON body and raises a typed `ApiError` otherwise:
`InvalidInput` (and its `NotFound` / `Conflict`), `AuthError`, `ServerError`, `Unreachable`.
Connection errors, 5xx and 429 are retried with bounded exponential backoff; the `sleep`
used between attempts is injected so tests never sleep.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import requests
from pydantic import BaseModel, ValidationError

from qgjob import __version__
from qgjob.agent_protocol import AgentView, LeaseResponse, ProgressRequest, ProgressResponse
from qgjob.errors import (
    ApiError,
    AuthError,
    Conflict,
    InvalidInput,
    NotFound,
    ServerError,
    Unreachable,
    error_for_status,
)

__all__ = [
    "ApiClient",
    "ApiError",
    "AuthError",
    "Conflict",
    "InvalidInput",
    "Json",
    "NotFound",
    "ServerError",
    "Unreachable",
]

Json = dict[str, Any]

DEFAULT_TIMEOUT_S = 15.0
DEFAULT_RETRIES = 3
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 30.0
# Pages read for one run's jobs at most (a suite has at most 1,000 tests, 100 a page): a
# server that kept answering with a cursor could not keep the client reading forever.
MAX_RUN_PAGES = 50
# What API Gateway itself answers for a path no route matches, e.g. an endpoint URL
# without the stage: an HTTP API 404 {"message": "Not Found"}, a REST API 403 {"message":
# "Missing Authentication Token"}. qgjob's own 403 and 404 messages never read so.
GATEWAY_MISSES = {404: "Not Found", 403: "Missing Authentication Token"}


def _segment(value: str) -> str:
    """One URL path segment; ids never contain '/', but never trust that."""
    return quote(value, safe="")


def _connection_reason(error: requests.RequestException) -> str:
    """A short reason such as 'connection refused' instead of urllib3's nested repr."""
    if isinstance(error, requests.Timeout):
        return "the request timed out"
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip().lower()
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return text.splitlines()[0][:200] if text else type(error).__name__


class ApiClient:
    """Talks to one qgjob endpoint with one token (org token or agent token)."""

    def __init__(
        self,
        endpoint_url: str,
        token: str | None,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        sleep: Callable[[float], object] = time.sleep,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
    ) -> None:
        if not endpoint_url.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint URL must start with http:// or https://, got {endpoint_url!r}"
            )
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.endpoint_url = endpoint_url.rstrip("/")
        self._token = token
        self._session = session or requests.Session()
        self._timeout = timeout
        self._retries = retries
        self._sleep = sleep
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._agent_credential: str | None = None
        # Sent as X-Correlation-Id (the agent sets it to the ids of the jobs it reports on):
        # the API's log lines about the call carry it.
        self.correlation_id: str | None = None

    def use_credential(self, credential: str | None) -> None:
        """Agent calls (all but register) send this registration's credential instead of
        the fleet token; a newer registration of the device supersedes it."""
        self._agent_credential = credential

    # ------------------------------------------------------------------ transport

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): 0.5, 1, 2, 4, 8, 8..."""
        return float(min(self._backoff_max, self._backoff_base * (2 ** (attempt - 1))))

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        as_agent: bool = False,
    ) -> Json:
        """Sends one API call (with retries) and returns the JSON body of a 2xx answer.

        ``as_agent`` calls authenticate with the agent credential once register gave one.
        """
        url = self.endpoint_url + path
        headers = {"Accept": "application/json", "User-Agent": f"qgjob-cli/{__version__}"}
        token = self._agent_credential if as_agent and self._agent_credential else self._token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.correlation_id:
            headers["X-Correlation-Id"] = self.correlation_id
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._session.request(
                    method,
                    url,
                    json=dict(body) if body is not None else None,
                    headers=headers,
                    timeout=self._timeout,
                )
            except requests.RequestException as error:
                failure: ApiError = Unreachable(self.endpoint_url, _connection_reason(error))
                retry_after = None
            else:
                if response.status_code < 400:
                    return self._decode(response)
                failure = error_for_status(
                    response.status_code,
                    self._stage_hint(response.status_code, self._error_message(response)),
                    self._safe_json(response),
                )
                retry_after = self._retry_after(response)
            if not isinstance(failure, Unreachable | ServerError) or attempt > self._retries:
                raise failure
            delay = self.backoff(attempt)
            if retry_after is not None:
                delay = max(delay, retry_after)
            self._sleep(delay)

    @staticmethod
    def _safe_json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _decode(self, response: requests.Response) -> Json:
        if not response.content:
            return {}
        body = self._safe_json(response)
        if not isinstance(body, dict):
            raise ServerError(
                response.status_code,
                f"qgjob at {self.endpoint_url} answered with something that is not a JSON "
                "object (is --endpoint-url the qgjob API?)",
            )
        return body

    def _stage_hint(self, status: int, message: str) -> str:
        """API Gateway's own miss, with what usually causes it: no stage in the URL."""
        if GATEWAY_MISSES.get(status) != message:
            return message
        return (
            f"{message}: no qgjob route at {self.endpoint_url}; the stage is probably "
            f"missing from --endpoint-url (the API is under its stage, e.g. "
            f"{self.endpoint_url}/v1)"
        )

    def _error_message(self, response: requests.Response) -> str:
        body = self._safe_json(response)
        if isinstance(body, dict):
            message = body.get("message") or body.get("Message") or body.get("error")
            if isinstance(message, str) and message:
                return message
        text = (response.text or "").strip()
        if text:
            return text.splitlines()[0][:300]
        return response.reason or f"HTTP {response.status_code}"

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        try:
            return min(max(float(value), 0.0), RETRY_AFTER_MAX_S)
        except ValueError:
            return None

    # ------------------------------------------------------------------ client endpoints

    def health(self) -> Json:
        return self.request("GET", "/health")

    def submit_job(self, payload: Mapping[str, Any]) -> Json:
        """POST /jobs with a JobPayload body -> {"job_id", "run_id", "status"}."""
        return self.request("POST", "/jobs", payload)

    def submit_run(self, payload: Mapping[str, Any]) -> Json:
        """POST /runs with a SuiteSubmission body -> {"run_id", "job_ids", "status"}."""
        return self.request("POST", "/runs", payload)

    def get_job(self, job_id: str) -> Json:
        return self.request("GET", f"/jobs/{_segment(job_id)}")

    def get_result(self, job_id: str) -> Json:
        """The result (``finished: true``) or a not-finished answer (``finished: false``)."""
        return self.request("GET", f"/jobs/{_segment(job_id)}/result")

    def get_audit(self, job_id: str) -> Json:
        """The results vault's audit records of the job, with presigned archive links."""
        return self.request("GET", f"/jobs/{_segment(job_id)}/audit")

    def get_run(self, run_id: str) -> Json:
        """The run's progress: total, counts by state, finished, passed (no jobs)."""
        return self.request("GET", f"/runs/{_segment(run_id)}")

    def get_run_jobs(
        self, run_id: str, cursor: str | None = None, limit: int | None = None
    ) -> Json:
        """One page of the run's jobs -> {"run_id", "jobs", "next_cursor"}."""
        query = {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
        suffix = f"?{urlencode(query)}" if query else ""
        return self.request("GET", f"/runs/{_segment(run_id)}/jobs{suffix}")

    def run_jobs(self, run_id: str, max_pages: int = MAX_RUN_PAGES) -> list[Json]:
        """Every job of the run, in suite order, a page at a time."""
        jobs: list[Json] = []
        cursor: str | None = None
        for _ in range(max_pages):
            page = self.get_run_jobs(run_id, cursor)
            jobs.extend(j for j in page.get("jobs") or [] if isinstance(j, dict))
            next_cursor = page.get("next_cursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                return jobs
            cursor = next_cursor
        raise ServerError(
            200, f"run {run_id}: still more jobs after {max_pages} pages; giving up reading them"
        )

    def cancel_job(self, job_id: str) -> Json:
        return self.request("POST", f"/jobs/{_segment(job_id)}/cancel", {})

    def cancel_run_page(self, run_id: str, cursor: str | None = None) -> Json:
        """POST /runs/{id}/cancel: one page -> {"run_id", "cancelled", "next_cursor", "run"}."""
        suffix = f"?{urlencode({'cursor': cursor})}" if cursor else ""
        return self.request("POST", f"/runs/{_segment(run_id)}/cancel{suffix}", {})

    def cancel_run(self, run_id: str, max_pages: int = MAX_RUN_PAGES) -> Json:
        """Cancels every job of the run that is not finished, a page per request (each
        bounded; repeating is safe). Returns the last page's answer, with ``cancelled``
        summed over the pages."""
        cursor: str | None = None
        cancelled = 0
        for _ in range(max_pages):
            page = self.cancel_run_page(run_id, cursor)
            cancelled += int(page.get("cancelled") or 0)
            next_cursor = page.get("next_cursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                return {**page, "cancelled": cancelled}
            cursor = next_cursor
        raise ServerError(200, f"run {run_id}: still more jobs after {max_pages} pages of cancel")

    def metrics(self) -> Json:
        return self.request("GET", "/metrics")

    # ------------------------------------------------------------------ agent endpoints

    def register(
        self, target: str, device_id: str, installed: Mapping[str, str] | None = None
    ) -> AgentView:
        """Registers with the fleet token; the answer's credential is for every later call."""
        body = {
            "target": target,
            "device_id": device_id,
            "installed": dict(installed) if installed else None,
        }
        return _parse(AgentView, self.request("POST", "/agents/register", body), "register")

    def _agent(self, agent_id: str, path: str, body: Mapping[str, Any] | None = None) -> Json:
        return self.request(
            "POST", f"/agents/{_segment(agent_id)}{path}", body or {}, as_agent=True
        )

    def heartbeat(self, agent_id: str) -> Json:
        return self._agent(agent_id, "/heartbeat")

    def lease(self, agent_id: str) -> LeaseResponse:
        """The batch to run (the current one first, after a restart), or none when idle
        (and then how long to wait for a push before leasing again)."""
        return _parse(LeaseResponse, self._agent(agent_id, "/lease"), "lease")

    def installed(self, agent_id: str, batch_id: str) -> Json:
        return self._agent(agent_id, f"/batches/{_segment(batch_id)}/installed")

    def start_job(self, agent_id: str, job_id: str, batch_id: str) -> Json:
        """-> JobView; raises `Conflict` when the lease was lost."""
        return self._agent(agent_id, f"/jobs/{_segment(job_id)}/start", {"batch_id": batch_id})

    def report_result(
        self,
        agent_id: str,
        job_id: str,
        batch_id: str,
        status: str,
        duration_s: float,
        message: str | None = None,
        output: str | None = None,
    ) -> Json:
        """-> JobView; raises `Conflict` when the report was rejected (lease lost)."""
        body = {
            "batch_id": batch_id,
            "status": status,
            "duration_s": duration_s,
            "message": message,
            "output": output,
        }
        return self._agent(agent_id, f"/jobs/{_segment(job_id)}/result", body)

    def progress(self, agent_id: str, batch_id: str, request: ProgressRequest) -> ProgressResponse:
        """One call for the batch's install, results, next start and completion (in that
        order; the first step refused ends it). -> ProgressResponse, each step's answer."""
        body = request.model_dump(mode="json", exclude_defaults=True)
        answer = self._agent(agent_id, f"/batches/{_segment(batch_id)}/progress", body)
        return _parse(ProgressResponse, answer, "progress")

    def complete_batch(self, agent_id: str, batch_id: str) -> Json:
        """-> {"requeued": n}; unfinished jobs of the batch go back to the queue."""
        return self._agent(agent_id, f"/batches/{_segment(batch_id)}/complete")

    def deregister(self, agent_id: str) -> Json:
        return self._agent(agent_id, "/deregister")


Model = TypeVar("Model", bound=BaseModel)


def _parse(model: type[Model], body: Json, what: str) -> Model:
    """An answer of the agent protocol, typed; a malformed one is a server fault."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise ServerError(
            200, f"malformed {what} answer: {error.error_count()} problem(s)"
        ) from None
