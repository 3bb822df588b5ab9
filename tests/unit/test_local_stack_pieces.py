"""The local stack's pure pieces: template reading, event shapes, schedule rates, the
admin CLI's argument and stack-output handling, and the DynamoDB-serializing middleware.

No sockets, no AWS (not even moto): a failure points at infra/, not at the backend.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from infra import events
from infra.admin import AdminError, tokens_table_from_stack
from infra.admin import main as admin_main
from infra.moto_server import SerializedDynamoDB
from infra.runtime import rate_seconds
from infra.template import LocalTemplate, TemplateError, load_template, queue_calls, table_calls

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
    stack.created_refs["VaultQueue"] = "http://moto/123456789012/qgjob-local-vault"
    env = stack.function_environment()
    assert env["JOBS_TABLE"] == "qgjob-local-JobsTable"
    assert env["TOKENS_TABLE"] == "qgjob-local-TokensTable"
    assert env["JOBS_QUEUE_URL"] == "http://moto/123456789012/qgjob-local-jobs.fifo"
    assert env["ARTIFACTS_BUCKET"] == "qgjob-local-artifactsbucket"
    assert env["LEASE_SECONDS"] == "7"
    assert env["BATCH_MAX_JOBS"] == "25"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert env["VAULT_QUEUE_URL"] == "http://moto/123456789012/qgjob-local-vault"
    assert env["BROWSERSTACK_CREDENTIALS_PREFIX"] == "/qgjob-local/browserstack"
    assert env["BROWSERSTACK_API_URL"] == "https://api-cloud.browserstack.com"


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


def test_proxy_event_has_the_http_api_version_1_0_shape() -> None:
    request = _request(
        "/v1/jobs/job-1/result?a=1&a=2&b=",
        b'{"x": 1}',
        [("Content-Type", "application/json"), ("X-Multi", "1"), ("X-Multi", "2")],
    )
    event = events.build_proxy_event(
        request, stage="v1", request_id="req-1", account_id=ACCOUNT, api_id="api", now=1000.0
    )
    assert event["version"] == "1.0"
    assert event["resource"] == "/{proxy+}"
    assert event["path"] == "/v1/jobs/job-1/result"  # a named stage keeps its prefix
    assert event["pathParameters"] == {"proxy": "jobs/job-1/result"}
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["headers"]["x-multi"] == "2"  # names in lower case
    assert event["multiValueHeaders"]["x-multi"] == ["1", "2"]
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
