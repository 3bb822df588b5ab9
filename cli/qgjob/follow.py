"""Polling a run or a job until it finishes, with a deadline (CI must never hang).

Polls back off: the first waits ``poll_interval``, each next one ``backoff`` times longer
while nothing changes, up to ``max_poll_interval``; a change of progress (a run's counts,
a job's status) brings the interval back to ``poll_interval``. A 20-minute suite is then
polled about 60 times instead of 600, and a result is still seen within seconds of the
last change of pace.
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


@dataclass(frozen=True)
class WaitOutcome:
    view: Json | None  # the last RunView / JobView seen
    finished: bool
    timed_out: bool


def run_done(view: Json) -> bool:
    return bool(view.get("finished"))


def run_progress(view: Json) -> object:
    """What changes when a run makes progress: its counts by state."""
    counts = view.get("counts")
    return sorted(counts.items()) if isinstance(counts, dict) else None


def job_progress(view: Json) -> object:
    return view.get("status")


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
    progress: Callable[[Json], object] | None = None,
) -> WaitOutcome:
    """Calls `fetch()` until `done(view)` or `wait_timeout` s passed, sleeping
    `poll_interval` s first, then `backoff` times longer after each poll that saw no
    change of `progress(view)`, up to `max_poll_interval` (None: never longer).

    Network errors and 5xx are tolerated up to `max_consecutive_failures` in a row
    (the client already retried each one); other API errors propagate at once.
    """
    started = clock()
    deadline = started + wait_timeout
    failures = 0
    last: Json | None = None
    longest = poll_interval if max_poll_interval is None else max(poll_interval, max_poll_interval)
    interval = poll_interval
    seen: list[object] = []  # the progress of the last view, once there is one
    while True:
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
            if progress is not None:
                now_at = progress(view)
                if seen and seen[0] != now_at:
                    interval = poll_interval  # it moved: look again soon
                seen[:] = [now_at]
            if on_view is not None:
                on_view(view, clock() - started)
            if done(view):
                return WaitOutcome(view, finished=True, timed_out=False)
        remaining = deadline - clock()
        if remaining <= 0:
            return WaitOutcome(last, finished=False, timed_out=True)
        sleep(min(interval, remaining))
        interval = min(interval * backoff, longest)
