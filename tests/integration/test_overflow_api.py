"""Overflow to BrowserStack through the real handlers on moto: a run submitted with
``overflow: browserstack`` to a busy emulator pool has waiting jobs moved to an idle
BrowserStack agent, run there, and named by the run view; without it nothing moves."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import AgentCaller, ApiCaller


def suite(app: str, tests: int, **fields: Any) -> dict[str, Any]:
    return {
        "org_id": "acme",
        "app_version_id": app,
        "target": "emulator",
        "test_paths": [f"tests/{app}/t{i:02d}.spec.js" for i in range(tests)],
        **fields,
    }


def busy_emulator_pool(client: ApiCaller, agents: AgentCaller) -> None:
    """One emulator agent, busy with a long batch of another suite."""
    assert agents.post("/agents/register", {"target": "emulator", "device_id": "e1"}).status == 200
    assert client.post("/runs", suite("other", 20)).status == 201
    assert agents.post("/agents/emulator-e1/lease").body["batch"] is not None


def run_batch(agents: AgentCaller, agent_id: str, batch: dict[str, Any]) -> None:
    batch_id = batch["batch_id"]
    assert agents.post(f"/agents/{agent_id}/batches/{batch_id}/installed").status == 200
    for job in batch["jobs"]:
        started = agents.post(
            f"/agents/{agent_id}/jobs/{job['job_id']}/start", {"batch_id": batch_id}
        )
        assert started.status == 200, started.body
        reported = agents.post(
            f"/agents/{agent_id}/jobs/{job['job_id']}/result",
            {"batch_id": batch_id, "status": "passed", "duration_s": 2.0},
        )
        assert reported.status == 200, reported.body
    assert agents.post(f"/agents/{agent_id}/batches/{batch_id}/complete").status == 200


def run_jobs(client: ApiCaller, run_id: str) -> list[dict[str, Any]]:
    page = client.get(f"/runs/{run_id}/jobs").body
    assert page["next_cursor"] is None
    jobs: list[dict[str, Any]] = page["jobs"]
    return jobs


def test_an_overflow_run_moves_jobs_to_an_idle_browserstack_agent_and_says_so(
    client: ApiCaller, agent_client: AgentCaller
) -> None:
    busy_emulator_pool(client, agent_client)
    run = client.post("/runs", suite("v1", 30, overflow="browserstack")).body
    registered = agent_client.post(
        "/agents/register", {"target": "browserstack", "device_id": "b1"}
    )
    assert registered.status == 200

    leased = agent_client.post("/agents/browserstack-b1/lease").body["batch"]

    assert leased is not None
    assert leased["target"] == "browserstack"
    run_batch(agent_client, "browserstack-b1", leased)
    view = client.get(f"/runs/{run['run_id']}").body
    assert view["overflow"] == "browserstack"
    jobs = run_jobs(client, run["run_id"])
    moved = [j for j in jobs if j["moved_from"] == "emulator"]
    assert view["moved"] == len(moved) > 0
    assert all(j["target"] == "browserstack" for j in moved)
    ran = {j["job_id"] for j in leased["jobs"]}
    assert ran <= {j["job_id"] for j in moved}
    assert all(j["status"] == "passed" for j in jobs if j["job_id"] in ran)
    stayed = [j for j in jobs if j["moved_from"] is None]
    assert stayed
    assert all(j["target"] == "emulator" and j["status"] == "queued" for j in stayed)
    assert view["counts"]["passed"] == len(ran)
    assert sum(view["counts"].values()) == 30  # the counters still add up to the suite


def test_without_the_flag_nothing_moves(client: ApiCaller, agent_client: AgentCaller) -> None:
    busy_emulator_pool(client, agent_client)
    run = client.post("/runs", suite("v1", 30)).body
    registered = agent_client.post(
        "/agents/register", {"target": "browserstack", "device_id": "b1"}
    )
    assert registered.status == 200

    assert agent_client.post("/agents/browserstack-b1/lease").body["batch"] is None

    view = client.get(f"/runs/{run['run_id']}").body
    assert (view["overflow"], view["moved"]) == (None, 0)
    assert all(j["moved_from"] is None for j in run_jobs(client, run["run_id"]))


def test_a_browserstack_run_cannot_overflow_4xx_naming_the_field(client: ApiCaller) -> None:
    response = client.post("/runs", suite("v1", 1, target="browserstack", overflow="browserstack"))
    assert response.status == 422  # as every invalid body (see test_api_contract)
    assert "overflow" in response.body["message"]
    assert "a browserstack run cannot overflow" in response.body["message"]
    single = client.post(
        "/jobs",
        {"org_id": "acme", "app_version_id": "v1", "test_path": "t.spec.js", "overflow": "x"},
    )
    assert single.status == 422
    assert "overflow" in single.body["message"]
