"""The dispatcher's partial batch failures on jobs.fifo: a failure holds back only its group.

SQS FIFO delivers one batch with messages of several groups (MessageGroupId = org / app
version / target). When admitting a record fails, the records after it in the same group
must be retried too (else FIFO order breaks), but other groups must not wait for it.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from infra.events import LambdaContext, build_sqs_event
from qgjob_backend.adapters.dynamodb import DynamoStateStore
from qgjob_backend.config import Config
from qgjob_backend.domain.models import Job
from qgjob_backend.handlers import dispatcher
from qgjob_backend.services.dispatch import AdmissionReads
from qgjob_backend.wiring import Services
from tests.integration.conftest import ACCOUNT, REGION, ApiCaller, legacy_run, receive_all


def _admitted(session: boto3.Session, config: Config, job_ids: list[str]) -> list[bool]:
    store = DynamoStateStore(
        session.client("dynamodb"),
        jobs_table=config.jobs_table,
        runs_table=config.runs_table,
        agents_table=config.agents_table,
        batches_table=config.batches_table,
    )
    jobs = {j.job_id: j for j in store.get_jobs(job_ids)}
    return [jobs[j].admitted for j in job_ids]


def _job_id(message: dict[str, Any]) -> str:
    return str(json.loads(message["Body"])["job_id"])


def test_a_failed_record_holds_back_only_the_rest_of_its_own_group(
    client: ApiCaller,
    services: Services,
    aws_session: boto3.Session,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group_a = legacy_run(aws_session, config, "va")
    group_b = legacy_run(aws_session, config, "vb")
    messages = {_job_id(m): m for m in receive_all(aws_session, config.jobs_queue_url)}
    assert set(messages) == {*group_a, *group_b}
    # One batch as the event source delivers it: the groups interleaved, each in order.
    ordered = [messages[j] for j in (group_a[0], group_b[0], group_a[1], group_b[1])]
    assert [m["Attributes"]["MessageGroupId"] for m in ordered] == [
        "acme/va/emulator",
        "acme/vb/emulator",
    ] * 2
    arn = aws_session.client("sqs").get_queue_attributes(
        QueueUrl=config.jobs_queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    event = build_sqs_event(ordered, queue_arn=arn, region=REGION)
    assert all("MessageGroupId" in record["attributes"] for record in event["Records"])
    context = LambdaContext("DispatcherFunction", REGION, ACCOUNT)

    real_admit = services.dispatcher.admit
    attempted: list[str] = []

    def admit_failing_a0(job_id: str, reads: AdmissionReads | None = None) -> Job | None:
        attempted.append(job_id)
        if job_id == group_a[0]:
            raise ConnectionError("DynamoDB throttled")
        return real_admit(job_id, reads)

    monkeypatch.setattr(services.dispatcher, "admit", admit_failing_a0)

    response = dispatcher.lambda_handler(event, context)

    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    by_message = {m["MessageId"]: _job_id(m) for m in ordered}
    assert {by_message[m] for m in failed} == set(group_a), "all of A, and only A, is retried"
    assert attempted == [group_a[0], group_b[0], group_b[1]], "A's later record is not tried"
    assert _admitted(aws_session, config, group_b) == [True, True]
    assert _admitted(aws_session, config, group_a) == [False, False]

    # SQS redelivers A's two records, in order; with the fault gone both are admitted.
    monkeypatch.setattr(services.dispatcher, "admit", real_admit)
    retry = build_sqs_event(
        [m for m in ordered if m["MessageId"] in failed], queue_arn=arn, region=REGION
    )
    assert dispatcher.lambda_handler(retry, context) == {"batchItemFailures": []}
    assert _admitted(aws_session, config, group_a) == [True, True]
