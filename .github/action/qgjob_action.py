"""The steps of the qgjob GitHub Action (action.yml): upload, run, cancel.

Standard library only (it runs before anything but the CLI is installed) and it drives the
real `qgjob` command, as a user would. Inputs come from the INPUT_* variables action.yml
sets; it writes $GITHUB_OUTPUT, $GITHUB_STEP_SUMMARY and workflow commands
(``::error file=...::``), and keeps the run id in $RUNNER_TEMP/qgjob-run-id so the
``if: cancelled()`` step can cancel it.

  run:    submit (idempotency key from the workflow run id and attempt), follow the run
          (SIGINT/SIGTERM or the timeout cancel it), write the JUnit XML and the HTML
          report, the summary, annotations and outputs; exit 1 per fail-on, 3 on an
          infrastructure problem.
  upload: qgjob app upload of INPUT_APP_PATH.
  cancel: qgjob cancel --run-id of the run this job submitted (nothing when none).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3
NOT_PASSED = ("failed", "error", "timed_out")
MAX_ANNOTATIONS = 50  # GitHub shows at most 10 errors per step anyway; keep the log short
MAX_SUMMARY_ROWS = 200


# ------------------------------------------------------------ workflow commands
def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, message: str, **properties: str) -> str:
    """A workflow command line, e.g. ``::error file=a.ts,title=x::message``."""
    props = ",".join(f"{k}={escape_property(v)}" for k, v in properties.items() if v)
    return f"::{level} {props}::{escape_data(message)}" if props else f"::{level}::{message}"


def append(path_var: str, text: str, env: Mapping[str, str]) -> None:
    path = env.get(path_var)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)


def set_outputs(outputs: Mapping[str, Any], env: Mapping[str, str]) -> None:
    lines = []
    for name, value in outputs.items():
        text = str(value)
        if "\n" in text:
            delimiter = "qgjob_" + hashlib.sha256(text.encode()).hexdigest()[:16]
            lines.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
        else:
            lines.append(f"{name}={text}\n")
    append("GITHUB_OUTPUT", "".join(lines), env)


# ------------------------------------------------------------ inputs
def test_paths(spec: str, workspace: str) -> list[str]:
    """The test paths of the ``tests`` input: one path or glob per line (relative to the
    workspace; blank lines and # comments skipped), globs expanded in order, each once."""
    paths: list[str] = []
    for raw in spec.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(ch in line for ch in "*?["):
            found = sorted(glob.glob(line, root_dir=workspace or None, recursive=True))
            if not found:
                raise SystemExit(f"tests: {line!r} matches no file in {workspace or '.'}")
            paths.extend(p.replace(os.sep, "/") for p in found)
        else:
            paths.append(line)
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise SystemExit("tests: no test path given")
    return unique


def idempotency_key(env: Mapping[str, str], suite: Mapping[str, Any]) -> str:
    """Same workflow run, attempt and job and the same suite: the same key, so a step that
    runs again re-attaches to its run; a new attempt (a re-run) submits anew."""
    digest = hashlib.sha256(json.dumps(suite, sort_keys=True).encode()).hexdigest()[:12]
    parts = [
        env.get("GITHUB_RUN_ID", "local"),
        env.get("GITHUB_RUN_ATTEMPT", "1"),
        env.get("GITHUB_JOB", "job")[:40],
        digest,
    ]
    key = "gha:" + ":".join(parts)
    return "".join(ch if ch.isalnum() or ch in "._:-" else "-" for ch in key)[:128]


# ------------------------------------------------------------ the CLI
def qgjob(env: Mapping[str, str]) -> str:
    found = env.get("QGJOB_CLI") or shutil.which("qgjob", path=env.get("PATH"))
    if not found:
        raise SystemExit("the qgjob CLI is not on PATH (install-cli: 'true' installs it)")
    return found


def call(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [qgjob(env), *args], env=dict(env), capture_output=True, text=True, check=False
    )


def state_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("RUNNER_TEMP") or ".") / "qgjob-run-id"


# ------------------------------------------------------------ summary
def cell(value: Any) -> str:
    text = " ".join(str("" if value is None else value).split())
    return text.replace("|", "\\|")[:300]


def duration(value: Any) -> str:
    return f"{value:.1f}s" if isinstance(value, int | float) else "-"


def summary(run: Mapping[str, Any], report_name: str) -> str:
    jobs = [j for j in run.get("jobs") or [] if isinstance(j, Mapping)]
    by: dict[str, int] = {}
    for job in jobs:
        by[str(job.get("status"))] = by.get(str(job.get("status")), 0) + 1
    flaky = [j for j in jobs if j.get("flaky")]
    ran = [j for j in jobs if j.get("batch_id") and j.get("started_at") is not None]
    batches = len({j.get("batch_id") for j in ran})
    verdict = "passed" if run.get("passed") else "failed" if run.get("finished") else "unfinished"
    icon = {"passed": "✅", "failed": "❌"}.get(verdict, "⏳")
    lines = [
        f"### {icon} qgjob run `{run.get('run_id')}` {verdict}",
        "",
        f"{cell(run.get('org_id'))} / app `{cell(run.get('app_version_id'))}` on "
        f"{cell(run.get('target'))}",
        "",
        "| tests | passed | failed | flaky | errors | timed out | cancelled |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(jobs)} | {by.get('passed', 0)} | {by.get('failed', 0)} | {len(flaky)} | "
        f"{by.get('error', 0)} | {by.get('timed_out', 0)} | {by.get('cancelled', 0)} |",
        "",
        f"**Install savings:** {len(ran) - batches} app install(s) saved: {len(ran)} test(s) "
        f"ran in {batches} batch(es), each installing its app at most once.",
        "",
    ]
    listed = [j for j in jobs if j.get("status") in NOT_PASSED or j.get("flaky")]
    if listed:
        lines += [
            "#### Failed and flaky tests",
            "",
            "| test | status | device | duration | reason |",
            "|---|---|---|---:|---|",
        ]
        for job in listed[:MAX_SUMMARY_ROWS]:
            status = "flaky (passed on a re-run)" if job.get("flaky") else job.get("status")
            reason = job.get("message")
            if job.get("flaky") and job.get("tries"):
                reason = (job["tries"][-1] or {}).get("message") or reason
            lines.append(
                f"| `{cell(job.get('test_path'))}` | {cell(status)} | "
                f"{cell(job.get('agent_id') or '-')} | {duration(job.get('duration_s'))} | "
                f"{cell(reason)} |"
            )
        if len(listed) > MAX_SUMMARY_ROWS:
            lines.append(f"| … {len(listed) - MAX_SUMMARY_ROWS} more | | | | |")
        lines.append("")
    lines.append(f"The JUnit XML and the HTML report are in the `{report_name}` artifact.")
    return "\n".join(lines) + "\n"


def annotation_lines(run: Mapping[str, Any]) -> list[str]:
    commands = []
    for job in run.get("jobs") or []:
        if not isinstance(job, Mapping):
            continue
        path = str(job.get("test_path") or "")
        where = f"on {job.get('agent_id') or 'no agent'}, {duration(job.get('duration_s'))}"
        if job.get("status") in NOT_PASSED:
            commands.append(
                annotation(
                    "error",
                    f"{job.get('message') or job.get('status')} ({where})",
                    file=path,
                    title=f"qgjob: {path} {job.get('status')}",
                )
            )
        elif job.get("flaky"):
            commands.append(
                annotation(
                    "warning",
                    f"passed on a re-run after a failed try ({where})",
                    file=path,
                    title=f"qgjob: {path} is flaky",
                )
            )
    return commands[:MAX_ANNOTATIONS]


def exit_code(run: Mapping[str, Any], fail_on: str) -> int:
    if fail_on == "never":
        return 0
    if not run.get("passed"):
        return EXIT_FAILED
    if fail_on == "flaky" and int(run.get("flaky") or 0) > 0:
        return EXIT_FAILED
    return 0


# ------------------------------------------------------------ commands
class Cancelled(Exception):
    """The step got SIGINT or SIGTERM (the workflow was cancelled)."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Cancelled(signal.Signals(signum).name)


def cancel_run(env: Mapping[str, str], run_id: str, why: str) -> None:
    result = call(env, "--json", "cancel", "--run-id", run_id)
    if result.returncode == 0:
        cancelled = json.loads(result.stdout).get("cancelled", 0)
        print(f"qgjob: run {run_id} cancelled ({why}): {cancelled} job(s) stopped")
    else:
        print(annotation("warning", f"could not cancel run {run_id}: {result.stderr.strip()}"))


def run(env: dict[str, str]) -> int:
    fail_on = env.get("INPUT_FAIL_ON") or "failure"
    if fail_on not in ("failure", "flaky", "never"):
        print(annotation("error", f"fail-on: {fail_on!r}: use failure, flaky or never"))
        return EXIT_USAGE
    workspace = env.get("GITHUB_WORKSPACE") or os.getcwd()
    tests = test_paths(env.get("INPUT_TESTS") or "", workspace)
    org_id = env.get("INPUT_ORG_ID", "")
    app_version_id = env.get("INPUT_APP_VERSION_ID", "")
    target = env.get("INPUT_TARGET") or "emulator"
    priority = env.get("INPUT_PRIORITY") or "5"
    retries = env.get("INPUT_RETRIES") or "0"
    suite = {"org_id": org_id, "app_version_id": app_version_id, "target": target,
             "priority": priority, "retries": retries, "tests": tests}  # fmt: skip
    args = ["--json", "submit", "--org-id", org_id, "--app-version-id", app_version_id,
            "--target", target, "--priority", priority, "--retries", retries,
            "--idempotency-key", idempotency_key(env, suite)]  # fmt: skip
    for path in tests:
        args += ["--test", path]
    submitted = call(env, *args)
    if submitted.returncode != 0:
        print(submitted.stderr, file=sys.stderr)
        level = "submission rejected" if submitted.returncode == EXIT_USAGE else "unreachable"
        print(annotation("error", submitted.stderr.strip() or level, title=f"qgjob: {level}"))
        return submitted.returncode
    run_id = str(json.loads(submitted.stdout)["run_id"])
    state_file(env).write_text(run_id, encoding="utf-8")
    report_dir = Path(env.get("RUNNER_TEMP") or ".") / "qgjob-report" / run_id
    report_dir.mkdir(parents=True, exist_ok=True)
    junit = report_dir / "junit.xml"
    report = report_dir / "report.html"
    set_outputs({"run-id": run_id, "report-dir": str(report_dir)}, env)
    print(f"qgjob: run {run_id}: {len(tests)} test(s) submitted; following it")
    timeout = env.get("INPUT_TIMEOUT") or "1800"
    wait = [qgjob(env), "--json", "status", "--run-id", run_id, "--wait", "--wait-timeout",
            timeout, "--junit", str(junit), "--fail-on", "never"]  # fmt: skip
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    child: subprocess.Popen[str] | None = None
    try:
        child = subprocess.Popen(wait, env=env, stdout=subprocess.PIPE, text=True)
        out, _ = child.communicate()
    except Cancelled as why:
        if child is not None:
            child.terminate()
            child.wait()
        cancel_run(env, run_id, f"the workflow was cancelled: {why}")
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if child.returncode not in (0, 1, 3) or not out.strip():
        print(annotation("error", f"qgjob status exited {child.returncode}", title="qgjob"))
        return EXIT_INFRA
    view = json.loads(out)
    if view.get("wait_timed_out"):
        cancel_run(env, run_id, f"not finished within {timeout}s (timeout)")
        view = json.loads(call(env, "--json", "status", "--run-id", run_id).stdout or "{}")
    # The output and attachments of the tests that did not pass (and flaky ones), beside
    # the report, which links them: the artifact keeps them after the links expire.
    files = report_dir / "artifacts"
    call(env, "artifacts", "--run-id", run_id, "--only-failed", "-o", str(files))
    call(env, "report", "--run-id", run_id, "-o", str(report), "--artifacts-dir", str(files))
    jobs = [j for j in view.get("jobs") or [] if isinstance(j, Mapping)]
    passed = sum(1 for j in jobs if j.get("status") == "passed")
    failed = sum(1 for j in jobs if j.get("status") in NOT_PASSED)
    flaky = sum(1 for j in jobs if j.get("flaky"))
    set_outputs(
        {"passed": passed, "failed": failed, "flaky": flaky, "report-path": str(report)}, env
    )
    append(
        "GITHUB_STEP_SUMMARY", summary(view, env.get("INPUT_ARTIFACT_NAME") or "qgjob-report"), env
    )
    for line in annotation_lines(view):
        print(line)
    if not view.get("finished"):
        print(annotation("error", f"run {run_id} did not finish within {timeout}s; cancelled"))
        return EXIT_INFRA
    code = exit_code(view, fail_on)
    print(
        f"qgjob: run {run_id}: {passed} passed, {failed} failed, {flaky} flaky (fail-on: {fail_on})"
    )
    return code


def upload(env: dict[str, str]) -> int:
    result = call(env, "app", "upload", "--org-id", env.get("INPUT_ORG_ID", ""),
                  "--app-version-id", env.get("INPUT_APP_VERSION_ID", ""),
                  env.get("INPUT_APP_PATH", ""))  # fmt: skip
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        print(annotation("error", result.stderr.strip() or "upload failed", title="qgjob upload"))
    return result.returncode


def cancel(env: dict[str, str]) -> int:
    path = state_file(env)
    if not path.exists():
        print("qgjob: no run was submitted; nothing to cancel")
        return 0
    cancel_run(env, path.read_text(encoding="utf-8").strip(), "the workflow was cancelled")
    return 0


def main(argv: Sequence[str]) -> int:
    commands = {"run": run, "upload": upload, "cancel": cancel}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: qgjob_action.py {{{','.join(commands)}}}", file=sys.stderr)
        return EXIT_USAGE
    return commands[argv[0]](dict(os.environ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
