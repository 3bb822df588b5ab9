"""Reaper Lambda (schedule): lapsed leases, silent agents, lost queue messages."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from qgjob_backend.wiring import LazyServices

logger = Logger()
services = LazyServices()


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = services().reaper.sweep()
    return dict(report.__dict__)
