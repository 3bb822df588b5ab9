"""`qgjob cancel --run-id/--job-id`, `submit --wait --cancel-on-timeout` and Ctrl-C during
--wait, with the HTTP API mocked by `responses`."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses

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

QUEUED = [job_view("j1", "a.spec.ts", "queued")]
CANCELLED = [job_view("j1", "a.spec.ts", "cancelled")]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def cancel_page(cancelled: int, next_cursor: str | None, jobs: list[dict[str, Any]]) -> Any:
    return {
        "run_id": "r1",
        "cancelled": cancelled,
        "next_cursor": next_cursor,
        "run": run_view(jobs),
    }


def cancel_calls() -> list[str]:
    return [c.request.path_url for c in responses.calls if "/cancel" in c.request.path_url]


@responses.activate
def test_cancel_a_run_goes_through_every_page() -> None:
    matcher = responses.matchers.query_param_matcher
    responses.post(
        f"{BASE}/runs/r1/cancel", json=cancel_page(100, "c1", QUEUED), match=[matcher({})]
    )
    responses.post(
        f"{BASE}/runs/r1/cancel",
        json=cancel_page(7, None, CANCELLED),
        match=[matcher({"cursor": "c1"})],
    )

    result = invoke(["cancel", "--run-id", "r1"])

    assert result.exit_code == 0, result.output
    assert cancel_calls() == ["/runs/r1/cancel", "/runs/r1/cancel?cursor=c1"]
    assert result.stdout == "run r1: cancelled 107 job(s); now 1 cancelled\n"


@responses.activate
def test_cancel_a_run_json() -> None:
    responses.post(f"{BASE}/runs/r1/cancel", json=cancel_page(1, None, CANCELLED))

    result = invoke(["--json", "cancel", "--run-id", "r1"])

    assert result.exit_code == 0
    assert json.loads(result.stdout)["cancelled"] == 1


@pytest.mark.parametrize("args", [[], ["--run-id", "r1", "--job-id", "j1"]])
def test_cancel_needs_exactly_one_id(args: list[str]) -> None:
    result = invoke(["cancel", *args])
    assert result.exit_code == 2
    assert "exactly one of --job-id or --run-id" in result.stderr


@responses.activate
def test_submit_wait_cancel_on_timeout_cancels_the_run(clock: FakeClock) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=run_view(QUEUED))
    responses.post(f"{BASE}/runs/r1/cancel", json=cancel_page(1, None, CANCELLED))
    serve_jobs(CANCELLED)

    args = [*SUBMIT, "--test", "a.spec.ts", "--wait", "--wait-timeout", "5", "--cancel-on-timeout"]
    result = invoke(args, clock)

    assert result.exit_code == 3
    assert cancel_calls() == ["/runs/r1/cancel"]
    assert "cancelled (1 job(s) stopped; --cancel-on-timeout)" in result.stderr
    assert "it was cancelled (--cancel-on-timeout)" in result.stderr


@responses.activate
def test_submit_wait_timeout_without_the_flag_leaves_the_run_going(clock: FakeClock) -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=run_view(QUEUED))
    serve_jobs(QUEUED)

    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--wait", "--wait-timeout", "5"], clock)

    assert result.exit_code == 3
    assert cancel_calls() == []


class InterruptingClock(FakeClock):
    """Ctrl-C during the first wait between two polls."""

    def sleep(self, seconds: float) -> None:
        raise KeyboardInterrupt


@responses.activate
def test_ctrl_c_with_cancel_on_interrupt_cancels_at_once() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=run_view(QUEUED))
    responses.post(f"{BASE}/runs/r1/cancel", json=cancel_page(1, None, CANCELLED))

    args = [*SUBMIT, "--test", "a.spec.ts", "--wait", "--cancel-on-interrupt"]
    result = invoke(args, InterruptingClock())

    assert result.exit_code == 130
    assert cancel_calls() == ["/runs/r1/cancel"]
    assert "run r1 cancelled (1 job(s) stopped)" in result.stderr


@responses.activate
def test_ctrl_c_off_a_terminal_leaves_the_run_going() -> None:
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=run_view(QUEUED))

    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--wait"], InterruptingClock())

    assert result.exit_code == 130
    assert cancel_calls() == []
    assert "the work goes on in qgjob" in result.stderr


@responses.activate
@pytest.mark.parametrize(("answer", "cancels"), [("y\n", 1), ("n\n", 0)])
def test_ctrl_c_on_a_terminal_asks_first(
    monkeypatch: pytest.MonkeyPatch, answer: str, cancels: int
) -> None:
    import qgjob.cli

    monkeypatch.setattr(qgjob.cli, "_is_tty", lambda: True)
    responses.post(f"{BASE}/runs", json=submitted(["j1"]), status=201)
    responses.get(f"{BASE}/runs/r1", json=run_view(QUEUED))
    responses.post(f"{BASE}/runs/r1/cancel", json=cancel_page(1, None, CANCELLED))

    from click.testing import CliRunner

    from qgjob.cli import CliState, cli
    from tests.unit.cli.test_cli_commands import ENV

    clock = InterruptingClock()
    state = CliState(clock=clock.time, sleep=clock.sleep)
    args = [*SUBMIT, "--test", "a.spec.ts", "--wait"]
    result = CliRunner().invoke(cli, args, obj=state, env=ENV, input=answer)

    assert result.exit_code == 130
    assert len(cancel_calls()) == cancels
    assert "Cancel run r1 in qgjob?" in result.output


def test_cancel_flags_need_wait() -> None:
    result = invoke([*SUBMIT, "--test", "a.spec.ts", "--cancel-on-timeout"])
    assert result.exit_code == 2
    assert "need --wait" in result.stderr
