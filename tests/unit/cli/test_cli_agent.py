"""The device agent against an in-memory fake of the agent API (no network, no real sleeps)."""

from __future__ import annotations

import json
import shlex
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from qgjob.agent import Agent, Journal
from qgjob.agent_protocol import (
    AgentView,
    BatchView,
    LeaseResponse,
    ProgressItem,
    ProgressRequest,
    ProgressResponse,
)
from qgjob.errors import EXIT_INFRA, AuthError, Conflict, NotFound, ServerError, Unreachable
from qgjob.runners import CommandRunner, InstallError, RunOutcome

Json = dict[str, Any]


def make_batch(
    batch_id: str,
    tests: list[str],
    *,
    org: str = "acme",
    app: str = "v1",
    install_required: bool = True,
    timeout_s: int = 600,
) -> Json:
    return {
        "batch_id": batch_id,
        "org_id": org,
        "app_version_id": app,
        "target": "emulator",
        "install_required": install_required,
        "lease_expires_at": 1000.0,
        "jobs": [
            {
                "job_id": f"{batch_id}-j{i}",
                "test_path": path,
                "timeout_s": timeout_s,
                "status": "assigned",
            }
            for i, path in enumerate(tests, start=1)
        ],
    }


class FakeAgentApi:
    """Keeps the server-side state an agent can observe: batches, leases, results."""

    def __init__(self, batches: list[Json] | None = None) -> None:
        self.pending = list(batches or [])
        self.current: Json | None = None
        self.registrations: list[Mapping[str, str] | None] = []
        self.installs: list[str] = []
        self.started: list[str] = []
        self.results: dict[str, Json] = {}
        self.rejected: list[str] = []
        self.completed: list[tuple[str, int]] = []
        self.deregistered = 0
        self.heartbeats = 0
        self.credentials: list[str | None] = []
        self.calls: list[str] = []  # start/result/complete/deregister, in order
        self.progress_calls: list[ProgressRequest] = []
        self.progress_errors: dict[int, Exception] = {}  # call number -> error raised
        self.lose_lease_on_start: set[str] = set()
        self.lose_lease_on_result: set[str] = set()
        self.lease_errors: list[Exception] = []
        self.start_errors: list[Exception] = []
        self.heartbeat_errors: list[Exception] = []
        self.known = False
        self.on_lease: Callable[[], None] | None = None
        self.on_heartbeat: Callable[[], None] | None = None
        self.push_url: str | None = None  # what register answers
        self.wait_s: float | None = None  # what an empty lease answers
        self.idle_poll_seconds = 300.0  # what register answers along with push_url

    # -- agent endpoints
    def register(
        self, target: str, device_id: str, installed: Mapping[str, str] | None = None
    ) -> AgentView:
        self.registrations.append(installed)
        self.known = True
        agent_id = f"{target}-{device_id}"
        return AgentView(
            agent_id=agent_id,
            target=target,
            status="idle",
            batch_id=None,
            lease_seconds=120,
            heartbeat_seconds=5,
            credential=f"qgja.{agent_id}.s{len(self.registrations)}",
            push_url=self.push_url,
            idle_poll_seconds=self.idle_poll_seconds if self.push_url else None,
        )

    def use_credential(self, credential: str | None) -> None:
        self.credentials.append(credential)

    def heartbeat(self, agent_id: str) -> Json:
        self.heartbeats += 1
        if self.on_heartbeat is not None:
            self.on_heartbeat()
        if self.heartbeat_errors:
            raise self.heartbeat_errors.pop(0)
        return {"agent_id": agent_id, "status": "busy", "batch_id": None}

    def lease(self, agent_id: str) -> LeaseResponse:
        batch = self._lease(agent_id)
        return LeaseResponse(batch=batch, wait_s=self.wait_s if batch is None else None)

    def _lease(self, agent_id: str) -> BatchView | None:
        if self.on_lease is not None:
            self.on_lease()
        if self.lease_errors:
            error = self.lease_errors.pop(0)
            if isinstance(error, NotFound):
                self.known = False
            raise error
        if not self.known:
            raise NotFound(404, f"agent {agent_id} is not registered")
        if self.current is None and self.pending:
            self.current = self.pending.pop(0)
        if self.current is None:
            return None
        batch = dict(self.current)
        batch["jobs"] = [j for j in self.current["jobs"] if j["job_id"] not in self.results]
        return BatchView.model_validate(batch)

    def _own(self, batch_id: str) -> Json:
        if self.current is None or self.current["batch_id"] != batch_id:
            raise Conflict(409, f"batch {batch_id}: lease lost")
        return self.current

    def installed(self, agent_id: str, batch_id: str) -> Json:
        self._own(batch_id)
        self.installs.append(batch_id)
        return {}

    def start_job(self, agent_id: str, job_id: str, batch_id: str) -> Json:
        self.calls.append(f"start {job_id}")
        if self.start_errors:
            raise self.start_errors.pop(0)
        self._own(batch_id)
        if job_id in self.lose_lease_on_start:
            self.current = None  # the reaper took the batch away
            raise Conflict(409, f"job {job_id} is no longer assigned to batch {batch_id}")
        self.started.append(job_id)
        return {"job_id": job_id, "status": "running"}

    def report_result(
        self,
        agent_id: str,
        job_id: str,
        batch_id: str,
        status: str,
        duration_s: float,
        message: str | None = None,
        output: str | None = None,
    ) -> Json:
        self.calls.append(f"result {job_id}")
        if job_id in self.lose_lease_on_result or job_id in self.results:
            self.rejected.append(job_id)
            raise Conflict(409, f"job {job_id}: result rejected, the lease was lost")
        self._own(batch_id)
        self.results[job_id] = {
            "status": status,
            "duration_s": duration_s,
            "message": message,
            "output": output,
        }
        return {"job_id": job_id, "status": status}

    def progress(self, agent_id: str, batch_id: str, request: ProgressRequest) -> ProgressResponse:
        """Like the server: the steps in order (each as its own route), the first one
        refused ends the call. A network error injected for the start fails the whole
        call before anything is applied."""
        self.progress_calls.append(request)
        if len(self.progress_calls) in self.progress_errors:
            raise self.progress_errors.pop(len(self.progress_calls))
        if request.start is not None and self.start_errors:
            self.calls.append(f"start {request.start}")
            raise self.start_errors.pop(0)
        answer = ProgressResponse()
        refused: str | None = None
        if request.installed:
            try:
                self.installed(agent_id, batch_id)
                answer.installed = True
            except Conflict as error:
                answer.installed, refused = False, str(error)
        for result in request.results:
            if refused is not None:
                answer.results.append(ProgressItem(job_id=result.job_id, accepted=False))
                continue
            try:
                self.report_result(
                    agent_id,
                    result.job_id,
                    batch_id,
                    result.status,
                    result.duration_s,
                    result.message,
                    result.output,
                )
                answer.results.append(ProgressItem(job_id=result.job_id, accepted=True))
            except Conflict as error:
                refused = str(error)
                answer.results.append(
                    ProgressItem(job_id=result.job_id, accepted=False, message=refused)
                )
        if request.start is not None:
            accepted = False
            if refused is None:
                try:
                    self.start_job(agent_id, request.start, batch_id)
                    accepted = True
                except Conflict as error:
                    refused = str(error)
            answer.started = ProgressItem(job_id=request.start, accepted=accepted)
        if request.complete:
            answer.completed = False
            if refused is None:
                try:
                    answer.requeued = self.complete_batch(agent_id, batch_id)["requeued"]
                    answer.completed = True
                except Conflict:
                    pass
        return answer

    def complete_batch(self, agent_id: str, batch_id: str) -> Json:
        self.calls.append(f"complete {batch_id}")
        batch = self._own(batch_id)
        requeued = [j for j in batch["jobs"] if j["job_id"] not in self.results]
        self.completed.append((batch_id, len(requeued)))
        self.current = None
        return {"requeued": len(requeued)}

    def deregister(self, agent_id: str) -> Json:
        """Like the server: a held batch is released (its unfinished jobs requeued)."""
        self.calls.append("deregister")
        self.deregistered += 1
        if self.current is None:
            return {"requeued": 0}
        requeued = [j for j in self.current["jobs"] if j["job_id"] not in self.results]
        self.completed.append((self.current["batch_id"], len(requeued)))
        self.current = None
        return {"requeued": len(requeued)}


class FakeRunner:
    """Records installs and runs; outcomes by test path (default: passed)."""

    def __init__(self, outcomes: Mapping[str, RunOutcome] | None = None) -> None:
        self.outcomes = dict(outcomes or {})
        self.installs: list[tuple[str, str, str]] = []
        self.runs: list[tuple[str, str, float, str, str]] = []
        self.install_error: str | None = None
        self.install_retryable = True  # with install_error: whether a retry may cure it
        self.on_run: Callable[[str], None] | None = None
        self.should_stop: Callable[[], bool] = lambda: False

    def install(self, org_id: str, app_version_id: str, target: str) -> None:
        if self.install_error:
            raise InstallError(self.install_error, retryable=self.install_retryable)
        self.installs.append((org_id, app_version_id, target))

    def run(
        self,
        test_path: str,
        target: str,
        timeout_s: float,
        should_stop: Callable[[], bool],
        *,
        org_id: str = "",
        app_version_id: str = "",
    ) -> RunOutcome:
        self.runs.append((test_path, target, timeout_s, org_id, app_version_id))
        self.should_stop = should_stop
        if self.on_run is not None:
            self.on_run(test_path)
        return self.outcomes.get(test_path, RunOutcome("passed", 0.25, None, f"ran {test_path}"))


class SteppingRunner(FakeRunner):
    """A runner that honours should_stop: each test is `steps` steps, with a check before
    each; `on_step(path, n)` runs before check n (1-based), e.g. to deliver a SIGTERM."""

    def __init__(self, outcomes: Mapping[str, RunOutcome] | None = None, steps: int = 3) -> None:
        super().__init__(outcomes)
        self.steps = steps
        self.on_step: Callable[[str, int], None] | None = None
        self.steps_done: dict[str, int] = {}
        self.stop_checks: list[tuple[str, bool]] = []

    def run(
        self,
        test_path: str,
        target: str,
        timeout_s: float,
        should_stop: Callable[[], bool],
        *,
        org_id: str = "",
        app_version_id: str = "",
    ) -> RunOutcome:
        self.runs.append((test_path, target, timeout_s, org_id, app_version_id))
        self.should_stop = should_stop
        for step in range(1, self.steps + 1):
            if self.on_step is not None:
                self.on_step(test_path, step)
            stop = should_stop()
            self.stop_checks.append((test_path, stop))
            if stop:
                return RunOutcome("error", 0.1 * step, "interrupted: the agent is stopping")
            self.steps_done[test_path] = step
        return self.outcomes.get(test_path, RunOutcome("passed", 0.25, None, f"ran {test_path}"))


class Sleeps:
    """Records waits; fails the test instead of looping forever."""

    def __init__(self, limit: int = 50) -> None:
        self.calls: list[float] = []
        self.limit = limit

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if len(self.calls) > self.limit:
            raise AssertionError("the agent kept waiting: likely an endless loop")


def make_agent(
    api: FakeAgentApi,
    runner: FakeRunner,
    *,
    journal: Journal | None = None,
    max_batches: int | None = None,
    sleeps: Sleeps | None = None,
    logs: list[str] | None = None,
) -> Agent:
    log_lines = logs if logs is not None else []
    return Agent(
        api,
        runner,
        "emulator",
        "1",
        sleep=sleeps or Sleeps(),
        heartbeat=False,
        journal=journal,
        max_batches=max_batches,
        log=log_lines.append,
        clock=lambda: 0.0,
    )


def journal_lines(path: Path) -> list[Json]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------- install


def test_installs_once_then_skips_when_already_installed() -> None:
    api = FakeAgentApi(
        [
            make_batch("b1", ["tests/a.spec.ts", "tests/b.spec.ts"], install_required=True),
            make_batch("b2", ["tests/c.spec.ts"], install_required=False),
        ]
    )
    runner = FakeRunner()
    logs: list[str] = []
    agent = make_agent(api, runner, max_batches=2, logs=logs)

    assert agent.run() == 0

    assert runner.installs == [("acme", "v1", "emulator")]
    assert api.installs == ["b1"]
    assert [r[0] for r in runner.runs] == ["tests/a.spec.ts", "tests/b.spec.ts", "tests/c.spec.ts"]
    assert {job: r["status"] for job, r in api.results.items()} == {
        "b1-j1": "passed",
        "b1-j2": "passed",
        "b2-j1": "passed",
    }
    assert api.completed == [("b1", 0), ("b2", 0)]
    assert api.deregistered == 1
    assert agent.installed_app == ("acme", "v1")
    assert "agent emulator-1: batch b1 acme/v1/emulator 2 jobs (install needed)" in logs
    assert "agent emulator-1: batch b2 acme/v1/emulator 1 jobs (already installed)" in logs


def test_installs_when_the_local_app_differs_even_if_the_server_says_not_needed() -> None:
    api = FakeAgentApi(
        [
            make_batch("b1", ["a.spec.ts"], app="v1", install_required=True),
            make_batch("b2", ["b.spec.ts"], app="v2", install_required=False),
        ]
    )
    runner = FakeRunner()
    assert make_agent(api, runner, max_batches=2).run() == 0
    assert runner.installs == [("acme", "v1", "emulator"), ("acme", "v2", "emulator")]
    assert api.installs == ["b1", "b2"]


def test_a_resumed_batch_after_a_restart_installs_even_if_the_server_says_not_needed() -> None:
    # A fresh process (installed_app unknown) resumes a batch the previous one had begun
    # and installed for; the device may have been wiped since, so install anyway.
    resumed = make_batch("b1", ["b.spec.ts"], install_required=False)
    api = FakeAgentApi([resumed])
    runner = FakeRunner()
    logs: list[str] = []
    agent = make_agent(api, runner, max_batches=1, logs=logs)
    assert agent.installed_app is None

    assert agent.run() == 0

    assert runner.installs == [("acme", "v1", "emulator")]
    assert api.installs == ["b1"]
    assert api.results["b1-j1"]["status"] == "passed"
    assert agent.installed_app == ("acme", "v1")
    assert "agent emulator-1: batch b1 acme/v1/emulator 1 jobs (install needed)" in logs


def test_runner_gets_the_batch_app_and_the_job_timeout() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"], app="v7", timeout_s=42)])
    runner = FakeRunner()
    make_agent(api, runner, max_batches=1).run()
    assert runner.runs == [("a.spec.ts", "emulator", 42.0, "acme", "v7")]


def test_failed_install_reports_every_job_as_error_without_running_it() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    runner = FakeRunner()
    runner.install_error = "apk not found"
    assert make_agent(api, runner, max_batches=1).run() == 0

    assert runner.runs == []
    assert api.installs == []
    assert [r["status"] for r in api.results.values()] == ["error", "error"]
    assert all("install failed: apk not found" in str(r["message"]) for r in api.results.values())
    assert api.completed == [("b1", 0)]
    # An ordinary install error may pass on another attempt: the server may retry it.
    sent = [r for call in api.progress_calls for r in call.results]
    assert [r.retryable for r in sent] == [True, True]


def test_an_install_error_no_retry_can_cure_is_reported_as_not_retryable() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    runner = FakeRunner()
    runner.install_error = "the lab refused our key"
    runner.install_retryable = False
    logs: list[str] = []
    assert make_agent(api, runner, max_batches=1, logs=logs).run() == 0

    sent = [r for call in api.progress_calls for r in call.results]
    assert [(r.status, r.retryable) for r in sent] == [("error", False), ("error", False)]
    assert any("install failed (not retryable)" in line for line in logs)


def test_a_runner_cannot_make_a_test_result_other_than_error_final() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"])])
    runner = FakeRunner()
    runner.outcomes["a.spec.ts"] = RunOutcome("failed", 1.0, "assertion", retryable=False)
    assert make_agent(api, runner, max_batches=1).run() == 0

    sent = [r for call in api.progress_calls for r in call.results]
    assert [(r.status, r.retryable) for r in sent] == [("failed", True)]


def test_re_registration_reports_the_installed_app() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"])])
    runner = FakeRunner()
    agent = make_agent(api, runner, max_batches=2)
    # after the first batch qgjob forgets the agent (e.g. marked offline)
    api.pending.append(make_batch("b2", ["b.spec.ts"], install_required=False))

    def forget_after_first_batch() -> None:
        if api.completed and len(api.registrations) == 1:
            api.known = False

    api.on_lease = forget_after_first_batch
    assert agent.run() == 0
    assert api.registrations == [None, {"org_id": "acme", "app_version_id": "v1"}]
    assert runner.installs == [("acme", "v1", "emulator")]


# ---------------------------------------------------------------------- results


def test_outcomes_are_reported_with_message_and_output() -> None:
    api = FakeAgentApi([make_batch("b1", ["ok.spec.ts", "bad.spec.ts", "slow.spec.ts"])])
    runner = FakeRunner(
        {
            "bad.spec.ts": RunOutcome("failed", 1.23456, "exit code 1", "expected 2"),
            "slow.spec.ts": RunOutcome("timed_out", 600.0, None, ""),
        }
    )
    make_agent(api, runner, max_batches=1).run()

    assert api.results["b1-j1"] == {
        "status": "passed",
        "duration_s": 0.25,
        "message": None,
        "output": "ran ok.spec.ts",
    }
    assert api.results["b1-j2"] == {
        "status": "failed",
        "duration_s": 1.235,
        "message": "exit code 1",
        "output": "expected 2",
    }
    assert api.results["b1-j3"]["status"] == "timed_out"
    assert api.results["b1-j3"]["message"] == "timed out after 600s"
    assert api.results["b1-j3"]["output"] is None


def test_a_runner_crash_is_reported_as_error_and_the_batch_goes_on() -> None:
    api = FakeAgentApi([make_batch("b1", ["boom.spec.ts", "ok.spec.ts"])])
    runner = FakeRunner()

    def explode(path: str) -> None:
        if path == "boom.spec.ts":
            raise RuntimeError("device disconnected")

    runner.on_run = explode
    make_agent(api, runner, max_batches=1).run()
    assert api.results["b1-j1"]["status"] == "error"
    assert "device disconnected" in str(api.results["b1-j1"]["message"])
    assert api.results["b1-j2"]["status"] == "passed"


def test_one_call_per_test_carries_the_install_the_results_and_the_completion(
    tmp_path: Path,
) -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts", "c.spec.ts"])])
    journal = Journal(tmp_path / "journal.jsonl")

    assert make_agent(api, FakeRunner(), journal=journal, max_batches=1).run() == 0

    sent = [
        (r.installed, [x.job_id for x in r.results], r.start, r.complete)
        for r in api.progress_calls
    ]
    assert sent == [  # 4 calls for 3 tests, where start + result + installed + complete were 8
        (True, [], "b1-j1", False),
        (False, ["b1-j1"], "b1-j2", False),
        (False, ["b1-j2"], "b1-j3", False),
        (False, ["b1-j3"], None, True),
    ]
    assert api.installs == ["b1"]
    assert api.completed == [("b1", 0)]
    assert list(api.results) == ["b1-j1", "b1-j2", "b1-j3"]
    events = [(e["event"], e["job_id"], e["accepted"]) for e in journal_lines(journal.path)]
    assert events == [
        ("install", None, True),
        ("start", "b1-j1", True),
        ("result", "b1-j1", True),
        ("start", "b1-j2", True),
        ("result", "b1-j2", True),
        ("start", "b1-j3", True),
        ("result", "b1-j3", True),
    ]


class SteppedClock:
    """A clock the runner moves: each test takes ``per_test`` seconds."""

    def __init__(self, per_test: float) -> None:
        self.now = 0.0
        self.per_test = per_test

    def __call__(self) -> float:
        return self.now

    def tick(self, test_path: str) -> None:
        self.now += self.per_test


def reporting_agent(api: FakeAgentApi, runner: FakeRunner, per_test: float) -> Agent:
    clock = SteppedClock(per_test)
    runner.on_run = clock.tick
    return Agent(
        api,
        runner,
        "emulator",
        "1",
        sleep=Sleeps(),
        heartbeat=False,
        max_batches=1,
        log=[].append,
        clock=clock,
        report_every_s=5.0,
    )


def test_short_tests_are_told_together_within_the_report_window() -> None:
    tests = [f"t{i}.spec.ts" for i in range(1, 8)]
    api = FakeAgentApi([make_batch("b1", tests)])

    assert reporting_agent(api, FakeRunner(), per_test=2.0).run() == 0

    sent = [([x.job_id for x in r.results], r.start, r.complete) for r in api.progress_calls]
    # The first start at once; then a call only once 5 s passed since the last one: its
    # results and the start of the test about to run. The completion carries the rest.
    assert sent == [
        ([], "b1-j1", False),
        (["b1-j1", "b1-j2", "b1-j3"], "b1-j4", False),
        (["b1-j4", "b1-j5", "b1-j6"], "b1-j7", False),
        (["b1-j7"], None, True),
    ]
    assert list(api.results) == [f"b1-j{i}" for i in range(1, 8)]


def test_tests_longer_than_the_report_window_are_told_one_by_one() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts", "c.spec.ts"])])

    assert reporting_agent(api, FakeRunner(), per_test=6.0).run() == 0

    assert [r.start for r in api.progress_calls] == ["b1-j1", "b1-j2", "b1-j3", None]


def test_a_heartbeat_tells_the_start_of_a_long_untold_test() -> None:
    # t1 is told (first of the batch); t2 starts within the window, untold, and then runs
    # long: the heartbeat during it tells its start, so qgjob's timeout covers it.
    api = FakeAgentApi([make_batch("b1", ["t1.spec.ts", "t2.spec.ts", "t3.spec.ts"])])
    runner = FakeRunner()
    worker = reporting_agent(api, runner, per_test=1.0)
    clock = runner.on_run
    beats: list[str] = []

    def run(test_path: str) -> None:
        assert clock is not None
        clock(test_path)
        if test_path == "t2.spec.ts":
            worker.heartbeat_once()  # 1 s into the window: too early
            beats.append(",".join(c for c in api.calls if c.startswith("start")))
            worker._clock.now += 10.0  # type: ignore[attr-defined]
            worker.heartbeat_once()
            beats.append(",".join(c for c in api.calls if c.startswith("start")))

    runner.on_run = run

    assert worker.run() == 0

    assert "start b1-j2" not in beats[0].split(",")
    assert "start b1-j2" in beats[1].split(",")
    assert list(api.results) == ["b1-j1", "b1-j2", "b1-j3"]


def test_at_most_ten_results_wait_for_one_call() -> None:
    tests = [f"t{i}.spec.ts" for i in range(1, 14)]
    api = FakeAgentApi([make_batch("b1", tests)])

    assert reporting_agent(api, FakeRunner(), per_test=0.0).run() == 0

    assert [len(r.results) for r in api.progress_calls] == [0, 10, 3]


def test_a_failed_progress_call_is_sent_again_whole() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    # The second call (a's result + b's start) fails once, before reaching the server.
    api.progress_errors = {2: Unreachable("http://qgjob.test", "connection reset")}
    sleeps = Sleeps()

    assert make_agent(api, FakeRunner(), max_batches=1, sleeps=sleeps).run() == 0

    assert [(len(r.results), r.start) for r in api.progress_calls] == [
        (0, "b1-j1"),
        (1, "b1-j2"),  # refused by the network
        (1, "b1-j2"),  # the same request again
        (1, None),
    ]
    assert api.progress_calls[1] == api.progress_calls[2]
    assert list(api.results) == ["b1-j1", "b1-j2"]
    assert sleeps.calls == [1.0]


# ---------------------------------------------------------------------- lease lost


def test_lease_lost_on_start_stops_the_batch_without_reporting(tmp_path: Path) -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts", "c.spec.ts"])])
    api.lose_lease_on_start = {"b1-j2"}
    runner = FakeRunner()
    journal = Journal(tmp_path / "journal.jsonl", clock=lambda: 123.0)
    logs: list[str] = []

    assert make_agent(api, runner, journal=journal, max_batches=1, logs=logs).run() == 0

    assert [r[0] for r in runner.runs] == ["a.spec.ts"]
    assert api.started == ["b1-j1"]
    assert list(api.results) == ["b1-j1"]
    assert api.completed == []  # the batch is not ours anymore: the server refused complete
    events = [(e["event"], e["job_id"], e["accepted"]) for e in journal_lines(journal.path)]
    assert events == [
        ("install", None, True),
        ("start", "b1-j1", True),
        ("result", "b1-j1", True),
        ("start", "b1-j2", False),
        ("lease_lost", "b1-j2", False),
    ]
    assert any("lease lost" in line for line in logs)


def test_lease_lost_on_result_logs_rejected_and_stops_the_batch(tmp_path: Path) -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    api.lose_lease_on_result = {"b1-j1"}
    runner = FakeRunner()
    journal = Journal(tmp_path / "journal.jsonl")
    logs: list[str] = []

    make_agent(api, runner, journal=journal, max_batches=1, logs=logs).run()

    assert [r[0] for r in runner.runs] == ["a.spec.ts"]
    assert api.started == ["b1-j1"]
    assert api.results == {}
    assert api.rejected == ["b1-j1"]
    assert "agent emulator-1: job b1-j1 passed: rejected: lease lost" in logs
    results = [e for e in journal_lines(journal.path) if e["event"] == "result"]
    assert results == [
        {
            "event": "result",
            "agent_id": "emulator-1",
            "batch_id": "b1",
            "job_id": "b1-j1",
            "status": "passed",
            "accepted": False,
            "ts": results[0]["ts"],
        }
    ]
    assert isinstance(results[0]["ts"], float)
    # complete is still attempted: the server decides (here it accepts and requeues b1-j2)
    assert api.completed == [("b1", 2)]


def test_heartbeat_conflict_stops_the_running_batch() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    runner = FakeRunner()
    agent = make_agent(api, runner, max_batches=1)
    api.heartbeat_errors = [Conflict(409, "batch b1: lease lost")]
    seen_stop: list[bool] = []

    def heartbeat_during_first_test(path: str) -> None:
        seen_stop.append(runner.should_stop())
        agent.heartbeat_once()  # what the heartbeat thread does while the test runs
        seen_stop.append(runner.should_stop())

    runner.on_run = heartbeat_during_first_test
    agent.run()

    assert seen_stop == [False, True]  # the runner is asked to stop at its next check
    assert [r[0] for r in runner.runs] == ["a.spec.ts"]
    assert "b1-j2" not in api.started


# ---------------------------------------------------------------------- stopping


def test_stop_finishes_current_test_completes_batch_and_deregisters(tmp_path: Path) -> None:
    tests = ["a.spec.ts", "b.spec.ts", "c.spec.ts", "d.spec.ts"]
    api = FakeAgentApi([make_batch("b1", tests), make_batch("b2", ["e.spec.ts"])])
    runner = FakeRunner()
    journal = Journal(tmp_path / "journal.jsonl")
    agent = make_agent(api, runner, journal=journal)

    def sigterm_during_second_test(path: str) -> None:
        if path == "b.spec.ts":
            agent.stop()  # what the SIGTERM handler does

    runner.on_run = sigterm_during_second_test

    assert agent.run() == 0

    assert [r[0] for r in runner.runs] == ["a.spec.ts", "b.spec.ts"]
    assert sorted(api.results) == ["b1-j1", "b1-j2"]  # the current test ran to its end
    assert api.results["b1-j2"] == {
        "status": "passed",
        "duration_s": 0.25,
        "message": None,
        "output": "ran b.spec.ts",
    }
    assert runner.should_stop() is False  # one stop never interrupts a test
    assert api.started == ["b1-j1", "b1-j2"]
    assert api.completed == [("b1", 2)]  # c and d go back to the queue
    assert api.pending
    assert api.pending[0]["batch_id"] == "b2"
    assert api.deregistered == 1
    accepted = [e["job_id"] for e in journal_lines(journal.path) if e["event"] == "result"]
    assert accepted == ["b1-j1", "b1-j2"]


def test_one_stop_lets_a_stop_honouring_runner_finish_and_reports_the_real_status(
    tmp_path: Path,
) -> None:
    tests = ["a.spec.ts", "b-fail.spec.ts", "c.spec.ts"]
    api = FakeAgentApi([make_batch("b1", tests)])
    runner = SteppingRunner({"b-fail.spec.ts": RunOutcome("failed", 1.5, "exit code 1", "E")})
    journal = Journal(tmp_path / "journal.jsonl")
    logs: list[str] = []
    agent = make_agent(api, runner, journal=journal, logs=logs)

    def sigterm_in_second_test(path: str, step: int) -> None:
        if path == "b-fail.spec.ts" and step == 2:
            agent.stop()

    runner.on_step = sigterm_in_second_test

    assert agent.run() == 0

    assert runner.steps_done == {"a.spec.ts": 3, "b-fail.spec.ts": 3}  # ran to its end
    assert not any(stop for _, stop in runner.stop_checks)
    assert api.started == ["b1-j1", "b1-j2"]  # no further job starts
    assert api.calls[-3:] == ["start b1-j2", "result b1-j2", "deregister"]
    assert api.results["b1-j2"] == {
        "status": "failed",
        "duration_s": 1.5,
        "message": "exit code 1",
        "output": "E",
    }
    assert api.completed == [("b1", 1)]  # c goes back to the queue
    assert api.deregistered == 1
    events = [(e["event"], e["job_id"], e["status"]) for e in journal_lines(journal.path)]
    assert events[-2:] == [("start", "b1-j2", "running"), ("result", "b1-j2", "failed")]
    assert any("stop requested: finishing the current test" in line for line in logs)


def test_two_stops_interrupt_the_test_which_is_not_reported(tmp_path: Path) -> None:
    tests = ["a.spec.ts", "b.spec.ts", "c.spec.ts"]
    api = FakeAgentApi([make_batch("b1", tests)])
    runner = SteppingRunner()
    journal = Journal(tmp_path / "journal.jsonl")
    logs: list[str] = []
    agent = make_agent(api, runner, journal=journal, logs=logs)

    def two_sigterms_in_second_test(path: str, step: int) -> None:
        if path == "b.spec.ts" and step == 2:
            agent.stop()
            assert runner.should_stop() is False  # the first one lets the test go on
            agent.stop()

    runner.on_step = two_sigterms_in_second_test

    assert agent.run() == 0

    assert runner.steps_done == {"a.spec.ts": 3, "b.spec.ts": 1}  # interrupted at step 2
    assert runner.stop_checks[-1] == ("b.spec.ts", True)
    assert api.calls == [  # b1-j2 is not reported: deregister hands the batch back
        "start b1-j1",
        "result b1-j1",
        "start b1-j2",
        "deregister",
    ]
    assert list(api.results) == ["b1-j1"]
    assert api.completed == [("b1", 2)]  # the server requeues b and c
    assert api.deregistered == 1
    results = [e["job_id"] for e in journal_lines(journal.path) if e["event"] == "result"]
    assert results == ["b1-j1"]
    assert any("b1-j2 b.spec.ts interrupted" in line and "not reported" in line for line in logs)


def test_two_stops_after_the_test_ended_still_report_its_real_outcome() -> None:
    # The runner never saw the request (the test ended first): its outcome is real.
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    runner = FakeRunner()
    agent = make_agent(api, runner)

    def two_sigterms(path: str) -> None:
        agent.stop()
        agent.stop()

    runner.on_run = two_sigterms
    assert agent.run() == 0
    assert api.results["b1-j1"]["status"] == "passed"
    assert api.started == ["b1-j1"]
    assert api.completed == [("b1", 1)]
    assert api.deregistered == 1


def _python_template(code: str) -> str:
    return " ".join([shlex.quote(sys.executable), "-c", shlex.quote(code)])


class StopDuringCommand:
    """A real CommandRunner; `stops_at` maps a should_stop check number to stop() calls."""

    def __init__(self, command: str, stops_at: Mapping[int, int]) -> None:
        self.inner = CommandRunner(command)
        self.stops_at = dict(stops_at)
        self.agent: Agent | None = None
        self.outcomes: list[RunOutcome] = []

    def install(self, org_id: str, app_version_id: str, target: str) -> None:
        self.inner.install(org_id, app_version_id, target)

    def run(
        self,
        test_path: str,
        target: str,
        timeout_s: float,
        should_stop: Callable[[], bool],
        *,
        org_id: str = "",
        app_version_id: str = "",
    ) -> RunOutcome:
        checks: list[int] = []

        def check() -> bool:
            checks.append(1)
            assert self.agent is not None
            for _ in range(self.stops_at.get(len(checks), 0)):
                self.agent.stop()  # what the SIGTERM handler does
            return should_stop()

        outcome = self.inner.run(test_path, target, timeout_s, check)
        self.outcomes.append(outcome)
        return outcome


def test_one_stop_lets_a_command_test_finish_and_reports_its_exit_code() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    runner = StopDuringCommand(
        _python_template("import time, sys; time.sleep(0.5); sys.exit(1)"), {2: 1}
    )
    agent = make_agent(api, runner)  # type: ignore[arg-type]
    runner.agent = agent

    assert agent.run() == 0

    assert api.results["b1-j1"]["status"] == "failed"
    assert api.results["b1-j1"]["message"] == "exit code 1"
    assert api.started == ["b1-j1"]
    assert api.completed == [("b1", 1)]
    assert api.deregistered == 1


def test_two_stops_kill_a_command_test_and_do_not_report_it() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"])])
    runner = StopDuringCommand(_python_template("import time; time.sleep(60)"), {2: 1, 4: 1})
    agent = make_agent(api, runner)  # type: ignore[arg-type]
    runner.agent = agent

    assert agent.run() == 0

    assert [o.status for o in runner.outcomes] == ["error"]
    assert runner.outcomes[0].duration_s < 30  # killed, not waited for
    assert api.calls == ["start b1-j1", "deregister"]
    assert api.results == {}
    assert api.completed == [("b1", 1)]
    assert api.deregistered == 1


def test_stop_right_after_lease_skips_install_and_hands_the_batch_back() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "b.spec.ts"])])
    runner = FakeRunner()
    agent = make_agent(api, runner)
    original_lease = api.lease

    def lease_then_sigterm(agent_id: str) -> LeaseResponse:
        batch = original_lease(agent_id)
        agent.stop()
        return batch

    api.lease = lease_then_sigterm  # type: ignore[method-assign]
    assert agent.run() == 0
    assert runner.installs == []
    assert runner.runs == []
    assert api.completed == [("b1", 2)]
    assert api.deregistered == 1


def test_stop_while_idle_deregisters_and_exits_zero() -> None:
    api = FakeAgentApi([])
    sleeps = Sleeps()
    agent = make_agent(api, FakeRunner(), sleeps=sleeps)
    leases: list[int] = []

    def stop_on_third_lease() -> None:
        leases.append(1)
        if len(leases) == 3:
            agent.stop()

    api.on_lease = stop_on_third_lease
    assert agent.run() == 0
    assert sleeps.calls == [1.0, 1.0, 1.0]  # poll_seconds between empty leases
    assert api.deregistered == 1


# ---------------------------------------------------------------------- failures


def test_network_errors_back_off_and_the_agent_keeps_going() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"])])
    api.lease_errors = [
        Unreachable("http://qgjob.test", "connection refused"),
        ServerError(503, "restarting"),
        Unreachable("http://qgjob.test", "connection refused"),
    ]
    api.start_errors = [ServerError(502, "bad gateway")]
    sleeps = Sleeps()
    logs: list[str] = []
    agent = make_agent(api, FakeRunner(), max_batches=1, sleeps=sleeps, logs=logs)

    assert agent.run() == 0
    assert sleeps.calls == [1.0, 2.0, 4.0, 1.0]  # lease backoff grows; start retried once
    assert api.results["b1-j1"]["status"] == "passed"
    assert any("cannot reach qgjob" in line and "retrying in 4s" in line for line in logs)


def test_lease_404_registers_again() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"])])
    api.lease_errors = [NotFound(404, "agent emulator-1 is not registered")]
    agent = make_agent(api, FakeRunner(), max_batches=1)
    assert agent.run() == 0
    assert len(api.registrations) == 2
    assert list(api.results) == ["b1-j1"]


def test_heartbeat_404_makes_the_loop_register_again() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"]), make_batch("b2", ["b.spec.ts"])])
    api.heartbeat_errors = [NotFound(404, "agent emulator-1 is not registered")]
    runner = FakeRunner()
    agent = make_agent(api, runner, max_batches=2)
    runner.on_run = lambda path: agent.heartbeat_once() if path == "a.spec.ts" else None

    assert agent.run() == 0
    assert len(api.registrations) == 2
    assert api.registrations[1] == {"org_id": "acme", "app_version_id": "v1"}
    assert sorted(api.results) == ["b1-j1", "b2-j1"]


def test_register_waits_for_the_backend_to_come_up() -> None:
    api = FakeAgentApi([])
    calls: list[int] = []
    original = api.register

    def flaky_register(
        target: str, device_id: str, installed: Mapping[str, str] | None = None
    ) -> Json:
        calls.append(1)
        if len(calls) < 3:
            raise Unreachable("http://qgjob.test", "connection refused")
        return original(target, device_id, installed)

    api.register = flaky_register  # type: ignore[method-assign]
    agent = make_agent(api, FakeRunner(), max_batches=0)
    assert agent.run() == 0
    assert len(calls) == 3


def test_auth_error_on_register_exits_3() -> None:
    api = FakeAgentApi([])

    def refuse(target: str, device_id: str, installed: Mapping[str, str] | None = None) -> Json:
        raise AuthError(401, "invalid token")

    api.register = refuse  # type: ignore[method-assign]
    logs: list[str] = []
    assert make_agent(api, FakeRunner(), logs=logs).run() == 3
    assert api.deregistered == 0
    assert any("check --token" in line for line in logs)


# ---------------------------------------------------------------------- heartbeat thread


def test_heartbeat_thread_beats_while_a_test_runs() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"])])
    beat = threading.Event()
    api.on_heartbeat = beat.set
    runner = FakeRunner()
    runner.on_run = lambda path: None if beat.wait(timeout=10) else pytest.fail("no heartbeat")
    agent = Agent(
        api,
        runner,
        "emulator",
        "1",
        sleep=Sleeps(),
        heartbeat_interval=0.01,
        max_batches=1,
        log=lambda line: None,
    )
    assert agent.run() == 0
    assert api.heartbeats >= 1
    assert list(api.results) == ["b1-j1"]


# ---------------------------------------------------------------------- journal


def test_journal_lines_have_every_field(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts", "x-fail.spec.ts"])])
    runner = FakeRunner({"x-fail.spec.ts": RunOutcome("failed", 0.5, "boom", "")})
    make_agent(api, runner, journal=Journal(path, clock=lambda: 99.5), max_batches=1).run()

    lines = journal_lines(path)
    assert [(e["event"], e["status"]) for e in lines] == [
        ("install", "installed"),
        ("start", "running"),
        ("result", "passed"),
        ("start", "running"),
        ("result", "failed"),
    ]
    for entry in lines:
        assert set(entry) == {"event", "agent_id", "batch_id", "job_id", "status", "accepted", "ts"}
        assert entry["agent_id"] == "emulator-1"
        assert entry["batch_id"] == "b1"
        assert entry["accepted"] is True
        assert entry["ts"] == 99.5


def test_journal_rejects_unknown_events(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown journal event"):
        Journal(tmp_path / "j").record("finish", agent_id="a", batch_id="b", accepted=True)


def test_the_agent_uses_its_credential_and_stops_when_another_process_supersedes_it() -> None:
    api = FakeAgentApi()
    api.lease_errors.append(Conflict(409, "another process registered this device since"))
    agent = make_agent(api, FakeRunner())

    code = agent.run()

    assert code == EXIT_INFRA
    # The main API client carries the registration's credential from then on.
    assert api.credentials == ["qgja.emulator-1.s1"]


# ---------------------------------------------------------------------- push channel


class FakePush:
    """A PushChannel: connected or not, scripted wake-ups; records how the agent uses it."""

    def __init__(self, url: str, credential: str, log: Callable[[str], None]) -> None:
        self.url = url
        self.credential = credential
        self.connected = True
        self.started = False
        self.stopped = False
        self.clears = 0
        self.waits: list[tuple[float, float]] = []
        self.on_wait: Callable[[Callable[[], bool]], bool] = lambda stop: False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def clear(self) -> None:
        self.clears += 1

    def wait(self, timeout_s: float, *, fallback_s: float, stop: Callable[[], bool]) -> bool:
        self.waits.append((timeout_s, fallback_s))
        return self.on_wait(stop)


class PushFactory:
    def __init__(self, connected: bool = True) -> None:
        self.channels: list[FakePush] = []
        self.connected = connected
        self.on_wait: Callable[[Callable[[], bool]], bool] | None = None

    def __call__(self, url: str, credential: str, log: Callable[[str], None]) -> FakePush:
        channel = FakePush(url, credential, log)
        channel.connected = self.connected
        if self.on_wait is not None:
            channel.on_wait = self.on_wait
        self.channels.append(channel)
        return channel


def push_agent(
    api: FakeAgentApi, push: PushFactory, *, sleeps: Sleeps, max_batches: int | None = None
) -> Agent:
    return Agent(
        api,
        FakeRunner(),
        "emulator",
        "1",
        sleep=sleeps,
        heartbeat=False,
        max_batches=max_batches,
        log=lambda line: None,
        clock=lambda: 0.0,
        push=push,
    )


def test_an_idle_agent_waits_on_its_push_channel_and_leases_when_pushed() -> None:
    api = FakeAgentApi()
    api.push_url = "wss://push.example/v1"
    api.wait_s = 240.0
    push = PushFactory()

    def batch_assigned(stop: Callable[[], bool]) -> bool:
        api.pending.append(make_batch("b1", ["a.spec.ts"]))  # the dispatcher assigns it
        return True  # ... and pushes its id

    push.on_wait = batch_assigned
    sleeps = Sleeps()
    agent = push_agent(api, push, sleeps=sleeps, max_batches=1)

    assert agent.run() == 0

    (channel,) = push.channels
    assert (channel.url, channel.credential) == ("wss://push.example/v1", "qgja.emulator-1.s1")
    assert channel.started
    assert channel.stopped
    assert channel.waits == [(240.0, 1.0)]  # the lease's wait_s; poll_seconds if it drops
    assert sleeps.calls == []  # no polling at all
    assert channel.clears == 2  # before each lease: a push from then on means "lease"
    assert list(api.results) == ["b1-j1"]


def test_after_a_batch_a_pushed_agent_waits_for_the_push_instead_of_leasing_at_once() -> None:
    api = FakeAgentApi()
    api.push_url = "wss://push.example/v1"
    api.idle_poll_seconds = 240.0  # no empty lease yet: the register answer's safety poll
    api.pending.append(make_batch("b1", ["a.spec.ts"]))
    push = PushFactory()
    leases: list[int] = []
    api.on_lease = lambda: leases.append(len(api.results))

    def next_batch_pushed(stop: Callable[[], bool]) -> bool:
        api.pending.append(make_batch("b2", ["b.spec.ts"]))  # planned once b1 ended
        return True

    push.on_wait = next_batch_pushed
    agent = push_agent(api, push, sleeps=Sleeps(), max_batches=2)

    assert agent.run() == 0

    # One lease per batch: b1's, then (after waiting on the channel) b2's; no empty lease
    # in between, which is what an agent leasing as soon as its batch ended got.
    assert leases == [0, 1]
    assert push.channels[0].waits == [(240.0, 1.0)]
    assert list(api.results) == ["b1-j1", "b2-j1"]


def test_without_wait_s_the_safety_poll_is_the_register_answers_idle_poll() -> None:
    api = FakeAgentApi()
    api.push_url = "wss://push.example/v1"
    api.idle_poll_seconds = 120.0
    push = PushFactory()
    agent = push_agent(api, push, sleeps=Sleeps())
    leases: list[int] = []

    def stop_on_second_lease() -> None:
        leases.append(1)
        if len(leases) == 2:
            agent.stop()

    api.on_lease = stop_on_second_lease

    assert agent.run() == 0
    assert push.channels[0].waits == [(120.0, 1.0), (120.0, 1.0)]
    assert api.deregistered == 1


def test_an_agent_without_a_live_push_connection_polls_at_poll_seconds() -> None:
    api = FakeAgentApi()
    api.push_url = "wss://push.example/v1"
    api.wait_s = 300.0
    push = PushFactory(connected=False)
    sleeps = Sleeps()
    agent = push_agent(api, push, sleeps=sleeps)
    leases: list[int] = []

    def stop_on_third_lease() -> None:
        leases.append(1)
        if len(leases) == 3:
            agent.stop()

    api.on_lease = stop_on_third_lease

    assert agent.run() == 0
    # poll_seconds, as without a push channel, but on the channel: its connect ends it.
    assert push.channels[0].waits == [(1.0, 1.0)] * 3
    assert sleeps.calls == []


def test_an_agent_without_a_push_url_opens_no_channel() -> None:
    api = FakeAgentApi()
    push = PushFactory()
    sleeps = Sleeps()
    agent = push_agent(api, push, sleeps=sleeps)
    api.on_lease = lambda: agent.stop() if sleeps.calls else None

    assert agent.run() == 0
    assert push.channels == []
    assert sleeps.calls == [1.0, 1.0]


def test_a_new_registration_reconnects_with_its_new_credential() -> None:
    api = FakeAgentApi([make_batch("b1", ["a.spec.ts"])])
    api.push_url = "wss://push.example/v1"
    api.lease_errors = [NotFound(404, "agent emulator-1 is not registered")]
    push = PushFactory()
    agent = push_agent(api, push, sleeps=Sleeps(), max_batches=1)

    assert agent.run() == 0

    first, second = push.channels
    assert (first.credential, first.stopped) == ("qgja.emulator-1.s1", True)
    assert (second.credential, second.started, second.stopped) == (
        "qgja.emulator-1.s2",
        True,
        True,
    )


def test_a_stop_while_waiting_on_the_push_channel_ends_the_wait_and_deregisters() -> None:
    api = FakeAgentApi()
    api.push_url = "wss://push.example/v1"
    push = PushFactory()
    agent = push_agent(api, push, sleeps=Sleeps())
    seen: list[bool] = []

    def sigterm_while_waiting(stop: Callable[[], bool]) -> bool:
        seen.append(stop())
        agent.stop()  # what the SIGTERM handler does
        seen.append(stop())
        return False

    push.on_wait = sigterm_while_waiting

    assert agent.run() == 0
    assert seen == [False, True]  # the wait is told to end at once
    assert len(push.channels[0].waits) == 1
    assert push.channels[0].stopped
    assert api.deregistered == 1


class ScriptedEvent:
    """Stands in for the heartbeat thread's stop event: each wait returns the next answer."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return self.answers.pop(0)

    def set(self) -> None:
        pass


@pytest.mark.parametrize(("batch_id", "beats"), [(None, 0), ("b1", 3)])
def test_the_heartbeat_thread_beats_only_while_a_batch_is_held(
    batch_id: str | None, beats: int
) -> None:
    api = FakeAgentApi()
    agent = make_agent(api, FakeRunner())
    agent.current_batch_id = batch_id
    event = ScriptedEvent([False, False, False, True])  # three intervals, then stop
    agent._heartbeat_stop = event  # type: ignore[assignment]

    agent._heartbeat_loop()

    assert event.waits == 4
    assert api.heartbeats == beats
