"""No test path or id becomes an option of the command a runner starts (issue 8, item 3).

The API rejects such paths; these tests feed them straight to the runners, as a server
that did not (an older or a compromised one) would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import responses
from click.testing import CliRunner

from qgjob.cli import CliState, cli
from qgjob.runners import (
    DEFAULT_COMMAND,
    BrowserStackRunner,
    CommandRunner,
    InstallError,
    SimulatedRunner,
)
from qgjob.runners.command import argument_path, build_argv

PY = shlex.quote(sys.executable)
# Prints the arguments it was given as JSON: what the test tool would have parsed.
ECHO_ARGS = f"{PY} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
OPTION_LIKE = ["-c", "--config=/tmp/evil.config.ts", "--output=/home", "-", "--", "-x/a.spec.ts"]
ESCAPING = [
    "/etc/passwd",
    "\\\\server\\share\\a.spec.ts",
    "C:\\specs\\a.spec.ts",
    "C:a.spec.ts",
    "..",
    "../secrets.spec.ts",
    "tests/../../x.spec.ts",
    "tests\\..\\x.spec.ts",
    "tests/a\n.spec.ts",
]


def _never_stop() -> bool:
    return False


def _touch(marker: Path) -> str:
    """A command that creates `marker`: proof that it ran."""
    return f'{PY} -c \'open("{marker}", "w")\''


def _argv_seen(runner: CommandRunner, test_path: str, **ids: str) -> list[str]:
    outcome = runner.run(test_path, "emulator", 30.0, _never_stop, **ids)
    assert outcome.status == "passed", outcome
    seen: list[str] = json.loads(outcome.output)
    return seen


# ------------------------------------------------------------------ option-like paths
@pytest.mark.parametrize("test_path", OPTION_LIKE)
def test_an_option_like_path_reaches_the_command_as_a_relative_path(test_path: str) -> None:
    runner = CommandRunner(command=f"{ECHO_ARGS} {{test_path}} --project {{target}}")

    assert _argv_seen(runner, test_path) == [f"./{test_path}", "--project", "emulator"]


@pytest.mark.parametrize("test_path", OPTION_LIKE)
def test_the_default_command_never_gets_the_path_as_an_option(test_path: str) -> None:
    argv = build_argv(DEFAULT_COMMAND, {"test_path": argument_path(test_path), "target": "device"})

    assert argv == ["npx", "appwright", "test", f"./{test_path}", "--project", "device"]


@pytest.mark.parametrize("test_path", ["tests/a.spec.ts", "tests/-x.spec.ts", "a b/c.spec.ts"])
def test_an_ordinary_path_is_passed_unchanged(test_path: str) -> None:
    runner = CommandRunner(command=f"{ECHO_ARGS} {{test_path}}")

    assert _argv_seen(runner, test_path) == [test_path]


# ------------------------------------------------------------------ escaping paths
@pytest.mark.parametrize("test_path", ESCAPING)
def test_the_command_runner_refuses_a_path_out_of_the_tree_and_runs_nothing(
    tmp_path: Path, test_path: str
) -> None:
    marker = tmp_path / "ran"
    touch = f"{_touch(marker)} {{test_path}}"
    runner = CommandRunner(command=touch, cwd=str(tmp_path))

    outcome = runner.run(test_path, "emulator", 30.0, _never_stop)

    assert outcome.status == "failed"
    assert outcome.message is not None
    assert outcome.message.startswith("refused to run: test path")
    assert not marker.exists()


@pytest.mark.parametrize("test_path", ESCAPING)
def test_the_simulated_runner_refuses_the_same_paths(test_path: str) -> None:
    slept: list[float] = []
    outcome = SimulatedRunner(sleep=slept.append).run(test_path, "emulator", 30.0, _never_stop)

    assert outcome.status == "failed"
    assert outcome.message is not None
    assert outcome.message.startswith("refused to run: test path")
    assert slept == []


def test_the_simulated_runner_still_runs_an_option_like_path() -> None:
    outcome = SimulatedRunner(sleep=lambda _: None).run("-x.spec.ts", "emulator", 30.0, _never_stop)

    assert outcome.status == "passed"


# ------------------------------------------------------------------ option-like ids
def test_an_option_like_id_the_template_uses_is_refused() -> None:
    runner = CommandRunner(command=f"{ECHO_ARGS} {{test_path}} --app {{app_version_id}}")

    outcome = runner.run("a.spec.ts", "emulator", 30.0, _never_stop, app_version_id="--headed")

    assert outcome.status == "failed"
    assert outcome.message == (
        "refused to run: app_version_id '--headed' begins with '-' and could be read as an option"
    )


def test_an_option_like_id_the_template_does_not_use_is_harmless() -> None:
    runner = CommandRunner(command=f"{ECHO_ARGS} {{test_path}}")

    assert _argv_seen(runner, "a.spec.ts", app_version_id="-c") == ["a.spec.ts"]


def test_an_install_with_an_option_like_id_is_an_install_error(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    touch = f"{_touch(marker)} {{app_version_id}}"
    runner = CommandRunner(install_command=touch)

    with pytest.raises(InstallError, match="app_version_id '-c' begins with '-'"):
        runner.install("acme", "-c", "emulator")
    assert not marker.exists()


# ------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("test_path", ["--config=/tmp/evil.config.ts", "-c", "tests/--x"])
@responses.activate
def test_the_cli_refuses_an_option_like_test_path_with_exit_2(test_path: str) -> None:
    args = ["submit", "--org-id", "acme", "--app-version-id", "v1", f"--test={test_path}"]
    env = {"QGJOB_ENDPOINT_URL": "http://qgjob.test", "QGJOB_TOKEN": "org-token"}

    result = CliRunner().invoke(cli, args, obj=CliState(), env=env)

    assert result.exit_code == 2, result.output
    assert "begin with '-'" in result.output
    assert len(responses.calls) == 0


# ------------------------------------------------------------------ the browserstack runner
def _browserstack_runner(tmp_path: Path, command: str) -> BrowserStackRunner:
    """Installed (its build already on a mocked App Automate), running ``command``."""
    build = tmp_path / "app.apk"
    build.write_bytes(b"build")
    env = {
        "PATH": os.environ["PATH"],
        "BROWSERSTACK_USERNAME": "argv-user",
        "BROWSERSTACK_ACCESS_KEY": "argv-access-key",
        "QGJOB_BROWSERSTACK_API_URL": "https://bs.test",
    }
    runner = BrowserStackRunner(app_path=str(build), env=env, command=command)
    with responses.RequestsMock() as mock:
        mock.get(
            re.compile(r"https://bs\.test/app-automate/recent_apps/.*"),
            json=[{"app_url": "bs://1"}],
        )
        runner.install("acme", "v1", "browserstack")
    return runner


@pytest.mark.parametrize("test_path", OPTION_LIKE)
def test_the_browserstack_runner_passes_an_option_like_path_as_a_relative_path(
    tmp_path: Path, test_path: str
) -> None:
    runner = _browserstack_runner(tmp_path, f"{ECHO_ARGS} {{test_path}} --project {{target}}")

    outcome = runner.run(test_path, "browserstack", 30.0, _never_stop)

    assert outcome.status == "passed", outcome
    assert json.loads(outcome.output) == [f"./{test_path}", "--project", "browserstack"]


@pytest.mark.parametrize("test_path", ESCAPING)
def test_the_browserstack_runner_refuses_a_path_out_of_the_tree_and_runs_nothing(
    tmp_path: Path, test_path: str
) -> None:
    marker = tmp_path / "ran"
    runner = _browserstack_runner(tmp_path, f"{_touch(marker)} {{test_path}}")

    outcome = runner.run(test_path, "browserstack", 30.0, _never_stop)

    assert outcome.status == "failed"
    assert outcome.message is not None
    assert outcome.message.startswith("refused to run: test path")
    assert not marker.exists()


def test_the_browserstack_install_refuses_an_option_like_id(tmp_path: Path) -> None:
    runner = BrowserStackRunner(
        app_path=str(tmp_path / "x.apk"),
        env={"BROWSERSTACK_USERNAME": "u", "BROWSERSTACK_ACCESS_KEY": "k"},
    )
    with responses.RequestsMock() as mock, pytest.raises(InstallError, match="begins with '-'"):
        runner.install("acme", "--upload-everything", "browserstack")
    assert len(mock.calls) == 0
