"""Following a run: `qgjob status --run-id R --follow` and `submit --wait`. On a terminal
a live line (redrawn at each poll and every second between, the ETA from the server's
queue estimate counting down); off one, one line per change. Time is a fake clock."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
import responses
from click.testing import CliRunner, Result

from qgjob import render
from qgjob.cli import CliState, cli
from qgjob.follow import LiveProgress, follow_eta
from tests.unit.cli.test_cli_commands import (
    BASE,
    ENV,
    SUBMIT,
    FakeClock,
    job_view,
    run_view,
    serve_jobs,
    submitted,
)

ERASE = "\x1b[K"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def invoke(args: Sequence[str], clock: FakeClock, *, live: bool | None, width: int = 200) -> Result:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:  # click >= 8.2 keeps stderr apart already
        runner = CliRunner()
    state = CliState(clock=clock.time, sleep=clock.sleep, live=live, terminal_width=lambda: width)
    return runner.invoke(cli, list(args), obj=state, env=ENV)


def jobs(*statuses: str) -> list[dict[str, Any]]:
    return [job_view(f"j{i}", f"t{i}.spec.ts", s) for i, s in enumerate(statuses)]


def queued_view(statuses: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {**run_view(jobs(*statuses)), **extra}


def drawn(stderr: str) -> list[str]:
    """The live line's successive states, as a terminal would have shown them."""
    return [part.removesuffix(ERASE) for part in re.split(r"\r|\n", stderr) if part]


QUEUE = {
    "position": 2,
    "jobs_ahead": 14,
    "eta_seconds": 300.0,
    "estimated_start_at": 1_700_000_100.0,
    "estimated_finish_at": 1_700_000_300.0,
    "as_of": 1_700_000_000.0,
    "approximate": False,
}


@responses.activate
def test_on_a_terminal_the_line_is_live_and_the_eta_counts_down(clock: FakeClock) -> None:
    responses.get(f"{BASE}/runs/r1", json=queued_view(["queued"] * 3, queue=QUEUE))
    running = {**QUEUE, "position": 0, "jobs_ahead": 0, "eta_seconds": 100.0}
    responses.get(
        f"{BASE}/runs/r1",
        json=queued_view(["passed", "running", "running"], queue=running, flaky=1),
    )
    done = jobs("passed", "passed", "failed")
    responses.get(f"{BASE}/runs/r1", json=run_view(done))
    serve_jobs(done)

    result = invoke(["status", "--run-id", "r1", "--follow"], clock, live=True)

    assert result.exit_code == 1, result.stderr  # a test failed: --wait's exit code
    # The waits of --wait (2 s, then 2 s: the run's pace says it ends soon), slept a
    # second at a time to redraw the line.
    assert clock.sleeps == [1.0] * 4
    assert drawn(result.stderr) == [
        "run r1: 0/3 done, 0 running, 3 queued | 0s elapsed"
        " | ETA ~5m00s (position 2, 14 jobs ahead)",
        "run r1: 0/3 done, 0 running, 3 queued | 1s elapsed"
        " | ETA ~4m59s (position 2, 14 jobs ahead)",
        "run r1: 0/3 done, 0 running, 3 queued | 2s elapsed"
        " | ETA ~4m58s (position 2, 14 jobs ahead)",
        # Its own pace now (1 of 3 in 2 s), measured, rather than the server's estimate.
        "run r1: 1/3 done, 2 running, 0 queued, 1 flaky | 2s elapsed | ETA ~4s",
        "run r1: 1/3 done, 2 running, 0 queued, 1 flaky | 3s elapsed | ETA ~3s",
        "run r1: 1/3 done, 2 running, 0 queued, 1 flaky | 4s elapsed | ETA ~2s",
        "run r1: 3/3 done (1 not passed), 0 running, 0 queued | 4s elapsed",
    ]
    assert result.stderr.startswith("\r")
    assert result.stderr.endswith(ERASE + "\n")
    assert "FAILED (2 passed, 1 failed; 3 total)" in result.stdout


@responses.activate
def test_on_a_terminal_a_run_no_agent_serves_says_why_it_waits(clock: FakeClock) -> None:
    stuck = queued_view(["queued"] * 2, no_agent=True, target="device", queue=QUEUE)
    responses.get(f"{BASE}/runs/r1", json=stuck)

    result = invoke(
        ["status", "--run-id", "r1", "--follow", "--wait-timeout", "2"], clock, live=True
    )

    assert result.exit_code == 3  # --wait-timeout
    lines = drawn(result.stderr)
    assert lines[0] == (
        "run r1: 0/2 done, 0 running, 2 queued | 0s elapsed"
        " | waiting: no agent serves target device"
    )
    assert "ETA" not in result.stderr
    assert "waiting: no agent serves target device" in result.stdout  # the final status


@responses.activate
def test_off_a_terminal_one_line_per_change_and_why_it_waits(clock: FakeClock) -> None:
    stuck = queued_view(["queued"] * 2, no_agent=True, target="device", queue=QUEUE)
    moving = queued_view(["running", "queued"], queue=QUEUE)
    done = jobs("passed", "passed")
    for view in (stuck, stuck, moving, moving, run_view(done)):
        responses.get(f"{BASE}/runs/r1", json=view)
    serve_jobs(done)

    result = invoke(["status", "--run-id", "r1", "--follow"], clock, live=False)

    assert result.exit_code == 0, result.stderr
    assert clock.sleeps == [2.0, 3.0, 4.5, 6.75]  # the waits, not a redraw every second
    assert "\r" not in result.stderr
    assert ERASE not in result.stderr
    assert result.stderr.splitlines() == [
        "run r1: 0/2 finished (2 queued; waiting: no agent serves target device) after 0s",
        "run r1: 0/2 finished (1 active, 1 queued) after 5s",
        "run r1: 2/2 finished (2 passed) after 16s",
    ]


@responses.activate
def test_submit_wait_follows_on_a_terminal_too(clock: FakeClock) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j0"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=queued_view(["queued"], queue=QUEUE))
    responses.get(f"{BASE}/runs/r1", json=run_view(jobs("passed")))
    serve_jobs(jobs("passed"))

    result = invoke([*SUBMIT, "--test", "t0.spec.ts", "--wait"], clock, live=True)

    assert result.exit_code == 0, result.stderr
    assert drawn(result.stderr)[0].endswith("| ETA ~5m00s (position 2, 14 jobs ahead)")
    assert result.stdout.startswith("run r1: 1 job(s) queued")


@responses.activate
def test_json_output_never_draws_a_live_line(clock: FakeClock) -> None:
    responses.get(f"{BASE}/runs/r1", json=run_view(jobs("passed")))
    serve_jobs(jobs("passed"))

    result = invoke(["--json", "status", "--run-id", "r1", "--follow"], clock, live=True)

    assert result.exit_code == 0
    assert result.stderr == ""


@responses.activate
def test_the_live_line_fits_the_terminal(clock: FakeClock) -> None:
    responses.get(f"{BASE}/runs/r1", json=queued_view(["queued"] * 3, queue=QUEUE))
    responses.get(f"{BASE}/runs/r1", json=run_view(jobs("passed", "passed", "passed")))
    serve_jobs(jobs("passed", "passed", "passed"))

    result = invoke(["status", "--run-id", "r1", "--follow"], clock, live=True, width=40)

    lines = drawn(result.stderr)
    assert lines[0] == "run r1: 0/3 done, 0 running, 3 queue..."
    assert all(len(line) <= 39 for line in lines)


@responses.activate
def test_a_failed_poll_is_a_line_of_its_own_under_the_live_one(clock: FakeClock) -> None:
    responses.get(f"{BASE}/runs/r1", json=queued_view(["queued"], queue=QUEUE))
    for _ in range(4):  # the client's own retries of one poll
        responses.get(f"{BASE}/runs/r1", json={"message": "down"}, status=503)
    responses.get(f"{BASE}/runs/r1", json=run_view(jobs("passed")))
    serve_jobs(jobs("passed"))

    result = invoke(["status", "--run-id", "r1", "--follow"], clock, live=True)

    assert result.exit_code == 0, result.stderr
    # The live line erased, the warning on a line of its own, the live line drawn again.
    assert re.search(
        r"\r\x1b\[Kqgjob: warning: [^\r\n]*still waiting\n\rrun r1: 0/1 done", result.stderr
    ), result.stderr


def test_the_eta_is_the_servers_while_the_run_waits_and_its_pace_once_it_moves() -> None:
    fresh = run_view(jobs("queued", "queued", "queued", "queued"))
    half = run_view(jobs("passed", "passed", "running", "queued"))
    at_head = {**QUEUE, "position": 1, "jobs_ahead": 0}

    assert follow_eta({**fresh, "queue": at_head}, 10.0) == 300.0  # no pace yet
    assert follow_eta(fresh, 10.0) is None  # nor a server estimate
    assert follow_eta(half, 60.0) == 60.0  # 2 of 4 in a minute: one more to go
    assert follow_eta({**half, "queue": at_head}, 60.0) == 60.0  # measured beats estimated
    assert follow_eta({**half, "queue": QUEUE}, 60.0) == 300.0  # 14 jobs cut in ahead
    assert follow_eta({**half, "queue": QUEUE, "no_agent": True}, 60.0) is None


def test_a_live_line_counts_down_from_the_last_answer_never_below_zero() -> None:
    clock = FakeClock()
    out: list[str] = []
    live = LiveProgress(
        render.live_text, follow_eta, out.append, clock.time, lambda: 200, tick_s=1.0
    )
    view = queued_view(["queued"], queue={**QUEUE, "eta_seconds": 1.5})

    live.on_view(view, 0.0)
    live.sleeper(clock.sleep)(3.0)
    live.close()

    etas = [re.search(r"ETA ~(\S+)", text).group(1) for text in out if "ETA" in text]  # type: ignore[union-attr]
    assert etas == ["2s", "0s", "0s", "0s"]  # 1.5 s rounds to 2 s
    assert out[-1] == "\n"
    live.close()
    assert out[-1] == "\n"
    assert out.count("\n") == 1


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        (QUEUE, "queue: position 2, 14 jobs ahead, ETA ~5m00s (as of "),
        (
            {**QUEUE, "position": None, "jobs_ahead": 120, "approximate": True},
            "queue: 120+ jobs ahead, ETA >5m00s",
        ),
        ({**QUEUE, "position": 0, "jobs_ahead": 0, "eta_seconds": 4000}, "queue: ETA ~1h06m"),
    ],
)
def test_status_prints_where_the_run_stands(queue: dict[str, Any], expected: str) -> None:
    lines = render.run_text(queued_view(["queued"], queue=queue)).splitlines()
    assert lines[1].startswith(expected), lines
