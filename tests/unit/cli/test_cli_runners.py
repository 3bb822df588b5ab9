"""Runners: the simulated runner is deterministic; the command runner runs real processes."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qgjob.runners import (
    CommandRunner,
    InstallError,
    RunOutcome,
    SimulatedRunner,
    get_runner,
    truncate_output,
)
from qgjob.runners.base import MAX_OUTPUT_BYTES
from qgjob.runners.simulated import simulated_duration

PY = shlex.quote(sys.executable)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def never() -> bool:
    return False


def python_template(code: str, *args: str) -> str:
    """A command template running `python -c code args...`."""
    return " ".join([PY, "-c", shlex.quote(code), *args])


# ---------------------------------------------------------------------- simulated


def test_simulated_outcome_depends_only_on_the_test_path() -> None:
    first, second = Sleeps(), Sleeps()
    a = SimulatedRunner(sleep=first).run("tests/login.spec.ts", "emulator", 60, never)
    b = SimulatedRunner(sleep=second).run("tests/login.spec.ts", "device", 60, never)
    c = SimulatedRunner(sleep=Sleeps()).run("tests/logout.spec.ts", "emulator", 60, never)

    assert a.status == b.status == "passed"
    assert a.duration_s == b.duration_s
    assert a.duration_s != c.duration_s
    assert first.calls == second.calls == [a.duration_s]


def test_simulated_duration_range_scales() -> None:
    durations = [simulated_duration(f"tests/t{i}.spec.ts") for i in range(200)]
    assert all(0.2 <= d <= 1.0 for d in durations)
    assert len(set(durations)) == 200
    assert simulated_duration("x.spec.ts", 3.0) == pytest.approx(
        3 * simulated_duration("x.spec.ts")
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("tests/checkout-fail.spec.ts", "failed"),
        ("tests/FAILING.spec.ts", "failed"),
        ("tests/net-infra-error.spec.ts", "error"),
        ("tests/fail/ok.spec.ts", "passed"),  # only the file name counts
        ("tests/login.spec.ts", "passed"),
    ],
)
def test_simulated_status_follows_the_file_name(path: str, status: str) -> None:
    outcome = SimulatedRunner(sleep=Sleeps()).run(path, "emulator", 60, never)
    assert outcome.status == status
    assert (outcome.message is None) == (status == "passed")
    assert path in outcome.output


def test_simulated_install_takes_one_second_scaled() -> None:
    sleeps = Sleeps()
    SimulatedRunner(sim_scale=0.5, sleep=sleeps).install("acme", "v1", "emulator")
    assert sleeps.calls == [0.5]


def test_simulated_timeout_when_duration_exceeds_it() -> None:
    sleeps = Sleeps()
    runner = SimulatedRunner(sim_scale=10.0, sleep=sleeps)
    outcome = runner.run("tests/slow.spec.ts", "emulator", 1, never)
    assert outcome.status == "timed_out"
    assert outcome.duration_s == 1.0
    assert sleeps.calls == [1]


# ---------------------------------------------------------------------- command


def test_command_passes_on_exit_zero_and_receives_placeholders() -> None:
    code = "import sys; print('ARGS', sys.argv[1:])"
    template = python_template(code, "{test_path}", "{target}", "{org_id}", "{app_version_id}")
    outcome = CommandRunner(template).run(
        "tests/a b.spec.ts", "device", 30, never, org_id="acme", app_version_id="v1"
    )

    assert outcome.status == "passed"
    assert outcome.message is None
    assert "ARGS ['tests/a b.spec.ts', 'device', 'acme', 'v1']" in outcome.output
    assert outcome.duration_s >= 0


def test_command_fails_on_non_zero_exit_and_captures_stderr() -> None:
    code = "import sys; print('expected 2 got 3', file=sys.stderr); sys.exit(4)"
    outcome = CommandRunner(python_template(code)).run("t.spec.ts", "emulator", 30, never)

    assert outcome.status == "failed"
    assert outcome.message == "exit code 4"
    assert "expected 2 got 3" in outcome.output


def test_command_times_out_and_kills_the_process(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    code = f"import time, pathlib; time.sleep(30); pathlib.Path({str(marker)!r}).write_text('x')"
    outcome = CommandRunner(python_template(code)).run("t.spec.ts", "emulator", 0.5, never)

    assert outcome.status == "timed_out"
    assert outcome.message == "timed out after 0.5s"
    assert not marker.exists()


def test_command_is_interrupted_when_asked_to_stop() -> None:
    checks: list[int] = []

    def stop_on_second_check() -> bool:
        checks.append(1)
        return len(checks) >= 2

    code = "import time; print('started', flush=True); time.sleep(30)"
    outcome = CommandRunner(python_template(code)).run(
        "t.spec.ts", "emulator", 60, stop_on_second_check
    )
    assert outcome.status == "error"
    assert outcome.message is not None
    assert "interrupted" in outcome.message
    assert "started" in outcome.output


def test_missing_binary_is_an_error_with_a_clear_message() -> None:
    outcome = CommandRunner("qgjob-no-such-binary-xyz {test_path}").run(
        "t.spec.ts", "emulator", 30, never
    )
    assert outcome == RunOutcome(
        "error",
        0.0,
        "command not found: qgjob-no-such-binary-xyz (install it or fix the command template)",
    )


def test_command_keeps_only_the_last_64_kib_of_output() -> None:
    code = "import sys; sys.stdout.write('a' * 200000 + 'THE-END')"
    outcome = CommandRunner(python_template(code)).run("t.spec.ts", "emulator", 30, never)

    assert outcome.status == "passed"
    assert len(outcome.output.encode()) <= MAX_OUTPUT_BYTES
    assert outcome.output.endswith("THE-END")
    assert "earlier bytes truncated" in outcome.output


def test_unknown_placeholder_is_rejected_up_front() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder \{device\}"):
        CommandRunner("run {device} {test_path}")
    with pytest.raises(ValueError, match="--install-command"):
        CommandRunner("run {test_path}", install_command="install {app}")


def test_install_command_runs_and_failure_raises(tmp_path: Path) -> None:
    log = tmp_path / "installs.txt"
    write = f"import sys, pathlib; pathlib.Path({str(log)!r}).write_text(' '.join(sys.argv[1:]))"
    runner = CommandRunner(
        "true", install_command=python_template(write, "{org_id}", "{app_version_id}", "{target}")
    )
    runner.install("acme", "v1", "device")
    assert log.read_text() == "acme v1 device"

    failing = CommandRunner(
        "true", install_command=python_template("print('no such build'); raise SystemExit(3)")
    )
    with pytest.raises(InstallError, match=r"install of acme/v9 failed.*no such build"):
        failing.install("acme", "v9", "device")


def test_no_install_command_means_no_install_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test command leaves a trace, so running it (or anything) at install shows.
    ran = tmp_path / "ran.txt"
    touch = f"import pathlib; pathlib.Path({str(ran)!r}).write_text('ran')"
    runner = CommandRunner(python_template(touch, "{test_path}"))
    spawned: list[object] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> Any:
        spawned.append(args[0] if args else kwargs.get("args"))
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)

    assert runner.install_command is None
    runner.install("acme", "v1", "emulator")

    assert spawned == [], f"install without --install-command spawned {spawned}"
    assert not ran.exists(), "install ran the test command"
    # The probe works: running a test does spawn the command and leave the trace.
    assert runner.run("t.spec.ts", "emulator", 30, never).status == "passed"
    assert len(spawned) == 1
    assert ran.read_text() == "ran"


# ---------------------------------------------------------------------- registry / helpers


def test_get_runner_builds_runners_by_name() -> None:
    sim = get_runner("simulated", sim_scale=2.0)
    assert isinstance(sim, SimulatedRunner)
    assert sim.sim_scale == 2.0
    command = get_runner("command", command="echo {test_path}")
    assert isinstance(command, CommandRunner)
    assert command.command == "echo {test_path}"
    with pytest.raises(ValueError, match="unknown runner 'appium'"):
        get_runner("appium")


def test_truncate_output_keeps_the_tail_within_the_limit() -> None:
    assert truncate_output("short") == "short"
    text = "é" * 50_000 + "tail"
    cut = truncate_output(text, limit=1000)
    assert len(cut.encode()) <= 1000
    assert cut.endswith("tail")
    assert cut.startswith("[... ")
