"""Runs the real `qgjob` command as a subprocess (the demo and the end-to-end tests use it).

Going through the installed console script, not the Python API, is the point: the demo
and the tests exercise exactly what a user types.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def qgjob_executable() -> str:
    """The `qgjob` console script, preferring the one next to this Python (the venv)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("qgjob", path=search)
    if not found:
        raise RuntimeError("the qgjob CLI is not installed; run: pip install -e ./cli")
    return found


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The JSON document the command printed on stdout (``--json``)."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"`qgjob {' '.join(self.args)}` printed no JSON (exit {self.exit_code}):\n"
                f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}"
            ) from exc

    def describe(self) -> str:
        return (
            f"`qgjob {' '.join(self.args)}` exited {self.exit_code}\n"
            f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}"
        )


@dataclass(frozen=True)
class QgjobCli:
    """`qgjob` pointed at one endpoint; the token is per call (each org has its own)."""

    endpoint: str
    executable: str = ""

    def env(self, token: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QGJOB_")}
        env["QGJOB_ENDPOINT_URL"] = self.endpoint
        if token is not None:
            env["QGJOB_TOKEN"] = token
        return env

    def command(self, *args: str) -> list[str]:
        return [self.executable or qgjob_executable(), *args]

    def run(self, *args: str, token: str | None, timeout_s: float = 60.0) -> CliResult:
        completed = subprocess.run(
            self.command(*args),
            env=self.env(token),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return CliResult(tuple(args), completed.returncode, completed.stdout, completed.stderr)

    def submit(
        self,
        *,
        token: str,
        org_id: str,
        app_version_id: str,
        target: str,
        test_paths: Sequence[str],
        priority: int | None = None,
        extra: Sequence[str] = (),
        timeout_s: float = 60.0,
    ) -> CliResult:
        args = ["submit", "--org-id", org_id, "--app-version-id", app_version_id,
                "--target", target]  # fmt: skip
        for path in test_paths:
            args += ["--test", path]
        if priority is not None:
            args += ["--priority", str(priority)]
        return self.run(*args, *extra, "--json", token=token, timeout_s=timeout_s)

    def agent_command(
        self,
        *,
        target: str,
        device_id: str,
        journal: Path,
        sim_scale: float,
        poll_seconds: float = 0.2,
    ) -> list[str]:
        return self.command(
            "agent",
            "--target", target,
            "--device-id", device_id,
            "--runner", "simulated",
            "--sim-scale", str(sim_scale),
            "--journal", str(journal),
            "--poll-seconds", str(poll_seconds),
        )  # fmt: skip
