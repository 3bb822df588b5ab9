"""The fleet benchmark, small: a real stack, 6 agents (2 SIGKILLed and restarted), 60 jobs.

Only correctness is asserted (every job final, none lost, none completed twice, no 5xx),
never a time or a price: those are what ``python -m bench.fleet`` reports. The run is
bounded: every wait in the benchmark has a deadline, and the subprocess one more.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.fleet_support import REPO_ROOT, repo_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ARGS = (
    "--jobs", "60", "--suite-size", "10", "--clients", "3", "--agents", "6", "--kills", "2",
    "--idle-window", "3", "--latency-samples", "3", "--lease-seconds", "3",
    "--plan-interval", "0.5", "--reap-interval", "0.5", "--restart-delay", "0.5",
    "--timeout", "180", "--seed", "7",
)  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state_dir: Path = tmp_path_factory.mktemp("fleet")
    command = [sys.executable, "-m", "bench.fleet", *ARGS, "--json", "--state-dir", str(state_dir)]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=repo_env(), capture_output=True, text=True, timeout=270
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"bench.fleet did not finish within 270s:\n{error.stderr}")
    assert done.returncode in (0, 1), f"bench.fleet could not run:\n{done.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(done.stdout)
    data["_stderr"] = done.stderr[-4000:]
    return data


def test_every_job_is_final_and_none_is_lost(report: dict[str, Any]) -> None:
    jobs = report["jobs"]
    assert jobs["submitted"] == 60 + 3, jobs
    assert not jobs["submit_failures"], jobs["submit_failures"]
    assert jobs["lost"] == 0, f"{jobs['not_final_examples']}\n{report['_stderr']}"
    assert jobs["final"] == jobs["submitted"], jobs


def test_no_job_is_completed_twice(report: dict[str, Any]) -> None:
    assert report["jobs"]["completed_twice"] == 0, report["jobs"]["completed_twice_jobs"]


def test_no_request_gets_a_5xx(report: dict[str, Any]) -> None:
    errors = report["errors"]
    assert errors["api_5xx_server"] == 0, errors
    assert errors["api_5xx_clients"] == 0, errors


def test_agents_were_killed_and_the_run_still_counted_every_request(
    report: dict[str, Any],
) -> None:
    # At least the first kill always happens (a third of the jobs are left to run then).
    assert report["kills"]["done"] >= 1, report["kills"]
    assert report["per_job"]["aws_requests"] > 0, report["per_job"]
    assert report["load_api_routes"].get("POST /runs", 0) >= 6, report["load_api_routes"]
