"""One job followed through a local run by its correlation id (its run's id): the api's,
the dispatcher's and the agent's log lines about it all carry it, each function's lines
name that function, and the functions' metrics reach the log as EMF."""

from __future__ import annotations

import json
from typing import Any

import pytest
from e2e_support import AgentFleet, StackProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ORG = "acme"


def _function_lines(stack: StackProcess) -> list[dict[str, Any]]:
    path = stack.state_dir / "functions.log"
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a line some library printed as text
        if isinstance(line, dict):
            lines.append(line)
    return lines


def _about(lines: list[dict[str, Any]], correlation_id: str, function: str) -> set[str]:
    """Messages of ``function``'s lines that carry ``correlation_id``."""
    return {
        line["message"]
        for line in lines
        if str(line.get("function_name", "")).endswith(f"-{function}")
        and correlation_id in str(line.get("correlation_id", "")).split(",")
    }


def test_a_jobs_correlation_id_is_on_the_api_dispatcher_and_agent_lines(
    stack: StackProcess, fleet: AgentFleet
) -> None:
    run_id = stack.submit(ORG, "corr-1.0.0", "emulator", ["tests/login.spec.js"])
    agent = fleet.start("emulator", "corr-1", sim_scale=0.05)
    waited = stack.wait_run(run_id, ORG, timeout_s=45)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()
    assert agent.stop() == 0, agent.log()

    lines = _function_lines(stack)
    # The submit, then the agent's calls about the job (they echo it as X-Correlation-Id).
    api = _about(lines, run_id, "ApiFunction")
    assert {"run submitted", "app installed", "batch complete"} <= api, api
    # The plan request the submit sent carried it, and the batch's line names its runs.
    dispatcher = _about(lines, run_id, "DispatcherFunction")
    assert {"dispatched", "batch assigned"} <= dispatcher, dispatcher
    # No line of one function is tagged with another's name.
    submitted = [line for line in lines if line.get("message") == "run submitted"]
    assert submitted
    assert all(line["function_name"].endswith("-ApiFunction") for line in submitted)

    agent_lines = [line for line in agent.log().splitlines() if run_id in line]
    assert any("batch " in line and "1 jobs" in line for line in agent_lines), agent.log()
    assert any("tests/login.spec.js passed" in line for line in agent_lines), agent.log()

    # The report's metric, written by the api's invocation as EMF.
    finished = [
        line
        for line in lines
        if "_aws" in line and line.get("target") == "emulator" and line.get("status") == "passed"
    ]
    assert finished
    assert sum(sum(line["JobsFinished"]) for line in finished) >= 1
