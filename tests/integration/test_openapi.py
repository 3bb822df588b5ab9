"""The committed OpenAPI document is the one the API models generate."""

from __future__ import annotations

import json
from pathlib import Path

from qgjob_backend.handlers.api import openapi_document

COMMITTED = Path(__file__).parents[2] / "functions" / "qgjob_backend" / "openapi.json"


def test_committed_openapi_matches_the_models() -> None:
    generated = json.loads(openapi_document())
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


def test_health_needs_no_token_and_every_error_is_an_error_view() -> None:
    document = json.loads(COMMITTED.read_text())
    assert document["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/health"]["get"]["security"] == []
    error_view = {"$ref": "#/components/schemas/ErrorView"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == error_view, (method, path, code)
            if path.startswith("/agents/"):
                assert {"401", "403", "404", "409", "413", "422", "503"} <= set(
                    operation["responses"]
                ), (method, path)
    assert "errors" in document["components"]["schemas"]["ErrorView"]["properties"]
