"""Polling a run or a job until it finishes, with a deadline (CI must never hang).

Polls back off: the first waits ``poll_interval``, each next one ``backoff`` times longer,
up to ``max_poll_interval``. A run's polls also follow its pace: once some of its jobs are
final, the time to finish is estimated from the rate so far, and when half of that is
sooner than the backoff's next wait the poll comes then (never sooner than
``poll_interval``), so the end of a run is seen within seconds while a long run is polled
rarely. Progress does
not reset the interval: a run whose counts move between every two polls was polled every
``poll_interval`` for its whole life that way (bench.fleet: 16 polls for a 30 s run; 6 now).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qgjob.errors import ServerError, Unreachable
from qgjob.render import FINAL_STATUSES

Json = dict[str, Any]
MAX_CONSECUTIVE_FAILURES = 5
DEFAULT_BACKOFF = 1.5
# qgjob submit --wait / status --wait: --poll-interval and --max-poll-interval.
DEFAULT_POLL_INTERVAL_S = 2.0
DEFAULT_MAX_POLL_INTERVAL_S = 30.0


@dataclass(frozen=True)
class WaitOutcome:
    view: Json | None  # the last RunView / JobView seen
    finished: bool
    timed_out: bool


def run_done(view: Json) -> bool:
    return bool(view.get("finished"))


def run_eta(view: Json, elapsed: float) -> float | None:
    """Seconds until the run should finish at its pace so far: its jobs not final, at the
    rate its final ones took. None before the first is final (no pace yet) or after."""
    counts = view.get("counts")
    if not isinstance(counts, dict):
        return None
    values = {str(k): v for k, v in counts.items() if isinstance(v, int) and v >= 0}
    final = sum(v for k, v in values.items() if k in FINAL_STATUSES)
    total = sum(values.values())
    if final <= 0 or final >= total or elapsed <= 0:
        return None
    return elapsed * (total - final) / final


def job_done(view: Json) -> bool:
    return view.get("status") in FINAL_STATUSES


def wait_until(
    fetch: Callable[[], Json],
    done: Callable[[Json], bool],
    *,
    poll_interval: float,
    wait_timeout: float,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    on_view: Callable[[Json, float], None] | None = None,
    on_failure: Callable[[Exception], None] | None = None,
    max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
    max_poll_interval: float | None = None,
    backoff: float = DEFAULT_BACKOFF,
    eta: Callable[[Json, float], float | None] | None = None,
) -> WaitOutcome:
    """Calls `fetch()` until `done(view)` or `wait_timeout` s passed, sleeping
    `poll_interval` s first, then `backoff` times longer after each poll, up to
    `max_poll_interval` (None: never longer); when `eta(view, elapsed)` estimates the
    time left, the next wait is at most half of it (and at least `poll_interval`).

    Network errors and 5xx are tolerated up to `max_consecutive_failures` in a row
    (the client already retried each one); other API errors propagate at once.
    """
    started = clock()
    deadline = started + wait_timeout
    failures = 0
    last: Json | None = None
    longest = poll_interval if max_poll_interval is None else max(poll_interval, max_poll_interval)
    interval = poll_interval
    while True:
        estimate: float | None = None
        try:
            view = fetch()
        except (Unreachable, ServerError) as error:
            failures += 1
            if failures >= max_consecutive_failures:
                raise
            if on_failure is not None:
                on_failure(error)
        else:
            failures = 0
            last = view
            if eta is not None:
                estimate = eta(view, clock() - started)
            if on_view is not None:
                on_view(view, clock() - started)
            if done(view):
                return WaitOutcome(view, finished=True, timed_out=False)
        remaining = deadline - clock()
        if remaining <= 0:
            return WaitOutcome(last, finished=False, timed_out=True)
        if estimate is not None:
            # Near its expected end, sooner: halfway to it (the pace only brings a poll
            # forward; the backoff goes on from there, so a stalled run is polled less).
            interval = min(interval, max(estimate / 2, poll_interval))
        sleep(min(interval, remaining))
        interval = min(interval * backoff, longest)
