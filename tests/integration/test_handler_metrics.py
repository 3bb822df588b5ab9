"""The handlers' metrics on moto: each invocation writes its EMF lines once, at its end,
with what its services counted (the production wiring, `build_services(metrics=...)`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest

from qgjob_backend.config import Config
from qgjob_backend.handlers import api, dispatcher
from qgjob_backend.wiring import Services, build_services
from tests.integration.conftest import AgentCaller, ApiCaller, dispatch_queue

SUITE = {
    "org_id": "acme",
    "app_version_id": "v9",
    "target": "device",
    "test_paths": ["tests/a.spec.js", "tests/b.spec.js"],
}


class _EmfLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.blobs: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.blobs.append(json.loads(record.getMessage()))

    def values(self, name: str, **dimensions: str) -> list[float]:
        found: list[float] = []
        for blob in self.blobs:
            (directive,) = blob["_aws"]["CloudWatchMetrics"]
            keys = set(directive["Dimensions"][0])
            wanted = all(blob[k] == v for k, v in dimensions.items() if k in blob)
            if name in blob and keys == set(dimensions) and wanted:
                found.extend(blob[name])
        return found


@pytest.fixture
def emf() -> Iterator[_EmfLines]:
    lines = _EmfLines()
    emf_log = logging.getLogger("qgjob.metrics")
    emf_log.addHandler(lines)
    yield lines
    emf_log.removeHandler(lines)


@pytest.fixture
def measured(services: Services, config: Config, aws_session: boto3.Session) -> Iterator[None]:
    """Each handler's services report to that handler's metrics, as in Lambda."""
    api.services.use(build_services(config, aws_session, metrics=api.emf_metrics))
    dispatcher.services.use(build_services(config, aws_session, metrics=dispatcher.metrics))
    yield
    api.services.use(services)
    dispatcher.services.use(services)


@pytest.mark.usefixtures("measured")
def test_a_run_counts_its_jobs_submitted_batch_and_results_once(
    client: ApiCaller, agent_client: AgentCaller, emf: _EmfLines
) -> None:
    run = client.post("/runs", SUITE)
    assert run.status == 201, run.body
    second = client.post("/runs", SUITE)  # no idempotency key: a second run
    assert second.status == 201
    assert emf.values("JobsSubmitted", target="device") == [2.0, 2.0]  # one line per submit

    agent = "device-m1"
    assert (
        agent_client.post("/agents/register", {"target": "device", "device_id": "m1"}).status == 200
    )
    leased = agent_client.post(f"/agents/{agent}/lease", {})  # dispatches the queue first
    batch = leased.body["batch"]
    assert batch is not None, leased.body
    # The plan's line: one batch for the device pool, the pool's gauges, its duration.
    assert sum(emf.values("BatchesAssigned", target="device")) == 1
    assert emf.values("AgentsOnline", target="device")[-1] == 1
    assert emf.values("PlanDuration")
    # Each job carries its run's id, the correlation id the agent echoes.
    runs = {run.body["run_id"], second.body["run_id"]}
    assert {job["correlation_id"] for job in batch["jobs"]} <= runs

    first = batch["jobs"][0]["job_id"]
    progress = {"installed": True, "start": first}
    path = f"/agents/{agent}/batches/{batch['batch_id']}/progress"
    assert agent_client.post(path, progress).status == 200
    report = {"results": [{"job_id": first, "status": "passed", "duration_s": 1.0}]}
    assert agent_client.post(path, report).status == 200
    assert agent_client.post(path, report).status == 200  # a retried delivery
    assert emf.values("Installs", target="device") == [1.0]
    assert emf.values("JobsFinished", target="device", status="passed") == [1.0]


@pytest.mark.usefixtures("measured")
def test_a_failed_plan_is_counted(
    client: ApiCaller, aws_session: boto3.Session, config: Config, emf: _EmfLines
) -> None:
    class _Broken:
        def plan(self, targets: object = None) -> list[object]:
            raise ConnectionError("DynamoDB throttled")

    assert client.post("/runs", SUITE).status == 201
    built = build_services(config, aws_session, metrics=dispatcher.metrics)
    dispatcher.services.use(replace(built, dispatcher=_Broken()))  # type: ignore[arg-type]
    response = dispatch_queue(aws_session, config)
    assert response["batchItemFailures"]  # the plan request comes back
    assert emf.values("PlanFailures") == [1.0]
    assert emf.values("PlanDuration") == []
