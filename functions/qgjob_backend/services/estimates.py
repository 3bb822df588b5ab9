"""Duration estimates as the other services use them: advisory, never in the way.

The dispatcher reads test estimates at admission (stamped onto each job) and install
estimates when it plans; the agent service records a test's duration when its result is
accepted and an install's when it is first reported. Every failure here (DynamoDB
throttled or down, concurrent writers) is logged and swallowed: a missing or stale
estimate only makes a plan less good, while a failed report or admission would lose work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from aws_lambda_powertools import Logger

from qgjob_backend.domain.estimates import EstimateKey
from qgjob_backend.domain.models import Batch, Job
from qgjob_backend.ports import EstimateStore
from qgjob_backend.schema import JobStatus, Target

logger = Logger(child=True)

# Results whose duration says how long the test takes (not an infrastructure error, a
# cancel or a timeout, whose duration is cut short or meaningless).
MEASURED = frozenset({JobStatus.PASSED, JobStatus.FAILED})


# A test whose job was stamped with an estimate at admission has history: then only one
# result in WARM_SAMPLE_EVERY is recorded (a consistent read and a conditional write saved
# for the others), chosen by the job id so a replayed report makes the same choice. The
# chosen ones are an unbiased sample, and an EWMA of them tracks the test as well, only a
# few runs slower. A result much slower than the stamped estimate is always recorded, so
# a test that got slower is learnt at once (such results are rare for a steady test: the
# estimate is about its 93rd percentile, so they hardly bias the sample).
WARM_SAMPLE_EVERY = 4
ALWAYS_RECORD_ABOVE = 1.5  # x the stamped estimate


def estimate_key_of(job: Job) -> EstimateKey:
    return EstimateKey(job.org_id, job.target, job.test_path)


def worth_recording(job: Job, duration_s: float) -> bool:
    """Whether a warm test's result is recorded (always, for a test without history)."""
    if job.estimate_s is None:
        return True
    if duration_s > ALWAYS_RECORD_ABOVE * job.estimate_s:
        return True
    digest = hashlib.blake2b(job.job_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % WARM_SAMPLE_EVERY == 0


class EstimateService:
    def __init__(self, store: EstimateStore, default_install_s: Mapping[Target, float]) -> None:
        self._store = store
        self._default_install_s = dict(default_install_s)

    # --------------------------------------------------------------- reads
    def for_jobs(self, jobs: Sequence[Job]) -> dict[str, float]:
        """job id -> estimated seconds, for the jobs whose test has history (one read)."""
        if not jobs:
            return {}
        try:
            found = self._store.test_estimates([estimate_key_of(j) for j in jobs])
        except Exception:
            logger.warning("test estimates unavailable; planning without", exc_info=True)
            return {}
        estimates: dict[str, float] = {}
        for job in jobs:
            known = found.get(estimate_key_of(job))
            seconds = known.estimate_s if known is not None else None
            if seconds is not None:
                estimates[job.job_id] = seconds
        return estimates

    def install_seconds(self, target: Target) -> float:
        """The estimated install time on a target, or its configured default."""
        default = self._default_install_s.get(target, 120.0)
        try:
            known = self._store.install_estimates([target]).get(target)
        except Exception:
            logger.warning("install estimates unavailable; using the default", exc_info=True)
            return default
        seconds = known.estimate_s if known is not None else None
        return default if seconds is None else seconds

    # -------------------------------------------------------------- writes
    def record_test(self, job: Job) -> None:
        """Counts a finished job's duration (once per job, however often it is replayed;
        for a test with history, a sample of them: see WARM_SAMPLE_EVERY)."""
        if job.status not in MEASURED or job.duration_s is None:
            return
        if not worth_recording(job, job.duration_s):
            return
        try:
            self._store.record_test_duration(
                estimate_key_of(job), job.job_id, job.duration_s, job.finished_at or 0.0
            )
        except Exception:
            logger.warning(
                "test duration not recorded", extra={"job_id": job.job_id}, exc_info=True
            )

    def record_install(self, batch: Batch, installed_at: float) -> None:
        """Counts an install: from the batch's commit to the agent's report, at least 0."""
        seconds = max(0.0, installed_at - batch.created_at)
        try:
            self._store.record_install_duration(batch.target, batch.batch_id, seconds, installed_at)
        except Exception:
            logger.warning(
                "install duration not recorded", extra={"batch_id": batch.batch_id}, exc_info=True
            )
