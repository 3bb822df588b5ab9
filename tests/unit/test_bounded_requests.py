"""A lease is constant work: the same store calls however many agents and queued jobs
exist (issue 9: planning is off the request path, only the dispatcher plans)."""

from __future__ import annotations

from typing import Any

import pytest

import qgjob_backend.services.dispatch as dispatch_module
from qgjob_backend.schema import SuiteSubmission, Target
from tests.unit.fakes import (
    CountingStore,
    FakeClock,
    PlanSpy,
    build_memory_services,
)


def _fleet(agents: int, queued: int) -> tuple[Any, CountingStore, str]:
    store = CountingStore()
    svc = build_memory_services(clock=FakeClock(1_000_000.0), store=store)
    per_run = 1000
    for start in range(0, queued, per_run):
        paths = [f"tests/t{i}.spec.js" for i in range(start, min(queued, start + per_run))]
        suite = SuiteSubmission(
            org_id="acme", app_version_id=f"v{start}", target="emulator", test_paths=paths
        )
        svc.submissions.submit("acme", suite)
    for index in range(agents):
        svc.as_agent.register(Target.DEVICE, f"d{index}", None)  # no device work: stays idle
    svc.as_agent.register(Target.EMULATOR, "probe", None)
    svc.plan_pending()  # whatever the dispatcher would do, before the measured call
    return svc, store, "emulator-probe"


@pytest.mark.parametrize(("agents", "queued"), [(10, 10), (1000, 10), (10, 10_000)])
def test_a_lease_makes_the_same_store_calls_whatever_the_fleet_and_backlog(
    agents: int, queued: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, store, probe = _fleet(agents, queued)
    spy = PlanSpy()
    monkeypatch.setattr(dispatch_module, "plan_batches", spy)
    credential = svc.as_agent.credential(probe)

    store.counting = True
    svc.agents.lease(credential)  # holds the batch the plan gave it
    store.counting = False

    assert spy.calls == []  # the lease planned nothing
    assert dict(store.calls) == {
        "get_agent": 1,  # the credential; its sign of life is fresh (registered just now)
        "get_batch": 1,
        "extend_lease": 1,
        "get_jobs": 1,
    }


@pytest.mark.parametrize(("agents", "queued"), [(10, 10), (1000, 10_000)])
def test_an_idle_lease_is_one_read_and_asks_for_no_plan(agents: int, queued: int) -> None:
    svc, store, _ = _fleet(agents, queued)
    idle = svc.as_agent.credential("device-d0")
    requests = svc.queue.plan_requests

    store.counting = True
    assert svc.agents.lease(idle) is None
    store.counting = False

    assert dict(store.calls) == {"get_agent": 1}
    assert svc.queue.plan_requests == requests


def test_a_lease_writes_a_sign_of_life_only_when_the_last_is_old() -> None:
    svc, store, _ = _fleet(agents=3, queued=10)
    idle = svc.as_agent.credential("device-d0")
    touch = svc.settings.agent_touch_seconds
    seen = store.get_agent("device-d0").last_seen

    svc.clock.advance(touch - 1)
    store.counting = True
    svc.agents.lease(idle)
    assert "touch_agent" not in store.calls
    svc.clock.advance(1)
    svc.agents.lease(idle)
    store.counting = False

    assert store.calls["touch_agent"] == 1
    assert store.get_agent("device-d0").last_seen == seen + touch
    # Well inside the offline window: the planner and the reaper still count it live.
    assert touch * 6 <= svc.settings.agent_offline_seconds


def test_an_agent_that_becomes_idle_asks_for_a_plan_and_one_going_away_does_not() -> None:
    svc = build_memory_services(clock=FakeClock(1_000_000.0))
    before = svc.queue.plan_requests
    agent = svc.as_agent.register(Target.EMULATOR, "d1", None)
    assert svc.queue.plan_requests == before + 1  # a new idle agent

    suite = SuiteSubmission(org_id="acme", app_version_id="v1", test_paths=["a.spec.js"])
    svc.submissions.submit("acme", suite)  # asks for a plan
    leased = svc.as_agent.lease(agent.agent_id)
    assert leased is not None
    requests = svc.queue.plan_requests
    svc.as_agent.complete(agent.agent_id, leased.batch.batch_id)
    assert svc.queue.plan_requests == requests + 1  # idle again

    requests = svc.queue.plan_requests
    svc.as_agent.deregister(agent.agent_id)
    assert svc.queue.plan_requests == requests  # gone: nothing to plan for


def test_a_busy_agents_heartbeat_reads_it_and_writes_only_the_batch_lease() -> None:
    svc, store, probe = _fleet(agents=10, queued=10)
    leased = svc.as_agent.lease(probe)
    assert leased is not None
    before = store.get_agent(probe)

    store.counting = True
    beat = svc.agents.heartbeat(svc.as_agent.credential(probe))
    store.counting = False

    assert beat.lease_expires_at is not None
    # No agent write: a heartbeat never rewrites the agent item or the agents' indexes.
    assert dict(store.calls) == {"get_agent": 1, "extend_lease": 1}
    assert store.get_agent(probe) == before
