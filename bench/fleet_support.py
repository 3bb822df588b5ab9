"""The processes of the fleet benchmark: the metered local stack, agent hosts, journals.

- `MeteredStack`: ``python -m infra.local_stack --no-agents`` with ``QGJOB_METER_FILE``
  set (see infra.metering), started as a user starts it; its meter snapshots, its peak RSS.
- `AgentProcess`: one ``python -m bench.fleet_agents`` process (many agents as threads, or
  one agent: a victim the benchmark SIGKILLs and starts again with the same device id).
- `Journals`: reads every agent journal incrementally (complete lines only: a SIGKILL may
  leave half a line behind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark cannot go on (the stack or an agent host failed to start)."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    error: type[Exception] = BenchError,
) -> T:
    """Polls ``probe`` until it returns something truthy; raises ``error`` at the deadline
    (the e2e tests pass AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def repo_env(**extra: str) -> dict[str, str]:
    """The environment `make` gives: functions/ and the repo root importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QGJOB_", "AWS_"))}
    paths = [str(REPO_ROOT / "functions"), str(REPO_ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def launch_stack(
    command: Sequence[str],
    state_dir: Path,
    ready_file: Path,
    *,
    env: dict[str, str],
    timeout_s: float,
    error: type[Exception] = BenchError,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Starts a local stack (``command`` writes ``ready_file`` once it serves) with its
    output in ``state_dir/stack.out``; returns the process and what the ready file says.
    Stops the process and raises ``error`` when it exits or is not ready in time."""
    output_path = state_dir / "stack.out"
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            list(command), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: ready_file.exists() or process.poll() is not None,
            timeout_s=timeout_s,
            what="the local stack's ready file",
            error=error,
        )
        if process.poll() is not None:
            text = output_path.read_text(encoding="utf-8", errors="replace")
            raise error(f"the local stack exited early:\n{text[-4000:]}")
        return process, json.loads(ready_file.read_text(encoding="utf-8"))
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def proc_status_kb(pid: int, field_name: str) -> int | None:
    """A ``/proc/<pid>/status`` figure in kB (VmHWM: peak resident set; VmRSS: now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------- the stack


@dataclass
class MeteredStack:
    process: subprocess.Popen[bytes]
    state_dir: Path
    meter_file: Path
    ready: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls, state_dir: Path, args: Sequence[str], *, timeout_s: float = 120.0
    ) -> MeteredStack:
        ready_file = state_dir / "ready.json"
        meter_file = state_dir / "meter.json"
        command = [
            sys.executable, "-m", "infra.local_stack", "--no-agents",
            "--state-dir", str(state_dir), "--ready-file", str(ready_file), *args,
        ]  # fmt: skip
        env = repo_env(QGJOB_METER_FILE=str(meter_file), QGJOB_METER_INTERVAL="0.5")
        if os.environ.get("QGJOB_METER_SITES") == "1":  # usage by code path, see metering
            env["QGJOB_METER_SITES"] = "1"
        process, ready = launch_stack(command, state_dir, ready_file, env=env, timeout_s=timeout_s)
        return cls(process, state_dir, meter_file, ready)

    def output(self) -> str:
        path = self.state_dir / "stack.out"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    @property
    def endpoint(self) -> str:
        return str(self.ready["endpoint"])

    @property
    def agent_token(self) -> str:
        return str(self.ready["agent_token"])

    def org_token(self, org: str) -> str:
        return str(self.ready["org_tokens"][org])

    def snapshot(self) -> dict[str, Any] | None:
        data = read_json(self.meter_file)
        return data if isinstance(data, dict) else None

    def snapshot_after(self, t: float, timeout_s: float = 30.0) -> dict[str, Any]:
        """The first meter snapshot written at or after wall-clock time ``t``."""

        def fresh() -> dict[str, Any] | None:
            data = self.snapshot()
            return data if data is not None and float(data.get("t", 0)) >= t else None

        return wait_for(fresh, timeout_s=timeout_s, what="a fresh meter snapshot", interval_s=0.1)

    def rss_kb(self) -> tuple[int | None, int | None]:
        """(peak, current) resident set of the stack process, in kB."""
        pid = self.process.pid
        return proc_status_kb(pid, "VmHWM"), proc_status_kb(pid, "VmRSS")

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


# ---------------------------------------------------------------------- agent hosts


@dataclass
class AgentProcess:
    """One ``bench.fleet_agents`` process; `restart` starts the same agents again."""

    name: str
    agents: list[tuple[str, str]]
    directory: Path
    endpoint: str
    token: str
    sim_scale: float
    poll_seconds: float
    incarnation: int = 0
    process: subprocess.Popen[bytes] | None = None
    journals: list[Path] = field(default_factory=list)
    stats_files: list[Path] = field(default_factory=list)

    def _path(self, kind: str, suffix: str) -> Path:
        return self.directory / kind / f"{self.name}.{self.incarnation}{suffix}"

    @property
    def journal(self) -> Path:
        return self._path("journals", ".jsonl")

    @property
    def ready_file(self) -> Path:
        return self._path("ready", ".json")

    def start(self) -> None:
        self.incarnation += 1
        for kind in ("journals", "ready", "stats", "logs"):
            (self.directory / kind).mkdir(parents=True, exist_ok=True)
        stats = self._path("stats", ".json")
        self.journals.append(self.journal)
        self.stats_files.append(stats)
        command = [
            sys.executable, "-m", "bench.fleet_agents", "--endpoint", self.endpoint,
            "--journal", str(self.journal), "--ready-file", str(self.ready_file),
            "--stats-file", str(stats), "--sim-scale", str(self.sim_scale),
            "--poll-seconds", str(self.poll_seconds),
        ]  # fmt: skip
        for target, device_id in self.agents:
            command += ["--agent", f"{target}:{device_id}"]
        with self._path("logs", ".log").open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=repo_env(QGJOB_TOKEN=self.token),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = self._path("logs", ".log").read_text(errors="replace")[-3000:]
            raise BenchError(f"agent host {self.name} exited {self.process.returncode}:\n{log}")
        return self.ready_file.exists()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no hand-back, no deregister; the leases lapse."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def client_stats(self) -> dict[str, dict[str, int]]:
        """What this host's agents saw, summed over its incarnations."""
        total: dict[str, dict[str, int]] = {}
        for path in self.stats_files:
            data = read_json(path) or {}
            for route, codes in data.items():
                into = total.setdefault(route, {})
                for status, count in codes.items():
                    into[status] = into.get(status, 0) + int(count)
        return total


# ---------------------------------------------------------------------- journals


class Journals:
    """Every journal line so far, read incrementally; complete lines only. Thread-safe:
    the benchmark's killer and its progress lines read it while clients run."""

    def __init__(self, paths: Callable[[], list[Path]]) -> None:
        self._paths = paths
        self._lock = threading.Lock()
        self._offsets: dict[Path, int] = {}
        self.starts: dict[str, list[dict[str, Any]]] = {}  # job id -> accepted starts
        self.results: dict[str, list[dict[str, Any]]] = {}  # job id -> accepted results
        self.open_starts: dict[Path, set[str]] = {}  # journal -> jobs started, not reported
        self.lines = 0

    def refresh(self) -> Journals:
        with self._lock:
            self._refresh()
        return self

    def _refresh(self) -> None:
        for path in self._paths():
            offset = self._offsets.get(path, 0)
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n")
            if end < 0:
                continue
            self._offsets[path] = offset + end + 1
            for raw in chunk[: end + 1].splitlines():
                self._add(path, raw)

    def _add(self, path: Path, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return  # the tail of a line cut by a SIGKILL, glued to the next incarnation's
        self.lines += 1
        job_id = event.get("job_id")
        opened = self.open_starts.setdefault(path, set())
        if event.get("event") == "start" and event.get("accepted") and job_id:
            self.starts.setdefault(job_id, []).append(event)
            opened.add(job_id)
        elif event.get("event") in ("result", "lease_lost"):
            opened.discard(job_id)
            if event["event"] == "result" and event.get("accepted") and job_id:
                self.results.setdefault(job_id, []).append(event)

    def busy(self, path: Path) -> bool:
        """True while the journal's agent has a test started and not yet reported."""
        with self._lock:
            return bool(self.open_starts.get(path))

    def reported(self, excluding: Collection[str] = ()) -> int:
        """Jobs with an accepted result, but those in ``excluding``."""
        with self._lock:
            return sum(1 for job in self.results if job not in excluding)

    def has_result(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self.results

    def first_start(self, job_id: str) -> float | None:
        """When the job's first accepted start was journaled (epoch seconds)."""
        with self._lock:
            starts = self.starts.get(job_id)
            return float(starts[0]["ts"]) if starts else None

    def completed_twice(self) -> dict[str, int]:
        with self._lock:
            return {job: len(ev) for job, ev in self.results.items() if len(ev) > 1}

    def result_count(self) -> int:
        with self._lock:
            return len(self.results)
