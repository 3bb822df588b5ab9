"""Reads template.yaml and turns its resources into boto3 calls for the local stack.

template.yaml is the single definition of every table, queue and bucket. The local stack
never re-declares them: it loads the template (CloudFormation short tags such as ``!Ref``
are kept as data in their long form, ``{"Ref": ...}``, ``{"Fn::GetAtt": [...]}``), resolves
the intrinsic functions against local names, and creates the same resources on moto.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "template.yaml"
LOCAL_STACK_NAME = "qgjob-local"
LOCAL_REGION = "us-east-1"
# moto's default account; queue URLs and ARNs on the local stack use it.
LOCAL_ACCOUNT_ID = "123456789012"

TABLE_TYPE = "AWS::DynamoDB::Table"
QUEUE_TYPE = "AWS::SQS::Queue"
BUCKET_TYPE = "AWS::S3::Bucket"
FUNCTION_TYPE = "AWS::Serverless::Function"
PROVISIONED_TYPES = (TABLE_TYPE, QUEUE_TYPE, BUCKET_TYPE)


class TemplateError(ValueError):
    """The template uses something the local stack cannot reproduce."""


# ------------------------------------------------------------------ loading


# libyaml's loader where PyYAML was built with it: the template is parsed by every stack
# and many test fixtures, and the pure-Python scanner takes a good part of a second.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CfnLoader(_SafeLoader):  # type: ignore[misc]
    """A safe YAML loader that reads CloudFormation short tags as their long-form data."""


def _construct_short_tag(loader: CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        # `!GetAtt Queue.Arn` is the short form of ["Queue", "Arn"].
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_short_tag)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template's data (a fresh copy: callers may change it); parsed once per version
    of the file."""
    stat = path.stat()
    return copy.deepcopy(_parsed(path.resolve(), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parsed(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=CfnLoader)  # noqa: S506 - CfnLoader is a SafeLoader
    if not isinstance(data, dict) or "Resources" not in data:
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return data


# ----------------------------------------------------------- the local stack


_NO_VALUE = object()  # what `!Ref AWS::NoValue` resolves to: the key is dropped


@dataclass(frozen=True)
class BotoCall:
    """One boto3 client call: ``clients[service].<operation>(**kwargs)``."""

    service: str
    operation: str
    kwargs: dict[str, Any]


@dataclass
class LocalTemplate:
    """template.yaml bound to a local stack name, region, account and parameter values."""

    template: Mapping[str, Any]
    stack_name: str = LOCAL_STACK_NAME
    region: str = LOCAL_REGION
    account_id: str = LOCAL_ACCOUNT_ID
    parameter_overrides: Mapping[str, str | int | float] = field(default_factory=dict)
    # Ref values only known once created (queue URLs); filled in by `provision`.
    created_refs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.parameter_overrides) - set(self.template.get("Parameters", {}))
        if unknown:
            raise TemplateError(f"unknown template parameter(s): {', '.join(sorted(unknown))}")

    @classmethod
    def from_file(cls, path: Path = TEMPLATE_PATH, **kwargs: Any) -> LocalTemplate:
        return cls(load_template(path), **kwargs)

    # ---- parameters and resources

    @property
    def parameters(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, spec in self.template.get("Parameters", {}).items():
            if name in self.parameter_overrides:
                values[name] = _cfn_string(self.parameter_overrides[name])
            elif "Default" in spec:
                values[name] = _cfn_string(spec["Default"])
        return values

    @property
    def resources(self) -> Mapping[str, Mapping[str, Any]]:
        resources: Mapping[str, Mapping[str, Any]] = self.template["Resources"]
        return resources

    def logical_ids(self, resource_type: str) -> list[str]:
        return [lid for lid, res in self.resources.items() if res.get("Type") == resource_type]

    def properties(self, logical_id: str) -> dict[str, Any]:
        props: dict[str, Any] = dict(self.resources[logical_id].get("Properties") or {})
        return props

    # ---- local physical names

    def physical_name(self, logical_id: str) -> str:
        """The name the resource gets locally (tables: ``qgjob-local-JobsTable``)."""
        resource_type = self.resources[logical_id].get("Type")
        props = self.properties(logical_id)
        if resource_type == TABLE_TYPE:
            if "TableName" in props:
                return str(self.resolve(props["TableName"]))
            return f"{self.stack_name}-{logical_id}"
        if resource_type == QUEUE_TYPE:
            if "QueueName" in props:
                return str(self.resolve(props["QueueName"]))
            suffix = ".fifo" if _truthy(props.get("FifoQueue")) else ""
            return f"{self.stack_name}-{logical_id}{suffix}"
        if resource_type == BUCKET_TYPE:
            if "BucketName" in props:
                return str(self.resolve(props["BucketName"]))
            # S3 bucket names are lower case and globally unique; locally the stack name suffices.
            return f"{self.stack_name}-{logical_id}".lower()
        return f"{self.stack_name}-{logical_id}"

    def ref(self, name: str) -> Any:
        pseudo = self._pseudo_parameters()
        if name in pseudo:
            return pseudo[name]
        if name == "AWS::NoValue":
            return _NO_VALUE
        parameters = self.parameters
        if name in parameters:
            return parameters[name]
        if name in self.created_refs:
            return self.created_refs[name]
        if name not in self.resources:
            raise TemplateError(f"!Ref {name}: no such parameter or resource")
        if self.resources[name].get("Type") == QUEUE_TYPE:
            raise TemplateError(f"!Ref {name}: the queue URL is known only after it is created")
        return self.physical_name(name)

    def get_att(self, logical_id: str, attribute: str) -> str:
        if logical_id not in self.resources:
            raise TemplateError(f"!GetAtt {logical_id}.{attribute}: no such resource")
        resource_type = self.resources[logical_id].get("Type")
        name = self.physical_name(logical_id)
        arn_prefix = f"arn:aws:{{}}:{self.region}:{self.account_id}"
        attributes: dict[tuple[str, str], str] = {
            (QUEUE_TYPE, "Arn"): f"{arn_prefix.format('sqs')}:{name}",
            (QUEUE_TYPE, "QueueName"): name,
            (TABLE_TYPE, "Arn"): f"{arn_prefix.format('dynamodb')}:table/{name}",
            (BUCKET_TYPE, "Arn"): f"arn:aws:s3:::{name}",
            (BUCKET_TYPE, "DomainName"): f"{name}.s3.amazonaws.com",
        }
        if (resource_type, attribute) == (QUEUE_TYPE, "QueueUrl"):
            return str(self.ref(logical_id))
        try:
            return attributes[(str(resource_type), attribute)]
        except KeyError:
            raise TemplateError(
                f"!GetAtt {logical_id}.{attribute} is not supported locally"
            ) from None

    def _pseudo_parameters(self) -> dict[str, str]:
        return {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }

    # ---- intrinsic functions

    def resolve(self, value: Any) -> Any:
        """Resolves Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Select, Fn::If in a value."""
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            function = self._intrinsics().get(key)
            if function is not None:
                return function(arg)
            if key.startswith("Fn::"):
                raise TemplateError(f"{key} is not supported by the local stack")
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def _intrinsics(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "Ref": lambda arg: self.ref(arg),
            "Fn::GetAtt": self._fn_get_att,
            "Fn::Sub": self._fn_sub,
            "Fn::Join": lambda arg: str(arg[0]).join(_cfn_string(v) for v in self.resolve(arg[1])),
            "Fn::Select": lambda arg: self.resolve(arg[1])[int(self.resolve(arg[0]))],
            "Fn::If": self._fn_if,
            "Condition": lambda arg: self.condition(arg),
        }

    def _fn_get_att(self, arg: Any) -> str:
        logical_id, attribute = self.resolve(arg)
        return self.get_att(logical_id, attribute)

    def _fn_sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # ${!Literal} stays literally ${Literal}
                return "${" + name[1:] + "}"
            if name in variables:
                return _cfn_string(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return self.get_att(*name.split(".", 1))
            return _cfn_string(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def _fn_if(self, arg: Any) -> Any:
        name, if_true, if_false = arg
        return self.resolve(if_true if self.condition(name) else if_false)

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions", {})
        if name not in conditions:
            raise TemplateError(f"condition {name} is not defined")
        return self._evaluate(conditions[name])

    def _evaluate(self, expression: Any) -> bool:
        ((key, arg),) = expression.items()
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::Equals":
            left, right = (_cfn_string(self.resolve(v)) for v in arg)
            return left == right
        if key == "Fn::Not":
            return not self._evaluate(arg[0])
        if key == "Fn::And":
            return all(self._evaluate(v) for v in arg)
        if key == "Fn::Or":
            return any(self._evaluate(v) for v in arg)
        raise TemplateError(f"condition function {key} is not supported")

    # ---- functions

    def function_environment(self, logical_id: str | None = None) -> dict[str, str]:
        """Globals.Function.Environment.Variables (+ the function's own), resolved to strings."""
        variables: dict[str, Any] = dict(
            self.template.get("Globals", {})
            .get("Function", {})
            .get("Environment", {})
            .get("Variables", {})
        )
        if logical_id is not None:
            own = self.properties(logical_id).get("Environment", {}).get("Variables", {})
            variables.update(own)
        return {name: _cfn_string(self.resolve(value)) for name, value in variables.items()}

    def function_handler(self, logical_id: str) -> str:
        """The dotted ``module.function`` Handler of a serverless function."""
        handler = self.properties(logical_id).get("Handler")
        if not handler:
            raise TemplateError(f"{logical_id} has no Handler")
        return str(handler)

    def function_events(self, logical_id: str, event_type: str) -> list[dict[str, Any]]:
        """The Properties of a function's events of one type (``SQS``, ``Schedule``...)."""
        events = self.properties(logical_id).get("Events", {})
        return [
            dict(event.get("Properties") or {})
            for event in events.values()
            if event.get("Type") == event_type
        ]

    # ---- creation order

    def creation_order(self) -> list[str]:
        """Resources the local stack creates, each after the resources it references."""
        wanted = [
            lid for lid, res in self.resources.items() if res.get("Type") in PROVISIONED_TYPES
        ]
        ordered: list[str] = []

        def visit(logical_id: str, path: tuple[str, ...]) -> None:
            if logical_id in ordered:
                return
            if logical_id in path:
                raise TemplateError(f"circular reference: {' -> '.join((*path, logical_id))}")
            for dependency in sorted(_references(self.properties(logical_id))):
                if dependency in wanted:
                    visit(dependency, (*path, logical_id))
            ordered.append(logical_id)

        for logical_id in wanted:
            visit(logical_id, ())
        return ordered


def _references(value: Any) -> Iterator[str]:
    """Logical ids a value references through Ref, Fn::GetAtt or Fn::Sub."""
    if isinstance(value, list):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                yield arg
            elif key == "Fn::GetAtt":
                yield arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0]
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                for name in re.findall(r"\$\{([^!}][^}]*)\}", text):
                    yield name.split(".", 1)[0]
                if isinstance(arg, list):
                    yield from _references(arg[1])
            else:
                yield from _references(arg)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _cfn_string(value: Any) -> str:
    """CloudFormation passes every scalar to a resource or env var as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------- boto3 create calls


def table_calls(stack: LocalTemplate, logical_id: str) -> list[BotoCall]:
    """create_table with the Properties verbatim, then the settings create_table cannot take."""
    props = stack.resolve(stack.properties(logical_id))
    name = stack.physical_name(logical_id)
    kwargs: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes", "ProvisionedThroughput"):
        if key in props:
            kwargs[key] = props[key]
    if "SSESpecification" in props:
        sse = props["SSESpecification"]
        kwargs["SSESpecification"] = {"Enabled": _truthy(sse.get("SSEEnabled"))} | {
            k: sse[k] for k in ("SSEType", "KMSMasterKeyId") if k in sse
        }
    if "StreamSpecification" in props:
        view = props["StreamSpecification"]["StreamViewType"]
        kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view}
    calls = [BotoCall("dynamodb", "create_table", kwargs)]
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr and _truthy(pitr.get("PointInTimeRecoveryEnabled")):
        calls.append(
            BotoCall(
                "dynamodb",
                "update_continuous_backups",
                {
                    "TableName": name,
                    "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                },
            )
        )
    ttl = props.get("TimeToLiveSpecification")
    if ttl and _truthy(ttl.get("Enabled")):
        spec = {"Enabled": True, "AttributeName": ttl["AttributeName"]}
        calls.append(
            BotoCall(
                "dynamodb",
                "update_time_to_live",
                {"TableName": name, "TimeToLiveSpecification": spec},
            )
        )
    return calls


# CloudFormation property -> SQS queue attribute (the names match, the values become strings).
_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


def queue_calls(stack: LocalTemplate, logical_id: str) -> list[BotoCall]:
    props = stack.resolve(stack.properties(logical_id))
    attributes = {key: _cfn_string(props[key]) for key in _QUEUE_ATTRIBUTES if key in props}
    for key in ("RedrivePolicy", "RedriveAllowPolicy"):
        if key in props:
            # The dead-letter ARN was resolved above to the local DLQ's ARN.
            policy = props[key]
            attributes[key] = policy if isinstance(policy, str) else json.dumps(policy)
    kwargs = {"QueueName": stack.physical_name(logical_id), "Attributes": attributes}
    return [BotoCall("sqs", "create_queue", kwargs)]


def bucket_calls(stack: LocalTemplate, logical_id: str) -> list[BotoCall]:
    props = stack.resolve(stack.properties(logical_id))
    name = stack.physical_name(logical_id)
    create: dict[str, Any] = {"Bucket": name}
    if stack.region != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": stack.region}
    calls = [BotoCall("s3", "create_bucket", create)]
    if "VersioningConfiguration" in props:
        versioning = {"Status": props["VersioningConfiguration"]["Status"]}
        calls.append(
            BotoCall(
                "s3",
                "put_bucket_versioning",
                {"Bucket": name, "VersioningConfiguration": versioning},
            )
        )
    encryption = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration")
    if encryption:
        rules = [
            {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
            | (
                {"BucketKeyEnabled": _truthy(rule["BucketKeyEnabled"])}
                if "BucketKeyEnabled" in rule
                else {}
            )
            for rule in encryption
        ]
        calls.append(
            BotoCall(
                "s3",
                "put_bucket_encryption",
                {"Bucket": name, "ServerSideEncryptionConfiguration": {"Rules": rules}},
            )
        )
    if "PublicAccessBlockConfiguration" in props:
        block = {k: _truthy(v) for k, v in props["PublicAccessBlockConfiguration"].items()}
        calls.append(
            BotoCall(
                "s3",
                "put_public_access_block",
                {"Bucket": name, "PublicAccessBlockConfiguration": block},
            )
        )
    rules = props.get("LifecycleConfiguration", {}).get("Rules")
    if rules:
        calls.append(
            BotoCall(
                "s3",
                "put_bucket_lifecycle_configuration",
                {
                    "Bucket": name,
                    "LifecycleConfiguration": {"Rules": [_lifecycle_rule(r) for r in rules]},
                },
            )
        )
    return calls


def _lifecycle_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's flat lifecycle rule -> the S3 API's nested one (the common fields)."""
    api_rule: dict[str, Any] = {
        "Status": rule["Status"],
        "Filter": {"Prefix": rule.get("Prefix", "")},
    }
    if "Id" in rule:
        api_rule["ID"] = rule["Id"]
    if "ExpirationInDays" in rule:
        api_rule["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    noncurrent = rule.get("NoncurrentVersionExpiration")
    if noncurrent:
        api_rule["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(noncurrent["NoncurrentDays"])
        }
    elif "NoncurrentVersionExpirationInDays" in rule:
        days = int(rule["NoncurrentVersionExpirationInDays"])
        api_rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": days}
    return api_rule


_CALL_BUILDERS: dict[str, Callable[[LocalTemplate, str], list[BotoCall]]] = {
    TABLE_TYPE: table_calls,
    QUEUE_TYPE: queue_calls,
    BUCKET_TYPE: bucket_calls,
}


def provision(stack: LocalTemplate, clients: Mapping[str, Any]) -> dict[str, str]:
    """Creates every table, queue and bucket of the template; returns logical id -> Ref value.

    ``clients`` maps "dynamodb", "sqs" and "s3" to boto3 clients (pointed at moto).
    Queue URLs are recorded on ``stack`` so later references (``!Ref JobsQueue``) resolve.
    """
    refs: dict[str, str] = {}
    for logical_id in stack.creation_order():
        resource_type = str(stack.resources[logical_id]["Type"])
        for call in _CALL_BUILDERS[resource_type](stack, logical_id):
            response = getattr(clients[call.service], call.operation)(**call.kwargs)
            if call.operation == "create_queue":
                stack.created_refs[logical_id] = response["QueueUrl"]
        refs[logical_id] = str(stack.ref(logical_id))
    return refs
