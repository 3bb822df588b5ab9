"""Urgent work first in a busy pool: a running batch yields at a test boundary.

One device agent runs a long priority-5 batch when a priority-1 job arrives. The
dispatcher asks the batch to yield (no idle agent, and the batch would end long after the
bound); the agent finishes and reports the test it runs, completes the batch (the rest
goes back without spending an attempt), runs the urgent job, then the handed-back rest.
The run views are the truth for "nothing lost"; the journal proves "never twice".
"""

from __future__ import annotations

import pytest
from e2e_support import (
    AgentFleet,
    StackProcess,
    accepted_results,
    assert_never_completed_twice,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

ORG = "globex"
TESTS = tuple(f"tests/steady/case-{n}.spec.js" for n in range(1, 11))
URGENT = ("tests/hotfix/checkout.spec.js",)


def test_a_busy_batch_yields_to_priority_1_work_after_its_current_test(
    stack: StackProcess, fleet: AgentFleet
) -> None:
    steady = stack.submit(ORG, "steady-1.0.0", "device", TESTS)
    # 10 tests of 1-5 s each: the batch runs far longer than the urgent job waits.
    worker = fleet.start("device", "worker", sim_scale=5.0)

    def worker_runs() -> bool:
        jobs = stack.run_view(steady, ORG)["jobs"]
        return any(j["status"] == "running" and j["agent_id"] == worker.agent_id for j in jobs)

    wait_until(worker_runs, timeout_s=30, what="the worker to start its batch")
    hotfix = stack.submit(ORG, "hotfix-1.0.1", "device", URGENT, "--priority", "1")

    worker.wait_for_log("asked to yield to urgent work", timeout_s=30)
    waited = stack.wait_run(hotfix, ORG, timeout_s=60)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()
    waited = stack.wait_run(steady, ORG, timeout_s=90)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()
    assert worker.stop() == 0, worker.log()

    steady_jobs = stack.run_view(steady, ORG)["jobs"]
    urgent_jobs = stack.run_view(hotfix, ORG)["jobs"]
    jobs = steady_jobs + urgent_jobs
    assert [j["status"] for j in jobs] == ["passed"] * (len(TESTS) + len(URGENT))
    assert {j["agent_id"] for j in jobs} == {worker.agent_id}
    # Handing back is not a failure: every job passed on its first attempt.
    assert {j["job_id"]: j["attempts"] for j in jobs} == {j["job_id"]: 1 for j in jobs}
    # The batch ended at a test boundary: what it had not run when it yielded ran after
    # the urgent job (the agent logged how many it handed back).
    events = worker.events()
    results = accepted_results(events)
    urgent_done = results[urgent_jobs[0]["job_id"]][0]["ts"]
    handed_back = [j["job_id"] for j in steady_jobs if results[j["job_id"]][0]["ts"] > urgent_done]
    assert handed_back, "the batch ended before the urgent job ran: nothing was handed back"
    assert f"yielding: {len(handed_back)} job(s) handed back" in worker.log(), worker.log()
    assert_never_completed_twice(jobs, fleet.all_events(), complete_journals=[worker.agent_id])
