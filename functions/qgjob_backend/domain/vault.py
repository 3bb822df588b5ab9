"""The results vault's data: what a vault message asks for, where the archive goes, and
the audit record written once the archive is in place. Plain values, no I/O.

A vault message names one attempt of one job that ran on BrowserStack (its App Automate
session id). The archive key is a function of the message alone, so a message delivered
twice archives to the same key and records under the same (job, attempt) audit key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from qgjob_backend.schema import Identifier

VAULT_PREFIX = "vault"
# The largest session record the vault archives. App Automate's session JSON is a few
# KB (links to logs and video, not the logs themselves); 1 MiB leaves room for any
# growth while bounding a Lambda's memory and an S3 PUT. Larger answers are not
# archived: the audit record says "too_large" with the size seen.
MAX_SESSION_BYTES = 1024 * 1024
# Attempts of a job (1 + retries; schema.MAX_RETRIES bounds it well below this).
MAX_ATTEMPT = 100
# App Automate session ids are 40 hex characters; accept any short URL-safe token.
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
JobIdText = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]


class VaultMessage(BaseModel):
    """The body of a message on the vault queue (sent by the API when a result with a
    session id is accepted)."""

    model_config = ConfigDict(extra="forbid")
    org_id: Identifier
    job_id: JobIdText
    attempt: int = Field(ge=1, le=MAX_ATTEMPT, strict=True)
    session_id: SessionId

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)


def archive_key(org_id: str, job_id: str, attempt: int) -> str:
    return f"{VAULT_PREFIX}/{org_id}/{job_id}/{attempt}.json"


class Outcome(StrEnum):
    """What the vault did with one session record (the audit record's ``outcome``)."""

    ARCHIVED = "archived"  # fetched, archived to S3 (s3_key, sha256, size set)
    UNAUTHORIZED = "unauthorized"  # 401/403: the org's credentials were refused
    NOT_FOUND = "not_found"  # 404: BrowserStack has no such session
    REJECTED = "rejected"  # another 4xx: the request itself was refused
    MALFORMED = "malformed_json"  # 200, but not a JSON object
    TOO_LARGE = "too_large"  # 200, but over MAX_SESSION_BYTES


TERMINAL_WITHOUT_ARCHIVE = frozenset(
    {
        Outcome.UNAUTHORIZED,
        Outcome.NOT_FOUND,
        Outcome.REJECTED,
        Outcome.MALFORMED,
        Outcome.TOO_LARGE,
    }
)


@dataclass(frozen=True)
class AuditRecord:
    """One (job, attempt)'s audit record: written once, after the archive (if any)."""

    job_id: str
    attempt: int
    org_id: str
    session_id: str
    outcome: Outcome
    http_status: int | None
    source: str  # the URL fetched (never credentials)
    fetched_at: float
    recorded_at: float
    s3_key: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes archived (or, when not archived, bytes seen)
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data
