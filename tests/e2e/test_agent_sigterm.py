"""SIGTERM to an agent mid-batch: it finishes the current test, hands the rest back, exits 0."""

from __future__ import annotations

import signal

import pytest
from e2e_support import (
    FINAL_STATUSES,
    AgentFleet,
    StackProcess,
    accepted_results,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORG = "globex"
TESTS = tuple(f"tests/drain/case-{n}.spec.js" for n in range(1, 7))


def test_sigterm_requeues_unfinished_jobs_for_another_agent(
    stack: StackProcess, fleet: AgentFleet
) -> None:
    run_id = stack.submit(ORG, "drain-2.0.0", "device", TESTS)
    leaver = fleet.start("device", "leaver", sim_scale=1.0)

    def leaver_is_running_a_job() -> bool:
        jobs = stack.run_view(run_id, ORG)["jobs"]
        return any(j["status"] == "running" and j["agent_id"] == leaver.agent_id for j in jobs)

    wait_until(leaver_is_running_a_job, timeout_s=30, what="the leaver to start a job")
    leaver.process.send_signal(signal.SIGTERM)
    assert leaver.process.wait(timeout=30) == 0, leaver.log()

    # Handed back at once, not after a lease expiry: nothing is left running or assigned.
    at_exit = stack.run_view(run_id, ORG)["jobs"]
    handed_back = {j["job_id"] for j in at_exit if j["status"] not in FINAL_STATUSES}
    assert {j["status"] for j in at_exit if j["job_id"] in handed_back} <= {"queued"}, at_exit
    assert handed_back, "the leaver finished the whole batch; nothing was handed back"
    assert len(handed_back) < len(TESTS), "the current test should finish before exiting"

    successor = fleet.start("device", "successor", sim_scale=0.2)
    waited = stack.wait_run(run_id, ORG, timeout_s=60)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()

    jobs = stack.run_view(run_id, ORG)["jobs"]
    assert [j["status"] for j in jobs] == ["passed"] * len(TESTS)
    for job in jobs:
        expected = successor if job["job_id"] in handed_back else leaver
        assert job["agent_id"] == expected.agent_id, job
    results = accepted_results(fleet.all_events())
    assert sorted(results) == sorted(j["job_id"] for j in jobs), "a job was lost"
    assert all(len(reported) == 1 for reported in results.values()), results
