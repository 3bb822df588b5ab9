"""Runners: how an agent installs the app and runs a test on its device."""

from __future__ import annotations

from typing import Any

from qgjob.runners.appwright import AppWrightRunner
from qgjob.runners.base import InstallError, OutcomeStatus, Runner, RunOutcome, truncate_output
from qgjob.runners.browserstack import BrowserStackRunner
from qgjob.runners.command import DEFAULT_COMMAND, CommandRunner
from qgjob.runners.simulated import SimulatedRunner

__all__ = [
    "DEFAULT_COMMAND",
    "RUNNER_NAMES",
    "AppWrightRunner",
    "BrowserStackRunner",
    "CommandRunner",
    "InstallError",
    "OutcomeStatus",
    "RunOutcome",
    "Runner",
    "SimulatedRunner",
    "get_runner",
    "truncate_output",
]

RUNNER_NAMES = ("simulated", "command", "browserstack", "appwright")


def get_runner(name: str, **options: Any) -> Runner:
    """The runner called `name`, built with `options` (its constructor's keyword arguments).

    simulated: sim_scale=1.0, sleep=time.sleep
    command:   command=DEFAULT_COMMAND, install_command=None, cwd=None, env=None
    appwright: project_dir=None, install_command=None, npx="npx", env=None
    browserstack: app_path=None, cwd=None, command=DEFAULT_COMMAND, env=None, log=...
    """
    if name == "simulated":
        return SimulatedRunner(**options)
    if name == "command":
        return CommandRunner(**options)
    if name == "browserstack":
        return BrowserStackRunner(**options)
    if name == "appwright":
        return AppWrightRunner(**options)
    raise ValueError(f"unknown runner {name!r}; choose one of: {', '.join(RUNNER_NAMES)}")
