"""`qgjob artifacts` end to end: a test's full output (longer than the excerpt kept on the
job, so stored in S3) is downloaded through the presigned link of its result."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from e2e_support import AgentFleet, StackProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORG = "acme"
LINES = 400  # ~20 KB of output: far past the 2,000-character excerpt
NOISY = f"import sys\nfor n in range({LINES}):\n    print(f'line {{n:04d}} of ' + sys.argv[1])\n"


def test_artifacts_of_a_run_download_each_jobs_full_output(
    stack: StackProcess, fleet: AgentFleet, tmp_path: Path
) -> None:
    script = tmp_path / "noisy.py"  # a file: a template's braces are placeholders
    script.write_text(NOISY)
    command = " ".join([shlex.quote(sys.executable), shlex.quote(str(script)), "{test_path}"])
    fleet.start_command("device", "noisy", test_command=command)
    run_id = stack.submit(ORG, "artifacts-1.0", "device", ["tests/a.spec.js", "tests/b.spec.js"])
    waited = stack.wait_run(run_id, ORG, timeout_s=30)
    assert waited.exit_code == 0, waited.describe() + fleet.logs()[-3000:]

    out = tmp_path / "artifacts"
    result = stack.cli.run(
        "artifacts", "--run-id", run_id, "-o", str(out), "--json", token=stack.token(ORG)
    )

    assert result.exit_code == 0, result.describe()
    index = json.loads((out / "index.json").read_text())
    assert index["files"] == 2
    assert result.json()["files"] == 2
    for entry in index["jobs"]:
        log = Path(entry["files"][0])
        text = log.read_text()
        assert log.name == "output.log"
        assert text.count("\n") == LINES  # all of it, not the excerpt
        assert text.startswith("line 0000 of tests/")
    # `qgjob result` shows the link to the full output.
    job_id = index["jobs"][0]["job_id"]
    shown = stack.cli.run("result", "--job-id", job_id, token=stack.token(ORG))
    assert "full output: http" in shown.stdout, shown.describe()
