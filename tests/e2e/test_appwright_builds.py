"""Issue 10 acceptance: an app build uploaded with `qgjob app upload`, a suite submitted for
its version, and `qgjob agent --runner appwright` processes (a fake `npx` on PATH that
writes a real-shaped Playwright JSON report) against the local stack.

The agent downloads the build once into its cache (keyed by sha256), installs it once per
batch from there (a restarted agent with the same cache does not download it again),
hands its path to AppWright as APP_BUILD_PATH, and reports each test's parsed result and
attachments, which `qgjob result` shows with links that serve the uploaded bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e_support import Agent, AgentFleet, StackProcess

from tests.unit.cli.fake_appwright import install_fake_npx, path_with

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ORG = "acme"
VERSION = "shop-2.5.0"
BUILD = b"PK\x03\x04" + bytes(range(256)) * 512  # a 128 KiB "apk"
SHA = hashlib.sha256(BUILD).hexdigest()


class Lab:
    """One device host: an AppWright project, the fake npx and the build cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = root / "project"
        self.project.mkdir(parents=True)
        self.bin = root / "bin"
        install_fake_npx(self.bin)
        self.cache = root / "cache"
        self.npx_log = root / "npx.jsonl"

    def npx_calls(self) -> list[dict[str, Any]]:
        if not self.npx_log.exists():
            return []
        return [json.loads(line) for line in self.npx_log.read_text().splitlines()]

    def start_agent(self, stack: StackProcess, fleet: AgentFleet, device_id: str) -> Agent:
        journal = self.root / f"{device_id}.jsonl"
        log_path = self.root / f"{device_id}.log"
        command = stack.cli.command(
            "agent",
            "--target", "emulator",
            "--device-id", device_id,
            "--runner", "appwright",
            "--project-dir", str(self.project),
            "--build-cache", str(self.cache),
            "--journal", str(journal),
            "--poll-seconds", "0.1",
        )  # fmt: skip
        env = stack.cli.env(stack.agent_token)
        env.update({"PATH": path_with(self.bin), "FAKE_NPX_LOG": str(self.npx_log)})
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        agent = Agent("emulator", device_id, process, journal, log_path)
        fleet.agents.append(agent)  # stopped at teardown whatever happens
        return agent


def cli_json(stack: StackProcess, *args: str, expect: int = 0) -> Any:
    result = stack.cli.run(*args, "--json", token=stack.token(ORG))
    assert result.exit_code == expect, result.describe()
    return result.json()


def run_suite(stack: StackProcess, tests: list[str]) -> tuple[str, dict[str, Any]]:
    run_id = stack.submit(ORG, VERSION, "emulator", tests)
    waited = stack.wait_run(run_id, ORG, timeout_s=90)
    assert waited.exit_code in (0, 1), waited.describe()
    return run_id, stack.run_view(run_id, ORG)


def test_upload_submit_and_run_appwright_agents_from_the_build_cache(
    stack: StackProcess, fleet: AgentFleet, tmp_path: Path
) -> None:
    build_file = tmp_path / "app-release.apk"
    build_file.write_bytes(BUILD)

    # A suite submitted before its build exists is accepted, and says so (cancelled: no
    # agent runs yet, so it is still queued).
    early = cli_json(
        stack, "submit", "--org-id", ORG, "--app-version-id", "no-build-yet",
        "--test", "tests/login.spec.js",
    )  # fmt: skip
    assert early["build_sha256"] is None
    assert "no build was uploaded for app version no-build-yet" in early["build_note"]
    cli_json(stack, "cancel", "--job-id", early["job_ids"][0])

    # 1. Upload: stored, then idempotent; other bytes are a 409 (exit 2) without --replace.
    uploaded = cli_json(
        stack, "app", "upload", "--org-id", ORG, "--app-version-id", VERSION, str(build_file)
    )
    assert (uploaded["state"], uploaded["sha256"], uploaded["size"]) == ("ready", SHA, len(BUILD))
    again = cli_json(
        stack, "app", "upload", "--org-id", ORG, "--app-version-id", VERSION, str(build_file)
    )
    assert again["sha256"] == SHA
    other = tmp_path / "other.apk"
    other.write_bytes(BUILD[::-1])
    refused = stack.cli.run(
        "app", "upload", "--org-id", ORG, "--app-version-id", VERSION, str(other),
        token=stack.token(ORG),
    )  # fmt: skip
    assert refused.exit_code == 2, refused.describe()
    assert "--replace" in refused.stderr
    assert cli_json(stack, "app", "show", "--app-version-id", VERSION)["sha256"] == SHA
    listed = cli_json(stack, "app", "list")["builds"]
    assert [b["app_version_id"] for b in listed] == [VERSION]
    # Another org's token sees nothing of it.
    hidden = stack.cli.run("app", "show", "--app-version-id", VERSION, token=stack.token("globex"))
    assert hidden.exit_code == 2, hidden.describe()
    assert "not found" in hidden.stderr or "no build" in hidden.stderr

    # 2. A suite for the version, run by an appwright agent.
    lab = Lab(tmp_path / "lab")
    tests = ["tests/login.spec.js", "tests/checkout-fail.spec.js", "tests/search-flaky.spec.js"]
    first_agent = lab.start_agent(stack, fleet, "aw-1")
    run_id, run = run_suite(stack, tests)
    assert run["build_sha256"] == SHA
    by_test = {job["test_path"]: job for job in run["jobs"]}
    assert {path: job["status"] for path, job in by_test.items()} == {
        "tests/login.spec.js": "passed",
        "tests/checkout-fail.spec.js": "failed",
        "tests/search-flaky.spec.js": "passed",
    }
    assert first_agent.stop() == 0

    # The build was downloaded once into the cache, verified, and used by every test.
    cached = lab.cache / SHA / "app-release.apk"
    assert cached.read_bytes() == BUILD
    assert [p.name for p in lab.cache.iterdir()] == [SHA]
    calls = lab.npx_calls()
    assert len(calls) == len(tests)
    assert {(c["app_build_path"], c["build_sha256"]) for c in calls} == {(str(cached), SHA)}
    assert {c["argv"][2] for c in calls} == set(tests)
    assert first_agent.log().count(" downloaded: ") == 1
    # Installed once: one agent, one app version. A later batch of the same group on this
    # agent (the flaky test's re-run, when it is planned after the first batch was cut)
    # holds the app already and installs nothing.
    events = first_agent.events()
    batches = {e["batch_id"] for e in events if e["event"] == "result" and e["accepted"]}
    installs = Counter(e["batch_id"] for e in events if e["event"] == "install" and e["accepted"])
    assert set(installs) <= batches
    assert sum(installs.values()) == 1

    # 3. `qgjob result` shows each test's parsed result and its attachments.
    failed_id = by_test["tests/checkout-fail.spec.js"]["job_id"]
    failed = cli_json(stack, "result", "--job-id", failed_id, expect=1)
    assert failed["status"] == "failed"
    assert failed["message"].startswith(
        "[emulator] tests/checkout-fail.spec.js > places an order: "
        "Error: expect(locator).toBeVisible() failed"
    )
    assert "retries 1" in failed["output"]
    names = [a["name"].rsplit(" > ", 1)[1] for a in failed["artifacts"]]
    assert names == ["screenshot", "video", "screenshot (retry 1)", "trace (retry 1)"]
    assert [a["content_type"] for a in failed["artifacts"]] == [
        "image/png", "video/webm", "image/png", "application/zip",
    ]  # fmt: skip
    first_shot = requests.get(failed["artifacts"][0]["url"], timeout=30)
    assert first_shot.status_code == 200
    assert first_shot.content == b"\x89PNG fake screenshot 0"
    assert failed["artifacts"][0]["size"] == len(first_shot.content)
    text = stack.cli.run("result", "--job-id", failed_id, token=stack.token(ORG))
    assert "artifacts (4):" in text.stdout
    flaky = cli_json(stack, "result", "--job-id", by_test["tests/search-flaky.spec.js"]["job_id"])
    assert flaky["message"] == "passed on a retry (1 retries)"
    passed = cli_json(stack, "result", "--job-id", by_test["tests/login.spec.js"]["job_id"])
    assert passed["artifacts"] == []
    assert passed["duration_s"] == pytest.approx((2345 + 321) / 1000)
    status = stack.cli.run("status", "--run-id", run_id, token=stack.token(ORG))
    assert f"build: sha256 {SHA}" in status.stdout

    # 4. A restarted agent (a new process, the same host cache) installs from the cache.
    second_agent = lab.start_agent(stack, fleet, "aw-2")
    _, second = run_suite(stack, ["tests/profile.spec.js"])
    assert [job["status"] for job in second["jobs"]] == ["passed"]
    assert second_agent.stop() == 0
    assert " from the cache: " in second_agent.log()
    assert " downloaded: " not in second_agent.log()
    assert lab.npx_calls()[-1]["build_sha256"] == SHA
    assert os.listdir(lab.cache) == [SHA]
