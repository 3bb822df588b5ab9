"""An agent host for the fleet benchmark: many real `qgjob.agent.Agent`s as threads.

``python -m bench.fleet_agents --endpoint URL --agent emulator:fleet-1 --agent ...``
(the fleet token comes from ``QGJOB_TOKEN``). Each agent is the code ``qgjob agent`` runs:
`qgjob.agent.Agent` with the `simulated` runner and two `qgjob.client.ApiClient`s (one for
heartbeats), configured as the CLI configures them. Agents of one host share one journal
file (`qgjob.agent.Journal` appends whole lines), so the benchmark reads a few files, not
hundreds.

The host writes, atomically:
- ``--ready-file`` once every agent has registered: ``{"pid", "agents": [agent ids]}``;
- ``--stats-file`` every second and at exit: the HTTP answers its agents got, by route
  and status, and transport errors (the client's view; retries included).

SIGTERM / SIGINT stop every agent as ``qgjob agent`` does (finish the current test, hand
the rest back, deregister), then the host exits 0. SIGKILL is what the benchmark's kills
are: nothing is handed back, the leases lapse and the reaper requeues the work.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from qgjob.agent import Agent, Journal
from qgjob.agent_protocol import DEFAULT_REPORT_EVERY_S
from qgjob.client import ApiClient
from qgjob.runners.simulated import SimulatedRunner

STATS_INTERVAL_S = 1.0


def route_of(method: str, url: str) -> str:
    """``POST /agents/{id}/lease`` from a request URL (ids after a collection name)."""
    from infra.metering import route_of as meter_route

    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    segments = path.split("/")[1:]  # drop the stage
    return meter_route({"httpMethod": method, "path": "/" + "/".join(segments)})


class CountingSession(requests.Session):
    """A `requests.Session` that counts every answer by route and status, and every
    transport error, into a shared `ClientStats`."""

    def __init__(self, stats: ClientStats) -> None:
        super().__init__()
        self._stats = stats

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        route = route_of(str(method), str(url))
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException:
            self._stats.add(route, "transport")
            raise
        self._stats.add(route, str(response.status_code))
        return response


class ClientStats:
    """Answers seen by clients: {route: {status or "transport": count}}."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_route: dict[str, dict[str, int]] = {}

    def add(self, route: str, status: str) -> None:
        with self._lock:
            codes = self.by_route.setdefault(route, {})
            codes[status] = codes.get(status, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {route: dict(codes) for route, codes in self.by_route.items()}

    @staticmethod
    def total(by_route: dict[str, dict[str, int]], kind: str) -> int:
        """Answers of a kind: ``5xx``, ``4xx``, ``transport`` or one status."""
        count = 0
        for codes in by_route.values():
            for status, n in codes.items():
                if kind == status or (
                    kind.endswith("xx") and status[:1] == kind[:1] and status.isdigit()
                ):
                    count += n
        return count


def write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    temporary.replace(path)


class AgentHost:
    """Runs agents as threads until `stop`; every agent uses the real CLI agent code."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        agents: Sequence[tuple[str, str]],
        *,
        journal: Path,
        sim_scale: float,
        poll_seconds: float,
    ) -> None:
        self.stats = ClientStats()
        self._stop = threading.Event()
        self._registered: set[str] = set()
        self._lock = threading.Lock()
        shared_journal = Journal(journal)
        self.agents: list[Agent] = []
        for target, device_id in agents:
            api = ApiClient(endpoint, token, CountingSession(self.stats), retries=1, timeout=30.0)
            heartbeat_api = ApiClient(
                endpoint, token, CountingSession(self.stats), retries=0, timeout=10.0
            )
            agent = Agent(
                api,
                SimulatedRunner(sim_scale),
                target,
                device_id,
                heartbeat_api=heartbeat_api,
                journal=shared_journal,
                poll_seconds=poll_seconds,
                log=self._log,
                report_every_s=DEFAULT_REPORT_EVERY_S,  # as `qgjob agent` does
            )
            self.agents.append(agent)
        self._threads = [
            threading.Thread(target=agent.run, name=f"agent-{agent.agent_id}", daemon=True)
            for agent in self.agents
        ]

    def _log(self, line: str) -> None:
        # "agent <id>: registered (...)": the first word after the id says what happened.
        if ": registered" in line:
            with self._lock:
                self._registered.add(line.split(":", 1)[0].removeprefix("agent "))
        print(line, file=sys.stderr, flush=True)

    @property
    def registered(self) -> int:
        with self._lock:
            return len(self._registered)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Signal-safe: asks every agent to stop (each only sets flags)."""
        for agent in self.agents:
            agent.stop()
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)


def parse_agent(text: str) -> tuple[str, str]:
    target, sep, device_id = text.partition(":")
    if not sep or not target or not device_id:
        raise argparse.ArgumentTypeError(f"expected TARGET:DEVICE_ID, got {text!r}")
    return target, device_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet_agents",
        description="Run many simulated qgjob agents as threads of one process "
        "(started by python -m bench.fleet). The fleet token is read from QGJOB_TOKEN.",
    )
    parser.add_argument("--endpoint", required=True, help="the qgjob API endpoint")
    parser.add_argument(
        "--agent",
        action="append",
        type=parse_agent,
        required=True,
        metavar="TARGET:DEVICE_ID",
        help="one agent (repeat)",
    )
    parser.add_argument("--journal", type=Path, required=True, help="the agents' journal")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--stats-file", type=Path, required=True)
    parser.add_argument("--sim-scale", type=float, default=1.0)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--stop-grace", type=float, default=30.0)
    args = parser.parse_args(argv)
    token = os.environ.get("QGJOB_TOKEN", "")
    host = AgentHost(
        args.endpoint,
        token,
        args.agent,
        journal=args.journal,
        sim_scale=args.sim_scale,
        poll_seconds=args.poll_seconds,
    )

    def request_stop(signum: int, frame: FrameType | None) -> None:
        host.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    host.start()
    ready_written = False
    while host.alive() and not host._stop.is_set():
        if not ready_written and host.registered >= len(host.agents):
            write_json(
                args.ready_file,
                {"pid": os.getpid(), "agents": [a.agent_id for a in host.agents]},
            )
            ready_written = True
        write_json(args.stats_file, host.stats.snapshot())
        host._stop.wait(STATS_INTERVAL_S)
    host.stop()
    clean = host.join(args.stop_grace)
    write_json(args.stats_file, host.stats.snapshot())
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
