"""Simulated `qgjob agent` subprocesses for the local stack and the demo."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.qgjob_cli import QgjobCli

log = logging.getLogger("qgjob.local")


@dataclass
class AgentProcess:
    agent_id: str
    target: str
    device_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    journal_path: Path


class AgentPool:
    """Simulated `qgjob agent` subprocesses, each in its own session.

    Their own session keeps a terminal's Ctrl-C away from them: the stack stops them itself,
    with SIGTERM first, so they hand their unfinished jobs back while the API still runs.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        agent_token: str,
        state_dir: Path,
        sim_scale: float,
        poll_seconds: float,
    ) -> None:
        self._endpoint = endpoint
        self._token = agent_token
        self._state_dir = state_dir
        self._sim_scale = sim_scale
        self._poll_seconds = poll_seconds
        self.agents: list[AgentProcess] = []

    def start(self, target: str, device_id: str) -> AgentProcess:
        agent_id = f"{target}-{device_id}"
        log_path = self._state_dir / "agents" / f"{agent_id}.log"
        journal_path = self._state_dir / "journals" / f"{agent_id}.jsonl"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        journal_path.unlink(missing_ok=True)  # a fresh stack starts fresh journals
        command = QgjobCli(self._endpoint).agent_command(
            target=target,
            device_id=device_id,
            journal=journal_path,
            sim_scale=self._sim_scale,
            poll_seconds=self._poll_seconds,
        )
        env = QgjobCli(self._endpoint).env(self._token)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        agent = AgentProcess(agent_id, target, device_id, process, log_path, journal_path)
        self.agents.append(agent)
        return agent

    def stop_all(self, grace_s: float = 20.0) -> None:
        running = [a for a in self.agents if a.process.poll() is None]
        for agent in running:
            agent.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for agent in running:
            try:
                agent.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "agent %s ignored SIGTERM for %.0fs; killing it", agent.agent_id, grace_s
                )
                agent.process.kill()
                agent.process.wait()
        for agent in self.agents:
            log.info("agent %s exited with %s", agent.agent_id, agent.process.returncode)
