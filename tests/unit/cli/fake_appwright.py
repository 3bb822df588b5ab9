"""A fake ``npx`` for the appwright runner's tests: ``npx appwright test <path> --project <t>
--reporter=list,json --output=<dir>`` writes what Playwright's JSON reporter writes.

The report has the real shape (Playwright 1.4x ``JSONReport``: config, suites of specs of
tests of results, errors, stats; results with status, duration, error(s), retry and
attachments with a path). Each call appends one JSON line to ``$FAKE_NPX_LOG``: its argv,
working directory, ``APP_BUILD_PATH`` and the sha256 of that file. What a spec does
follows its file name:

- ``*fail*``: fails twice (a retry), with a screenshot, a video and (on the retry) a trace;
- ``*flaky*``: fails once, passes on the retry;
- ``*noreport*``: crashes before writing a report (exit 1);
- ``*nomatch*``: a report without tests, with Playwright's "No tests found" error;
- anything else: passes.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

SCRIPT = r"""
import hashlib, json, os, sys, time
from pathlib import Path

argv = sys.argv[1:]
build = os.environ.get("APP_BUILD_PATH")
digest = None
if build and Path(build).is_file():
    digest = hashlib.sha256(Path(build).read_bytes()).hexdigest()
log = os.environ.get("FAKE_NPX_LOG")
if log:
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "app_build_path": build,
                                 "build_sha256": digest}) + "\n")
if argv[:2] != ["appwright", "test"]:
    print("fake npx: only `npx appwright test` is faked", file=sys.stderr)
    sys.exit(2)
spec = argv[2]
project = argv[argv.index("--project") + 1]
output = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--output=")))
report_path = (
    os.environ.get("PLAYWRIGHT_JSON_OUTPUT_FILE") or os.environ["PLAYWRIGHT_JSON_OUTPUT_NAME"]
)
name = Path(spec).name
print(f"Running 1 test using 1 worker")
if "noreport" in name:
    print("Error: Cannot find module 'appwright'", file=sys.stderr)
    sys.exit(1)

def attachment(kind, retry, ctype, body):
    folder = output / f"{name}-{project}" / f"retry{retry}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / kind
    path.write_bytes(body)
    return {"name": kind.split(".")[0].split("-")[0], "contentType": ctype, "path": str(path)}

def result(status, retry, duration, error=None, attachments=()):
    entry = {"workerIndex": 0, "parallelIndex": 0, "status": status, "duration": duration,
             "errors": [], "stdout": [{"text": "tapping Login\n"}], "stderr": [],
             "retry": retry, "startTime": "2026-12-01T10:00:00.000Z", "annotations": [],
             "attachments": list(attachments)}
    if error:
        entry["error"] = {"message": error, "stack": error + "\n    at " + spec + ":7:5"}
        entry["errors"] = [{"message": error, "location": {"file": spec, "line": 7, "column": 5}}]
        entry["errorLocation"] = {"file": spec, "line": 7, "column": 5}
    return entry

failure = ("\x1b[31mError: expect(locator).toBeVisible() failed\x1b[39m\n\n"
           "Locator: getByText('Order placed')\nExpected: visible\n"
           "Received: <element(s) not found>")
if "fail" in name:
    results = [
        result("failed", 0, 4210, failure, [
            attachment("screenshot-1.png", 0, "image/png", b"\x89PNG fake screenshot 0"),
            attachment("video.webm", 0, "video/webm", b"webm fake video 0" * 50),
        ]),
        result("failed", 1, 3990, failure, [
            attachment("screenshot-1.png", 1, "image/png", b"\x89PNG fake screenshot 1"),
            attachment("trace.zip", 1, "application/zip", b"PK fake trace"),
        ]),
    ]
    status, ok, code = "unexpected", False, 1
elif "flaky" in name:
    results = [result("failed", 0, 1500, failure), result("passed", 1, 1200)]
    status, ok, code = "flaky", True, 0
else:
    results = [result("passed", 0, 2345)]
    status, ok, code = "expected", True, 0
suites = [] if "nomatch" in name else [{
    "title": spec, "file": spec, "line": 0, "column": 0,
    "specs": [{"title": "places an order", "ok": ok, "tags": [], "id": "b2a4c1d8e9f0-1",
               "file": spec, "line": 5, "column": 1,
               "tests": [{"timeout": 120000, "annotations": [], "expectedStatus": "passed",
                          "projectId": project, "projectName": project,
                          "results": results, "status": status}]}],
    "suites": [],
}]
errors = []
if "nomatch" in name:
    errors = [{"message": "Error: No tests found.\nMake sure that arguments are regular "
                          "expressions matching test files."}]
    code = 1
duration = sum(
    r["duration"] for s in suites for sp in s["specs"] for t in sp["tests"] for r in t["results"]
)
report = {
    "config": {"rootDir": os.getcwd(), "version": "1.49.1", "workers": 1,
               "projects": [{"id": project, "name": project, "retries": 1, "testDir": "tests"}]},
    "suites": suites,
    "errors": errors,
    "stats": {"startTime": "2026-12-01T10:00:00.000Z", "duration": duration + 321.0,
              "expected": int(status == "expected"), "skipped": 0,
              "unexpected": int(status == "unexpected"), "flaky": int(status == "flaky")},
}
Path(report_path).write_text(json.dumps(report, indent=2), encoding="utf-8")
print(f"  1 {status}")
sys.exit(code)
"""


def install_fake_npx(bin_dir: Path) -> Path:
    """Writes ``npx`` into ``bin_dir`` (run with this interpreter); returns its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    npx = bin_dir / "npx"
    npx.write_text(f"#!{sys.executable}\n{SCRIPT}", encoding="utf-8")
    npx.chmod(npx.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return npx


def path_with(bin_dir: Path) -> str:
    """$PATH with ``bin_dir`` first (where the fake npx is found)."""
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
