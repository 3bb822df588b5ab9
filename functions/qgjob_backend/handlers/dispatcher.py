"""Dispatcher Lambda: admits jobs from jobs.fifo and plans, one plan at a time.

A plan runs only in an invocation that holds plan-request messages (their own message
group in jobs.fifo, see ``SqsJobQueue.request_plan``), so plans never race; admitting
jobs, an agent becoming idle, the reaper and the schedule all send a request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from qgjob_backend.adapters.sqs import is_plan_request
from qgjob_backend.domain.models import Batch
from qgjob_backend.observability import (
    BATCHES_ASSIGNED,
    INSTALLS_SAVED,
    MILLISECONDS,
    PLAN_DURATION,
    PLAN_FAILURES,
    EmfMetrics,
    correlate,
    correlated,
    joined,
    observed,
    valid_correlation_id,
)
from qgjob_backend.wiring import LazyServices

logger = Logger()
metrics = EmfMetrics()
services = LazyServices(metrics)


def _message(body: str) -> dict[str, Any] | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _job_id(message: dict[str, Any] | None) -> str | None:
    job_id = message.get("job_id") if message else None
    return job_id if isinstance(job_id, str) and job_id else None


class _Records:
    """Admits the job records of a batch and notes its plan requests.

    The jobs of all records and their tests' estimates are read up front in batch reads;
    each record is then admitted on its own (one conditional write), so a failure fails
    only its record and the records after it in the same group.
    """

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.admitted = 0
        self.plan_requests: list[str] = []  # message ids
        self.requested_by: list[str | None] = []  # the plan requests' correlation ids
        messages = [_message(str(r.get("body", ""))) for r in records]
        job_ids = [j for j in (_job_id(m) for m in messages) if j]
        self.reads = services().dispatcher.prefetch(job_ids) if job_ids else None

    def __call__(self, record: SQSRecord) -> None:
        message = _message(record.body)
        if is_plan_request(message):
            assert message is not None
            self.plan_requests.append(record.message_id)
            self.requested_by.append(valid_correlation_id(message.get("correlation_id")))
            return
        job_id = _job_id(message)
        if job_id is None:
            # A malformed message can never succeed; dropping it beats blocking its group.
            logger.error("malformed message dropped", extra={"message_id": record.message_id})
            return
        assert message is not None
        # A job's message carries its run id, the job's correlation id.
        with correlated(valid_correlation_id(message.get("run_id"))):
            if services().dispatcher.admit(job_id, self.reads) is not None:
                self.admitted += 1


def _plan(records: _Records, response: dict[str, Any]) -> int:
    """Plans once for every plan request of the batch: this invocation holds the plan
    group's messages, so no other plan runs now. A failed plan fails those records, so
    SQS delivers them again."""
    # The requests' correlation ids (the submits, agents and sweeps that asked).
    correlate(joined(records.requested_by))
    started = time.monotonic()
    try:
        batches = services().dispatcher.plan()
    except Exception:
        metrics.count(PLAN_FAILURES)
        logger.exception("plan failed; its requests will be delivered again")
        response["batchItemFailures"].extend(
            {"itemIdentifier": message_id} for message_id in records.plan_requests
        )
        return 0
    metrics.observe(PLAN_DURATION, (time.monotonic() - started) * 1000, MILLISECONDS)
    _count_batches(batches)
    return len(batches)


def _count_batches(batches: Sequence[Batch]) -> None:
    for batch in batches:
        target = batch.target.value
        metrics.count(BATCHES_ASSIGNED, target=target)
        if not batch.install_required:
            metrics.count(INSTALLS_SAVED, target=target)


@logger.inject_lambda_context
@observed(metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "Records" not in event:
        # The schedule: plan through the plan group like every other request.
        services().request_plan()
        return {"plan_requested": True}
    records = _Records(event["Records"])
    # After a failure the rest of that record's group (MessageGroupId) is reported as
    # failed too, so FIFO order holds on retry; other groups in the batch go on.
    processor = SqsFifoPartialProcessor(skip_group_on_error=True)
    response = dict(
        process_partial_response(
            event=event, record_handler=records, processor=processor, context=context
        )
    )
    planned = 0
    if records.plan_requests:
        planned = _plan(records, response)
    elif records.admitted:
        services().request_plan()
    logger.info(
        "dispatched",
        extra={
            "records": len(event["Records"]),
            "admitted": records.admitted,
            "plan_requests": len(records.plan_requests),
            "batches_assigned": planned,
        },
    )
    return response
