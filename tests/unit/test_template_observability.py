"""The alarms, dashboard, logs and data retention of the stack, read from the template as
CloudFormation receives it (expanded by samtranslator).

Metric names come from `qgjob_backend.observability`, the code that emits them: renaming a
metric without its alarm and dashboard fails here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from qgjob_backend import observability as obs
from qgjob_backend.schema import Target
from tests.unit.sam_template import expanded_template, resources

# What every stack's metrics are under (POWERTOOLS_METRICS_NAMESPACE in Globals).
NAMESPACE = {"Fn::Sub": "qgjob/${AWS::StackName}"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return expanded_template()


@pytest.fixture(scope="module")
def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources(template, "AWS::CloudWatch::Alarm")


def _metric_stats(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """Each metric an alarm reads: its own, or each MetricStat of its metric math."""
    if "MetricName" in alarm:
        return [alarm]
    return [
        query["MetricStat"]["Metric"] for query in alarm.get("Metrics", []) if "MetricStat" in query
    ]


def _dimensions(metric: dict[str, Any]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}


def _find(
    alarms: dict[str, dict[str, Any]], namespace: Any, metric_name: str, **dimensions: Any
) -> list[str]:
    """The alarms that read ``metric_name`` with exactly ``dimensions``."""
    return [
        logical_id
        for logical_id, alarm in alarms.items()
        for metric in _metric_stats(alarm)
        if metric["Namespace"] == namespace
        and metric["MetricName"] == metric_name
        and _dimensions(metric) == dimensions
    ]


def test_every_alarm_notifies_the_topic(alarms: dict[str, dict[str, Any]]) -> None:
    assert alarms
    for logical_id, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert alarm["OKActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert alarm["TreatMissingData"] == "notBreaching", logical_id


def test_the_alarm_email_is_optional(template: dict[str, Any]) -> None:
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    subscriptions = {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::SNS::Subscription"
    }
    assert list(subscriptions) == ["AlarmEmailSubscription"]
    subscription = subscriptions["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert template["Conditions"]["HasAlarmEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]
    }


@pytest.mark.parametrize("queue", ["JobsDeadLetterQueue", "VaultDeadLetterQueue"])
def test_a_dead_letter_queue_that_is_not_empty_alarms(
    alarms: dict[str, dict[str, Any]], queue: str
) -> None:
    found = _find(
        alarms,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        QueueName={"Fn::GetAtt": [queue, "QueueName"]},
    )
    assert len(found) == 1, found
    alarm = alarms[found[0]]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


@pytest.mark.parametrize("function", ["DispatcherFunction", "ReaperFunction"])
@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_dispatcher_and_reaper_errors_and_throttles_alarm(
    alarms: dict[str, dict[str, Any]], function: str, metric: str
) -> None:
    found = _find(alarms, "AWS/Lambda", metric, FunctionName={"Ref": function})
    assert len(found) == 1, found
    alarm = alarms[found[0]]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


def test_a_failed_plan_sets_off_the_dispatcher_errors_alarm(
    alarms: dict[str, dict[str, Any]],
) -> None:
    """The handler catches a failed plan (its requests come back): Lambda counts no error."""
    (errors,) = _find(alarms, "AWS/Lambda", "Errors", FunctionName={"Ref": "DispatcherFunction"})
    (plans,) = _find(alarms, NAMESPACE, obs.PLAN_FAILURES)
    assert errors == plans
    (expression,) = [q for q in alarms[errors]["Metrics"] if q.get("ReturnData")]
    assert expression["Expression"] == "FILL(errors, 0) + FILL(plans, 0)"


def test_the_api_5xx_rate_alarms(alarms: dict[str, dict[str, Any]]) -> None:
    dimensions = {"ApiId": {"Ref": "QgjobApi"}, "Stage": {"Ref": "StageName"}}
    (errors,) = _find(alarms, "AWS/ApiGateway", "5xx", **dimensions)
    (requests,) = _find(alarms, "AWS/ApiGateway", "Count", **dimensions)
    assert errors == requests, "the 5xx rate is 5xx over all requests, in one alarm"
    (rate,) = [q for q in alarms[errors]["Metrics"] if q.get("ReturnData")]
    assert rate["Expression"] == "IF(requests > 0, 100 * errors / requests, 0)"
    assert alarms[errors]["Threshold"] == {"Ref": "Api5xxAlarmPercent"}


def test_the_lease_expiry_rate_alarms(alarms: dict[str, dict[str, Any]]) -> None:
    (found,) = _find(alarms, NAMESPACE, obs.LEASE_EXPIRIES)
    alarm = alarms[found]
    assert (alarm["Statistic"], alarm["Period"]) == ("Sum", 900)
    assert alarm["Threshold"] == {"Ref": "LeaseExpiryAlarmCount"}


@pytest.mark.parametrize("target", [t.value for t in Target])
def test_the_oldest_queued_job_of_each_target_alarms(
    alarms: dict[str, dict[str, Any]], target: str
) -> None:
    (found,) = _find(alarms, NAMESPACE, obs.OLDEST_QUEUED_AGE, target=target)
    alarm = alarms[found]
    assert (alarm["Statistic"], alarm["ComparisonOperator"]) == ("Maximum", "GreaterThanThreshold")
    assert alarm["Threshold"] == {"Ref": "OldestQueuedJobAlarmSeconds"}


@pytest.mark.parametrize("target", [t.value for t in Target])
def test_queued_work_with_no_agent_online_alarms_for_each_target(
    alarms: dict[str, dict[str, Any]], target: str
) -> None:
    (queued,) = _find(alarms, NAMESPACE, obs.QUEUE_DEPTH, target=target)
    (online,) = _find(alarms, NAMESPACE, obs.AGENTS_ONLINE, target=target)
    assert queued == online, "one alarm reads both, for the same target"
    (expression,) = [q for q in alarms[queued]["Metrics"] if q.get("ReturnData")]
    assert expression["Expression"] == "IF(queued > 0 AND online < 1, 1, 0)"


def test_the_functions_emit_in_the_namespace_the_alarms_read(template: dict[str, Any]) -> None:
    for logical_id, function in resources(template, "AWS::Lambda::Function").items():
        env = function["Environment"]["Variables"]
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE, logical_id


def test_the_dashboard_shows_every_metric_the_code_emits(template: dict[str, Any]) -> None:
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["DashboardBody"]["Fn::Sub"]
    # A name is quoted, or escaped-quoted inside a SEARCH expression.
    missing = [n for n in obs.METRIC_NAMES if not re.search(rf'\\?"{n}\\?"', body)]
    assert not missing, f"not on the dashboard: {missing}"


def test_logs_expire_and_the_api_stage_has_an_access_log(template: dict[str, Any]) -> None:
    log_groups = resources(template, "AWS::Logs::LogGroup")
    for function in resources(template, "AWS::Lambda::Function").values():
        (group,) = function["LoggingConfig"]["LogGroup"].values()
        assert group in log_groups
    for logical_id, group in log_groups.items():
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}, logical_id
    stages = resources(template, "AWS::ApiGatewayV2::Stage")
    api_stages = [s for s in stages.values() if s["ApiId"] == {"Ref": "QgjobApi"}]
    (stage,) = api_stages
    settings = stage["AccessLogSettings"]
    assert settings["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    assert "$context.requestId" in settings["Format"]
    assert "$context.status" in settings["Format"]


CUSTOMER_DATA = (
    "JobsTable",
    "RunsTable",
    "BatchesTable",
    "TokensTable",
    "AuditTable",
    "BuildsTable",
    "ArtifactsBucket",
    "VaultBucket",
)


@pytest.mark.parametrize("logical_id", CUSTOMER_DATA)
def test_customer_data_survives_a_stack_delete_or_replacement(
    template: dict[str, Any], logical_id: str
) -> None:
    resource = template["Resources"][logical_id]
    assert resource["DeletionPolicy"] == "Retain"
    assert resource["UpdateReplacePolicy"] == "Retain"


def test_every_table_keeps_pitr_and_expiring_ones_keep_ttl(template: dict[str, Any]) -> None:
    tables = resources(template, "AWS::DynamoDB::Table")
    for logical_id, table in tables.items():
        pitr = table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
        assert pitr is True, logical_id
    for logical_id in ("JobsTable", "RunsTable", "BatchesTable"):
        ttl = tables[logical_id]["TimeToLiveSpecification"]
        assert ttl == {"AttributeName": "expires_at", "Enabled": True}, logical_id
