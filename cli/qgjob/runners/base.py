"""The runner interface: how an agent installs an app and runs one test."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

OutcomeStatus = Literal["passed", "failed", "error", "timed_out"]
OUTCOME_STATUSES: tuple[OutcomeStatus, ...] = ("passed", "failed", "error", "timed_out")

# The API accepts at most this much output per result; the head is dropped, the tail kept.
MAX_OUTPUT_BYTES = 64 * 1024
_TRUNCATED = "[... {n} earlier bytes truncated ...]\n"


class InstallError(Exception):
    """Installing the app on the device failed; the batch's tests cannot run.

    Each of the batch's jobs is reported as ``error``, which the server retries (on any
    agent) while the job has attempts left. ``retryable=False`` says no retry can cure
    it (BrowserStack refused the credentials): the jobs then end as ``error`` at once.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Attachment:
    """A file a test produced (screenshot, video, trace): uploaded as an artifact."""

    name: str
    path: str
    content_type: str


@dataclass(frozen=True)
class RunOutcome:
    """What one test run produced."""

    status: OutcomeStatus
    duration_s: float
    message: str | None = None
    output: str = ""
    # The BrowserStack App Automate session the test ran in (browserstack runner).
    session_id: str | None = None
    # Files to upload as the result's artifacts (the agent uploads them, bounded).
    attachments: tuple[Attachment, ...] = ()
    # False (only with status "error"): no retry can cure it, so the job ends as error
    # instead of going back to the queue (e.g. BrowserStack refused the credentials).
    retryable: bool = True


class UnsafeArgument(ValueError):
    """A value a runner refuses to put on a device host's command line."""


def check_runnable_path(test_path: str) -> str:
    """Returns `test_path`, or raises UnsafeArgument if it may leave the working tree.

    The API already rejects these paths; a runner checks again because it executes
    on a shared device host and must not trust the server (an older or a compromised
    one) to have done so.
    """
    if test_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", test_path):
        # Drive-relative "C:x" too: on Windows it resolves outside the working tree.
        raise UnsafeArgument(f"test path {test_path!r} is absolute")
    if ".." in re.split(r"[\\/]", test_path):
        raise UnsafeArgument(f"test path {test_path!r} has a '..' segment")
    if any(ord(ch) < 32 for ch in test_path):
        raise UnsafeArgument(f"test path {test_path!r} has a control character")
    return test_path


def refused(error: UnsafeArgument) -> RunOutcome:
    """The outcome of a test a runner refused to start.

    "failed", not "error": an "error" is retried on another agent, which would refuse
    the same path again; the job's own input is at fault, so it ends at once.
    """
    return RunOutcome("failed", 0.0, f"refused to run: {error}")


class Runner(Protocol):
    """Installs app versions on one device and runs tests on it.

    `install` raises `InstallError` when it fails. `run` never raises for a test
    problem: it returns an outcome; it should call `should_stop()` now and then and,
    when it returns True, stop the test and return status "error" (interrupted).
    `should_stop()` turns True only when the agent is asked to stop twice (a first stop
    lets the test finish) or lost its lease; an interrupted outcome is not reported.
    `org_id` / `app_version_id` name the app under test (the batch's); the build file is
    the `app_path` of the last `install` (the agent installs before a batch's first test
    whenever this process has not installed that build itself). A test path
    that is absolute or has a '..' segment is refused (see `refused`), never run.
    """

    def install(
        self, org_id: str, app_version_id: str, target: str, app_path: str | None = None
    ) -> None:
        """``app_path``: the batch's build in the agent's cache (verified against its
        sha256), None when the app version has no uploaded build."""

    def run(
        self,
        test_path: str,
        target: str,
        timeout_s: float,
        should_stop: Callable[[], bool],
        *,
        org_id: str = "",
        app_version_id: str = "",
    ) -> RunOutcome: ...


def truncate_output(text: str, limit: int = MAX_OUTPUT_BYTES) -> str:
    """Keeps the last `limit` bytes (UTF-8) of `text`, with a marker when cut."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    marker = _TRUNCATED.format(n=len(data))
    keep = limit - len(marker.encode("utf-8"))
    tail = data[len(data) - keep :].decode("utf-8", errors="ignore")
    return _TRUNCATED.format(n=len(data) - len(tail.encode("utf-8"))) + tail
