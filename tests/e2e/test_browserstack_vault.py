"""BrowserStack end to end: a real `qgjob agent --runner browserstack` against a fake App
Automate server on 127.0.0.1, through the local stack, to the results vault's audit.

The fake server stands for BrowserStack only (upload, recent apps, session records); the
stack, its api and vault functions, the CLI, the agent and the admin command are real,
and ``npx`` is a fake that stands for AppWright (it records the app URL it was given and
reports its session the way the README's AppWright fixture does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e_support import StackProcess, wait_until

from bench.fleet_support import repo_env
from infra.template import LOCAL_STACK_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ORG = "acme"
APP_VERSION = "bs-7.1.0"
TESTS = ("tests/login.spec.ts", "tests/cart.spec.ts")
# Made-up, distinctive credentials: the test greps for them everywhere they must not be.
USERNAME = "e2e_bsuser_Qx7"
ACCESS_KEY = "E2Ebskey-4f3e2d1c0b9a8f7e6d5c"
# A key App Automate refuses (401), and the app version the refused agent is given.
WRONG_KEY = "E2Ewrongkey-0a1b2c3d4e5f6a7b8c9d"
REFUSED_VERSION = "bs-7.2.0"
STACK_ARGS = ("--lease-seconds", "5", "--plan-interval", "0.5", "--reap-interval", "0.5")


@dataclass
class FakeAppAutomate:
    """App Automate's REST API v1, the calls qgjob makes, with HTTP basic auth checked."""

    uploads: list[str] = field(default_factory=list)  # custom ids uploaded
    served: dict[str, bytes] = field(default_factory=dict)  # session id -> record served
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # method, path, auth ok
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def session_record(self, session_id: str) -> bytes:
        record = {
            "automation_session": {
                "hashed_id": session_id,
                "status": "done",
                "device": "Google Pixel 8",
                "os_version": "14.0",
            }
        }
        return json.dumps(record, indent=2).encode() + b"\n"


def _handler(fake: FakeAppAutomate) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"{USERNAME}:{ACCESS_KEY}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            ok = self.headers.get("Authorization") == expected
            with fake.lock:
                fake.requests.append((self.command, self.path, ok))
            if not ok:
                self._answer(401, {"message": "Unauthorized"})
            return ok

        def do_GET(self) -> None:
            if not self._authorized():
                return
            prefix_apps, prefix_sessions = "/app-automate/recent_apps/", "/app-automate/sessions/"
            if self.path.startswith(prefix_apps):
                custom_id = self.path[len(prefix_apps) :]
                with fake.lock:
                    known = custom_id in fake.uploads
                if known:
                    self._answer(200, [{"app_url": f"bs://{custom_id}", "custom_id": custom_id}])
                else:
                    self._answer(200, {"message": "No results found"})
            elif self.path.startswith(prefix_sessions) and self.path.endswith(".json"):
                session_id = self.path[len(prefix_sessions) : -len(".json")]
                record = fake.session_record(session_id)
                with fake.lock:
                    fake.served[session_id] = record
                self._answer(200, record)
            else:
                self._answer(404, {"message": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if not self._authorized():
                return
            if self.path != "/app-automate/upload":
                self._answer(404, {"message": "not found"})
                return
            marker = b'name="custom_id"\r\n\r\n'
            start = body.index(marker) + len(marker)
            custom_id = body[start : body.index(b"\r\n", start)].decode()
            with fake.lock:
                fake.uploads.append(custom_id)
            self._answer(200, {"app_url": f"bs://{custom_id}", "custom_id": custom_id})

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


@pytest.fixture(scope="module")
def app_automate() -> Iterator[FakeAppAutomate]:
    fake = FakeAppAutomate()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-app-automate", daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, app_automate: FakeAppAutomate
) -> Iterator[StackProcess]:
    """This module's own stack: its vault fetches session records from the fake."""
    state_dir = tmp_path_factory.mktemp("local-stack")
    process = StackProcess.start(
        state_dir, *STACK_ARGS, "--parameter", f"BrowserStackApiUrl={app_automate.url}"
    )
    yield process
    exit_code = process.stop()
    assert exit_code == 0, f"the stack exited {exit_code}:\n{process.output()}"


FAKE_NPX = f"""#!{sys.executable}
import hashlib, os, sys
args = sys.argv[1:]
assert args[:2] == ["appwright", "test"] and args[3:] == ["--project", "browserstack"], args
assert os.environ["BROWSERSTACK_APP_URL"].startswith("bs://"), os.environ
session = hashlib.sha256(args[2].encode()).hexdigest()[:40]
with open(os.environ["QGJOB_SESSION_FILE"], "a") as sessions:
    sessions.write(session + "\\n")
print("ran", args[2], "on", os.environ["BROWSERSTACK_APP_URL"])
"""


@dataclass
class BrowserStackAgent:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _start_agent(
    stack: StackProcess, app_automate: FakeAppAutomate, tmp_path: Path, device_id: str,
    access_key: str,
) -> BrowserStackAgent:  # fmt: skip
    """`qgjob agent --runner browserstack` with these credentials, as an operator starts it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npx = bin_dir / "npx"
    npx.write_text(FAKE_NPX)
    npx.chmod(npx.stat().st_mode | stat.S_IXUSR)
    for version in (APP_VERSION, REFUSED_VERSION):
        (tmp_path / f"{version}.apk").write_bytes(b"PK\x03\x04 e2e build")
    env = stack.cli.env(stack.agent_token)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        BROWSERSTACK_USERNAME=USERNAME,
        BROWSERSTACK_ACCESS_KEY=access_key,
        QGJOB_BROWSERSTACK_API_URL=app_automate.url,
    )
    command = stack.cli.command(
        "agent", "--target", "browserstack", "--device-id", device_id,
        "--runner", "browserstack",
        "--app-path", str(tmp_path / "{app_version_id}.apk"),
        "--poll-seconds", "0.1",
    )  # fmt: skip
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    return BrowserStackAgent(process, log_path)


@pytest.fixture
def agent(
    stack: StackProcess, app_automate: FakeAppAutomate, tmp_path: Path
) -> Iterator[BrowserStackAgent]:
    running = _start_agent(stack, app_automate, tmp_path, "bs-e2e", ACCESS_KEY)
    yield running
    running.stop()


@pytest.fixture
def refused_agent(
    stack: StackProcess, app_automate: FakeAppAutomate, tmp_path: Path
) -> Iterator[BrowserStackAgent]:
    """An agent whose BrowserStack access key is wrong: App Automate answers it 401."""
    running = _start_agent(stack, app_automate, tmp_path, "bs-e2e-refused", WRONG_KEY)
    yield running
    running.stop()


def _set_credentials(stack: StackProcess) -> None:
    """`python -m infra.admin set-browserstack-credentials`, as an operator runs it."""
    env = {
        **repo_env(),
        "AWS_ENDPOINT_URL": stack.ready["moto_endpoint"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "BROWSERSTACK_ACCESS_KEY": ACCESS_KEY,
    }
    done = subprocess.run(
        [sys.executable, "-m", "infra.admin", "set-browserstack-credentials",
         "--org-id", ORG, "--username", USERNAME, "--stack-name", LOCAL_STACK_NAME],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert ACCESS_KEY not in done.stdout + done.stderr


def test_a_browserstack_suite_reaches_audit_records_whose_archives_hash_to_their_sha256(
    stack: StackProcess, app_automate: FakeAppAutomate, agent: BrowserStackAgent
) -> None:
    _set_credentials(stack)
    seen = len(app_automate.requests)
    run_id = stack.submit(ORG, APP_VERSION, "browserstack", TESTS)

    waited = stack.wait_run(run_id, ORG, timeout_s=90)
    assert waited.exit_code == 0, waited.describe() + agent.log()

    jobs = stack.run_view(run_id, ORG)["jobs"]
    assert [j["status"] for j in jobs] == ["passed", "passed"]
    token = stack.token(ORG)
    answers: list[Any] = []
    for job in jobs:
        result = stack.api("GET", f"/jobs/{job['job_id']}/result", token).json()
        answers.append(result)
        session_id = result["session_id"]
        assert session_id == hashlib.sha256(job["test_path"].encode()).hexdigest()[:40]

        def audited(job_id: str = job["job_id"]) -> dict[str, Any] | None:
            body: dict[str, Any] = stack.api("GET", f"/jobs/{job_id}/audit", token).json()
            return body if body.get("records") else None

        audit = wait_until(audited, timeout_s=60, what=f"the audit record of {job['job_id']}")
        answers.append(audit)
        [record] = audit["records"]
        assert record["outcome"] == "archived", record
        assert record["attempt"] == 1
        assert record["session_id"] == session_id
        assert record["http_status"] == 200
        assert record["source"] == f"{app_automate.url}/app-automate/sessions/{session_id}.json"
        assert record["s3_key"] == f"vault/{ORG}/{job['job_id']}/1.json"
        archived = requests.get(record["link"], timeout=30)  # the presigned link, no creds
        assert archived.status_code == 200, archived.text
        assert hashlib.sha256(archived.content).hexdigest() == record["sha256"]
        assert archived.content == app_automate.served[session_id]  # byte for byte
        assert record["size"] == len(archived.content)
        # Another org cannot see the audit (nor that the job exists).
        assert (
            stack.api("GET", f"/jobs/{job['job_id']}/audit", stack.token("globex")).status_code
            == 404
        )

    # One batch, one install: the build was uploaded to App Automate once.
    assert len(app_automate.uploads) == 1
    assert app_automate.uploads[0].startswith(f"qgjob-{ORG}-{APP_VERSION}-")
    assert all(ok for _, _, ok in app_automate.requests[seen:]), app_automate.requests

    # The credentials appear nowhere: not in logs, results, audit records or API answers.
    assert agent.stop() == 0, agent.log()
    dynamodb = stack.aws("dynamodb")
    audit_table = next(t for t in dynamodb.list_tables()["TableNames"] if "AuditTable" in t)
    raw_records = dynamodb.scan(TableName=audit_table)["Items"]  # a test may scan
    assert len(raw_records) == len(TESTS)
    logs = [agent.log(), stack.output()] + [
        path.read_text(encoding="utf-8", errors="replace")
        for path in stack.state_dir.rglob("*.log")
    ]
    haystacks = {
        "agent and stack logs": "\n".join(logs),
        "results, audit and job answers": json.dumps(answers),
        "audit records": json.dumps(raw_records),
        "archives": b"".join(app_automate.served.values()).decode(),
    }
    assert "audited" in haystacks["agent and stack logs"]  # the vault's log is in there
    for where, text in haystacks.items():
        assert ACCESS_KEY not in text, f"the access key leaked into {where}"
        assert USERNAME not in text, f"the username leaked into {where}"


def test_refused_credentials_end_the_jobs_as_error_without_a_retry(
    stack: StackProcess, app_automate: FakeAppAutomate, refused_agent: BrowserStackAgent
) -> None:
    """401 at the batch's install: no retry of the call, and the jobs end as error at once
    with a clear message, although they have retries left (none is requeued)."""
    seen = len(app_automate.requests)
    uploads = len(app_automate.uploads)
    run_id = stack.submit(ORG, REFUSED_VERSION, "browserstack", TESTS, "--retries", "2")

    waited = stack.wait_run(run_id, ORG, timeout_s=90)
    assert waited.exit_code != 0, waited.describe()

    jobs = stack.run_view(run_id, ORG)["jobs"]
    # One attempt each (started, then the install's error), none re-run.
    assert [(j["status"], j["attempts"]) for j in jobs] == [("error", 1)] * len(TESTS), jobs
    token = stack.token(ORG)
    for job in jobs:
        result = stack.api("GET", f"/jobs/{job['job_id']}/result", token).json()
        assert "BrowserStack refused the credentials (401)" in result["message"], result
        assert "BROWSERSTACK_ACCESS_KEY" in result["message"]
        assert WRONG_KEY not in json.dumps(result)
        assert result["session_id"] is None  # no session: nothing for the vault
    # One refused call per batch it leased (the install's), never retried; no upload.
    refused = app_automate.requests[seen:]
    assert refused
    assert all(not ok for _, _, ok in refused), refused
    assert all(method == "GET" and "/recent_apps/" in path for method, path, _ in refused)
    assert len(refused) <= len(TESTS)
    assert len(app_automate.uploads) == uploads
    assert refused_agent.stop() == 0, refused_agent.log()
    log = refused_agent.log()
    assert "install failed (not retryable)" in log
    assert WRONG_KEY not in log
