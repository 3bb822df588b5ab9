"""template.yaml's limits: one API stage (no stray "Stage"), throttling and the
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


def test_the_rest_api_has_exactly_its_one_named_stage(expanded: dict[str, Any]) -> None:
    stages = _of_type(expanded, "AWS::ApiGateway::Stage")
    deployments = _of_type(expanded, "AWS::ApiGateway::Deployment")

    # A deployment that names a stage creates it: SAM's stray "Stage" comes that way.
    assert [d["Properties"].get("StageName") for d in deployments.values()] == [None]
    assert len(stages) == 1, sorted(stages)
    (stage,) = stages.values()
    assert stage["Properties"]["StageName"] == {"Ref": "StageName"}
    (settings,) = stage["Properties"]["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRate"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurst"}


def test_the_readme_model_numbers_are_the_parameter_defaults(source: dict[str, Any]) -> None:
    parameters = source["Parameters"]

    # README "Limits, sized for a fleet": peak ~150 req/s for 500 agents and 1M jobs/day,
    # three times that as the rate, and a whole fleet re-registering as the burst.
    assert parameters["ApiThrottleRate"]["Default"] == 500
    assert parameters["ApiThrottleBurst"]["Default"] == 1000
    assert parameters["ApiThrottleBurst"]["Default"] >= parameters["ApiThrottleRate"]["Default"]


def test_the_dispatchers_queue_concurrency_is_bounded(expanded: dict[str, Any]) -> None:
    mappings = _of_type(expanded, "AWS::Lambda::EventSourceMapping")

    (mapping,) = mappings.values()
    properties = mapping["Properties"]
    assert properties["BatchSize"] == 10
    assert properties["ScalingConfig"] == {
        "MaximumConcurrency": {"Ref": "DispatcherMaxConcurrency"}
    }
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
