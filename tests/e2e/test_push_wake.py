"""An idle agent is woken by the push channel: a job submitted while it waits starts within
seconds, although the agent would not poll for a minute (and its safety poll is 5 minutes).

The agent runs with ``--poll-seconds 60``; once it logs that it waits for a push, its only
other leases (at registration and when its connection came up) are behind it, so a start
within the bound below can only come from the dispatcher's push.
"""

from __future__ import annotations

from e2e_support import AgentFleet, StackProcess, wait_until

POLL_SECONDS = 60.0
# Generous for a loaded 2-core machine, and far below the poll interval.
START_BOUND_S = 15.0
JOBS = 3


def job_view(stack: StackProcess, job_id: str) -> dict[str, object]:
    response = stack.api("GET", f"/jobs/{job_id}", stack.token("acme"))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_a_job_submitted_to_an_idle_agent_starts_because_of_the_push(
    stack: StackProcess, fleet: AgentFleet
) -> None:
    agent = fleet.start("device", "push-1", sim_scale=0.01, poll_seconds=POLL_SECONDS)
    agent.wait_for_log("push channel connected")
    agent.wait_for_log("idle: waiting for a push")

    latencies = []
    for n in range(JOBS):
        result = stack.cli.submit(
            token=stack.token("acme"), org_id="acme", app_version_id=f"push-v{n}",
            target="device", test_paths=[f"tests/push_{n}.spec.js"],
        )  # fmt: skip
        assert result.exit_code == 0, result.describe()
        (job_id,) = result.json()["job_ids"]
        view = wait_until(
            lambda job_id=job_id: (v := job_view(stack, job_id))["status"] == "passed" and v,
            timeout_s=START_BOUND_S * 2,
            what=f"job {job_id} to pass",
        )
        latencies.append(float(view["started_at"]) - float(view["created_at"]))  # type: ignore[arg-type]

    assert max(latencies) < START_BOUND_S, latencies
    # Once connected it never fell back to polling (before, it may have: the first lease
    # can come back before the connection is up).
    after_connect = agent.log().split("idle: waiting for a push", 1)[1]
    assert "polling every" not in after_connect, agent.log()
