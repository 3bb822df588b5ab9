"""When a running batch is expected to end, renewed from its agent's test starts.

At commit an agent is expected free at the commit time plus its batch's estimate (the
install when required, then the tests). Tests run longer or shorter than estimated. A
planner that keeps the commit's figure counts a late batch's agent as free now: it
leaves the rest of that agent's group to it while the other agents of the pool idle, and
the group's tail ends late on that one agent. So each job carries, from its commit,
``rest_of_batch_s``: its batch's estimated work from this job's start to the batch's end
(this test and those after it). At each start the agent's expected free time is renewed
to the start plus that rest, and written only when it moved by more than
``PROGRESS_DRIFT_S``: a write per drift, not one per test.

Pure: the agents service (on a start) and the simulator's policy (on each plan) share it.
"""

from __future__ import annotations

from collections.abc import Sequence

# A renewed expected free time is written only when it differs from the stored one by
# more than this. Renewing at every start (0 s) gains a little more makespan on the
# held-out traces but costs a write per test; 60 s and 120 s are within noise of each
# other (bench/README.md, "Renewed batch ends").
PROGRESS_DRIFT_S = 60.0


def rests_of_batch(estimates_s: Sequence[float]) -> tuple[float, ...]:
    """For each job of a batch, in run order: its estimate plus those of the jobs after it."""
    rests: list[float] = []
    total = 0.0
    for estimate in reversed(estimates_s):
        total += estimate
        rests.append(total)
    return tuple(reversed(rests))


def renewed_free_at(
    stored_free_at: float | None,
    started_at: float,
    rest_of_batch_s: float | None,
    drift_s: float = PROGRESS_DRIFT_S,
) -> float | None:
    """The expected free time to store when a job with ``rest_of_batch_s`` starts at
    ``started_at``, or None to keep the stored one (it is within ``drift_s``, or the job
    carries no rest: it was committed before batches carried them)."""
    if rest_of_batch_s is None:
        return None
    fresh = started_at + rest_of_batch_s
    if stored_free_at is not None and abs(fresh - stored_free_at) <= drift_s:
        return None
    return fresh
