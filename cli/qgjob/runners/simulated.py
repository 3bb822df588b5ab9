"""A deterministic runner for demos, tests and benchmarks: no device, no randomness.

The outcome depends only on the test path: its sha256 picks a duration in
[0.2, 1.0] s (times `sim_scale`); the file name decides the status: it contains
"infra-error" -> "error", "fail" -> "failed", otherwise "passed".
Installing an app takes 1.0 s times `sim_scale`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import PurePosixPath

from qgjob.runners.base import (
    OutcomeStatus,
    RunOutcome,
    UnsafeArgument,
    check_runnable_path,
    refused,
)

MIN_DURATION_S = 0.2
MAX_DURATION_S = 1.0
INSTALL_S = 1.0


def simulated_duration(test_path: str, sim_scale: float = 1.0) -> float:
    """The duration a test path always takes, in [0.2, 1.0] s times `sim_scale`."""
    digest = hashlib.sha256(test_path.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return (MIN_DURATION_S + (MAX_DURATION_S - MIN_DURATION_S) * fraction) * sim_scale


def simulated_status(test_path: str) -> OutcomeStatus:
    """The status a test path always gets, from its file name."""
    name = PurePosixPath(test_path.replace("\\", "/")).name.lower()
    if "infra-error" in name:
        return "error"
    if "fail" in name:
        return "failed"
    return "passed"


class SimulatedRunner:
    """Pretends to install and run; sleeps through the injected `sleep`."""

    def __init__(
        self, sim_scale: float = 1.0, sleep: Callable[[float], object] = time.sleep
    ) -> None:
        if sim_scale < 0:
            raise ValueError("sim_scale must be >= 0")
        self.sim_scale = sim_scale
        self._sleep = sleep

    def install(
        self, org_id: str, app_version_id: str, target: str, app_path: str | None = None
    ) -> None:
        self._sleep(INSTALL_S * self.sim_scale)

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
        # It runs nothing, so no path can be read as an option here; it refuses what
        # the command runner refuses, so a demo shows what a real agent would do.
        try:
            check_runnable_path(test_path)
        except UnsafeArgument as error:
            return refused(error)
        duration = simulated_duration(test_path, self.sim_scale)
        if duration > timeout_s:
            self._sleep(timeout_s)
            return RunOutcome(
                "timed_out",
                float(timeout_s),
                f"timed out after {timeout_s:g}s (simulated)",
                f"simulated run of {test_path} on {target}: still running at {timeout_s:g}s\n",
            )
        self._sleep(duration)
        status = simulated_status(test_path)
        message = {
            "passed": None,
            "failed": f"simulated failure: an assertion in {test_path} failed",
            "error": f"simulated infrastructure error while running {test_path}",
        }[status]
        output = f"simulated run of {test_path} on {target}: {status} in {duration:.3f}s\n"
        return RunOutcome(status, duration, message, output)
