"""The HTML run report: its content, and the real page in headless Chromium (DOM, no script
errors, a screenshot). ``python tests/unit/cli/test_report.py docs/`` writes the sample
report and its screenshot (docs/run-report.html, docs/run-report.png) for the README."""

from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qgjob.report import html_report, install_savings

T0 = 1_764_590_000.0  # a fixed time: the report is the same on every run


def sample_run() -> dict[str, Any]:
    """A finished run of 12 tests on 3 emulators: one failure, one flaky pass, one error."""
    plan = [  # agent, batch, test, status, start offset, duration
        ("emulator-pixel-1", "b1", "tests/login.spec.ts", "passed", 3.0, 11.2),
        ("emulator-pixel-1", "b1", "tests/signup.spec.ts", "passed", 14.4, 16.0),
        ("emulator-pixel-1", "b1", "tests/cart.spec.ts", "failed", 30.6, 22.5),
        ("emulator-pixel-1", "b4", "tests/search.spec.ts", "passed", 56.0, 9.1),
        ("emulator-pixel-2", "b2", "tests/checkout.spec.ts", "passed", 3.2, 25.3),
        ("emulator-pixel-2", "b2", "tests/pay.spec.ts", "passed", 28.8, 18.0),
        ("emulator-pixel-2", "b2", "tests/refund.spec.ts", "error", 47.0, 2.0),
        ("emulator-pixel-3", "b3", "tests/profile.spec.ts", "passed", 3.1, 8.4),
        ("emulator-pixel-3", "b3", "tests/settings.spec.ts", "passed", 11.7, 12.9),
        ("emulator-pixel-3", "b3", "tests/notifications.spec.ts", "passed", 24.8, 19.4),
        ("emulator-pixel-3", "b3", "tests/share.spec.ts", "passed", 44.5, 7.7),
        ("emulator-pixel-3", "b5", "tests/offline.spec.ts", "passed", 58.0, 13.0),
    ]
    jobs = []
    for index, (agent, batch, test, status, start, duration) in enumerate(plan):
        job: dict[str, Any] = {
            "job_id": f"job-{index:02d}",
            "run_id": "run-demo",
            "org_id": "acme",
            "app_version_id": "v2.7.0",
            "target": "emulator",
            "test_path": test,
            "status": status,
            "attempts": 2 if status == "error" else 1,  # runs started (the API's count)
            "agent_id": agent,
            "batch_id": batch,
            "started_at": T0 + start,
            "finished_at": T0 + start + duration,
            "duration_s": duration,
            "message": {
                "failed": "expect(cartTotal).toHaveText('$42.00'): got '$40.00'",
                "error": "adb: device offline (infrastructure; retries spent)",
            }.get(status),
            "flaky": False,
            "tries": [],
        }
        jobs.append(job)
    flaky = jobs[9]
    flaky["flaky"] = True
    flaky["attempts"] = 2  # failed once, then passed
    flaky["tries"] = [
        {
            "attempt": 1,
            "agent_id": "emulator-pixel-2",
            "batch_id": "b0",
            "status": "failed",
            "duration_s": 19.0,
            "message": "Timed out waiting for selector '#toast'",
            "output": "waiting for locator('#toast') ...\nTimeoutError",
        }
    ]
    return {
        "run_id": "run-demo",
        "org_id": "acme",
        "app_version_id": "v2.7.0",
        "target": "emulator",
        "total": len(jobs),
        "counts": {"passed": 10, "failed": 1, "error": 1},
        "finished": True,
        "passed": False,
        "flaky": 1,
        "reported_at": T0 + 90,
        "jobs": jobs,
    }


OUTPUTS = {"job-02": "1) cart.spec.ts:14 total\n  Expected: '$42.00'\n  Received: '$40.00'\n"}


class Dom(html.parser.HTMLParser):
    """Counts what the checks look at in a (dumped) page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.lanes: list[str] = []
        self.bars = 0
        self.ready = False
        self.scripts_with_src = 0
        self.links_out = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if tag == "tr" and "data-job" in found:
            self.rows += 1
        if "lane" in classes:
            self.lanes.append(found.get("data-agent") or "")
        if "bar" in classes:
            self.bars += 1
        if tag == "body" and found.get("data-ready") == "1":
            self.ready = True
        if tag == "script" and found.get("src"):
            self.scripts_with_src += 1
        if tag == "link" and (found.get("href") or "").startswith("http"):
            self.links_out += 1


def parse(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    return dom


def test_the_report_has_every_test_a_lane_per_agent_and_no_network() -> None:
    page = html_report(sample_run(), OUTPUTS)

    dom = parse(page)
    assert dom.rows == 12
    assert dom.lanes == ["emulator-pixel-1", "emulator-pixel-2", "emulator-pixel-3"]
    assert dom.bars == 12
    assert dom.scripts_with_src == 0
    assert dom.links_out == 0
    assert "http://" not in page
    assert "https://" not in page
    assert "7</b> app installs saved" in page  # 12 tests in 5 batches
    assert "Expected: &#x27;$42.00&#x27;" in page  # the failure's output, escaped
    assert "Timed out waiting for selector" in page  # the flaky try
    assert "FAILED" in page


def test_values_are_escaped() -> None:
    run = sample_run()
    run["jobs"][0]["test_path"] = "tests/<script>alert(1)</script>.spec.ts"
    page = html_report(run)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)" in page


def test_install_savings_count_batches_of_tests_that_ran() -> None:
    jobs = sample_run()["jobs"]
    jobs.append({"job_id": "q", "status": "queued", "batch_id": None, "started_at": None})
    assert install_savings(jobs) == {"tests_run": 12, "installs": 5, "saved": 7}


def chromium() -> str:
    """The Chromium binary, installed with apt-get when missing (when that can be done)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], check=False, capture_output=True
        )
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("headless Chromium is not installed and cannot be installed here (apt-get)")


def render(page: Path, screenshot: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
        f"--user-data-dir={page.parent / 'chromium-profile'}",
    ]  # fmt: skip
    if screenshot is not None:
        args = [*base, f"--screenshot={screenshot}", "--window-size=1100,1500"]
    else:
        args = [*base, "--dump-dom"]
    return subprocess.run(
        [*args, page.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )


def write_sample(directory: Path) -> tuple[Path, Path]:
    page = directory / "run-report.html"
    page.write_text(html_report(sample_run(), OUTPUTS), encoding="utf-8")
    shot = directory / "run-report.png"
    result = render(page, shot)
    assert shot.exists(), result.stderr[-2000:]
    return page, shot


@pytest.mark.timeout(180)
def test_the_report_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "run-report.html"
    page.write_text(html_report(sample_run(), OUTPUTS), encoding="utf-8")

    dumped = render(page)

    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = parse(dumped.stdout)
    assert dom.ready, "the page's script did not run to its end (a script error?)"
    assert dom.rows == 12
    assert len(dom.lanes) == 3
    console = [line for line in dumped.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "rror" in line], console
    _, shot = write_sample(tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":  # python tests/unit/cli/test_report.py docs/
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs").resolve()
    target.mkdir(parents=True, exist_ok=True)
    for path in write_sample(target):
        print(path)
