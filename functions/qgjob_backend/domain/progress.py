"""Run progress and org metrics as counters, kept in the same writes as job transitions.

A run poll reads one item: the run, which carries one counter per *counted state*.
``assigned`` and ``running`` share the counter ``active``, so assigned -> running (the
agent's start, its hottest write) changes no counter and stays one plain conditional
update; every other transition moves a job between two counters and is written in one
transaction with its job's conditional update, so a replayed transition (whose condition
fails) changes no counter.

Org metrics use the same counters, spread over ``METRIC_SHARDS`` items per org (no hot
key); only the sum over an org's shards means anything.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping

from qgjob_backend.schema import JobStatus

ACTIVE = "active"
# Every counter a run (and an org's metrics) keeps, in reading order.
COUNTERS = (
    "queued",
    ACTIVE,
    "passed",
    "failed",
    "error",
    "cancelled",
    "timed_out",
)
FINAL_COUNTERS = frozenset({"passed", "failed", "error", "cancelled", "timed_out"})
# Not a state: jobs that passed after a failed try, counted (on the run) by the write that
# made them pass. Kept apart from ``counts`` (its jobs are in "passed" too).
FLAKY = "flaky"
# Org metric counters live in this many items per org, chosen by a hash of the subject of
# the write (a job id, a batch id): enough to spread a busy org's writes, few enough
# that /metrics sums them with one batch read.
METRIC_SHARDS = 8


def counter_of(status: JobStatus) -> str:
    """The counter a job in ``status`` is counted in."""
    if status in (JobStatus.ASSIGNED, JobStatus.RUNNING):
        return ACTIVE
    return status.value


def moved(before: JobStatus | None, after: JobStatus, jobs: int = 1) -> dict[str, int]:
    """What ``jobs`` jobs going from ``before`` (None: not written yet) to ``after`` add to
    each counter; empty when they stay in one counter."""
    added = counter_of(after)
    if before is None:
        return {added: jobs}
    taken = counter_of(before)
    if taken == added:
        return {}
    return {taken: -jobs, added: jobs}


def metric_shard(subject: str) -> int:
    """The org metrics shard a write about ``subject`` (a job or batch id) goes to."""
    return zlib.crc32(subject.encode("utf-8")) % METRIC_SHARDS


def run_job_id(run_id: str, position: int) -> str:
    """The id of the job at ``position`` of a run: derived, so the run item need not list
    its jobs (it stays small, and so do the counter writes and the polls that read it)."""
    digest = hashlib.sha256(f"{run_id}\x00{position}".encode()).hexdigest()
    return f"job-{digest[:20]}"


def run_job_ids(run_id: str, total: int) -> list[str]:
    return [run_job_id(run_id, position) for position in range(total)]


def nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    """The counters that count something, in reading order (unknown ones last)."""
    known = [c for c in COUNTERS if counts.get(c)]
    known += sorted(c for c in counts if c not in COUNTERS and counts.get(c))
    return {c: int(counts[c]) for c in known}


def finished(total: int, counts: Mapping[str, int]) -> bool:
    return sum(counts.get(c, 0) for c in FINAL_COUNTERS) >= total


def passed(total: int, counts: Mapping[str, int]) -> bool:
    return counts.get("passed", 0) >= total
