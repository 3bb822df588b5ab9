"""The agent yields its batch to urgent work when the heartbeat or a progress answer asks:
the test it runs ends and is reported, the rest is handed back by completing the batch
(not by deregistering: the agent stays and leases again)."""

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


class YieldingApi(FakeAgentApi):
    """Answers ``yield_requested`` for the batches in ``yielding`` (as the server does once
    the dispatcher asked), in heartbeats and progress answers."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        super().__init__(batches)
        self.yielding: set[str] = set()

    def heartbeat(self, agent_id: str) -> dict[str, Any]:
        answer = super().heartbeat(agent_id)
        current = self.current["batch_id"] if self.current else None
        return {**answer, "yield_requested": current in self.yielding}

    def progress(self, agent_id: str, batch_id: str, request: ProgressRequest) -> ProgressResponse:
        answer = super().progress(agent_id, batch_id, request)
        answer.yield_requested = batch_id in self.yielding
        return answer


def test_a_heartbeat_asking_to_yield_ends_the_batch_after_the_current_test() -> None:
    api = YieldingApi([make_batch("b1", TESTS), make_batch("b2", ["tests/urgent.spec.ts"])])
    runner = SteppingRunner(steps=3)
    logs: list[str] = []
    agent = make_agent(api, runner, max_batches=2, logs=logs)

    def on_step(path: str, step: int) -> None:
        if path == TESTS[0] and step == 2:  # mid-test: the dispatcher asks, a beat comes
            api.yielding.add("b1")
            agent.heartbeat_once()

    runner.on_step = on_step

    assert agent.run() == 0

    # The current test ran to its end (no stop check said stop) and was reported; the
    # other two were handed back by completing b1; the agent went on with b2.
    assert (TESTS[0], True) not in runner.stop_checks
    assert [r[0] for r in runner.runs] == [TESTS[0], "tests/urgent.spec.ts"]
    assert {j: r["status"] for j, r in api.results.items()} == {
        "b1-j1": "passed",
        "b2-j1": "passed",
    }
    assert api.started == ["b1-j1", "b2-j1"]
    assert api.completed == [("b1", 2), ("b2", 0)]
    assert "agent emulator-1: batch b1: asked to yield to urgent work after the current test" in (
        logs
    )
    assert "agent emulator-1: batch b1: yielding: 2 job(s) handed back" in logs


def test_a_start_answered_with_a_yield_is_not_run_and_goes_back_too() -> None:
    api = YieldingApi([make_batch("b1", TESTS)])
    runner = SteppingRunner(steps=1)
    logs: list[str] = []
    agent = make_agent(api, runner, max_batches=1, logs=logs)
    # Asked while the first test runs; the agent hears it with the answer to b1-j2's start.
    runner.on_step = lambda path, step: api.yielding.add("b1")

    assert agent.run() == 0

    assert [r[0] for r in runner.runs] == [TESTS[0]]
    assert list(api.results) == ["b1-j1"]
    assert api.started == ["b1-j1", "b1-j2"]  # b1-j2's start was applied, then handed back
    assert api.completed == [("b1", 2)]
    assert "agent emulator-1: batch b1: yielding: 2 job(s) handed back" in logs


def test_a_yield_asked_for_another_batch_changes_nothing() -> None:
    api = YieldingApi([make_batch("b1", TESTS)])
    api.yielding.add("b0")  # an earlier batch's request
    runner = SteppingRunner(steps=1)
    agent = make_agent(api, runner, max_batches=1)

    assert agent.run() == 0

    assert len(runner.runs) == 3
    assert api.completed == [("b1", 0)]
