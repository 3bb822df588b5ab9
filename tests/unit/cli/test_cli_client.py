"""ApiClient: auth header, JSON bodies, error mapping to typed exceptions, bounded retries."""

from __future__ import annotations

import json
import socket

import pytest
import requests
import responses

from qgjob.agent_protocol import BatchView, LeaseResponse
from qgjob.client import (
    ApiClient,
    ApiError,
    AuthError,
    Conflict,
    InvalidInput,
    NotFound,
    ServerError,
    Unreachable,
)
from qgjob.errors import EXIT_INFRA, EXIT_USAGE

BASE = "http://qgjob.test/Prod"


class Sleeps:
    """Records the delays instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sleeps: Sleeps) -> ApiClient:
    return ApiClient(BASE + "/", "tok-123", retries=3, sleep=sleeps)


@responses.activate
def test_sends_bearer_token_and_json_body(client: ApiClient) -> None:
    responses.post(
        f"{BASE}/runs", json={"run_id": "r1", "job_ids": ["j1"], "status": "queued"}, status=201
    )
    answer = client.submit_run({"org_id": "acme", "test_paths": ["a.spec.ts"]})

    assert answer == {"run_id": "r1", "job_ids": ["j1"], "status": "queued"}
    request = responses.calls[0].request
    assert request.headers["Authorization"] == "Bearer tok-123"
    assert request.headers["User-Agent"].startswith("qgjob-cli/")
    assert json.loads(request.body or b"") == {"org_id": "acme", "test_paths": ["a.spec.ts"]}


@responses.activate
def test_health_without_token_sends_no_authorization(sleeps: Sleeps) -> None:
    responses.get(f"{BASE}/health", json={"status": "ok", "version": "1"})
    answer = ApiClient(BASE, None, sleep=sleeps).health()
    assert answer["status"] == "ok"
    assert "Authorization" not in responses.calls[0].request.headers


@responses.activate
def test_path_segments_are_quoted(client: ApiClient) -> None:
    responses.get(f"{BASE}/jobs/a%2Fb%20c", json={"job_id": "a/b c"})
    assert client.get_job("a/b c") == {"job_id": "a/b c"}


@pytest.mark.parametrize(
    ("status", "kind", "exit_code"),
    [
        (400, InvalidInput, EXIT_USAGE),
        (404, NotFound, EXIT_USAGE),
        (409, Conflict, EXIT_USAGE),
        (413, InvalidInput, EXIT_USAGE),
        (422, InvalidInput, EXIT_USAGE),
        (401, AuthError, EXIT_INFRA),
        (403, AuthError, EXIT_INFRA),
    ],
)
@responses.activate
def test_client_errors_map_to_typed_exceptions_without_retry(
    client: ApiClient, sleeps: Sleeps, status: int, kind: type[ApiError], exit_code: int
) -> None:
    responses.post(
        f"{BASE}/runs", json={"message": "priority: Input should be <= 10"}, status=status
    )
    with pytest.raises(kind) as caught:
        client.submit_run({"priority": 11})

    assert type(caught.value) is kind
    assert caught.value.status == status
    assert caught.value.message == "priority: Input should be <= 10"
    assert caught.value.exit_code == exit_code
    assert len(responses.calls) == 1
    assert sleeps.calls == []


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        pytest.param(404, NotFound, "job x not found", id="404"),
        pytest.param(409, Conflict, "job x is running; cannot cancel", id="409"),
    ],
)
@responses.activate
def test_404_and_409_are_invalid_input(
    client: ApiClient, sleeps: Sleeps, status: int, kind: type[InvalidInput], message: str
) -> None:
    responses.post(f"{BASE}/jobs/x/cancel", json={"message": message}, status=status)
    with pytest.raises(InvalidInput) as caught:
        client.cancel_job("x")

    assert type(caught.value) is kind
    assert caught.value.status == status
    assert caught.value.message == message
    assert caught.value.exit_code == EXIT_USAGE
    assert len(responses.calls) == 1, "a 4xx is not retried"
    assert sleeps.calls == []


@responses.activate
def test_retries_5xx_with_growing_backoff_then_succeeds(client: ApiClient, sleeps: Sleeps) -> None:
    responses.get(f"{BASE}/runs/r1", json={"message": "boom"}, status=503)
    responses.get(f"{BASE}/runs/r1", json={"message": "boom"}, status=500)
    responses.get(f"{BASE}/runs/r1", json={"run_id": "r1", "finished": False})

    assert client.get_run("r1") == {"run_id": "r1", "finished": False}
    assert len(responses.calls) == 3
    assert sleeps.calls == [0.5, 1.0]


@responses.activate
def test_gives_up_after_the_configured_retries(client: ApiClient, sleeps: Sleeps) -> None:
    responses.get(f"{BASE}/metrics", json={"message": "internal error"}, status=502)

    with pytest.raises(ServerError) as caught:
        client.metrics()

    assert caught.value.status == 502
    assert caught.value.exit_code == EXIT_INFRA
    assert len(responses.calls) == 4  # 1 try + 3 retries
    assert sleeps.calls == [0.5, 1.0, 2.0]


@responses.activate
def test_backoff_is_bounded(sleeps: Sleeps) -> None:
    client = ApiClient(BASE, "t", retries=6, sleep=sleeps, backoff_max=3.0)
    responses.get(f"{BASE}/metrics", status=500)
    with pytest.raises(ServerError):
        client.metrics()
    assert sleeps.calls == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


@responses.activate
def test_429_is_retried_and_honours_retry_after(client: ApiClient, sleeps: Sleeps) -> None:
    responses.get(
        f"{BASE}/jobs/j1",
        json={"message": "slow down"},
        status=429,
        headers={"Retry-After": "4"},
    )
    responses.get(f"{BASE}/jobs/j1", json={"job_id": "j1", "status": "queued"})

    assert client.get_job("j1")["status"] == "queued"
    assert sleeps.calls == [4.0]


@responses.activate
def test_connection_errors_become_unreachable_after_retries(
    client: ApiClient, sleeps: Sleeps
) -> None:
    responses.get(f"{BASE}/jobs/j1", body=requests.ConnectionError("refused"))

    with pytest.raises(Unreachable) as caught:
        client.get_job("j1")

    assert len(responses.calls) == 4
    assert len(sleeps.calls) == 3
    assert caught.value.exit_code == EXIT_INFRA
    assert str(caught.value).startswith(f"cannot reach qgjob at {BASE}: ")
    assert "is the stack running? check --endpoint-url" in str(caught.value)


def test_connection_refused_names_the_reason(sleeps: Sleeps) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ApiClient(f"http://127.0.0.1:{port}", "t", retries=1, sleep=sleeps, timeout=2)

    with pytest.raises(Unreachable) as caught:
        client.health()

    assert "connection refused" in caught.value.reason
    assert sleeps.calls == [0.5]


@responses.activate
def test_non_json_error_body_keeps_the_text(client: ApiClient) -> None:
    responses.get(f"{BASE}/runs/r1", body="Bad Gateway from proxy", status=400)
    with pytest.raises(InvalidInput, match="Bad Gateway from proxy"):
        client.get_run("r1")


@responses.activate
def test_success_that_is_not_a_json_object_is_a_server_error(client: ApiClient) -> None:
    responses.get(f"{BASE}/runs/r1", body="<html>hello</html>", status=200)
    with pytest.raises(ServerError, match="not a JSON object"):
        client.get_run("r1")


@responses.activate
def test_result_not_finished_202_is_returned(client: ApiClient) -> None:
    body = {"job_id": "j1", "status": "running", "finished": False, "message": "not finished yet"}
    responses.get(f"{BASE}/jobs/j1/result", json=body, status=202)
    assert client.get_result("j1") == body


@responses.activate
def test_agent_endpoints_use_the_contract_paths_and_bodies(client: ApiClient) -> None:
    agent = "emulator-1"
    responses.post(
        f"{BASE}/agents/register",
        json={
            "agent_id": agent,
            "target": "emulator",
            "status": "idle",
            "batch_id": None,
            "lease_seconds": 120,
            "heartbeat_seconds": 30,
            "credential": f"qgja.{agent}.s",
        },
    )
    batch = {
        "batch_id": "b1",
        "org_id": "acme",
        "app_version_id": "v1",
        "target": "emulator",
        "install_required": True,
        "lease_expires_at": 5.0,
        "jobs": [],
    }
    responses.post(f"{BASE}/agents/{agent}/heartbeat", json={"agent_id": agent})
    responses.post(f"{BASE}/agents/{agent}/lease", json={"batch": None, "wait_s": 300})
    responses.post(f"{BASE}/agents/{agent}/lease", json={"batch": batch})
    responses.post(f"{BASE}/agents/{agent}/batches/b1/installed", body=b"")
    responses.post(f"{BASE}/agents/{agent}/jobs/j1/start", json={"job_id": "j1"})
    responses.post(f"{BASE}/agents/{agent}/jobs/j1/result", json={"job_id": "j1"})
    responses.post(f"{BASE}/agents/{agent}/batches/b1/complete", json={"requeued": 0})
    responses.post(f"{BASE}/agents/{agent}/deregister", json={"requeued": 2})

    client.register("emulator", "1", {"org_id": "acme", "app_version_id": "v1"})
    client.heartbeat(agent)
    assert client.lease(agent) == LeaseResponse(batch=None, wait_s=300)
    assert client.lease(agent).batch == BatchView.model_validate(batch)
    assert client.installed(agent, "b1") == {}
    client.start_job(agent, "j1", "b1")
    client.report_result(agent, "j1", "b1", "failed", 1.5, "assertion", "out")
    assert client.complete_batch(agent, "b1") == {"requeued": 0}
    assert client.deregister(agent) == {"requeued": 2}

    bodies = [json.loads(c.request.body or b"{}") for c in responses.calls]
    assert bodies[0] == {
        "target": "emulator",
        "device_id": "1",
        "installed": {"org_id": "acme", "app_version_id": "v1"},
    }
    assert bodies[5] == {"batch_id": "b1"}
    assert bodies[6] == {
        "batch_id": "b1",
        "status": "failed",
        "duration_s": 1.5,
        "message": "assertion",
        "output": "out",
    }
    assert all(c.request.method == "POST" for c in responses.calls)


def test_rejects_an_endpoint_without_scheme() -> None:
    with pytest.raises(ValueError, match="http"):
        ApiClient("qgjob.test", "t")


@responses.activate
def test_agent_calls_carry_the_credential_once_registered() -> None:
    register_answer = {
        "agent_id": "emulator-1",
        "target": "emulator",
        "status": "idle",
        "batch_id": None,
        "lease_seconds": 60,
        "heartbeat_seconds": 10,
        "credential": "qgja.emulator-1.secret",
    }
    responses.post(f"{BASE}/agents/register", json=register_answer)
    responses.post(f"{BASE}/agents/emulator-1/heartbeat", json={"agent_id": "emulator-1"})
    client = ApiClient(BASE, "fleet-token", sleep=lambda _: None)

    answer = client.register("emulator", "1")
    client.use_credential(answer.credential)
    client.heartbeat("emulator-1")
    client.register("emulator", "1")  # registering again is the fleet token's job

    sent = [c.request.headers["Authorization"] for c in responses.calls]
    assert sent == [
        "Bearer fleet-token",
        "Bearer qgja.emulator-1.secret",
        "Bearer fleet-token",
    ]


@responses.activate
def test_a_malformed_lease_answer_is_a_server_error(client: ApiClient) -> None:
    responses.post(f"{BASE}/agents/a/lease", json={"batch": {"batch_id": "b1"}})
    with pytest.raises(ServerError, match="malformed lease answer"):
        client.lease("a")
