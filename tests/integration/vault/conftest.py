"""Fixtures of the results-vault tests: one AWS emulator, fresh resources per test.

Scopes, on purpose:
- ``aws_endpoint`` (session): one moto server for all vault tests. Starting it costs
  about a second and it holds no state a test can see: every test creates its own
  bucket, table, queues and credentials under unique names and deletes them after.
  (QGJOB_TEST_AWS_ENDPOINT points the same tests at LocalStack instead, as in CI.)
- ``aws`` (function): boto3 clients per test, so a fault injected into one test's S3
  client (``s3_denies_puts``) can never reach another test.
- ``vault_resources``, ``vault_queues``, ``credentials`` (function): an empty archive
  bucket and an empty audit table (from template.yaml's definitions), the vault queue
  and its dead-letter queue, and the org's SSM credentials; ``yield`` then delete.
- ``browserstack`` (function): the App Automate REST API, mocked with ``responses``. It
  is the only thing mocked: S3, DynamoDB, SQS and SSM are the emulator's.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import requests
import responses
from botocore.awsrequest import AWSResponse

from infra.events import LambdaContext, build_sqs_event
from infra.moto_server import MotoServer
from infra.template import (
    LocalTemplate,
    bucket_calls,
    queue_calls,
    table_calls,
)
from qgjob_backend.adapters.browserstack import (
    BrowserStackResultsApi,
    Credentials,
    SsmCredentials,
    credentials_to_json,
    parameter_name,
)
from qgjob_backend.adapters.dynamodb.audit import DynamoAuditStore
from qgjob_backend.adapters.s3 import S3VaultStore
from qgjob_backend.domain.vault import VaultMessage
from qgjob_backend.handlers import vault as vault_handler
from qgjob_backend.services.vault import VaultService, VaultSettings

REGION = "us-east-1"
ACCOUNT = "123456789012"
API_URL = "https://api-cloud.browserstack.com"
ORG = "acme"
# Made-up credentials, distinctive enough to grep for in every log and answer.
USERNAME = "vaultuser_7Qz"
ACCESS_KEY = "AK-s3cr3t-9f8e7d6c5b4a"
FIXED_NOW = 1_767_225_600.0  # the vault's clock in these tests


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    external = os.environ.get("QGJOB_TEST_AWS_ENDPOINT")
    if external:
        yield external
        return
    server = MotoServer("127.0.0.1")
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@dataclass
class Aws:
    s3: Any
    dynamodb: Any
    sqs: Any
    ssm: Any


@pytest.fixture
def aws(aws_endpoint: str) -> Aws:
    session = boto3.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name=REGION,
    )

    def client(name: str) -> Any:
        return session.client(name, endpoint_url=aws_endpoint)

    return Aws(client("s3"), client("dynamodb"), client("sqs"), client("ssm"))


@pytest.fixture
def stack() -> LocalTemplate:
    """template.yaml under a stack name of this test's own (unique resource names)."""
    return LocalTemplate.from_file(
        stack_name=f"vault-{uuid.uuid4().hex[:10]}", region=REGION, account_id=ACCOUNT
    )


@dataclass(frozen=True)
class VaultResources:
    bucket: str
    table: str


@pytest.fixture
def vault_resources(aws: Aws, stack: LocalTemplate) -> Iterator[VaultResources]:
    clients = {"s3": aws.s3, "dynamodb": aws.dynamodb}
    for call in [*bucket_calls(stack, "VaultBucket"), *table_calls(stack, "AuditTable")]:
        getattr(clients[call.service], call.operation)(**call.kwargs)
    resources = VaultResources(
        stack.physical_name("VaultBucket"), stack.physical_name("AuditTable")
    )
    yield resources
    _empty_bucket(aws.s3, resources.bucket)
    aws.s3.delete_bucket(Bucket=resources.bucket)
    aws.dynamodb.delete_table(TableName=resources.table)


def _empty_bucket(s3: Any, bucket: str) -> None:
    versions = s3.list_object_versions(Bucket=bucket)
    doomed = [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for kind in ("Versions", "DeleteMarkers")
        for v in versions.get(kind, [])
    ]
    if doomed:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed})


@dataclass(frozen=True)
class VaultQueues:
    url: str
    arn: str
    dlq_url: str
    max_receive_count: int


@pytest.fixture
def vault_queues(aws: Aws, stack: LocalTemplate) -> Iterator[VaultQueues]:
    for logical_id in ("VaultDeadLetterQueue", "VaultQueue"):  # the DLQ first: it is named
        for call in queue_calls(stack, logical_id):
            stack.created_refs[logical_id] = aws.sqs.create_queue(**call.kwargs)["QueueUrl"]
    redrive = stack.resolve(stack.properties("VaultQueue"))["RedrivePolicy"]
    queues = VaultQueues(
        url=stack.created_refs["VaultQueue"],
        arn=stack.get_att("VaultQueue", "Arn"),
        dlq_url=stack.created_refs["VaultDeadLetterQueue"],
        max_receive_count=int(redrive["maxReceiveCount"]),
    )
    yield queues
    for url in (queues.url, queues.dlq_url):
        aws.sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def credentials_prefix(aws: Aws, stack: LocalTemplate) -> Iterator[str]:
    """The org's credentials in SSM, where the template tells the vault to look."""
    variables = stack.template["Globals"]["Function"]["Environment"]["Variables"]
    prefix = str(stack.resolve(variables["BROWSERSTACK_CREDENTIALS_PREFIX"]))
    name = parameter_name(prefix, ORG)
    aws.ssm.put_parameter(
        Name=name,
        Value=credentials_to_json(Credentials(USERNAME, ACCESS_KEY)),
        Type="SecureString",
    )
    yield prefix
    aws.ssm.delete_parameter(Name=name)


@pytest.fixture
def browserstack() -> Iterator[responses.RequestsMock]:
    # assert_all_requests_are_fired: a test that registers an answer BrowserStack never
    # had to give (a retry that did not happen) fails.
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def session_url(session_id: str) -> str:
    return f"{API_URL}/app-automate/sessions/{session_id}.json"


@dataclass
class VaultRig:
    """The vault over its real adapters, and what a test needs to drive and inspect it."""

    service: VaultService
    aws: Aws
    resources: VaultResources
    sleeps: list[float]
    counts: list[str]
    build: Callable[..., VaultService] = field(repr=False)

    def handle(self, *messages: VaultMessage | str) -> dict[str, Any]:
        """Runs the vault Lambda handler on one SQS event holding these message bodies."""
        raw = [
            {
                "MessageId": f"m-{n}",
                "ReceiptHandle": f"r-{n}",
                "Body": m if isinstance(m, str) else m.to_json(),
                "Attributes": {"ApproximateReceiveCount": "1"},
            }
            for n, m in enumerate(messages)
        ]
        event = build_sqs_event(
            raw, queue_arn=f"arn:aws:sqs:{REGION}:{ACCOUNT}:vault", region=REGION
        )
        return invoke_handler(event)

    def object_keys(self) -> list[str]:
        listed = self.aws.s3.list_object_versions(Bucket=self.resources.bucket)
        return [v["Key"] for v in listed.get("Versions", [])]

    def audit_items(self) -> list[dict[str, Any]]:
        return self.aws.dynamodb.query(
            TableName=self.resources.table,
            KeyConditionExpression="job_id = :j",
            ExpressionAttributeValues={":j": {"S": JOB}},
        )["Items"]


JOB = "job-1"


def message(
    attempt: int = 1, session_id: str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
) -> VaultMessage:
    return VaultMessage(org_id=ORG, job_id=JOB, attempt=attempt, session_id=session_id)


def invoke_handler(event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = vault_handler.lambda_handler(
        event, LambdaContext("VaultFunction", REGION, ACCOUNT)
    )
    return result


@pytest.fixture
def vault(aws: Aws, vault_resources: VaultResources, credentials_prefix: str) -> Iterator[VaultRig]:
    sleeps: list[float] = []
    counts: list[str] = []

    def build(**settings: Any) -> VaultService:
        return VaultService(
            BrowserStackResultsApi(
                requests.Session(), SsmCredentials(aws.ssm, credentials_prefix), API_URL
            ),
            S3VaultStore(aws.s3, vault_resources.bucket),
            DynamoAuditStore(aws.dynamodb, vault_resources.table),
            clock=lambda: FIXED_NOW,
            sleep=sleeps.append,  # waits are recorded, never slept: no timing in tests
            settings=VaultSettings(**settings),
            count=counts.append,
        )

    rig = VaultRig(build(), aws, vault_resources, sleeps, counts, build)
    vault_handler.vault.use(rig.service)
    yield rig
    vault_handler.vault.use(None)


def use_settings(rig: VaultRig, **settings: Any) -> VaultService:
    rig.service = rig.build(**settings)
    vault_handler.vault.use(rig.service)
    return rig.service


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>test</RequestId></Error>"
)


@pytest.fixture
def s3_denies_puts(vault: VaultRig) -> Iterator[list[str]]:
    """This test's S3 client answers every PutObject as S3 does a denied one (403
    AccessDenied): the request never reaches the emulator. Yields the denied keys."""
    denied: list[str] = []

    def deny(request: Any, **_: Any) -> AWSResponse:
        denied.append(request.url)
        return AWSResponse(
            request.url, 403, {"Content-Type": "application/xml"}, _Body(ACCESS_DENIED)
        )

    events = vault.aws.s3.meta.events
    events.register_first("before-send.s3.PutObject", deny, unique_id="deny-puts")
    yield denied
    events.unregister("before-send.s3.PutObject", unique_id="deny-puts")


def session_json(session_id: str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678") -> bytes:
    """A session record as App Automate returns it, spaced the way it is sent (the archive
    must keep these bytes exactly, not a re-serialisation)."""
    record = {
        "automation_session": {
            "name": "login spec",
            "duration": 42,
            "os": "android",
            "os_version": "14.0",
            "device": "Google Pixel 8",
            "status": "passed",
            "reason": "CLIENT_STOPPED_SESSION",
            "build_name": "qgjob acme v42",
            "hashed_id": session_id,
            "video_url": f"https://app-automate.browserstack.com/s/{session_id}/video",
            "app_details": {"app_url": "bs://f00d", "app_custom_id": "qgjob-acme-v42"},
        }
    }
    return json.dumps(record, indent=1).encode() + b"\n"
