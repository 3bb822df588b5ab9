"""template.yaml's limits: one HTTP API stage (no stray one), throttling and the
dispatcher's concurrency from parameters, as the README's fleet model derives them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.sam_template import expanded_template, resources, source_template


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return source_template()


@pytest.fixture(scope="module")
def expanded() -> dict[str, Any]:
    return expanded_template()


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: {"Properties": v} for k, v in resources(template, kind).items()}


def test_the_http_api_has_exactly_its_one_named_stage_with_the_throttle(
    expanded: dict[str, Any],
) -> None:
    stages = {
        name: stage
        for name, stage in _of_type(expanded, "AWS::ApiGatewayV2::Stage").items()
        if stage["Properties"]["ApiId"] == {"Ref": "QgjobApi"}
    }

    assert len(stages) == 1, sorted(stages)  # no "$default" or "Stage" beside it
    (stage,) = stages.values()
    assert stage["Properties"]["StageName"] == {"Ref": "StageName"}
    settings = stage["Properties"]["DefaultRouteSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRate"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurst"}
    assert resources(expanded, "AWS::ApiGateway::RestApi") == {}  # priced as an HTTP API


def test_the_api_function_gets_version_1_0_events_on_its_one_route(
    source: dict[str, Any],
) -> None:
    (event,) = source["Resources"]["ApiFunction"]["Properties"]["Events"].values()

    assert event["Type"] == "HttpApi"
    assert event["Properties"]["PayloadFormatVersion"] == "1.0"  # what the handler reads
    assert (event["Properties"]["Path"], event["Properties"]["Method"]) == ("/{proxy+}", "ANY")


def test_the_readme_model_numbers_are_the_parameter_defaults(source: dict[str, Any]) -> None:
    parameters = source["Parameters"]

    # README "Limits, sized for a fleet": peak ~150 req/s for 500 agents and 1M jobs/day,
    # three times that as the rate, and a whole fleet re-registering as the burst.
    assert parameters["ApiThrottleRate"]["Default"] == 500
    assert parameters["ApiThrottleBurst"]["Default"] == 1000
    assert parameters["ApiThrottleBurst"]["Default"] >= parameters["ApiThrottleRate"]["Default"]


def test_the_dispatchers_queue_concurrency_is_bounded(expanded: dict[str, Any]) -> None:
    mappings = _of_type(expanded, "AWS::Lambda::EventSourceMapping")

    (mapping,) = [
        m
        for m in mappings.values()
        if m["Properties"]["FunctionName"] == {"Ref": "DispatcherFunction"}
    ]
    properties = mapping["Properties"]
    assert properties["BatchSize"] == 10
    assert properties["ScalingConfig"] == {
        "MaximumConcurrency": {"Ref": "DispatcherMaxConcurrency"}
    }
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_the_vaults_queue_concurrency_is_small_and_failures_are_per_message(
    expanded: dict[str, Any],
) -> None:
    # BrowserStack rate-limits its REST API per account: a few fetches at once, and a
    # failed record retried alone (then dead-lettered), never its whole batch.
    (mapping,) = [
        m
        for m in _of_type(expanded, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": "VaultFunction"}
    ]
    properties = mapping["Properties"]
    assert properties["EventSourceArn"] == {"Fn::GetAtt": ["VaultQueue", "Arn"]}
    assert properties["ScalingConfig"] == {"MaximumConcurrency": 2}
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
