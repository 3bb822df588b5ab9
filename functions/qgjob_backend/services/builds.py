"""Use cases of app builds (upload, complete, read, list, hand to agents) and of the
artifacts agents upload with test results.

Bytes never pass through the API: uploads and downloads are presigned S3 links, and the
API's own work per request is bounded (one or two item reads, one conditional write, at
most one HEAD of one object).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aws_lambda_powertools import Logger

from qgjob_backend.build_protocol import (
    ARTIFACT_URL_SECONDS,
    BUILD_URL_SECONDS,
    MAX_ARTIFACT_BYTES,
    MAX_BUILDS_PAGE,
    ArtifactUploadForm,
    ArtifactView,
    BuildDownload,
    BuildUploadRequest,
    BuildView,
    ReportedArtifact,
    UploadInstructions,
    artifact_prefix,
    build_key,
)
from qgjob_backend.domain.builds import Build, BuildFile
from qgjob_backend.ports import BuildStore, UploadStore
from qgjob_backend.services.errors import Conflict, Forbidden, NotFound, ServiceError

logger = Logger(child=True)

BUILD_CONTENT_TYPE = "application/octet-stream"
# A batch's artifact form outlives its lease (heartbeats extend a lease; a form cannot be
# extended): long enough for the longest batch, bounded by what SigV4 allows (7 days).
MAX_FORM_SECONDS = 7 * 24 * 3600


def sha256_b64(hex_digest: str) -> str:
    """S3's form of a SHA-256 (base64 of the digest) from its hex form."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def build_view(build: Build) -> BuildView:
    ready = build.ready
    return BuildView(
        org_id=build.org_id,
        app_version_id=build.app_version_id,
        state=build.state.value,
        sha256=ready.sha256 if ready else None,
        size=ready.size if ready else None,
        file_name=ready.file_name if ready else None,
        uploaded_at=build.uploaded_at,
        pending_sha256=build.pending.sha256 if build.pending else None,
        replaced=build.replaced,
    )


@dataclass(frozen=True)
class UploadTicket:
    build: Build
    upload: UploadInstructions | None  # None: these bytes already are the build
    created: bool  # a new upload was started


@dataclass(frozen=True)
class BuildsPage:
    builds: list[Build]
    next_cursor: str | None


def _cursor(org_id: str, after: str) -> str:
    raw = json.dumps({"org": org_id, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_after(org_id: str, cursor: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = data["after"]
        valid = data["org"] == org_id and isinstance(after, str) and 0 < len(after) <= 64
    except (binascii.Error, ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise ServiceError("cursor: not a cursor of this list; pass the previous next_cursor")
    return str(after)


class BuildService:
    def __init__(self, store: BuildStore, uploads: UploadStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._uploads = uploads
        self._clock = clock

    # ---------------------------------------------------------- uploads
    def start_upload(self, org_id: str, request: BuildUploadRequest) -> UploadTicket:
        """Starts (or confirms) an upload of the version's build.

        Same bytes as the ready build: nothing to upload (idempotent). Other bytes: 409
        unless ``replace``. The ready build stays the version's build until the new upload
        completes, so a failed replacement never leaves the version without one.
        """
        if request.org_id != org_id:
            raise Forbidden(f"org_id: token belongs to org '{org_id}', not '{request.org_id}'")
        version_id = request.app_version_id
        current = self._store.get_build(org_id, version_id)
        ready = current.ready if current else None
        if current is not None and ready is not None and ready.sha256 == request.sha256:
            if ready.size != request.size:
                raise ServiceError(
                    f"size: the build with sha256 {request.sha256} is {ready.size} bytes, "
                    f"not {request.size}"
                )
            return UploadTicket(current, None, created=False)
        if ready is not None and not request.replace:
            raise Conflict(
                f"app_version_id: {version_id} already has a build with other bytes "
                f"(sha256 {ready.sha256}, {ready.size} bytes); upload it as a new app "
                "version, or pass replace (qgjob app upload --replace)"
            )
        now = self._clock()
        pending = BuildFile(
            sha256=request.sha256,
            size=request.size,
            file_name=request.file_name,
            key=build_key(org_id, version_id, request.sha256, request.file_name),
        )
        if current is None:
            build = Build(org_id, version_id, created_at=now, updated_at=now, pending=pending)
        else:
            build = replace(current, pending=pending, updated_at=now, version=current.version + 1)
        if not self._store.save_build(build, current.version if current else None):
            raise Conflict(
                f"app_version_id: the build of {version_id} changed while this upload "
                "started (another upload?); retry"
            )
        url = self._uploads.presigned_put(
            pending.key,
            pending.size,
            sha256_b64(pending.sha256),
            BUILD_CONTENT_TYPE,
            BUILD_URL_SECONDS,
        )
        headers = {
            "Content-Length": str(pending.size),
            "Content-Type": BUILD_CONTENT_TYPE,
            "x-amz-checksum-sha256": sha256_b64(pending.sha256),
        }
        logger.info(
            "build upload started",
            extra={"org_id": org_id, "app_version_id": version_id, "sha256": pending.sha256},
        )
        upload = UploadInstructions(url=url, headers=headers, expires_at=now + BUILD_URL_SECONDS)
        return UploadTicket(build, upload, created=True)

    def complete(self, org_id: str, app_version_id: str, sha256: str) -> Build:
        """Makes the pending upload of ``sha256`` the version's build, once S3 holds it.

        One HEAD: the object must exist with the declared size (and S3's SHA-256, when S3
        reports one, must match). A repeat after success returns the build (idempotent).
        """
        current = self.get(org_id, app_version_id)
        if current.pending is None or current.pending.sha256 != sha256:
            if current.ready is not None and current.ready.sha256 == sha256:
                return current  # already completed: a retried request
            raise Conflict(
                f"sha256: no upload of {sha256} is pending for {app_version_id}; "
                "start it with POST /builds (qgjob app upload)"
            )
        pending = current.pending
        stored = self._uploads.head(pending.key)
        if stored is None:
            raise Conflict(
                f"sha256: the bytes of {sha256} are not in storage yet; PUT them to the "
                "upload URL first (or start the upload again: the URL may have expired)"
            )
        if stored.size != pending.size:
            raise Conflict(
                f"size: storage holds {stored.size} bytes for {sha256}, the upload declared "
                f"{pending.size}; upload again"
            )
        if stored.sha256_b64 is not None and stored.sha256_b64 != sha256_b64(sha256):
            raise Conflict(f"sha256: storage holds other bytes than {sha256}; upload again")
        now = self._clock()
        build = replace(
            current,
            ready=pending,
            pending=None,
            uploaded_at=now,
            updated_at=now,
            version=current.version + 1,
            replaced=current.replaced + (1 if current.ready is not None else 0),
        )
        if not self._store.save_build(build, current.version):
            raise Conflict(
                f"app_version_id: the build of {app_version_id} changed meanwhile; retry"
            )
        logger.info(
            "build ready",
            extra={"org_id": org_id, "app_version_id": app_version_id, "sha256": sha256},
        )
        return build

    # ---------------------------------------------------------- queries
    def get(self, org_id: str, app_version_id: str) -> Build:
        build = self._store.get_build(org_id, app_version_id)
        if build is None:
            raise NotFound(f"app_version_id: no build of {app_version_id} in org {org_id}")
        return build

    def ready_sha256(self, org_id: str, app_version_id: str) -> str | None:
        build = self._store.get_build(org_id, app_version_id)
        return build.ready.sha256 if build is not None and build.ready is not None else None

    def page(self, org_id: str, cursor: str | None, limit: int = MAX_BUILDS_PAGE) -> BuildsPage:
        if not 1 <= limit <= MAX_BUILDS_PAGE:
            raise ServiceError(f"limit: must be between 1 and {MAX_BUILDS_PAGE}")
        after = None if cursor is None else _cursor_after(org_id, cursor)
        page = self._store.list_builds(org_id, after, limit)
        more = page.more and bool(page.builds)
        next_cursor = _cursor(org_id, page.builds[-1].app_version_id) if more else None
        return BuildsPage(page.builds, next_cursor)

    # ----------------------------------------------------------- agents
    def download(self, org_id: str, app_version_id: str) -> BuildDownload | None:
        """A presigned GET of the version's ready build (one read), or None."""
        build = self._store.get_build(org_id, app_version_id)
        if build is None or build.ready is None:
            return None
        ready = build.ready
        return BuildDownload(
            url=self._uploads.presigned_get(ready.key, BUILD_URL_SECONDS),
            sha256=ready.sha256,
            size=ready.size,
            file_name=ready.file_name,
            expires_at=self._clock() + BUILD_URL_SECONDS,
        )

    def artifact_form(self, org_id: str, batch_id: str, seconds: float) -> ArtifactUploadForm:
        """The presigned POST form for the batch's artifacts (no I/O: a signature)."""
        expires_s = int(min(MAX_FORM_SECONDS, max(ARTIFACT_URL_SECONDS, seconds)))
        prefix = artifact_prefix(org_id, batch_id)
        form = self._uploads.presigned_post(prefix, MAX_ARTIFACT_BYTES, expires_s)
        return ArtifactUploadForm(
            url=form.url,
            fields=form.fields,
            key_prefix=prefix,
            max_bytes=MAX_ARTIFACT_BYTES,
            expires_at=self._clock() + expires_s,
        )

    def output_link(self, key: str) -> str:
        """A short-lived link to a result's full output (its S3 key: results/...)."""
        return self._uploads.presigned_get(key, ARTIFACT_URL_SECONDS)

    def artifact_views(self, artifacts: Sequence[dict[str, Any]]) -> list[ArtifactView]:
        """A job's artifacts with a short-lived download link each (signatures, no I/O)."""
        return [
            ArtifactView(
                name=str(a["name"]),
                key=str(a["key"]),
                content_type=str(a["content_type"]),
                size=int(a["size"]),
                url=self._uploads.presigned_get(str(a["key"]), ARTIFACT_URL_SECONDS),
            )
            for a in artifacts
        ]


def checked_artifacts(
    org_id: str, batch_id: str, job_id: str, artifacts: Sequence[ReportedArtifact]
) -> list[dict[str, Any]]:
    """The artifacts of a result as stored on the job; 400 naming the field when one is
    not under the job's own prefix (an agent may only point at what it could upload)."""
    prefix = artifact_prefix(org_id, batch_id, job_id)
    stored: list[dict[str, Any]] = []
    for index, artifact in enumerate(artifacts):
        if not artifact.key.startswith(prefix) or ".." in artifact.key.split("/"):
            raise ServiceError(
                f"artifacts[{index}].key: must be under {prefix} (this job's prefix)"
            )
        stored.append(artifact.model_dump())
    return stored
