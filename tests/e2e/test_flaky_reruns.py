"""Flaky tests end to end (issue 11): with --retries 2 a test that fails once passes the
run, is counted flaky, and its JUnit <testcase> has one <flakyFailure>; --fail-on flaky
fails the same run."""

from __future__ import annotations

import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from e2e_support import AgentFleet, StackProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORG = "acme"
# Fails the first time it runs a test path (a marker file per path), passes afterwards.
FAILS_ONCE = r"""
import os, sys
marker_dir, test_path = sys.argv[1], sys.argv[2]
marker = os.path.join(marker_dir, test_path.replace("/", "_"))
if not os.path.exists(marker):
    open(marker, "w").close()
    print("first try: assertion failed")
    sys.exit(1)
print("second try: ok")
"""


def start_agents(fleet: AgentFleet, tmp_path: Path, *devices: str) -> None:
    script = tmp_path / "fails_once.py"
    script.write_text(FAILS_ONCE)
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    command = " ".join(
        [
            shlex.quote(sys.executable),
            shlex.quote(str(script)),
            shlex.quote(str(markers)),
            "{test_path}",
        ]
    )
    for device in devices:
        fleet.start_command("emulator", device, test_command=command)


@pytest.mark.parametrize(("fail_on", "exit_code"), [("failure", 0), ("flaky", 1)])
def test_a_test_that_fails_once_is_flaky(
    stack: StackProcess, fleet: AgentFleet, tmp_path: Path, fail_on: str, exit_code: int
) -> None:
    start_agents(fleet, tmp_path, f"flaky-a-{fail_on}", f"flaky-b-{fail_on}")
    junit = tmp_path / "junit.xml"

    result = stack.cli.submit(
        token=stack.token(ORG),
        org_id=ORG,
        app_version_id=f"flaky-{fail_on}",
        target="emulator",
        test_paths=["tests/flaky/once.spec.js", "tests/flaky/steady.spec.js"],
        extra=(
            "--retries",
            "2",
            "--wait",
            "--poll-interval",
            "0.2",
            "--wait-timeout",
            "60",
            "--fail-on",
            fail_on,
            "--junit",
            str(junit),
        ),
        timeout_s=90,
    )

    assert result.exit_code == exit_code, result.describe()
    run = result.json()
    assert run["passed"] is True
    assert run["counts"] == {"passed": 2}
    # Both tests failed their first try (the marker is per path): both are flaky.
    assert run["flaky"] == 2
    for job in run["jobs"]:
        assert job["flaky"] is True
        assert [t["status"] for t in job["tries"]] == ["failed"]
        # Two agents serve the target: the re-run went to the one it did not fail on.
        assert job["tries"][0]["agent_id"] != job["agent_id"], job
    cases = ET.parse(junit).getroot().findall("testsuite/testcase")  # noqa: S314 - ours
    assert len(cases) == 2
    for case in cases:
        assert len(case.findall("flakyFailure")) == 1
        assert case.find("failure") is None
        flaky = case.find("flakyFailure")
        assert flaky is not None
        assert "try 1 on agent emulator-flaky-" in str(flaky.get("message"))
