"""Helpers for the end-to-end tests: the local stack and agents as real subprocesses.

The stack is started the way a user starts it (``python -m infra.local_stack``), driven
with the real `qgjob` CLI and real `qgjob agent` processes, and observed through the
HTTP API, the agents' journals and (for queue drainage only) the moto endpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import requests

from bench.fleet_support import launch_stack, repo_env, wait_for
from infra.qgjob_cli import CliResult, QgjobCli

FINAL_STATUSES = frozenset({"passed", "failed", "error", "cancelled", "timed_out"})
T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.1
) -> T:
    """Polls ``probe`` until it returns something truthy; fails with ``what`` at the deadline."""
    return wait_for(
        probe, timeout_s=timeout_s, what=what, interval_s=interval_s, error=AssertionError
    )


@dataclass
class StackProcess:
    """``python -m infra.local_stack`` running in a subprocess."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    output_path: Path
    ready: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, state_dir: Path, *extra_args: str, timeout_s: float = 60.0) -> StackProcess:
        ready_file = state_dir / "ready.json"
        command = [
            sys.executable, "-m", "infra.local_stack",
            "--no-agents",
            "--state-dir", str(state_dir),
            "--ready-file", str(ready_file),
            *extra_args,
        ]  # fmt: skip
        return cls.launch(command, state_dir, ready_file, timeout_s=timeout_s)

    @classmethod
    def launch(
        cls, command: list[str], state_dir: Path, ready_file: Path, *, timeout_s: float = 60.0
    ) -> StackProcess:
        """Runs ``command`` (a stack that writes ``ready_file`` once it serves) until ready."""
        process, ready = launch_stack(
            command, state_dir, ready_file, env=repo_env(), timeout_s=timeout_s,
            error=AssertionError,
        )  # fmt: skip
        return cls(process, state_dir, state_dir / "stack.out", ready)

    def aws(self, service: str) -> Any:
        """A boto3 client of the stack's embedded AWS (moto), to look behind the API."""
        return boto3.client(
            service,
            endpoint_url=self.ready["moto_endpoint"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def output(self) -> str:
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as a user's Ctrl-C or a service manager would; kill if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"the stack ignored SIGTERM:\n{self.output()}") from None
        return self.process.returncode

    @property
    def endpoint(self) -> str:
        return str(self.ready["endpoint"])

    def token(self, org: str) -> str:
        return str(self.ready["org_tokens"][org])

    @property
    def agent_token(self) -> str:
        return str(self.ready["agent_token"])

    @property
    def cli(self) -> QgjobCli:
        return QgjobCli(self.endpoint)

    # ---- the HTTP API, for observing (the tests act through the CLI and agents)

    def api(self, method: str, path: str, token: str | None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(
            method, f"{self.endpoint}{path}", headers=headers, timeout=30, **kwargs
        )

    def run_view(self, run_id: str, org: str) -> dict[str, Any]:
        """GET /runs/{id} (the counters), with its jobs read from GET /runs/{id}/jobs."""
        response = self.api("GET", f"/runs/{run_id}", self.token(org))
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        view["jobs"] = []
        params: dict[str, str] = {}
        while True:
            page = self.api("GET", f"/runs/{run_id}/jobs", self.token(org), params=params)
            assert page.status_code == 200, page.text
            view["jobs"].extend(page.json()["jobs"])
            if not page.json()["next_cursor"]:
                return view
            params = {"cursor": page.json()["next_cursor"]}

    def metrics(self, org: str) -> dict[str, Any]:
        response = self.api("GET", "/metrics", self.token(org))
        assert response.status_code == 200, response.text
        metrics: dict[str, Any] = response.json()
        return metrics

    def queue_drained(self) -> bool:
        """True once the dispatcher has taken every message off jobs.fifo (all admitted)."""
        sqs = self.aws("sqs")
        url = next(u for u in sqs.list_queues()["QueueUrls"] if u.endswith("-jobs.fifo"))
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return all(int(attributes[name]) == 0 for name in names)

    def submit(
        self, org: str, app_version_id: str, target: str, tests: Sequence[str], *extra: str
    ) -> str:
        """`qgjob submit ... --json`; returns the run id."""
        result = self.cli.submit(
            token=self.token(org), org_id=org, app_version_id=app_version_id, target=target,
            test_paths=tests, extra=extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.describe()
        return str(result.json()["run_id"])

    def wait_run(self, run_id: str, org: str, timeout_s: float = 60.0) -> CliResult:
        """`qgjob status --run-id R --wait --json` (exit 0 passed, 1 failed, 3 timeout)."""
        return self.cli.run(
            "status", "--run-id", run_id, "--wait", "--json",
            "--poll-interval", "0.2", "--wait-timeout", str(timeout_s),
            token=self.token(org), timeout_s=timeout_s + 30,
        )  # fmt: skip


# ---------------------------------------------------------------------- agents


@dataclass
class Agent:
    """A `qgjob agent` subprocess (simulated runner unless started with a command)."""

    target: str
    device_id: str
    process: subprocess.Popen[bytes]
    journal: Path
    log_path: Path

    @property
    def agent_id(self) -> str:
        return f"{self.target}-{self.device_id}"

    def events(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        lines = self.journal.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> None:
        """Waits until the agent logged ``text`` (e.g. that it saw a signal)."""
        wait_until(
            lambda: text in self.log() or self.process.poll() is not None,
            timeout_s=timeout_s,
            what=f"agent {self.agent_id} to log {text!r}",
        )
        assert text in self.log(), f"agent {self.agent_id} exited first:\n{self.log()}"

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class AgentFleet:
    """Starts agents for one test and stops whatever is left of them afterwards."""

    def __init__(self, stack: StackProcess, directory: Path) -> None:
        self._stack = stack
        self._directory = directory
        self.agents: list[Agent] = []

    def start(
        self, target: str, device_id: str, *, sim_scale: float, poll_seconds: float = 0.1
    ) -> Agent:
        journal = self._directory / f"{target}-{device_id}.jsonl"
        command = self._stack.cli.agent_command(
            target=target, device_id=device_id, journal=journal, sim_scale=sim_scale,
            poll_seconds=poll_seconds,
        )  # fmt: skip
        return self._spawn(target, device_id, command, journal)

    def start_command(self, target: str, device_id: str, *, test_command: str) -> Agent:
        """An agent with the command runner: each test runs ``test_command`` (a template)."""
        journal = self._directory / f"{target}-{device_id}.jsonl"
        command = self._stack.cli.command(
            "agent",
            "--target", target,
            "--device-id", device_id,
            "--runner", "command",
            "--command", test_command,
            "--journal", str(journal),
            "--poll-seconds", "0.1",
        )  # fmt: skip
        return self._spawn(target, device_id, command, journal)

    def _spawn(self, target: str, device_id: str, command: list[str], journal: Path) -> Agent:
        log_path = self._directory / f"{target}-{device_id}.log"
        env = self._stack.cli.env(self._stack.agent_token)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        agent = Agent(target, device_id, process, journal, log_path)
        self.agents.append(agent)
        return agent

    def by_id(self) -> dict[str, Agent]:
        return {agent.agent_id: agent for agent in self.agents}

    def all_events(self) -> list[dict[str, Any]]:
        return [event for agent in self.agents for event in agent.events()]

    def logs(self) -> str:
        return "\n".join(f"--- {a.agent_id}\n{a.log()}" for a in self.agents)

    def stop_all(self) -> None:
        for agent in self.agents:
            agent.stop()


def accepted_results(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """job id -> its accepted "result" journal events (exactly-once means one each).

    An agent journals a result only after qgjob accepted it, so an agent killed in that
    window has one accepted result fewer in its journal than qgjob has: journals prove
    "never twice"; the API (the run view) is the truth for "nothing lost".
    """
    return _events_by_job(events, "result")


def accepted_starts(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """job id -> its accepted "start" journal events."""
    return _events_by_job(events, "start")


def _events_by_job(events: Iterable[dict[str, Any]], kind: str) -> dict[str, list[dict[str, Any]]]:
    by_job: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event["event"] == kind and event["accepted"]:
            by_job.setdefault(str(event["job_id"]), []).append(event)
    return by_job


def assert_never_completed_twice(
    jobs: Sequence[dict[str, Any]],
    events: Iterable[dict[str, Any]],
    *,
    complete_journals: Iterable[str],
) -> None:
    """Journals vs. the final run view: at most one accepted result per job, by the agent
    qgjob credits; exactly one for jobs finished by an agent in ``complete_journals``
    (agents that exited cleanly, so their journals miss nothing)."""
    results = accepted_results(events)
    known = {str(job["job_id"]) for job in jobs}
    assert set(results) <= known, f"results for unknown jobs: {set(results) - known}"
    complete = set(complete_journals)
    for job in jobs:
        reported = results.get(str(job["job_id"]), [])
        assert len(reported) <= 1, f"{job['job_id']} was completed {len(reported)} times"
        for event in reported:
            assert event["agent_id"] == job["agent_id"], (job, event)
        if job["agent_id"] in complete:
            assert len(reported) == 1, f"{job['job_id']}: no accepted result in the journal"


def jobs_of(views: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for view in views:
        yield from view["jobs"]
