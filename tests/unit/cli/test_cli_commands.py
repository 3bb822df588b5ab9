"""The `qgjob` command line through click's CliRunner, with the HTTP API mocked by `responses`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from click.testing import CliRunner, Result

from qgjob.cli import TARGETS, CliState, cli
from qgjob.schema import Target

BASE = "http://qgjob.test"
ENV = {"QGJOB_ENDPOINT_URL": BASE, "QGJOB_TOKEN": "org-token"}
SUBMIT = ["submit", "--org-id", "acme", "--app-version-id", "v1.2.3"]


class FakeClock:
    """Time that only moves when the CLI sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def invoke(
    args: Sequence[str], clock: FakeClock | None = None, env: dict[str, Any] | None = None
) -> Result:
    clock = clock or FakeClock()
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:  # click >= 8.2 keeps stderr apart already
        runner = CliRunner()
    state = CliState(clock=clock.time, sleep=clock.sleep)
    return runner.invoke(cli, list(args), obj=state, env=ENV if env is None else env)


def job_view(job_id: str, test_path: str, status: str, **extra: Any) -> dict[str, Any]:
    view = {
        "job_id": job_id,
        "run_id": "r1",
        "org_id": "acme",
        "app_version_id": "v1.2.3",
        "target": "emulator",
        "test_path": test_path,
        "priority": 5,
        "status": status,
        "attempts": 1,
        "agent_id": "emulator-1" if status != "queued" else None,
        "batch_id": "b1" if status != "queued" else None,
        "created_at": 1_700_000_000.0,
        "updated_at": 1_700_000_005.0,
        "started_at": None,
        "finished_at": None,
        "duration_s": 0.5 if status in ("passed", "failed") else None,
        "message": None,
    }
    view.update(extra)
    return view


def run_view(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """GET /runs/r1 as the server answers it: the counters only (no jobs)."""
    counts: dict[str, int] = {}
    for job in jobs:
        counter = "active" if job["status"] in ("assigned", "running") else job["status"]
        counts[counter] = counts.get(counter, 0) + 1
    final = {"passed", "failed", "error", "cancelled", "timed_out"}
    finished = all(job["status"] in final for job in jobs)
    return {
        "run_id": "r1",
        "org_id": "acme",
        "app_version_id": "v1.2.3",
        "target": "emulator",
        "total": len(jobs),
        "counts": counts,
        "finished": finished,
        "passed": finished and all(job["status"] == "passed" for job in jobs),
    }


def serve_jobs(jobs: list[dict[str, Any]], per_page: int = 100) -> None:
    """GET /runs/r1/jobs: the jobs, in pages of ``per_page`` chained by cursors."""
    for start in range(0, max(len(jobs), 1), per_page):
        more = start + per_page < len(jobs)
        page = {
            "run_id": "r1",
            "jobs": jobs[start : start + per_page],
            "next_cursor": f"c{start + per_page}" if more else None,
        }
        query = {"cursor": f"c{start}"} if start else {}
        responses.get(
            f"{BASE}/runs/r1/jobs",
            json=page,
            match=[responses.matchers.query_param_matcher(query, strict_match=False)],
        )


def submitted(job_ids: list[str]) -> dict[str, Any]:
    return {"run_id": "r1", "job_ids": job_ids, "status": "queued"}


def sent_body(index: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(responses.calls[index].request.body or b"{}")
    return body


# ---------------------------------------------------------------------- submit


@responses.activate
def test_submit_posts_a_suite_and_prints_run_and_job_ids() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1", "j2"]), status=201)

    result = invoke([*SUBMIT, "--test", "tests/a.spec.ts", "--test", "tests/b.spec.ts"])

    assert result.exit_code == 0, result.stderr
    assert "run r1: 2 job(s) queued for acme/v1.2.3 on emulator" in result.stdout
    assert re.search(r"j1\s+tests/a.spec.ts", result.stdout)
    assert re.search(r"j2\s+tests/b.spec.ts", result.stdout)
    assert len(responses.calls) == 1
    request = responses.calls[0].request
    assert request.headers["Authorization"] == "Bearer org-token"
    body = sent_body()
    key = body.pop("idempotency_key")
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert body == {
        "org_id": "acme",
        "app_version_id": "v1.2.3",
        "target": "emulator",
        "priority": 5,
        "test_paths": ["tests/a.spec.ts", "tests/b.spec.ts"],
    }


@responses.activate
def test_submit_single_test_is_still_a_run_and_passes_optional_fields() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)

    result = invoke(
        [
            *SUBMIT,
            "--test",
            "tests/a.spec.ts",
            "--priority",
            "1",
            "--target",
            "browserstack",
            "--idempotency-key",
            "ci-build-42",
            "--timeout-s",
            "120",
            "--retries",
            "1",
            "--infra-retries",
            "0",
        ]
    )

    assert result.exit_code == 0, result.stderr
    assert responses.calls[0].request.url == f"{BASE}/runs"
    assert sent_body() == {
        "org_id": "acme",
        "app_version_id": "v1.2.3",
        "target": "browserstack",
        "priority": 1,
        "test_paths": ["tests/a.spec.ts"],
        "idempotency_key": "ci-build-42",
        "timeout_s": 120,
        "retries": 0,
        "failure_retries": 1,
    }


@responses.activate
def test_submit_json_output_parses() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    result = invoke(["--json", *SUBMIT, "--test", "a.spec.ts"])
    assert result.exit_code == 0
    # One test: its job id too, not "job_id": null (issue 11 item 9).
    assert json.loads(result.stdout) == {**submitted(["j1"]), "job_id": "j1"}
    assert result.stderr == ""


@responses.activate
def test_submit_retries_with_the_same_idempotency_key() -> None:
    responses.post(f"{BASE}/runs", json={"message": "busy"}, status=503)
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    clock = FakeClock()

    result = invoke([*SUBMIT, "--test", "a.spec.ts"], clock)

    assert result.exit_code == 0, result.stderr
    assert len(responses.calls) == 2
    assert sent_body(0)["idempotency_key"] == sent_body(1)["idempotency_key"]
    assert clock.sleeps == [0.5]


@responses.activate
def test_submit_wait_all_passed_exits_0_and_writes_junit(clock: FakeClock, tmp_path: Path) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1", "j2"]), status=201)
    running = [job_view("j1", "a.spec.ts", "passed"), job_view("j2", "b.spec.ts", "running")]
    done = [job_view("j1", "a.spec.ts", "passed"), job_view("j2", "b.spec.ts", "passed")]
    responses.get(f"{BASE}/runs/r1", json=run_view(running))
    responses.get(f"{BASE}/runs/r1", json=run_view(done))
    serve_jobs(done)
    report = tmp_path / "out" / "junit.xml"

    result = invoke(
        [*SUBMIT, "--test", "a.spec.ts", "--test", "b.spec.ts", "--wait", "--junit", str(report)],
        clock,
    )

    assert result.exit_code == 0, result.stderr
    assert clock.sleeps == [2.0]
    assert "run r1: 1/2 finished (1 passed, 1 active)" in result.stderr
    assert "run r1: 2/2 finished (2 passed)" in result.stderr
    assert "finished: PASSED (2 passed; 2 total)" in result.stdout
    assert re.search(r"j2\s+passed\s+0.50s\s+b.spec.ts", result.stdout)
    suite = ET.parse(report).getroot().find("testsuite")  # noqa: S314 - our own report
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")


@responses.activate
def test_submit_wait_with_a_failure_exits_1(clock: FakeClock, tmp_path: Path) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1", "j2"]), status=201)
    jobs = [
        job_view("j1", "a.spec.ts", "passed"),
        job_view("j2", "b-fail.spec.ts", "failed", message="expected 2, got 3"),
    ]
    responses.get(f"{BASE}/runs/r1", json=run_view(jobs))
    serve_jobs(jobs)
    responses.get(
        f"{BASE}/jobs/j2/result",
        json={"job_id": "j2", "status": "failed", "finished": True, "output": "trace here"},
    )
    report = tmp_path / "junit.xml"

    result = invoke(
        [
            *SUBMIT,
            "--test",
            "a.spec.ts",
            "--test",
            "b-fail.spec.ts",
            "--wait",
            "--junit",
            str(report),
        ],
        clock,
    )

    assert result.exit_code == 1, result.stderr
    assert "FAILED (1 passed, 1 failed; 2 total)" in result.stdout
    assert "expected 2, got 3" in result.stdout
    root = ET.parse(report).getroot()  # noqa: S314 - our own report
    failed = root.find(".//testcase[@name='b-fail.spec.ts']")
    assert failed is not None
    failure = failed.find("failure")
    assert failure is not None
    assert failure.get("message") == "expected 2, got 3"
    assert failed.findtext("system-out") == "trace here"
    assert root.find(".//testcase[@name='a.spec.ts']/failure") is None


@pytest.mark.parametrize("status", ["error", "timed_out", "cancelled"])
@responses.activate
def test_submit_wait_exits_1_for_any_unsuccessful_status(clock: FakeClock, status: str) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=run_view([job_view("j1", "a.spec.ts", status)]))
    serve_jobs([job_view("j1", "a.spec.ts", status)])
    responses.get(f"{BASE}/jobs/j1/result", json={"job_id": "j1", "finished": True})
    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--wait"], clock)
    assert result.exit_code == 1


@responses.activate
def test_submit_wait_timeout_exits_3(clock: FakeClock) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=run_view([job_view("j1", "a.spec.ts", "queued")]))
    serve_jobs([job_view("j1", "a.spec.ts", "queued")])

    result = invoke(
        [
            "--json",
            *SUBMIT,
            "--test",
            "a.spec.ts",
            "--wait",
            "--wait-timeout",
            "10",
            "--poll-interval",
            "3",
        ],
        clock,
    )

    assert result.exit_code == 3
    assert clock.sleeps == [3.0, 4.5, 2.5]  # backing off while nothing changes
    assert [c.request.path_url for c in responses.calls[1:]] == ["/runs/r1"] * 4 + ["/runs/r1/jobs"]
    output = json.loads(result.stdout)
    assert output["wait_timed_out"] is True
    assert output["finished"] is False
    assert [j["job_id"] for j in output["jobs"]] == ["j1"]
    assert "not finished after 10s" in result.stderr


@responses.activate
def test_wait_survives_a_few_network_errors(clock: FakeClock) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    # each poll is retried 3 times by the client; two polls fail completely
    for _ in range(8):
        responses.get(f"{BASE}/runs/r1", body=requests.ConnectionError("refused"))
    responses.get(f"{BASE}/runs/r1", json=run_view([job_view("j1", "a.spec.ts", "passed")]))
    serve_jobs([job_view("j1", "a.spec.ts", "passed")])

    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--wait"], clock)

    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("still waiting") == 2


@responses.activate
def test_wait_timeout_0_without_any_answer_exits_3_with_a_clear_message(
    clock: FakeClock,
) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    for _ in range(3):  # the client's own retries of the one poll
        responses.get(f"{BASE}/runs/r1", body=requests.ConnectionError("refused"))

    result = invoke(
        ["--json", *SUBMIT, "--test", "a.spec.ts", "--wait", "--wait-timeout", "0"], clock
    )

    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""  # --json: no run view to print
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("qgjob: error: no answer from qgjob within 0s (--wait-timeout)")
    assert "last error: cannot reach qgjob at http://qgjob.test: refused" in error
    assert error.endswith("The work goes on in qgjob: qgjob status --run-id r1 --wait")
    assert "Traceback" not in result.stderr


@responses.activate
def test_status_job_wait_without_any_answer_exits_3(clock: FakeClock) -> None:
    for _ in range(3):
        responses.get(f"{BASE}/jobs/j1", json={"message": "unavailable"}, status=503)

    result = invoke(["status", "--job-id", "j1", "--wait", "--wait-timeout", "0"], clock)

    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""
    assert "no answer from qgjob within 0s" in result.stderr
    assert "qgjob status --job-id j1 --wait" in result.stderr


# ---------------------------------------------------------------------- local validation


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["submit", "--app-version-id", "v1", "--test", "a.spec.ts"], "--org-id"),
        (["submit", "--org-id", "acme", "--test", "a.spec.ts"], "--app-version-id"),
        ([*SUBMIT], "--test"),
        ([*SUBMIT, "--test", "a.spec.ts", "--target", "phone"], "--target"),
        (
            [*SUBMIT, "--test", "a.spec.ts", "--priority", "0"],
            "--priority: Input should be greater",
        ),
        ([*SUBMIT, "--test", "a.spec.ts", "--priority", "11"], "--priority: Input should be less"),
        ([*SUBMIT, "--test", "a.spec.ts", "--priority", "high"], "--priority"),
        ([*SUBMIT, "--test", "tests/../secrets.ts"], "--test 'tests/../secrets.ts': must not"),
        (
            [*SUBMIT, "--test", "a.spec.ts", "--test", "/etc/passwd"],
            "--test '/etc/passwd': must be a relative path",
        ),
        (["submit", "--org-id", "ac me", "--app-version-id", "v1", "--test", "a"], "--org-id:"),
        ([*SUBMIT, "--test", "a.spec.ts", "--idempotency-key", "a b"], "--idempotency-key:"),
        ([*SUBMIT, "--test", "a.spec.ts", "--timeout-s", "0"], "--timeout-s:"),
        ([*SUBMIT, "--test", "a.spec.ts", "--junit", "r.xml"], "--junit needs --wait"),
    ],
)
@responses.activate
def test_invalid_submissions_exit_2_without_any_request(args: list[str], expected: str) -> None:
    result = invoke(args)

    assert result.exit_code == 2, result.stdout
    assert expected in result.stderr
    assert len(responses.calls) == 0


@responses.activate
def test_missing_token_names_the_env_var() -> None:
    result = invoke([*SUBMIT, "--test", "a.spec.ts"], env={"QGJOB_ENDPOINT_URL": BASE})
    assert result.exit_code == 2
    assert "QGJOB_TOKEN" in result.stderr
    assert len(responses.calls) == 0


@responses.activate
def test_missing_endpoint_names_the_env_var() -> None:
    result = invoke(["status", "--job-id", "j1"], env={"QGJOB_TOKEN": "t"})
    assert result.exit_code == 2
    assert "QGJOB_ENDPOINT_URL" in result.stderr
    assert len(responses.calls) == 0


def test_options_override_the_environment() -> None:
    with responses.RequestsMock() as mock:
        mock.get("http://other.test/jobs/j1", json=job_view("j1", "a.spec.ts", "queued"))
        result = invoke(
            [
                "--endpoint-url",
                "http://other.test",
                "--token",
                "cli-token",
                "status",
                "--job-id",
                "j1",
            ]
        )
        assert mock.calls[0].request.headers["Authorization"] == "Bearer cli-token"
    assert result.exit_code == 0


# ---------------------------------------------------------------------- API errors


@responses.activate
def test_unreachable_exits_3_with_a_hint(clock: FakeClock) -> None:
    responses.post(f"{BASE}/runs", body=requests.ConnectionError("Connection refused"))

    result = invoke([*SUBMIT, "--test", "a.spec.ts"], clock)

    assert result.exit_code == 3
    assert f"cannot reach qgjob at {BASE}:" in result.stderr
    assert "(is the stack running? check --endpoint-url)" in result.stderr
    assert clock.sleeps == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("status", "exit_code"), [(401, 3), (403, 3), (404, 2), (409, 2), (422, 2), (500, 3)]
)
@responses.activate
def test_api_errors_map_to_exit_codes(status: int, exit_code: int) -> None:
    responses.post(f"{BASE}/runs", json={"message": "org_id: not your org"}, status=status)
    result = invoke([*SUBMIT, "--test", "a.spec.ts"])
    assert result.exit_code == exit_code
    assert f"qgjob: error: org_id: not your org (HTTP {status})" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------- status / result / cancel


@responses.activate
def test_status_of_a_job() -> None:
    responses.get(f"{BASE}/jobs/j1", json=job_view("j1", "tests/a.spec.ts", "running"))

    human = invoke(["status", "--job-id", "j1"])
    machine = invoke(["status", "--job-id", "j1", "--json"])

    assert human.exit_code == 0
    assert human.stdout.startswith("job j1: running\n")
    assert "emulator-1 (batch b1)" in human.stdout
    assert machine.exit_code == 0
    assert json.loads(machine.stdout)["status"] == "running"


@responses.activate
def test_status_of_a_run_prints_a_table_and_exits_0_even_with_failures() -> None:
    jobs = [job_view("j1", "a.spec.ts", "failed", message="boom"), job_view("j2", "b", "queued")]
    responses.get(f"{BASE}/runs/r1", json=run_view(jobs))
    serve_jobs(jobs)

    result = invoke(["status", "--run-id", "r1"])

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "run r1: acme/v1.2.3 on emulator in progress (1 failed, 1 queued; 2 total)"
    assert lines[1].split() == ["JOB", "STATUS", "DURATION", "TEST", "MESSAGE"]
    assert lines[2].split() == ["j1", "failed", "0.50s", "a.spec.ts", "boom"]


@responses.activate
def test_polls_back_off_then_follow_the_runs_pace_and_read_the_jobs_once(
    clock: FakeClock,
) -> None:
    queued = [job_view(f"j{i}", f"t{i}.spec.ts", "queued") for i in range(150)]
    almost = [job_view(j["job_id"], j["test_path"], "passed") for j in queued[:149]] + queued[149:]
    done = [job_view(j["job_id"], j["test_path"], "passed") for j in queued]
    for view in [queued] * 3 + [almost] * 2 + [done]:
        responses.get(f"{BASE}/runs/r1", json=run_view(view))
    serve_jobs(done, per_page=100)

    result = invoke(["--json", "status", "--run-id", "r1", "--wait"], clock)

    assert result.exit_code == 0, result.stderr
    # 2 s, then 1.5x per poll; with 149 of 150 final after 9.5 s the end is near: back
    # to 2 s (half the estimated time left, never under --poll-interval).
    assert clock.sleeps == [2.0, 3.0, 4.5, 2.0, 2.0]
    paths = [c.request.path_url for c in responses.calls]
    assert paths[:6] == ["/runs/r1"] * 6  # the polls read the counters only
    assert [p.split("?")[0] for p in paths[6:]] == ["/runs/r1/jobs"] * 2  # then two pages
    assert paths[7].endswith("cursor=c100")
    assert [j["job_id"] for j in json.loads(result.stdout)["jobs"]] == [j["job_id"] for j in done]


@responses.activate
def test_a_run_that_moves_on_every_poll_is_not_polled_at_the_first_interval(
    clock: FakeClock,
) -> None:
    # 100 jobs, 2 more final at each poll: the counts change every time, which used to
    # reset the wait to --poll-interval for the whole run.
    views = []
    for poll in range(12):
        final = min(100, 2 * poll)
        views.append(
            [
                job_view(f"j{i}", "t.spec.ts", "passed" if i < final else "running")
                for i in range(100)
            ]
        )
    for view in views:
        responses.get(f"{BASE}/runs/r1", json=run_view(view))

    invoke(["--json", "status", "--run-id", "r1", "--wait", "--wait-timeout", "60"], clock)

    # Far from done at every poll: the backoff alone, 8 polls in the minute instead of 30
    # (the last wait is cut at --wait-timeout).
    assert clock.sleeps[:7] == [2.0, 3.0, 4.5, 6.75, 10.125, 15.1875, 18.4375]
    polls = [c for c in responses.calls if c.request.path_url == "/runs/r1"]
    assert len(polls) == 8


@responses.activate
def test_a_wait_whose_jobs_cannot_be_read_still_exits_with_the_runs_verdict(
    clock: FakeClock,
) -> None:
    responses.get(f"{BASE}/runs/r1", json=run_view([job_view("j1", "a", "failed")]))
    for _ in range(4):
        responses.get(f"{BASE}/runs/r1/jobs", json={"message": "down"}, status=503)

    result = invoke(["status", "--run-id", "r1", "--wait"], clock)

    assert result.exit_code == 1
    assert "could not read the jobs of run r1" in result.stderr
    assert "FAILED (1 failed; 1 total)" in result.stdout


@responses.activate
def test_status_run_wait_uses_the_submit_exit_codes(clock: FakeClock) -> None:
    responses.get(f"{BASE}/runs/r1", json=run_view([job_view("j1", "a", "running")]))
    responses.get(f"{BASE}/runs/r1", json=run_view([job_view("j1", "a", "failed")]))
    serve_jobs([job_view("j1", "a", "failed")])
    responses.get(f"{BASE}/jobs/j1/result", json={"job_id": "j1", "finished": True})
    result = invoke(["status", "--run-id", "r1", "--wait", "--poll-interval", "5"], clock)
    assert result.exit_code == 1
    assert clock.sleeps == [5.0]


@responses.activate
def test_status_job_wait(clock: FakeClock) -> None:
    responses.get(f"{BASE}/jobs/j1", json=job_view("j1", "a", "queued"))
    responses.get(f"{BASE}/jobs/j1", json=job_view("j1", "a", "passed"))
    result = invoke(["status", "--job-id", "j1", "--wait"], clock)
    assert result.exit_code == 0
    assert "job j1: passed" in result.stdout


@pytest.mark.parametrize(
    "args",
    [["status"], ["status", "--job-id", "j1", "--run-id", "r1"]],
)
@responses.activate
def test_status_needs_exactly_one_id(args: list[str]) -> None:
    result = invoke(args)
    assert result.exit_code == 2
    assert "exactly one of --job-id or --run-id" in result.stderr
    assert len(responses.calls) == 0


@responses.activate
def test_result_passed_exits_0() -> None:
    responses.get(
        f"{BASE}/jobs/j1/result",
        json={
            "job_id": "j1",
            "status": "passed",
            "finished": True,
            "passed": True,
            "duration_s": 1.5,
            "message": None,
            "output": "1 passed\n",
            "agent_id": "emulator-1",
            "finished_at": 1_700_000_000.0,
        },
    )
    result = invoke(["result", "--job-id", "j1"])
    assert result.exit_code == 0
    assert result.stdout == "job j1: passed in 1.50s on emulator-1\noutput:\n1 passed\n"


@responses.activate
def test_result_failed_exits_1() -> None:
    responses.get(
        f"{BASE}/jobs/j1/result",
        json={"job_id": "j1", "status": "failed", "finished": True, "message": "exit code 1"},
    )
    result = invoke(["result", "--job-id", "j1"])
    assert result.exit_code == 1
    assert "message: exit code 1" in result.stdout


@responses.activate
def test_result_not_finished_exits_0_with_a_clear_message() -> None:
    body = {
        "job_id": "j1",
        "status": "running",
        "finished": False,
        "message": "not finished yet: job is running",
    }
    responses.get(f"{BASE}/jobs/j1/result", json=body, status=202)

    human = invoke(["result", "--job-id", "j1"])
    machine = invoke(["--json", "result", "--job-id", "j1"])

    assert human.exit_code == 0
    assert "job j1 is not finished yet (status running)" in human.stdout
    assert machine.exit_code == 0
    assert json.loads(machine.stdout)["finished"] is False


@responses.activate
def test_cancel_a_queued_job() -> None:
    responses.post(f"{BASE}/jobs/j1/cancel", json=job_view("j1", "a", "cancelled"))
    result = invoke(["cancel", "--job-id", "j1"])
    assert result.exit_code == 0
    assert result.stdout == "job j1: cancelled\n"


@responses.activate
def test_cancel_a_running_job_is_rejected_with_exit_2() -> None:
    responses.post(
        f"{BASE}/jobs/j1/cancel",
        json={"message": "job j1 is running: only queued jobs can be cancelled"},
        status=409,
    )
    result = invoke(["cancel", "--job-id", "j1"])
    assert result.exit_code == 2
    assert "only queued jobs can be cancelled" in result.stderr


# ---------------------------------------------------------------------- agent command


@responses.activate
def test_agent_rejects_an_unknown_placeholder_before_connecting() -> None:
    result = invoke(
        [
            "agent",
            "--target",
            "emulator",
            "--device-id",
            "1",
            "--runner",
            "command",
            "--command",
            "run {spec}",
        ]
    )
    assert result.exit_code == 2
    assert "unknown placeholder {spec}" in result.stderr
    assert len(responses.calls) == 0


@responses.activate
def test_agent_needs_a_token() -> None:
    result = invoke(
        ["agent", "--target", "device", "--device-id", "d1", "--runner", "simulated"],
        env={"QGJOB_ENDPOINT_URL": BASE},
    )
    assert result.exit_code == 2
    assert "QGJOB_TOKEN" in result.stderr


# ---------------------------------------------------------------------- help


@pytest.mark.parametrize("command", [[], ["submit"], ["status"], ["result"], ["cancel"], ["agent"]])
def test_every_command_has_help_with_examples(command: list[str]) -> None:
    result = invoke([*command, "--help"], env={})
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert "qgjob " in result.stdout


def test_help_does_not_import_requests_or_pydantic() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from qgjob.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(cli, ['submit', '--help']).exit_code == 0\n"
        "print(sorted(m for m in ('requests', 'pydantic', 'urllib3') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_python_dash_m_qgjob_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qgjob", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "qgjob, version" in done.stdout


def test_target_choices_match_the_shared_schema() -> None:
    assert set(TARGETS) == {t.value for t in Target}
