"""The agent stops a cancelled test (the heartbeat or a progress answer names it), skips
the batch's other cancelled jobs, and reports neither; the rest of the batch runs on."""

from __future__ import annotations

from typing import Any

from qgjob.agent_protocol import ProgressRequest, ProgressResponse
from tests.unit.cli.test_cli_agent import (
    FakeAgentApi,
    SteppingRunner,
    make_agent,
    make_batch,
)

TESTS = ["tests/a.spec.ts", "tests/b.spec.ts", "tests/c.spec.ts"]


class CancellingApi(FakeAgentApi):
    """Names ``cancelled`` jobs in each heartbeat and progress answer (as the server does
    once they were cancelled)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        super().__init__(batches)
        self.cancelled: list[str] = []

    def heartbeat(self, agent_id: str) -> dict[str, Any]:
        answer = super().heartbeat(agent_id)
        return {**answer, "cancelled_job_ids": list(self.cancelled)}

    def progress(self, agent_id: str, batch_id: str, request: ProgressRequest) -> ProgressResponse:
        answer = super().progress(agent_id, batch_id, request)
        answer.cancelled_job_ids = list(self.cancelled)
        return answer


def test_a_heartbeat_naming_the_running_job_stops_it_and_it_is_not_reported() -> None:
    api = CancellingApi([make_batch("b1", TESTS)])
    runner = SteppingRunner(steps=3)
    logs: list[str] = []
    agent = make_agent(api, runner, max_batches=1, logs=logs)

    def on_step(path: str, step: int) -> None:
        if path == TESTS[0] and step == 2:  # mid-test: the job is cancelled, a beat comes
            api.cancelled = ["b1-j1"]
            agent.heartbeat_once()

    runner.on_step = on_step

    assert agent.run() == 0

    # Stopped at the check after the heartbeat, never reported; the others ran on.
    assert runner.stop_checks[:2] == [(TESTS[0], False), (TESTS[0], True)]
    assert "b1-j1" not in api.results
    assert {j: r["status"] for j, r in api.results.items()} == {
        "b1-j2": "passed",
        "b1-j3": "passed",
    }
    assert api.completed == [("b1", 1)]  # the server knows b1-j1 is cancelled
    assert "agent emulator-1: job b1-j1 was cancelled: stopping its test" in logs
    assert any("b1-j1 tests/a.spec.ts cancelled after" in line for line in logs)


def test_cancelled_jobs_the_progress_answer_names_are_skipped() -> None:
    api = CancellingApi([make_batch("b1", TESTS)])
    runner = SteppingRunner(steps=1)
    logs: list[str] = []
    agent = make_agent(api, runner, max_batches=1, logs=logs)
    runner.on_step = lambda path, step: api.cancelled.extend(["b1-j2", "b1-j3"])

    assert agent.run() == 0

    assert [r[0] for r in runner.runs] == [TESTS[0]]
    assert list(api.results) == ["b1-j1"]
    assert "agent emulator-1: job b1-j2 tests/b.spec.ts cancelled: skipped" in logs
    assert "agent emulator-1: job b1-j3 tests/c.spec.ts cancelled: skipped" in logs
