"""The local stack's own pieces, with stand-in handlers: template reading, event shapes,
the SQS event source, the API Gateway shim and the LocalStack life cycle.

No backend code runs here, so a failure points at infra/, not at the Lambda functions.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from infra import events
from infra.admin import AdminError, tokens_table_from_stack
from infra.admin import main as admin_main
from infra.local_stack import LocalStack, LocalStackOptions
from infra.moto_server import MotoServer, SerializedDynamoDB
from infra.runtime import ApiGatewayShim, LambdaFunction, SqsEventSource, rate_seconds
from infra.template import (
    LocalTemplate,
    TemplateError,
    load_template,
    provision,
    queue_calls,
    table_calls,
)

REGION = "us-east-1"
ACCOUNT = "123456789012"


# ------------------------------------------------------------------- template


def test_short_tags_load_as_long_form_data() -> None:
    template = load_template()
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["JOBS_TABLE"] == {"Ref": "JobsTable"}
    redrive = template["Resources"]["JobsQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}
    assert template["Resources"]["JobsQueue"]["Properties"]["QueueName"] == {
        "Fn::Sub": "${AWS::StackName}-jobs.fifo"
    }


def test_tables_are_created_from_the_properties_verbatim() -> None:
    stack = LocalTemplate.from_file()
    props = load_template()["Resources"]["JobsTable"]["Properties"]
    create = table_calls(stack, "JobsTable")[0]
    assert create.operation == "create_table"
    assert create.kwargs["TableName"] == "qgjob-local-JobsTable"
    for key in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode"):
        assert create.kwargs[key] == props[key]


def test_the_queue_redrives_to_the_local_dead_letter_queue() -> None:
    stack = LocalTemplate.from_file()
    (create,) = queue_calls(stack, "JobsQueue")
    attributes = create.kwargs["Attributes"]
    assert create.kwargs["QueueName"] == "qgjob-local-jobs.fifo"
    assert attributes["FifoQueue"] == "true"
    assert attributes["VisibilityTimeout"] == "360"
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:qgjob-local-jobs-dlq.fifo",
        "maxReceiveCount": 5,
    }
    order = stack.creation_order()
    assert order.index("JobsDeadLetterQueue") < order.index("JobsQueue")


def test_function_environment_resolves_refs_and_parameter_overrides() -> None:
    stack = LocalTemplate.from_file(parameter_overrides={"LeaseSeconds": 7})
    stack.created_refs["JobsQueue"] = "http://moto/123456789012/qgjob-local-jobs.fifo"
    env = stack.function_environment()
    assert env["JOBS_TABLE"] == "qgjob-local-JobsTable"
    assert env["TOKENS_TABLE"] == "qgjob-local-TokensTable"
    assert env["JOBS_QUEUE_URL"] == "http://moto/123456789012/qgjob-local-jobs.fifo"
    assert env["ARTIFACTS_BUCKET"] == "qgjob-local-artifactsbucket"
    assert env["LEASE_SECONDS"] == "7"
    assert env["BATCH_MAX_JOBS"] == "25"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"


def test_unknown_parameters_and_unresolvable_refs_are_errors() -> None:
    with pytest.raises(TemplateError, match="NoSuchParam"):
        LocalTemplate.from_file(parameter_overrides={"NoSuchParam": 1})
    stack = LocalTemplate.from_file()
    with pytest.raises(TemplateError, match="only after it is created"):
        stack.function_environment()  # the queue URL is not known before provisioning
    with pytest.raises(TemplateError, match="Missing"):
        stack.resolve({"Ref": "Missing"})


def test_sub_and_if_resolve_like_cloudformation() -> None:
    stack = LocalTemplate(
        {
            "Parameters": {"Env": {"Type": "String", "Default": "dev"}},
            "Conditions": {"IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]}},
            "Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {}}},
        }
    )
    assert stack.resolve({"Fn::Sub": "${AWS::StackName}-${Env}-${!Literal}"}) == (
        "qgjob-local-dev-${Literal}"
    )
    assert stack.resolve({"Fn::Sub": "${Q.QueueName}"}) == "qgjob-local-Q"
    assert stack.resolve({"Fn::If": ["IsProd", "big", "small"]}) == "small"
    assert stack.resolve({"a": {"Ref": "AWS::NoValue"}, "b": 1}) == {"b": 1}


def test_rate_expressions() -> None:
    assert rate_seconds("rate(1 minute)") == 60.0
    assert rate_seconds("rate(5 minutes)") == 300.0


# --------------------------------------------------------------------- events


def _request(
    raw_path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
) -> events.HttpRequest:
    return events.HttpRequest("POST", raw_path, headers or [], body, "10.0.0.1")


def test_proxy_event_has_the_rest_api_shape() -> None:
    request = _request(
        "/v1/jobs/job-1/result?a=1&a=2&b=",
        b'{"x": 1}',
        [("Content-Type", "application/json"), ("X-Multi", "1"), ("X-Multi", "2")],
    )
    event = events.build_proxy_event(
        request, stage="v1", request_id="req-1", account_id=ACCOUNT, api_id="api", now=1000.0
    )
    assert event["resource"] == "/{proxy+}"
    assert event["path"] == "/jobs/job-1/result"
    assert event["pathParameters"] == {"proxy": "jobs/job-1/result"}
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["headers"]["X-Multi"] == "2"
    assert event["multiValueHeaders"]["X-Multi"] == ["1", "2"]
    assert event["body"] == '{"x": 1}'
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["requestId"] == "req-1"
    assert context["stage"] == "v1"
    assert context["path"] == "/v1/jobs/job-1/result"
    assert context["identity"]["sourceIp"] == "10.0.0.1"
    assert context["requestTimeEpoch"] == 1_000_000


def test_binary_bodies_are_base64_and_empty_bodies_null() -> None:
    binary = events.build_proxy_event(
        _request("/v1/x", b"\xff\x00"), stage="v1", request_id="r", account_id=ACCOUNT, api_id="a"
    )
    assert binary["isBase64Encoded"] is True
    assert base64.b64decode(binary["body"]) == b"\xff\x00"
    empty = events.build_proxy_event(
        _request("/v1/x"), stage="v1", request_id="r", account_id=ACCOUNT, api_id="a"
    )
    assert empty["body"] is None
    assert empty["queryStringParameters"] is None


def test_paths_outside_the_stage_match_no_resource() -> None:
    assert events.stage_relative_path("/v1/jobs", "v1") == "/jobs"
    assert events.stage_relative_path("/v1/", "v1") is None
    assert events.stage_relative_path("/jobs", "v1") is None
    assert events.stage_relative_path("/v10/jobs", "v1") is None


def test_proxy_response_merges_headers_and_decodes_base64() -> None:
    response = events.proxy_response_to_http(
        {
            "statusCode": 201,
            "headers": {"Content-Type": "application/json", "X-One": "a"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-One": ["b"]},
            "body": base64.b64encode(b"\x00binary").decode(),
            "isBase64Encoded": True,
        },
        "req-1",
    )
    assert response.status == 201
    assert response.body == b"\x00binary"
    assert ("Set-Cookie", "a=1") in response.headers
    assert ("Set-Cookie", "b=2") in response.headers
    assert [v for n, v in response.headers if n == "X-One"] == ["b"]
    with pytest.raises(events.MalformedProxyResponseError):
        events.proxy_response_to_http({"body": "no status"}, "req-1")


def test_sqs_records_have_the_lambda_shape() -> None:
    message = {
        "MessageId": "m-1",
        "ReceiptHandle": "rh",
        "Body": "{}",
        "MD5OfBody": "99914b932bd37a50b983c5e7c90ae93b",
        "Attributes": {"MessageGroupId": "g", "ApproximateReceiveCount": "1"},
        "MessageAttributes": {"bin": {"DataType": "Binary", "BinaryValue": b"\x01"}},
    }
    (record,) = events.build_sqs_event([message], queue_arn="arn:q", region=REGION)["Records"]
    assert record["messageId"] == "m-1"
    assert record["receiptHandle"] == "rh"
    assert record["attributes"]["MessageGroupId"] == "g"
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:q"
    assert record["messageAttributes"]["bin"]["binaryValue"] == "AQ=="
    assert record["messageAttributes"]["bin"]["dataType"] == "Binary"


def test_scheduled_events_have_the_eventbridge_shape() -> None:
    event = events.build_scheduled_event(rule_arn="arn:r", region=REGION, account_id=ACCOUNT)
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["resources"] == ["arn:r"]


# ------------------------------------------------- moto server + event source


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = MotoServer()
    server.start()
    yield server.endpoint
    server.stop()


def _client(service: str, endpoint: str) -> Any:
    session: Any = boto3.session.Session()  # Any: the service name is not a literal here
    return session.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_provision_creates_everything_in_the_template(moto_endpoint: str) -> None:
    stack = LocalTemplate.from_file(stack_name="qgjob-provision-test")
    clients = {s: _client(s, moto_endpoint) for s in ("dynamodb", "sqs", "s3")}
    refs = provision(stack, clients)
    tables = set(clients["dynamodb"].list_tables()["TableNames"])
    assert {refs[t] for t in ("JobsTable", "RunsTable", "AgentsTable", "TokensTable")} <= tables
    description = clients["dynamodb"].describe_table(TableName=refs["JobsTable"])["Table"]
    assert {i["IndexName"] for i in description["GlobalSecondaryIndexes"]} == {
        "backlog-index",
        "unadmitted-index",
    }
    attributes = clients["sqs"].get_queue_attributes(
        QueueUrl=refs["JobsQueue"], AttributeNames=["All"]
    )["Attributes"]
    assert attributes["FifoQueue"] == "true"
    assert "qgjob-provision-test-jobs-dlq.fifo" in attributes["RedrivePolicy"]
    assert stack.function_environment()["JOBS_QUEUE_URL"] == refs["JobsQueue"]
    clients["s3"].head_bucket(Bucket=refs["ArtifactsBucket"])


class RecordingHandler:
    """A stand-in dispatcher: fails chosen bodies once, or raises on the first call."""

    def __init__(self, fail_once: set[str] | None = None, raise_first: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self._fail_once = set(fail_once or ())
        self._raise_first = raise_first

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        if self._raise_first:
            self._raise_first = False
            raise RuntimeError("boom")
        failures = [r for r in event["Records"] if r["body"] in self._fail_once]
        self._fail_once -= {r["body"] for r in failures}
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in failures]}

    def bodies(self) -> list[str]:
        return [r["body"] for e in self.events for r in e["Records"]]


@pytest.fixture
def fifo_queue(moto_endpoint: str, request: pytest.FixtureRequest) -> tuple[Any, str, str]:
    sqs = _client("sqs", moto_endpoint)
    name = f"es-{abs(hash(request.node.name)) % 10**8}.fifo"
    url = sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})["QueueUrl"]
    for n in range(3):
        sqs.send_message(
            QueueUrl=url, MessageBody=f"m{n}", MessageGroupId=f"g{n}", MessageDeduplicationId=str(n)
        )
    return sqs, url, f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def _event_source(handler: RecordingHandler, fifo_queue: tuple[Any, str, str]) -> SqsEventSource:
    sqs, url, arn = fifo_queue
    function = LambdaFunction(
        "dispatcher", handler, timeout_s=60, memory_mb=512, region=REGION, account_id=ACCOUNT
    )
    return SqsEventSource(
        function, sqs, queue_url=url, queue_arn=arn, region=REGION, batch_size=10,
        stop=threading.Event(), retry_backoff_s=0.0,
    )  # fmt: skip


def _drain(source: SqsEventSource, handler: RecordingHandler, expected: int) -> None:
    for _ in range(50):  # bounded: each poll is at most a one-second long poll
        if len(handler.bodies()) >= expected:
            return
        source.poll_once()
    raise AssertionError(f"only {handler.bodies()} delivered")


def _queue_size(fifo_queue: tuple[Any, str, str]) -> int:
    sqs, url, _ = fifo_queue
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[n]) for n in names)


def test_event_source_deletes_successes_and_redelivers_item_failures(
    fifo_queue: tuple[Any, str, str],
) -> None:
    handler = RecordingHandler(fail_once={"m1"})
    source = _event_source(handler, fifo_queue)
    _drain(source, handler, expected=4)
    assert sorted(handler.bodies()) == ["m0", "m1", "m1", "m2"]
    redelivered = [r for e in handler.events for r in e["Records"] if r["body"] == "m1"][-1]
    assert redelivered["attributes"]["ApproximateReceiveCount"] == "2"
    assert redelivered["attributes"]["MessageGroupId"] == "g1"
    assert _queue_size(fifo_queue) == 0


def test_event_source_deletes_nothing_when_the_handler_raises(
    fifo_queue: tuple[Any, str, str],
) -> None:
    handler = RecordingHandler(raise_first=True)
    source = _event_source(handler, fifo_queue)
    _drain(source, handler, expected=6)
    assert sorted(handler.bodies()) == ["m0", "m0", "m1", "m1", "m2", "m2"]
    assert _queue_size(fifo_queue) == 0


# ------------------------------------------------------------------ API shim


@pytest.fixture
def shim() -> Iterator[tuple[ApiGatewayShim, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        if event["path"] == "/crash":
            raise RuntimeError("boom")
        body = json.dumps({"path": event["path"], "body": event["body"]})
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": body}

    function = LambdaFunction(
        "api", handler, timeout_s=30, memory_mb=512, region=REGION, account_id=ACCOUNT
    )
    server = ApiGatewayShim(function, stage="v1", port=0, account_id=ACCOUNT)
    server.start()
    yield server, seen
    server.stop()


def test_shim_turns_http_into_proxy_events_and_back(
    shim: tuple[ApiGatewayShim, list[dict[str, Any]]],
) -> None:
    server, seen = shim
    response = requests.post(f"{server.url}/jobs?x=1", json={"a": 1}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"path": "/jobs", "body": '{"a": 1}'}
    assert response.headers["x-amzn-RequestId"] == seen[-1]["requestContext"]["requestId"]
    assert seen[-1]["httpMethod"] == "POST"
    assert seen[-1]["queryStringParameters"] == {"x": "1"}


def test_shim_answers_like_api_gateway_outside_the_api_and_on_crashes(
    shim: tuple[ApiGatewayShim, list[dict[str, Any]]],
) -> None:
    server, seen = shim
    root = server.url.rsplit("/", 1)[0]
    outside = requests.get(f"{root}/jobs", timeout=10)
    assert outside.status_code == 403
    assert outside.json() == {"message": "Missing Authentication Token"}
    crash = requests.get(f"{server.url}/crash", timeout=10)
    assert crash.status_code == 502
    assert crash.json() == {"message": "Internal server error"}
    assert len(seen) == 1  # the outside request never reached the function


# ------------------------------------------------------------- LocalStack


@pytest.fixture
def restored_environ() -> Iterator[None]:
    # LocalStack sets process-wide AWS variables for the handlers; other tests must not
    # inherit an endpoint pointing at a stopped moto server.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_local_stack_wires_template_functions_to_api_queue_and_schedules(
    tmp_path: Path, restored_environ: None
) -> None:
    api_events: list[dict[str, Any]] = []
    dispatcher_events: list[dict[str, Any]] = []
    reaper_events: list[dict[str, Any]] = []
    delivered, planned, reaped = threading.Event(), threading.Event(), threading.Event()

    def api(event: dict[str, Any], context: Any) -> dict[str, Any]:
        api_events.append(event)
        if event["path"] == "/enqueue":
            boto3.client("sqs").send_message(
                QueueUrl=os.environ["JOBS_QUEUE_URL"], MessageBody="job",
                MessageGroupId="g", MessageDeduplicationId="d",
            )  # fmt: skip
        return {"statusCode": 200, "body": json.dumps({"status": "ok"})}

    def dispatcher(event: dict[str, Any], context: Any) -> dict[str, Any]:
        dispatcher_events.append(event)
        (delivered if "Records" in event else planned).set()
        return {"batchItemFailures": []}

    def reaper(event: dict[str, Any], context: Any) -> None:
        reaper_events.append(event)
        reaped.set()

    ready_file = tmp_path / "ready.json"
    options = LocalStackOptions(
        state_dir=tmp_path, ready_file=ready_file, start_agents=False, plan_interval=0.05,
        reap_interval=0.05, orgs=("acme",), route_function_logs=False,
    )  # fmt: skip
    handlers = {"ApiFunction": api, "DispatcherFunction": dispatcher, "ReaperFunction": reaper}
    with LocalStack(
        options, handlers=handlers, token_factory=lambda kind, org: f"{kind}:{org}"
    ) as stack:
        ready = json.loads(ready_file.read_text())
        assert ready["endpoint"] == stack.endpoint
        assert ready["org_tokens"] == {"acme": "org:acme"}
        assert ready["agent_token"] == "agent:None"
        assert os.environ["JOBS_TABLE"] == "qgjob-local-JobsTable"
        assert os.environ["LEASE_SECONDS"] == "10"
        assert requests.post(f"{stack.endpoint}/enqueue", timeout=10).status_code == 200
        assert delivered.wait(10), "the SQS event source never invoked the dispatcher"
        assert planned.wait(10), "the planning schedule never invoked the dispatcher"
        assert reaped.wait(10), "the reaper schedule never ran"
    assert not ready_file.exists()
    assert api_events[0]["path"] == "/health"  # the readiness check
    (record,) = next(e for e in dispatcher_events if "Records" in e)["Records"]
    assert record["body"] == "job"
    assert record["eventSourceARN"].endswith(":qgjob-local-jobs.fifo")
    assert reaper_events[0]["detail-type"] == "Scheduled Event"
    alive = [t.name for t in threading.enumerate() if t.name.startswith(("sqs-", "schedule-"))]
    assert alive == []


# ---------------------------------------------------------------------- admin


class _FakeCloudFormation:
    def __init__(self, outputs: list[dict[str, str]]) -> None:
        self._outputs = outputs

    def describe_stacks(self, StackName: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        return {"Stacks": [{"StackName": StackName, "Outputs": self._outputs}]}


def test_admin_reads_the_tokens_table_from_the_stack_outputs() -> None:
    outputs = [{"OutputKey": "TokensTableName", "OutputValue": "qgjob-TokensTable-XYZ"}]
    assert tokens_table_from_stack("qgjob", _FakeCloudFormation(outputs)) == (
        "qgjob-TokensTable-XYZ"
    )
    with pytest.raises(AdminError, match="no TokensTableName output"):
        tokens_table_from_stack("other", _FakeCloudFormation([]))


def test_admin_creates_a_token_and_stores_only_its_hash(
    moto_endpoint: str, restored_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = LocalTemplate.from_file(stack_name="qgjob-admin-test")
    dynamodb = _client("dynamodb", moto_endpoint)
    for call in table_calls(stack, "TokensTable"):
        getattr(dynamodb, call.operation)(**call.kwargs)
    table = stack.physical_name("TokensTable")
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": moto_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        }
    )
    exit_code = admin_main(
        ["create-token", "--kind", "org", "--org-id", "acme", "--tokens-table", table]
    )
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert exit_code == 0
    assert token
    assert "only its hash is kept" in captured.err
    items = dynamodb.scan(TableName=table)["Items"]
    assert len(items) == 1
    assert token not in json.dumps(items)


def test_admin_refuses_an_org_token_without_an_org() -> None:
    with pytest.raises(SystemExit) as excinfo:
        admin_main(["create-token", "--kind", "org", "--tokens-table", "t"])
    assert excinfo.value.code == 2


# ---------------------------------------------------------------- moto server


def test_dynamodb_requests_run_under_the_lock_and_others_do_not() -> None:
    seen: list[tuple[str, bool]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append((environ.get("HTTP_X_AMZ_TARGET", ""), middleware._lock.locked()))
        start_response("200 OK", [])
        return [b"{}"]

    middleware = SerializedDynamoDB(app)
    for target in ("DynamoDB_20120810.TransactWriteItems", "AmazonSQS.ReceiveMessage", ""):
        assert middleware({"HTTP_X_AMZ_TARGET": target}, lambda *a: None) == [b"{}"]
    assert seen == [
        ("DynamoDB_20120810.TransactWriteItems", True),
        ("AmazonSQS.ReceiveMessage", False),
        ("", False),
    ]


def test_conditional_writes_have_one_winner_under_concurrency() -> None:
    server = MotoServer()
    server.start()
    try:
        dynamodb = _client("dynamodb", server.endpoint)
        dynamodb.create_table(
            TableName="race",
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        barrier = threading.Barrier(8)
        winners: list[int] = []

        def claim(n: int) -> None:
            client = _client("dynamodb", server.endpoint)
            barrier.wait(timeout=10)
            try:
                client.put_item(
                    TableName="race",
                    Item={"k": {"S": "agent-1"}, "by": {"N": str(n)}},
                    ConditionExpression="attribute_not_exists(k)",
                )
                winners.append(n)
            except client.exceptions.ConditionalCheckFailedException:
                pass

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(winners) == 1
    finally:
        server.stop()
