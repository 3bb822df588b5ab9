"""The push channel end to end in one process: the local WebSocket gateway (read from
template.yaml) invoking the push handler with API Gateway's WebSocket events, the agents'
`PushListener`, and the dispatcher's notifier posting through botocore's
``apigatewaymanagementapi`` to the emulated Management API. State on moto."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from infra.events import LambdaContext
from infra.runtime import LambdaFunction
from infra.template import LocalTemplate
from infra.websocket_gateway import WebSocketGateway, websocket_api
from qgjob.push import PushListener
from qgjob_backend.adapters.push import ApiGatewayNotifier
from qgjob_backend.config import Config
from qgjob_backend.domain.models import Batch, BatchState
from qgjob_backend.handlers import push as push_handler
from qgjob_backend.ports import StateStore
from qgjob_backend.schema import Target
from qgjob_backend.services.auth import Principal, TokenKind
from qgjob_backend.wiring import Services, build_services
from tests.integration.conftest import ACCOUNT, REGION

T = TypeVar("T")
DEADLINE_S = 10.0


def eventually(probe: Callable[[], T | None], what: str) -> T:
    """Polls ``probe`` until it is truthy (the gateway and listener run on their threads)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Channel:
    gateway: WebSocketGateway
    services: Services
    session: boto3.Session
    store: StateStore

    def register(self, device_id: str = "d1") -> str:
        fleet = Principal(TokenKind.AGENT, None)
        registration = self.services.agents.register(fleet, Target.EMULATOR, device_id, None)
        return registration.credential

    def connection_of(self, agent_id: str) -> str | None:
        agent = self.store.get_agent(agent_id)
        return agent.connection_id if agent else None

    def notifier(self) -> ApiGatewayNotifier:
        client = self.session.client(
            "apigatewaymanagementapi", endpoint_url=self.gateway.management_endpoint
        )
        return ApiGatewayNotifier(client)


def start_gateway(**limits: Any) -> WebSocketGateway:
    spec = websocket_api(LocalTemplate.from_file(region=REGION, account_id=ACCOUNT))
    assert spec is not None
    function = LambdaFunction(
        "qgjob-test-PushFunction",
        push_handler.lambda_handler,
        timeout_s=10,
        memory_mb=512,
        region=REGION,
        account_id=ACCOUNT,
    )
    gateway = WebSocketGateway(spec, {"PushFunction": function}, account_id=ACCOUNT, **limits)
    gateway.start()
    return gateway


@pytest.fixture
def channel_factory(
    config: Config, aws_session: boto3.Session, state_store: StateStore
) -> Iterator[Callable[..., Channel]]:
    gateways: list[WebSocketGateway] = []

    def make(**limits: Any) -> Channel:
        gateway = start_gateway(**limits)
        gateways.append(gateway)
        pointed = dataclasses.replace(config, push_endpoint=gateway.management_endpoint)
        services = build_services(pointed, aws_session)
        push_handler.services.use(services)
        return Channel(gateway, services, aws_session, state_store)

    yield make
    for gateway in gateways:
        gateway.stop()
    push_handler.services.use(None)


@pytest.fixture
def channel(channel_factory: Callable[..., Channel]) -> Channel:
    return channel_factory()


@pytest.fixture
def listeners() -> Iterator[list[PushListener]]:
    started: list[PushListener] = []
    yield started
    for listener in started:
        listener.stop()


def listen(listeners: list[PushListener], url: str, credential: str) -> PushListener:
    listener = PushListener(url, credential, backoff_base_s=0.05, backoff_max_s=0.2)
    listener.start()
    listeners.append(listener)
    return listener


def agent_id_of(credential: str) -> str:
    return credential.removeprefix("qgja.").rpartition(".")[0]


def batch_for(agent_id: str) -> Batch:
    return Batch(
        batch_id="b1",
        agent_id=agent_id,
        group_key="acme/v1/emulator",
        org_id="acme",
        app_version_id="v1",
        target=Target.EMULATOR,
        job_ids=["j1"],
        state=BatchState.ACTIVE,
        created_at=0.0,
        lease_expires_at=60.0,
        install_required=True,
    )


def never() -> bool:
    return False


# ------------------------------------------------------------------------ tests


def test_the_template_websocket_api_is_what_the_gateway_serves() -> None:
    spec = websocket_api(LocalTemplate.from_file())
    assert spec is not None
    assert spec.routes == {
        "$connect": "PushFunction",
        "$disconnect": "PushFunction",
        "$default": "PushFunction",
    }
    assert spec.two_way == frozenset({"$default"})
    assert (spec.stage, spec.route_selection_expression) == ("v1", "$request.body.action")


def test_an_agent_connects_with_its_credential_and_hears_of_its_batch(
    channel: Channel, listeners: list[PushListener]
) -> None:
    credential = channel.register()
    agent_id = agent_id_of(credential)
    listener = listen(listeners, channel.gateway.url, credential)

    connection_id = eventually(lambda: channel.connection_of(agent_id), "the stored connection")
    # $connect stores it during the handshake; the gateway knows it once the handshake is
    # done (a post before then is Gone, as in AWS).
    eventually(lambda: channel.gateway.connection_ids() == [connection_id], "the open socket")
    assert listener.wait(DEADLINE_S, fallback_s=DEADLINE_S, stop=never)  # the connect wake
    listener.clear()

    channel.services.push.batches_assigned([batch_for(agent_id)])

    assert listener.wait(DEADLINE_S, fallback_s=DEADLINE_S, stop=never)
    assert listener.pushes == 1


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer qgj_agent_fleet-token", "Bearer qgja.emulator-d1.forged", "Basic abc"],
)
def test_a_connection_without_the_agent_credential_is_refused(
    channel: Channel, authorization: str | None
) -> None:
    channel.register()
    headers = {"Authorization": authorization} if authorization else None

    with pytest.raises(InvalidStatus) as refused:
        connect(channel.gateway.url, additional_headers=headers, proxy=None).close()

    assert refused.value.response.status_code == 401
    assert channel.gateway.connection_ids() == []
    assert channel.connection_of("emulator-d1") is None


def test_a_superseded_registration_cannot_connect(channel: Channel) -> None:
    old = channel.register()
    channel.register()  # another process registered the device

    with pytest.raises(InvalidStatus) as refused:
        connect(channel.gateway.url, additional_headers={"Authorization": f"Bearer {old}"})

    assert refused.value.response.status_code == 401


def test_closing_runs_disconnect_and_a_post_to_it_is_gone(
    channel: Channel, listeners: list[PushListener]
) -> None:
    credential = channel.register()
    agent_id = agent_id_of(credential)
    listener = listen(listeners, channel.gateway.url, credential)
    connection_id = eventually(lambda: channel.connection_of(agent_id), "the stored connection")
    eventually(lambda: channel.gateway.connection_ids() == [connection_id], "the open socket")
    notifier = channel.notifier()
    assert notifier.send(connection_id, {"type": "batch", "batch_id": "b0"})

    listener.stop()

    eventually(lambda: channel.connection_of(agent_id) is None, "$disconnect to clear it")
    assert notifier.send(connection_id, {"type": "batch", "batch_id": "b1"}) is False  # 410


def test_the_gateway_ends_old_connections_and_the_listener_reconnects(
    channel_factory: Callable[..., Channel], listeners: list[PushListener]
) -> None:
    channel = channel_factory(max_connection_s=0.3)  # API Gateway: 2 hours
    credential = channel.register()
    agent_id = agent_id_of(credential)
    listener = listen(listeners, channel.gateway.url, credential)
    first = eventually(lambda: channel.connection_of(agent_id), "the first connection")

    eventually(lambda: listener.connections >= 2, "a second connection")
    second = eventually(
        lambda: (c := channel.connection_of(agent_id)) != first and c, "the new connection id"
    )

    assert second != first
    listener.clear()
    channel.services.push.batches_assigned([batch_for(agent_id)])
    assert listener.wait(DEADLINE_S, fallback_s=DEADLINE_S, stop=never)


def test_a_ping_is_answered_with_a_pong(channel: Channel) -> None:
    credential = channel.register()
    headers = {"Authorization": f"Bearer {credential}"}
    with connect(channel.gateway.url, additional_headers=headers, proxy=None) as socket:
        socket.send(json.dumps({"action": "ping"}))
        assert json.loads(socket.recv(timeout=DEADLINE_S)) == {"type": "pong"}
        socket.send("not even json")  # $default too
        assert json.loads(socket.recv(timeout=DEADLINE_S)) == {"type": "pong"}


def test_an_event_without_a_connection_id_is_refused(channel: Channel) -> None:
    event = {"requestContext": {"routeKey": "$connect", "eventType": "CONNECT"}}
    answer = push_handler.lambda_handler(event, _context())
    assert answer["statusCode"] == 400


def _context() -> Any:
    return LambdaContext(
        function_name="push",
        region=REGION,
        account_id=ACCOUNT,
        memory_limit_in_mb=512,
        timeout_s=10,
    )
