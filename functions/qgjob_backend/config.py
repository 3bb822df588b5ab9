"""Configuration read once from the environment (set by template.yaml or the local stack)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from qgjob_backend.domain.planner import PlanningPolicy
from qgjob_backend.domain.preemption import PreemptionPolicy
from qgjob_backend.schema import Target


class ConfigError(RuntimeError):
    """A required setting is missing or malformed."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is not set")
    return value


# One batch commits in one DynamoDB transaction of at most 100 items: the agent, the
# batch and an org metrics shard, each job, and each job's run (its counters): when every
# job is of another run, 3 + 2 x 48 = 99.
MAX_BATCH_JOBS = 48


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    minimum: float,
    maximum: float = float("inf"),
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} must be a number, got {raw!r}") from exc
    if not minimum <= value <= maximum:
        raise ConfigError(
            f"environment variable {name} must be between {minimum} and {maximum}, got {value}"
        )
    return value


@dataclass(frozen=True)
class Config:
    jobs_table: str
    runs_table: str
    agents_table: str
    batches_table: str
    tokens_table: str
    estimates_table: str
    jobs_queue_url: str
    artifacts_bucket: str
    lease_seconds: float = 120.0
    batch_max_jobs: int = 25
    # A job written to DynamoDB but not admitted by the dispatcher after this long is re-sent.
    resend_grace_seconds: float = 30.0
    # ... unless jobs.fifo still holds messages (admission lags): then once per this long.
    resend_hold_seconds: float = 300.0
    # An agent silent for this long is treated as gone even without a batch.
    agent_offline_seconds: float = 360.0
    # Queued jobs gain one priority level per this many seconds of waiting (no starvation).
    aging_seconds: float = 120.0
    # The planner cuts a batch at about this many estimated seconds of tests ...
    max_batch_seconds: float = 900.0
    # ... and makes none smaller than this while its group has that much work left.
    min_batch_seconds: float = PlanningPolicy.min_batch_seconds
    # The installs-versus-makespan knob (PlanningPolicy.min_split_gain_s): a split must
    # shorten the plan by this much to buy installs; per target by
    # MIN_SPLIT_GAIN_SECONDS_<TARGET> (e.g. _DEVICE, where installs are slow).
    min_split_gain_seconds: float = PlanningPolicy.min_split_gain_s
    split_gain_seconds_by_target: tuple[tuple[str, float], ...] = ()
    # What a test without any reported duration is assumed to take.
    unknown_estimate_seconds: float = 90.0
    # Priority-1 work waits at most about this long for a busy pool before a running batch
    # yields to it at its next test boundary (PreemptionPolicy.max_wait_s); env
    # PREEMPT_WAIT_SECONDS, "off": no batch ever yields.
    preempt_wait_seconds: float | None = PreemptionPolicy.max_wait_s
    # Priority-1 work that arrives while older work waits runs in pieces of at most this
    # many estimated seconds, each on its own agent (PlanningPolicy.urgent_piece_s); env
    # URGENT_PIECE_SECONDS, "off": an urgent suite is never cut for its wait.
    urgent_piece_seconds: float = PlanningPolicy.urgent_piece_s
    # An app install on each target until agents have reported installs there.
    default_install_seconds_emulator: float = 60.0
    default_install_seconds_device: float = 120.0
    default_install_seconds_browserstack: float = 90.0
    # A plan reads at most this many waiting jobs per target: the most urgent, then oldest.
    plan_backlog_window: int = 2000
    # The WebSocket URL agents connect to for batch notifications (None: no push channel).
    push_url: str | None = None
    # An idle agent with a push connection leases this often (its safety poll and its
    # sign of life: idle agents send no heartbeats).
    idle_poll_seconds: float = 300.0
    # The API Gateway Management API of the push channel (https://<api>.execute-api.<region>
    # .amazonaws.com/<stage>): where the dispatcher posts to agents' connections.
    push_endpoint: str | None = None
    # Finished jobs, runs and closed batches expire (DynamoDB TTL) this many days after
    # they finished. Org metrics (counter shards) and tokens never expire.
    retention_days: float = 30.0
    # App builds (None: builds are not deployed; the build routes answer 503).
    builds_table: str | None = None
    # The results vault (None: not deployed): its queue, archive bucket and audit table,
    # the App Automate REST API, and the SSM path of the orgs' BrowserStack credentials.
    vault_queue_url: str | None = None
    vault_bucket: str | None = None
    audit_table: str | None = None
    browserstack_api_url: str = "https://api-cloud.browserstack.com"
    browserstack_credentials_prefix: str = "/qgjob/browserstack"

    @property
    def default_install_seconds(self) -> dict[Target, float]:
        return {
            Target.EMULATOR: self.default_install_seconds_emulator,
            Target.DEVICE: self.default_install_seconds_device,
            Target.BROWSERSTACK: self.default_install_seconds_browserstack,
        }

    @property
    def agent_touch_seconds(self) -> float:
        """A lease records the agent's sign of life (a write that moves the idle index)
        only when its last one is older than this: six chances per offline window, so a
        live agent is never taken for gone, and a busy agent leasing each batch does not
        pay a write per lease."""
        return self.agent_offline_seconds / 6

    @property
    def heartbeat_seconds(self) -> float:
        # Three heartbeats per lease: one lost request never costs a lease.
        return max(1.0, self.lease_seconds / 3)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        lease = _number(env, "LEASE_SECONDS", 120.0, 1.0)
        idle_poll = _number(env, "IDLE_POLL_SECONDS", 300.0, 1.0)
        return cls(
            jobs_table=_required(env, "JOBS_TABLE"),
            runs_table=_required(env, "RUNS_TABLE"),
            agents_table=_required(env, "AGENTS_TABLE"),
            batches_table=_required(env, "BATCHES_TABLE"),
            tokens_table=_required(env, "TOKENS_TABLE"),
            estimates_table=_required(env, "ESTIMATES_TABLE"),
            jobs_queue_url=_required(env, "JOBS_QUEUE_URL"),
            artifacts_bucket=_required(env, "ARTIFACTS_BUCKET"),
            lease_seconds=lease,
            batch_max_jobs=int(_number(env, "BATCH_MAX_JOBS", 25, 1, MAX_BATCH_JOBS)),
            resend_grace_seconds=_number(env, "RESEND_GRACE_SECONDS", 30.0, 0.0),
            resend_hold_seconds=_number(env, "RESEND_HOLD_SECONDS", 300.0, 0.0),
            # Idle agents are heard from once per safety poll: allow two to be missed.
            agent_offline_seconds=_number(
                env, "AGENT_OFFLINE_SECONDS", max(3 * lease, 2.5 * idle_poll), 1.0
            ),
            aging_seconds=_number(env, "AGING_SECONDS", 120.0, 1.0),
            max_batch_seconds=_number(env, "MAX_BATCH_SECONDS", 900.0, 1.0),
            min_batch_seconds=_number(
                env, "MIN_BATCH_SECONDS", PlanningPolicy.min_batch_seconds, 0.0
            ),
            min_split_gain_seconds=_number(
                env, "MIN_SPLIT_GAIN_SECONDS", PlanningPolicy.min_split_gain_s, 0.0
            ),
            split_gain_seconds_by_target=tuple(
                (target.value, _number(env, name, 0.0, 0.0))
                for target in Target
                if env.get(name := f"MIN_SPLIT_GAIN_SECONDS_{target.name}", "").strip()
            ),
            unknown_estimate_seconds=_number(env, "UNKNOWN_ESTIMATE_SECONDS", 90.0, 0.1),
            preempt_wait_seconds=None
            if env.get("PREEMPT_WAIT_SECONDS", "").strip().lower() == "off"
            else _number(env, "PREEMPT_WAIT_SECONDS", PreemptionPolicy.max_wait_s, 0.0),
            urgent_piece_seconds=math.inf
            if env.get("URGENT_PIECE_SECONDS", "").strip().lower() == "off"
            else _number(env, "URGENT_PIECE_SECONDS", PlanningPolicy.urgent_piece_s, 1.0),
            default_install_seconds_emulator=_number(
                env, "DEFAULT_INSTALL_SECONDS_EMULATOR", 60.0, 0.0
            ),
            default_install_seconds_device=_number(
                env, "DEFAULT_INSTALL_SECONDS_DEVICE", 120.0, 0.0
            ),
            default_install_seconds_browserstack=_number(
                env, "DEFAULT_INSTALL_SECONDS_BROWSERSTACK", 90.0, 0.0
            ),
            plan_backlog_window=int(_number(env, "PLAN_BACKLOG_WINDOW", 2000, 1, 100_000)),
            push_url=env.get("PUSH_URL", "").strip() or None,
            idle_poll_seconds=idle_poll,
            push_endpoint=env.get("PUSH_ENDPOINT", "").strip() or None,
            retention_days=_number(env, "RETENTION_DAYS", 30.0, 1.0, 3650.0),
            builds_table=env.get("BUILDS_TABLE", "").strip() or None,
            vault_queue_url=env.get("VAULT_QUEUE_URL", "").strip() or None,
            vault_bucket=env.get("VAULT_BUCKET", "").strip() or None,
            audit_table=env.get("AUDIT_TABLE", "").strip() or None,
            browserstack_api_url=env.get("BROWSERSTACK_API_URL", "").strip()
            or "https://api-cloud.browserstack.com",
            browserstack_credentials_prefix=env.get("BROWSERSTACK_CREDENTIALS_PREFIX", "").strip()
            or "/qgjob/browserstack",
        )
