"""The browserstack runner against a mocked App Automate REST API (``responses``) and a
fake ``npx`` on PATH that stands for AppWright: no network, no real sleeps."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import requests
import responses

from qgjob.runners import InstallError, get_runner
from qgjob.runners.browserstack import (
    MAX_CUSTOM_ID,
    BrowserStackRunner,
    RetryPolicy,
    custom_id_for,
    file_sha256,
)
from tests.unit.cli.test_cli_agent import FakeAgentApi, Sleeps, make_agent, make_batch

API = "https://bs.test"
USERNAME = "bsuser_x9"
ACCESS_KEY = "bskey-Zq81-secret"
APP_URL = "bs://c0ffee0123456789"
SESSION = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"

# Stands for `npx appwright test <path> --project <target>`: records its argv and the app
# URL it was given, writes the session id where the AppWright fixture would, prints the
# access key (a careless tool), and fails for a path containing "fail".
FAKE_NPX = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_NPX_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "app": os.environ.get("BROWSERSTACK_APP_URL"),
        "project_app": os.environ.get("BROWSERSTACK_APP_URL_BROWSERSTACK")}}) + "\\n")
with open(os.environ["QGJOB_SESSION_FILE"], "a") as sessions:
    sessions.write(os.environ.get("FAKE_SESSION", "{SESSION}") + "\\n")
print("using key " + os.environ.get("BROWSERSTACK_ACCESS_KEY", ""))
sys.exit(1 if "fail" in args[2] else 0)
"""


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, str]:
    """An agent host: a fake npx first on PATH, a build on disk, the credentials."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npx = bin_dir / "npx"
    npx.write_text(FAKE_NPX)
    npx.chmod(npx.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "v42.apk").write_bytes(b"PK\x03\x04 an android build")
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_NPX_LOG": str(tmp_path / "npx.log"),
        "BROWSERSTACK_USERNAME": USERNAME,
        "BROWSERSTACK_ACCESS_KEY": ACCESS_KEY,
        "QGJOB_BROWSERSTACK_API_URL": API,
        "QGJOB_APP_PATH": str(tmp_path / "{app_version_id}.apk"),
    }


def _runner(env: dict[str, str], sleeps: list[float] | None = None) -> BrowserStackRunner:
    return BrowserStackRunner(
        env=env,
        http=requests.Session(),
        sleep=(sleeps if sleeps is not None else []).append,
        retry=RetryPolicy(attempts=4, base_delay_s=1.0, max_delay_s=10.0),
    )


def _custom_id(env: dict[str, str]) -> str:
    return custom_id_for(
        "acme", "v42", file_sha256(Path(env["QGJOB_APP_PATH"].format(app_version_id="v42")))
    )


def _npx_calls(env: dict[str, str]) -> list[dict[str, object]]:
    path = Path(env["FAKE_NPX_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _never() -> bool:
    return False


# ------------------------------------------------------------------ install


@responses.activate
def test_install_uploads_the_build_once_with_its_custom_id_and_later_batches_reuse_it(
    lab: dict[str, str],
) -> None:
    custom_id = _custom_id(lab)
    recent = responses.get(
        f"{API}/app-automate/recent_apps/{custom_id}", json={"message": "No results found"}
    )
    upload = responses.post(f"{API}/app-automate/upload", json={"app_url": APP_URL})

    first = _runner(lab)
    first.install("acme", "v42", "browserstack")

    assert first.app_url == APP_URL
    assert first.uploads == 1
    sent = upload.calls[0].request
    assert sent.headers["Authorization"].startswith("Basic ")
    assert b'name="custom_id"' in sent.body
    assert custom_id.encode() in sent.body
    assert b"an android build" in sent.body
    # The next batch (another runner, another process) finds BrowserStack still has it.
    responses.replace(
        responses.GET,
        f"{API}/app-automate/recent_apps/{custom_id}",
        json=[{"app_url": APP_URL, "custom_id": custom_id, "app_name": "v42.apk"}],
    )
    second = _runner(lab)
    second.install("acme", "v42", "browserstack")
    assert second.app_url == APP_URL
    assert second.uploads == 0
    assert upload.call_count == 1
    assert recent.call_count == 1  # replaced: the second lookup is the new answer's


def test_the_custom_id_is_per_org_version_and_build_and_fits_browserstacks_limit() -> None:
    a = custom_id_for("acme", "v42", "ab" * 32)
    assert a == f"qgjob-acme-v42-{'ab' * 6}"
    assert custom_id_for("acme", "v42", "cd" * 32) != a  # a replaced build is uploaded anew
    assert custom_id_for("globex", "v42", "ab" * 32) != a
    long = custom_id_for("o" * 64, "v" * 64, "ab" * 32)
    assert len(long) <= MAX_CUSTOM_ID
    assert long != custom_id_for("o" * 64, "v" * 63 + "w", "ab" * 32)


@responses.activate
def test_a_429_waits_for_retry_after_and_a_503_backs_off_exponentially(
    lab: dict[str, str],
) -> None:
    custom_id = _custom_id(lab)
    recent = f"{API}/app-automate/recent_apps/{custom_id}"
    responses.get(recent, status=429, headers={"Retry-After": "7"})
    responses.get(recent, status=503)
    responses.get(recent, status=503)
    responses.get(recent, json=[])
    responses.post(f"{API}/app-automate/upload", status=502)
    responses.post(f"{API}/app-automate/upload", json={"app_url": APP_URL})
    sleeps: list[float] = []

    runner = _runner(lab, sleeps)
    runner.install("acme", "v42", "browserstack")

    assert runner.app_url == APP_URL
    assert sleeps == [7.0, 2.0, 4.0, 1.0]  # Retry-After, then 1 s doubled; a new call restarts


@responses.activate
def test_retries_are_bounded_and_then_the_install_fails(lab: dict[str, str]) -> None:
    responses.get(f"{API}/app-automate/recent_apps/{_custom_id(lab)}", status=503)
    sleeps: list[float] = []

    with pytest.raises(InstallError, match="HTTP 503, 4 attempts; giving up") as raised:
        _runner(lab, sleeps).install("acme", "v42", "browserstack")
    # Another attempt, later or on another agent, may find BrowserStack well again.
    assert raised.value.retryable is True

    assert len(responses.calls) == 4
    assert sleeps == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_refused_credentials_are_not_retried_and_say_what_to_fix(
    lab: dict[str, str], status: int
) -> None:
    responses.get(
        f"{API}/app-automate/recent_apps/{_custom_id(lab)}",
        status=status,
        json={"message": f"Unauthorized user {USERNAME}"},
    )
    sleeps: list[float] = []

    with pytest.raises(InstallError) as raised:
        _runner(lab, sleeps).install("acme", "v42", "browserstack")

    message = str(raised.value)
    assert f"refused the credentials ({status})" in message
    assert "not retried" in message
    assert raised.value.retryable is False  # the server must not requeue the batch's jobs
    assert "BROWSERSTACK_USERNAME and BROWSERSTACK_ACCESS_KEY" in message
    assert ACCESS_KEY not in message
    assert USERNAME not in message
    assert len(responses.calls) == 1
    assert sleeps == []


def test_missing_credentials_fail_the_install_before_any_call(lab: dict[str, str]) -> None:
    env = {k: v for k, v in lab.items() if k != "BROWSERSTACK_ACCESS_KEY"}
    with responses.RequestsMock() as mock, pytest.raises(InstallError, match="must be set"):
        _runner(env).install("acme", "v42", "browserstack")
    assert len(mock.calls) == 0


def test_a_missing_build_fails_the_install(lab: dict[str, str]) -> None:
    with pytest.raises(InstallError, match="not found at"):
        _runner(lab).install("acme", "v43", "browserstack")


# ------------------------------------------------------------------ run


def _installed(lab: dict[str, str]) -> BrowserStackRunner:
    with responses.RequestsMock() as mock:
        mock.get(
            f"{API}/app-automate/recent_apps/{_custom_id(lab)}",
            json=[{"app_url": APP_URL, "custom_id": _custom_id(lab)}],
        )
        runner = _runner(lab)
        runner.install("acme", "v42", "browserstack")
    return runner


def test_a_test_runs_through_appwright_with_the_app_url_and_reports_its_session(
    lab: dict[str, str],
) -> None:
    runner = _installed(lab)

    passed = runner.run(
        "tests/login.spec.ts", "browserstack", 60, _never, org_id="acme", app_version_id="v42"
    )
    failed = runner.run(
        "tests/fail.spec.ts", "browserstack", 60, _never, org_id="acme", app_version_id="v42"
    )

    assert (passed.status, passed.session_id) == ("passed", SESSION)
    assert (failed.status, failed.session_id) == ("failed", SESSION)
    calls = _npx_calls(lab)
    assert calls[0] == {
        "argv": ["appwright", "test", "tests/login.spec.ts", "--project", "browserstack"],
        "app": APP_URL,
        "project_app": APP_URL,
    }
    # The credentials the tool printed never leave the runner.
    assert ACCESS_KEY not in passed.output
    assert "using key ***" in passed.output


def test_an_invalid_session_id_is_not_reported(lab: dict[str, str]) -> None:
    runner = _installed(lab)
    lab["FAKE_SESSION"] = "../../etc"
    runner._test_env = {**(runner._test_env or {}), "FAKE_SESSION": "../../etc"}

    outcome = runner.run(
        "tests/a.spec.ts", "browserstack", 60, _never, org_id="acme", app_version_id="v42"
    )

    assert outcome.status == "passed"
    assert outcome.session_id is None


@pytest.mark.parametrize("test_path", ["-c", "--config=/tmp/evil.config.ts", "-x/a.spec.ts"])
def test_an_option_like_path_reaches_appwright_as_a_relative_path(
    lab: dict[str, str], test_path: str
) -> None:
    runner = _installed(lab)

    runner.run(test_path, "browserstack", 60, _never, org_id="acme", app_version_id="v42")

    assert _npx_calls(lab)[0]["argv"] == [
        "appwright",
        "test",
        f"./{test_path}",
        "--project",
        "browserstack",
    ]


@pytest.mark.parametrize("test_path", ["/etc/passwd", "../secrets.spec.ts", "C:a.spec.ts"])
def test_a_path_out_of_the_tree_is_refused_and_appwright_never_starts(
    lab: dict[str, str], test_path: str
) -> None:
    runner = _installed(lab)

    outcome = runner.run(test_path, "browserstack", 60, _never, org_id="acme", app_version_id="v42")

    assert outcome.status == "failed"
    assert outcome.message is not None
    assert outcome.message.startswith("refused to run")
    assert _npx_calls(lab) == []


def test_a_run_without_an_install_is_an_error(lab: dict[str, str]) -> None:
    outcome = _runner(lab).run(
        "a.spec.ts", "browserstack", 60, _never, org_id="acme", app_version_id="v42"
    )
    assert outcome.status == "error"


def test_get_runner_builds_it() -> None:
    assert isinstance(get_runner("browserstack", env={}), BrowserStackRunner)


# ------------------------------------------------------------------ with the agent


def _bs_batch(batch_id: str, tests: list[str]) -> dict[str, object]:
    batch = make_batch(batch_id, tests, org="acme", app="v42")
    batch["target"] = "browserstack"
    return batch


def test_the_agent_reports_each_tests_session_id_with_its_result(lab: dict[str, str]) -> None:
    api = FakeAgentApi([_bs_batch("b1", ["tests/a.spec.ts", "tests/fail.spec.ts"])])
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/app-automate/recent_apps/{_custom_id(lab)}", json=[])
        mock.post(f"{API}/app-automate/upload", json={"app_url": APP_URL})
        logs: list[str] = []
        make_agent(api, _runner(lab), max_batches=1, logs=logs).run()  # type: ignore[arg-type]

    sent = [r for call in api.progress_calls for r in call.results]
    assert [(r.status, r.session_id) for r in sent] == [("passed", SESSION), ("failed", SESSION)]
    assert all(ACCESS_KEY not in (r.output or "") for r in sent)
    assert not any(ACCESS_KEY in line or USERNAME in line for line in logs)


def test_refused_credentials_end_every_job_of_the_batch_as_error(lab: dict[str, str]) -> None:
    api = FakeAgentApi([_bs_batch("b1", ["tests/a.spec.ts", "tests/b.spec.ts"])])
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/app-automate/recent_apps/{_custom_id(lab)}", status=401)
        make_agent(api, _runner(lab), max_batches=1, sleeps=Sleeps()).run()  # type: ignore[arg-type]
        calls = len(mock.calls)

    sent = [r for call in api.progress_calls for r in call.results]
    assert [r.status for r in sent] == ["error", "error"]
    assert all("refused the credentials (401)" in (r.message or "") for r in sent)
    # Reported as final: the server ends the jobs instead of requeueing them.
    assert [r.retryable for r in sent] == [False, False]
    assert _npx_calls(lab) == []
    assert calls == 1  # one refused call: no retry, no upload


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_credentials_refused_at_the_upload_are_not_retried_either(
    lab: dict[str, str], status: int
) -> None:
    responses.get(f"{API}/app-automate/recent_apps/{_custom_id(lab)}", json=[])
    responses.post(f"{API}/app-automate/upload", status=status)
    sleeps: list[float] = []

    with pytest.raises(InstallError, match=f"refused the credentials \\({status}\\) for upload"):
        _runner(lab, sleeps).install("acme", "v42", "browserstack")

    assert len(responses.calls) == 2
    assert sleeps == []


def test_a_batch_whose_install_keeps_failing_is_reported_retryable(lab: dict[str, str]) -> None:
    """503 until the retries run out: an outage, not the agent's credentials; the server
    retries the jobs (on this or another agent) while they have attempts left."""
    api = FakeAgentApi([_bs_batch("b1", ["tests/a.spec.ts"])])
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/app-automate/recent_apps/{_custom_id(lab)}", status=503)
        make_agent(api, _runner(lab), max_batches=1, sleeps=Sleeps()).run()  # type: ignore[arg-type]

    sent = [r for call in api.progress_calls for r in call.results]
    assert [(r.status, r.retryable) for r in sent] == [("error", True)]
    assert "giving up" in (sent[0].message or "")


@responses.activate
def test_the_build_the_agent_hands_over_wins_over_the_app_path_template(
    lab: dict[str, str], tmp_path: Path
) -> None:
    cached = tmp_path / "cache" / "ab12{x}.apk"  # used as it is: never formatted
    cached.parent.mkdir()
    cached.write_bytes(b"the cached build")
    custom_id = custom_id_for("acme", "v42", file_sha256(cached))
    responses.get(f"{API}/app-automate/recent_apps/{custom_id}", json=[])
    upload = responses.post(f"{API}/app-automate/upload", json={"app_url": APP_URL})

    _runner(lab).install("acme", "v42", "browserstack", str(cached))

    assert b"the cached build" in upload.calls[0].request.body
