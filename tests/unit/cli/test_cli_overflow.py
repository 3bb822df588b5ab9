"""`qgjob submit --overflow browserstack|none` and what `qgjob status` says of moved jobs."""

from __future__ import annotations

import pytest
import responses

from qgjob.cli import OVERFLOW_CHOICES
from qgjob.schema import OVERFLOW_FROM, Overflow, Target
from tests.unit.cli.test_cli_commands import (
    BASE,
    SUBMIT,
    invoke,
    job_view,
    run_view,
    sent_body,
    serve_jobs,
    submitted,
)


def test_the_clis_overflow_choices_are_the_schemas() -> None:
    assert set(OVERFLOW_CHOICES) == {o.value for o in Overflow}
    assert Target.BROWSERSTACK not in OVERFLOW_FROM


@responses.activate
def test_submit_with_overflow_sends_it() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)

    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--overflow", "browserstack"])

    assert result.exit_code == 0, result.stderr
    assert sent_body()["overflow"] == "browserstack"


@responses.activate
def test_submit_with_overflow_none_sends_it_to_opt_out_of_the_org_default() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)

    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--overflow", "none"])

    assert result.exit_code == 0, result.stderr
    assert sent_body()["overflow"] == "none"


@responses.activate
def test_a_browserstack_run_may_say_overflow_none() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    result = invoke(
        [*SUBMIT, "--test", "a.spec.ts", "--target", "browserstack", "--overflow", "none"]
    )
    assert result.exit_code == 0, result.stderr
    assert sent_body()["overflow"] == "none"


@responses.activate
def test_submit_without_overflow_sends_no_field() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    assert invoke([*SUBMIT, "--test", "a.spec.ts"]).exit_code == 0
    assert "overflow" not in sent_body()


@responses.activate
def test_a_browserstack_run_cannot_overflow_exit_2_naming_the_option() -> None:
    result = invoke(
        [*SUBMIT, "--test", "a.spec.ts", "--target", "browserstack", "--overflow", "browserstack"]
    )

    assert result.exit_code == 2
    assert "--overflow: a browserstack run cannot overflow" in result.stderr
    assert len(responses.calls) == 0  # rejected before anything is sent


@pytest.mark.parametrize("value", ["device", "None", "never", ""])
@responses.activate
def test_overflow_to_another_pool_is_a_usage_error(value: str) -> None:
    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--overflow", value])
    assert result.exit_code == 2
    assert "--overflow" in result.stderr
    assert len(responses.calls) == 0


def test_submit_help_shows_the_flag() -> None:
    result = invoke(["submit", "--help"])
    assert result.exit_code == 0
    assert "--overflow [browserstack|none]" in result.stdout
    assert "--overflow browserstack" in result.stdout  # the examples
    assert "--overflow none" in result.stdout


@responses.activate
def test_status_of_a_run_names_the_jobs_that_moved() -> None:
    jobs = [
        job_view("j1", "a.spec.ts", "passed"),
        job_view("j2", "b.spec.ts", "queued", target="browserstack", moved_from="emulator"),
    ]
    view = run_view(jobs) | {"overflow": "browserstack", "moved": 1}
    responses.get(f"{BASE}/runs/r1", json=view)
    serve_jobs(jobs)

    result = invoke(["status", "--run-id", "r1"])

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "run r1: acme/v1.2.3 on emulator in progress "
        "(1 passed, 1 queued; 1 moved to browserstack; 2 total)"
    )
    assert lines[2].split()[:2] == ["j1", "passed"]
    assert lines[3].split()[:5] == ["j2", "queued", "(moved", "from", "emulator)"]


@responses.activate
def test_status_of_a_moved_job_says_where_from() -> None:
    view = job_view("j2", "b.spec.ts", "queued", target="browserstack", moved_from="device")
    responses.get(f"{BASE}/jobs/j2", json=view)

    result = invoke(["status", "--job-id", "j2"])

    assert result.exit_code == 0
    assert "  moved     from device to browserstack (overflow)" in result.stdout
