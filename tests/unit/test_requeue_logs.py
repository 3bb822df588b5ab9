"""Jobs that go back to the backlog are logged under their own run's correlation id: the
reaper's sweep and an agent's release log under the id of whichever call ran them, so
without these lines a run's trail would not say why its jobs waited again."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from qgjob_backend.observability import begin_invocation
from qgjob_backend.schema import JobStatus
from qgjob_backend.services import recovery
from tests.unit.fakes import FakeClock, MemoryServices, build_memory_services
from tests.unit.test_services import LEASE, SETTINGS, ids, lease, register, submit

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(SETTINGS, clock)


@pytest.fixture
def requeued() -> Iterator[Lines]:
    """Reads the 'jobs requeued' lines logged so far, formatted as Powertools does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LambdaPowertoolsFormatter())
    std = logging.getLogger(recovery.logger.name)
    level = std.level
    std.addHandler(handler)
    std.setLevel(logging.INFO)

    def read() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
        return [line for line in lines if line["message"] == "jobs requeued"]

    try:
        yield read
    finally:
        std.removeHandler(handler)
        std.setLevel(level)
        begin_invocation()  # no correlation id leaks into later tests' lines


def _two_runs_in_one_batch(svc: MemoryServices) -> tuple[str, str, dict[str, str]]:
    """Two runs of the same build: one group, so one batch holds jobs of both."""
    first = submit(svc, test_paths=["tests/a.spec.js", "tests/b.spec.js"])
    second = submit(svc, test_paths=["tests/c.spec.js", "tests/d.spec.js", "tests/e.spec.js"])
    agent_id = register(svc)
    leased = lease(svc, agent_id)
    run_of = {j.job_id: first.run.run_id for j in first.jobs}
    run_of |= {j.job_id: second.run.run_id for j in second.jobs}
    assert set(ids(leased)) == set(run_of)
    return agent_id, leased.batch.batch_id, run_of


def test_a_lapsed_lease_logs_each_runs_requeued_jobs_under_that_runs_id(
    svc: MemoryServices, clock: FakeClock, requeued: Lines
) -> None:
    agent_id, batch_id, run_of = _two_runs_in_one_batch(svc)
    clock.advance(LEASE + 1)
    begin_invocation("sweep-1")  # the reaper's own invocation id

    assert svc.reaper.sweep().requeued_jobs == 5

    lines = requeued()
    runs = sorted(set(run_of.values()))
    assert [line["correlation_id"] for line in lines] == runs
    counts = {run: sum(1 for r in run_of.values() if r == run) for run in runs}
    for line in lines:
        assert line["jobs"] == counts[line["correlation_id"]]
        assert (line["batch_id"], line["agent_id"]) == (batch_id, agent_id)
        assert "stopped heartbeating" in line["reason"]
    # A second sweep finds nothing to put back and logs nothing more.
    svc.reaper.sweep()
    assert len(requeued()) == 2


def test_a_batch_handed_back_unfinished_logs_only_the_runs_whose_jobs_went_back(
    svc: MemoryServices, requeued: Lines
) -> None:
    agent_id, batch_id, run_of = _two_runs_in_one_batch(svc)
    batch = svc.store.get_batch(batch_id)
    assert batch is not None
    order = list(batch.job_ids)
    # The agent finishes every job of one run, then hands the batch back.
    done_run = run_of[order[0]]
    for job_id in [j for j in order if run_of[j] == done_run]:
        svc.as_agent.start(agent_id, job_id, batch_id)
        svc.as_agent.report(agent_id, job_id, batch_id, JobStatus.PASSED, 1.0, None, None)

    begin_invocation("req-release")  # the agent's request carries an id of its own
    assert svc.as_agent.complete(agent_id, batch_id) == sum(
        1 for r in run_of.values() if r != done_run
    )

    lines = requeued()
    assert len(lines) == 1
    (other_run,) = set(run_of.values()) - {done_run}
    assert lines[0]["correlation_id"] == other_run
    assert lines[0]["reason"] == f"released unfinished by agent {agent_id}"
