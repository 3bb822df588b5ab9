"""From an agent's BrowserStack result to ``GET /jobs/{id}/audit``, through the real
handlers: the api function queues the session for the vault, the vault function archives
it, the audit route lists it with a presigned link. (These tests use the integration
suite's in-process moto, fresh per test, because they need the whole stack's tables.)"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import responses

from infra.events import build_sqs_event
from qgjob_backend.adapters.browserstack import Credentials, credentials_to_json, parameter_name
from qgjob_backend.config import Config
from qgjob_backend.handlers import vault as vault_handler
from qgjob_backend.wiring import Services
from tests.integration.conftest import AgentCaller, ApiCaller, receive_all
from tests.integration.vault.conftest import (
    ACCESS_KEY,
    USERNAME,
    invoke_handler,
    session_json,
)

SESSION = "0123456789abcdef0123456789abcdef01234567"
BROWSERSTACK = "https://api-cloud.browserstack.com"


@pytest.fixture
def vault_function(
    services: Services, aws_session: boto3.Session, config: Config
) -> Iterator[None]:
    """The vault function as deployed: built from the environment on first use, with the
    org's credentials in SSM (set as infra.admin set-browserstack-credentials does)."""
    ssm = aws_session.client("ssm")
    ssm.put_parameter(
        Name=parameter_name(config.browserstack_credentials_prefix, "acme"),
        Value=credentials_to_json(Credentials(USERNAME, ACCESS_KEY)),
        Type="SecureString",
    )
    vault_handler.vault.use(None)
    yield
    vault_handler.vault.use(None)


def _run_one_browserstack_job(client: ApiCaller, agents: AgentCaller, session_id: str) -> str:
    submitted = client.post(
        "/jobs",
        {
            "org_id": "acme",
            "app_version_id": "v42",
            "test_path": "tests/login.spec.js",
            "target": "browserstack",
        },
    )
    assert submitted.status == 201, submitted.body
    job_id: str = submitted.body["job_id"]
    assert (
        agents.post("/agents/register", {"target": "browserstack", "device_id": "bs1"}).status
        == 200
    )
    batch = agents.post("/agents/browserstack-bs1/lease").body["batch"]
    assert batch is not None
    progress = f"/agents/browserstack-bs1/batches/{batch['batch_id']}/progress"
    assert agents.post(progress, {"installed": True, "start": job_id}).status == 200
    done = agents.post(
        progress,
        {
            "results": [
                {"job_id": job_id, "status": "passed", "duration_s": 3.2, "session_id": session_id}
            ],
            "complete": True,
        },
    )
    assert done.status == 200, done.body
    assert done.body["results"][0]["accepted"] is True
    return job_id


def _vault_messages(aws_session: boto3.Session, config: Config) -> list[dict[str, Any]]:
    assert config.vault_queue_url
    return receive_all(aws_session, config.vault_queue_url)


def test_a_browserstack_result_reaches_the_audit_route_with_a_working_presigned_link(
    client: ApiCaller,
    agent_client: AgentCaller,
    aws_session: boto3.Session,
    config: Config,
    vault_function: None,
    other_org_token: str,
) -> None:
    job_id = _run_one_browserstack_job(client, agent_client, SESSION)

    # The result carries its session, and the api function queued it for the vault.
    result = client.get(f"/jobs/{job_id}/result").body
    assert result["session_id"] == SESSION
    messages = _vault_messages(aws_session, config)
    assert [json.loads(m["Body"]) for m in messages] == [
        {"org_id": "acme", "job_id": job_id, "attempt": 1, "session_id": SESSION}
    ]

    payload = session_json(SESSION)
    with responses.RequestsMock() as browserstack:
        browserstack.get(f"{BROWSERSTACK}/app-automate/sessions/{SESSION}.json", body=payload)
        queue_arn = "arn:aws:sqs:us-east-1:123456789012:vault"
        outcome = invoke_handler(build_sqs_event(messages, queue_arn=queue_arn, region="us-east-1"))
    assert outcome == {"batchItemFailures": []}

    audit = client.get(f"/jobs/{job_id}/audit")
    assert audit.status == 200, audit.body
    [record] = audit.body["records"]
    assert record["outcome"] == "archived"
    assert record["s3_key"] == f"vault/acme/{job_id}/1.json"
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()
    assert record["size"] == len(payload)
    # A SigV4 link to that object, valid five minutes. (tests/e2e fetches one over HTTP.)
    link = urlsplit(record["link"])
    query = parse_qs(link.query)
    assert link.path.endswith(record["s3_key"])
    assert query["X-Amz-Expires"] == ["300"] == [str(record["link_expires_s"])]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    stored = aws_session.client("s3").get_object(Bucket=config.vault_bucket, Key=record["s3_key"])
    assert stored["Body"].read() == payload

    # Another org cannot see that the job exists, let alone its audit.
    assert ApiCaller(other_org_token).get(f"/jobs/{job_id}/audit").status == 404
    # No answer of the API carries the org's BrowserStack credentials.
    for answer in (result, audit.body, client.get(f"/jobs/{job_id}").body):
        text = json.dumps(answer)
        assert ACCESS_KEY not in text
        assert USERNAME not in text


def test_a_job_without_a_session_has_an_empty_audit_and_queues_nothing(
    client: ApiCaller, agent_client: AgentCaller, aws_session: boto3.Session, config: Config
) -> None:
    job = client.post("/jobs", {"org_id": "acme", "app_version_id": "v1", "test_path": "a.spec.js"})
    assert client.get(f"/jobs/{job.body['job_id']}/audit").body == {
        "job_id": job.body["job_id"],
        "records": [],
    }
    assert _vault_messages(aws_session, config) == []


def test_the_audit_of_an_unknown_job_is_a_404(client: ApiCaller) -> None:
    assert client.get("/jobs/nope/audit").status == 404
