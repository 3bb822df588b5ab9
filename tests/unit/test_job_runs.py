"""`attempts` in a job's view: how many times its test was started (issue 11 item 9: it
read 0 for a job that ran once). The domain keeps `attempts` as the infrastructure
attempts spent; `Job.runs` is what the API shows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from qgjob_backend.domain.models import Job
from qgjob_backend.handlers.api_models import JobView
from qgjob_backend.schema import JobStatus, Target

QUEUED = Job(
    job_id="j1",
    run_id="r1",
    org_id="acme",
    app_version_id="v1",
    target=Target.EMULATOR,
    test_path="tests/a.spec.js",
    priority=5,
    status=JobStatus.QUEUED,
    created_at=1.0,
    updated_at=1.0,
    timeout_s=600,
    max_attempts=3,
)
FAILED_TRY: dict[str, Any] = {"attempt": 1, "agent_id": "emulator-a", "status": "failed"}


@pytest.mark.parametrize(
    ("job", "runs"),
    [
        (QUEUED, 0),
        (replace(QUEUED, status=JobStatus.ASSIGNED, agent_id="emulator-a"), 0),
        (replace(QUEUED, status=JobStatus.RUNNING, started_at=2.0), 1),
        (replace(QUEUED, status=JobStatus.PASSED, started_at=2.0, finished_at=3.0), 1),
        (replace(QUEUED, status=JobStatus.CANCELLED, finished_at=3.0), 0),  # never started
        (replace(QUEUED, status=JobStatus.CANCELLED, started_at=2.0, finished_at=3.0), 1),
        # an infrastructure error sent it back once: queued again, then it ran and passed
        (replace(QUEUED, attempts=1), 1),
        (replace(QUEUED, attempts=1, status=JobStatus.PASSED, started_at=5.0), 2),
        # failed, re-run (a try recorded), passed: flaky, two runs
        (replace(QUEUED, tries=[FAILED_TRY], status=JobStatus.PASSED, started_at=5.0), 2),
        # the last attempt errored as the agent reported it: 2 spent before, this one 3rd
        (replace(QUEUED, attempts=2, status=JobStatus.ERROR, started_at=9.0), 3),
        # a lost agent's job out of attempts: the requeue counted the last run already
        (replace(QUEUED, attempts=3, status=JobStatus.ERROR, started_at=9.0), 3),
    ],
)
def test_runs_counts_each_start_once(job: Job, runs: int) -> None:
    assert job.runs == runs
    assert JobView.of(job).attempts == runs
