"""Metrics: counted where the facts are known, once each, and written as EMF per flush.

The services get a `MetricBuffer` (the production buffer without its writer) through the
production wiring; the handlers' own metrics are read from the EMF lines they write.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest

from qgjob_backend import observability as obs
from qgjob_backend.domain.models import Agent, AgentStatus, AppRef
from qgjob_backend.observability import EmfMetrics, MetricBuffer, report_pools
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.agents import ReportedResult
from tests.unit.fakes import FakeClock, MemoryServices, build_memory_services
from tests.unit.test_services import SETTINGS, ids, lease, register, submit_and_admit


@pytest.fixture
def metrics() -> MetricBuffer:
    return MetricBuffer()


@pytest.fixture
def svc(metrics: MetricBuffer) -> MemoryServices:
    return build_memory_services(SETTINGS, FakeClock(1_000_000.0), metrics=metrics)


def _passed(job_id: str) -> ReportedResult:
    return ReportedResult(job_id, JobStatus.PASSED, 1.0)


def test_a_finished_job_and_an_install_count_once_even_when_reports_are_replayed(
    svc: MemoryServices, metrics: MetricBuffer
) -> None:
    submit_and_admit(svc)
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    batch_id = leased.batch.batch_id
    first, second, third = ids(leased)
    credential = svc.as_agent.credential(agent_id)

    call: dict[str, Any] = {"installed": True, "start": first}
    svc.agents.progress(credential, batch_id, **call)
    svc.agents.progress(credential, batch_id, **call)  # a retried delivery
    call = {"results": (_passed(first),), "start": second}
    svc.agents.progress(credential, batch_id, **call)
    svc.agents.progress(credential, batch_id, **call)
    error = ReportedResult(second, JobStatus.ERROR, 1.0, "device lost", retryable=False)
    svc.agents.progress(credential, batch_id, results=(error,), start=third)

    emulator = Target.EMULATOR.value
    assert metrics.total(obs.INSTALLS, target=emulator) == 1
    assert metrics.total(obs.JOBS_FINISHED, target=emulator, status="passed") == 1
    assert metrics.total(obs.JOBS_FINISHED, target=emulator, status="error") == 1
    assert metrics.names() == {
        obs.INSTALLS,
        obs.JOBS_FINISHED,
        obs.QUEUE_DEPTH,
        obs.OLDEST_QUEUED_AGE,
        obs.AGENTS_ONLINE,
        obs.AGENTS_IDLE,
        obs.AGENTS_BUSY,
    }


def test_a_plan_reports_each_pool_from_what_it_read(
    svc: MemoryServices, metrics: MetricBuffer
) -> None:
    clock = svc.clock
    submit_and_admit(svc)  # three emulator jobs
    clock.advance(40)
    register(svc, "d1")
    register(svc, "d2")
    metrics.take()  # the registrations' plans: not this test's

    svc.plan_pending()

    emulator = Target.EMULATOR.value
    # The plan read three queued emulator jobs submitted 40 s ago, and two idle agents.
    assert metrics.values(obs.QUEUE_DEPTH, target=emulator) == [3]
    assert metrics.values(obs.OLDEST_QUEUED_AGE, target=emulator) == [40]
    assert metrics.values(obs.AGENTS_ONLINE, target=emulator) == [2]
    assert metrics.values(obs.AGENTS_IDLE, target=emulator) == [2]
    assert metrics.values(obs.AGENTS_BUSY, target=emulator) == [0]
    for other in (Target.DEVICE.value, Target.BROWSERSTACK.value):
        assert metrics.values(obs.QUEUE_DEPTH, target=other) == [0]
        assert metrics.values(obs.AGENTS_ONLINE, target=other) == []  # not read: no work


def test_an_agent_counts_online_while_busy_or_idle_and_recently_seen() -> None:
    metrics = MetricBuffer()

    def agent(name: str, status: AgentStatus, last_seen: float, batch: str | None) -> Agent:
        return Agent(name, Target.DEVICE, name, status, last_seen, 0.0, batch_id=batch)

    pools = {
        Target.DEVICE: [
            agent("busy-silent", AgentStatus.BUSY, 0.0, "b1"),  # heartbeats keep the lease
            agent("idle-fresh", AgentStatus.IDLE, 95.0, None),
            agent("idle-stale", AgentStatus.IDLE, 10.0, None),
            agent("offline", AgentStatus.OFFLINE, 99.0, None),
            replace(agent("idle-drained", AgentStatus.IDLE, 99.0, None), drained_at=50.0),
            replace(agent("busy-drained", AgentStatus.BUSY, 0.0, "b2"), drained_at=50.0),
        ]
    }
    report_pools(metrics, {Target.DEVICE: []}, pools, now=100.0, fresh_after=90.0)
    device = Target.DEVICE.value
    # A drained agent finishes its batch (busy) but takes no new work (not idle).
    assert metrics.values(obs.AGENTS_BUSY, target=device) == [2]
    assert metrics.values(obs.AGENTS_IDLE, target=device) == [1]
    assert metrics.values(obs.AGENTS_ONLINE, target=device) == [3]
    assert metrics.values(obs.OLDEST_QUEUED_AGE, target=device) == [0]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.blobs: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.blobs.append(json.loads(record.getMessage()))


@pytest.fixture
def emf_lines() -> Any:
    lines = _Lines()
    emf_log = logging.getLogger("qgjob.metrics")
    emf_log.addHandler(lines)
    yield lines.blobs
    emf_log.removeHandler(lines)


def test_a_flush_writes_one_emf_line_per_dimension_set_then_nothing(
    emf_lines: list[dict[str, Any]],
) -> None:
    metrics = EmfMetrics(namespace="qgjob/test")
    metrics.count(obs.JOBS_FINISHED, target="device", status="passed")
    metrics.count(obs.JOBS_FINISHED, target="device", status="passed")
    metrics.count(obs.JOBS_FINISHED, target="device", status="failed")
    metrics.observe(obs.PLAN_DURATION, 12.5, obs.MILLISECONDS)
    metrics.observe(obs.PLAN_DURATION, 7.0, obs.MILLISECONDS)

    assert metrics.flush() == 3
    assert metrics.flush() == 0  # flushed once: the next invocation starts empty
    by_dimensions = {
        tuple(sorted((k, b[k]) for k in b["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0])): b
        for b in emf_lines
    }
    passed = by_dimensions[(("status", "passed"), ("target", "device"))]
    assert passed["JobsFinished"] == [2.0]
    directive = passed["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "qgjob/test"
    assert directive["Metrics"] == [{"Name": "JobsFinished", "Unit": "Count"}]
    assert by_dimensions[(("status", "failed"), ("target", "device"))]["JobsFinished"] == [1.0]
    plan = by_dimensions[()]
    assert plan["PlanDuration"] == [12.5, 7.0]
    assert plan["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "PlanDuration", "Unit": "Milliseconds"}
    ]


def test_no_metric_has_more_than_two_dimensions(svc: MemoryServices, metrics: MetricBuffer) -> None:
    """Each distinct dimension set is a billed custom metric: target and status at most."""
    submit_and_admit(svc)
    agent_id = register(svc, installed=AppRef("acme", "v1"))
    leased = lease(svc, agent_id)
    credential = svc.as_agent.credential(agent_id)
    (first, *_) = ids(leased)
    svc.agents.progress(credential, leased.batch.batch_id, installed=True, start=first)
    svc.agents.progress(credential, leased.batch.batch_id, results=(_passed(first),))
    for dimensions in metrics.take():
        assert {name for name, _ in dimensions} <= {"target", "status"}


def test_a_job_back_in_the_queue_waits_from_its_return_not_its_submit(
    svc: MemoryServices,
) -> None:
    (first, second, _) = submit_and_admit(svc)
    submitted = svc.store.get_job(first)
    assert submitted is not None
    now = submitted.created_at + 600
    # Back in the queue 30 s ago after an agent ran it (lost lease, or a re-run).
    returned = replace(submitted, last_agent_id="emulator-d1", updated_at=now - 30)
    waiting = svc.store.get_job(second)
    assert waiting is not None
    metrics = MetricBuffer()
    report_pools(metrics, {Target.EMULATOR: [returned]}, {}, now, now)
    assert metrics.values(obs.OLDEST_QUEUED_AGE, target="emulator") == [30]
    report_pools(metrics, {Target.EMULATOR: [returned, waiting]}, {}, now, now)
    assert metrics.values(obs.OLDEST_QUEUED_AGE, target="emulator")[-1] == 600
