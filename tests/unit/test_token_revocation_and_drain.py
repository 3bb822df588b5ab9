"""Revoking and rotating tokens (the cache's bound), and the dispatcher skipping drained
agents: the services over the in-memory fakes, with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from qgjob_backend.domain.models import AppRef
from qgjob_backend.domain.planner import PlanningPolicy
from qgjob_backend.observability import AGENTS_ONLINE
from qgjob_backend.schema import SuiteSubmission, Target
from qgjob_backend.services import dispatch as dispatch_module
from qgjob_backend.services.auth import TOKEN_CACHE_SECONDS, TokenKind, TokenService, hash_token
from qgjob_backend.services.dispatch import DispatchService, DispatchSettings
from qgjob_backend.services.errors import Conflict, NotFound, Unauthorized
from qgjob_backend.services.estimates import EstimateService
from tests.unit.fakes import (
    FakeClock,
    MemoryServices,
    MemoryTokenStore,
    PlanSpy,
    SequentialIds,
    build_memory_services,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(5_000.0)


@pytest.fixture
def store() -> MemoryTokenStore:
    return MemoryTokenStore()


@pytest.fixture
def tokens(store: MemoryTokenStore, clock: FakeClock) -> TokenService:
    counter = itertools.count(1)
    return TokenService(store, clock, new_secret=lambda: f"secret{next(counter)}")


def test_revocation_reaches_a_warm_cache_exactly_at_its_ttl(
    tokens: TokenService, clock: FakeClock
) -> None:
    token = tokens.create(TokenKind.ORG, "acme")
    tokens.authenticate(f"Bearer {token}")  # cached until 5000 + TTL
    clock.advance(15)

    revoked = tokens.revoke(hash_token(token))

    assert revoked.revoked_at == 5_015.0
    clock.set(5_000.0 + TOKEN_CACHE_SECONDS - 0.001)
    tokens.authenticate(f"Bearer {token}")  # still the cached check
    clock.set(5_000.0 + TOKEN_CACHE_SECONDS)
    with pytest.raises(Unauthorized):
        tokens.authenticate(f"Bearer {token}")


def test_revoking_twice_keeps_the_first_time_and_unknown_ids_are_named(
    tokens: TokenService, clock: FakeClock
) -> None:
    token_id = hash_token(tokens.create(TokenKind.AGENT, target="device"))
    tokens.revoke(token_id)
    clock.advance(30)

    with pytest.raises(Conflict, match="already revoked"):
        tokens.revoke(token_id)
    assert tokens.get(token_id).revoked_at == 5_000.0
    with pytest.raises(NotFound):
        tokens.revoke("0" * 64)
    with pytest.raises(ValueError, match="not a token id"):
        tokens.revoke("qgj_org_secret1")  # the token itself, not its id


def test_rotation_keeps_the_scope_and_links_old_to_new(
    tokens: TokenService, store: MemoryTokenStore
) -> None:
    old = tokens.create(TokenKind.AGENT, "acme", label="lab 3", target="device")

    new, replaced = tokens.rotate(hash_token(old))

    assert replaced.replaced_by == hash_token(new)
    fresh = TokenService(store, FakeClock(5_000.0))  # a container that never saw either
    principal = fresh.authenticate(f"Bearer {new}")
    assert (principal.kind, principal.org_id, principal.target) == (
        TokenKind.AGENT,
        "acme",
        Target.DEVICE,
    )
    assert store.records[hash_token(new)].label == "lab 3"
    with pytest.raises(Unauthorized):
        fresh.authenticate(f"Bearer {old}")
    with pytest.raises(Conflict, match=hash_token(new)):
        tokens.rotate(hash_token(old))
    assert len(store.records) == 2  # the refused rotation minted nothing


# ------------------------------------------------------------------ drained agents


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(clock=clock)


def _submit(svc: MemoryServices, app: str, tests: int = 3) -> list[str]:
    suite = SuiteSubmission(
        org_id="acme",
        app_version_id=app,
        target="emulator",
        test_paths=[f"tests/t{i}.spec.js" for i in range(tests)],
    )
    return [j.job_id for j in svc.submissions.submit("acme", suite).jobs]


def test_a_drained_idle_agent_gets_no_batch_and_another_agent_does(svc: MemoryServices) -> None:
    svc.as_agent.register(Target.EMULATOR, "d1", None)
    svc.as_agent.register(Target.EMULATOR, "d2", None)
    svc.store.agents["emulator-d1"].drained_at = svc.clock()
    _submit(svc, "v1")

    assert svc.as_agent.lease("emulator-d1") is None
    leased = svc.as_agent.lease("emulator-d2")
    assert leased is not None


def test_a_drained_busy_agent_is_not_planned_for(
    svc: MemoryServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Busy with v1 and soon free, it would be waited for by v1's next jobs (no second
    # install): drained, it must not be, or those jobs would wait for it forever.
    svc.as_agent.register(Target.EMULATOR, "d1", AppRef("acme", "v1"))
    _submit(svc, "v1", tests=1)
    first = svc.as_agent.lease("emulator-d1")
    assert first is not None
    svc.store.agents["emulator-d1"].drained_at = svc.clock()
    spy = PlanSpy()
    monkeypatch.setattr(dispatch_module, "plan_batches", spy)
    svc.as_agent.register(Target.EMULATOR, "d2", None)
    second = _submit(svc, "v1", tests=1)

    leased = svc.as_agent.lease("emulator-d2")

    assert [call["busy"] for call in spy.calls] == [[]] * len(spy.calls)
    assert spy.calls
    assert leased is not None
    assert leased.jobs[0].job_id == second[0]


class RecordedMetrics:
    def __init__(self) -> None:
        self.gauges: list[tuple[str, float, dict[str, str]]] = []

    def count(self, name: str, value: float = 1.0, **dimensions: str) -> None:
        return None

    def observe(self, name: str, value: float, unit: str = "Count", **dimensions: str) -> None:
        self.gauges.append((name, value, dimensions))


def test_a_drained_pool_reports_no_agent_online_so_its_alarm_fires(svc: MemoryServices) -> None:
    metrics = RecordedMetrics()
    dispatcher = DispatchService(
        svc.store,
        svc.clock,
        SequentialIds("b"),
        DispatchSettings(
            lease_seconds=120.0,
            agent_offline_seconds=600.0,
            policy=PlanningPolicy(max_batch_jobs=25),
        ),
        EstimateService(svc.estimate_store, svc.settings.default_install_seconds),
        metrics=metrics,
    )
    svc.as_agent.register(Target.EMULATOR, "d1", None)
    svc.store.agents["emulator-d1"].drained_at = svc.clock()
    _submit(svc, "v1")

    assert dispatcher.plan() == []
    online = [v for name, v, dims in metrics.gauges if name == AGENTS_ONLINE]
    assert online == [0]
