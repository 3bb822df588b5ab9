"""Runs AppWright specs: ``npx appwright test <test_path> --project <target>``.

AppWright runs Playwright Test underneath; this runner asks for Playwright's JSON reporter
(``--reporter=list,json``, written to a file of its own through
``PLAYWRIGHT_JSON_OUTPUT_FILE``/``_NAME``) and for an output folder of its own
(``--output``), then reads the report rather than the exit code:

- every test ``expected`` (or ``flaky``: passed on a retry, noted) or ``skipped`` ->
  passed; any ``unexpected`` -> failed, with the first failing test's error message;
  a report without a single test -> failed ("no tests ran"), with the report's errors;
- no readable report at all -> error (AppWright itself, Node or the device broke);
- timed out / interrupted by the agent -> as the command runner says;
- duration: the report's (``stats.duration``); retries: counted from each result's
  ``retry``; attachments (screenshots, videos, traces) of every result: handed to the
  agent, which uploads them as the job's artifacts (bounded in count and size).

The build's path (the agent's cache) is in ``APP_BUILD_PATH``, which the project's
``appwright.config.ts`` reads as ``buildPath`` (examples/appwright does). AppWright
installs ``buildPath`` on the device itself; ``install_command`` is an optional extra
step run once per batch (e.g. ``adb install -r {app_path}``).

The test path goes through the command runner's guard (``argument_path``): it is never
read as an option (a path beginning with '-' is passed as './-...').
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgjob.runners.base import (
    Attachment,
    RunOutcome,
    UnsafeArgument,
    refused,
    truncate_output,
)
from qgjob.runners.command import CommandRunner, argument_path, check_not_option

REPORTER = "list,json"
MAX_REPORT_BYTES = 32 * 1024 * 1024
MAX_SUMMARY_LINES = 200
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clean(text: str) -> str:
    return _ANSI.sub("", text).strip()


@dataclass(frozen=True)
class TestResult:
    """One test of the report (a spec in one project), with its last result."""

    title: str
    status: str  # expected | unexpected | flaky | skipped
    last_status: str  # the last result's: passed | failed | timedOut | skipped | interrupted
    duration_ms: float
    retries: int
    error: str | None


@dataclass
class ParsedReport:
    status: str  # passed | failed | error
    duration_s: float | None
    message: str | None
    tests: list[TestResult] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return sum(t.retries for t in self.tests)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for test in self.tests:
            counts[test.status] = counts.get(test.status, 0) + 1
        head = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no tests"
        lines = [f"appwright: {len(self.tests)} test(s): {head}; retries {self.retries}"]
        marks = {"expected": "ok", "flaky": "flaky", "skipped": "skipped"}
        for test in self.tests[:MAX_SUMMARY_LINES]:
            mark = marks.get(test.status, "FAILED")
            retry = f", {test.retries} retr{'y' if test.retries == 1 else 'ies'}"
            line = f"  {mark:7} {test.title} ({test.duration_ms / 1000:.2f}s{retry})"
            if test.error and test.status == "unexpected":
                line += f": {test.error.splitlines()[0][:300]}"
            lines.append(line)
        lines.extend(f"  error: {error.splitlines()[0][:300]}" for error in self.errors[:5])
        if self.attachments:
            lines.append(f"  attachments: {', '.join(a.name for a in self.attachments)}")
        return "\n".join(lines)


def _error_text(result: Mapping[str, Any]) -> str | None:
    errors = result.get("errors")
    if isinstance(errors, list):
        for error in errors:
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return _clean(error["message"])
    error = result.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _clean(error["message"])
    return None


def _specs(suite: Mapping[str, Any], titles: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """(full title, spec) of every spec of a suite and its nested suites."""
    title = suite.get("title")
    here = (*titles, title) if isinstance(title, str) and title else titles
    for spec in suite.get("specs") or []:
        if isinstance(spec, dict):
            name = " > ".join((*here, str(spec.get("title", ""))))
            yield name, spec
    for child in suite.get("suites") or []:
        if isinstance(child, dict):
            yield from _specs(child, here)


def _attachment(raw: Any, title: str, retry: int, base: Path) -> Attachment | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        return None  # an inline body (stdout text and the like): not an artifact
    path = Path(raw["path"])
    if not path.is_absolute():
        path = base / path
    name = str(raw.get("name") or path.name)
    label = f"{title} > {name}" + (f" (retry {retry})" if retry else "")
    content_type = str(raw.get("contentType") or "application/octet-stream")
    return Attachment(name=label, path=str(path), content_type=content_type)


def parse_report(report: Mapping[str, Any], base: Path) -> ParsedReport:
    """Playwright's JSON report (suites/specs/tests/results) as one job's result."""
    tests: list[TestResult] = []
    attachments: list[Attachment] = []
    for suite in report.get("suites") or []:
        if not isinstance(suite, dict):
            continue
        for title, spec in _specs(suite, ()):
            for test in spec.get("tests") or []:
                if not isinstance(test, dict):
                    continue
                results = [r for r in test.get("results") or [] if isinstance(r, dict)]
                project = test.get("projectName")
                name = f"[{project}] {title}" if project else title
                last = results[-1] if results else {}
                retries = max((int(r.get("retry") or 0) for r in results), default=0)
                error = next((e for e in map(_error_text, reversed(results)) if e), None)
                tests.append(
                    TestResult(
                        title=name,
                        status=str(test.get("status") or "unexpected"),
                        last_status=str(last.get("status") or ""),
                        duration_ms=float(sum(float(r.get("duration") or 0) for r in results)),
                        retries=retries,
                        error=error,
                    )
                )
                for result in results:
                    for raw in result.get("attachments") or []:
                        found = _attachment(raw, name, int(result.get("retry") or 0), base)
                        if found is not None:
                            attachments.append(found)
    errors = [
        _clean(str(e.get("message")))
        for e in report.get("errors") or []
        if isinstance(e, dict) and e.get("message")
    ]
    stats = report.get("stats")
    duration_s = None
    if isinstance(stats, dict) and isinstance(stats.get("duration"), int | float):
        duration_s = float(stats["duration"]) / 1000.0
    parsed = ParsedReport("passed", duration_s, None, tests, attachments, errors)
    failing = [t for t in tests if t.status == "unexpected"]
    if tests and all(t.last_status == "interrupted" for t in tests):
        parsed.status, parsed.message = "error", "appwright: the run was interrupted"
    elif failing:
        first = failing[0]
        reason = (first.error or first.last_status or "failed").splitlines()[0]
        more = f" (+{len(failing) - 1} more failed)" if len(failing) > 1 else ""
        parsed.status, parsed.message = "failed", f"{first.title}: {reason}{more}"[:1900]
    elif not tests:
        reason = errors[0].splitlines()[0] if errors else "no test matched the test path"
        parsed.status, parsed.message = "failed", f"no tests ran: {reason}"[:1900]
    elif errors:  # every test passed, but the run itself reported an error (e.g. teardown)
        parsed.status, parsed.message = "failed", f"appwright: {errors[0].splitlines()[0]}"
    elif any(t.status == "flaky" for t in tests):
        parsed.message = f"passed on a retry ({parsed.retries} retries)"
    return parsed


class AppWrightRunner:
    """``npx appwright test <test_path> --project <target>`` in ``project_dir``."""

    def __init__(
        self,
        project_dir: str | None = None,
        install_command: str | None = None,
        *,
        npx: str = "npx",
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        work_dir: str | None = None,
    ) -> None:
        self.project_dir = Path(project_dir or ".").resolve()
        if not self.project_dir.is_dir():
            raise ValueError(f"--project-dir {self.project_dir} is not a directory")
        self._npx = npx
        self._commands = CommandRunner(
            command="{test_path}",  # unused: this runner builds its own argument vector
            install_command=install_command,
            cwd=str(self.project_dir),
            env=env,
            clock=clock,
        )
        self._work_dir = work_dir
        self._last_run_dir: Path | None = None

    @property
    def app_path(self) -> str | None:
        return self._commands.app_path

    def install(
        self, org_id: str, app_version_id: str, target: str, app_path: str | None = None
    ) -> None:
        self._commands.install(org_id, app_version_id, target, app_path)

    def argv(self, test_path: str, target: str, output_dir: Path) -> list[str]:
        """Raises UnsafeArgument for a test path or target that could be an option."""
        return [
            self._npx,
            "appwright",
            "test",
            argument_path(test_path),
            "--project",
            check_not_option("target", target),
            f"--reporter={REPORTER}",
            f"--output={output_dir}",
        ]

    def run(
        self,
        test_path: str,
        target: str,
        timeout_s: float,
        should_stop: Callable[[], bool],
        *,
        org_id: str = "",
        app_version_id: str = "",
    ) -> RunOutcome:
        # The previous test's files were uploaded by now: one run's output on disk at most.
        self.close()
        run_dir = Path(tempfile.mkdtemp(prefix="qgjob-appwright-", dir=self._work_dir))
        self._last_run_dir = run_dir
        report_file = run_dir / "report.json"
        try:
            argv = self.argv(test_path, target, run_dir / "test-results")
        except UnsafeArgument as error:
            return refused(error)
        env = self._commands.test_env(
            {
                "PLAYWRIGHT_JSON_OUTPUT_FILE": str(report_file),
                "PLAYWRIGHT_JSON_OUTPUT_NAME": str(report_file),
                "QGJOB_ORG_ID": org_id,
                "QGJOB_APP_VERSION_ID": app_version_id,
            }
        )
        outcome = self._commands._execute(argv, timeout_s, should_stop, env=env)
        if outcome.status in ("timed_out", "error") and outcome.message:
            # Killed (timeout, stop) or never started (no npx): the report, if any, is partial.
            return outcome
        report = _read_report(report_file)
        if isinstance(report, str):
            detail = f"{outcome.message}; " if outcome.message else ""
            return RunOutcome(
                "error",
                outcome.duration_s,
                f"appwright wrote no usable JSON report ({detail}{report})",
                outcome.output,
            )
        parsed = parse_report(report, self.project_dir)
        status = parsed.status
        message = parsed.message
        if status == "passed" and outcome.status != "passed":
            # Every test passed, but appwright exited non-zero: believe the failure.
            status, message = "failed", f"appwright: {outcome.message or 'failed'}"
        output = truncate_output(f"{outcome.output.rstrip()}\n\n{parsed.summary()}\n".lstrip())
        return RunOutcome(
            status,  # type: ignore[arg-type]  # passed | failed | error
            parsed.duration_s if parsed.duration_s is not None else outcome.duration_s,
            message,
            output,
            attachments=tuple(parsed.attachments),
        )

    def close(self) -> None:
        """Removes the last run's output folder (its attachments are uploaded by now)."""
        if self._last_run_dir is not None:
            shutil.rmtree(self._last_run_dir, ignore_errors=True)
            self._last_run_dir = None


def _read_report(path: Path) -> dict[str, Any] | str:
    """The parsed report, or why there is none."""
    try:
        size = path.stat().st_size
    except OSError:
        return f"{path.name} not written"
    if size > MAX_REPORT_BYTES:
        return f"{path.name} is {size} bytes, over {MAX_REPORT_BYTES}"
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as error:
        return f"{path.name} is not JSON: {error}"
    if not isinstance(data, dict):
        return f"{path.name} is not a JSON object"
    return data


__all__ = ["AppWrightRunner", "ParsedReport", "TestResult", "parse_report"]
