"""infra.metering and bench.costs: request units, routes, causes, botocore hooks, prices."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from bench.costs import Usage, fixed_per_day, is_event_driven, usage_of, window
from bench.prices import PRICES, price
from infra.metering import BotocoreHook, Meter, dynamodb_units, item_size, route_of, trigger_of

GSI = {"jobs": [frozenset({"backlog_target", "backlog_key"})]}


def s(value: str) -> dict[str, str]:
    return {"S": value}


def test_item_size_counts_names_and_values() -> None:
    assert item_size({"id": s("abc")}) == 2 + 3
    assert item_size({"n": {"N": "12345"}}) == 1 + 4  # (5 digits + 1) // 2 + 1
    assert item_size({"flag": {"BOOL": True}, "l": {"L": [s("ab")]}}) == 4 + 1 + 1 + 3 + 1 + 2


@pytest.mark.parametrize(
    ("operation", "params", "parsed", "expected"),
    [
        ("PutItem", {"TableName": "t", "Item": {"id": s("x" * 1500)}}, {}, (2, 0)),
        # A Put of an item with all of a GSI's keys also writes the index ...
        ("PutItem", {"TableName": "jobs", "Item": {"id": s("x"), "backlog_target": s("e"),
                                                   "backlog_key": s("k")}}, {}, (2, 0)),
        # ... one missing a key is not in that (sparse) index.
        ("PutItem", {"TableName": "jobs", "Item": {"id": s("x"), "backlog_key": s("k")}}, {},
         (1, 0)),
        ("UpdateItem", {"TableName": "jobs", "UpdateExpression": "SET #s = :s",
                        "ExpressionAttributeNames": {"#s": "status"}}, {}, (1, 0)),
        ("UpdateItem", {"TableName": "jobs", "UpdateExpression": "SET #b = :b REMOVE x",
                        "ExpressionAttributeNames": {"#b": "backlog_key"}}, {}, (2, 0)),
        # Transactions cost double, a ConditionCheck included.
        ("TransactWriteItems", {"TransactItems": [
            {"Update": {"TableName": "t", "UpdateExpression": "SET a = :a"}},
            {"ConditionCheck": {"TableName": "t"}},
            {"Put": {"TableName": "t", "Item": {"id": s("x")}}},
        ]}, {}, (6, 0)),
        ("GetItem", {"TableName": "t", "ConsistentRead": True}, {}, (0, 1.0)),
        ("GetItem", {"TableName": "t"}, {"Item": {"id": s("x" * 5000)}}, (0, 1.0)),
        ("BatchGetItem", {"RequestItems": {"t": {"Keys": [{}, {}, {}], "ConsistentRead": True}}},
         {"Responses": {"t": [{"id": s("x")}]}}, (0, 3.0)),
        ("Query", {"TableName": "t"}, {"Items": [{"id": s("x" * 3000)}] * 3, "ScannedCount": 3},
         (0, 1.5)),
        ("Query", {"TableName": "t"}, {"Items": [], "ScannedCount": 0}, (0, 0.5)),
    ],
)  # fmt: skip
def test_dynamodb_units(
    operation: str, params: dict[str, Any], parsed: dict[str, Any], expected: tuple[float, float]
) -> None:
    assert dynamodb_units(operation, params, parsed, GSI) == expected


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/agents/emulator-d1/lease", "POST /agents/{id}/lease"),
        ("POST", "/agents/register", "POST /agents/register"),
        ("POST", "/agents/a/jobs/job-1/result", "POST /agents/{id}/jobs/{id}/result"),
        ("GET", "/runs/run-1", "GET /runs/{id}"),
        ("GET", "/health", "GET /health"),
        ("GET", "/%00/../etc/passwd", "GET (other)"),
        ("GET", "/" + "a/" * 20, "GET (other)"),
    ],
)
def test_route_of_keeps_the_table_small(method: str, path: str, route: str) -> None:
    assert route_of({"httpMethod": method, "path": path}) == route


def test_trigger_of_reads_the_event_shape() -> None:
    assert trigger_of({"httpMethod": "GET"}) == "api"
    assert trigger_of({"Records": [{"eventSource": "aws:sqs"}]}) == "sqs"
    assert trigger_of({"detail-type": "Scheduled Event"}) == "schedule"
    assert trigger_of({"requestContext": {"eventType": "CONNECT"}}) == "websocket"
    assert trigger_of({}) == "invoke"


def test_wrapped_handler_counts_invocations_routes_and_502s() -> None:
    meter = Meter({"ApiFunction": 512})

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["path"] == "/boom":
            raise RuntimeError("boom")
        return {"statusCode": 404}

    metered = meter.wrap("ApiFunction", lambda: handler)
    metered({"httpMethod": "GET", "path": "/jobs/j1"}, None)
    with pytest.raises(RuntimeError):
        metered({"httpMethod": "GET", "path": "/boom"}, None)
    snapshot = meter.snapshot()
    assert snapshot["functions"]["ApiFunction/api"]["invocations"] == 2
    assert snapshot["api"]["GET /jobs/{id}"]["status"] == {"404": 1}
    assert snapshot["api"]["GET /boom"]["status"] == {"502": 1}


def test_a_message_carries_its_cause_to_the_invocation_it_triggers() -> None:
    meter = Meter()
    with meter.attributed_to("DispatcherFunction/schedule"):
        meter.sent(["m-1"])
    seen: list[str] = []
    metered = meter.wrap("DispatcherFunction", lambda: lambda e, c: seen.append(meter.current))
    metered({"Records": [{"eventSource": "aws:sqs", "messageId": "m-1"}]}, None)
    assert seen == ["DispatcherFunction/sqs@DispatcherFunction/schedule"]
    assert not is_event_driven(seen[0])
    assert is_event_driven("DispatcherFunction/sqs@ApiFunction/api")


def test_botocore_hook_counts_calls_with_their_units() -> None:
    meter = Meter()
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    BotocoreHook(meter, GSI).attach(client)
    with Stubber(client) as stub:
        stub.add_response("get_item", {"Item": {"id": s("x")}})
        stub.add_client_error("put_item", "ConditionalCheckFailedException", http_status_code=400)
        with meter.attributed_to("ApiFunction/api"):
            client.get_item(TableName="jobs", Key={"id": s("x")}, ConsistentRead=True)
            with pytest.raises(client.exceptions.ConditionalCheckFailedException):
                client.put_item(
                    TableName="jobs",
                    Item={"id": s("x"), "backlog_target": s("e"), "backlog_key": s("k")},
                )
    ops = meter.snapshot()["aws"]["ApiFunction/api"]
    assert ops["dynamodb.GetItem"]["rru"] == 1.0
    # A failed conditional write still consumes its write units.
    assert ops["dynamodb.PutItem"] == {
        "calls": 1, "errors": 1, "billed": 1.0, "wru": 2, "rru": 0, "empty": 0,
    }  # fmt: skip


def _snapshot(t: float, **parts: Any) -> dict[str, Any]:
    return {"t": t, "memory_mb": {"ApiFunction": 1024, "ReaperFunction": 1024}, **parts}


def test_costs_price_a_window_by_cause() -> None:
    earlier = _snapshot(0.0)
    later = _snapshot(
        10.0,
        aws={
            "ApiFunction/api": {
                "dynamodb.UpdateItem": {"calls": 4, "billed": 4, "wru": 4, "rru": 0, "empty": 0}
            },
            "ReaperFunction/schedule": {
                "dynamodb.Query": {"calls": 2, "billed": 2, "wru": 0, "rru": 1, "empty": 0}
            },
            "platform": {
                "sqs.ReceiveMessage": {"calls": 100, "billed": 100, "wru": 0, "rru": 0, "empty": 99}
            },
        },
        functions={
            "ApiFunction/api": {"invocations": 2, "errors": 0, "duration_s": 1, "billed_ms": 1000},
            "ReaperFunction/schedule": {
                "invocations": 2,
                "errors": 0,
                "duration_s": 0.2,
                "billed_ms": 200,
            },
        },
        api={"POST /agents/{id}/lease": {"count": 2, "duration_s": 1, "status": {"200": 2}}},
    )
    win = window(earlier, later)
    assert win["seconds"] == 10.0
    event = usage_of(win, is_event_driven)
    # The one non-empty receive the local poller made is event-driven; the 99 empty are not.
    assert (event.api_requests, event.aws_calls, event.sqs_requests) == (2, 5, 1)
    assert event.lambda_gb_s == pytest.approx(1.0)
    expected = (
        2 * price("apigw.rest_request")
        + 2 * price("lambda.request")
        + price("lambda.gb_second")
        + 4 * price("dynamodb.write_request_unit")
        + price("sqs.fifo_request")
    )
    assert event.total() == pytest.approx(expected)
    fixed = fixed_per_day(win, {"ReaperFunction": 60.0})
    # 1,440 reaper runs a day, each half of what the window's two cost.
    assert fixed.lambda_requests == pytest.approx(1440)
    assert fixed.dynamodb_rru == pytest.approx(720)


def test_usage_scales_and_adds() -> None:
    usage = Usage(api_requests=2, unpriced={"x.Y": 1}).plus(Usage(api_requests=1)).scaled(2)
    assert (usage.api_requests, usage.unpriced) == (6, {"x.Y": 2})


def test_every_price_is_dated_and_sourced() -> None:
    assert price("apigw.rest_request") == pytest.approx(3.5e-6)
    assert price("lambda.gb_second") == pytest.approx(0.0000166667)
    assert all(p.source.startswith("https://aws.amazon.com/") for p in PRICES.values())


def test_metering_is_off_without_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra import metering

    monkeypatch.delenv(metering.METER_FILE_ENV, raising=False)
    handlers: dict[str, Any] = {}
    assert metering.install_from_env(object(), handlers) is None
    assert handlers == {}
    metering.flush()  # a no-op


def test_route_of_an_http_api_event_is_its_path_within_the_stage() -> None:
    event = {
        "httpMethod": "GET",
        "path": "/v1/runs/run-1",  # an HTTP API on a named stage keeps the prefix
        "pathParameters": {"proxy": "runs/run-1"},
    }
    assert route_of(event) == "GET /runs/{id}"
