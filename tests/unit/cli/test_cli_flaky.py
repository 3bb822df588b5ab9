"""Flaky tests in the CLI: JUnit's Surefire marks, --fail-on exit codes, status text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import responses

from qgjob import render
from qgjob.cli import run_exit_code
from qgjob.junit import junit_xml
from tests.unit.cli.test_cli_commands import (
    BASE,
    SUBMIT,
    FakeClock,
    invoke,
    job_view,
    run_view,
    serve_jobs,
    submitted,
)

TRY = {
    "attempt": 1,
    "agent_id": "emulator-d1",
    "batch_id": "b1",
    "status": "failed",
    "duration_s": 1.0,
    "message": "assertion failed",
    "output": "expected 1 got 2",
    "finished_at": 1.0,
}


def flaky_job(**extra: Any) -> dict[str, Any]:
    return job_view("j1", "tests/a.spec.ts", "passed", flaky=True, tries=[TRY], **extra)


def run_of(jobs: list[dict[str, Any]], flaky: int) -> dict[str, Any]:
    return {**run_view(jobs), "flaky": flaky, "jobs": jobs}


def test_a_flaky_pass_is_one_flaky_failure_per_failed_try() -> None:
    root = ET.fromstring(junit_xml(run_of([flaky_job()], 1)))  # noqa: S314 - our own report

    (case,) = root.iter("testcase")
    assert case.find("failure") is None
    (flaky,) = case.findall("flakyFailure")
    assert flaky.get("message") == "try 1 on agent emulator-d1: assertion failed"
    assert flaky.get("type") == "failed"
    assert flaky.findtext("stackTrace") == "try 1 on agent emulator-d1: assertion failed"
    assert flaky.findtext("system-out") == "expected 1 got 2"
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0")


def test_a_failure_after_re_runs_has_its_failure_and_a_rerun_failure_per_try() -> None:
    job = job_view("j1", "tests/a.spec.ts", "failed", message="again", tries=[TRY, TRY])
    root = ET.fromstring(junit_xml(run_of([job], 0)))  # noqa: S314 - our own report

    (case,) = root.iter("testcase")
    assert case.find("failure") is not None
    assert len(case.findall("rerunFailure")) == 2
    assert case.findall("flakyFailure") == []


def test_a_plain_pass_has_no_marks() -> None:
    root = ET.fromstring(junit_xml(run_of([job_view("j1", "a", "passed")], 0)))  # noqa: S314 - our own report
    (case,) = root.iter("testcase")
    assert list(case) == []


@pytest.mark.parametrize(
    ("fail_on", "flaky", "passed", "expected"),
    [
        ("failure", 1, True, 0),
        ("flaky", 1, True, 1),
        ("flaky", 0, True, 0),
        ("failure", 0, False, 1),
        ("never", 0, False, 0),
        ("never", 2, True, 0),
    ],
)
def test_fail_on(fail_on: str, flaky: int, passed: bool, expected: int) -> None:
    run = {"finished": True, "passed": passed, "flaky": flaky}
    assert run_exit_code(run, fail_on) == expected


def test_status_text_marks_flaky_jobs_and_counts_them() -> None:
    run = run_of([flaky_job()], 1)
    text = render.run_text(run)
    assert "passed (flaky)" in text
    assert "1 flaky" in text
    job_text = render.job_text(flaky_job())
    assert "flaky     yes: passed after a failed try" in job_text
    assert "try 1     failed on emulator-d1: assertion failed" in job_text


@responses.activate
@pytest.mark.parametrize(("fail_on", "code"), [("failure", 0), ("flaky", 1)])
def test_submit_wait_fail_on_flaky(tmp_path: Path, fail_on: str, code: int) -> None:
    jobs = [flaky_job()]
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json={**run_view(jobs), "flaky": 1})
    serve_jobs(jobs)
    junit = tmp_path / "junit.xml"

    args = [*SUBMIT, "--test", "tests/a.spec.ts", "--retries", "2", "--wait"]
    result = invoke([*args, "--fail-on", fail_on, "--junit", str(junit)], FakeClock())

    assert result.exit_code == code, result.output
    case = ET.parse(junit).getroot().find("testsuite/testcase")  # noqa: S314 - our own report
    assert case is not None
    assert len(case.findall("flakyFailure")) == 1
