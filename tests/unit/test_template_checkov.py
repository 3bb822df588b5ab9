"""checkov's IAM checks on the expanded template: none fails.

checkov is not a dev dependency (it pins its own boto3 and friends): ``make test`` installs
it in a venv of its own (``make checkov``: ``.venv-checkov``) and points ``CHECKOV`` at it;
elsewhere put it on PATH or set ``CHECKOV``. Only a bare ``pytest`` without it skips this
test. Its other findings are accepted on purpose (README, Observability).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.sam_template import expanded_template

# checkov 3.3's CloudFormation checks in its IAM category (CheckCategories.IAM).
IAM_CHECKS = (
    "CKV_AWS_40", "CKV_AWS_60", "CKV_AWS_61", "CKV_AWS_62", "CKV_AWS_63", "CKV_AWS_79",
    "CKV_AWS_107", "CKV_AWS_108", "CKV_AWS_109", "CKV_AWS_110", "CKV_AWS_111",
    "CKV_AWS_161", "CKV_AWS_162", "CKV_AWS_170", "CKV_AWS_364", "CKV_AWS_366",
)  # fmt: skip


def _checkov() -> str | None:
    return os.environ.get("CHECKOV") or shutil.which("checkov")


@pytest.mark.skipif(_checkov() is None, reason="checkov not installed (see the docstring)")
def test_no_iam_check_fails_on_the_expanded_template(tmp_path: Path) -> None:
    template = tmp_path / "expanded.json"
    template.write_text(json.dumps(expanded_template()), encoding="utf-8")
    command = [
        str(_checkov()), "-f", str(template), "--framework", "cloudformation",
        "--check", ",".join(IAM_CHECKS), "-o", "json", "--compact",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(done.stdout)
    results = (report[0] if isinstance(report, list) else report)["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == []
    passed = {c["check_id"] for c in results["passed_checks"]}
    assert len(passed) >= 10, passed  # the roles' and policies' checks did run
