"""Stopping an agent mid-batch.

One SIGTERM: the current test runs to its end and is reported by the stopping agent, the
rest of the batch is handed back at once, the agent exits 0. A second SIGTERM: the
current test is interrupted and not reported; qgjob requeues it without spending a retry.
The run view is the truth for "nothing lost"; the journals prove "never completed twice".
"""

from __future__ import annotations

import shlex
import signal
import sys

import pytest
from e2e_support import (
    FINAL_STATUSES,
    AgentFleet,
    StackProcess,
    accepted_results,
    accepted_starts,
    assert_never_completed_twice,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORG = "globex"
TESTS = tuple(f"tests/drain/case-{n}.spec.js" for n in range(1, 7))
# A test that outlives every timeout below: only an interruption ends it early.
ENDLESS_TEST = " ".join(
    [shlex.quote(sys.executable), "-c", shlex.quote("import time; time.sleep(120)"), "{test_path}"]
)


def test_sigterm_finishes_the_current_test_and_requeues_the_rest(
    stack: StackProcess, fleet: AgentFleet
) -> None:
    run_id = stack.submit(ORG, "drain-2.0.0", "device", TESTS)
    leaver = fleet.start("device", "leaver", sim_scale=1.0)

    def job_the_leaver_runs() -> str | None:
        jobs = stack.run_view(run_id, ORG)["jobs"]
        running = [j for j in jobs if j["status"] == "running" and j["agent_id"] == leaver.agent_id]
        return str(running[0]["job_id"]) if running else None

    running_at_signal = wait_until(job_the_leaver_runs, timeout_s=30, what="the leaver to start")
    leaver.process.send_signal(signal.SIGTERM)
    assert leaver.process.wait(timeout=30) == 0, leaver.log()

    # Handed back at once, not after a lease expiry: nothing is left running or assigned.
    at_exit = {j["job_id"]: j for j in stack.run_view(run_id, ORG)["jobs"]}
    handed_back = {job_id for job_id, j in at_exit.items() if j["status"] not in FINAL_STATUSES}
    assert {at_exit[job_id]["status"] for job_id in handed_back} <= {"queued"}, at_exit
    assert handed_back, "the leaver finished the whole batch; nothing was handed back"
    # The test running when SIGTERM came ran to its end and the leaver reported it.
    current = at_exit[running_at_signal]
    assert current["status"] == "passed", current
    assert current["agent_id"] == leaver.agent_id, current
    # The leaver exited cleanly, so its journal is complete: each test it started, it
    # reported (none was interrupted), and it started nothing it handed back.
    leaver_events = leaver.events()
    started = set(accepted_starts(leaver_events))
    assert started == set(accepted_results(leaver_events)), leaver_events
    assert running_at_signal in started
    assert not started & handed_back, leaver_events
    assert "stop requested: finishing the current test" in leaver.log()

    successor = fleet.start("device", "successor", sim_scale=0.2)
    waited = stack.wait_run(run_id, ORG, timeout_s=60)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()
    assert successor.stop() == 0, successor.log()

    jobs = stack.run_view(run_id, ORG)["jobs"]
    assert [j["status"] for j in jobs] == ["passed"] * len(TESTS)
    for job in jobs:
        expected = successor if job["job_id"] in handed_back else leaver
        assert job["agent_id"] == expected.agent_id, job
    assert_never_completed_twice(
        jobs, fleet.all_events(), complete_journals=[leaver.agent_id, successor.agent_id]
    )


def test_second_sigterm_interrupts_the_test_without_reporting_it(
    stack: StackProcess, fleet: AgentFleet
) -> None:
    tests = ("tests/drain/endless-1.spec.js", "tests/drain/endless-2.spec.js")
    # --retries 0: had the interrupted test cost an attempt, the job would end in error.
    run_id = stack.submit(ORG, "drain-3.0.0", "browserstack", tests, "--retries", "0")
    leaver = fleet.start_command("browserstack", "impatient", test_command=ENDLESS_TEST)

    def job_the_leaver_runs() -> str | None:
        jobs = stack.run_view(run_id, ORG)["jobs"]
        running = [j for j in jobs if j["status"] == "running" and j["agent_id"] == leaver.agent_id]
        return str(running[0]["job_id"]) if running else None

    interrupted = wait_until(job_the_leaver_runs, timeout_s=30, what="the leaver to start")
    leaver.process.send_signal(signal.SIGTERM)
    # Two signals sent back to back may merge into one: wait until the first was seen.
    leaver.wait_for_log("stop requested: finishing the current test")
    assert leaver.process.poll() is None, "one SIGTERM must not interrupt the test"
    leaver.process.send_signal(signal.SIGTERM)
    assert leaver.process.wait(timeout=30) == 0, leaver.log()  # the test sleeps 120 s

    at_exit = {j["job_id"]: j for j in stack.run_view(run_id, ORG)["jobs"]}
    assert {j["status"] for j in at_exit.values()} == {"queued"}, at_exit
    assert at_exit[interrupted]["attempts"] == 0, at_exit[interrupted]
    leaver_events = leaver.events()
    assert set(accepted_starts(leaver_events)) == {interrupted}, leaver_events
    assert accepted_results(leaver_events) == {}, leaver_events
    log = leaver.log()
    assert "stop requested again: stopping now" in log
    assert any(f"job {interrupted}" in line and "not reported" in line for line in log.splitlines())

    successor = fleet.start("browserstack", "patient", sim_scale=0.2)
    waited = stack.wait_run(run_id, ORG, timeout_s=60)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()
    assert successor.stop() == 0, successor.log()

    jobs = stack.run_view(run_id, ORG)["jobs"]
    assert [j["status"] for j in jobs] == ["passed"] * len(tests)
    assert {j["agent_id"] for j in jobs} == {successor.agent_id}
    assert_never_completed_twice(
        jobs, fleet.all_events(), complete_journals=[leaver.agent_id, successor.agent_id]
    )
