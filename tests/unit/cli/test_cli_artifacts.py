"""`qgjob artifacts` with the API and the storage links mocked by `responses`."""

from __future__ import annotations

import json
from pathlib import Path

import responses

from qgjob.artifacts import safe_name
from tests.unit.cli.test_cli_commands import BASE, invoke, job_view, serve_jobs

STORE = "https://bucket.example/presigned"


def result(job_id: str, status: str, **extra: object) -> dict[str, object]:
    return {"job_id": job_id, "status": status, "finished": True, **extra}


@responses.activate
def test_a_runs_failed_jobs_output_and_attachments_are_downloaded(tmp_path: Path) -> None:
    serve_jobs(
        [
            job_view("j1", "tests/a.spec.ts", "passed"),
            job_view("j2", "tests/b.spec.ts", "failed"),
            job_view("j3", "tests/c.spec.ts", "passed", flaky=True),
        ]
    )
    responses.get(
        f"{BASE}/jobs/j2/result",
        json=result(
            "j2",
            "failed",
            output="tail only",
            output_url=f"{STORE}/j2.log",
            artifacts=[
                {"name": "../../etc/passwd", "url": f"{STORE}/shot.png"},
                {"name": "trace.zip", "url": f"{STORE}/gone.zip"},
            ],
        ),
    )
    responses.get(f"{BASE}/jobs/j3/result", json=result("j3", "passed", output="ok\n"))
    responses.get(f"{STORE}/j2.log", body=b"the whole output\n")
    responses.get(f"{STORE}/shot.png", body=b"\x89PNG")
    responses.get(f"{STORE}/gone.zip", status=403)

    out = tmp_path / "out"
    run = invoke(["artifacts", "--run-id", "r1", "--only-failed", "-o", str(out)])

    assert run.exit_code == 0, run.output
    assert (out / "j2" / "output.log").read_text() == "the whole output\n"  # not the tail
    shot = out / "j2" / safe_name("../../etc/passwd")  # kept inside its folder
    assert shot.parent == out / "j2"
    assert shot.read_bytes() == b"\x89PNG"
    assert not (out / "j2" / "trace.zip").exists()
    assert "trace.zip not downloaded" in run.stderr
    assert (out / "j3" / "output.log").read_text() == "ok\n"
    assert not (out / "j1").exists()  # passed: not asked for
    index = json.loads((out / "index.json").read_text())
    assert [j["job_id"] for j in index["jobs"]] == ["j2", "j3"]
    assert index["files"] == 3


def test_safe_names_stay_in_their_folder() -> None:
    assert safe_name("../x/../../y.png") == "_x_.._.._y.png"
    assert "/" not in safe_name("a/b")
    assert safe_name("...") == "artifact"
