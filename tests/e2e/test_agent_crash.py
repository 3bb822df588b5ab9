"""An agent killed mid-batch: its unfinished jobs run elsewhere, none lost, none twice."""

from __future__ import annotations

import os
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

ORG = "acme"
TESTS = tuple(f"tests/crash/case-{n}.spec.js" for n in range(1, 7))


def test_killed_agents_jobs_finish_on_another_agent(stack: StackProcess, fleet: AgentFleet) -> None:
    run_id = stack.submit(ORG, "crash-1.0.0", "emulator", TESTS)
    # Slow simulated tests (0.4-2 s each, 2 s install) keep the batch in progress.
    victim = fleet.start("emulator", "victim", sim_scale=2.0)

    def victim_is_running_a_job() -> bool:
        jobs = stack.run_view(run_id, ORG)["jobs"]
        return any(j["status"] == "running" and j["agent_id"] == victim.agent_id for j in jobs)

    wait_until(victim_is_running_a_job, timeout_s=30, what="the victim to start a job")
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    unfinished = {
        j["job_id"]
        for j in stack.run_view(run_id, ORG)["jobs"]
        if j["status"] not in FINAL_STATUSES
    }
    assert unfinished, "the batch finished before the kill; nothing to recover"

    rescuer = fleet.start("emulator", "rescuer", sim_scale=0.2)
    waited = stack.wait_run(run_id, ORG, timeout_s=60)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()

    jobs = stack.run_view(run_id, ORG)["jobs"]
    assert [j["status"] for j in jobs] == ["passed"] * len(TESTS)
    for job in jobs:
        if job["job_id"] in unfinished:
            assert job["agent_id"] == rescuer.agent_id, job
    results = accepted_results(fleet.all_events())
    assert sorted(results) == sorted(j["job_id"] for j in jobs), "a job was lost"
    for job in jobs:
        reported = results[job["job_id"]]
        assert len(reported) == 1, f"{job['job_id']} was reported {len(reported)} times"
        assert reported[0]["agent_id"] == job["agent_id"]
