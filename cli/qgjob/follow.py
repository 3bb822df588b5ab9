"""Polling a run or a job until it finishes, with a deadline (CI must never hang)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qgjob.errors import ServerError, Unreachable
from qgjob.render import FINAL_STATUSES

Json = dict[str, Any]
MAX_CONSECUTIVE_FAILURES = 5


@dataclass(frozen=True)
class WaitOutcome:
    view: Json | None  # the last RunView / JobView seen
    finished: bool
    timed_out: bool


def run_done(view: Json) -> bool:
    return bool(view.get("finished"))


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
) -> WaitOutcome:
    """Calls `fetch()` every `poll_interval` s until `done(view)` or `wait_timeout` s passed.

    Network errors and 5xx are tolerated up to `max_consecutive_failures` in a row
    (the client already retried each one); other API errors propagate at once.
    """
    started = clock()
    deadline = started + wait_timeout
    failures = 0
    last: Json | None = None
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
            if on_view is not None:
                on_view(view, clock() - started)
            if done(view):
                return WaitOutcome(view, finished=True, timed_out=False)
        remaining = deadline - clock()
        if remaining <= 0:
            return WaitOutcome(last, finished=False, timed_out=True)
        sleep(min(poll_interval, remaining))
