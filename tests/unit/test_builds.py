"""BuildService over the in-memory fakes: uploads, conflicts, completion, org isolation."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from qgjob_backend.build_protocol import BuildUploadRequest, ReportedArtifact, build_extension
from qgjob_backend.services.builds import BuildService, checked_artifacts, sha256_b64
from qgjob_backend.services.errors import Conflict, Forbidden, NotFound, ServiceError
from tests.unit.fakes import FakeClock, MemoryBuildStore, MemoryUploadStore

APK = b"PK\x03\x04 an apk" * 100
OTHER = b"PK\x03\x04 another apk" * 100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request(
    data: bytes = APK, *, org: str = "acme", version: str = "v1", **extra: object
) -> BuildUploadRequest:
    return BuildUploadRequest(
        org_id=org,
        app_version_id=version,
        file_name="app-release.apk",
        size=len(data),
        sha256=sha(data),
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def uploads() -> MemoryUploadStore:
    return MemoryUploadStore()


@pytest.fixture
def store() -> MemoryBuildStore:
    return MemoryBuildStore()


@pytest.fixture
def service(store: MemoryBuildStore, uploads: MemoryUploadStore) -> BuildService:
    return BuildService(store, uploads, FakeClock())


def upload(service: BuildService, uploads: MemoryUploadStore, data: bytes, **extra: object) -> None:
    ticket = service.start_upload("acme", request(data, **extra))
    assert ticket.upload is not None
    pending = ticket.build.pending
    assert pending is not None
    uploads.put(pending.key, data)
    service.complete("acme", "v1", sha(data))


def test_an_upload_is_a_presigned_put_signed_with_size_and_checksum(
    service: BuildService, uploads: MemoryUploadStore
) -> None:
    ticket = service.start_upload("acme", request())
    assert ticket.created
    assert ticket.upload is not None
    assert ticket.upload.headers == {
        "Content-Length": str(len(APK)),
        "Content-Type": "application/octet-stream",
        "x-amz-checksum-sha256": sha256_b64(sha(APK)),
    }
    assert ticket.build.ready is None
    assert ticket.build.pending is not None
    assert ticket.build.pending.key == f"builds/acme/v1/{sha(APK)}/app-release.apk"
    assert service.download("acme", "v1") is None  # not a build until completed


def test_complete_checks_the_stored_object_then_the_build_is_ready(
    service: BuildService, uploads: MemoryUploadStore
) -> None:
    ticket = service.start_upload("acme", request())
    with pytest.raises(Conflict, match="not in storage yet"):
        service.complete("acme", "v1", sha(APK))
    assert ticket.build.pending is not None
    uploads.put(ticket.build.pending.key, APK[:-1])
    with pytest.raises(Conflict, match="size"):
        service.complete("acme", "v1", sha(APK))
    uploads.put(ticket.build.pending.key, APK)
    build = service.complete("acme", "v1", sha(APK))
    assert build.ready is not None
    assert build.ready.sha256 == sha(APK)
    assert build.ready.size == len(APK)
    assert build.pending is None
    # A retried completion is answered with the build, and HEADs nothing more.
    heads = uploads.heads
    assert service.complete("acme", "v1", sha(APK)) == build
    assert uploads.heads == heads
    download = service.download("acme", "v1")
    assert download is not None
    assert (download.sha256, download.size) == (sha(APK), len(APK))


def test_stored_bytes_with_another_checksum_are_refused(
    service: BuildService, uploads: MemoryUploadStore
) -> None:
    ticket = service.start_upload("acme", request())
    assert ticket.build.pending is not None
    uploads.put(ticket.build.pending.key, bytes(reversed(APK)))  # same size, other bytes
    with pytest.raises(Conflict, match="other bytes"):
        service.complete("acme", "v1", sha(APK))


def test_same_bytes_again_is_idempotent_other_bytes_a_conflict_unless_replace(
    service: BuildService, uploads: MemoryUploadStore
) -> None:
    upload(service, uploads, APK)
    again = service.start_upload("acme", request(APK))
    assert again.upload is None
    assert not again.created
    with pytest.raises(Conflict, match="--replace"):
        service.start_upload("acme", request(OTHER))
    # Replacing: the old build stays until the new one completes.
    ticket = service.start_upload("acme", request(OTHER, replace=True))
    assert ticket.build.ready is not None
    assert ticket.build.ready.sha256 == sha(APK)
    current = service.download("acme", "v1")
    assert current is not None
    assert current.sha256 == sha(APK)
    assert ticket.build.pending is not None
    uploads.put(ticket.build.pending.key, OTHER)
    replaced = service.complete("acme", "v1", sha(OTHER))
    assert replaced.ready is not None
    assert replaced.ready.sha256 == sha(OTHER)
    assert replaced.replaced == 1


def test_two_uploads_racing_for_a_version_cannot_both_start(
    service: BuildService, store: MemoryBuildStore, uploads: MemoryUploadStore
) -> None:
    # Both read "no build yet"; the second conditional write finds the first's item.
    first = BuildService(store, uploads, FakeClock())
    read = store.get_build("acme", "v1")
    assert read is None
    store.get_build = lambda org, version: read  # type: ignore[method-assign,assignment]
    first.start_upload("acme", request(APK))
    with pytest.raises(Conflict, match="changed"):
        service.start_upload("acme", request(OTHER))


def test_another_org_sees_nothing_and_cannot_upload_for_another(
    service: BuildService, uploads: MemoryUploadStore
) -> None:
    upload(service, uploads, APK)
    with pytest.raises(NotFound):
        service.get("globex", "v1")
    assert service.download("globex", "v1") is None
    with pytest.raises(Forbidden, match="org_id"):
        service.start_upload("globex", request(APK))
    with pytest.raises(NotFound):
        service.complete("globex", "v1", sha(APK))
    assert service.page("globex", None).builds == []


def test_list_pages_with_a_cursor_of_the_org_only(
    service: BuildService, uploads: MemoryUploadStore
) -> None:
    for version in ("v1", "v2", "v3"):
        service.start_upload("acme", request(APK, version=version))
    first = service.page("acme", None, limit=2)
    assert [b.app_version_id for b in first.builds] == ["v1", "v2"]
    assert first.next_cursor is not None
    second = service.page("acme", first.next_cursor, limit=2)
    assert [b.app_version_id for b in second.builds] == ["v3"]
    assert second.next_cursor is None
    with pytest.raises(ServiceError, match="cursor"):
        service.page("globex", first.next_cursor)
    with pytest.raises(ServiceError, match="limit"):
        service.page("acme", None, limit=0)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("app.apk", ".apk"),
        ("App.AAB", ".aab"),
        ("x.ipa", ".ipa"),
        ("Runner.app.zip", ".app.zip"),
        ("app.zip", None),
        ("app.exe", None),
        (".apk", None),
    ],
)
def test_build_kinds(name: str, kind: str | None) -> None:
    assert build_extension(name) == kind


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("file_name", "app.exe"),
        ("file_name", "../app.apk"),
        ("file_name", "-rf.apk"),
        ("sha256", "ABC"),
        ("size", 0),
        ("org_id", "bad org"),
    ],
)
def test_bad_upload_requests_name_the_field(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "org_id": "acme",
        "app_version_id": "v1",
        "file_name": "app.apk",
        "size": 10,
        "sha256": sha(b"x"),
    }
    fields[field] = value
    with pytest.raises(ValidationError) as caught:
        BuildUploadRequest(**fields)  # type: ignore[arg-type]
    assert caught.value.errors()[0]["loc"][0] == field


def test_reported_artifacts_must_be_under_the_jobs_own_prefix() -> None:
    good = ReportedArtifact(
        name="screenshot", key="artifacts/acme/b1/j1/0-shot.png", content_type="image/png", size=3
    )
    assert checked_artifacts("acme", "b1", "j1", [good])[0]["key"] == good.key
    for key in (
        "artifacts/acme/b1/j2/0-shot.png",  # another job's
        "artifacts/globex/b1/j1/0-shot.png",  # another org's
        "builds/acme/v1/x/app.apk",
        "artifacts/acme/b1/j1/../j2/x.png",
    ):
        bad = good.model_copy(update={"key": key})
        with pytest.raises(ServiceError, match=r"artifacts\[1\]\.key"):
            checked_artifacts("acme", "b1", "j1", [good, bad])
