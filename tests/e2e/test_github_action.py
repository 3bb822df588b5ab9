"""The composite GitHub Action (action.yml), run locally through its own steps against the
local stack: a scratch repository layout `uses:` it, with fake $GITHUB_OUTPUT,
$GITHUB_STEP_SUMMARY and $RUNNER_TEMP.

A small runner reads action.yml and runs each step as the Actions runner would: its `if:`
(inputs, step outputs, always(), cancelled()), its `env:` with `${{ inputs.* }}` filled
in, its `run:` script in bash, and records the `uses:` steps (the artifact upload) with
their `with:`. The action's scripts drive the real `qgjob` CLI against the real stack.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import AgentFleet, StackProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ORG = "acme"
# Each test's outcome from its name: "fail" always fails, "flaky" fails its first try,
# "slow" runs 60 s; anything else passes.
OUTCOMES = r"""
import os, sys, time
markers, test_path = sys.argv[1], sys.argv[2]
name = os.path.basename(test_path)
if "slow" in name:
    time.sleep(60)
if "fail" in name:
    print(f"{test_path}: expected 1, got 2"); sys.exit(1)
if "flaky" in name:
    marker = os.path.join(markers, test_path.replace("/", "_"))
    if not os.path.exists(marker):
        open(marker, "w").close()
        print("first try: timeout waiting for #toast"); sys.exit(1)
print("ok")
"""
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class StepResult:
    name: str
    ran: bool
    exit_code: int = 0
    stdout: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    uses: str | None = None
    with_: dict[str, str] = field(default_factory=dict)


@dataclass
class ActionRun:
    """One `uses:` of the action: its steps' results, outputs, summary and log."""

    steps: list[StepResult]
    outputs: dict[str, str]
    summary: str
    temp: Path

    @property
    def failed(self) -> bool:
        return any(s.exit_code != 0 for s in self.steps if s.ran)

    @property
    def log(self) -> str:
        return "\n".join(s.stdout for s in self.steps)

    def step(self, name_part: str) -> StepResult:
        return next(s for s in self.steps if name_part in s.name)


class LocalRunner:
    """Runs action.yml's composite steps the way the Actions runner does (enough of it)."""

    def __init__(self, workspace: Path, temp: Path, env: dict[str, str]) -> None:
        self.action = yaml.safe_load((ROOT / "action.yml").read_text())
        self.workspace = workspace
        self.temp = temp
        self.env = env
        self.summary = temp / "step_summary.md"

    def inputs(self, given: dict[str, str]) -> dict[str, str]:
        values = {}
        for name, spec in self.action["inputs"].items():
            if spec.get("required") and name not in given:
                raise AssertionError(f"required input {name} not given")
            values[name] = given.get(name, str(spec.get("default", "")))
        unknown = set(given) - set(values)
        assert not unknown, f"not inputs of the action: {unknown}"
        return values

    def value(self, expression: str, inputs: dict[str, str], steps: dict[str, Any]) -> str:
        kind, _, rest = expression.partition(".")
        if kind == "inputs":
            return inputs[rest]
        if kind == "steps":
            step_id, _, output = rest.partition(".outputs.")
            return str(steps.get(step_id, {}).get(output, ""))
        if expression == "github.action_path":
            return str(ROOT)
        raise AssertionError(f"expression not supported by this runner: {expression}")

    def fill(self, text: str, inputs: dict[str, str], steps: dict[str, Any]) -> str:
        return EXPRESSION.sub(lambda m: self.value(m.group(1), inputs, steps), str(text))

    def condition(
        self, text: str | None, inputs: dict[str, str], steps: dict[str, Any], state: str
    ) -> bool:
        if text is None:
            return state == "success"
        python = str(text)
        python = re.sub(
            r"(inputs|steps)\.[A-Za-z0-9_.-]+",
            lambda m: repr(self.value(m.group(0), inputs, steps)),
            python,
        )
        python = (
            python.replace("always()", "True")
            .replace("cancelled()", repr(state == "cancelled"))
            .replace("success()", repr(state == "success"))
            .replace("failure()", repr(state == "failure"))
            .replace("&&", " and ")
            .replace("||", " or ")
        )
        if "()" not in text and state != "success":
            # A condition without a status function means success() && (condition).
            return False
        return bool(eval(python, {"__builtins__": {}}, {}))  # noqa: S307 - our own action.yml

    def run(
        self,
        given: dict[str, str],
        *,
        cancel_when: Any = None,
        extra_env: dict[str, str] | None = None,
    ) -> ActionRun:
        inputs = self.inputs(given)
        steps: dict[str, dict[str, str]] = {}
        results: list[StepResult] = []
        state = "success"
        for number, step in enumerate(self.action["runs"]["steps"]):
            name = step.get("name", f"step {number}")
            if not self.condition(step.get("if"), inputs, steps, state):
                results.append(StepResult(name, ran=False))
                continue
            if "uses" in step:
                with_ = {k: self.fill(v, inputs, steps) for k, v in step.get("with", {}).items()}
                results.append(StepResult(name, True, uses=step["uses"], with_=with_))
                continue
            output_file = self.temp / f"output-{number}"
            output_file.write_text("")
            env = {
                **self.env,
                **(extra_env or {}),
                "GITHUB_ACTION_PATH": str(ROOT),
                "GITHUB_WORKSPACE": str(self.workspace),
                "GITHUB_OUTPUT": str(output_file),
                "GITHUB_STEP_SUMMARY": str(self.summary),
                "RUNNER_TEMP": str(self.temp),
                **{k: self.fill(v, inputs, steps) for k, v in (step.get("env") or {}).items()},
            }
            assert step.get("shell") == "bash", f"step {name}: composite run steps need a shell"
            process = subprocess.Popen(
                ["bash", "-e", "-c", step["run"]],
                cwd=self.workspace,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            if cancel_when is not None and step.get("id") == "run":
                wait_until(
                    lambda: cancel_when(self.temp), timeout_s=60, what="the moment to cancel"
                )
                # The runner cancels a step with SIGINT, then SIGTERM: the step's python.
                os.killpg(process.pid, signal.SIGINT)
                state = "cancelled"
            stdout, _ = process.communicate(timeout=120)
            outputs = parse_outputs(output_file.read_text())
            steps[step.get("id", f"s{number}")] = outputs
            results.append(StepResult(name, True, process.returncode, stdout, outputs))
            if process.returncode != 0 and state == "success":
                state = "failure"
        outputs = {
            n: self.fill(o["value"], inputs, steps) for n, o in self.action["outputs"].items()
        }
        summary = self.summary.read_text() if self.summary.exists() else ""
        return ActionRun(results, outputs, summary, self.temp)


def parse_outputs(text: str) -> dict[str, str]:
    outputs: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line and "=" not in line.split("<<", 1)[0]:
            name, delimiter = line.split("<<", 1)
            value = []
            for more in lines:
                if more == delimiter:
                    break
                value.append(more)
            outputs[name] = "\n".join(value)
        elif "=" in line:
            name, value_ = line.split("=", 1)
            outputs[name] = value_
    return outputs


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A repository that uses the action: its tests directory (the paths are what count)."""
    repo = tmp_path / "app-repo"
    for name in ("login", "cart-fail", "search-flaky", "profile", "export-slow"):
        path = repo / "tests" / f"{name}.spec.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("// an AppWright spec\n")
    return repo


@pytest.fixture
def agents(fleet: AgentFleet, tmp_path: Path, request: pytest.FixtureRequest) -> AgentFleet:
    script = tmp_path / "outcomes.py"
    script.write_text(OUTCOMES)
    markers = tmp_path / "markers"
    markers.mkdir()
    command = " ".join([shlex.quote(sys.executable), shlex.quote(str(script)),
                        shlex.quote(str(markers)), "{test_path}"])  # fmt: skip
    tag = re.sub(r"[^a-z0-9]", "", request.node.name.lower())[-20:]
    for n in (1, 2):
        fleet.start_command("emulator", f"gha-{tag}-{n}", test_command=command)
    return fleet


def runner_for(stack: StackProcess, scratch: Path, tmp_path: Path, run_id: str) -> LocalRunner:
    temp = tmp_path / f"runner-temp-{run_id}"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QGJOB_", "GITHUB_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(GITHUB_RUN_ID=run_id, GITHUB_RUN_ATTEMPT="1", GITHUB_JOB="appwright")
    return LocalRunner(scratch, temp, env)


def inputs(stack: StackProcess, version: str, tests: str, **more: str) -> dict[str, str]:
    return {
        "endpoint-url": stack.endpoint,
        "token": stack.token(ORG),
        "org-id": ORG,
        "app-version-id": version,
        "tests": tests,
        "install-cli": "false",  # the CLI of this checkout is on PATH already (.venv)
        **more,
    }


def test_a_failing_test_fails_the_job_with_summary_annotations_outputs_and_artifacts(
    stack: StackProcess, agents: AgentFleet, scratch: Path, tmp_path: Path
) -> None:
    runner = runner_for(stack, scratch, tmp_path, "1001")

    result = runner.run(inputs(stack, "gha-1.0.0", "tests/login.spec.js\ntests/cart-*.spec.js\n"))

    run_step = result.step("Submit and follow")
    assert run_step.exit_code == 1, result.log
    assert result.failed
    outputs = result.outputs
    assert outputs["run-id"].startswith("run-")
    assert (outputs["passed"], outputs["failed"], outputs["flaky"]) == ("1", "1", "0")
    report = Path(outputs["report-path"])
    assert report.exists()
    assert "tests/cart-fail.spec.js" in report.read_text()
    assert (report.parent / "junit.xml").exists()
    # The failed test's full output sits beside the report, which links it.
    (log,) = (report.parent / "artifacts").glob("*/output.log")
    assert "tests/cart-fail.spec.js: expected 1, got 2" in log.read_text()
    assert f'href="artifacts/{log.parent.name}/output.log"' in report.read_text()
    # The summary: totals, the failed test with device, duration and reason, savings.
    assert "qgjob run" in result.summary
    assert "| 2 | 1 | 1 | 0 | 0 | 0 | 0 |" in result.summary
    assert re.search(
        r"\| `tests/cart-fail.spec.js` \| failed \| emulator-gha-\S+ \| \d", result.summary
    )
    assert "exit code 1" in result.summary
    assert "Install savings" in result.summary
    # One annotation on the failed test's file.
    assert (
        "::error file=tests/cart-fail.spec.js,title=qgjob%3A tests/cart-fail.spec.js failed::"
        in (run_step.stdout)
    )
    # The artifact upload gets the report directory; the cancel step does not run.
    upload = result.step("Upload the JUnit")
    assert upload.ran
    assert upload.uses is not None
    assert upload.uses.startswith("actions/upload-artifact@")
    assert upload.with_["path"] == str(report.parent)
    assert not result.step("Cancel the run").ran
    assert not result.step("Install the qgjob CLI").ran
    assert not result.step("Upload the app build").ran
    # The same workflow run and attempt again: it re-attaches to the same run.
    again = runner_for(stack, scratch, tmp_path, "1001-again")
    again.env["GITHUB_RUN_ID"] = "1001"
    replay = again.run(inputs(stack, "gha-1.0.0", "tests/login.spec.js\ntests/cart-*.spec.js\n"))
    assert replay.outputs["run-id"] == outputs["run-id"]


@pytest.mark.parametrize(("fail_on", "code"), [("failure", 0), ("flaky", 1)])
def test_a_flaky_test_passes_with_fail_on_failure_and_fails_with_fail_on_flaky(
    stack: StackProcess, agents: AgentFleet, scratch: Path, tmp_path: Path, fail_on: str, code: int
) -> None:
    runner = runner_for(stack, scratch, tmp_path, f"2002-{fail_on}")

    result = runner.run(
        inputs(
            stack,
            f"gha-flaky-{fail_on}",
            "tests/search-flaky.spec.js\ntests/profile.spec.js",
            retries="2",
            **{"fail-on": fail_on},
        )
    )

    assert result.step("Submit and follow").exit_code == code, result.log
    assert (result.outputs["passed"], result.outputs["flaky"]) == ("2", "1")
    assert "flaky (passed on a re-run)" in result.summary
    assert "::warning file=tests/search-flaky.spec.js" in result.log
    junit = (Path(result.outputs["report-path"]).parent / "junit.xml").read_text()
    assert junit.count("<flakyFailure") == 1


def test_cancelling_the_workflow_cancels_the_run(
    stack: StackProcess, agents: AgentFleet, scratch: Path, tmp_path: Path
) -> None:
    runner = runner_for(stack, scratch, tmp_path, "3003")

    def submitted(temp: Path) -> bool:
        state = temp / "qgjob-run-id"
        if not state.exists():
            return False
        view = stack.run_view(state.read_text().strip(), ORG)
        return any(j["status"] == "running" for j in view["jobs"])

    result = runner.run(
        inputs(stack, "gha-cancel", "tests/export-slow.spec.js\ntests/login.spec.js"),
        cancel_when=submitted,
    )

    run_id = (result.temp / "qgjob-run-id").read_text().strip()
    assert result.step("Submit and follow").exit_code != 0
    assert f"run {run_id} cancelled (the workflow was cancelled: SIGINT)" in result.log
    assert result.step("Cancel the run").ran  # if: cancelled(): a repeat, harmless
    view = stack.run_view(run_id, ORG)
    assert set(view["counts"]) <= {"cancelled", "passed"}, view
    assert view["counts"].get("cancelled", 0) >= 1
    assert view["finished"] is True
