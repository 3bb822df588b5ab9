"""Fixtures for adapters and handlers against moto (in-process), or a real endpoint.

Each test gets empty tables, queue and bucket created from template.yaml. Set
QGJOB_TEST_AWS_ENDPOINT (e.g. LocalStack in the GitHub workflow) to run the same tests
against a real AWS-compatible endpoint instead of in-process moto.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.events import HttpRequest, LambdaContext, build_proxy_event, build_sqs_event
from infra.template import LocalTemplate, provision
from qgjob_backend.adapters.dynamodb import DynamoStateStore
from qgjob_backend.adapters.sqs import SqsJobQueue
from qgjob_backend.config import Config
from qgjob_backend.domain.models import Job, Run
from qgjob_backend.domain.progress import run_job_ids
from qgjob_backend.handlers import api, dispatcher, reaper
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.auth import TokenKind
from qgjob_backend.wiring import Services, build_services

REGION = "us-east-1"
ACCOUNT = "123456789012"
STAGE = "v1"


@pytest.fixture
def aws_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")
    endpoint = os.environ.get("QGJOB_TEST_AWS_ENDPOINT")
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        yield boto3.Session(region_name=REGION)
        return
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.Session(region_name=REGION)


@pytest.fixture
def stack_env(aws_session: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Creates every table, queue and bucket of template.yaml; returns the functions' env."""
    stack = LocalTemplate.from_file(
        stack_name=f"qgjob-test-{uuid.uuid4().hex[:8]}",
        region=REGION,
        account_id=ACCOUNT,
        parameter_overrides={"LeaseSeconds": 30},
    )
    clients = {name: aws_session.client(name) for name in ("dynamodb", "sqs", "s3")}
    provision(stack, clients)
    env = stack.function_environment()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def config(stack_env: dict[str, str]) -> Config:
    return Config.from_env(stack_env)


@pytest.fixture
def services(config: Config, aws_session: boto3.Session) -> Iterator[Services]:
    built = build_services(config, aws_session)
    for holder in (api.services, dispatcher.services, reaper.services):
        holder.use(built)
    yield built
    for holder in (api.services, dispatcher.services, reaper.services):
        holder.use(None)


def state_store_of(session: boto3.Session, config: Config) -> DynamoStateStore:
    """The state tables as the services see them."""
    return DynamoStateStore(
        session.client("dynamodb"),
        jobs_table=config.jobs_table,
        runs_table=config.runs_table,
        agents_table=config.agents_table,
        batches_table=config.batches_table,
    )


@pytest.fixture
def state_store(config: Config, aws_session: boto3.Session) -> DynamoStateStore:
    """To check what a request wrote."""
    return state_store_of(aws_session, config)


@pytest.fixture
def org_token(services: Services) -> str:
    return services.tokens.create(TokenKind.ORG, "acme")


@pytest.fixture
def other_org_token(services: Services) -> str:
    return services.tokens.create(TokenKind.ORG, "globex")


@pytest.fixture
def agent_token(services: Services) -> str:
    return services.tokens.create(TokenKind.AGENT)


@dataclass
class ApiResponse:
    status: int
    body: Any


class ApiCaller:
    """Calls the api Lambda handler with real API Gateway REST proxy events."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw_body: bytes | None = None,
        token: str | None = "default",  # noqa: S107 - a marker, not a secret
    ) -> ApiResponse:
        headers = [("Host", "localhost"), ("Content-Type", "application/json")]
        use_token = self.token if token == "default" else token
        if use_token:
            headers.append(("Authorization", f"Bearer {use_token}"))
        data = (
            raw_body
            if raw_body is not None
            else (b"" if body is None else json.dumps(body).encode())
        )
        event = build_proxy_event(
            HttpRequest(method, f"/{STAGE}{path}", headers, data, "127.0.0.1"),
            stage=STAGE,
            request_id=str(uuid.uuid4()),
            account_id=ACCOUNT,
            api_id="local",
        )
        result = api.lambda_handler(event, LambdaContext("ApiFunction", REGION, ACCOUNT))
        text = result.get("body") or ""
        return ApiResponse(result["statusCode"], json.loads(text) if text else None)

    def get(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> ApiResponse:
        return self.request("POST", path, body, **kwargs)


@pytest.fixture
def client(services: Services, org_token: str) -> ApiCaller:
    return ApiCaller(org_token)


class AgentCaller(ApiCaller):
    """Agents as the real one talks: register with the fleet token, then call each agent's
    routes with the credential its latest registration returned (the agent is the one
    the path names; an agent never registered calls with no credential)."""

    def __init__(self, fleet_token: str, before_lease: Callable[[], object] = lambda: None) -> None:
        super().__init__(fleet_token)
        self.fleet_token = fleet_token
        self.credentials: dict[str, str] = {}
        # The dispatcher's work between an agent's wake-up and its lease (a lease never
        # plans): the queued admissions and plan requests.
        self._before_lease = before_lease

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> ApiResponse:
        registering = path == "/agents/register"
        agent_id = path.split("/")[2] if path.startswith("/agents/") else None
        if path.endswith("/lease") and kwargs.pop("dispatch", True):
            self._before_lease()
        if "token" not in kwargs:
            if agent_id is not None and not registering:
                kwargs["token"] = self.credentials.get(agent_id)
            else:
                kwargs["token"] = self.fleet_token
        response = super().request(method, path, body, **kwargs)
        if registering and response.status == 200:
            self.credentials[response.body["agent_id"]] = response.body["credential"]
        return response


@pytest.fixture
def agent_client(
    services: Services, agent_token: str, aws_session: boto3.Session, config: Config
) -> AgentCaller:
    return AgentCaller(agent_token, before_lease=lambda: dispatch_queue(aws_session, config))


def receive_all(session: boto3.Session, queue_url: str) -> list[dict[str, Any]]:
    """Every message currently visible in the queue, with all attributes."""
    sqs = session.client("sqs")
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def dispatch_queue(session: boto3.Session, config: Config) -> dict[str, Any]:
    """Drains jobs.fifo into the dispatcher the way the SQS event source does.

    FIFO hides a group's later messages until earlier ones are deleted, so it loops.
    """
    failures: list[dict[str, str]] = []
    while True:
        response = _dispatch_once(session, config)
        if response is None:
            return {"batchItemFailures": failures}
        failures.extend(response["batchItemFailures"])
        if response["batchItemFailures"]:
            return {"batchItemFailures": failures}


def _dispatch_once(session: boto3.Session, config: Config) -> dict[str, Any] | None:
    sqs = session.client("sqs")
    messages = receive_all(session, config.jobs_queue_url)
    if not messages:
        return None
    arn = sqs.get_queue_attributes(QueueUrl=config.jobs_queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    event = build_sqs_event(messages, queue_arn=arn, region=REGION)
    response = dispatcher.lambda_handler(
        event, LambdaContext("DispatcherFunction", REGION, ACCOUNT)
    )
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    for message in messages:
        if message["MessageId"] not in failed:
            sqs.delete_message(
                QueueUrl=config.jobs_queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
    return dict(response)


def legacy_run(
    session: boto3.Session,
    config: Config,
    app_version_id: str,
    tests: int = 2,
    *,
    send: bool = True,
) -> list[str]:
    """A run as qgjob wrote them before jobs went straight into their backlog: unadmitted
    jobs and (``send``) one jobs.fifo message each, what is in flight when such a stack is
    upgraded. The dispatcher still admits them and the reaper still re-sends them."""
    now = time.time()
    run_id = f"run-legacy-{app_version_id}"
    job_ids = run_job_ids(run_id, tests)
    store = state_store_of(session, config)
    store.create_run(Run(run_id, "acme", app_version_id, Target.EMULATOR, 5, job_ids, "old", now))
    jobs = [
        Job(
            job_id,
            run_id,
            "acme",
            app_version_id,
            Target.EMULATOR,
            f"tests/t{position}.spec.js",
            5,
            JobStatus.QUEUED,
            now,
            now,
            600,
            1,
            position=position,
        )
        for position, job_id in enumerate(job_ids)
    ]
    store.create_jobs(jobs)
    if send:
        assert SqsJobQueue(session.client("sqs"), config.jobs_queue_url).send(jobs) == []
    return job_ids
