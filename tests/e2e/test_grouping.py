"""A suite for two app versions on two targets, run by two real agents per target."""

from __future__ import annotations

from collections import Counter

import pytest
from e2e_support import AgentFleet, StackProcess, accepted_results, jobs_of, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORG = "acme"
APP_VERSIONS = ("grp-1.0.0", "grp-1.1.0")
TARGETS = ("emulator", "device")
TESTS = (
    "tests/login.spec.js",
    "tests/search.spec.js",
    "tests/checkout.spec.js",
    "tests/profile.spec.js",
)


def test_each_group_runs_on_one_agent_with_one_install(
    stack: StackProcess, fleet: AgentFleet
) -> None:
    runs = {
        (app, target): stack.submit(ORG, app, target, TESTS)
        for app in APP_VERSIONS
        for target in TARGETS
    }
    # The agents come online once the dispatcher has admitted every job, so each group is
    # planned whole (an idle agent may otherwise start on a group whose jobs are arriving).
    wait_until(stack.queue_drained, timeout_s=30, what="the dispatcher to admit every job")
    for target in TARGETS:
        for n in (1, 2):
            fleet.start(target, f"grp-{n}", sim_scale=0.1)

    for run_id in runs.values():
        waited = stack.wait_run(run_id, ORG)
        assert waited.exit_code == 0, waited.describe() + fleet.logs()

    views = {key: stack.run_view(run_id, ORG) for key, run_id in runs.items()}
    agents = fleet.by_id()
    # An agent journals a result just after qgjob accepted it: stop the agents (a clean
    # exit) before reading the journals, so the last result is not missed.
    for agent in fleet.agents:
        assert agent.stop() == 0, agent.log()
    events = fleet.all_events()
    installs = Counter(e["batch_id"] for e in events if e["event"] == "install" and e["accepted"])
    for (app, target), view in views.items():
        jobs = view["jobs"]
        assert view["finished"], view
        assert view["passed"], view
        assert [j["status"] for j in jobs] == ["passed"] * len(TESTS)
        assert {(j["app_version_id"], j["target"]) for j in jobs} == {(app, target)}
        (agent_id,) = {j["agent_id"] for j in jobs}
        (batch_id,) = {j["batch_id"] for j in jobs}
        assert agents[agent_id].target == target, "an agent ran a job of another target"
        assert installs[batch_id] == 1, f"{app}/{target}: {installs[batch_id]} installs"

    all_jobs = list(jobs_of(views.values()))
    results = accepted_results(events)
    assert sorted(results) == sorted(j["job_id"] for j in all_jobs)
    assert all(len(reported) == 1 for reported in results.values()), results
    for job in all_jobs:
        assert results[job["job_id"]][0]["agent_id"] == job["agent_id"]
    groups = len(APP_VERSIONS) * len(TARGETS)
    assert sum(installs.values()) == groups
    assert stack.metrics(ORG)["installs"] == groups
