"""The local stack in the two shapes the shutdown tests stop with SIGTERM (run as a script).

``slow STATE_DIR READY_FILE``: ``make dev`` (`infra.local_stack.main`, its own signal
handling) with stand-in functions that are busy for minutes once called: the API (a
flood of requests queues behind it), the scheduled dispatcher and the reaper. Each writes
``busy-<name>`` into STATE_DIR when it starts its long call.

``embedded STATE_DIR READY_FILE``: a program that runs `LocalStack` in a ``with`` block
and handles no signal itself, as ``make demo`` does, with the real functions and one agent.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from infra.local_stack import LocalStack, LocalStackOptions, configure_logging, main

BUSY_S = 300.0  # far longer than any bound the tests allow for stopping
_state_dir = Path()


def _busy(name: str) -> None:
    (_state_dir / f"busy-{name}").touch()
    threading.Event().wait(BUSY_S)


def slow_api(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The stack's own readiness check stays quick (the path within the stage).
    if event["pathParameters"]["proxy"] != "health":
        _busy("api")
    return {"statusCode": 200, "body": "{}"}


def slow_dispatcher(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "Records" not in event:  # a scheduled planning run, as under a large backlog
        _busy("dispatcher")
    return {"batchItemFailures": []}


def slow_reaper(event: dict[str, Any], context: Any) -> None:
    _busy("reaper")


def run_slow(state_dir: Path, ready_file: Path) -> int:
    args = [
        "--no-agents", "--state-dir", str(state_dir), "--ready-file", str(ready_file),
        "--plan-interval", "0.1", "--reap-interval", "0.1",
    ]  # fmt: skip
    handlers = {
        "ApiFunction": slow_api,
        "DispatcherFunction": slow_dispatcher,
        "ReaperFunction": slow_reaper,
    }
    return main(args, handlers=handlers)


def run_embedded(state_dir: Path, ready_file: Path) -> int:
    configure_logging(state_dir)
    options = LocalStackOptions(
        state_dir=state_dir, ready_file=ready_file, agents_per_target=1,
        targets=("emulator",), orgs=("acme",), agent_poll_seconds=0.1,
    )  # fmt: skip
    with LocalStack(options):
        while True:  # like the demo waiting for its runs
            time.sleep(0.1)


if __name__ == "__main__":
    mode, state, ready = sys.argv[1:]
    _state_dir = Path(state)
    sys.exit((run_slow if mode == "slow" else run_embedded)(Path(state), Path(ready)))
