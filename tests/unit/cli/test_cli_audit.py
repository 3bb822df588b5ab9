"""`qgjob audit` and the session line of `qgjob result` (the API mocked with responses)."""

from __future__ import annotations

import json

import responses
from click.testing import CliRunner

from qgjob.cli import CliState, cli

ENDPOINT = "http://qgjob.test"
ENV = {"QGJOB_ENDPOINT_URL": ENDPOINT, "QGJOB_TOKEN": "org-token"}
RECORD = {
    "attempt": 1,
    "session_id": "abc123",
    "outcome": "archived",
    "http_status": 200,
    "source": "https://api-cloud.browserstack.com/app-automate/sessions/abc123.json",
    "fetched_at": 1.0,
    "recorded_at": 1.0,
    "s3_key": "vault/acme/j1/1.json",
    "sha256": "f" * 64,
    "size": 812,
    "detail": None,
    "link": "https://vault.example/vault/acme/j1/1.json?X-Amz-Signature=x",
    "link_expires_s": 300,
}


@responses.activate
def test_audit_prints_each_attempts_record_and_link() -> None:
    responses.get(f"{ENDPOINT}/jobs/j1/audit", json={"job_id": "j1", "records": [RECORD]})

    result = CliRunner().invoke(cli, ["audit", "--job-id", "j1"], obj=CliState(), env=ENV)

    assert result.exit_code == 0, result.output
    assert "attempt 1: archived (HTTP 200, session abc123)" in result.output
    assert f"vault/acme/j1/1.json  sha256 {'f' * 64}  812 bytes" in result.output
    assert "(valid 300 s)" in result.output
    assert responses.calls[0].request.headers["Authorization"] == "Bearer org-token"


@responses.activate
def test_audit_json_is_the_api_answer() -> None:
    body = {"job_id": "j1", "records": [RECORD]}
    responses.get(f"{ENDPOINT}/jobs/j1/audit", json=body)

    result = CliRunner().invoke(cli, ["--json", "audit", "--job-id", "j1"], obj=CliState(), env=ENV)

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == body


@responses.activate
def test_audit_of_another_orgs_job_is_not_found() -> None:
    responses.get(f"{ENDPOINT}/jobs/j9/audit", status=404, json={"message": "job j9 not found"})

    result = CliRunner().invoke(cli, ["audit", "--job-id", "j9"], obj=CliState(), env=ENV)

    assert result.exit_code == 2, result.output
    assert "not found" in result.output


@responses.activate
def test_result_shows_the_browserstack_session() -> None:
    responses.get(
        f"{ENDPOINT}/jobs/j1/result",
        json={"job_id": "j1", "status": "passed", "finished": True, "duration_s": 3.0,
              "session_id": "abc123"},
    )  # fmt: skip

    result = CliRunner().invoke(cli, ["result", "--job-id", "j1"], obj=CliState(), env=ENV)

    assert result.exit_code == 0, result.output
    assert "browserstack session: abc123" in result.output
