"""An agent killed mid-batch: its unfinished jobs run elsewhere, none lost, none twice.

The run view is the truth for "nothing lost": the victim journals an accepted result only
after qgjob accepted it, so a SIGKILL in that window leaves a result qgjob has and the
victim's journal does not. The journals prove "never completed twice".
"""

from __future__ import annotations

import os
import signal

import pytest
from e2e_support import (
    FINAL_STATUSES,
    AgentFleet,
    StackProcess,
    assert_never_completed_twice,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORG = "acme"
TESTS = tuple(f"tests/crash/case-{n}.spec.js" for n in range(1, 7))
IN_FLIGHT = frozenset({"assigned", "running"})


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

    # A result the victim sent just before dying may still be accepted, so the set of
    # unfinished jobs is read once its lease lapsed and the reaper took the batch back.
    def batch_taken_back() -> list[dict[str, object]] | None:
        jobs: list[dict[str, object]] = stack.run_view(run_id, ORG)["jobs"]
        return None if any(j["status"] in IN_FLIGHT for j in jobs) else jobs

    after_reap = wait_until(batch_taken_back, timeout_s=30, what="the reaper to requeue the batch")
    unfinished = {j["job_id"] for j in after_reap if j["status"] not in FINAL_STATUSES}
    assert unfinished, "the batch finished before the kill; nothing to recover"
    assert {j["status"] for j in after_reap if j["job_id"] in unfinished} == {"queued"}

    rescuer = fleet.start("emulator", "rescuer", sim_scale=0.2)
    waited = stack.wait_run(run_id, ORG, timeout_s=60)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()
    assert rescuer.stop() == 0, rescuer.log()  # a clean exit: its journal is complete

    # Nothing lost: qgjob has every job passed, the unfinished ones run by the rescuer.
    jobs = stack.run_view(run_id, ORG)["jobs"]
    assert [j["status"] for j in jobs] == ["passed"] * len(TESTS)
    for job in jobs:
        expected = rescuer if job["job_id"] in unfinished else victim
        assert job["agent_id"] == expected.agent_id, job
    # Never twice: at most one accepted result per job, exactly one for the rescuer's.
    assert_never_completed_twice(jobs, fleet.all_events(), complete_journals=[rescuer.agent_id])
