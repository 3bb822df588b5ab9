"""End-to-end fixtures: the local stack as a subprocess, real CLI calls, real agents.

The stack is module-scoped on purpose: each test module gets a fresh stack (empty tables,
no agents left over from another module's crash test) while the tests of one module share
its start-up cost. Agents are per test and always stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import AgentFleet, StackProcess

# Short leases make the crash tests quick; fast schedules make planning and reaping prompt.
STACK_ARGS = ("--lease-seconds", "3", "--plan-interval", "0.5", "--reap-interval", "0.5")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    state_dir = tmp_path_factory.mktemp("local-stack")
    process = StackProcess.start(state_dir, *STACK_ARGS)
    yield process
    exit_code = process.stop()
    assert exit_code == 0, f"the stack exited {exit_code}:\n{process.output()}"


@pytest.fixture
def fleet(stack: StackProcess, tmp_path: Path) -> Iterator[AgentFleet]:
    agents = AgentFleet(stack, tmp_path)
    yield agents
    agents.stop_all()
