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


def server_eta(view: Json) -> float | None:
    """The server's estimate of the seconds left (GET /runs/{id} queue.eta_seconds):
    from the tests' duration estimates and the queue ahead of the run."""
    queue = view.get("queue")
    if not isinstance(queue, dict):
        return None
    eta = queue.get("eta_seconds")
    return float(eta) if isinstance(eta, int | float) and eta >= 0 else None


def follow_eta(view: Json, elapsed: float) -> float | None:
    """Seconds left. Once some of the run's jobs are final and none of it waits behind
    other work, its own pace (measured) beats the server's estimate (from duration
    estimates, which for tests without history are a pessimistic default); while it
    waits behind others, or before any job is final, the server's, which knows the
    queue ahead."""
    if view.get("no_agent"):
        return None
    pace = run_eta(view, elapsed)
    queue = view.get("queue")
    ahead = queue.get("jobs_ahead") if isinstance(queue, dict) else None
    if pace is not None and not (isinstance(ahead, int) and ahead > 0):
        return pace
    eta = server_eta(view)
    return eta if eta is not None else pace


class LiveProgress:
    """A live status line on a terminal: drawn at each poll, and every ``tick_s`` while
    waiting for the next one (elapsed time counting up, the ETA counting down from the
    last answer). Off a terminal the caller prints one line per change instead.

    ``write`` gets raw text (carriage return, erase-line escape); ``width`` the terminal's
    columns, so a line never wraps (a wrapped line cannot be redrawn in place).
    """

    ERASE = "\x1b[K"

    def __init__(
        self,
        text: Callable[[Json, float, float | None], str],
        eta: Callable[[Json, float], float | None],
        write: Callable[[str], None],
        clock: Callable[[], float],
        width: Callable[[], int],
        tick_s: float = 1.0,
    ) -> None:
        self._text = text
        self._eta = eta
        self._write = write
        self._clock = clock
        self._width = width
        self._tick_s = tick_s
        self._view: Json | None = None
        self._seen_at = 0.0
        self._elapsed = 0.0
        self._estimate: float | None = None
        self._drawn = False

    def on_view(self, view: Json, elapsed: float) -> None:
        self._view, self._seen_at, self._elapsed = view, self._clock(), elapsed
        self._estimate = self._eta(view, elapsed)
        self.draw()

    def draw(self) -> None:
        if self._view is None:
            return
        since = max(0.0, self._clock() - self._seen_at)
        eta = None if self._estimate is None else max(0.0, self._estimate - since)
        line = self._text(self._view, self._elapsed + since, eta)
        limit = max(20, self._width() - 1)
        if len(line) > limit:
            line = line[: limit - 3] + "..."
        self._write("\r" + line + self.ERASE)
        self._drawn = True

    def sleeper(self, sleep: Callable[[float], object]) -> Callable[[float], None]:
        """``sleep`` in steps of at most ``tick_s``, redrawing after each."""

        def ticking(seconds: float) -> None:
            left = seconds
            while left > 1e-9:
                step = min(self._tick_s, left)
                sleep(step)
                left -= step
                self.draw()

        return ticking

    def interject(self, text: str) -> None:
        """A line of its own (a warning) without breaking the live line: it is drawn
        again below."""
        self._write("\r" + self.ERASE + text + "\n")
        self.draw()

    def close(self) -> None:
        """Ends the live line, so what is printed next starts on a line of its own."""
        if self._drawn:
            self._write("\n")
            self._drawn = False
