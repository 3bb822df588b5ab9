"""SIGTERM stops the local stack within seconds, however busy it is.

The stack runs as a subprocess (tests/e2e/stack_under_load.py). The one time bound is on
the process exiting after SIGTERM; everything before it waits for an observed state.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from e2e_support import StackProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# Generous for two shared cores; before the fix these stacks took 30 s or never exited.
STOP_BOUND_S = 15.0
SCRIPT = Path(__file__).with_name("stack_under_load.py")


def _start(mode: str, state_dir: Path) -> StackProcess:
    ready_file = state_dir / "ready.json"
    command = [sys.executable, str(SCRIPT), mode, str(state_dir), str(ready_file)]
    return StackProcess.launch(command, state_dir, ready_file)


@pytest.fixture
def flood() -> Iterator[list[socket.socket]]:
    clients: list[socket.socket] = []
    yield clients
    for client in clients:
        client.close()


def _send_requests(endpoint: str, count: int, clients: list[socket.socket]) -> None:
    """``count`` connections, each with one request sent and its response never read."""
    url = urlsplit(endpoint)
    request = f"POST {url.path}/jobs HTTP/1.1\r\nHost: local\r\nContent-Length: 2\r\n\r\n{{}}"
    for _ in range(count):
        client = socket.create_connection((url.hostname, url.port), timeout=30)
        client.sendall(request.encode())
        clients.append(client)


def test_sigterm_stops_a_stack_with_hundreds_of_requests_waiting(
    tmp_path: Path, flood: list[socket.socket]
) -> None:
    stack = _start("slow", tmp_path)
    try:
        _send_requests(stack.endpoint, 300, flood)
        busy = [tmp_path / f"busy-{name}" for name in ("api", "dispatcher", "reaper")]
        wait_until(
            lambda: all(path.exists() for path in busy),
            timeout_s=30,
            what="the api, dispatcher and reaper to be inside long calls",
        )
    finally:
        # StackProcess.stop fails the test when the process outlives the bound.
        exit_code = stack.stop(timeout_s=STOP_BOUND_S)
    assert exit_code == 0, stack.output()
    assert "Traceback" not in stack.output()


def test_sigterm_unwinds_an_embedded_stack_and_stops_its_agents(tmp_path: Path) -> None:
    # Like `make demo`: the program handles no signal; SIGTERM must still stop the agents
    # (in their own sessions, they would outlive the process and poll a dead API).
    stack = _start("embedded", tmp_path)
    (agent,) = stack.ready["agents"]
    agent_log = tmp_path / "agents" / f"{agent}.log"
    try:
        wait_until(
            lambda: "registered" in agent_log.read_text(encoding="utf-8"),
            timeout_s=30,
            what=f"agent {agent} to register",
        )
    finally:
        exit_code = stack.stop(timeout_s=STOP_BOUND_S)
    assert exit_code == 128 + signal.SIGTERM, stack.output()
    assert "deregistered" in agent_log.read_text(encoding="utf-8")  # it handed back its work
    # The stack's log lines end up in one of its log files, depending on who set up logging.
    logs = "".join(path.read_text(encoding="utf-8") for path in tmp_path.glob("*.log"))
    assert f"agent {agent} exited with 0" in logs
    assert "Traceback" not in stack.output()
