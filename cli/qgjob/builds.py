"""App builds on the client side: upload (presigned PUT), the agent's build cache, and the
upload of test attachments (presigned POST).

- ``upload_build``: hashes the file, asks qgjob for a presigned PUT (``POST /builds``),
  streams the bytes straight to S3 with the signed headers (S3 refuses other bytes), then
  completes the upload (``POST /builds/{v}/complete``: qgjob checks the stored object).
- ``BuildCache``: one file per sha256 (``<dir>/<sha256>/<file name>``): downloaded once,
  written to a temporary file, verified (size and SHA-256) and only then renamed into
  place, so a crash or a concurrent agent on the same host never leaves a half file
  where a build is expected. A download that does not match is an ``InstallError``.
- ``upload_attachments``: a test's screenshots, videos and traces, each at most the
  form's ``max_bytes``, under the job's own prefix of the batch's form.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import requests

from qgjob.build_protocol import (
    BUILD_EXTENSIONS,
    MAX_ARTIFACTS_PER_RESULT,
    MAX_BUILD_BYTES,
    ArtifactUploadForm,
    BuildDownload,
    ReportedArtifact,
    build_extension,
)
from qgjob.errors import ConfigError, ServerError, Unreachable
from qgjob.runners.base import Attachment, InstallError

CHUNK_BYTES = 1024 * 1024
DOWNLOAD_TIMEOUT_S = 60.0  # between two chunks, not for the whole file
UPLOAD_TIMEOUT_S = 300.0
CACHE_ENV = "QGJOB_BUILD_CACHE"
DEFAULT_KEEP_BUILDS = 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Json = dict[str, Any]


def default_cache_dir() -> Path:
    """$QGJOB_BUILD_CACHE, else $XDG_CACHE_HOME/qgjob/builds, else ~/.cache/qgjob/builds."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "qgjob" / "builds"


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# ------------------------------------------------------------------ upload
def check_build_file(path: Path) -> None:
    """ConfigError (exit 2) naming FILE when it cannot be a build."""
    if build_extension(path.name) is None:
        raise ConfigError(
            f"FILE: {path.name!r} is not an app build; expected one of "
            f"{', '.join(BUILD_EXTENSIONS)}"
        )
    if not path.is_file():
        raise ConfigError(f"FILE: {path} is not a readable file")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"FILE: {path} is empty")
    if size > MAX_BUILD_BYTES:
        raise ConfigError(f"FILE: {path} is {size} bytes, over the {MAX_BUILD_BYTES} allowed")


def upload_build(
    client: Any,
    org_id: str,
    app_version_id: str,
    path: Path,
    *,
    replace: bool = False,
    session: requests.Session | None = None,
    note: Callable[[str], None] = lambda line: None,
) -> Json:
    """Uploads ``path`` as the build of the app version; returns the build view.

    ``client`` is a ``qgjob.client.ApiClient``. Same bytes as the stored build: nothing is
    sent again. Other bytes: the API's 409 (``Conflict``) unless ``replace``.
    """
    check_build_file(path)
    sha256, size = file_digest(path)
    answer = client.request(
        "POST",
        "/builds",
        {
            "org_id": org_id,
            "app_version_id": app_version_id,
            "file_name": path.name,
            "size": size,
            "sha256": sha256,
            "replace": replace,
        },
    )
    upload = answer.get("upload")
    if not upload:
        note(f"build {org_id}/{app_version_id} already holds these bytes (sha256 {sha256})")
        return dict(answer.get("build") or {})
    note(f"uploading {path.name} ({size} bytes, sha256 {sha256})")
    _put(session or requests.Session(), str(upload["url"]), dict(upload["headers"]), path)
    version = quote(app_version_id, safe="")
    build: Json = client.request("POST", f"/builds/{version}/complete", {"sha256": sha256})
    return build


def _put(session: requests.Session, url: str, headers: dict[str, str], path: Path) -> None:
    host = url.split("?", 1)[0]
    try:
        with path.open("rb") as body:
            response = session.put(url, data=body, headers=headers, timeout=UPLOAD_TIMEOUT_S)
    except requests.RequestException as error:
        raise Unreachable(host, f"upload failed: {error.__class__.__name__}") from None
    if response.status_code >= 300:
        detail = (response.text or "").strip().splitlines()[:1]
        raise ServerError(
            response.status_code,
            f"storage refused the upload (HTTP {response.status_code})"
            + (f": {detail[0][:300]}" if detail else ""),
        )


# ------------------------------------------------------------------- cache
class BuildCache:
    """Builds by sha256 on the device host, each downloaded once."""

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        session: requests.Session | None = None,
        timeout_s: float = DOWNLOAD_TIMEOUT_S,
        keep: int = DEFAULT_KEEP_BUILDS,
    ) -> None:
        chosen = Path(directory) if directory is not None else default_cache_dir()
        self.directory = chosen.expanduser().resolve()
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._keep = keep
        self.downloads = 0  # how many builds this cache downloaded (tests and logs)

    def path_for(self, build: BuildDownload) -> Path:
        if not _SHA256.match(build.sha256) or build_extension(build.file_name) is None:
            raise InstallError(f"the lease names a build this agent refuses: {build.file_name!r}")
        if "/" in build.file_name or "\\" in build.file_name or build.file_name.startswith("."):
            raise InstallError(f"the lease names a build this agent refuses: {build.file_name!r}")
        return self.directory / build.sha256 / build.file_name

    def fetch(self, build: BuildDownload) -> tuple[Path, bool]:
        """The build's local path, and whether it was downloaded now (else: cached)."""
        final = self.path_for(build)
        if final.is_file():
            if file_digest(final) == (build.sha256, build.size):
                os.utime(final.parent)  # recently used: pruned last
                return final, False
            final.unlink()  # corrupted on disk: fetch it again
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            digest, size = self._download(build, partial)
            if (digest, size) != (build.sha256, build.size):
                raise InstallError(
                    f"build {build.file_name}: downloaded {size} bytes with sha256 {digest}, "
                    f"expected {build.size} bytes with sha256 {build.sha256}; not installed"
                )
            os.replace(partial, final)  # atomic: the path holds a whole, verified build
        finally:
            partial.unlink(missing_ok=True)
        self.downloads += 1
        self._prune(keep_also=final.parent)
        return final, True

    def _download(self, build: BuildDownload, partial: Path) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        try:
            with self._session.get(build.url, stream=True, timeout=self._timeout_s) as response:
                if response.status_code != 200:
                    raise InstallError(
                        f"build {build.file_name}: download refused (HTTP "
                        f"{response.status_code}; the link may have expired: lease again)"
                    )
                with partial.open("wb") as handle:
                    for chunk in _chunks(response):
                        size += len(chunk)
                        if size > build.size:
                            raise InstallError(
                                f"build {build.file_name}: larger than its {build.size} bytes"
                            )
                        digest.update(chunk)
                        handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
        except requests.RequestException as error:
            raise InstallError(
                f"build {build.file_name}: download failed ({error.__class__.__name__})"
            ) from None
        return digest.hexdigest(), size

    def _prune(self, keep_also: Path) -> None:
        """Keeps the ``keep`` most recently used builds (best effort)."""
        try:
            entries = [p for p in self.directory.iterdir() if p.is_dir() and _SHA256.match(p.name)]
        except OSError:
            return
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in entries[self._keep :]:
            if stale != keep_also:
                shutil.rmtree(stale, ignore_errors=True)


def _chunks(response: requests.Response) -> Iterator[bytes]:
    for chunk in response.iter_content(CHUNK_BYTES):
        if chunk:
            yield chunk


# ------------------------------------------------------------- attachments
def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "attachment"
    return cleaned[:80]


def upload_attachments(
    form: ArtifactUploadForm,
    job_id: str,
    attachments: Sequence[Attachment],
    *,
    session: requests.Session | None = None,
    open_file: Callable[[Path], IO[bytes]] = lambda path: path.open("rb"),
) -> tuple[list[ReportedArtifact], list[str]]:
    """Uploads up to MAX_ARTIFACTS_PER_RESULT attachments; returns what was uploaded and a
    note for each one left out (too large, missing, refused)."""
    http = session or requests.Session()
    reported: list[ReportedArtifact] = []
    notes: list[str] = []
    prefix = f"{form.key_prefix}{job_id}/"
    for index, attachment in enumerate(attachments):
        if len(reported) >= MAX_ARTIFACTS_PER_RESULT:
            notes.append(f"{len(attachments) - index} more attachment(s) not uploaded (limit)")
            break
        path = Path(attachment.path)
        try:
            size = path.stat().st_size
        except OSError:
            notes.append(f"attachment {attachment.name}: {path} not found")
            continue
        if size > form.max_bytes:
            notes.append(
                f"attachment {attachment.name}: {size} bytes, over the {form.max_bytes} allowed"
            )
            continue
        key = f"{prefix}{index}-{_safe_name(path.name)}"
        fields = {**form.fields, "key": key, "Content-Type": attachment.content_type}
        try:
            with open_file(path) as handle:
                response = http.post(
                    form.url,
                    data=fields,
                    files={"file": (path.name, handle, attachment.content_type)},
                    timeout=UPLOAD_TIMEOUT_S,
                )
        except (OSError, requests.RequestException) as error:
            reason = error.__class__.__name__
            notes.append(f"attachment {attachment.name}: upload failed ({reason})")
            continue
        if response.status_code >= 300:
            notes.append(f"attachment {attachment.name}: storage answered {response.status_code}")
            continue
        reported.append(
            ReportedArtifact(
                name=attachment.name[:128] or "attachment",
                key=key,
                content_type=attachment.content_type[:128] or "application/octet-stream",
                size=size,
            )
        )
    return reported, notes
