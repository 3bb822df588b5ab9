"""The committed OpenAPI document is the one the API models generate."""

from __future__ import annotations

import json
from pathlib import Path

from qgjob_backend.handlers.api import app

COMMITTED = Path(__file__).parents[2] / "functions" / "qgjob_backend" / "openapi.json"


def test_committed_openapi_matches_the_models() -> None:
    generated = json.loads(app.get_openapi_json_schema())
    committed = json.loads(COMMITTED.read_text())

    assert committed == generated, "run `make openapi` and commit the result"


def test_openapi_documents_every_client_and_agent_endpoint() -> None:
    paths = json.loads(COMMITTED.read_text())["paths"]

    assert {"/jobs", "/runs", "/jobs/{job_id}", "/runs/{run_id}", "/health"} <= set(paths)
    assert "/agents/{agent_id}/lease" in paths
    job_payload = json.loads(COMMITTED.read_text())["components"]["schemas"]["JobPayload"]
    assert job_payload["properties"]["priority"]["minimum"] == 1
    assert job_payload["properties"]["priority"]["maximum"] == 10
    assert set(job_payload["required"]) == {"org_id", "app_version_id", "test_path"}
