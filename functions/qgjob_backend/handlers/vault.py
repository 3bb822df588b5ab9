"""Vault Lambda: archives BrowserStack session records from the vault queue.

Each SQS record is one ``VaultMessage``; the records of a batch are handled one by one
and only the failed ones are reported (ReportBatchItemFailures), so SQS delivers just
those again and, after the queue's maxReceiveCount, moves them to the dead-letter queue.
A malformed message can never succeed: it is logged, counted and dropped.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from qgjob_backend.domain.vault import VaultMessage
from qgjob_backend.observability import DEFAULT_NAMESPACE, NAMESPACE_ENV
from qgjob_backend.wiring import LazyVaultService

logger = Logger()
# The stack's namespace (POWERTOOLS_METRICS_NAMESPACE, from template.yaml), like every function.
metrics = Metrics(namespace=os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE)
vault = LazyVaultService(count=lambda name: metrics.add_metric(name, MetricUnit.Count, 1))


def _record(record: SQSRecord) -> None:
    try:
        message = VaultMessage.model_validate_json(record.body)
    except ValidationError:
        metrics.add_metric("VaultMalformedMessages", MetricUnit.Count, 1)
        logger.error("malformed vault message dropped", extra={"message_id": record.message_id})
        return
    vault().archive(message)  # raises to fail this record only


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Failures are always reported per record, even when every record failed (Powertools
    # would raise instead): the answer is the same to SQS, and the log stays one line each.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    response: dict[str, Any] = dict(
        process_partial_response(
            event=event, record_handler=_record, processor=processor, context=context
        )
    )
    return response
