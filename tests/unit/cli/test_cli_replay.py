"""`qgjob submit` prints what a replayed submit reports: the jobs as they are now."""

from __future__ import annotations

from typing import Any

import pytest
import responses
from click.testing import CliRunner

from qgjob.cli import CliState, cli
from qgjob.render import submitted_state

BASE = "http://qgjob.test"
ENV = {"QGJOB_ENDPOINT_URL": BASE, "QGJOB_TOKEN": "org-token"}
SUBMIT = ["submit", "--org-id", "acme", "--app-version-id", "v1", "--idempotency-key", "ci-41"]


def _answer(status: str | None, counts: dict[str, int], replayed: bool) -> dict[str, Any]:
    job_ids = [f"j{i}" for i in range(sum(counts.values()))]
    return {
        "run_id": "r1",
        "job_ids": job_ids,
        "job_id": None,
        "status": status,
        "counts": counts,
        "replayed": replayed,
    }


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_answer("queued", {"queued": 2}, False), "run r1: 2 job(s) queued for acme/v1"),
        (_answer("passed", {"passed": 2}, True), "run r1: 2 job(s) passed for acme/v1"),
        (
            _answer(None, {"failed": 1, "passed": 1}, True),
            "run r1: 2 job(s) (1 passed, 1 failed) for acme/v1",
        ),
    ],
)
@responses.activate
def test_submit_prints_the_state_the_server_reports(answer: dict[str, Any], expected: str) -> None:
    responses.post(f"{BASE}/runs", json=answer, status=200 if answer["replayed"] else 201)
    tests = [arg for index in range(len(answer["job_ids"])) for arg in ("--test", f"t{index}.js")]

    result = CliRunner().invoke(cli, [*SUBMIT, *tests], obj=CliState(), env=ENV)

    assert result.exit_code == 0, result.output
    assert expected in result.output
    assert ("replayed" in result.output) is answer["replayed"]


def test_an_answer_from_an_older_server_still_reads() -> None:
    assert submitted_state({"run_id": "r1", "job_ids": ["j1"], "status": "queued"}) == "queued"
    assert submitted_state({"run_id": "r1", "job_ids": ["j1"]}) == "submitted"
