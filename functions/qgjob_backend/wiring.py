"""Builds the services from configuration: the only place that creates AWS clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from qgjob_backend.adapters.dynamodb import (
    DynamoEstimateStore,
    DynamoStateStore,
    DynamoTokenStore,
)
from qgjob_backend.adapters.push import ApiGatewayNotifier
from qgjob_backend.adapters.s3 import S3ArtifactStore
from qgjob_backend.adapters.sqs import SqsJobQueue
from qgjob_backend.config import Config
from qgjob_backend.domain.planner import PlanningPolicy
from qgjob_backend.ports import (
    AgentNotifier,
    ArtifactStore,
    EstimateStore,
    JobQueue,
    StateStore,
    TokenStore,
)
from qgjob_backend.services.agents import AgentService
from qgjob_backend.services.auth import TokenService
from qgjob_backend.services.dispatch import DispatchService, DispatchSettings
from qgjob_backend.services.estimates import EstimateService
from qgjob_backend.services.push import PushService
from qgjob_backend.services.reaper import ReaperService, ReaperSettings
from qgjob_backend.services.submission import SubmissionService

_BOTO_CONFIG = BotoConfig(
    retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=3, read_timeout=10
)


# A push is a wake-up with a safety poll behind it: fail fast rather than hold up a plan.
_PUSH_BOTO_CONFIG = BotoConfig(
    retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=3
)


def new_id() -> str:
    return uuid.uuid4().hex[:20]


@dataclass(frozen=True)
class Services:
    config: Config
    tokens: TokenService
    submissions: SubmissionService
    dispatcher: DispatchService
    agents: AgentService
    reaper: ReaperService
    # The push channel: $connect/$disconnect, and waking agents of committed batches.
    push: PushService
    # Asks the dispatcher to plan (a message in the one plan group of jobs.fifo).
    request_plan: Callable[[], None]


def _client(name: str, session: Any | None) -> Any:
    return (session or boto3).client(name, config=_BOTO_CONFIG)


def build_token_service(config: Config, session: Any | None = None) -> TokenService:
    return TokenService(
        DynamoTokenStore(_client("dynamodb", session), config.tokens_table), time.time
    )


def assemble_services(
    config: Config,
    *,
    store: StateStore,
    queue: JobQueue,
    artifacts: ArtifactStore,
    token_store: TokenStore,
    estimate_store: EstimateStore,
    clock: Callable[[], float],
    new_id: Callable[[], str] = new_id,
    notifier: AgentNotifier | None = None,
) -> Services:
    """Wires the services over any implementation of the ports (boto3 adapters or fakes)."""
    estimates = EstimateService(estimate_store, config.default_install_seconds)
    push = PushService(store, notifier, clock)
    dispatcher = DispatchService(
        store,
        clock,
        new_id,
        DispatchSettings(
            lease_seconds=config.lease_seconds,
            agent_offline_seconds=config.agent_offline_seconds,
            policy=PlanningPolicy(
                max_batch_jobs=config.batch_max_jobs,
                aging_seconds=config.aging_seconds,
                max_batch_seconds=config.max_batch_seconds,
                unknown_estimate_s=config.unknown_estimate_seconds,
            ),
            backlog_window=config.plan_backlog_window,
        ),
        estimates,
        on_assigned=push.batches_assigned,
    )
    return Services(
        config=config,
        request_plan=queue.request_plan,
        tokens=TokenService(token_store, clock),
        submissions=SubmissionService(store, queue, clock, new_id),
        dispatcher=dispatcher,
        agents=AgentService(
            store, artifacts, clock, config.lease_seconds, estimates, queue.request_plan
        ),
        reaper=ReaperService(
            store,
            queue,
            clock,
            ReaperSettings(
                agent_offline_seconds=config.agent_offline_seconds,
                resend_grace_seconds=config.resend_grace_seconds,
                timeout_grace_seconds=config.lease_seconds,
                resend_hold_seconds=config.resend_hold_seconds,
            ),
            queue_depth=queue.depth,
        ),
        push=push,
    )


def build_services(
    config: Config, session: Any | None = None, clock: Callable[[], float] = time.time
) -> Services:
    """The production wiring: boto3 clients (honouring AWS_ENDPOINT_URL) behind the ports."""
    dynamodb = _client("dynamodb", session)
    return assemble_services(
        config,
        store=DynamoStateStore(
            dynamodb,
            jobs_table=config.jobs_table,
            runs_table=config.runs_table,
            agents_table=config.agents_table,
            batches_table=config.batches_table,
            retention_seconds=config.retention_days * 86400,
        ),
        queue=SqsJobQueue(_client("sqs", session), config.jobs_queue_url),
        artifacts=S3ArtifactStore(_client("s3", session), config.artifacts_bucket),
        token_store=DynamoTokenStore(dynamodb, config.tokens_table),
        estimate_store=DynamoEstimateStore(dynamodb, config.estimates_table),
        clock=clock,
        notifier=_notifier(config, session),
    )


def _notifier(config: Config, session: Any | None) -> AgentNotifier | None:
    """The push channel's Management API client, when the deployment has one."""
    if config.push_endpoint is None:
        return None
    client = (session or boto3).client(
        "apigatewaymanagementapi", endpoint_url=config.push_endpoint, config=_PUSH_BOTO_CONFIG
    )
    return ApiGatewayNotifier(client)


class LazyServices:
    """Each Lambda container builds its services on first use, from the environment.

    Tests and the local stack inject their own with ``use``.
    """

    def __init__(self) -> None:
        self._services: Services | None = None

    def __call__(self) -> Services:
        if self._services is None:
            self._services = build_services(Config.from_env())
        return self._services

    def use(self, instance: Services | None) -> None:
        self._services = instance
