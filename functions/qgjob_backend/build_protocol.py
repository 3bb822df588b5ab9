"""App builds and test artifacts on the wire: the one definition shared by API and CLI.

Like ``schema.py`` this module imports nothing but pydantic, the standard library and
the schema, because the CLI ships it too (``cli/qgjob/build_protocol.py`` is a link to
this file).

A build is stored in S3 without passing through the API:

1. ``POST /builds`` with the file's name, size and sha256. The answer is either the
   build already stored with those bytes (``upload`` null: nothing to send), or a
   presigned ``PUT`` whose signature covers ``Content-Length`` and
   ``x-amz-checksum-sha256``: S3 itself refuses a body of another size or digest.
2. The client PUTs the bytes, sending exactly the ``headers`` of the answer.
3. ``POST /builds/{app_version_id}/complete`` with the sha256: the API HEADs the object
   (one request), checks its size (and S3's SHA-256 when S3 reports one) and only then
   makes it the version's build. Until then the version keeps the build it had.

Agents get a presigned ``GET`` of their batch's build with its sha256 and size in the
lease answer, and verify the digest of what they download (so a corrupted cache, proxy
or object is an install error, never a test run against the wrong app).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from .schema import Identifier

# What an app build may be: Android (.apk, .aab) and iOS (.ipa, a zipped .app bundle).
BUILD_EXTENSIONS = (".apk", ".aab", ".ipa", ".app.zip")
MAX_BUILD_BYTES = 4 * 1024**3  # 4 GiB: the largest .ipa App Store Connect takes
MAX_FILE_NAME_CHARS = 128
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_BUILDS_PAGE = 100
# A presigned URL of a build (PUT for the uploader, GET for an agent) lives this long.
BUILD_URL_SECONDS = 3600

# Artifacts (screenshots, videos, traces): each test's attachments, uploaded by the agent
# under its batch's prefix with the presigned POST form of the lease answer.
MAX_ARTIFACTS_PER_RESULT = 10
MAX_ARTIFACT_BYTES = 50 * 1024**2
MAX_ARTIFACT_NAME_CHARS = 128
MAX_ARTIFACT_KEY_CHARS = 1024
ARTIFACT_URL_SECONDS = 3600


def build_extension(file_name: str) -> str | None:
    """The build kind of a file name (``.app.zip`` before ``.zip``), or None."""
    lowered = file_name.lower()
    for extension in BUILD_EXTENSIONS:
        if lowered.endswith(extension) and len(lowered) > len(extension):
            return extension
    return None


def _check_file_name(value: str) -> str:
    if "/" in value or "\\" in value or any(ord(ch) < 32 for ch in value):
        raise ValueError("must be a plain file name (no directory, no control character)")
    if value.startswith(("-", ".")):
        raise ValueError("must not begin with '-' or '.'")
    if not re.fullmatch(r"[A-Za-z0-9._+ -]+", value):
        raise ValueError("may contain only letters, digits, spaces and . _ + -")
    if build_extension(value) is None:
        raise ValueError(f"must end with one of {', '.join(BUILD_EXTENSIONS)}")
    return value


FileName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_FILE_NAME_CHARS),
    AfterValidator(_check_file_name),
]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]


def build_key(org_id: str, app_version_id: str, sha256: str, file_name: str) -> str:
    """Where a build's bytes live: content-addressed under its org and version."""
    return f"builds/{org_id}/{app_version_id}/{sha256}/{file_name}"


def artifact_prefix(org_id: str, batch_id: str, job_id: str | None = None) -> str:
    """The keys a batch's agent may upload artifacts to (one job's, with ``job_id``)."""
    prefix = f"artifacts/{org_id}/{batch_id}/"
    return prefix + f"{job_id}/" if job_id is not None else prefix


# ----------------------------------------------------------------- requests
class BuildUploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org_id: Identifier
    app_version_id: Identifier
    file_name: FileName = Field(description="The build's file name: .apk, .aab, .ipa, .app.zip.")
    size: int = Field(ge=1, le=MAX_BUILD_BYTES, description="The file's size in bytes.")
    sha256: Sha256 = Field(description="The file's SHA-256, lower-case hex.")
    replace: bool = Field(
        default=False,
        description=(
            "Replace the version's build when it has other bytes (else that is a 409). "
            "The same bytes again are never a conflict."
        ),
    )


class BuildCompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: Sha256 = Field(description="The sha256 of the upload being completed.")


# ---------------------------------------------------------------- responses
class BuildView(BaseModel):
    org_id: str
    app_version_id: str
    state: str = Field(description="ready: agents install it; pending: uploading, none yet.")
    sha256: str | None = Field(description="The ready build's SHA-256 (None while none is).")
    size: int | None = None
    file_name: str | None = None
    uploaded_at: float | None = Field(default=None, description="When it became ready.")
    pending_sha256: str | None = Field(
        default=None, description="An upload started but not completed (the build stays)."
    )
    replaced: int = Field(default=0, description="How often the version's build was replaced.")


class UploadInstructions(BaseModel):
    method: str = "PUT"
    url: str
    headers: dict[str, str] = Field(description="Send exactly these headers (they are signed).")
    expires_at: float


class BuildUploadResponse(BaseModel):
    build: BuildView
    upload: UploadInstructions | None = Field(
        description="Where to PUT the bytes; null when these bytes are already the build."
    )


class BuildPageView(BaseModel):
    builds: list[BuildView]
    next_cursor: str | None


class BuildDownload(BaseModel):
    """A batch's build, for the agent: GET ``url``, check ``sha256`` and ``size``."""

    url: str
    sha256: str
    size: int
    file_name: str
    expires_at: float


class ArtifactUploadForm(BaseModel):
    """A presigned S3 POST form: any key under ``key_prefix``, each at most ``max_bytes``."""

    url: str
    fields: dict[str, str]
    key_prefix: str
    max_bytes: int
    expires_at: float


class ReportedArtifact(BaseModel):
    """An attachment the agent uploaded for a test (under its batch's artifact prefix)."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ARTIFACT_NAME_CHARS)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ARTIFACT_KEY_CHARS)]
    content_type: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    size: int = Field(ge=0, le=MAX_ARTIFACT_BYTES)


class ArtifactView(BaseModel):
    name: str
    key: str
    content_type: str
    size: int
    url: str | None = Field(default=None, description="A short-lived link to download it.")
