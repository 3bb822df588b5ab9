"""Metrics (CloudWatch EMF) and correlation ids: what the handlers and services report.

Metrics go through the `MetricsPort`, injected into the services that know a fact
(DispatchService, AgentService) and used by the handlers for what they know (a submit, a
plan's duration, a sweep's report). `EmfMetrics` buffers an invocation's metrics and
writes them once, at its end (`flush`), as one EMF line per dimension set: no AWS call.
Dimensions are few on purpose: each distinct set of dimension values is a custom metric
CloudWatch bills, so metrics carry at most ``target`` and ``status`` (3 x 5 series).

A job's correlation id is its run id: created by the submit, stored on every job, carried
in its queue messages, returned to its agent with the batch and echoed back with the
agent's reports. `correlate` puts it on every log line of the invocation (Powertools'
thread-local keys: the local stack runs several invocations in one process at once).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import remove_context_keys, set_context_keys
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)

from qgjob_backend.domain.models import Agent, AgentStatus, Job
from qgjob_backend.schema import Target

# --------------------------------------------------------------- metric names
# One source for the names the code emits and template.yaml's alarms and dashboard use
# (tests/unit/test_template_observability.py reads both).
JOBS_SUBMITTED = "JobsSubmitted"  # target
JOBS_FINISHED = "JobsFinished"  # target, status
BATCHES_ASSIGNED = "BatchesAssigned"  # target
INSTALLS = "Installs"  # target: an app installed for a batch
INSTALLS_SAVED = "InstallsSaved"  # target: a batch whose agent already held the app
QUEUE_DEPTH = "QueuedJobs"  # target (capped at the plan's backlog window)
OLDEST_QUEUED_AGE = "OldestQueuedJobAge"  # target, seconds
AGENTS_ONLINE = "AgentsOnline"  # target
AGENTS_IDLE = "AgentsIdle"  # target
AGENTS_BUSY = "AgentsBusy"  # target
PLAN_DURATION = "PlanDuration"  # milliseconds, no dimension
PLAN_FAILURES = "PlanFailures"  # no dimension
LEASE_EXPIRIES = "LeaseExpiries"  # no dimension: batches whose lease lapsed
JOBS_REQUEUED = "JobsRequeued"  # no dimension: by the reaper
JOBS_TIMED_OUT = "JobsTimedOut"  # no dimension: by the reaper
AGENTS_MARKED_OFFLINE = "AgentsMarkedOffline"  # no dimension
JOBS_RESENT = "JobsResent"  # no dimension: lost queue messages sent again
METRIC_NAMES = (
    JOBS_SUBMITTED,
    JOBS_FINISHED,
    BATCHES_ASSIGNED,
    INSTALLS,
    INSTALLS_SAVED,
    QUEUE_DEPTH,
    OLDEST_QUEUED_AGE,
    AGENTS_ONLINE,
    AGENTS_IDLE,
    AGENTS_BUSY,
    PLAN_DURATION,
    PLAN_FAILURES,
    LEASE_EXPIRIES,
    JOBS_REQUEUED,
    JOBS_TIMED_OUT,
    AGENTS_MARKED_OFFLINE,
    JOBS_RESENT,
)

COUNT = "Count"
SECONDS = "Seconds"
MILLISECONDS = "Milliseconds"

# EMF holds at most 100 values per metric in one line.
MAX_VALUES = 100
NAMESPACE_ENV = "POWERTOOLS_METRICS_NAMESPACE"
DEFAULT_NAMESPACE = "qgjob"


class MetricsPort(Protocol):
    def count(self, name: str, value: float = 1.0, **dimensions: str) -> None:
        """Adds ``value`` to a counter (summed per dimension set until the flush)."""

    def observe(self, name: str, value: float, unit: str = COUNT, **dimensions: str) -> None:
        """Records one measurement (a gauge, a duration): every value is kept."""


class NoMetrics:
    """Discards everything: the default where nothing is wired."""

    def count(self, name: str, value: float = 1.0, **dimensions: str) -> None:
        return None

    def observe(self, name: str, value: float, unit: str = COUNT, **dimensions: str) -> None:
        return None


NO_METRICS: MetricsPort = NoMetrics()

Dimensions = tuple[tuple[str, str], ...]
Handler = Callable[[dict[str, Any], Any], Any]


class MetricBuffer:
    """An invocation's metrics, per thread, grouped by dimension set.

    Also the unit tests' fake: `total` and `values` read what was recorded. Counts of one
    name and dimension set are summed; observations keep every value (EMF takes up to
    100 per metric and CloudWatch computes the statistics).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _groups(self) -> dict[Dimensions, dict[str, tuple[str, list[float]]]]:
        groups: dict[Dimensions, dict[str, tuple[str, list[float]]]] | None = getattr(
            self._local, "groups", None
        )
        if groups is None:
            groups = self._local.groups = {}
        return groups

    def count(self, name: str, value: float = 1.0, **dimensions: str) -> None:
        values = self._values(name, COUNT, dimensions)
        if values:
            values[0] += value
        else:
            values.append(float(value))

    def observe(self, name: str, value: float, unit: str = COUNT, **dimensions: str) -> None:
        values = self._values(name, unit, dimensions)
        if len(values) < MAX_VALUES:  # more than EMF holds: a bug upstream, not data
            values.append(float(value))

    def _values(self, name: str, unit: str, dimensions: Mapping[str, str]) -> list[float]:
        key: Dimensions = tuple(sorted((k, str(v)) for k, v in dimensions.items()))
        metrics = self._groups().setdefault(key, {})
        _, values = metrics.setdefault(name, (unit, []))
        return values

    def take(self) -> dict[Dimensions, dict[str, tuple[str, list[float]]]]:
        """This thread's metrics since the last take, and an empty buffer."""
        groups = self._groups()
        self._local.groups = {}
        return groups

    def values(self, name: str, **dimensions: str) -> list[float]:
        """``name``'s values with exactly these dimensions (one sum for a counter)."""
        key: Dimensions = tuple(sorted((k, str(v)) for k, v in dimensions.items()))
        _, values = self._groups().get(key, {}).get(name, (COUNT, []))
        return list(values)

    def total(self, name: str, **dimensions: str) -> float:
        return sum(self.values(name, **dimensions))

    def names(self) -> set[str]:
        return {name for metrics in self._groups().values() for name in metrics}


# EMF lines are written by this logger: to stdout in Lambda (CloudWatch Logs extracts the
# metrics), to the functions' log locally (the local stack routes stdout handlers there).
_emf_log = logging.getLogger("qgjob.metrics")
if not _emf_log.handlers:
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _emf_log.addHandler(_handler)
    _emf_log.setLevel(logging.INFO)
    _emf_log.propagate = False


class EmfMetrics(MetricBuffer):
    """Writes the buffered metrics as CloudWatch Embedded Metric Format, once per flush.

    Serialized by Powertools' EMF provider, one provider per dimension set and flush (its
    `Metrics` class keeps one set for the whole process, which concurrent local
    invocations would share). No ``service`` dimension: the namespace names the service.
    """

    def __init__(self, namespace: str | None = None) -> None:
        super().__init__()
        self.namespace = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE

    def flush(self) -> int:
        """Writes this thread's metrics; returns the number of EMF lines written."""
        lines = 0
        for dimensions, metrics in self.take().items():
            for blob in self.serialize(dimensions, metrics):
                _emf_log.info(json.dumps(blob, separators=(",", ":")))
                lines += 1
        return lines

    def serialize(
        self, dimensions: Dimensions, metrics: dict[str, tuple[str, list[float]]]
    ) -> Iterator[dict[str, Any]]:
        names = sorted(metrics)
        # EMF holds at most 100 metrics per line.
        for start in range(0, len(names), 100):
            provider = AmazonCloudWatchEMFProvider(
                namespace=self.namespace,
                service="",
                metric_set={},
                dimension_set={},
                metadata_set={},
                default_dimensions={},
            )
            for dimension, label in dimensions:
                provider.add_dimension(dimension, label)
            for name in names[start : start + 100]:
                unit, values = metrics[name]
                for value in values:
                    provider.add_metric(name=name, unit=unit, value=value)
            yield dict(provider.serialize_metric_set())


def report_pools(
    metrics: MetricsPort,
    backlogs: Mapping[Target, Sequence[Job]],
    pools: Mapping[Target, Sequence[Agent]],
    now: float,
    fresh_after: float,
) -> None:
    """A plan's reads as gauges, per target: no read of its own.

    ``backlogs``: every target's backlog head (at most the plan's window, so the depth is
    exact below it and capped at it); ``pools``: the agents the plan read (only of the
    targets with waiting work: those are the ones an operator needs to see). An agent is
    online when busy (it holds a batch; its heartbeats keep the lease, not last_seen) or
    idle, seen since ``fresh_after`` and not drained (a drained one takes no new work, so
    a pool drained whole with work waiting counts as no agent online). A job waits since
    its submit, or since it went back to the queue (a lost agent, a re-run): the planner's
    own notion of its wait.
    """
    for target, backlog in backlogs.items():
        oldest = min((_queued_since(job) for job in backlog), default=now)
        metrics.observe(QUEUE_DEPTH, len(backlog), COUNT, target=target.value)
        metrics.observe(OLDEST_QUEUED_AGE, max(0.0, now - oldest), SECONDS, target=target.value)
    for target, agents in pools.items():
        live = [a for a in agents if a.status is not AgentStatus.OFFLINE]
        busy = sum(1 for a in live if a.batch_id is not None)
        idle = sum(
            1
            for a in live
            if a.batch_id is None and a.last_seen >= fresh_after and a.drained_at is None
        )
        metrics.observe(AGENTS_BUSY, busy, COUNT, target=target.value)
        metrics.observe(AGENTS_IDLE, idle, COUNT, target=target.value)
        metrics.observe(AGENTS_ONLINE, busy + idle, COUNT, target=target.value)


def _queued_since(job: Job) -> float:
    return job.updated_at if job.last_agent_id else job.created_at


# ----------------------------------------------------------- correlation ids
CORRELATION_KEY = "correlation_id"
# The request header a caller names its correlation id in (lower case: HTTP APIs and the
# local shim hand headers over as sent; the handler compares them lower-cased).
CORRELATION_HEADER = "x-correlation-id"
# What an agent may echo: run ids ("run-" + hex), comma-separated when a call reports
# jobs of several runs. Anything else is ignored, never logged.
CORRELATION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,80}(,[A-Za-z0-9._-]{1,80}){0,47}$"
_CORRELATION_ID = re.compile(CORRELATION_ID_PATTERN)

_current: ContextVar[str | None] = ContextVar("qgjob_correlation_id", default=None)
_logger = Logger(child=True)


def valid_correlation_id(value: object) -> str | None:
    return value if isinstance(value, str) and _CORRELATION_ID.match(value) else None


def joined(ids: Iterable[str | None]) -> str | None:
    """Distinct ids, in first-seen order, comma-separated (None when there is none)."""
    distinct = list(dict.fromkeys(i for i in ids if i))
    return ",".join(distinct) if distinct else None


def begin_invocation(correlation_id: str | None = None) -> None:
    """A new invocation on this thread: forgets the last one's correlation id."""
    remove_context_keys([CORRELATION_KEY])
    _current.set(None)
    if correlation_id:
        correlate(correlation_id)


def correlate(correlation_id: str | None) -> None:
    """From now on in this invocation, every log line carries ``correlation_id``."""
    if not correlation_id:
        return
    _current.set(correlation_id)
    # What Logger.thread_safe_append_keys does, without needing a parent Logger first
    # (services and their tests log through child loggers): the keys every Powertools
    # formatter adds, per thread, over its shared ones.
    keys: dict[str, Any] = {CORRELATION_KEY: correlation_id}
    set_context_keys(**keys)


def current_correlation_id() -> str | None:
    return _current.get()


def observed(
    metrics: EmfMetrics, correlation_of: Callable[[dict[str, Any]], str | None] | None = None
) -> Callable[[Handler], Handler]:
    """A handler's invocation: begins with the event's correlation id (``correlation_of``)
    and ends by writing its metrics, once, whatever happened."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def invoke(event: dict[str, Any], context: Any) -> Any:
            begin_invocation(correlation_of(event) if correlation_of is not None else None)
            try:
                return handler(event, context)
            finally:
                try:
                    metrics.flush()
                except Exception:  # metrics must never fail the invocation they describe
                    _logger.warning("could not write the metrics", exc_info=True)

        return invoke

    return decorate


@contextmanager
def correlated(correlation_id: str | None) -> Iterator[None]:
    """Log lines inside carry ``correlation_id``; the invocation's id is restored after."""
    previous = _current.get()
    correlate(correlation_id)
    try:
        yield
    finally:
        if correlation_id:
            if previous:
                correlate(previous)
            else:
                begin_invocation()
