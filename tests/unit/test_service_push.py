"""The push channel's use cases (PushService) over the in-memory fakes: no network."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from qgjob_backend.agent_protocol import parse_credential
from qgjob_backend.domain.models import Batch, BatchState
from qgjob_backend.schema import SuiteSubmission, Target
from qgjob_backend.services.agents import AgentCredential
from qgjob_backend.services.auth import Principal, TokenKind
from qgjob_backend.services.errors import Unauthorized
from qgjob_backend.wiring import Services, assemble_services
from tests.unit.fakes import (
    FakeClock,
    MemoryArtifactStore,
    MemoryEstimateStore,
    MemoryJobQueue,
    MemoryStateStore,
    MemoryTokenStore,
    SequentialIds,
    fake_config,
)

FLEET = Principal(TokenKind.AGENT, None)


class FakeNotifier:
    """The AgentNotifier port: records posts; some connections are gone, some fail."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.gone: set[str] = set()
        self.failing: set[str] = set()

    def send(self, connection_id: str, message: Mapping[str, Any]) -> bool:
        if connection_id in self.failing:
            raise ConnectionError(f"{connection_id}: timed out")
        if connection_id in self.gone:
            return False
        self.posts.append((connection_id, dict(message)))
        return True


def wired(notifier: FakeNotifier | None) -> tuple[Services, MemoryStateStore, FakeClock]:
    store = MemoryStateStore()
    clock = FakeClock()
    services = assemble_services(
        fake_config(),
        store=store,
        queue=MemoryJobQueue(),
        artifacts=MemoryArtifactStore(),
        token_store=MemoryTokenStore(),
        estimate_store=MemoryEstimateStore(),
        clock=clock,
        new_id=SequentialIds(),
        notifier=notifier,
    )
    return services, store, clock


def register(services: Services, device_id: str) -> AgentCredential:
    registration = services.agents.register(FLEET, Target.EMULATOR, device_id, None)
    parsed = parse_credential(registration.credential)
    assert parsed is not None
    return AgentCredential(*parsed)


def batch_for(agent_id: str, batch_id: str) -> Batch:
    return Batch(
        batch_id=batch_id,
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


# ------------------------------------------------------------------ $connect


def test_connect_stores_the_connection_of_the_current_registration() -> None:
    services, store, clock = wired(FakeNotifier())
    credential = register(services, "d1")
    clock.advance(5)

    agent = services.push.connect(credential, "conn-1")

    assert agent.connection_id == "conn-1"
    stored = store.agents[credential.agent_id]
    assert (stored.connection_id, stored.last_seen) == ("conn-1", clock())


@pytest.mark.parametrize("case", ["forged", "superseded", "unknown", "offline"])
def test_connect_is_refused_without_the_current_credential(case: str) -> None:
    services, store, _ = wired(FakeNotifier())
    credential = register(services, "d1")
    if case == "forged":
        credential = AgentCredential(credential.agent_id, "not-the-secret")
    elif case == "superseded":
        register(services, "d1")  # another process registered the device since
    elif case == "unknown":
        credential = AgentCredential("emulator-nobody", credential.secret)
    else:
        assert services.agents.deregister(credential) == 0

    with pytest.raises(Unauthorized, match="register again"):
        services.push.connect(credential, "conn-1")
    assert all(a.connection_id is None for a in store.agents.values())


# --------------------------------------------------------------- $disconnect


def test_disconnect_forgets_the_connection_but_not_a_newer_one() -> None:
    services, store, _ = wired(FakeNotifier())
    credential = register(services, "d1")
    services.push.connect(credential, "conn-1")
    services.push.connect(credential, "conn-2")  # reconnected before the old one closed

    assert services.push.disconnect("conn-1") is False
    assert store.agents[credential.agent_id].connection_id == "conn-2"
    assert services.push.disconnect("conn-2") is True
    assert store.agents[credential.agent_id].connection_id is None
    assert services.push.disconnect("conn-2") is False  # API Gateway may repeat it


# ---------------------------------------------------------- waking the agents


def test_each_assigned_batch_is_pushed_to_its_agents_connection() -> None:
    notifier = FakeNotifier()
    services, _, _ = wired(notifier)
    first, second, offline = (register(services, d) for d in ("d1", "d2", "d3"))
    services.push.connect(first, "conn-1")
    services.push.connect(second, "conn-2")

    services.push.batches_assigned(
        [
            batch_for(first.agent_id, "b1"),
            batch_for(second.agent_id, "b2"),
            batch_for(offline.agent_id, "b3"),  # never connected: its safety poll finds it
        ]
    )

    assert sorted(notifier.posts) == [
        ("conn-1", {"type": "batch", "batch_id": "b1"}),
        ("conn-2", {"type": "batch", "batch_id": "b2"}),
    ]


def test_a_gone_connection_is_forgotten_and_a_failing_one_spares_the_others() -> None:
    notifier = FakeNotifier()
    services, store, _ = wired(notifier)
    gone, failing, fine = (register(services, d) for d in ("d1", "d2", "d3"))
    for credential, connection in ((gone, "c-gone"), (failing, "c-fail"), (fine, "c-ok")):
        services.push.connect(credential, connection)
    notifier.gone.add("c-gone")
    notifier.failing.add("c-fail")

    services.push.batches_assigned(
        [batch_for(a.agent_id, f"b-{a.agent_id}") for a in (gone, failing, fine)]
    )

    assert notifier.posts == [("c-ok", {"type": "batch", "batch_id": f"b-{fine.agent_id}"})]
    assert store.agents[gone.agent_id].connection_id is None  # 410: forgotten
    assert store.agents[failing.agent_id].connection_id == "c-fail"  # kept: may be transient


def test_without_a_notifier_nothing_is_pushed_and_connect_still_works() -> None:
    services, store, _ = wired(None)
    credential = register(services, "d1")
    services.push.connect(credential, "conn-1")

    services.push.batches_assigned([batch_for(credential.agent_id, "b1")])  # no error

    assert services.push.enabled is False
    assert store.agents[credential.agent_id].connection_id == "conn-1"


def test_a_plan_that_commits_a_batch_wakes_its_idle_agent() -> None:
    # The production wiring: DispatchService's on_assigned is PushService.batches_assigned.
    notifier = FakeNotifier()
    services, _, _ = wired(notifier)
    credential = register(services, "d1")
    services.push.connect(credential, "conn-1")
    suite = SuiteSubmission(
        org_id="acme", app_version_id="v1", target=Target.EMULATOR, test_paths=["t/a.spec.js"]
    )
    services.submissions.submit("acme", suite)
    assert notifier.posts == []  # a submit only asks for a plan

    committed = services.dispatcher.plan()

    assert [b.agent_id for b in committed] == [credential.agent_id]
    assert notifier.posts == [("conn-1", {"type": "batch", "batch_id": committed[0].batch_id})]
