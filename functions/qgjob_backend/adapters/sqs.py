"""SQS FIFO implementation of the JobQueue port."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from qgjob_backend.domain.models import Job
from qgjob_backend.domain.vault import VaultMessage
from qgjob_backend.observability import current_correlation_id

SQS_BATCH_LIMIT = 10
# The message group of plan requests: one group, so plans run one at a time.
PLAN_GROUP = "plan"


def job_message(job: Job) -> dict[str, str]:
    """One message per job: the group is the job's group key, deduplicated by job id."""
    return {
        "Id": job.job_id,
        "MessageBody": json.dumps(
            {"job_id": job.job_id, "group_key": job.group_key, "run_id": job.run_id}
        ),
        "MessageGroupId": job.group_key,
        "MessageDeduplicationId": job.job_id,
    }


class SqsJobQueue:
    def __init__(self, client: Any, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send(self, jobs: Sequence[Job]) -> list[str]:
        failed: list[str] = []
        for start in range(0, len(jobs), SQS_BATCH_LIMIT):
            entries = [job_message(job) for job in jobs[start : start + SQS_BATCH_LIMIT]]
            response = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)
            failed.extend(entry["Id"] for entry in response.get("Failed", []))
        return failed

    def depth(self) -> int:
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self._url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())

    def request_plan(self) -> None:
        # A unique deduplication id: FIFO would drop a second request with the same id for
        # five minutes, even one sent after the first was planned. Requests that queue up
        # together are merged by the dispatcher instead.
        # The correlation id of the request that asks (a submit's run, an agent's jobs):
        # the dispatcher's lines about the plan carry it.
        body: dict[str, object] = {"plan": True}
        correlation_id = current_correlation_id()
        if correlation_id:
            body["correlation_id"] = correlation_id
        self._sqs.send_message(
            QueueUrl=self._url,
            MessageBody=json.dumps(body),
            MessageGroupId=PLAN_GROUP,
            MessageDeduplicationId=f"plan-{uuid.uuid4().hex}",
        )


def is_plan_request(body: object) -> bool:
    return isinstance(body, dict) and body.get("plan") is True


class SqsVaultQueue:
    """The VaultQueue port: a standard queue (the vault is idempotent per job attempt)."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send(self, message: VaultMessage) -> None:
        self._sqs.send_message(QueueUrl=self._url, MessageBody=message.to_json())
