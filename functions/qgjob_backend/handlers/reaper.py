"""Reaper Lambda (schedule): lapsed leases, silent agents, lost queue messages."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from qgjob_backend.observability import (
    AGENTS_MARKED_OFFLINE,
    JOBS_REQUEUED,
    JOBS_RESENT,
    JOBS_TIMED_OUT,
    LEASE_EXPIRIES,
    EmfMetrics,
    observed,
)
from qgjob_backend.wiring import LazyServices

logger = Logger()
metrics = EmfMetrics()
services = LazyServices(metrics)


@logger.inject_lambda_context
@observed(metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = services().reaper.sweep()
    # Zeros too: a sweep every minute keeps these series continuous for their alarms.
    metrics.count(LEASE_EXPIRIES, report.expired_batches)
    metrics.count(JOBS_REQUEUED, report.requeued_jobs)
    metrics.count(JOBS_TIMED_OUT, report.timed_out_jobs)
    metrics.count(AGENTS_MARKED_OFFLINE, report.offline_agents)
    metrics.count(JOBS_RESENT, report.resent_jobs)
    return dict(report.__dict__)
