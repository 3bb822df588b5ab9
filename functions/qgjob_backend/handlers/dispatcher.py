"""Dispatcher Lambda: SQS (jobs.fifo) batches and scheduled planning."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from qgjob_backend.schema import Target
from qgjob_backend.wiring import LazyServices

logger = Logger()
services = LazyServices()


def _job_id(body: str) -> str | None:
    try:
        return str(json.loads(body)["job_id"])
    except (ValueError, KeyError, TypeError):
        return None


class _Admissions:
    """Collects the targets that received jobs, so planning runs once per invocation.

    The jobs of all records and their tests' estimates are read up front in batch reads;
    each record is then admitted on its own (one conditional write), so a failure fails
    only its record and the records after it in the same group.
    """

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.targets: set[Target] = set()
        job_ids = [j for j in (_job_id(str(r.get("body", ""))) for r in records) if j]
        self.reads = services().dispatcher.prefetch(job_ids) if job_ids else None

    def __call__(self, record: SQSRecord) -> None:
        job_id = _job_id(record.body)
        if job_id is None:
            # A malformed message can never succeed; dropping it beats blocking its group.
            logger.error("malformed message dropped", extra={"message_id": record.message_id})
            return
        job = services().dispatcher.admit(job_id, self.reads)
        if job is not None:
            self.targets.add(job.target)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "Records" in event:
        admissions = _Admissions(event["Records"])
        # After a failure the rest of that record's group (MessageGroupId) is reported as
        # failed too, so FIFO order holds on retry; other groups in the batch go on.
        processor = SqsFifoPartialProcessor(skip_group_on_error=True)
        response = process_partial_response(
            event=event, record_handler=admissions, processor=processor, context=context
        )
        planned = services().dispatcher.plan(admissions.targets) if admissions.targets else []
        logger.info(
            "admitted", extra={"records": len(event["Records"]), "batches_assigned": len(planned)}
        )
        return dict(response)
    planned = services().dispatcher.plan()
    return {"batches_assigned": len(planned)}
