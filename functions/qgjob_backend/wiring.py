"""Builds the services from configuration: the only place that creates AWS clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from qgjob_backend.adapters.browserstack import BrowserStackResultsApi, SsmCredentials
from qgjob_backend.adapters.dynamodb import (
    DynamoEstimateStore,
    DynamoStateStore,
    DynamoTokenStore,
)
from qgjob_backend.adapters.dynamodb.audit import DynamoAuditStore
from qgjob_backend.adapters.dynamodb.builds import DynamoBuildStore
from qgjob_backend.adapters.dynamodb.org_settings import DynamoOrgSettingsStore
from qgjob_backend.adapters.dynamodb.snapshots import DynamoPoolSnapshotStore
from qgjob_backend.adapters.push import ApiGatewayNotifier
from qgjob_backend.adapters.s3 import S3ArtifactStore, S3VaultStore
from qgjob_backend.adapters.s3_uploads import S3UploadStore
from qgjob_backend.adapters.sqs import SqsJobQueue, SqsVaultQueue
from qgjob_backend.config import Config
from qgjob_backend.domain.planner import PlanningPolicy
from qgjob_backend.domain.preemption import PreemptionPolicy
from qgjob_backend.observability import NO_METRICS, MetricsPort
from qgjob_backend.ports import (
    AgentNotifier,
    ArtifactStore,
    BuildStore,
    EstimateStore,
    JobQueue,
    OrgSettingsStore,
    PoolSnapshotStore,
    StateStore,
    TokenStore,
    UploadStore,
    VaultQueue,
)
from qgjob_backend.services.agents import AgentService
from qgjob_backend.services.auth import TokenService
from qgjob_backend.services.builds import BuildService
from qgjob_backend.services.dispatch import DispatchService, DispatchSettings
from qgjob_backend.services.estimates import EstimateService
from qgjob_backend.services.org_settings import OrgSettingsService
from qgjob_backend.services.pool_snapshots import PoolSnapshotService, SnapshotSettings
from qgjob_backend.services.push import PushService
from qgjob_backend.services.reaper import ReaperService, ReaperSettings
from qgjob_backend.services.submission import SubmissionService
from qgjob_backend.services.vault import VaultService

_BOTO_CONFIG = BotoConfig(
    retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=3, read_timeout=10
)


# A push is a wake-up with a safety poll behind it: fail fast rather than hold up a plan.
_PUSH_BOTO_CONFIG = BotoConfig(
    retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=3
)


_SIGV4 = BotoConfig(signature_version="s3v4")


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
    # App builds and the presigned links of builds and artifacts; None: not deployed.
    builds: BuildService | None = None
    # The results vault's reads (GET /jobs/{id}/audit); None when it is not deployed.
    vault: VaultService | None = None
    # Pools' queue snapshots: runs' queue positions and ETAs; None: runs show none.
    snapshots: PoolSnapshotService | None = None
    # Org settings (the default overflow a submission takes); None: no org has any.
    org_settings: OrgSettingsService | None = None


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
    vault: VaultService | None = None,
    vault_queue: VaultQueue | None = None,
    build_store: BuildStore | None = None,
    uploads: UploadStore | None = None,
    snapshot_store: PoolSnapshotStore | None = None,
    org_settings_store: OrgSettingsStore | None = None,
    metrics: MetricsPort = NO_METRICS,
) -> Services:
    """Wires the services over any implementation of the ports (boto3 adapters or fakes)."""
    estimates = EstimateService(estimate_store, config.default_install_seconds)
    builds = (
        BuildService(build_store, uploads, clock)
        if build_store is not None and uploads is not None
        else None
    )
    push = PushService(store, notifier, clock)
    org_settings = (
        OrgSettingsService(org_settings_store, clock) if org_settings_store is not None else None
    )
    snapshots = (
        PoolSnapshotService(
            snapshot_store,
            clock,
            SnapshotSettings(
                unknown_estimate_s=config.unknown_estimate_seconds,
                agent_offline_seconds=config.agent_offline_seconds,
            ),
        )
        if snapshot_store is not None
        else None
    )
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
                min_batch_seconds=config.min_batch_seconds,
                min_split_gain_s=config.min_split_gain_seconds,
                split_gain_by_target=config.split_gain_seconds_by_target,
                unknown_estimate_s=config.unknown_estimate_seconds,
                urgent_piece_s=config.urgent_piece_seconds,
            ),
            backlog_window=config.plan_backlog_window,
            preemption=PreemptionPolicy(
                max_wait_s=config.preempt_wait_seconds or 0.0,
                urgent_piece_s=config.urgent_piece_seconds,
                unknown_estimate_s=config.unknown_estimate_seconds,
                enabled=config.preempt_wait_seconds is not None,
            ),
        ),
        estimates,
        on_assigned=push.batches_assigned,
        snapshots=snapshots,
        metrics=metrics,
    )
    return Services(
        config=config,
        request_plan=queue.request_plan,
        tokens=TokenService(token_store, clock),
        submissions=SubmissionService(
            store,
            queue,
            clock,
            new_id,
            build_sha256=builds.ready_sha256 if builds else None,
            estimates=estimates,
            queue_of=snapshots.run_queue if snapshots is not None else None,
            org_overflow=org_settings.default_overflow if org_settings is not None else None,
        ),
        dispatcher=dispatcher,
        agents=AgentService(
            store,
            artifacts,
            clock,
            config.lease_seconds,
            estimates,
            queue.request_plan,
            archive=vault_queue.send if vault_queue is not None else None,
            touch_seconds=config.agent_touch_seconds,
            metrics=metrics,
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
        vault=vault,
        builds=builds,
        snapshots=snapshots,
        org_settings=org_settings,
    )


def build_services(
    config: Config,
    session: Any | None = None,
    clock: Callable[[], float] = time.time,
    metrics: MetricsPort = NO_METRICS,
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
        snapshot_store=DynamoPoolSnapshotStore(dynamodb, config.runs_table),
        org_settings_store=DynamoOrgSettingsStore(dynamodb, config.runs_table),
        clock=clock,
        metrics=metrics,
        notifier=_notifier(config, session),
        build_store=(
            DynamoBuildStore(dynamodb, config.builds_table) if config.builds_table else None
        ),
        uploads=S3UploadStore(_presigner(session), config.artifacts_bucket),
        vault=build_vault_service(config, session) if config.audit_table else None,
        vault_queue=(
            SqsVaultQueue(_client("sqs", session), config.vault_queue_url)
            if config.vault_queue_url
            else None
        ),
    )


def _presigner(session: Any | None) -> Any:
    """An S3 client that signs with SigV4: only SigV4 signs a presigned PUT's
    Content-Length and x-amz-checksum-sha256, so S3 refuses other bytes."""
    return (session or boto3).client(
        "s3", config=_BOTO_CONFIG.merge(BotoConfig(signature_version="s3v4"))
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

    Tests and the local stack inject their own with ``use``. ``metrics``: where the
    services report (the handler flushes it once per invocation).
    """

    def __init__(self, metrics: MetricsPort = NO_METRICS) -> None:
        self._services: Services | None = None
        self._metrics = metrics

    def __call__(self) -> Services:
        if self._services is None:
            self._services = build_services(Config.from_env(), metrics=self._metrics)
        return self._services

    def use(self, instance: Services | None) -> None:
        self._services = instance


def build_vault_service(
    config: Config,
    session: Any | None = None,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    count: Callable[[str], None] | None = None,
    http: Any | None = None,
) -> VaultService:
    """The results vault over its production adapters: App Automate through ``requests``
    with the org's credentials from SSM, S3 for the archives, DynamoDB for the audit."""
    import requests

    if not (config.vault_bucket and config.audit_table):
        raise ValueError("the vault needs VAULT_BUCKET and AUDIT_TABLE")
    credentials = SsmCredentials(_client("ssm", session), config.browserstack_credentials_prefix)
    results = BrowserStackResultsApi(
        http or requests.Session(), credentials, config.browserstack_api_url
    )
    return VaultService(
        results,
        # SigV4 presigned links (boto3 would sign them SigV2 in us-east-1).
        S3VaultStore(
            (session or boto3).client("s3", config=_BOTO_CONFIG.merge(_SIGV4)),
            config.vault_bucket,
        ),
        DynamoAuditStore(_client("dynamodb", session), config.audit_table),
        clock,
        sleep,
        count=count or (lambda name: None),
    )


class LazyVaultService:
    """The vault Lambda's service, built on first use from the environment."""

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self._count = count
        self._service: VaultService | None = None

    def __call__(self) -> VaultService:
        if self._service is None:
            self._service = build_vault_service(Config.from_env(), count=self._count)
        return self._service

    def use(self, instance: VaultService | None) -> None:
        self._service = instance
