"""Friction a new user met running the README (issue 11 item 9), each held by a test."""

from __future__ import annotations

import json

import click
import pytest
import responses

from qgjob.cli import cli
from tests.unit.cli.test_cli_commands import BASE, SUBMIT, invoke, job_view, submitted

NO_ENV: dict[str, str] = {}


# ------------------------------------------------------------ global options anywhere


def test_global_options_after_the_subcommand_work_as_before_it() -> None:
    with responses.RequestsMock() as mock:
        mock.post("http://other.test/v1/runs", json=submitted(["j1"]), status=201)
        result = invoke(
            [
                *SUBMIT,
                "--test",
                "a.spec.ts",
                "--endpoint-url",
                "http://other.test/v1",
                "--token",
                "after-token",
            ],
            env=NO_ENV,
        )
        assert mock.calls[0].request.headers["Authorization"] == "Bearer after-token"
    assert result.exit_code == 0, result.stderr
    assert "j1" in result.stdout


def test_an_option_after_the_subcommand_wins_over_the_environment_and_the_group() -> None:
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/jobs/j1", json=job_view("j1", "a.spec.ts", "queued"))
        result = invoke(
            ["--token", "before", "status", "--job-id", "j1", "--token", "after"],
        )
        assert mock.calls[0].request.headers["Authorization"] == "Bearer after"
    assert result.exit_code == 0, result.stderr


@responses.activate
def test_json_after_a_subcommand_that_had_no_json_option_of_its_own() -> None:
    responses.get(f"{BASE}/jobs/j1", json=job_view("j1", "a.spec.ts", "queued"))
    result = invoke(["status", "--job-id", "j1", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["job_id"] == "j1"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(cli), ids=" ".join)
def test_every_command_accepts_the_global_options(path: tuple[str, ...]) -> None:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    options = {opt for param in command.params for opt in param.opts}
    assert {"--endpoint-url", "--token", "--json"} <= options


# ------------------------------------------------------------ an endpoint without stage


@pytest.mark.parametrize(
    ("status", "gateway_message"), [(404, "Not Found"), (403, "Missing Authentication Token")]
)
@responses.activate
def test_api_gateways_own_miss_names_the_missing_stage(status: int, gateway_message: str) -> None:
    responses.post(f"{BASE}/runs", json={"message": gateway_message}, status=status)

    result = invoke([*SUBMIT, "--test", "a.spec.ts"])

    assert result.exit_code in (2, 3)
    assert gateway_message in result.stderr
    assert "the stage is probably missing from --endpoint-url" in result.stderr
    assert f"{BASE}/v1" in result.stderr


@responses.activate
def test_qgjobs_own_404_gets_no_stage_hint() -> None:
    responses.get(f"{BASE}/jobs/j9", json={"message": "job j9 not found"}, status=404)
    result = invoke(["status", "--job-id", "j9"])
    assert result.exit_code == 2
    assert "job j9 not found" in result.stderr
    assert "stage" not in result.stderr


# ------------------------------------------------------------ help tells the defaults


def test_submit_help_shows_the_defaults_of_timeout_and_retries() -> None:
    result = invoke(["submit", "--help"], env=NO_ENV)
    text = " ".join(result.stdout.split())
    assert "[default: 1800]" in text
    assert "[default: 0]" in text
    assert "[default: 2]" in text  # --infra-retries


def test_agent_help_states_the_simulated_runners_outcome_rule() -> None:
    result = invoke(["agent", "--help"], env=NO_ENV)
    text = " ".join(result.stdout.split())
    assert 'containing "infra-error" ends "error"' in text
    assert 'containing "fail" ends "failed"' in text
    assert 'any other "passed"' in text


def test_agent_report_every_defaults_to_the_protocols_value() -> None:
    # The CLI cannot import the protocol module at start (qgjob --help stays fast), so its
    # default is written again there: this keeps the two the same.
    from qgjob.agent_protocol import DEFAULT_REPORT_EVERY_S

    agent = cli.commands["agent"]
    (option,) = [p for p in agent.params if p.name == "report_every_s"]
    assert option.default == DEFAULT_REPORT_EVERY_S
    text = " ".join(invoke(["agent", "--help"], env=NO_ENV).stdout.split())
    assert f"[default: {DEFAULT_REPORT_EVERY_S:g}" in text


@pytest.mark.parametrize(
    ("test_path", "status"),
    [
        ("tests/login-infra-error.spec.ts", "error"),
        ("tests/Checkout_FAIL.spec.ts", "failed"),
        ("tests/fail/ok.spec.ts", "passed"),  # the file name decides, not a folder
        ("tests/login.spec.ts", "passed"),
    ],
)
def test_the_documented_rule_is_the_runners(test_path: str, status: str) -> None:
    from qgjob.runners.simulated import simulated_status

    assert simulated_status(test_path) == status
