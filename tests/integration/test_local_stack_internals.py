"""The local stack's own pieces against a real moto server and real sockets, with
stand-in handlers: provisioning, the SQS event source, the API Gateway shim, the
LocalStack life cycle, the admin CLI and moto's serialized DynamoDB.

No backend code runs here, so a failure points at infra/, not at the Lambda functions.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from infra.admin import main as admin_main
from infra.local_stack import LocalStack, LocalStackOptions
from infra.moto_server import MotoServer
from infra.runtime import ApiGatewayShim, LambdaFunction, SqsEventSource
from infra.template import LocalTemplate, provision, table_calls

REGION = "us-east-1"
ACCOUNT = "123456789012"


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
        "timeout-index",
    }
    ttl = clients["dynamodb"].describe_time_to_live(TableName=refs["JobsTable"])
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    agents = clients["dynamodb"].describe_table(TableName=refs["AgentsTable"])["Table"]
    assert {i["IndexName"] for i in agents["GlobalSecondaryIndexes"]} == {
        "connection-index",
        "target-index",
        "idle-index",
    }
    batches = clients["dynamodb"].describe_table(TableName=refs["BatchesTable"])["Table"]
    assert [i["IndexName"] for i in batches["GlobalSecondaryIndexes"]] == ["lease-index"]
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


def _in_stage(event: dict[str, Any]) -> str:
    """The request's path within the stage (the event's ``path`` keeps the stage)."""
    return "/" + str(event["pathParameters"]["proxy"])


@pytest.fixture
def shim() -> Iterator[tuple[ApiGatewayShim, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        if _in_stage(event) == "/crash":
            raise RuntimeError("boom")
        body = json.dumps({"path": _in_stage(event), "body": event["body"]})
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
    assert seen[-1]["path"] == "/v1/jobs"  # an HTTP API on a named stage keeps the prefix
    assert response.headers["x-amzn-RequestId"] == seen[-1]["requestContext"]["requestId"]
    assert seen[-1]["httpMethod"] == "POST"
    assert seen[-1]["queryStringParameters"] == {"x": "1"}


def test_shim_answers_like_api_gateway_outside_the_api_and_on_crashes(
    shim: tuple[ApiGatewayShim, list[dict[str, Any]]],
) -> None:
    server, seen = shim
    root = server.url.rsplit("/", 1)[0]
    outside = requests.get(f"{root}/jobs", timeout=10)
    assert outside.status_code == 404
    assert outside.json() == {"message": "Not Found"}
    crash = requests.get(f"{server.url}/crash", timeout=10)
    assert crash.status_code == 500
    assert crash.json() == {"message": "Internal Server Error"}
    assert len(seen) == 1  # the outside request never reached the function


class GatedApi:
    """A stand-in api function: ``/slow...`` paths wait for ``release`` (bounded)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        path = _in_stage(event)
        self.paths.append(path)
        if path.startswith("/slow"):
            self.entered.set()
            self.release.wait(timeout=60)
        return {"statusCode": 200, "body": json.dumps({"path": path})}


@pytest.fixture
def gated() -> Iterator[tuple[ApiGatewayShim, GatedApi]]:
    api = GatedApi()
    function = LambdaFunction(
        "api", api, timeout_s=30, memory_mb=512, region=REGION, account_id=ACCOUNT
    )
    server = ApiGatewayShim(function, stage="v1", port=0, account_id=ACCOUNT)
    server.start()
    yield server, api
    api.release.set()
    server.stop()


def _address(server: ApiGatewayShim) -> tuple[str, int]:
    host, port = server.url.split("//", 1)[1].split("/", 1)[0].split(":")
    return host, int(port)


def _send(server: ApiGatewayShim, path: str) -> socket.socket:
    """Opens a connection and sends ``GET /v1<path>`` on it; the response is not read."""
    client = socket.create_connection(_address(server), timeout=10)
    client.sendall(f"GET /{server.stage}{path} HTTP/1.1\r\nHost: local\r\n\r\n".encode())
    return client


def _hang_up_hard(client: socket.socket) -> None:
    # SO_LINGER 0: close() resets the connection at once, as a client killed mid-request.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def _wait_for(probe: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "CONNECT", "BREW"])
def test_shim_answers_every_method_like_api_gateway(
    gated: tuple[ApiGatewayShim, GatedApi], method: str
) -> None:
    server, api = gated
    connection = http.client.HTTPConnection(*_address(server), timeout=10)
    connection.request(method, f"/{server.stage}/jobs")
    response = connection.getresponse()
    assert response.status == 404  # no route of the HTTP API matches it
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read()) == {"message": "Not Found"}
    assert api.paths == []  # no function runs for a method `ANY` does not cover


def test_a_request_whose_client_left_is_not_run(
    gated: tuple[ApiGatewayShim, GatedApi], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qgjob.local")
    server, api = gated
    busy = _send(server, "/slow")
    assert api.entered.wait(10)
    _send(server, "/abandoned").close()  # waits behind /slow; its client gives up
    api.release.set()
    assert busy.recv(12) == b"HTTP/1.1 200"
    _wait_for(
        lambda: "/abandoned" in api.paths or "skipped" in caplog.text,
        "the abandoned request to be run or skipped",
    )
    assert api.paths == ["/slow"]
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert [r.getMessage() for r in skipped] == [
        "GET /v1/abandoned: the client left before it was run; skipped"
    ]


def test_a_client_that_hangs_up_before_the_response_is_one_line(
    gated: tuple[ApiGatewayShim, GatedApi],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="qgjob.local")
    server, api = gated
    client = _send(server, "/slow")
    assert api.entered.wait(10)
    _hang_up_hard(client)
    api.release.set()  # the function finishes; writing its response fails
    _wait_for(lambda: "went away" in caplog.text, "the dropped client's log line")
    records = [r for r in caplog.records if r.name == "qgjob.local"]
    (message,) = [r.getMessage() for r in records]
    # Which of the two the kernel reports depends on timing; either is the same event.
    assert message in {
        f"GET /v1/slow: the client went away before the response ({error})"
        for error in ("ConnectionResetError", "BrokenPipeError")
    }
    assert all(r.exc_info is None for r in records)
    assert "Traceback" not in capfd.readouterr().err


def test_shim_stops_promptly_with_requests_waiting(
    gated: tuple[ApiGatewayShim, GatedApi],
) -> None:
    server, api = gated
    busy = _send(server, "/slow")  # holds the function until released
    assert api.entered.wait(10)
    waiting = [_send(server, f"/queued-{n}") for n in range(100)]
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive(), "stop() waited for the requests queued at the shim"
    api.release.set()
    busy.close()
    for client in waiting:
        try:
            head = client.recv(12)
        except ConnectionError:
            head = b""  # still in the listen queue when the server closed it
        client.close()
        assert head in (b"HTTP/1.1 503", b""), head
    assert api.paths == ["/slow"]  # none of the waiting requests ran


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
        if _in_stage(event) == "/enqueue":
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
    assert _in_stage(api_events[0]) == "/health"  # the readiness check
    (record,) = next(e for e in dispatcher_events if "Records" in e)["Records"]
    assert record["body"] == "job"
    assert record["eventSourceARN"].endswith(":qgjob-local-jobs.fifo")
    assert reaper_events[0]["detail-type"] == "Scheduled Event"
    alive = [t.name for t in threading.enumerate() if t.name.startswith(("sqs-", "schedule-"))]
    assert alive == []


# ---------------------------------------------------------------------- admin


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


# ---------------------------------------------------------------- moto server


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
