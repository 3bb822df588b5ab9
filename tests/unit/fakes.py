"""In-memory fakes of qgjob's ports, for unit tests of the services (no network, no mocks).

``MemoryStateStore`` honours exactly the preconditions of ``DynamoStateStore``: every
method mirrors one conditional expression (or one transaction) of the DynamoDB adapter,
including the secondary attributes the conditions read (``unadmitted_shard``,
``backlog_target``, ``lease_shard``). ``tests/integration/test_store_contract.py`` runs
the same contract against both implementations, which is what makes this fake trustworthy.

Every value goes in and out as a deep copy, so a caller mutating a returned object never
changes the stored state (as with a real database).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from qgjob_backend.agent_protocol import parse_credential
from qgjob_backend.config import MAX_BATCH_JOBS, Config
from qgjob_backend.domain.estimates import DurationEstimate, EstimateKey
from qgjob_backend.domain.models import (
    Agent,
    AgentStatus,
    AppRef,
    Batch,
    BatchState,
    Job,
    Run,
    cancel_mark,
    cancel_message,
    rests_by_job,
)
from qgjob_backend.domain.planner import (
    BacklogJob,
    BusyAgent,
    IdleAgent,
    PlannedBatch,
    PlanningPolicy,
    plan_batches,
)
from qgjob_backend.domain.progress import moved, nonzero, run_job_ids
from qgjob_backend.domain.queue import PoolSnapshot
from qgjob_backend.domain.vault import AuditRecord, VaultMessage
from qgjob_backend.observability import NO_METRICS, MetricsPort
from qgjob_backend.ports import (
    EstimateConflict,
    FetchedSession,
    Finish,
    JobOutcome,
    JobPage,
    OrgMetrics,
    OrgSettings,
    TokenRecord,
)
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.agents import AgentCredential, AgentService, Heartbeat, LeasedBatch
from qgjob_backend.services.auth import Principal, TokenKind, TokenService
from qgjob_backend.services.dispatch import DispatchService
from qgjob_backend.services.org_settings import OrgSettingsService
from qgjob_backend.services.reaper import ReaperService
from qgjob_backend.services.submission import SubmissionService
from qgjob_backend.wiring import assemble_services

# The principal of a shared fleet token (no target, no lab) that unit tests register with.
SHARED_FLEET = Principal(TokenKind.AGENT, None, None, "shared-fleet-token-hash")

T = TypeVar("T")

_IN_PROGRESS = (JobStatus.ASSIGNED, JobStatus.RUNNING)


def _copy(value: T) -> T:
    return copy.deepcopy(value)


def backlog_sort_key(job: Job) -> str:
    """The backlog index's sort key, as the DynamoDB adapter writes it."""
    return f"{job.priority:02d}#{job.created_at:020.6f}#{job.group_key}#{job.position:05d}"


class FakeClock:
    """A settable clock: ``clock()`` returns the current fake time (epoch seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, now: float) -> None:
        self.now = float(now)


class SequentialIds:
    """Deterministic replacement for uuid-based ids: id-0001, id-0002, ..."""

    def __init__(self, prefix: str = "id") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):04d}"


# ------------------------------------------------------------------------ state store
class MemoryStateStore:
    """A faithful in-memory StateStore (see the module docstring)."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.jobs: dict[str, Job] = {}
        self.agents: dict[str, Agent] = {}
        self.batches: dict[str, Batch] = {}
        # Secondary attributes that DynamoDB conditions read, kept as in the adapter.
        self._unadmitted: set[str] = set()  # jobs carrying unadmitted_shard
        self._backlog: dict[str, tuple[Target, str]] = {}  # backlog_target, backlog_key
        self._leased: set[str] = set()  # batches carrying lease_shard
        # The counters of domain.progress, moved with each transition as in the adapter:
        # each run's (on the run), each org's (its shards summed), and the org totals.
        self.org_jobs: dict[str, Counter[str]] = {}
        self.org_totals: dict[str, Counter[str]] = {}
        self._pairs: set[tuple[str, str, str, str]] = set()  # agent_app_pair markers
        # Fault injection: method name -> exception raised (once) before the method runs.
        self._faults: dict[str, BaseException] = {}

    # ---------------------------------------------------------- test helpers
    def fail_next(self, method: str, error: BaseException) -> None:
        """The next call of ``method`` raises ``error`` without writing anything."""
        self._faults[method] = error

    def _maybe_fail(self, method: str) -> None:
        error = self._faults.pop(method, None)
        if error is not None:
            raise error

    def drop_job(self, job_id: str) -> None:
        """Deletes a job, as if the write that created it never happened."""
        self.jobs.pop(job_id, None)
        self._unadmitted.discard(job_id)
        self._backlog.pop(job_id, None)

    def in_backlog(self, job_id: str) -> bool:
        return job_id in self._backlog

    def in_lease_index(self, batch_id: str) -> bool:
        return batch_id in self._leased

    def snapshot(self) -> dict[str, Any]:
        """Everything stored, for 'nothing changed' assertions."""
        return _copy(
            {
                "runs": self.runs,
                "jobs": self.jobs,
                "agents": self.agents,
                "batches": self.batches,
                "unadmitted": self._unadmitted,
                "backlog": self._backlog,
                "leased": self._leased,
                "org_jobs": self.org_jobs,
                "org_totals": self.org_totals,
                "pairs": self._pairs,
            }
        )

    # -------------------------------------------------------------- counters
    def _runs_exist(self, run_ids: Sequence[str]) -> bool:
        """The adapter's run counter updates are conditional on the run existing."""
        return all(run_id in self.runs for run_id in run_ids)

    def _count(self, run_id: str, org_id: str, delta: Mapping[str, int]) -> None:
        counts = Counter(self.runs[run_id].counts)
        counts.update(delta)
        self.runs[run_id].counts = dict(counts)
        self.org_jobs.setdefault(org_id, Counter()).update(delta)

    def _move(self, stored: Job, after: JobStatus) -> None:
        """Moves the counters of ``stored`` (not yet changed) to ``after``."""
        self._count(stored.run_id, stored.org_id, moved(stored.status, after))

    def _total(self, org_id: str, name: str) -> None:
        self.org_totals.setdefault(org_id, Counter())[name] += 1

    # ------------------------------------------------------------------ runs
    def get_run(self, run_id: str, *, consistent: bool = True) -> Run | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        return replace(_copy(run), counts=nonzero(run.counts))

    def create_run(self, run: Run) -> bool:
        self._maybe_fail("create_run")
        if run.job_ids != run_job_ids(run.run_id, len(run.job_ids)):
            raise ValueError("a run's job ids must be domain.progress.run_job_ids of the run")
        if run.run_id in self.runs:
            return False
        self.runs[run.run_id] = replace(_copy(run), counts={})
        return True

    def create_jobs(self, jobs: Sequence[Job]) -> None:
        self._maybe_fail("create_jobs")
        for job in jobs:
            if job.job_id in self.jobs:
                continue
            if not self._runs_exist([job.run_id]):
                raise LookupError(f"run {job.run_id} not found: create the run before its jobs")
            self.jobs[job.job_id] = _copy(job)
            self._count(job.run_id, job.org_id, moved(None, job.status))
            if job.status is JobStatus.QUEUED and not job.admitted:
                self._unadmitted.add(job.job_id)
            elif job.status is JobStatus.QUEUED:
                self._backlog[job.job_id] = (job.target, backlog_sort_key(job))

    def run_jobs(self, run_id: str, after: int, limit: int, *, total: int) -> JobPage:
        later = sorted(
            (j for j in self.jobs.values() if j.run_id == run_id and after < j.position < total),
            key=lambda j: j.position,
        )
        return JobPage([_copy(j) for j in later[:limit]], more=len(later) > limit)

    # ------------------------------------------------------------------ jobs
    def get_job(self, job_id: str) -> Job | None:
        return _copy(self.jobs.get(job_id))

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        unique = list(dict.fromkeys(job_ids))
        return [_copy(self.jobs[j]) for j in unique if j in self.jobs]

    def admit_job(self, job: Job, now: float) -> Job | None:
        self._maybe_fail("admit_job")
        stored = self.jobs.get(job.job_id)
        if stored is None or job.job_id not in self._unadmitted:
            return None
        if stored.status is not JobStatus.QUEUED:
            return None
        stored.admitted = True
        stored.updated_at = now
        if job.estimate_s is not None:
            stored.estimate_s = job.estimate_s
        self._backlog[job.job_id] = (job.target, backlog_sort_key(job))
        self._unadmitted.discard(job.job_id)
        return _copy(stored)

    def backlog(self, target: Target, limit: int | None = None) -> list[Job]:
        entries = sorted((key, job_id) for job_id, (t, key) in self._backlog.items() if t is target)
        return [_copy(self.jobs[job_id]) for _, job_id in entries[:limit]]

    def move_job(self, job: Job, to: Target, now: float) -> Job | None:
        self._maybe_fail("move_job")
        stored = self.jobs.get(job.job_id)
        if (
            stored is None
            or stored.status is not JobStatus.QUEUED
            or job.job_id not in self._backlog
            or stored.overflow is not to
            or stored.moved_from is not None
            or stored.target is to
            or not self._runs_exist([stored.run_id])
        ):
            return None
        stored.moved_from = stored.target
        stored.target = to
        stored.updated_at = now
        self._backlog[job.job_id] = (to, backlog_sort_key(stored))
        self.runs[stored.run_id].moved += 1  # in the same write, as in the adapter
        return _copy(stored)

    def overdue_job_ids(self, due_before: float) -> list[str]:
        found = [
            (j.started_at + j.timeout_s, j.job_id)
            for j in self.jobs.values()
            if j.status is JobStatus.RUNNING
            and j.started_at is not None
            and j.started_at + j.timeout_s < due_before
        ]
        return [job_id for _, job_id in sorted(found)]

    def unadmitted_job_ids(self, created_before: float) -> list[str]:
        found = [
            (self.jobs[j].created_at, j)
            for j in self._unadmitted
            if self.jobs[j].created_at < created_before
        ]
        return [job_id for _, job_id in sorted(found)]

    def claim_resend(self, job: Job, now: float) -> bool:
        stored = self.jobs.get(job.job_id)
        if stored is None or job.job_id not in self._unadmitted or stored.resends != job.resends:
            return False
        stored.resends += 1
        return True

    def cancel_job(self, job_id: str, now: float, *, job: Job | None = None) -> Job | None:
        if job is not None and job.job_id != job_id:
            raise ValueError(f"job {job.job_id} given for job {job_id}")
        stored = self.jobs.get(job_id)
        if stored is None or stored.status is not JobStatus.QUEUED:
            return None
        if not self._runs_exist([stored.run_id]):
            return None
        self._move(stored, JobStatus.CANCELLED)
        stored.status = JobStatus.CANCELLED
        stored.finished_at = now
        stored.updated_at = now
        stored.message = "cancelled before it started"
        self._backlog.pop(job_id, None)
        self._unadmitted.discard(job_id)
        return _copy(stored)

    def cancel_jobs(self, jobs: Sequence[Job], now: float) -> list[Job]:
        self._maybe_fail("cancel_jobs")
        done: list[Job] = []
        for job_id in dict.fromkeys(j.job_id for j in jobs):
            stored = self.jobs.get(job_id)
            if stored is None or stored.is_final or not self._runs_exist([stored.run_id]):
                continue
            message = cancel_message(stored)
            agent = self.agents.get(stored.agent_id or "")
            if stored.status in _IN_PROGRESS and agent is not None and stored.batch_id:
                agent.cancel_marks = agent.cancel_marks | {cancel_mark(stored.batch_id, job_id)}
            self._move(stored, JobStatus.CANCELLED)
            stored.status = JobStatus.CANCELLED
            stored.finished_at = now
            stored.updated_at = now
            stored.message = message
            self._backlog.pop(job_id, None)
            self._unadmitted.discard(job_id)
            done.append(_copy(stored))
        return done

    def _owned(self, job_id: str, agent_id: str, batch_id: str) -> Job | None:
        stored = self.jobs.get(job_id)
        if stored is None:
            return None
        if stored.batch_id != batch_id or stored.agent_id != agent_id:
            return None
        if stored.status not in _IN_PROGRESS:
            return None
        return stored

    def start_job(self, job_id: str, agent_id: str, batch_id: str, now: float) -> Job | None:
        stored = self._owned(job_id, agent_id, batch_id)
        if stored is None:
            return None
        stored.status = JobStatus.RUNNING
        if stored.started_at is None:
            stored.started_at = now
        stored.updated_at = now
        return _copy(stored)

    def finish_job(
        self,
        job_id: str,
        agent_id: str,
        batch_id: str,
        outcome: JobOutcome,
        now: float,
        *,
        job: Job | None = None,
    ) -> Job | None:
        self._maybe_fail("finish_job")
        if job is not None and job.job_id != job_id:
            raise ValueError(f"job {job.job_id} given for job {job_id}")
        return self._finish(job_id, agent_id, batch_id, outcome, now)

    def _finish(
        self, job_id: str, agent_id: str, batch_id: str, outcome: JobOutcome, now: float
    ) -> Job | None:
        stored = self._owned(job_id, agent_id, batch_id)
        if stored is None or not self._runs_exist([stored.run_id]):
            return None
        if stored.tries and outcome.status is JobStatus.PASSED:
            self.runs[stored.run_id].flaky += 1  # in the same write, as in the adapter
        self._move(stored, outcome.status)
        stored.status = outcome.status
        if stored.started_at is None:  # started without telling: its duration ago
            stored.started_at = max(0.0, now - outcome.duration_s)
        stored.finished_at = now
        stored.updated_at = now
        stored.duration_s = outcome.duration_s
        # Like the adapter: a result replaces whatever an earlier attempt left behind.
        stored.message = outcome.message
        stored.output_excerpt = outcome.output_excerpt
        stored.output_key = outcome.output_key
        stored.session_id = outcome.session_id
        stored.artifacts = [dict(a) for a in outcome.artifacts]
        stored.retry_of_batch = None
        return _copy(stored)

    def finish_jobs(self, finishes: Sequence[Finish], now: float) -> list[Job] | None:
        self._maybe_fail("finish_jobs")
        if len({f.job.job_id for f in finishes}) != len(finishes):
            raise ValueError("finish_jobs: a job given twice")
        for f in finishes:  # all or nothing, as the adapter's transaction
            stored = self._owned(f.job.job_id, f.agent_id, f.batch_id)
            if stored is None or not self._runs_exist([stored.run_id]):
                return None
        done = [
            self._finish(f.job.job_id, f.agent_id, f.batch_id, f.outcome, now) for f in finishes
        ]
        return [job for job in done if job is not None]

    def retry_failed_job(
        self,
        job: Job,
        agent_id: str,
        batch_id: str,
        tried: dict[str, Any],
        reason: str,
        now: float,
    ) -> Job | None:
        self._maybe_fail("retry_failed_job")
        stored = self._owned(job.job_id, agent_id, batch_id)
        if stored is None or not self._runs_exist([stored.run_id]):
            return None
        self._move(stored, JobStatus.QUEUED)
        stored.status = JobStatus.QUEUED
        stored.updated_at = now
        stored.message = reason
        stored.tries = [*stored.tries, {k: v for k, v in tried.items() if v is not None}]
        stored.retry_of_batch = batch_id
        stored.last_agent_id = agent_id
        stored.batch_id = None
        stored.agent_id = None
        stored.started_at = None
        self._backlog[job.job_id] = (stored.target, backlog_sort_key(stored))
        return _copy(stored)

    def requeue_job(
        self,
        job: Job,
        batch_id: str,
        now: float,
        *,
        count_attempt: bool,
        reason: str,
        retry_of_batch: str | None = None,
        agent_id: str | None = None,
    ) -> Job | None:
        stored = self.jobs.get(job.job_id)
        if stored is None or stored.batch_id != batch_id or stored.status not in _IN_PROGRESS:
            return None
        if agent_id is not None and stored.agent_id != agent_id:
            return None
        if not self._runs_exist([stored.run_id]):
            return None
        # As in the adapter, the attempt count and limit come from the caller's copy.
        attempts = job.attempts + (1 if count_attempt else 0)
        stored.attempts = attempts
        stored.updated_at = now
        stored.message = reason
        if attempts >= job.max_attempts:
            self._move(stored, JobStatus.ERROR)
            stored.status = JobStatus.ERROR
            stored.finished_at = now
        else:
            self._move(stored, JobStatus.QUEUED)
            stored.status = JobStatus.QUEUED
            stored.last_agent_id = stored.agent_id or stored.last_agent_id
            stored.batch_id = None
            stored.agent_id = None
            stored.started_at = None
            stored.retry_of_batch = retry_of_batch
            requeued = replace(job, status=JobStatus.QUEUED)
            self._backlog[job.job_id] = (job.target, backlog_sort_key(requeued))
        return _copy(stored)

    # ---------------------------------------------------------------- agents
    def get_agent(self, agent_id: str) -> Agent | None:
        return _copy(self.agents.get(agent_id))

    def register_agent(
        self,
        agent_id: str,
        target: Target,
        device_id: str,
        installed: AppRef | None,
        now: float,
        *,
        credential_hash: str,
        lab_org_id: str | None = None,
        fleet_hash: str | None = None,
    ) -> Agent | None:
        stored = self.agents.get(agent_id)
        if stored is not None and stored.fleet_hash not in (None, fleet_hash):
            return None  # another fleet token's agent
        if stored is None:
            stored = Agent(
                agent_id=agent_id,
                target=target,
                device_id=device_id,
                status=AgentStatus.IDLE,
                last_seen=now,
                registered_at=now,
                installed=installed,
            )
            self.agents[agent_id] = stored
        elif stored.batch_id is None:
            stored.target = target
            stored.device_id = device_id
            stored.last_seen = now
            stored.registered_at = now
            stored.status = AgentStatus.IDLE
            stored.installed = installed
        else:
            # It still holds a batch: it restarted mid-batch and will resume it.
            stored.last_seen = now
            stored.status = AgentStatus.BUSY
            stored.credential_hash = credential_hash
            stored.connection_id = None
            return _copy(stored)
        stored.credential_hash = credential_hash
        stored.connection_id = None  # the replaced process's push connection
        stored.lab_org_id = lab_org_id
        stored.fleet_hash = fleet_hash
        return _copy(stored)

    def touch_agent(self, agent_id: str, now: float, credential_hash: str) -> Agent | None:
        stored = self.agents.get(agent_id)
        if (
            stored is None
            or stored.status is AgentStatus.OFFLINE
            or stored.credential_hash != credential_hash
        ):
            return None
        stored.last_seen = now
        return _copy(stored)

    def set_agent_connection(
        self, agent_id: str, credential_hash: str, connection_id: str, now: float
    ) -> Agent | None:
        stored = self.agents.get(agent_id)
        if (
            stored is None
            or stored.status is AgentStatus.OFFLINE
            or stored.credential_hash != credential_hash
        ):
            return None
        stored.connection_id = connection_id
        stored.last_seen = now
        return _copy(stored)

    def clear_agent_connection(self, agent_id: str, connection_id: str) -> bool:
        stored = self.agents.get(agent_id)
        if stored is None or stored.connection_id != connection_id:
            return False
        stored.connection_id = None
        return True

    def agent_for_connection(self, connection_id: str) -> str | None:
        found = [a.agent_id for a in self.agents.values() if a.connection_id == connection_id]
        return found[0] if found else None

    def list_agents(self, target: Target) -> list[Agent]:
        return [_copy(a) for _, a in sorted(self.agents.items()) if a.target is target]

    def silent_agent_ids(self, silent_since: float) -> list[str]:
        found = [
            (a.last_seen, a.agent_id)
            for a in self.agents.values()
            if a.status is AgentStatus.IDLE and a.batch_id is None and a.last_seen < silent_since
        ]
        return [agent_id for _, agent_id in sorted(found)]

    def record_install(self, agent_id: str, batch_id: str, app: AppRef, now: float) -> bool:
        agent = self.agents.get(agent_id)
        if agent is None or agent.batch_id != batch_id:
            return False
        agent.installed = app
        agent.last_seen = now
        batch = self.batches.get(batch_id)
        if batch is not None and batch.agent_id == agent_id and batch.installed_at is None:
            batch.installed_at = now
            self._total(app.org_id, "installs")  # the batch's first install, counted once
        return True

    def release_agent(self, agent_id: str, batch_id: str, *, offline: bool, now: float) -> bool:
        agent = self.agents.get(agent_id)
        if agent is None or agent.batch_id != batch_id:
            return False
        agent.status = AgentStatus.OFFLINE if offline else AgentStatus.IDLE
        agent.batch_id = None
        agent.batch_group = None
        agent.cancel_marks = frozenset()
        agent.batch_expected_free_at = None
        return True

    def renew_batch_free_at(self, agent_id: str, batch_id: str, free_at: float) -> bool:
        self._maybe_fail("renew_batch_free_at")
        agent = self.agents.get(agent_id)
        if agent is None or agent.batch_id != batch_id:
            return False
        agent.batch_expected_free_at = free_at
        return True

    def request_yield(self, agent_id: str, batch_id: str, now: float) -> bool:
        agent = self.agents.get(agent_id)
        if agent is None or agent.batch_id != batch_id:
            return False
        agent.yield_batch_id = batch_id
        return True

    def mark_agent_offline(self, agent_id: str, silent_since: float, now: float) -> bool:
        agent = self.agents.get(agent_id)
        if agent is None or agent.status is not AgentStatus.IDLE:
            return False
        if not agent.last_seen < silent_since or agent.batch_id is not None:
            return False
        agent.status = AgentStatus.OFFLINE
        return True

    def deregister_agent(self, agent_id: str, now: float) -> bool:
        agent = self.agents.get(agent_id)
        if agent is None or agent.batch_id is not None:
            return False
        agent.status = AgentStatus.OFFLINE
        return True

    # --------------------------------------------------------------- batches
    def commit_batch(self, batch: Batch, now: float) -> bool:
        if len(batch.job_ids) > MAX_BATCH_JOBS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_JOBS} jobs")
        if len(set(batch.job_ids)) != len(batch.job_ids):
            # DynamoDB rejects a transaction touching one item twice (ValidationException).
            raise ValueError("a batch names a job twice")
        self._maybe_fail("commit_batch")
        agent = self.agents.get(batch.agent_id)
        if (
            agent is None
            or agent.status is not AgentStatus.IDLE
            or agent.batch_id is not None
            or agent.drained_at is not None  # as the adapter: a drained agent gets no batch
        ):
            return False
        if batch.batch_id in self.batches:
            return False
        for job_id in batch.job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED or job_id not in self._backlog:
                return False
        if not self._runs_exist([self.jobs[j].run_id for j in batch.job_ids]):
            return False
        # Every precondition holds: apply all writes (all or nothing).
        agent.status = AgentStatus.BUSY
        agent.batch_id = batch.batch_id
        agent.batch_group = batch.group_key
        agent.batch_expected_free_at = batch.expected_end_at
        # As the adapter: the batch item keeps no rests (they are on its jobs).
        self.batches[batch.batch_id] = _copy(replace(batch, requeued=[], rests_s=[]))
        if batch.state is BatchState.ACTIVE:
            self._leased.add(batch.batch_id)
        rests = rests_by_job(batch)
        for job_id in batch.job_ids:
            job = self.jobs[job_id]
            self._move(job, JobStatus.ASSIGNED)
            job.status = JobStatus.ASSIGNED
            job.batch_id = batch.batch_id
            job.agent_id = batch.agent_id
            job.rest_of_batch_s = rests.get(job_id)
            job.updated_at = now
            del self._backlog[job_id]
        self._total(batch.org_id, "batches")
        # After the commit, as in the adapter: each distinct pair counted once.
        pair = (batch.org_id, batch.agent_id, batch.app_version_id, batch.target.value)
        if pair not in self._pairs:
            self._pairs.add(pair)
            self._total(batch.org_id, "agent_app_pairs")
        return True

    def commit_batches(self, batches: Sequence[Batch], now: float) -> list[Batch]:
        # Each batch on its own: what the adapter's shared transactions amount to.
        return [batch for batch in batches if self.commit_batch(batch, now)]

    def get_batch(self, batch_id: str) -> Batch | None:
        return _copy(self.batches.get(batch_id))

    def extend_lease(self, batch_id: str, agent_id: str, until: float) -> bool:
        batch = self.batches.get(batch_id)
        if batch is None or batch.state is not BatchState.ACTIVE or batch.agent_id != agent_id:
            return False
        if batch.lease_expires_at < until:
            batch.lease_expires_at = until
        # Not extended: fine if it is still ours and active (a longer lease already stands).
        return True

    def lapsed_batches(self, now: float) -> list[Batch]:
        lapsed = [self.batches[b] for b in self._leased if self.batches[b].lease_expires_at < now]
        lapsed.sort(key=lambda b: (b.lease_expires_at, b.batch_id))
        return [_copy(b) for b in lapsed]

    def time_out_job(self, job: Job, now: float) -> Job | None:
        stored = self.jobs.get(job.job_id)
        if stored is None or job.batch_id is None or job.started_at is None:
            return None
        if stored.status is not JobStatus.RUNNING or stored.batch_id != job.batch_id:
            return None
        if stored.started_at != job.started_at or not self._runs_exist([stored.run_id]):
            return None
        self._move(stored, JobStatus.TIMED_OUT)
        stored.status = JobStatus.TIMED_OUT
        stored.finished_at = now
        stored.updated_at = now
        stored.message = f"no result within timeout_s={job.timeout_s}"
        return _copy(stored)

    def expire_batch(self, batch_id: str, now: float) -> bool:
        batch = self.batches.get(batch_id)
        if batch is None or batch.state is not BatchState.ACTIVE:
            return False
        if not batch.lease_expires_at < now:
            return False
        batch.state = BatchState.EXPIRED
        return True

    def close_batch(self, batch: Batch, now: float) -> bool:
        stored = self.batches.get(batch.batch_id)
        if stored is None or stored.state is not batch.state:
            return False
        if batch.batch_id not in self._leased:
            return False
        stored.state = BatchState.DONE if batch.state is BatchState.ACTIVE else BatchState.EXPIRED
        stored.finished_at = now
        self._leased.discard(batch.batch_id)
        return True

    # --------------------------------------------------------------- metrics
    def org_metrics(self, org_id: str) -> OrgMetrics:
        totals = self.org_totals.get(org_id, Counter())
        return OrgMetrics(
            jobs_by_status=nonzero(self.org_jobs.get(org_id, Counter())),
            batches=totals["batches"],
            installs=totals["installs"],
            agent_app_pairs=totals["agent_app_pairs"],
        )


# -------------------------------------------------------------------- estimates
class MemoryEstimateStore:
    """A faithful in-memory EstimateStore: the same optimistic read-modify-write loop as
    the DynamoDB adapter, with a version check on ``samples`` before every write.

    ``error`` makes every call raise (an outage); ``before_write`` runs once just before
    the next conditional write, so a test can slip a concurrent writer in between.
    """

    UPDATE_ATTEMPTS = 4

    def __init__(self) -> None:
        self.tests: dict[EstimateKey, DurationEstimate] = {}
        self.installs: dict[Target, DurationEstimate] = {}
        self.error: BaseException | None = None
        self.before_write: Callable[[], None] | None = None
        self.reads = 0
        self.writes = 0

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def test_estimates(self, keys: Sequence[EstimateKey]) -> dict[EstimateKey, DurationEstimate]:
        self._check()
        self.reads += 1
        return {k: self.tests[k] for k in keys if k in self.tests}

    def install_estimates(self, targets: Sequence[Target]) -> dict[Target, DurationEstimate]:
        self._check()
        self.reads += 1
        return {t: self.installs[t] for t in targets if t in self.installs}

    def record_test_duration(
        self, key: EstimateKey, sample_id: str, duration_s: float, now: float
    ) -> bool:
        return self._record(self.tests, key, sample_id, duration_s)

    def record_install_duration(
        self, target: Target, sample_id: str, duration_s: float, now: float
    ) -> bool:
        return self._record(self.installs, target, sample_id, duration_s)

    def _record(
        self, table: dict[Any, DurationEstimate], key: Any, sample_id: str, duration_s: float
    ) -> bool:
        self._check()
        for _ in range(self.UPDATE_ATTEMPTS):
            current = table.get(key)
            before = current or DurationEstimate()
            after = before.updated(duration_s, sample_id)
            if after is before:
                return False
            hook, self.before_write = self.before_write, None
            if hook is not None:
                hook()
            stored = table.get(key)
            seen = None if current is None else current.samples
            if (None if stored is None else stored.samples) != seen:
                continue  # the condition failed: someone wrote in between
            table[key] = after
            self.writes += 1
            return True
        raise EstimateConflict(f"estimate {key}: still changing")


# ------------------------------------------------------------------ other ports
class CountingStore(MemoryStateStore):
    """The memory store, counting every port call made while ``counting`` is on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.counting = False

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if not name.startswith("_") and callable(value) and super().__getattribute__("counting"):
            super().__getattribute__("calls")[name] += 1
        return value


class MemoryJobQueue:
    """Records every job sent; can be told to fail (raise, or report some ids as failed)."""

    def __init__(self) -> None:
        self.sent: list[Job] = []
        self.plan_requests = 0
        self.messages_waiting = 0  # what depth() reports
        self.error: BaseException | None = None  # raised by every send while set
        # Jobs it matches are reported as failed (and not recorded as sent).
        self.failing: Callable[[Job], bool] = lambda job: False

    @property
    def sent_ids(self) -> list[str]:
        return [j.job_id for j in self.sent]

    def send(self, jobs: Sequence[Job]) -> list[str]:
        if self.error is not None:
            raise self.error
        failed = [j.job_id for j in jobs if self.failing(j)]
        self.sent.extend(_copy(j) for j in jobs if j.job_id not in failed)
        return failed

    def depth(self) -> int:
        return self.messages_waiting

    def request_plan(self) -> None:
        if self.error is not None:
            raise self.error
        self.plan_requests += 1


class MemoryArtifactStore:
    def __init__(self) -> None:
        self.objects: dict[str, str] = {}
        self.puts = 0

    def put_text(self, key: str, text: str) -> None:
        self.puts += 1
        self.objects[key] = text


class MemoryTokenStore:
    def __init__(self) -> None:
        self.records: dict[str, TokenRecord] = {}
        self.gets = 0

    def put(self, record: TokenRecord) -> bool:
        if record.token_hash in self.records:
            return False
        self.records[record.token_hash] = record
        return True

    def get(self, token_hash: str) -> TokenRecord | None:
        self.gets += 1
        return self.records.get(token_hash)

    def revoke(
        self, token_hash: str, now: float, replaced_by: str | None = None
    ) -> TokenRecord | None:
        record = self.records.get(token_hash)
        if record is None or record.revoked_at is not None:
            return None
        self.records[token_hash] = replace(record, revoked_at=now, replaced_by=replaced_by)
        return self.records[token_hash]


# ------------------------------------------------------------------------ wiring
def fake_config(**overrides: Any) -> Config:
    """A Config for the services; table and queue names are unused by the fakes."""
    names = {
        "jobs_table": "jobs",
        "runs_table": "runs",
        "agents_table": "agents",
        "batches_table": "batches",
        "tokens_table": "tokens",
        "estimates_table": "estimates",
        "jobs_queue_url": "memory://jobs.fifo",
        "artifacts_bucket": "artifacts",
    }
    return Config(**{**names, **overrides})


@dataclass
class MemoryServices:
    settings: Config
    clock: FakeClock
    store: MemoryStateStore
    queue: MemoryJobQueue
    artifacts: MemoryArtifactStore
    token_store: MemoryTokenStore
    estimate_store: MemoryEstimateStore
    tokens: TokenService
    submissions: SubmissionService
    dispatcher: DispatchService
    agents: AgentService
    reaper: ReaperService
    fleet: Principal = SHARED_FLEET
    vault_queue: MemoryVaultQueue | None = None
    org_settings_store: MemoryOrgSettingsStore | None = None
    org_settings: OrgSettingsService | None = None

    def __post_init__(self) -> None:
        self.as_agent = ActingAgents(self.agents, self.fleet, self.plan_pending)
        self._plans_done = 0

    def plan_pending(self) -> int:
        """What the dispatcher does with the plan requests queued since it last ran: one
        plan for all of them. Returns the number of batches committed."""
        if self.queue.plan_requests == self._plans_done:
            return 0
        self._plans_done = self.queue.plan_requests
        return len(self.dispatcher.plan())


def build_memory_services(
    settings: Config | None = None,
    clock: FakeClock | None = None,
    store: MemoryStateStore | None = None,
    vault_queue: MemoryVaultQueue | None = None,
    metrics: MetricsPort = NO_METRICS,
    org_settings_store: MemoryOrgSettingsStore | None = None,
) -> MemoryServices:
    """The real services over the in-memory fakes, through the production wiring."""
    settings = settings or fake_config()
    clock = clock or FakeClock()
    store = store or MemoryStateStore()
    queue = MemoryJobQueue()
    artifacts = MemoryArtifactStore()
    token_store = MemoryTokenStore()
    estimate_store = MemoryEstimateStore()
    services = assemble_services(
        settings,
        store=store,
        queue=queue,
        artifacts=artifacts,
        token_store=token_store,
        estimate_store=estimate_store,
        clock=clock,
        new_id=SequentialIds(),
        vault_queue=vault_queue,
        metrics=metrics,
        org_settings_store=org_settings_store,
    )
    return MemoryServices(
        settings=settings,
        clock=clock,
        store=store,
        queue=queue,
        artifacts=artifacts,
        token_store=token_store,
        estimate_store=estimate_store,
        tokens=services.tokens,
        submissions=services.submissions,
        dispatcher=services.dispatcher,
        agents=services.agents,
        reaper=services.reaper,
        vault_queue=vault_queue,
        org_settings_store=org_settings_store,
        org_settings=services.org_settings,
    )


class ActingAgents:
    """Drives the AgentService as each agent's latest registration would: calls name the
    agent id, and carry the credential its last ``register`` returned. Tests about who
    may call what use the AgentService and credentials directly."""

    def __init__(
        self, agents: AgentService, fleet: Principal, plan_pending: Callable[[], int]
    ) -> None:
        self._agents = agents
        self._fleet = fleet
        self._plan_pending = plan_pending
        self.credentials: dict[str, AgentCredential] = {}

    def register(
        self,
        target: Target,
        device_id: str,
        installed: AppRef | None,
        fleet: Principal | None = None,
    ) -> Agent:
        registration = self._agents.register(fleet or self._fleet, target, device_id, installed)
        parsed = parse_credential(registration.credential)
        assert parsed is not None
        self.credentials[registration.agent.agent_id] = AgentCredential(*parsed)
        return registration.agent

    def credential(self, agent_id: str) -> AgentCredential:
        # An agent never registered gets a credential that cannot match any registration.
        return self.credentials.get(agent_id) or AgentCredential(agent_id, "never-registered")

    def heartbeat(self, agent_id: str) -> Heartbeat:
        return self._agents.heartbeat(self.credential(agent_id))

    def lease(self, agent_id: str) -> LeasedBatch | None:
        """The dispatcher first handles the plan requests queued so far, as it would
        between an agent's wake-up and its lease."""
        self._plan_pending()
        return self._agents.lease(self.credential(agent_id))

    def record_install(self, agent_id: str, batch_id: str) -> None:
        self._agents.record_install(self.credential(agent_id), batch_id)

    def start(self, agent_id: str, job_id: str, batch_id: str) -> Job:
        return self._agents.start(self.credential(agent_id), job_id, batch_id)

    def report(
        self,
        agent_id: str,
        job_id: str,
        batch_id: str,
        status: JobStatus,
        duration_s: float,
        message: str | None,
        output: str | None,
    ) -> Job:
        return self._agents.report(
            self.credential(agent_id), job_id, batch_id, status, duration_s, message, output
        )

    def complete(self, agent_id: str, batch_id: str) -> int:
        return self._agents.complete(self.credential(agent_id), batch_id)

    def deregister(self, agent_id: str) -> int:
        return self._agents.deregister(self.credential(agent_id))


@dataclass
class PlanSpy:
    """Wraps the real planner and keeps every call's arguments and result: patch it in
    where a module looks ``plan_batches`` up to see what that caller passes."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self,
        backlog: Sequence[BacklogJob],
        agents: Sequence[IdleAgent],
        now: float,
        policy: PlanningPolicy,
        busy: Sequence[BusyAgent] = (),
        install_s: Mapping[str, float] | None = None,
    ) -> list[PlannedBatch]:
        backlog = list(backlog)
        result = plan_batches(backlog, agents, now, policy, busy=busy, install_s=install_s)
        self.calls.append(
            {
                "backlog": backlog,
                "agents": list(agents),
                "now": now,
                "policy": policy,
                "busy": list(busy),
                "install_s": None if install_s is None else dict(install_s),
                "result": result,
            }
        )
        return result


# ------------------------------------------------------------------ the results vault


class ScriptedResultsApi:
    """The ResultsApi port: answers from a script, one entry per call (the last repeats).

    An entry is a FetchedSession, or an exception to raise (ResultsApiUnreachable...).
    """

    def __init__(self, *script: FetchedSession | Exception) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, str, int]] = []

    def fetch_session(self, org_id: str, session_id: str, max_bytes: int) -> FetchedSession:
        self.calls.append((org_id, session_id, max_bytes))
        entry = self.script[min(len(self.calls), len(self.script)) - 1]
        if isinstance(entry, Exception):
            raise entry
        if entry.status == 200 and len(entry.body) > max_bytes:
            return FetchedSession(200, b"", entry.source, too_large=True, size=len(entry.body))
        return entry


class MemoryObjectStore:
    """The ObjectStore port in memory; ``fail_with`` makes every put raise it."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        self.fail_with: Exception | None = None

    def put_new(self, key: str, body: bytes, content_type: str) -> bool:
        self.puts += 1
        if self.fail_with is not None:
            raise self.fail_with
        if key in self.objects:
            return False
        self.objects[key] = bytes(body)
        return True

    def get(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def presigned_get(self, key: str, expires_s: int) -> str:
        return f"memory://{key}?expires={expires_s}"


class MemoryAuditStore:
    """The AuditStore port in memory, with the adapter's one-record-per-attempt rule."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], AuditRecord] = {}

    def put(self, record: AuditRecord) -> bool:
        key = (record.job_id, record.attempt)
        if key in self.records:
            return False
        self.records[key] = record
        return True

    def get(self, job_id: str, attempt: int) -> AuditRecord | None:
        return self.records.get((job_id, attempt))

    def for_job(self, job_id: str) -> list[AuditRecord]:
        return [r for (j, _), r in sorted(self.records.items()) if j == job_id]


class MemoryVaultQueue:
    """The VaultQueue port: keeps what was sent; ``fail_next`` makes sends raise."""

    def __init__(self) -> None:
        self.sent: list[VaultMessage] = []
        self.fail_next = 0

    def send(self, message: VaultMessage) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("vault queue unavailable")
        self.sent.append(message)


# ------------------------------------------------------------------------ builds
class MemoryBuildStore:
    """The BuildStore port in memory, with the adapter's conditions (version checks)."""

    def __init__(self) -> None:
        self.builds: dict[tuple[str, str], Any] = {}
        self.reads = 0

    def get_build(self, org_id: str, app_version_id: str) -> Any:
        self.reads += 1
        return self.builds.get((org_id, app_version_id))

    def save_build(self, build: Any, expected_version: int | None) -> bool:
        key = (build.org_id, build.app_version_id)
        current = self.builds.get(key)
        if expected_version is None and current is not None:
            return False
        if expected_version is not None and (
            current is None or current.version != expected_version
        ):
            return False
        self.builds[key] = build
        return True

    def list_builds(self, org_id: str, after: str | None, limit: int) -> Any:
        from qgjob_backend.ports import BuildPage

        versions = sorted(v for (org, v) in self.builds if org == org_id)
        if after is not None:
            versions = [v for v in versions if v > after]
        page = [self.builds[(org_id, v)] for v in versions[:limit]]
        return BuildPage(page, more=len(versions) > limit)


class MemoryUploadStore:
    """The UploadStore port in memory: ``put`` is what a client's presigned PUT does."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.heads = 0
        self.report_checksum = True  # S3 reports a SHA-256 only for uploads that sent one

    def put(self, key: str, body: bytes) -> None:
        self.objects[key] = body

    def presigned_put(
        self, key: str, size: int, sha256_b64: str, content_type: str, expires_s: int
    ) -> str:
        return f"memory://put/{key}?size={size}&sha256={sha256_b64}&expires={expires_s}"

    def presigned_get(self, key: str, expires_s: int) -> str:
        return f"memory://get/{key}?expires={expires_s}"

    def presigned_post(self, key_prefix: str, max_bytes: int, expires_s: int) -> Any:
        from qgjob_backend.ports import PresignedForm

        return PresignedForm(
            url="memory://post", fields={"key": key_prefix + "${filename}", "max": str(max_bytes)}
        )

    def head(self, key: str) -> Any:
        import base64
        import hashlib

        from qgjob_backend.ports import StoredObject

        self.heads += 1
        body = self.objects.get(key)
        if body is None:
            return None
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        return StoredObject(len(body), digest if self.report_checksum else None)


_legacy_runs = itertools.count(1)


def legacy_submit(svc: MemoryServices, tests: int = 3, *, send: bool = True) -> list[str]:
    """A run written the way qgjob wrote them before jobs went straight into their backlog:
    queued, not admitted, one jobs.fifo message per job (``send``). A stack upgraded with
    such jobs in flight still admits them (the dispatcher) and re-sends lost messages (the
    reaper); these tests keep that path honest."""
    now = svc.clock()
    run_id = f"run-legacy{next(_legacy_runs):04d}"
    job_ids = run_job_ids(run_id, tests)
    svc.store.create_run(
        Run(
            run_id=run_id,
            org_id="acme",
            app_version_id="v1",
            target=Target.EMULATOR,
            priority=5,
            job_ids=job_ids,
            fingerprint="legacy",
            created_at=now,
        )
    )
    jobs = [
        Job(
            job_id=job_id,
            run_id=run_id,
            org_id="acme",
            app_version_id="v1",
            target=Target.EMULATOR,
            test_path=f"tests/t{position}.spec.js",
            priority=5,
            status=JobStatus.QUEUED,
            created_at=now,
            updated_at=now,
            timeout_s=600,
            max_attempts=1,
            position=position,
        )
        for position, job_id in enumerate(job_ids)
    ]
    svc.store.create_jobs(jobs)
    if send:
        # As SubmissionService did: a failed send still accepts (the reaper re-sends).
        with contextlib.suppress(Exception):
            svc.queue.send(jobs)
    return job_ids


class MemoryPoolSnapshotStore:
    """The PoolSnapshotStore port in memory, with the adapter's write condition; counts
    its calls (``calls``) and can be told to fail (``fail``)."""

    def __init__(self) -> None:
        self.snapshots: dict[Target, PoolSnapshot] = {}
        self.calls: Counter[str] = Counter()
        self.fail = False

    def put_snapshot(self, snapshot: PoolSnapshot, min_interval_s: float) -> bool:
        self.calls["put_snapshot"] += 1
        if self.fail:
            raise RuntimeError("snapshot store down")
        stored = self.snapshots.get(snapshot.target)
        if stored is not None and stored.taken_at > snapshot.taken_at - min_interval_s:
            return False
        self.snapshots[snapshot.target] = snapshot
        return True

    def get_snapshot(self, target: Target) -> PoolSnapshot | None:
        self.calls["get_snapshot"] += 1
        if self.fail:
            raise RuntimeError("snapshot store down")
        return self.snapshots.get(target)


# ------------------------------------------------------------------ org settings
class MemoryOrgSettingsStore:
    """The OrgSettingsStore port in memory, with the adapter's version condition; counts
    its reads (``reads``, and ``eventual_reads`` of them not strongly consistent)."""

    def __init__(self) -> None:
        self.settings: dict[str, OrgSettings] = {}
        self.reads = 0
        self.eventual_reads = 0
        self.writes = 0
        # Runs once just before the next put (a concurrent writer), then is cleared.
        self.before_put: Callable[[], object] | None = None

    def get(self, org_id: str, *, consistent: bool = True) -> OrgSettings | None:
        self.reads += 1
        self.eventual_reads += 0 if consistent else 1
        return self.settings.get(org_id)

    def put(self, settings: OrgSettings, expected_version: int | None) -> bool:
        if self.before_put is not None:
            hook, self.before_put = self.before_put, None
            hook()
        current = self.settings.get(settings.org_id)
        stored_version = None if current is None else current.version
        if stored_version != expected_version:
            return False
        self.writes += 1
        self.settings[settings.org_id] = settings
        return True
