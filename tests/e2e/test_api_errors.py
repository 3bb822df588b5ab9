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


def stored_items(stack: StackProcess) -> dict[str, int]:
    """Items in the jobs and runs tables, read from the moto endpoint (every org), but the
    pools' queue snapshots: the dispatcher writes those on its own time (every few seconds
    while plans run), never because of a request."""
    db = stack.aws("dynamodb")
    counts: dict[str, int] = {}
    for suffix in ("-JobsTable", "-RunsTable"):
        (table,) = [t for t in db.list_tables()["TableNames"] if t.endswith(suffix)]
        pages = db.get_paginator("scan").paginate(
            TableName=table,
            Select="COUNT",
            FilterExpression="attribute_not_exists(#k) OR #k <> :snapshot",
            ExpressionAttributeNames={"#k": "kind"},
            ExpressionAttributeValues={":snapshot": {"S": "pool_snapshot"}},
        )
        counts[suffix.strip("-")] = sum(page["Count"] for page in pages)
    return counts


# What the CLI refuses before sending (see below), sent as raw HTTP so that the API's own
# validation is what is tested: (field, bad value).
BAD_FIELDS = [
    pytest.param("priority", 11, id="priority-above-10"),
    pytest.param("priority", 0, id="priority-below-1"),
    pytest.param("target", "smartwatch", id="unknown-target"),
    pytest.param("test_path", "../secrets/steal.spec.js", id="dotdot-test-path"),
    pytest.param("test_path", "/etc/passwd", id="absolute-test-path"),
    pytest.param("test_path", "", id="empty-test-path"),
    pytest.param("app_version_id", "v 1/2", id="bad-app-version-id"),
    pytest.param("timeout_s", 0, id="zero-timeout"),
    pytest.param("retries", 99, id="too-many-retries"),
]
GOOD: dict[str, Any] = {
    "priority": 1,
    "target": "device",
    "test_path": "tests/ok/next.spec.js",
    "app_version_id": "v1.2",
    "timeout_s": 60,
    "retries": 0,
}


def bad_body(route: str, field: str, value: Any) -> tuple[dict[str, Any], str]:
    """A valid body for ``route`` with one bad field, and the field the error must name."""
    body: dict[str, Any] = {"org_id": "acme", "app_version_id": "v1", "priority": 5}
    if field == "test_path" and route == "/runs":
        return {**body, "test_paths": ["tests/ok.spec.js", value]}, "test_paths"
    if route == "/runs":
        body["test_paths"] = ["tests/login.spec.js"]
    else:
        body["test_path"] = "tests/login.spec.js"
    return {**body, field: value}, field


@pytest.mark.parametrize("route", ["/jobs", "/runs"])
@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_api_rejects_a_bad_field_with_a_4xx_naming_it_and_writes_nothing(
    stack: StackProcess, route: str, field: str, value: Any
) -> None:
    body, named = bad_body(route, field, value)
    before = (total_jobs(stack, "acme"), stored_items(stack))
    response = stack.api("POST", route, stack.token("acme"), json=body)
    assert response.status_code == 422, response.text
    assert named in response.json()["message"], response.text
    assert (total_jobs(stack, "acme"), stored_items(stack)) == before
    # The same body with a good value is accepted: the bad value alone was refused.
    fixed, _ = bad_body(route, field, GOOD[field])
    accepted = stack.api("POST", route, stack.token("acme"), json=fixed)
    assert accepted.status_code == 201, accepted.text
    assert total_jobs(stack, "acme") == before[0] + len(accepted.json()["job_ids"])


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        pytest.param(["--priority", "11"], "--priority", id="priority-above-10"),
        pytest.param(["--target", "smartwatch"], "--target", id="unknown-target"),
        pytest.param(["--test", "../secrets/steal.spec.js"], "--test", id="dotdot-test-path"),
        pytest.param(["--retries", "99"], "--retries", id="too-many-retries"),
    ],
)
def test_cli_refuses_a_bad_option_with_exit_2_naming_it(
    stack: StackProcess, options: list[str], flag: str
) -> None:
    before = total_jobs(stack, "acme")
    result = stack.cli.run(
        "submit", "--org-id", "acme", "--app-version-id", "v1", *options, "--json",
        *([] if "--test" in options else ["--test", "tests/login.spec.js"]),
        token=stack.token("acme"),
    )  # fmt: skip
    assert result.exit_code == 2, result.describe()
    assert flag in result.stderr, result.describe()
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
