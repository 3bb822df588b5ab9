"""template.yaml deploys: SAM's transform, then a CloudFormation stack on moto, equal to
what the local stack builds from the same file.

The template is expanded offline by samtranslator (as `sam deploy` does) and created with
moto's CloudFormation. Then every table (key schema, attributes, GSIs, billing, TTL,
PITR), queue (FIFO, timeouts, retention, dead-letter target), bucket (versioning,
lifecycle, encryption), SQS event source mapping and schedule of that stack is compared
with the local stack's (infra/template.py `provision`, and the event sources and
schedules infra/local_stack.py starts from `function_events`).

moto's gaps, worked around here only:
- Resource types moto's CloudFormation cannot create are skipped by it, and the stack
  still completes: AWS::ApiGatewayV2::* (the HTTP API and the push WebSocket API),
  AWS::CloudWatch::Alarm, AWS::S3::BucketPolicy, AWS::SNS::Subscription. The test
  accepts exactly these as missing (MOTO_CANNOT_CREATE); any other missing resource fails.
- The Lambda code: the transform needs an S3 location (`sam package` gives one), so the
  test points CodeUri at a bucket it fills with a stub zip; moto only stores it.
- moto's CloudFormation drops a table's PointInTimeRecoverySpecification and
  TimeToLiveSpecification and a bucket's VersioningConfiguration and
  LifecycleConfiguration: for those, the local stack is compared with the expanded
  template (what CloudFormation is sent) instead of with the created stack.
- ScalingConfig and LoggingConfig are not compared: the local stack has no equivalent
  (tests/unit/test_template_*.py check them on the expanded template).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.template import LocalTemplate, provision
from tests.unit.sam_template import expanded_template

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "qgjob"
CODE_BUCKET, CODE_KEY = "qgjob-test", "code.zip"  # sam_template's CodeUri
# moto warns once per resource it skips; MOTO_CANNOT_CREATE lists them instead.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Tried to parse .* not supported by moto:UserWarning"
)
MOTO_CANNOT_CREATE = frozenset(
    {
        "AWS::ApiGatewayV2::Api",
        "AWS::ApiGatewayV2::Integration",
        "AWS::ApiGatewayV2::Route",
        "AWS::ApiGatewayV2::RouteResponse",
        "AWS::ApiGatewayV2::Stage",
        "AWS::CloudWatch::Alarm",
        "AWS::S3::BucketPolicy",
        "AWS::SNS::Subscription",
    }
)


@dataclass
class Deployed:
    template: dict[str, Any]  # the expanded (CloudFormation) template
    physical: dict[str, str]  # logical id -> physical id, from the CloudFormation stack
    local: LocalTemplate
    session: boto3.Session

    def client(self, name: str) -> Any:
        return self.session.client(name)


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    saved = dict(os.environ)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    # Always in-process moto: LocalStack (QGJOB_TEST_AWS_ENDPOINT) runs no CloudFormation.
    os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        with mock_aws():
            session = boto3.Session(region_name=REGION)
            yield _deploy(session)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _deploy(session: boto3.Session) -> Deployed:
    template = expanded_template()
    s3 = session.client("s3")
    s3.create_bucket(Bucket=CODE_BUCKET)
    stub = io.BytesIO()
    with zipfile.ZipFile(stub, "w") as archive:
        archive.writestr("qgjob_backend/__init__.py", "")
    s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=stub.getvalue())

    cfn = session.client("cloudformation")
    cfn.create_stack(
        StackName=STACK, TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM"]
    )
    stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    summaries = cfn.get_paginator("list_stack_resources").paginate(StackName=STACK)
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for page in summaries
        for r in page["StackResourceSummaries"]
        if r["LogicalResourceId"]
    }

    local = LocalTemplate.from_file(stack_name="qgjob-local", region=REGION, account_id=ACCOUNT)
    provision(local, {name: session.client(name) for name in ("dynamodb", "sqs", "s3")})
    return Deployed(template, physical, local, session)


def _of_type(template: dict[str, Any], resource_type: str) -> list[str]:
    return sorted(
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    )


def test_every_resource_is_created_but_moto_s_known_gaps(deployed: Deployed) -> None:
    missing = {
        logical_id: resource["Type"]
        for logical_id, resource in deployed.template["Resources"].items()
        if logical_id not in deployed.physical and "Condition" not in resource
    }
    assert set(missing.values()) <= MOTO_CANNOT_CREATE, missing
    for kind in ("AWS::Lambda::Function", "AWS::Lambda::EventSourceMapping", "AWS::Events::Rule"):
        assert _of_type(deployed.template, kind), kind
        assert all(lid in deployed.physical for lid in _of_type(deployed.template, kind))


# ---------------------------------------------------------------- tables


def _pitr(dynamodb: Any, name: str) -> str:
    backups = dynamodb.describe_continuous_backups(TableName=name)
    return str(
        backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"][
            "PointInTimeRecoveryStatus"
        ]
    )


def _table_shape(dynamodb: Any, name: str) -> dict[str, Any]:
    table = dynamodb.describe_table(TableName=name)["Table"]
    return {
        "KeySchema": table["KeySchema"],
        "AttributeDefinitions": sorted(
            table["AttributeDefinitions"], key=lambda a: a["AttributeName"]
        ),
        "GlobalSecondaryIndexes": sorted(
            (
                {k: index[k] for k in ("IndexName", "KeySchema", "Projection")}
                for index in table.get("GlobalSecondaryIndexes", [])
            ),
            key=lambda i: i["IndexName"],
        ),
        "BillingMode": table.get("BillingModeSummary", {}).get("BillingMode"),
    }


def _ttl(dynamodb: Any, name: str) -> tuple[str | None, str | None]:
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    return ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")


def test_tables_match_the_local_stack(deployed: Deployed) -> None:
    dynamodb = deployed.client("dynamodb")
    tables = _of_type(deployed.template, "AWS::DynamoDB::Table")
    assert tables == sorted(deployed.local.logical_ids("AWS::DynamoDB::Table"))
    for logical_id in tables:
        deployed_shape = _table_shape(dynamodb, deployed.physical[logical_id])
        local_shape = _table_shape(dynamodb, str(deployed.local.ref(logical_id)))
        assert deployed_shape == local_shape, logical_id
        assert deployed_shape["KeySchema"], logical_id
        assert deployed_shape["BillingMode"] == "PAY_PER_REQUEST", logical_id
        # moto's CloudFormation drops PITR and TTL: the settings CloudFormation is sent
        # (the expanded template) against the local stack's.
        local_name = str(deployed.local.ref(logical_id))
        properties = deployed.template["Resources"][logical_id]["Properties"]
        wanted = properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
        assert _pitr(dynamodb, local_name) == ("ENABLED" if wanted else "DISABLED"), logical_id
        ttl = properties.get("TimeToLiveSpecification")
        assert _ttl(dynamodb, local_name) == (
            ("ENABLED", ttl["AttributeName"]) if ttl and ttl["Enabled"] else ("DISABLED", None)
        ), logical_id


# ---------------------------------------------------------------- queues

_QUEUE_ATTRIBUTES = (
    "FifoQueue",
    "ContentBasedDeduplication",
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
)


def _queue_shape(sqs: Any, url: str, logical_of_arn: dict[str, str]) -> dict[str, Any]:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    shape: dict[str, Any] = {name: attributes.get(name) for name in _QUEUE_ATTRIBUTES}
    if "RedrivePolicy" in attributes:
        policy = json.loads(attributes["RedrivePolicy"])
        shape["DeadLetterQueue"] = logical_of_arn[policy["deadLetterTargetArn"]]
        shape["maxReceiveCount"] = int(policy["maxReceiveCount"])
    return shape


def _queue_arns(sqs: Any, urls: dict[str, str]) -> dict[str, str]:
    """Queue ARN -> logical id."""
    return {
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]: logical_id
        for logical_id, url in urls.items()
    }


def test_queues_match_the_local_stack(deployed: Deployed) -> None:
    sqs = deployed.client("sqs")
    queues = _of_type(deployed.template, "AWS::SQS::Queue")
    assert queues == sorted(deployed.local.logical_ids("AWS::SQS::Queue"))
    deployed_urls = {q: deployed.physical[q] for q in queues}
    local_urls = {q: str(deployed.local.ref(q)) for q in queues}
    deployed_arns, local_arns = _queue_arns(sqs, deployed_urls), _queue_arns(sqs, local_urls)
    for logical_id in queues:
        assert _queue_shape(sqs, deployed_urls[logical_id], deployed_arns) == _queue_shape(
            sqs, local_urls[logical_id], local_arns
        ), logical_id
    assert _queue_shape(sqs, deployed_urls["JobsQueue"], deployed_arns)["FifoQueue"] == "true"


# --------------------------------------------------------------- buckets


def _bucket_shape(s3: Any, name: str) -> dict[str, Any]:
    encryption = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]
    return {"Encryption": [r["ApplyServerSideEncryptionByDefault"] for r in encryption["Rules"]]}


def _lifecycle_ids(s3: Any, name: str) -> list[str]:
    rules = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    return sorted(rule["ID"] for rule in rules)


def test_buckets_match_the_local_stack(deployed: Deployed) -> None:
    s3 = deployed.client("s3")
    buckets = _of_type(deployed.template, "AWS::S3::Bucket")
    assert buckets == sorted(deployed.local.logical_ids("AWS::S3::Bucket"))
    for logical_id in buckets:
        assert _bucket_shape(s3, deployed.physical[logical_id]) == _bucket_shape(
            s3, str(deployed.local.ref(logical_id))
        ), logical_id
        # moto's CloudFormation drops versioning and lifecycle rules: what CloudFormation
        # is sent (the expanded template) against the local stack's.
        local_name = str(deployed.local.ref(logical_id))
        properties = deployed.template["Resources"][logical_id]["Properties"]
        rules = properties.get("LifecycleConfiguration", {}).get("Rules", [])
        assert _lifecycle_ids(s3, local_name) == sorted(r["Id"] for r in rules), logical_id
        versioning = properties.get("VersioningConfiguration", {}).get("Status")
        assert s3.get_bucket_versioning(Bucket=local_name).get("Status") == versioning


# ------------------------------------------- event sources and schedules


def _functions(deployed: Deployed) -> list[str]:
    return sorted(deployed.local.logical_ids("AWS::Serverless::Function"))


def _local_setting(local: LocalTemplate, function: str, name: str, default: Any) -> Any:
    """As infra/local_stack.py reads a function setting: its own, else Globals'."""
    globals_ = local.template.get("Globals", {}).get("Function", {})
    return local.resolve(local.properties(function).get(name, globals_.get(name, default)))


def test_functions_match_the_local_stack(deployed: Deployed) -> None:
    """Handler, runtime, timeout, memory and environment names of each function."""
    lambda_ = deployed.client("lambda")
    functions = _functions(deployed)
    assert functions == sorted(
        lid
        for lid in _of_type(deployed.template, "AWS::Lambda::Function")
        if lid in deployed.physical
    )
    for function in functions:
        config = lambda_.get_function(FunctionName=deployed.physical[function])["Configuration"]
        assert config["Handler"] == deployed.local.function_handler(function), function
        assert config["Runtime"] == _local_setting(deployed.local, function, "Runtime", None)
        assert config["Timeout"] == int(_local_setting(deployed.local, function, "Timeout", 3))
        assert config["MemorySize"] == int(
            _local_setting(deployed.local, function, "MemorySize", 128)
        ), function
        names = set(config.get("Environment", {}).get("Variables", {}))
        assert names == set(deployed.local.function_environment(function)), function


def test_event_source_mappings_match_the_local_stack(deployed: Deployed) -> None:
    """The queues each function consumes and how many messages at once, both ways."""
    lambda_ = deployed.client("lambda")
    sqs = deployed.client("sqs")
    queues = _of_type(deployed.template, "AWS::SQS::Queue")
    deployed_arns = _queue_arns(sqs, {q: deployed.physical[q] for q in queues})
    function_of_arn = {
        lambda_.get_function(FunctionName=deployed.physical[f])["Configuration"]["FunctionArn"]: f
        for f in _functions(deployed)
    }
    on_aws = set()
    for mapping in lambda_.list_event_source_mappings()["EventSourceMappings"]:
        if mapping["EventSourceArn"] not in deployed_arns:
            continue  # not this stack's
        on_aws.add(
            (
                function_of_arn[mapping["FunctionArn"]],
                deployed_arns[mapping["EventSourceArn"]],
                mapping["BatchSize"],
                tuple(mapping.get("FunctionResponseTypes", [])),
            )
        )
    # What infra/local_stack.py starts: an SqsEventSource per function SQS event, on the
    # queue its resolved Queue ARN names; it always reads a partial batch answer.
    local_arns = {
        deployed.local.get_att(q, "Arn"): q for q in deployed.local.logical_ids("AWS::SQS::Queue")
    }
    local = set()
    for function in _functions(deployed):
        for event in deployed.local.function_events(function, "SQS"):
            resolved = deployed.local.resolve(event)
            assert resolved.get("FunctionResponseTypes") == ["ReportBatchItemFailures"]
            local.add(
                (
                    function,
                    local_arns[resolved["Queue"]],
                    int(resolved.get("BatchSize", 10)),
                    ("ReportBatchItemFailures",),
                )
            )
    assert on_aws == local
    assert {("DispatcherFunction", "JobsQueue"), ("VaultFunction", "VaultQueue")} <= {
        (function, queue) for function, queue, *_ in on_aws
    }


def test_schedules_match_the_local_stack(deployed: Deployed) -> None:
    events = deployed.client("events")
    lambda_ = deployed.client("lambda")
    function_of_arn = {
        lambda_.get_function(FunctionName=deployed.physical[f])["Configuration"]["FunctionArn"]: f
        for f in _functions(deployed)
    }
    on_aws = set()
    for rule in _of_type(deployed.template, "AWS::Events::Rule"):
        name = deployed.physical[rule]
        expression = events.describe_rule(Name=name)["ScheduleExpression"]
        for target in events.list_targets_by_rule(Rule=name)["Targets"]:
            on_aws.add((function_of_arn[target["Arn"]], expression))
    local = {
        (function, deployed.local.resolve(event)["Schedule"])
        for function in _functions(deployed)
        for event in deployed.local.function_events(function, "Schedule")
    }
    assert on_aws == local
    assert {f for f, _ in on_aws} == {"DispatcherFunction", "ReaperFunction"}
