"""Least privilege, checked on the template as CloudFormation receives it.

The SAM template is expanded with samtranslator (what `sam deploy` uploads), so the
check also sees what SAM adds on its own: the roles it generates, the managed policies
it attaches for tracing and event sources, the policy templates it expands. Every
statement must name the resources it needs; ``Resource: "*"`` is accepted only for
actions AWS cannot scope, each listed below with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.unit.sam_template import expanded_template, resources, source_template

# Actions that have no resource-level permissions: IAM only accepts "*" for them.
UNSCOPABLE_ACTIONS: dict[str, str] = {
    "xray:PutTraceSegments": "X-Ray has no resource-level permissions (Tracing: Active)",
    "xray:PutTelemetryRecords": "X-Ray has no resource-level permissions (Tracing: Active)",
}

# What the AWS managed policies SAM attaches on its own grant, as AWS publishes them; the
# walk below reads them like inline statements, so their "*" cannot hide behind an ARN.
MANAGED_POLICY_STATEMENTS: dict[str, list[dict[str, Any]]] = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }
    ],
    "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole": [
        {
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            "Resource": "*",
        }
    ],
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess": [
        {
            "Effect": "Allow",
            "Action": [
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
                "xray:GetSamplingRules",
                "xray:GetSamplingTargets",
                "xray:GetSamplingStatisticSummaries",
            ],
            "Resource": ["*"],
        }
    ],
}

# A literal "*" as a whole resource, or as the region, account or resource of an ARN.
_WILDCARD_RESOURCE = re.compile(r"^\*$|:\*(:|$)|^arn:[^:]*:[^:]*:\*")


@dataclass(frozen=True)
class Statement:
    role: str
    policy: str
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.role}/{self.policy}/{self.body.get('Sid', '?')}"

    @property
    def actions(self) -> list[str]:
        return _as_list(self.body.get("Action"))

    @property
    def resources(self) -> list[Any]:
        return _as_list(self.body.get("Resource"))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def expanded() -> dict[str, Any]:
    """template.yaml after the SAM transform, as `sam validate` / `sam deploy` expand it."""
    return expanded_template()


_resources = resources


def _statements(template: dict[str, Any]) -> Iterator[Statement]:
    """Every statement of every inline or standalone policy in the expanded template."""
    for role_id, role in _resources(template, "AWS::IAM::Role").items():
        for arn in role.get("ManagedPolicyArns", []):
            # The template's own managed policies are walked below; an unknown AWS one
            # fails test_no_aws_managed_policies.
            for body in MANAGED_POLICY_STATEMENTS.get(arn, []) if isinstance(arn, str) else []:
                yield Statement(role_id, str(arn).rsplit("/", 1)[-1], body)
        for policy in role.get("Policies", []):
            for body in _as_list(policy["PolicyDocument"]["Statement"]):
                yield Statement(role_id, str(policy["PolicyName"]), body)
    for policy_type in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for policy_id, policy in _resources(template, policy_type).items():
            for body in _as_list(policy["PolicyDocument"]["Statement"]):
                yield Statement(policy_id, policy_id, body)


def _is_wildcard(resource: Any) -> bool:
    """A literal wildcard, also inside a Fn::Sub string (``arn:...:${AWS::AccountId}:*``)."""
    if isinstance(resource, str):
        return bool(_WILDCARD_RESOURCE.search(resource))
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        text = resource["Fn::Sub"]
        return _is_wildcard(text if isinstance(text, str) else text[0])
    return False


def _role_statements(template: dict[str, Any], role_id: str) -> list[Statement]:
    return [s for s in _statements(template) if s.role == role_id]


def _function_role(template: dict[str, Any], function_id: str) -> str:
    role = template["Resources"][function_id]["Properties"]["Role"]
    assert isinstance(role, dict), f"{function_id} uses a role outside the template: {role}"
    assert "Fn::GetAtt" in role, role
    return str(role["Fn::GetAtt"][0])


# ------------------------------------------------------------------- the rules


def test_no_aws_managed_policies(expanded: dict[str, Any]) -> None:
    # An AWS managed policy's statements are not in the template, so they cannot be
    # reviewed here, and the ones SAM attaches (AWSLambdaBasicExecutionRole,
    # AWSLambdaSQSQueueExecutionRole, AWSXrayWriteOnlyAccess) all grant on "*". A policy
    # the template defines (a Ref to an AWS::IAM::ManagedPolicy) is walked like the rest.
    own = [{"Ref": logical_id} for logical_id in _resources(expanded, "AWS::IAM::ManagedPolicy")]
    attached = {
        role_id: [arn for arn in role.get("ManagedPolicyArns", []) if arn not in own]
        for role_id, role in _resources(expanded, "AWS::IAM::Role").items()
    }
    assert {role_id: arns for role_id, arns in attached.items() if arns} == {}


def test_no_statement_grants_on_every_resource(expanded: dict[str, Any]) -> None:
    offenders = [
        f"{s.where}: {[a for a in s.actions if a not in UNSCOPABLE_ACTIONS]} on {s.resources}"
        for s in _statements(expanded)
        if s.body.get("Effect") == "Allow"
        and any(_is_wildcard(r) for r in s.resources)
        and not set(s.actions) <= set(UNSCOPABLE_ACTIONS)
    ]
    assert offenders == []


def test_statements_name_their_actions_and_resources(expanded: dict[str, Any]) -> None:
    # NotAction/NotResource allow everything else; a wildcard action (sqs:SendMessage*)
    # grants whatever AWS adds under that prefix later.
    offenders = [
        s.where
        for s in _statements(expanded)
        if {"NotAction", "NotResource"} & set(s.body)
        or not s.resources
        or any("*" in action for action in s.actions)
    ]
    assert offenders == []


def test_every_function_runs_with_its_own_role(expanded: dict[str, Any]) -> None:
    functions = _resources(expanded, "AWS::Lambda::Function")
    roles = [_function_role(expanded, function_id) for function_id in functions]
    assert len(set(roles)) == len(functions), roles


# ----------------------------------- what the narrowed roles must still allow


def _grants(statements: list[Statement], action: str, resource: Any) -> bool:
    return any(
        s.body.get("Effect") == "Allow" and action in s.actions and resource in s.resources
        for s in statements
    )


def test_each_function_may_write_only_its_own_log_group(expanded: dict[str, Any]) -> None:
    for function_id, function in _resources(expanded, "AWS::Lambda::Function").items():
        log_group = function["LoggingConfig"]["LogGroup"]
        assert set(log_group) == {"Ref"}, f"{function_id} logs to {log_group}"
        statements = _role_statements(expanded, _function_role(expanded, function_id))
        arn = {"Fn::GetAtt": [log_group["Ref"], "Arn"]}
        for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
            assert _grants(statements, action, arn), f"{function_id}: {action} on {arn}"


def test_the_dispatcher_may_consume_the_jobs_queue(expanded: dict[str, Any]) -> None:
    # Without these, CloudFormation cannot create the SQS event-source mapping.
    statements = _role_statements(expanded, _function_role(expanded, "DispatcherFunction"))
    queue = {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
        assert _grants(statements, action, queue), action


@pytest.mark.parametrize(
    ("function_id", "queues"),
    [
        # The API also asks the results vault to archive BrowserStack sessions.
        ("ApiFunction", ["JobsQueue", "VaultQueue"]),
        ("ReaperFunction", ["JobsQueue"]),
    ],
)
def test_senders_may_send_to_their_queues_only(
    expanded: dict[str, Any], function_id: str, queues: list[str]
) -> None:
    # SendMessageBatch is authorized as sqs:SendMessage (SQS has no separate batch action).
    statements = _role_statements(expanded, _function_role(expanded, function_id))
    assert _grants(statements, "sqs:SendMessage", {"Fn::GetAtt": ["JobsQueue", "Arn"]})
    on_sqs = [s for s in statements if any(a.startswith("sqs:") for a in s.actions)]
    sqs_resources = [resource for s in on_sqs for resource in s.resources]
    assert sqs_resources == [{"Fn::GetAtt": [queue, "Arn"]} for queue in queues]


def _granted(expanded: dict[str, Any], function_id: str) -> set[tuple[str, str]]:
    """(action, resource) pairs of a function's role, logs and tracing left out."""
    return {
        (action, str(resource))
        for s in _role_statements(expanded, _function_role(expanded, function_id))
        if not s.actions[0].startswith(("logs:", "xray:"))
        for action in s.actions
        for resource in s.resources
    }


def test_the_vault_function_may_do_only_what_archiving_needs(expanded: dict[str, Any]) -> None:
    # No Delete of archives or audit records, no Query/Scan, no other queue, and only the
    # stack's own credentials path in SSM.
    queue = str({"Fn::GetAtt": ["VaultQueue", "Arn"]})
    archives = str({"Fn::Sub": "${VaultBucket.Arn}/vault/*"})
    audit = str({"Fn::GetAtt": ["AuditTable", "Arn"]})
    credentials = str(
        {
            "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:"
            "parameter/${AWS::StackName}/browserstack/*"
        }
    )
    assert _granted(expanded, "VaultFunction") == {
        ("sqs:ReceiveMessage", queue),
        ("sqs:DeleteMessage", queue),
        ("sqs:GetQueueAttributes", queue),
        ("s3:PutObject", archives),
        ("s3:GetObject", archives),
        ("dynamodb:GetItem", audit),
        ("dynamodb:PutItem", audit),
        ("ssm:GetParameter", credentials),
    }


def test_only_the_vault_may_write_the_audit_or_read_credentials(expanded: dict[str, Any]) -> None:
    for function_id in _resources(expanded, "AWS::Lambda::Function"):
        if function_id == "VaultFunction":
            continue
        granted = _granted(expanded, function_id)
        assert not {a for a, r in granted if a.startswith("ssm:")}, function_id
        assert not {a for a, r in granted if "AuditTable" in r and a != "dynamodb:Query"}, (
            function_id
        )
        assert not {a for a, r in granted if "VaultBucket" in r and a != "s3:GetObject"}, (
            function_id
        )


def test_permissions_are_granted_on_the_roles_not_the_functions() -> None:
    # Next to `Role`, SAM drops a function's `Policies`: a permission added there would
    # silently never reach AWS. Grants belong on the <Function>Role resources.
    template = source_template()
    with_policies = [
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        and "Policies" in (resource.get("Properties") or {})
    ]
    assert with_policies == []


def test_only_the_dispatcher_may_post_to_the_push_channel_and_only_to_its_api(
    expanded: dict[str, Any],
) -> None:
    # Waking agents (post_to_connection) is the dispatcher's alone, on this stack's
    # WebSocket API and stage, and only the POST of the Management API.
    connections = {
        "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
        "${PushApi}/${StageName}/POST/@connections/*"
    }
    dispatcher = _function_role(expanded, "DispatcherFunction")
    assert _grants(
        _role_statements(expanded, dispatcher), "execute-api:ManageConnections", connections
    )
    on_execute_api = sorted(
        {
            s.role
            for s in _statements(expanded)
            if any(a.startswith("execute-api:") for a in s.actions)
        }
    )
    assert on_execute_api == [dispatcher]
    resources = [
        r
        for s in _statements(expanded)
        if "execute-api:ManageConnections" in s.actions
        for r in s.resources
    ]
    assert resources == [connections]


def test_the_push_function_may_only_update_agents_and_read_their_connection_index(
    expanded: dict[str, Any],
) -> None:
    statements = _role_statements(expanded, _function_role(expanded, "PushFunction"))
    granted = {
        (action, str(resource))
        for s in statements
        if not s.actions[0].startswith(("logs:", "xray:"))
        for action in s.actions
        for resource in s.resources
    }
    assert granted == {
        ("dynamodb:UpdateItem", str({"Fn::GetAtt": ["AgentsTable", "Arn"]})),
        ("dynamodb:Query", str({"Fn::Sub": "${AgentsTable.Arn}/index/connection-index"})),
    }
