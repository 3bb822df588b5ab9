"""Bad input, missing tokens and other orgs' jobs, through the CLI and the HTTP API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from e2e_support import StackProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

VALID = {"org_id": "acme", "app_version_id": "v1", "test_paths": ["tests/login.spec.js"]}


def total_jobs(stack: StackProcess, org: str) -> int:
    return sum(stack.metrics(org)["jobs_by_status"].values())


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--priority", "11"], id="priority-above-10"),
        pytest.param(["--priority", "0"], id="priority-below-1"),
        pytest.param(["--target", "smartwatch"], id="unknown-target"),
        pytest.param(["--test", "../secrets/steal.spec.js"], id="dotdot-test-path"),
        pytest.param(["--test", "/etc/passwd"], id="absolute-test-path"),
        pytest.param(["--test", ""], id="empty-test-path"),
        pytest.param(["--app-version-id", "v 1/2"], id="bad-app-version-id"),
        pytest.param(["--timeout-s", "0"], id="zero-timeout"),
        pytest.param(["--retries", "99"], id="too-many-retries"),
    ],
)
def test_malformed_submission_exits_2_and_writes_nothing(
    stack: StackProcess, options: list[str]
) -> None:
    before = total_jobs(stack, "acme")
    result = stack.cli.run(
        "submit", "--org-id", "acme", "--app-version-id", "v1", "--test", "tests/login.spec.js",
        *options, "--json", token=stack.token("acme"),
    )  # fmt: skip
    assert result.exit_code == 2, result.describe()
    assert result.stderr.strip(), "the CLI must say what is wrong"
    assert total_jobs(stack, "acme") == before


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param(b"{", 400, "body", id="invalid-json"),
        pytest.param(b"[]", 422, "body", id="not-an-object"),
        pytest.param({**VALID, "priority": 11}, 422, "priority", id="priority"),
        pytest.param({**VALID, "priority": "5"}, 422, "priority", id="priority-string"),
        pytest.param({**VALID, "test_paths": ["../x.spec.js"]}, 422, "test_paths", id="dotdot"),
        pytest.param({**VALID, "test_paths": []}, 422, "test_paths", id="no-tests"),
        pytest.param({**VALID, "target": "watch"}, 422, "target", id="target"),
        pytest.param({**VALID, "surprise": True}, 422, "surprise", id="unknown-field"),
        pytest.param(
            {**VALID, "test_paths": ["t" * (2 * 1024 * 1024)]}, 413, "body", id="too-large"
        ),
    ],
)
def test_api_rejects_bad_runs_with_a_4xx_naming_the_field(
    stack: StackProcess, body: Any, status: int, field: str
) -> None:
    before = total_jobs(stack, "acme")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = stack.api(
        "POST", "/runs", stack.token("acme"), data=data,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == status, response.text
    assert field in response.json()["message"]
    assert total_jobs(stack, "acme") == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/metrics", None),
        ("POST", "/runs", VALID),
        ("GET", "/jobs/job-123", None),
        ("GET", "/runs/run-123", None),
        ("POST", "/agents/register", {"target": "emulator", "device_id": "x"}),
    ],
)
@pytest.mark.parametrize("token", [None, "qgj_org_not-a-real-token"], ids=["none", "unknown"])
def test_no_valid_token_is_401(
    stack: StackProcess, method: str, path: str, body: Any, token: str | None
) -> None:
    before = total_jobs(stack, "acme")
    response = stack.api(method, path, token, json=body)
    assert response.status_code == 401, response.text
    assert response.json()["message"]
    assert total_jobs(stack, "acme") == before


def test_wrong_kind_of_token_or_org_is_403(stack: StackProcess) -> None:
    agent_on_client = stack.api("GET", "/metrics", stack.agent_token)
    assert agent_on_client.status_code == 403, agent_on_client.text
    org_on_agent = stack.api(
        "POST", "/agents/register", stack.token("acme"),
        json={"target": "emulator", "device_id": "intruder", "installed": None},
    )  # fmt: skip
    assert org_on_agent.status_code == 403, org_on_agent.text
    before = total_jobs(stack, "globex")
    other_org = stack.api("POST", "/runs", stack.token("acme"), json={**VALID, "org_id": "globex"})
    assert other_org.status_code == 403, other_org.text
    assert total_jobs(stack, "globex") == before


def test_another_orgs_job_is_404(stack: StackProcess) -> None:
    run_id = stack.submit("globex", "secret-1.0.0", "emulator", ["tests/login.spec.js"])
    (job,) = stack.run_view(run_id, "globex")["jobs"]
    job_id = job["job_id"]
    acme = stack.token("acme")

    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/result"),
        ("GET", f"/runs/{run_id}"),
        ("POST", f"/jobs/{job_id}/cancel"),
    ]:
        response = stack.api(method, path, acme)
        assert response.status_code == 404, f"{method} {path}: {response.text}"
        assert "secret-1.0.0" not in response.text

    status = stack.cli.run("status", "--job-id", job_id, "--json", token=acme)
    assert status.exit_code == 2, status.describe()
    # acme's cancel attempt changed nothing: the job is still globex's and still queued.
    assert stack.run_view(run_id, "globex")["jobs"][0]["status"] == "queued"
