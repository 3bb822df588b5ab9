"""Cancel that stops work (issue 11): a running 60 s test ends `cancelled` within one
heartbeat, with no process of it left alive (checked by pid), and `submit --wait
--cancel-on-timeout` cancels the run it gave up on.

The stack runs with 3 s leases, so an agent heartbeats every second.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from e2e_support import FINAL_STATUSES, Agent, AgentFleet, StackProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORG = "acme"
# A test that spawns a child (a process tree), records both pids, then sleeps 60 s.
TREE_TEST = r"""
import json, os, subprocess, sys, time
pid_dir, test_path = sys.argv[1], sys.argv[2]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
name = test_path.replace("/", "_") + ".json"
with open(os.path.join(pid_dir, name + ".tmp"), "w") as f:
    json.dump({"pids": [os.getpid(), child.pid]}, f)
os.replace(os.path.join(pid_dir, name + ".tmp"), os.path.join(pid_dir, name))
time.sleep(60)
"""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def tree_agent(fleet: AgentFleet, tmp_path: Path, device_id: str) -> tuple[Path, Agent]:
    script = tmp_path / "tree_test.py"
    script.write_text(TREE_TEST)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir(exist_ok=True)
    command = " ".join(
        [
            shlex.quote(sys.executable),
            shlex.quote(str(script)),
            shlex.quote(str(pid_dir)),
            "{test_path}",
        ]
    )
    return pid_dir, fleet.start_command("device", device_id, test_command=command)


def test_cancelling_a_run_stops_its_running_test_and_kills_its_process_tree(
    stack: StackProcess, fleet: AgentFleet, tmp_path: Path
) -> None:
    pid_dir, agent = tree_agent(fleet, tmp_path, "canceller")
    tests = ["tests/long/first.spec.js", "tests/long/second.spec.js"]
    run_id = stack.submit(ORG, "cancel-1.0.0", "device", tests)
    pid_file = pid_dir / "tests_long_first.spec.js.json"
    wait_until(pid_file.exists, timeout_s=30, what="the first 60 s test to start")
    pids = json.loads(pid_file.read_text())["pids"]
    assert all(alive(pid) for pid in pids)

    cancelled = stack.cli.run("cancel", "--run-id", run_id, "--json", token=stack.token(ORG))

    assert cancelled.exit_code == 0, cancelled.describe()
    answer = cancelled.json()
    assert answer["cancelled"] == 2
    # Final at once: the running job and the one waiting behind it in the batch.
    assert answer["run"]["counts"] == {"cancelled": 2}
    # The agent hears it at its next heartbeat (1 s here) and kills the whole tree.
    wait_until(
        lambda: not any(alive(pid) for pid in pids),
        timeout_s=15,
        what=f"the test's processes {pids} to be killed",
    )
    assert "was cancelled: stopping its test" in agent.log()
    agent.wait_for_log(" done: ", timeout_s=15)  # the batch completed
    view = stack.run_view(run_id, ORG)
    assert view["counts"] == {"cancelled": 2}, view
    assert [j["status"] for j in view["jobs"]] == ["cancelled", "cancelled"]
    assert not (pid_dir / "tests_long_second.spec.js.json").exists()  # never started
    assert agent.process.poll() is None  # it serves on
    # A repeat is safe and cancels nothing more.
    again = stack.cli.run("cancel", "--run-id", run_id, "--json", token=stack.token(ORG))
    assert again.exit_code == 0, again.describe()
    assert again.json()["cancelled"] == 0
    # Another org's run is not found.
    other = stack.cli.run("cancel", "--run-id", run_id, token=stack.token("globex"))
    assert other.exit_code != 0, other.describe()
    assert "not found" in other.stderr


def test_submit_wait_cancel_on_timeout_cancels_the_run(
    stack: StackProcess, fleet: AgentFleet, tmp_path: Path
) -> None:
    pid_dir, _ = tree_agent(fleet, tmp_path, "timeout")
    result = stack.cli.submit(
        token=stack.token(ORG),
        org_id=ORG,
        app_version_id="cancel-2.0.0",
        target="device",
        test_paths=["tests/long/slow.spec.js"],
        extra=("--wait", "--wait-timeout", "4", "--poll-interval", "0.2", "--cancel-on-timeout"),
    )

    assert result.exit_code == 3, result.describe()
    assert "cancelled (--cancel-on-timeout)" in result.stderr
    run = result.json()
    assert run["counts"] == {"cancelled": 1}
    assert {j["status"] for j in run["jobs"]} <= FINAL_STATUSES
    pid_file = pid_dir / "tests_long_slow.spec.js.json"
    if pid_file.exists():  # it started within the 4 s: its processes go too
        pids = json.loads(pid_file.read_text())["pids"]
        wait_until(
            lambda: not any(alive(pid) for pid in pids), timeout_s=15, what="the test killed"
        )
