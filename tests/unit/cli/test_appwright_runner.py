"""The appwright runner against a fake `npx` that writes Playwright's JSON report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from qgjob.runners import AppWrightRunner, get_runner
from qgjob.runners.appwright import parse_report
from tests.unit.cli.fake_appwright import install_fake_npx, path_with


def never() -> bool:
    return False


class Project:
    """An AppWright project directory, a fake npx on PATH and the log of its calls."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "project"
        self.dir.mkdir()
        self.bin = tmp_path / "bin"
        install_fake_npx(self.bin)
        self.log = tmp_path / "npx.log"
        self.env = {"PATH": path_with(self.bin), "FAKE_NPX_LOG": str(self.log)}

    def runner(self, **options: Any) -> AppWrightRunner:
        return AppWrightRunner(
            str(self.dir), env=self.env, work_dir=str(self.dir.parent), **options
        )

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_a_passing_spec_runs_npx_appwright_test_with_the_json_reporter(project: Project) -> None:
    runner = project.runner()
    outcome = runner.run("tests/login.spec.js", "emulator", 60.0, never)
    assert outcome.status == "passed", outcome
    assert outcome.message is None
    assert outcome.duration_s == pytest.approx((2345 + 321) / 1000)  # the report's stats
    (call,) = project.calls()
    argv = call["argv"]
    assert argv[:5] == ["appwright", "test", "tests/login.spec.js", "--project", "emulator"]
    assert argv[5] == "--reporter=list,json"
    assert argv[6].startswith("--output=")
    assert call["cwd"] == str(project.dir.resolve())
    assert "appwright: 1 test(s): 1 expected; retries 0" in outcome.output
    assert "Running 1 test using 1 worker" in outcome.output  # the process output too
    assert outcome.attachments == ()


def test_a_failing_spec_reports_the_error_retries_and_attachments(project: Project) -> None:
    outcome = project.runner().run("tests/checkout-fail.spec.js", "device", 60.0, never)
    assert outcome.status == "failed"
    assert outcome.message is not None
    assert outcome.message.startswith(
        "[device] tests/checkout-fail.spec.js > places an order: "
        "Error: expect(locator).toBeVisible() failed"
    )
    assert "\x1b[" not in outcome.message  # colours stripped
    assert "retries 1" in outcome.output
    assert "FAILED  [device] tests/checkout-fail.spec.js > places an order" in outcome.output
    kinds = [(Path(a.path).name, a.content_type) for a in outcome.attachments]
    assert kinds == [
        ("screenshot-1.png", "image/png"),
        ("video.webm", "video/webm"),
        ("screenshot-1.png", "image/png"),
        ("trace.zip", "application/zip"),
    ]
    assert outcome.attachments[3].name.endswith("> trace (retry 1)")
    assert all(Path(a.path).is_file() for a in outcome.attachments)  # there to upload


def test_a_flaky_spec_passes_and_says_it_needed_a_retry(project: Project) -> None:
    outcome = project.runner().run("tests/search-flaky.spec.js", "emulator", 60.0, never)
    assert outcome.status == "passed"
    assert outcome.message == "passed on a retry (1 retries)"


def test_no_report_is_an_error_not_a_failure(project: Project) -> None:
    outcome = project.runner().run("tests/noreport.spec.js", "emulator", 60.0, never)
    assert outcome.status == "error"
    assert outcome.message is not None
    assert "no usable JSON report" in outcome.message
    assert "exit code 1" in outcome.message


def test_a_path_matching_no_test_fails_with_playwrights_error(project: Project) -> None:
    outcome = project.runner().run("tests/nomatch.spec.js", "emulator", 60.0, never)
    assert outcome.status == "failed"
    assert outcome.message == "no tests ran: Error: No tests found."


def test_the_build_path_is_in_the_environment_the_config_reads(
    project: Project, tmp_path: Path
) -> None:
    build = tmp_path / "cache" / "app-release.apk"
    build.parent.mkdir()
    build.write_bytes(b"an apk")
    runner = project.runner()
    runner.install("acme", "v1", "emulator", str(build))
    assert runner.run("tests/login.spec.js", "emulator", 60.0, never).status == "passed"
    (call,) = project.calls()
    assert call["app_build_path"] == str(build)
    assert call["build_sha256"] == hashlib.sha256(b"an apk").hexdigest()


def test_the_install_command_gets_the_build_path(project: Project, tmp_path: Path) -> None:
    marker = tmp_path / "installed.txt"
    command = (
        f"{__import__('sys').executable} -c "
        f'\'import sys; open("{marker}", "w").write(sys.argv[1])\' {{app_path}}'
    )
    runner = project.runner(install_command=command)
    runner.install("acme", "v1", "emulator", "/cache/abc/app.apk")
    assert marker.read_text() == "/cache/abc/app.apk"


def test_an_option_like_path_is_never_an_option_and_escaping_ones_never_run(
    project: Project,
) -> None:
    runner = project.runner()
    outcome = runner.run("-c.spec.js", "emulator", 60.0, never)
    assert outcome.status == "passed"
    assert project.calls()[0]["argv"][2] == "./-c.spec.js"
    for path in ("/etc/passwd", "../x.spec.js", "a/../../x.spec.js"):
        refused = runner.run(path, "emulator", 60.0, never)
        assert refused.status == "failed"
        assert refused.message is not None
        assert refused.message.startswith("refused to run")
    bad_target = runner.run("tests/a.spec.js", "--config=x", 60.0, never)
    assert bad_target.status == "failed"
    assert len(project.calls()) == 1  # nothing else ran


def test_only_the_last_runs_output_stays_on_disk(project: Project) -> None:
    runner = project.runner()
    first = runner.run("tests/a-fail.spec.js", "emulator", 60.0, never)
    assert all(Path(a.path).exists() for a in first.attachments)
    runner.run("tests/b.spec.js", "emulator", 60.0, never)
    assert not any(Path(a.path).exists() for a in first.attachments)
    runner.close()
    assert not list(project.dir.parent.glob("qgjob-appwright-*"))


def test_a_missing_npx_is_an_error(tmp_path: Path) -> None:
    runner = AppWrightRunner(str(tmp_path), env={"PATH": str(tmp_path / "nothing")})
    outcome = runner.run("tests/a.spec.js", "emulator", 60.0, never)
    assert outcome.status == "error"
    assert outcome.message is not None
    assert "command not found: npx" in outcome.message


def test_it_is_a_registered_runner(project: Project) -> None:
    runner = get_runner("appwright", project_dir=str(project.dir))
    assert isinstance(runner, AppWrightRunner)
    with pytest.raises(ValueError, match="not a directory"):
        get_runner("appwright", project_dir=str(project.dir / "missing"))


def test_nested_describe_blocks_and_skipped_tests(tmp_path: Path) -> None:
    report = {
        "suites": [
            {
                "title": "cart.spec.ts",
                "specs": [],
                "suites": [
                    {
                        "title": "cart",
                        "specs": [
                            {
                                "title": "adds an item",
                                "tests": [
                                    {
                                        "projectName": "emulator",
                                        "status": "expected",
                                        "results": [
                                            {
                                                "status": "passed",
                                                "duration": 1000,
                                                "retry": 0,
                                                "attachments": [
                                                    {
                                                        "name": "stdout",
                                                        "contentType": "text/plain",
                                                        "body": "aGk=",
                                                    },
                                                    {
                                                        "name": "screenshot",
                                                        "contentType": "image/png",
                                                        "path": "shots/a.png",
                                                    },
                                                ],
                                            }
                                        ],
                                    }
                                ],
                            },
                            {
                                "title": "checks out",
                                "tests": [{"status": "skipped", "results": []}],
                            },
                        ],
                    }
                ],
            }
        ],
        "errors": [],
    }
    parsed = parse_report(report, tmp_path)
    assert parsed.status == "passed"
    assert parsed.duration_s is None  # no stats: the caller uses the process's time
    assert [t.title for t in parsed.tests] == [
        "[emulator] cart.spec.ts > cart > adds an item",
        "cart.spec.ts > cart > checks out",
    ]
    (shot,) = parsed.attachments  # an inline body is not an artifact
    assert shot.path == str(tmp_path / "shots/a.png")


def test_a_passing_report_with_a_run_error_is_a_failure(tmp_path: Path) -> None:
    report = {
        "suites": [
            {
                "title": "a.spec.ts",
                "specs": [
                    {
                        "title": "t",
                        "tests": [{"status": "expected", "results": [{"status": "passed"}]}],
                    }
                ],
            }
        ],
        "errors": [{"message": "Error: globalTeardown failed"}],
    }
    parsed = parse_report(report, tmp_path)
    assert parsed.status == "failed"
    assert parsed.message == "appwright: Error: globalTeardown failed"
