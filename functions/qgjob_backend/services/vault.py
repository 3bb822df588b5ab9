"""The results vault: archive a BrowserStack session's raw record, then audit it.

``VaultService.archive`` handles one vault message:

1. A (job, attempt) that already has an audit record is done: the message is a
   duplicate (SQS delivers at least once) and nothing is fetched or written.
2. GET the session's record. A connection error, 429 or 5xx is retried with bounded
   exponential backoff (a 429's or 503's ``Retry-After`` is honoured, capped); when the
   attempts or the time budget run out, ``VaultRetryLater`` is raised: the message goes
   back to the queue and, after the queue's maxReceiveCount, to its dead-letter queue.
3. A JSON object within ``max_bytes`` is written to the object store under
   ``vault/<org>/<job>/<attempt>.json``, only if that key is still free; if an earlier
   delivery wrote it and crashed before its audit record, that object is kept and the
   record describes it (so the record's sha256 is always the stored object's).
   Any object-store failure raises ``ArchiveFailed``: **no audit record is written**.
4. Only then the audit record is written (a conditional put: one per job and attempt).

Answers that can never be archived (401/403, 404, other 4xx, malformed JSON, a body over
the limit) are not retried: their audit record says why, with no S3 key. Every failure is
counted through ``count`` (the handler publishes it as a metric) and logged, and nothing
logged or recorded carries credentials (they never reach this module).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from qgjob_backend.domain.vault import (
    MAX_SESSION_BYTES,
    AuditRecord,
    Outcome,
    VaultMessage,
    archive_key,
)
from qgjob_backend.ports import (
    AuditStore,
    FetchedSession,
    MissingCredentials,
    ObjectStore,
    ResultsApi,
    ResultsApiUnreachable,
)

logger = Logger(child=True)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
ARCHIVE_CONTENT_TYPE = "application/json"


class VaultRetryLater(RuntimeError):
    """The session record could not be fetched now; the message should come back later."""


class ArchiveFailed(RuntimeError):
    """The object store refused or failed the archive: no audit record was written."""


@dataclass(frozen=True)
class VaultSettings:
    max_attempts: int = 4  # GETs of one session per message
    base_delay_s: float = 0.5  # doubled after each retryable answer
    max_delay_s: float = 8.0  # cap on one wait, Retry-After included
    max_wait_s: float = 20.0  # cap on all waits of one message (the Lambda has 60 s)
    max_bytes: int = MAX_SESSION_BYTES
    link_expires_s: int = 300  # presigned links of GET /jobs/{id}/audit


@dataclass(frozen=True)
class AuditEntry:
    """An audit record and a short-lived link to its archive (None: nothing archived)."""

    record: AuditRecord
    link: str | None
    link_expires_s: int


def _noop_count(name: str) -> None:
    return None


class VaultService:
    def __init__(
        self,
        results_api: ResultsApi,
        objects: ObjectStore,
        audit: AuditStore,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        settings: VaultSettings | None = None,
        count: Callable[[str], None] = _noop_count,
    ) -> None:
        self._api = results_api
        self._objects = objects
        self._audit = audit
        self._clock = clock
        self._sleep = sleep
        self._settings = settings or VaultSettings()
        self._count = count

    @property
    def settings(self) -> VaultSettings:
        return self._settings

    # ------------------------------------------------------------- archive

    def archive(self, message: VaultMessage) -> AuditRecord:
        """Archives and audits one attempt's session record (idempotent)."""
        existing = self._audit.get(message.job_id, message.attempt)
        if existing is not None:
            logger.info("already audited; duplicate message", extra=_ids(message))
            self._count("VaultDuplicates")
            return existing
        fetched = self._fetch(message)
        fetched_at = self._clock()
        outcome, detail = _classify(fetched, self._settings.max_bytes)
        key = sha = None
        size = fetched.size
        if outcome is Outcome.ARCHIVED:
            key = archive_key(message.org_id, message.job_id, message.attempt)
            stored = self._store(message, key, fetched.body)
            sha = hashlib.sha256(stored).hexdigest()
            size = len(stored)
        else:
            logger.error(
                "session record not archived",
                extra={**_ids(message), "outcome": outcome.value, "http_status": fetched.status},
            )
            self._count(f"VaultNotArchived_{outcome.value}")
        record = AuditRecord(
            job_id=message.job_id,
            attempt=message.attempt,
            org_id=message.org_id,
            session_id=message.session_id,
            outcome=outcome,
            http_status=fetched.status,
            source=fetched.source,
            fetched_at=fetched_at,
            recorded_at=self._clock(),
            s3_key=key,
            sha256=sha,
            size=size,
            detail=detail,
        )
        if not self._audit.put(record):
            # A concurrent delivery recorded first: its record stands (same key, same object).
            written = self._audit.get(message.job_id, message.attempt)
            return written or record
        self._count("VaultArchived" if key else "VaultAudited")
        logger.info("audited", extra={**_ids(message), "outcome": outcome.value, "s3_key": key})
        return record

    def _fetch(self, message: VaultMessage) -> FetchedSession:
        settings = self._settings
        waited = 0.0
        reason = ""
        for attempt in range(1, settings.max_attempts + 1):
            retry_after: float | None = None
            try:
                fetched = self._api.fetch_session(
                    message.org_id, message.session_id, settings.max_bytes
                )
            except ResultsApiUnreachable as error:
                reason = f"results API unreachable: {error}"
            except MissingCredentials as error:
                # An operator sets them (infra.admin set-browserstack-credentials); the
                # message comes back, then waits in the dead-letter queue for a redrive.
                self._count("VaultMissingCredentials")
                logger.error("no BrowserStack credentials", extra=_ids(message))
                raise VaultRetryLater(str(error)) from None
            else:
                if fetched.status not in RETRYABLE_STATUSES:
                    return fetched
                reason = f"results API answered {fetched.status}"
                retry_after = fetched.retry_after_s
            self._count("VaultFetchRetries")
            if attempt == settings.max_attempts:
                break
            delay = settings.base_delay_s * 2 ** (attempt - 1)
            if retry_after is not None:
                delay = max(delay, retry_after)
            delay = min(delay, settings.max_delay_s)
            if waited + delay > settings.max_wait_s:
                break
            logger.warning(
                "fetch failed; retrying",
                extra={**_ids(message), "reason": reason, "delay_s": delay, "try": attempt},
            )
            self._sleep(delay)
            waited += delay
        self._count("VaultFetchGaveUp")
        logger.error(
            "fetch gave up; the message will come back", extra={**_ids(message), "reason": reason}
        )
        raise VaultRetryLater(reason)

    def _store(self, message: VaultMessage, key: str, body: bytes) -> bytes:
        """The archived bytes under ``key``: ``body``, or an earlier delivery's object."""
        try:
            if self._objects.put_new(key, body, ARCHIVE_CONTENT_TYPE):
                return body
            earlier = self._objects.get(key)
        except Exception as error:
            self._count("VaultArchiveFailures")
            logger.error(
                "archive failed; no audit record written",
                extra={**_ids(message), "s3_key": key, "error": _describe(error)},
            )
            raise ArchiveFailed(f"archive of {key} failed: {_describe(error)}") from error
        if earlier is None:  # written and deleted since: very unlikely; try again later
            self._count("VaultArchiveFailures")
            raise ArchiveFailed(f"archive of {key} exists but could not be read")
        return earlier

    # ------------------------------------------------------------- read

    def entries(self, job_id: str) -> list[AuditEntry]:
        """The job's audit records, each with a presigned link to its archive."""
        expires = self._settings.link_expires_s
        return [
            AuditEntry(
                record,
                self._objects.presigned_get(record.s3_key, expires) if record.s3_key else None,
                expires,
            )
            for record in self._audit.for_job(job_id)
        ]


def _classify(fetched: FetchedSession, max_bytes: int) -> tuple[Outcome, str | None]:
    status = fetched.status
    if status in (401, 403):
        return Outcome.UNAUTHORIZED, (
            f"BrowserStack refused the org's credentials ({status}); "
            "check them with infra.admin set-browserstack-credentials"
        )
    if status == 404:
        return Outcome.NOT_FOUND, "BrowserStack has no such session"
    if status != 200:
        return Outcome.REJECTED, f"BrowserStack answered {status}"
    if fetched.too_large:
        return Outcome.TOO_LARGE, f"session record over {max_bytes} bytes"
    try:
        parsed = json.loads(fetched.body)
    except ValueError:
        return Outcome.MALFORMED, "the answer is not valid JSON"
    if not isinstance(parsed, dict):
        return Outcome.MALFORMED, "the answer is JSON but not an object"
    return Outcome.ARCHIVED, None


def _ids(message: VaultMessage) -> dict[str, object]:
    return {"org_id": message.org_id, "job_id": message.job_id, "attempt": message.attempt}


def _describe(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code:
            return f"{code} ({status})"
    return type(error).__name__
