"""The agent's build cache (download once per sha256, verified, atomic), attachments'
uploads, `qgjob app upload`, and the agent installing the batch's build from the cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner

from qgjob.agent import Agent
from qgjob.build_protocol import ArtifactUploadForm, BuildDownload
from qgjob.builds import BuildCache, upload_attachments
from qgjob.cli import CliState, cli
from qgjob.runners.base import Attachment, InstallError, RunOutcome
from tests.unit.cli.test_cli_agent import FakeAgentApi, Sleeps, make_batch

APK = b"PK\x03\x04 fake apk bytes " * 64
URL = "https://bucket.s3.amazonaws.com/builds/acme/v1/x/app-release.apk?X-Amz-Signature=s"


def download(data: bytes = APK, *, sha256: str | None = None, size: int | None = None) -> Any:
    return BuildDownload(
        url=URL,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data) if size is None else size,
        file_name="app-release.apk",
        expires_at=0.0,
    )


@responses.activate
def test_a_build_is_downloaded_once_then_served_from_the_cache(tmp_path: Path) -> None:
    responses.get(URL, body=APK)
    cache = BuildCache(tmp_path / "cache")
    path, downloaded = cache.fetch(download())
    assert downloaded
    assert path.read_bytes() == APK
    assert path == tmp_path / "cache" / hashlib.sha256(APK).hexdigest() / "app-release.apk"
    again, downloaded_again = BuildCache(tmp_path / "cache").fetch(download())  # a restart
    assert again == path
    assert not downloaded_again
    assert len(responses.calls) == 1


@responses.activate
def test_a_download_with_another_checksum_is_an_install_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    responses.get(URL, body=APK[::-1])  # same size, other bytes
    cache = BuildCache(tmp_path / "cache")
    with pytest.raises(InstallError, match=r"expected .* bytes with sha256"):
        cache.fetch(download())
    folder = tmp_path / "cache" / hashlib.sha256(APK).hexdigest()
    assert list(folder.iterdir()) == []  # no build, no partial file


@responses.activate
def test_a_download_larger_than_announced_stops_early(tmp_path: Path) -> None:
    responses.get(URL, body=APK + b"more")
    with pytest.raises(InstallError, match="larger than"):
        BuildCache(tmp_path).fetch(download())


@responses.activate
def test_a_corrupted_cached_build_is_fetched_again(tmp_path: Path) -> None:
    responses.get(URL, body=APK)
    cache = BuildCache(tmp_path)
    path, _ = cache.fetch(download())
    path.write_bytes(b"x" * len(APK))  # damaged on disk
    again, downloaded = cache.fetch(download())
    assert downloaded
    assert again.read_bytes() == APK


@responses.activate
def test_an_expired_link_is_an_install_error(tmp_path: Path) -> None:
    responses.get(URL, status=403, body="<Error><Code>AccessDenied</Code></Error>")
    with pytest.raises(InstallError, match="HTTP 403"):
        BuildCache(tmp_path).fetch(download())


def test_a_build_name_from_the_server_cannot_leave_the_cache(tmp_path: Path) -> None:
    bad = download().model_copy(update={"file_name": "../../evil.apk"})
    with pytest.raises(InstallError, match="refuses"):
        BuildCache(tmp_path).fetch(bad)


FORM = ArtifactUploadForm(
    url="https://bucket.s3.amazonaws.com/",
    fields={"policy": "p", "x-amz-signature": "s"},
    key_prefix="artifacts/acme/b1/",
    max_bytes=10,
    expires_at=0.0,
)


@responses.activate
def test_attachments_are_posted_under_the_jobs_prefix_bounded_in_size(tmp_path: Path) -> None:
    responses.post(FORM.url, status=204)
    small = tmp_path / "shot.png"
    small.write_bytes(b"png")
    large = tmp_path / "video.webm"
    large.write_bytes(b"v" * 11)
    uploaded, notes = upload_attachments(
        FORM,
        "j1",
        [
            Attachment("screenshot", str(small), "image/png"),
            Attachment("video", str(large), "video/webm"),
            Attachment("trace", str(tmp_path / "missing.zip"), "application/zip"),
        ],
    )
    assert [(a.name, a.key, a.size) for a in uploaded] == [
        ("screenshot", "artifacts/acme/b1/j1/0-shot.png", 3)
    ]
    assert len(notes) == 2
    assert "over the 10 allowed" in notes[0]
    assert "not found" in notes[1]
    (call,) = responses.calls
    body = call.request.body
    assert isinstance(body, bytes)
    assert b'name="key"\r\n\r\nartifacts/acme/b1/j1/0-shot.png' in body
    assert b'name="policy"' in body


class CacheRunner:
    def __init__(self) -> None:
        self.installs: list[str | None] = []

    def install(
        self, org_id: str, app_version_id: str, target: str, app_path: str | None = None
    ) -> None:
        self.installs.append(app_path)

    def run(self, test_path: str, target: str, timeout_s: float, should_stop: Any, **_: Any) -> Any:
        return RunOutcome(
            "failed",
            1.0,
            "boom",
            "output",
            attachments=(Attachment("screenshot", str(self.shot), "image/png"),),
        )

    shot = Path()


def with_build(batch: dict[str, Any], data: bytes = APK) -> dict[str, Any]:
    build = download(data).model_dump()
    return {**batch, "build": build, "artifacts": FORM.model_dump()}


@responses.activate
def test_the_agent_installs_each_batchs_build_from_the_cache_and_reports_artifacts(
    tmp_path: Path,
) -> None:
    responses.get(URL, body=APK)
    responses.post(FORM.url, status=204)
    CacheRunner.shot = tmp_path / "shot.png"
    CacheRunner.shot.write_bytes(b"png")
    cache_dir = tmp_path / "cache"
    batches = [with_build(make_batch("b1", ["a.spec.js"])), with_build(make_batch("b2", ["b"]))]
    for process in range(2):  # two agent processes (a restart) sharing one host cache
        api = FakeAgentApi([batches[process]])
        runner = CacheRunner()
        logs: list[str] = []
        agent = Agent(
            api,
            runner,
            "emulator",
            "1",
            sleep=Sleeps(),
            heartbeat=False,
            max_batches=1,
            log=logs.append,
            clock=lambda: 0.0,
            build_cache=BuildCache(cache_dir),
        )
        assert agent.run() == 0
        expected = cache_dir / hashlib.sha256(APK).hexdigest() / "app-release.apk"
        assert runner.installs == [str(expected)]
        assert any(("downloaded" if process == 0 else "from the cache") in line for line in logs)
        (result,) = [r for call in api.progress_calls for r in call.results]
        assert [a.key for a in result.artifacts] == [
            f"artifacts/acme/b1/b{process + 1}-j1/0-shot.png"
        ]
    assert len([c for c in responses.calls if c.request.method == "GET"]) == 1


@responses.activate
def test_a_build_that_does_not_verify_fails_the_batchs_tests_as_errors(tmp_path: Path) -> None:
    responses.get(URL, body=APK[::-1])
    api = FakeAgentApi([with_build(make_batch("b1", ["a.spec.js"]))])
    runner = CacheRunner()
    agent = Agent(
        api,
        runner,
        "emulator",
        "1",
        sleep=Sleeps(),
        heartbeat=False,
        max_batches=1,
        log=lambda line: None,
        clock=lambda: 0.0,
        build_cache=BuildCache(tmp_path),
    )
    assert agent.run() == 0
    assert runner.installs == []  # never installed unverified bytes
    (result,) = [r for call in api.progress_calls for r in call.results]
    assert result.status == "error"
    assert result.message is not None
    assert "sha256" in result.message


class FakeBuildsApi:
    """POST /builds and /complete as the API answers them."""

    def __init__(self, stored_sha: str | None = None) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.stored_sha = stored_sha

    def __call__(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        self.requests.append((method, path, body))
        build = {"org_id": "acme", "app_version_id": "v1", "state": "ready", "replaced": 0}
        if path == "/builds":
            if self.stored_sha == body["sha256"]:
                return {"build": {**build, "sha256": body["sha256"]}, "upload": None}
            return {
                "build": {**build, "state": "pending", "sha256": None},
                "upload": {
                    "method": "PUT",
                    "url": "https://bucket.s3.amazonaws.com/builds/acme/v1/x?sig=1",
                    "headers": {"Content-Length": str(body["size"]), "x-amz-checksum-sha256": "c"},
                    "expires_at": 0.0,
                },
            }
        return {**build, "sha256": body["sha256"], "size": len(APK), "file_name": "app.apk"}


def run_cli(args: list[str], api: FakeBuildsApi, monkeypatch: pytest.MonkeyPatch) -> Any:
    from qgjob import client as client_module

    monkeypatch.setattr(client_module.ApiClient, "request", lambda self, *a, **k: api(*a, **k))
    state = CliState(endpoint_url="http://127.0.0.1:1/v1", token="t")
    return CliRunner().invoke(cli, args, obj=state)


@responses.activate
def test_app_upload_puts_the_bytes_with_the_signed_headers_then_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    responses.put("https://bucket.s3.amazonaws.com/builds/acme/v1/x", status=200)
    build = tmp_path / "app.apk"
    build.write_bytes(APK)
    api = FakeBuildsApi()
    args = ["--json", "app", "upload", "--org-id", "acme", "--app-version-id", "v1", str(build)]
    result = run_cli(args, api, monkeypatch)
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(APK).hexdigest()
    assert api.requests[0][2]["sha256"] == sha
    assert api.requests[0][2]["size"] == len(APK)
    assert api.requests[1] == ("POST", "/builds/v1/complete", {"sha256": sha})
    (put,) = responses.calls
    assert put.request.headers["x-amz-checksum-sha256"] == "c"
    assert put.request.headers["Content-Length"] == str(len(APK))
    assert json.loads(result.stdout)["sha256"] == sha


def test_app_upload_of_the_same_bytes_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = tmp_path / "app.apk"
    build.write_bytes(APK)
    api = FakeBuildsApi(stored_sha=hashlib.sha256(APK).hexdigest())
    args = ["app", "upload", "--org-id", "acme", "--app-version-id", "v1", str(build)]
    result = run_cli(args, api, monkeypatch)
    assert result.exit_code == 0, result.output
    assert len(api.requests) == 1  # no PUT, no complete


@pytest.mark.parametrize("name", ["app.exe", "app.zip", "notes.txt"])
def test_app_upload_of_anything_but_a_build_exits_2_naming_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    api = FakeBuildsApi()
    args = ["app", "upload", "--org-id", "acme", "--app-version-id", "v1", str(path)]
    result = run_cli(args, api, monkeypatch)
    assert result.exit_code == 2
    assert "FILE" in result.output
    assert ".apk" in result.output
    assert api.requests == []


def test_app_upload_with_a_bad_version_exits_2_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.apk"
    path.write_bytes(b"x")
    args = ["app", "upload", "--org-id", "acme", "--app-version-id", "bad version", str(path)]
    result = run_cli(args, FakeBuildsApi(), monkeypatch)
    assert result.exit_code == 2
    assert "--app-version-id" in result.output


@responses.activate
def test_a_replaced_build_of_the_same_version_is_installed_again(tmp_path: Path) -> None:
    replacement = APK[::-1]
    responses.get(URL, body=APK)
    first = with_build(make_batch("b1", ["a.spec.js"]))
    second = with_build(make_batch("b2", ["b.spec.js"]), replacement)
    same = with_build(make_batch("b3", ["c.spec.js"]), replacement)
    for batch in (second, same):
        batch["install_required"] = False  # the server thinks the agent holds v1
    api = FakeAgentApi([first, second, same])
    runner = CacheRunner()
    CacheRunner.shot = tmp_path / "shot.png"
    CacheRunner.shot.write_bytes(b"png")
    agent = Agent(
        api,
        runner,
        "emulator",
        "1",
        sleep=Sleeps(),
        heartbeat=False,
        max_batches=3,
        log=lambda line: None,
        clock=lambda: 0.0,
        build_cache=BuildCache(tmp_path / "cache"),
    )
    responses.replace(responses.GET, URL, body=APK)
    responses.add(responses.GET, URL, body=replacement)
    assert agent.run() == 0
    digests = [Path(p).parent.name for p in runner.installs if p]
    assert digests == [hashlib.sha256(APK).hexdigest(), hashlib.sha256(replacement).hexdigest()]
