"""Agent identity, through the api handler: only an agent's current registration may act
as that agent, on every agent route (issue 8, the agent-security matrix)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from qgjob_backend.adapters.dynamodb import DynamoStateStore
from qgjob_backend.config import Config
from qgjob_backend.services.auth import TokenKind
from qgjob_backend.wiring import Services
from tests.integration.conftest import AgentCaller, ApiCaller, ApiResponse, dispatch_queue

SUITE = {
    "org_id": "acme",
    "app_version_id": "v1",
    "target": "device",
    "test_paths": ["tests/login.spec.js", "tests/cart.spec.js"],
}


@dataclass
class Scene:
    """Agent A (device-a) holds a batch; B is another agent of the same fleet; A's
    first registration was superseded by a second process on the same device."""

    caller: AgentCaller
    fleet_token: str
    right: str  # A's current credential
    superseded: str
    other: str  # B's credential
    batch_id: str
    job_ids: list[str]


@pytest.fixture
def scene(
    client: ApiCaller, agent_client: AgentCaller, aws_session: boto3.Session, config: Config
) -> Scene:
    run = client.post("/runs", SUITE).body
    assert dispatch_queue(aws_session, config) == {"batchItemFailures": []}
    superseded = agent_client.post("/agents/register", {"target": "device", "device_id": "a"})
    agent_client.post("/agents/register", {"target": "device", "device_id": "b"})
    current = agent_client.post("/agents/register", {"target": "device", "device_id": "a"})
    leased = agent_client.post("/agents/device-a/lease").body["batch"]
    assert leased is not None
    assert [j["job_id"] for j in leased["jobs"]] == run["job_ids"]
    return Scene(
        caller=agent_client,
        fleet_token=agent_client.fleet_token,
        right=current.body["credential"],
        superseded=superseded.body["credential"],
        other=agent_client.credentials["device-b"],
        batch_id=leased["batch_id"],
        job_ids=run["job_ids"],
    )


def _routes(scene: Scene) -> dict[str, tuple[str, dict[str, Any] | None]]:
    batch, job = scene.batch_id, scene.job_ids[0]
    result = {"batch_id": batch, "status": "passed", "duration_s": 1.0, "message": "forged"}
    item = {"job_id": job, "status": "passed", "duration_s": 1.0, "message": "forged"}
    return {
        "heartbeat": ("/agents/device-a/heartbeat", None),
        "lease": ("/agents/device-a/lease", None),
        "installed": (f"/agents/device-a/batches/{batch}/installed", None),
        "start": (f"/agents/device-a/jobs/{job}/start", {"batch_id": batch}),
        "result": (f"/agents/device-a/jobs/{job}/result", result),
        "error-result": (
            f"/agents/device-a/jobs/{job}/result",
            {**result, "status": "error", "message": "requeue it"},
        ),
        "complete": (f"/agents/device-a/batches/{batch}/complete", None),
        "progress": (
            f"/agents/device-a/batches/{batch}/progress",
            {
                "installed": True,
                "results": [item],
                "start": scene.job_ids[1],
            },
        ),
        "progress-complete": (
            f"/agents/device-a/batches/{batch}/progress",
            {"results": [item], "complete": True},
        ),
        "deregister": ("/agents/device-a/deregister", None),
    }


IDENTITIES: dict[str, tuple[Callable[[Scene], str | None], int]] = {
    "no-credential": (lambda s: None, 401),
    "fleet-token-only": (lambda s: s.fleet_token, 403),
    "another-agents-credential": (lambda s: s.other, 403),
    "superseded-registration": (lambda s: s.superseded, 409),
    "forged-secret": (lambda s: s.right.rsplit(".", 1)[0] + ".guessed", 409),
    "right-credential": (lambda s: s.right, 200),
}


def _state(store: DynamoStateStore, scene: Scene) -> tuple[Any, ...]:
    jobs = [(j.status, j.attempts, j.agent_id, j.message) for j in store.get_jobs(scene.job_ids)]
    batch = store.get_batch(scene.batch_id)
    agent = store.get_agent("device-a")
    assert batch is not None
    assert agent is not None
    return (
        tuple(jobs),
        batch.state,
        batch.installed_at,
        agent.status,
        agent.batch_id,
        agent.last_seen,
    )


ROUTES = [
    "heartbeat",
    "lease",
    "installed",
    "start",
    "result",
    "error-result",
    "complete",
    "progress",
    "progress-complete",
]


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("route", [*ROUTES, "deregister"])
def test_only_the_agents_current_registration_may_act_as_it(
    scene: Scene, state_store: DynamoStateStore, route: str, identity: str
) -> None:
    path, body = _routes(scene)[route]
    token_of, expected = IDENTITIES[identity]
    before = _state(state_store, scene)

    response: ApiResponse = scene.caller.post(path, body, token=token_of(scene))

    assert response.status == expected, response.body
    if expected != 200:
        assert response.body["message"]
        assert _state(state_store, scene) == before  # refused: nothing changed, not even last_seen


def test_a_credential_is_not_an_org_token_nor_a_fleet_token(
    scene: Scene, client: ApiCaller
) -> None:
    as_org = client.post("/runs", SUITE, token=scene.right)
    as_fleet = scene.caller.post(
        "/agents/register", {"target": "device", "device_id": "c"}, token=scene.right
    )

    assert as_org.status == 401
    assert "agent credential" in as_org.body["message"]
    assert as_fleet.status == 401


def test_register_shows_the_credential_once_and_later_views_never(scene: Scene) -> None:
    beat = scene.caller.post("/agents/device-a/heartbeat", token=scene.right)

    assert beat.status == 200
    assert beat.body["credential"] is None


def test_a_target_scoped_fleet_token_registers_only_its_target(
    services: Services, agent_client: AgentCaller
) -> None:
    devices_only = services.tokens.create(TokenKind.AGENT, target="device")

    refused = agent_client.post(
        "/agents/register", {"target": "emulator", "device_id": "e1"}, token=devices_only
    )
    allowed = agent_client.post(
        "/agents/register", {"target": "device", "device_id": "p1"}, token=devices_only
    )

    assert refused.status == 403
    assert "target" in refused.body["message"]
    assert allowed.status == 200
    assert allowed.body["agent_id"] == "device-p1"


def test_a_private_labs_agent_gets_only_its_orgs_batches(
    client: ApiCaller,
    services: Services,
    agent_client: AgentCaller,
    aws_session: boto3.Session,
    config: Config,
) -> None:
    globex = ApiCaller(services.tokens.create(TokenKind.ORG, "globex"))
    globex.post("/runs", {**SUITE, "org_id": "globex"})
    assert dispatch_queue(aws_session, config) == {"batchItemFailures": []}
    acme_lab = services.tokens.create(TokenKind.AGENT, "acme", target="device")
    lab = agent_client.post(
        "/agents/register", {"target": "device", "device_id": "p1"}, token=acme_lab
    )
    assert lab.status == 200
    assert (lab.body["agent_id"], lab.body["lab_org_id"]) == ("device-p1@acme", "acme")

    assert agent_client.post("/agents/device-p1@acme/lease").body["batch"] is None

    acme_run = client.post("/runs", SUITE).body
    assert dispatch_queue(aws_session, config) == {"batchItemFailures": []}
    leased = agent_client.post("/agents/device-p1@acme/lease").body["batch"]
    assert leased["org_id"] == "acme"
    assert {j["job_id"] for j in leased["jobs"]} <= set(acme_run["job_ids"])


def test_progress_over_dynamodb_applies_once_and_a_replay_answers_the_same(
    scene: Scene, state_store: DynamoStateStore
) -> None:
    first, second = scene.job_ids[0], scene.job_ids[1]
    path = f"/agents/device-a/batches/{scene.batch_id}/progress"
    opening = scene.caller.post(path, {"installed": True, "start": first}, token=scene.right)
    assert opening.status == 200, opening.body
    assert opening.body["installed"] is True
    assert opening.body["started"]["accepted"] is True
    body = {
        "results": [{"job_id": first, "status": "failed", "duration_s": 2.0, "output": "E" * 10}],
        "start": second,
    }

    once = scene.caller.post(path, body, token=scene.right)
    after_once = _state(state_store, scene)[0]
    again = scene.caller.post(path, body, token=scene.right)

    assert (once.status, again.status) == (200, 200)
    assert once.body["results"] == again.body["results"]
    assert once.body["results"][0]["accepted"] is True
    assert once.body["results"][0]["status"] == "failed"
    assert again.body["started"]["accepted"] is True
    assert _state(state_store, scene)[0] == after_once
    job = state_store.get_job(first)
    assert job is not None
    assert (job.output_excerpt, job.output_key) == ("E" * 10, None)  # it fits: no S3 object

    refused = scene.caller.post(path, {"start": second, "complete": True}, token=scene.right)
    assert refused.status == 422  # a batch that starts a job is not complete
