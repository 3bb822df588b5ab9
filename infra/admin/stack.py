"""Finds a qgjob stack's tables and queues: a deployed stack or the local one.

Resource names are never configured twice: a deployed stack's come from CloudFormation
(its resources by logical id), the local stack's from template.yaml (as ``make dev``
creates them on moto, whose endpoint it writes to ``.qgjob-local/stack.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infra.template import QUEUE_TYPE, LocalTemplate

DEFAULT_STACK_NAME = "qgjob"
DEFAULT_STATE_DIR = Path(".qgjob-local")
# Written by `make dev` (infra.local_stack) once the stack is up: its endpoints and tokens.
LOCAL_STACK_FILE = "stack.json"
TOKENS_OUTPUT = "TokensTableName"

# The logical ids of template.yaml the admin commands use.
TOKENS_TABLE = "TokensTable"
STATE_TABLES = {
    "jobs_table": "JobsTable",
    "runs_table": "RunsTable",
    "agents_table": "AgentsTable",
    "batches_table": "BatchesTable",
}
JOBS_QUEUE = "JobsQueue"
VAULT_QUEUE = "VaultQueue"


class AdminError(RuntimeError):
    """A problem the operator can fix (bad input, unknown stack or id); exit code 2."""


@dataclass(frozen=True)
class StackResources:
    """A stack's physical names by logical id (tables: names; queues: URLs), and how to
    reach its AWS APIs."""

    stack_name: str
    physical: Mapping[str, str]
    session: Any  # a boto3 Session
    endpoint_url: str | None = None  # the local stack's moto; None: AWS itself

    def name(self, logical_id: str) -> str:
        try:
            return self.physical[logical_id]
        except KeyError:
            raise AdminError(
                f"stack {self.stack_name!r} has no {logical_id}; is it a qgjob stack "
                "deployed from this template.yaml?"
            ) from None

    def client(self, service: str) -> Any:
        if self.endpoint_url:
            return self.session.client(service, endpoint_url=self.endpoint_url)
        return self.session.client(service)

    def dead_letter_queue(self, source_logical_id: str) -> str:
        """The logical id of the queue ``source_logical_id`` dead-letters into."""
        template = LocalTemplate.from_file()
        redrive = template.properties(source_logical_id).get("RedrivePolicy") or {}
        target = redrive.get("deadLetterTargetArn", {}).get("Fn::GetAtt", [None])[0]
        if not target:
            raise AdminError(f"{source_logical_id} has no dead-letter queue in template.yaml")
        return str(target)


def from_cloudformation(stack_name: str, session: Any) -> StackResources:
    """A deployed stack: every resource's physical id, from CloudFormation (paginated)."""
    cloudformation = session.client("cloudformation")
    physical: dict[str, str] = {}
    try:
        for page in cloudformation.get_paginator("list_stack_resources").paginate(
            StackName=stack_name
        ):
            for resource in page.get("StackResourceSummaries", []):
                if resource.get("PhysicalResourceId"):
                    physical[resource["LogicalResourceId"]] = resource["PhysicalResourceId"]
    except (BotoCoreError, ClientError) as exc:
        raise AdminError(f"--stack-name: cannot read stack {stack_name!r}: {exc}") from exc
    return StackResources(stack_name, physical, session)


def from_template(
    template: LocalTemplate, session: Any, endpoint_url: str | None
) -> StackResources:
    """A stack created from template.yaml by ``infra.template.provision`` (the local stack,
    the tests): names as the template resolves them, queue URLs asked of SQS."""
    physical: dict[str, str] = {}
    queues = set(template.logical_ids(QUEUE_TYPE))
    sqs = session.client("sqs", endpoint_url=endpoint_url) if endpoint_url else None
    for logical_id, resource in template.resources.items():
        if str(resource.get("Type", "")).startswith("AWS::Serverless::"):
            continue
        if logical_id in queues:
            client = sqs or session.client("sqs")
            try:
                url = client.get_queue_url(QueueName=template.physical_name(logical_id))
            except ClientError:
                continue  # not created (a condition left it out)
            physical[logical_id] = url["QueueUrl"]
        else:
            physical[logical_id] = template.physical_name(logical_id)
    return StackResources(template.stack_name, physical, session, endpoint_url)


def from_local(state_dir: Path = DEFAULT_STATE_DIR) -> StackResources:
    """The stack ``make dev`` runs, found through the file it writes in its state dir."""
    path = state_dir / LOCAL_STACK_FILE
    try:
        info = json.loads(path.read_text())
        endpoint = str(info["moto_endpoint"])
    except (OSError, ValueError, KeyError) as exc:
        raise AdminError(
            f"--local: no running local stack found ({path}: {exc}); start one with "
            "`make dev`, or pass --state-dir where it runs"
        ) from exc
    template = LocalTemplate.from_file()
    # moto accepts any credentials; these keep the operator's real ones out of it.
    session = boto3.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's placeholder, not a secret
        region_name=template.region,
    )
    return from_template(template, session, endpoint)


def tokens_table_from_stack(stack_name: str, cloudformation: Any) -> str:
    """The tokens table from the stack's TokensTableName output (``create-token``)."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except (BotoCoreError, ClientError) as exc:
        raise AdminError(f"cannot read stack {stack_name!r}: {exc}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if TOKENS_OUTPUT not in outputs:
        raise AdminError(
            f"stack {stack_name!r} has no {TOKENS_OUTPUT} output; is it a qgjob stack?"
        )
    return str(outputs[TOKENS_OUTPUT])
