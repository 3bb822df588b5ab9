"""The device agent: leases batches from qgjob, installs the app once, runs and reports tests.

One agent drives one device slot. Its loop:

    register -> loop { lease; if a batch: install when needed;
                       for each job: progress (start it, with the previous job's result
                       and the install when unsent), run it;
                       progress (the last result, and complete the batch)
                       else wait: until a push, or the server's wait_s (push channel
                       connected), or poll_seconds (no push channel) }

- When the register answer has a `push_url`, a background thread keeps a WebSocket
  connection to it (`qgjob.push`): the dispatcher pushes each new batch's id, and the
  idle agent leases at once instead of polling. Connected, it leases anyway after the
  lease answer's `wait_s` (else the register answer's `idle_poll_seconds`): the safety
  poll, which is also its only sign of life while idle.
- A background thread heartbeats every `heartbeat_seconds` (from the register answer)
  while a batch is held, and never while idle (so an idle agent costs nothing but its
  safety poll).
- One `POST .../batches/{b}/progress` per test carries what is unsent (the install, the
  previous result) and the next start; the batch's end sends the last result with the
  completion (or without it when stopping: deregister hands the batch back). A result or
  start answered "not accepted" (or a 409 for the whole call) means the lease was lost:
  the batch stops at once and the job is not reported (or its report was rejected); the
  server requeues or has already reassigned the work.
- A 409 on a heartbeat also means the lease was lost: the runner is asked to stop the
  current test at its next check and the batch stops.
- A 404 on heartbeat or lease means qgjob forgot the agent: it registers again.
- `yield_requested` in a heartbeat or progress answer (the dispatcher needs this agent
  for priority-1 work): the batch ends at the next test boundary as on SIGTERM (the
  current test runs to its end and is reported; a test whose start was answered so is
  not run), but the agent completes the batch, which hands the rest back counting no
  attempt, and leases again.
- Network errors and 5xx are logged and retried with backoff, so the agent survives a
  backend restart.
- `stop()` (called from the SIGTERM/SIGINT handlers) lets the current test run to its
  end and reports it, then deregisters, which hands the batch back (the server requeues
  the jobs not run), and makes `run()` return 0.
- A second `stop()` means "stop now": the runner is asked to stop the current test at its
  next check; an interrupted test is not reported (it was not a real outcome, so no retry
  is spent on it): the agent deregisters (the server requeues that job too) and `run()`
  returns 0. A test that ends before the runner sees the request
  is reported as usual.
- Installs happen whenever the server asks for one and whenever this process has not
  installed the batch's app itself (after a restart the device may have been wiped).

This module does not import `requests`: the API is any object with the `AgentApi` methods.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from qgjob.agent_protocol import (
    MAX_MESSAGE_CHARS,
    MAX_OUTPUT_CHARS,
    MAX_PROGRESS_RESULTS,
    AgentView,
    BatchJob,
    BatchView,
    LeaseResponse,
    ProgressItem,
    ProgressRequest,
    ProgressResponse,
    ProgressResult,
    agent_id_for,
)
from qgjob.build_protocol import ArtifactUploadForm, BuildDownload
from qgjob.errors import (
    EXIT_INFRA,
    EXIT_OK,
    EXIT_USAGE,
    ApiError,
    AuthError,
    Conflict,
    InvalidInput,
    NotFound,
    ServerError,
    Unreachable,
)
from qgjob.push import PushChannel, PushFactory, open_push_channel
from qgjob.runners.base import InstallError, Runner, RunOutcome, truncate_output

if TYPE_CHECKING:
    from qgjob.builds import BuildCache

Json = dict[str, Any]
T = TypeVar("T")

DEFAULT_HEARTBEAT_S = 30.0
# A connected idle agent's safety poll when neither the lease nor register answer says.
DEFAULT_IDLE_POLL_S = 300.0
DEFAULT_JOB_TIMEOUT_S = 1800.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
ATTEMPTS_WHILE_STOPPING = 3


class AgentApi(Protocol):
    """The agent endpoints of the qgjob API (implemented by `qgjob.client.ApiClient`)."""

    def register(
        self, target: str, device_id: str, installed: Mapping[str, str] | None = None
    ) -> AgentView: ...

    def use_credential(self, credential: str | None) -> None: ...

    # Sent as X-Correlation-Id with every call while set (None: not sent).
    correlation_id: str | None

    def heartbeat(self, agent_id: str) -> Json: ...

    def lease(self, agent_id: str) -> LeaseResponse: ...

    def installed(self, agent_id: str, batch_id: str) -> Json: ...

    def start_job(self, agent_id: str, job_id: str, batch_id: str) -> Json: ...

    def report_result(
        self,
        agent_id: str,
        job_id: str,
        batch_id: str,
        status: str,
        duration_s: float,
        message: str | None = None,
        output: str | None = None,
    ) -> Json: ...

    def progress(
        self, agent_id: str, batch_id: str, request: ProgressRequest
    ) -> ProgressResponse: ...

    def complete_batch(self, agent_id: str, batch_id: str) -> Json: ...

    def deregister(self, agent_id: str) -> Json: ...


class Journal:
    """Appends one JSON line per event to a file (tests use it to prove exactly-once).

    Each line: {"event": "install"|"start"|"result"|"lease_lost", "agent_id", "batch_id",
    "job_id", "status", "accepted", "ts"}. Lines are written with one append each, so
    several agents may share a journal file.
    """

    EVENTS = frozenset({"install", "start", "result", "lease_lost"})

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()

    def record(
        self,
        event: str,
        *,
        agent_id: str,
        batch_id: str | None,
        job_id: str | None = None,
        status: str | None = None,
        accepted: bool,
    ) -> None:
        if event not in self.EVENTS:
            raise ValueError(f"unknown journal event {event!r}")
        line = json.dumps(
            {
                "event": event,
                "agent_id": agent_id,
                "batch_id": batch_id,
                "job_id": job_id,
                "status": status,
                "accepted": accepted,
                "ts": self._clock(),
            },
            sort_keys=True,
        )
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class _LeaseLost(Exception):
    """The server took the batch away; stop it without reporting anything more."""


class _StoppedNow(Exception):
    """A second stop request interrupted the current test; it is not reported."""


class _Yielded(Exception):
    """The batch was asked to yield just as a test started: that test is not run either."""


class _Fatal(Exception):
    """The agent cannot go on (bad token, rejected registration)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _refused_all(request: ProgressRequest, reason: str) -> ProgressResponse:
    """The answer a refused progress call stands for: no step applied."""
    return ProgressResponse(
        installed=False if request.installed else None,
        results=[
            ProgressItem(job_id=r.job_id, accepted=False, message=reason) for r in request.results
        ],
        started=(
            ProgressItem(job_id=request.start, accepted=False, message=reason)
            if request.start is not None
            else None
        ),
        completed=False if request.complete else None,
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


STOP_CHECK_S = 0.1


class Agent:
    """Runs batches on one device until stopped (or until `max_batches` batches are done)."""

    def __init__(
        self,
        api: AgentApi,
        runner: Runner,
        target: str,
        device_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        heartbeat_interval: float | None = None,
        heartbeat: bool = True,
        heartbeat_api: AgentApi | None = None,
        journal: Journal | None = None,
        poll_seconds: float = 1.0,
        max_batches: int | None = None,
        log: Callable[[str], None] = _stderr,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
        push: PushFactory | None = open_push_channel,
        build_cache: BuildCache | None = None,
        report_every_s: float = 0.0,
    ) -> None:
        self.api = api
        self.runner = runner
        self.target = target
        self.device_id = device_id
        self.agent_id = agent_id_for(target, device_id)  # until register says otherwise
        self.installed_app: tuple[str, str] | None = None
        self.batches_done = 0
        self.current_batch_id: str | None = None
        self._correlation: dict[str, str] = {}  # job id -> correlation id, this batch's
        self.heartbeat_interval = heartbeat_interval
        self._clock = clock
        self._sleep = sleep
        self._heartbeat_enabled = heartbeat
        self._heartbeat_api = heartbeat_api or api
        self._journal = journal
        self._poll_seconds = poll_seconds
        self._max_batches = max_batches
        self._log = log
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        # Plain flags, not Events: a signal handler runs on the main thread, which may
        # already hold an Event's internal lock inside wait(); setting it there deadlocks.
        self._stop_requested = False  # first stop: finish the current test, then exit
        self._stop_now = False  # second stop: interrupt the current test too
        self._stop_logged = False
        self._stop_now_logged = False
        self._test_interrupted = False  # the runner was told to stop for a stop request
        self._heartbeat_stop = threading.Event()
        self._batch_lost = threading.Event()
        self._needs_register = True
        self._push_factory = push  # None: never use a push channel, poll
        self._push: PushChannel | None = None
        self._idle_poll_s: float | None = None  # from the register answer
        self._idle_mode = ""  # how the agent last waited while idle (logged on change)
        # What the agent has to tell about its batch and sends with its next call: the
        # install, and results (with the test path, for the log line once accepted).
        self._unsent_install = False
        self._unsent_results: list[tuple[ProgressResult, str]] = []
        # Tests that start within report_every_s of the last progress call are not told
        # one by one: their results (and the next start) go in one later call (0: every
        # test is told as it starts).
        self._report_every_s = max(0.0, report_every_s)
        self._last_progress_at: float | None = None
        # The test running untold (job, batch, since when): a heartbeat tells its start
        # once it has run report_every_s, so qgjob's own timeout covers a long test too.
        self._untold: tuple[str, str, float] | None = None
        # Builds by sha256 on this host (None: no downloads; the runner finds the app).
        self._build_cache = build_cache
        self.installed_sha256: str | None = None  # the build this process installed
        self._artifact_form: ArtifactUploadForm | None = None  # the batch's, for attachments
        # Jobs of the current batch that were cancelled (told by a heartbeat or a progress
        # answer): the running one is stopped, the others are skipped, none is reported.
        self._cancelled: set[str] = set()
        self.current_job_id: str | None = None
        # The batch qgjob asked to yield to urgent work (told by a heartbeat or a progress
        # answer): it ends after the current test and the rest goes back, as on SIGTERM,
        # but the agent completes it and leases again.
        self._yield_batch: str | None = None

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """First call: finish and report the current test, then exit. Second call: stop now
        (the runner interrupts the current test, which is not reported).

        Safe in a signal handler: it only sets plain attributes (no locks).
        """
        if self._stop_requested:
            self._stop_now = True
        self._stop_requested = True

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def run(self) -> int:
        """Runs until stopped; returns the process exit code (0 on a clean stop)."""
        try:
            if not self._register_until_ok():
                return EXIT_OK
            heartbeat = self._start_heartbeat()
            try:
                self._loop()
            finally:
                self._heartbeat_stop.set()
                self._close_push()
                if heartbeat is not None:
                    heartbeat.join(timeout=5.0)
        except _Fatal as fatal:
            self.log(f"giving up: {fatal}")
            return fatal.exit_code
        self._deregister()
        return EXIT_OK

    def log(self, message: str) -> None:
        self._log(f"agent {self.agent_id}: {message}")

    def _correlation_ids(self, job_ids: Iterable[str]) -> str | None:
        ids = dict.fromkeys(self._correlation[j] for j in job_ids if j in self._correlation)
        return ",".join(ids) or None

    def _tag(self, *job_ids: str) -> str:
        """`` [<correlation ids>]`` of these jobs, for a log line about them."""
        ids = self._correlation_ids(job_ids)
        return f" [{ids}]" if ids else ""

    def _correlate(self, *job_ids: str) -> None:
        """The next calls (and the heartbeats meanwhile) are about these jobs."""
        ids = self._correlation_ids(job_ids)
        self.api.correlation_id = ids
        if self._heartbeat_api is not self.api:
            self._heartbeat_api.correlation_id = ids

    # ------------------------------------------------------------------ registration

    def _register_until_ok(self) -> bool:
        failures = 0
        while not self.stopping:
            try:
                self._register()
                return True
            except (Unreachable, ServerError) as error:
                failures += 1
                self._wait_after_failure(f"register failed: {error}", failures)
        return False

    def _register(self) -> None:
        installed = None
        if self.installed_app is not None:
            installed = {"org_id": self.installed_app[0], "app_version_id": self.installed_app[1]}
        try:
            answer = self.api.register(self.target, self.device_id, installed)
        except AuthError as error:
            raise _Fatal(f"registration refused: {error} (check --token)", EXIT_INFRA) from None
        except InvalidInput as error:
            raise _Fatal(f"registration rejected: {error}", EXIT_USAGE) from None
        if not answer.credential:
            raise _Fatal("registration answer carries no agent credential", EXIT_INFRA)
        self.agent_id = answer.agent_id
        self.api.use_credential(answer.credential)
        if self._heartbeat_api is not self.api:
            self._heartbeat_api.use_credential(answer.credential)
        if self.heartbeat_interval is None and answer.heartbeat_seconds > 0:
            self.heartbeat_interval = answer.heartbeat_seconds
        self._needs_register = False
        self._idle_poll_s = answer.idle_poll_seconds
        self._open_push(answer.push_url, answer.credential)
        lab = f", lab of org {answer.lab_org_id}" if answer.lab_org_id else ""
        self.log(
            f"registered (lease {answer.lease_seconds:.3g}s{lab}, "
            f"heartbeat {self.heartbeat_interval or DEFAULT_HEARTBEAT_S:.3g}s, "
            f"installed {self._app_label(self.installed_app)})"
        )

    def _open_push(self, url: str | None, credential: str) -> None:
        """A connection for this registration (a new credential needs a new connection)."""
        self._close_push()
        if url and self._push_factory is not None:
            self._push = self._push_factory(url, credential, self.log)
            self._push.start()

    def _close_push(self) -> None:
        if self._push is not None:
            self._push.stop()
            self._push = None

    def _deregister(self) -> None:
        try:
            answer = self._call(
                lambda: self.api.deregister(self.agent_id), "deregister", limit=True
            )
            self.log(f"deregistered (requeued {answer.get('requeued', 0)})")
        except ApiError as error:
            self.log(f"deregister failed: {error}")

    # ------------------------------------------------------------------ heartbeat

    def _start_heartbeat(self) -> threading.Thread | None:
        if not self._heartbeat_enabled:
            return None
        thread = threading.Thread(
            target=self._heartbeat_loop, name=f"heartbeat-{self.agent_id}", daemon=True
        )
        thread.start()
        return thread

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self.heartbeat_interval or DEFAULT_HEARTBEAT_S):
            if self.current_batch_id is not None:  # idle: the safety poll is the sign of life
                self.heartbeat_once()

    def heartbeat_once(self) -> None:
        """One heartbeat. A 404 makes the main loop register again before its next lease;
        a 409 (lease lost) stops the current batch at the runner's next check."""
        batch_id = self.current_batch_id
        try:
            answer = self._heartbeat_api.heartbeat(self.agent_id)
            if batch_id is not None and batch_id == self.current_batch_id:
                self._note_cancelled(answer.get("cancelled_job_ids"))
                self._note_yield(batch_id, answer.get("yield_requested") is True)
                self._tell_long_untold_start()
        except Conflict as error:
            if batch_id is not None and batch_id == self.current_batch_id:
                self._batch_lost.set()
                self.log(f"heartbeat: lease of batch {batch_id} lost ({error}); stopping it")
            else:
                self.log(f"heartbeat: {error}")
        except NotFound:
            self._needs_register = True
            self.log("heartbeat: qgjob does not know this agent; registering again")
        except ApiError as error:
            self.log(f"heartbeat failed: {error}")
        except Exception as error:  # the thread must not die on a surprise
            self.log(f"heartbeat failed unexpectedly: {error!r}")

    def _tell_long_untold_start(self) -> None:
        """Tells the start of the test running untold once it has run report_every_s:
        qgjob then holds it as running, under its own timeout. Refused (it just ended, or
        the lease is gone): nothing to do, the main loop reports what it has."""
        untold = self._untold
        if untold is None or self._clock() - untold[2] < self._report_every_s:
            return
        job_id, batch_id, _ = untold
        if self._untold is untold:  # the main loop may have moved on to the next test
            self._untold = None
        try:
            self._heartbeat_api.start_job(self.agent_id, job_id, batch_id)
        except ApiError as error:
            self.log(f"start of {job_id} not told: {error}")

    # ------------------------------------------------------------------ main loop

    def _note_cancelled(self, job_ids: object) -> None:
        """Remembers the batch's cancelled jobs; the running one stops at the runner's next
        check (it kills the test's process group)."""
        if not isinstance(job_ids, list):
            return
        new = {j for j in job_ids if isinstance(j, str)} - self._cancelled
        if not new:
            return
        self._cancelled.update(new)
        current = self.current_job_id
        if current in new:
            self.log(f"job {current} was cancelled: stopping its test")

    def _note_yield(self, batch_id: str, requested: bool) -> None:
        """Remembers that qgjob asked the current batch to yield (logged once)."""
        if requested and self._yield_batch != batch_id and batch_id == self.current_batch_id:
            self._yield_batch = batch_id
            self.log(f"batch {batch_id}: asked to yield to urgent work after the current test")

    def _loop(self) -> None:
        failures = 0
        batch_ended = False
        wait_s: float | None = None  # the last empty lease's safety-poll period
        while not self._note_stop():
            if self._max_batches is not None and self.batches_done >= self._max_batches:
                self.log(f"done: {self.batches_done} batch(es) (--max-batches)")
                return
            if batch_ended and self._push is not None and self._push.connected:
                # Ending a batch is what makes the dispatcher plan for this agent; its next
                # batch is pushed once committed, so a lease now would nearly always come
                # back empty (measured: one lease in two, a request per batch). Wait for
                # the push (one that came already ends the wait), or the safety poll.
                self._wait_idle(wait_s)
                if self._note_stop():
                    return
            batch_ended = False
            try:
                if self._needs_register:
                    self._register()
                if self._push is not None:
                    self._push.clear()  # a push from now on means: lease again
                answer = self.api.lease(self.agent_id)
            except Conflict as error:
                # Another process registered this device: two agents must not share it.
                raise _Fatal(f"lease refused: {error}", EXIT_INFRA) from None
            except NotFound:
                failures += 1
                self._needs_register = True
                self._wait_after_failure("lease: qgjob does not know this agent", failures)
                continue
            except AuthError as error:
                raise _Fatal(f"lease refused: {error} (check --token)", EXIT_INFRA) from None
            except ApiError as error:
                failures += 1
                self._wait_after_failure(f"lease failed: {error}", failures)
                continue
            failures = 0
            if answer.wait_s is not None:  # only an empty lease answers one
                wait_s = answer.wait_s
            batch = answer.batch
            if batch is None:
                self._wait_idle(wait_s)
                continue
            try:
                self.run_batch(batch)
                batch_ended = True
            except _Fatal:
                raise
            except Exception as error:  # malformed data or a bug: log, keep serving
                self.log(f"batch failed unexpectedly: {error!r}")
                failures += 1
                self._wait(self._backoff(failures))
            self.batches_done += 1

    def _note_stop(self) -> bool:
        """True once a stop was requested; logs each stop request once (main thread only)."""
        if self._stop_requested and not self._stop_logged:
            self._stop_logged = True
            if not self._stop_now:
                self.log(
                    "stop requested: finishing the current test, if any "
                    "(stop again to interrupt it)"
                )
        if self._stop_now and not self._stop_now_logged:
            self._stop_now_logged = True
            self.log("stop requested again: stopping now")
        return self._stop_requested

    def run_batch(self, batch: BatchView) -> None:
        """Installs (when needed), runs and reports the batch's jobs, then completes it."""
        batch_id = batch.batch_id
        org_id = batch.org_id
        app_version_id = batch.app_version_id
        target = batch.target.value
        jobs = batch.jobs
        app = (org_id, app_version_id)
        # The server's install_required is not enough: after a restart it may resume a batch
        # whose app the previous process installed on a device that has been wiped since.
        build = batch.build
        need_install = (
            batch.install_required
            or self.installed_app != app
            # The version's build was replaced (--replace) since this process installed it.
            or (build is not None and self.installed_sha256 != build.sha256)
        )
        self._artifact_form = batch.artifacts
        # Each job's correlation id (its run's): on every line about it, and sent back
        # with the calls about it, so the API's log lines carry it too.
        self._correlation = {j.job_id: j.correlation_id for j in jobs if j.correlation_id}
        self.log(
            f"batch {batch_id} {org_id}/{app_version_id}/{target} {len(jobs)} jobs "
            f"({'install needed' if need_install else 'already installed'})"
            f"{self._tag(*(j.job_id for j in jobs))}"
        )
        self._batch_lost.clear()
        self._cancelled = set()
        self._yield_batch = None
        self._unsent_install = False
        self._unsent_results = []
        self._last_progress_at = None  # a batch's first start is always told
        self.current_batch_id = batch_id
        started = self._clock()
        ran = 0
        lost = False
        try:
            install_error: RunOutcome | None = None
            if need_install and not self.stopping:
                install_error = self._install(batch_id, org_id, app_version_id, target, build)
            for job in jobs:
                if self._note_stop():
                    self.log(f"batch {batch_id}: {len(jobs) - ran} job(s) left to be requeued")
                    break
                if self._batch_lost.is_set():
                    self._lease_lost(batch_id, None, "the heartbeat was refused")
                if self._yield_batch == batch_id:
                    self.log(f"batch {batch_id}: yielding: {len(jobs) - ran} job(s) handed back")
                    break
                if job.job_id in self._cancelled:
                    tag = self._tag(job.job_id)
                    self.log(f"job {job.job_id} {job.test_path} cancelled: skipped{tag}")
                    ran += 1
                    continue
                self._run_job(batch_id, org_id, app_version_id, target, job, install_error)
                ran += 1
        except _LeaseLost:
            lost = True
        except _StoppedNow:
            self.log(f"batch {batch_id}: {len(jobs) - ran} job(s) left to be requeued")
        except _Yielded:
            self.log(f"batch {batch_id}: yielding: {len(jobs) - ran} job(s) handed back")
        except AuthError as error:
            raise _Fatal(f"refused during batch {batch_id}: {error}", EXIT_INFRA) from None
        except ApiError as error:
            self.log(f"batch {batch_id}: giving up: {error}")
        finally:
            self.current_batch_id = None
            try:
                if not lost:
                    # The last result (and the completion, unless stopping: deregister
                    # hands the batch back) in one call; after a lost lease, complete alone.
                    lost = not self._flush(batch_id, ran, self._clock() - started)
                if lost:
                    self._correlate(*self._correlation)  # the completion: all its jobs
                    self._complete(batch_id, ran, self._clock() - started)
            finally:
                self._correlation = {}
                self._correlate()

    def _install(
        self,
        batch_id: str,
        org_id: str,
        app_version_id: str,
        target: str,
        build: BuildDownload | None = None,
    ) -> RunOutcome | None:
        """Installs the app (its build from the cache, downloaded once per sha256);
        when the install failed, returns the outcome each of the batch's tests gets (an
        error, not retryable when the runner says no retry can cure it)."""
        self.log(f"installing {org_id}/{app_version_id} on {target}")
        self.installed_app = None  # unknown while installing
        self.installed_sha256 = None
        try:
            app_path = self._fetch_build(build)
            if app_path is None:  # (a runner written before builds takes three arguments)
                self.runner.install(org_id, app_version_id, target)
            else:
                self.runner.install(org_id, app_version_id, target, app_path)
        except InstallError as error:
            retryable = getattr(error, "retryable", True)
            self.log(f"install failed{'' if retryable else ' (not retryable)'}: {error}")
            self._record("install", batch_id, status="failed", accepted=False)
            return RunOutcome("error", 0.0, f"install failed: {error}", retryable=retryable)
        self.installed_app = (org_id, app_version_id)
        self.installed_sha256 = build.sha256 if build is not None else None
        self._unsent_install = True  # told with the first start (or the completion)
        return None

    def _fetch_build(self, build: BuildDownload | None) -> str | None:
        """The build's path in the cache (downloaded and verified when not there yet)."""
        if build is None:
            self.log("no build uploaded for this app version: installing what the runner has")
            return None
        if self._build_cache is None:
            return None
        path, downloaded = self._build_cache.fetch(build)
        how = "downloaded" if downloaded else "from the cache"
        self.log(f"build {build.file_name} sha256 {build.sha256[:12]} {how}: {path}")
        return str(path)

    def _upload_attachments(self, job_id: str, outcome: RunOutcome) -> tuple[list[Any], str]:
        """Uploads the test's attachments; returns them and a note of what was left out."""
        if not outcome.attachments:
            return [], ""
        form = self._artifact_form
        if form is None:
            return [], f"\n[{len(outcome.attachments)} attachment(s) not uploaded: no form]"
        from qgjob.builds import upload_attachments  # requests: only with attachments

        try:
            uploaded, notes = upload_attachments(form, job_id, outcome.attachments)
        except Exception as error:  # an upload must never lose the result
            return [], f"\n[attachments not uploaded: {error!r}]"
        note = "".join(f"\n[{line}]" for line in notes)
        return uploaded, note

    def _run_job(
        self,
        batch_id: str,
        org_id: str,
        app_version_id: str,
        target: str,
        job: BatchJob,
        install_error: RunOutcome | None,
    ) -> None:
        job_id = job.job_id
        test_path = job.test_path
        timeout_s = float(job.timeout_s or DEFAULT_JOB_TIMEOUT_S)
        if self._start_untold():
            # Told later, with its result: the server holds it as assigned meanwhile.
            if job_id in self._cancelled:
                self.log(f"job {job_id} {test_path} cancelled: skipped{self._tag(job_id)}")
                return
            self._record("start", batch_id, job_id=job_id, status="untold", accepted=True)
            self._untold = (job_id, batch_id, self._clock())
        else:
            answer = self._progress(batch_id, start=job_id)
            started = answer.started
            if started is None or not started.accepted:
                self._record("start", batch_id, job_id=job_id, accepted=False)
                reason = started.message if started is not None else "no answer for the start"
                self._lease_lost(batch_id, job_id, f"job {job_id} not started: {reason}")
            cancelled = started is not None and started.status == "cancelled"
            if cancelled or job_id in self._cancelled:
                self.log(f"job {job_id} {test_path} cancelled: skipped{self._tag(job_id)}")
                return
            self._record("start", batch_id, job_id=job_id, status="running", accepted=True)
            if self._yield_batch == batch_id:
                # Told with this start's answer: at a test boundary already. Completing
                # the batch hands this job back too, counting no attempt (nothing ran).
                raise _Yielded(job_id)
        self.current_job_id = job_id
        self._test_interrupted = False
        if self._stop_now:
            self._test_interrupted = True  # stop now: do not even begin the test
            outcome = RunOutcome("error", 0.0, "interrupted: the agent is stopping")
        elif install_error is not None:
            outcome = install_error
        else:
            try:
                outcome = self.runner.run(
                    test_path,
                    target,
                    timeout_s,
                    self._should_stop_test,
                    org_id=org_id,
                    app_version_id=app_version_id,
                )
            except Exception as error:
                outcome = RunOutcome("error", 0.0, f"the runner crashed: {error!r}")
        self.current_job_id = None
        self._untold = None
        if job_id in self._cancelled:
            # Cancelled while it ran: qgjob has it as cancelled and applies no result.
            self.log(
                f"job {job_id} {test_path} cancelled after {outcome.duration_s:.2f}s: "
                f"its test was stopped; not reported{self._tag(job_id)}"
            )
            return
        if self._test_interrupted:
            # Not a real outcome: reporting it would spend one of the job's retries. The
            # batch is completed right away and the server requeues the job.
            self.log(
                f"job {job_id} {test_path} interrupted after {outcome.duration_s:.2f}s "
                f"(stop requested twice): not reported; qgjob requeues it{self._tag(job_id)}"
            )
            raise _StoppedNow(job_id)
        status = outcome.status
        message = outcome.message
        if status == "timed_out" and not message:
            message = f"timed out after {timeout_s:g}s"
        if message is not None and len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        artifacts, left_out = self._upload_attachments(job_id, outcome)
        text = outcome.output + left_out
        output = truncate_output(text, MAX_OUTPUT_CHARS) if text else None
        result = ProgressResult(
            job_id=job_id,
            status=status,  # type: ignore[arg-type]  # a runner's status is a ReportStatus
            duration_s=round(outcome.duration_s, 3),
            message=message,
            output=output,
            session_id=outcome.session_id,  # browserstack: the vault archives that session
            artifacts=artifacts,
            # Only an error can be final; a runner that says otherwise is not believed.
            retryable=outcome.retryable or status != "error",
        )
        # Reported with the next call: the next job's start, or the batch's end.
        self._unsent_results.append((result, test_path))

    def _start_untold(self) -> bool:
        """Whether the next test starts without a call: a call was made less than
        report_every_s ago, and what waits to be told still fits in one call."""
        if self._report_every_s <= 0 or self._last_progress_at is None:
            return False
        if self._unsent_install or self._stop_requested:
            return False
        if len(self._unsent_results) >= MAX_PROGRESS_RESULTS:
            return False
        return self._clock() - self._last_progress_at < self._report_every_s

    def _progress(
        self, batch_id: str, *, start: str | None = None, complete: bool = False
    ) -> ProgressResponse:
        """One call with what is unsent (install, results) plus ``start`` / ``complete``;
        journals and logs each answer, and raises _LeaseLost when a result or the
        install was refused (the start's answer is the caller's to judge)."""
        request = ProgressRequest(
            installed=self._unsent_install,
            results=[result for result, _ in self._unsent_results],
            start=start,
            complete=complete,
        )
        sent = list(self._unsent_results)
        # The call is about these jobs; a completion is about all the batch's.
        about = [result.job_id for result, _ in sent] + ([start] if start else [])
        self._correlate(*(self._correlation if complete else about))
        try:
            answer = self._call(
                lambda: self.api.progress(self.agent_id, batch_id, request), "progress"
            )
        except (Conflict, NotFound) as error:
            # The whole call was refused (the batch or the registration is gone).
            answer = _refused_all(request, str(error))
        self._unsent_install = False
        self._unsent_results = []
        self._last_progress_at = self._clock()
        self._note_cancelled(answer.cancelled_job_ids)
        self._note_yield(batch_id, answer.yield_requested)
        if request.installed:
            accepted = answer.installed is True
            self._record("install", batch_id, status="installed", accepted=accepted)
            if not accepted:
                self._lease_lost(batch_id, None, "install not recorded")
        answers = {item.job_id: item for item in answer.results}
        refused: str | None = None
        for result, test_path in sent:
            item = answers.get(result.job_id)
            status = result.status
            if item is None or not item.accepted:
                self._record(
                    "result", batch_id, job_id=result.job_id, status=status, accepted=False
                )
                self.log(
                    f"job {result.job_id} {status}: rejected: lease lost{self._tag(result.job_id)}"
                )
                if refused is None:
                    refused = (item.message if item else None) or "result not accepted"
                continue
            self._record("result", batch_id, job_id=result.job_id, status=status, accepted=True)
            message = result.message
            detail = f" ({message})" if message and status != "passed" else ""
            self.log(
                f"job {result.job_id} {test_path} {status} in {result.duration_s:.2f}s{detail}"
                f"{self._tag(result.job_id)}"
            )
        if refused is not None:
            self._lease_lost(batch_id, sent[0][0].job_id if sent else None, refused)
        return answer

    def _flush(self, batch_id: str, ran: int, seconds: float) -> bool:
        """Ends the batch: its unsent results and, unless stopping, its completion, in one
        call. False when a refusal there says the lease was lost (complete it alone)."""
        complete = not self._stop_requested
        if not complete and not self._unsent_results and not self._unsent_install:
            self.log(f"batch {batch_id}: {ran} job(s) in {seconds:.1f}s; handing back the rest")
            return True
        try:
            answer = self._progress(batch_id, complete=complete)
        except _LeaseLost:
            return False
        except AuthError as error:
            raise _Fatal(f"complete refused: {error}", EXIT_INFRA) from None
        except ApiError as error:
            self.log(f"batch {batch_id}: {'complete' if complete else 'report'} failed: {error}")
            return True
        if not complete:
            self.log(f"batch {batch_id}: {ran} job(s) in {seconds:.1f}s; handing back the rest")
        elif answer.completed:
            self.log(
                f"batch {batch_id} done: {ran} job(s) in {seconds:.1f}s, "
                f"requeued {answer.requeued or 0}"
            )
        else:
            self.log(f"batch {batch_id}: complete failed: the batch is no longer this agent's")
        return True

    def _should_stop_test(self) -> bool:
        """Asked by the runner during a test: True when the test must be interrupted.

        A first stop request lets the test run to its end; a second one interrupts it
        (and the outcome is then not reported). A lost lease interrupts it as well.
        """
        self._note_stop()
        if self._stop_now:
            self._test_interrupted = True
            return True
        if self.current_job_id is not None and self.current_job_id in self._cancelled:
            return True
        return self._batch_lost.is_set()

    def _lease_lost(self, batch_id: str, job_id: str | None, detail: str) -> None:
        self._record("lease_lost", batch_id, job_id=job_id, accepted=False)
        self.log(f"batch {batch_id}: lease lost ({detail}); stopping the batch")
        raise _LeaseLost(detail)

    def _complete(self, batch_id: str, ran: int, seconds: float) -> None:
        if self._stop_requested:
            # Deregister hands the batch back in the same call; completing first would
            # leave the agent idle for a moment, and the planner could give it new work.
            self.log(f"batch {batch_id}: {ran} job(s) in {seconds:.1f}s; handing back the rest")
            return
        try:
            answer = self._call(
                lambda: self.api.complete_batch(self.agent_id, batch_id), "complete", limit=True
            )
        except AuthError as error:
            raise _Fatal(f"complete refused: {error}", EXIT_INFRA) from None
        except ApiError as error:
            self.log(f"batch {batch_id}: complete failed: {error}")
            return
        self.log(
            f"batch {batch_id} done: {ran} job(s) in {seconds:.1f}s, "
            f"requeued {answer.get('requeued', 0)}"
        )

    # ------------------------------------------------------------------ helpers

    def _call(self, call: Callable[[], T], what: str, limit: bool = False) -> T:
        """`call()`, retried on network errors and 5xx (a few times only when stopping)."""
        failures = 0
        while True:
            try:
                return call()
            except (Unreachable, ServerError) as error:
                failures += 1
                if (limit or self.stopping) and failures >= ATTEMPTS_WHILE_STOPPING:
                    raise
                self._wait_after_failure(f"{what} failed: {error}", failures)

    def _record(
        self,
        event: str,
        batch_id: str,
        *,
        job_id: str | None = None,
        status: str | None = None,
        accepted: bool,
    ) -> None:
        if self._journal is not None:
            self._journal.record(
                event,
                agent_id=self.agent_id,
                batch_id=batch_id,
                job_id=job_id,
                status=status,
                accepted=accepted,
            )

    def _backoff(self, failures: int) -> float:
        return float(min(self._backoff_max, self._backoff_base * 2 ** max(failures - 1, 0)))

    def _wait_after_failure(self, message: str, failures: int) -> None:
        delay = self._backoff(failures)
        self.log(f"{message}; retrying in {delay:g}s")
        self._wait(delay)

    def _wait_idle(self, wait_s: float | None) -> None:
        """No batch: until a push arrives, else the safety poll; without a live push
        connection, poll_seconds as before (ended early when the connection comes up:
        the listener's connect wakes the agent, and it leases)."""
        push = self._push
        if push is None:
            self._wait(self._poll_seconds)
            return
        if push.connected:
            seconds = wait_s or self._idle_poll_s or DEFAULT_IDLE_POLL_S
            mode = f"idle: waiting for a push (leasing at least every {seconds:g}s)"
        else:
            seconds = self._poll_seconds
            mode = f"idle: no push connection; polling every {seconds:g}s"
        if mode != self._idle_mode:  # logged when it changes, not every wait
            self._idle_mode = mode
            self.log(mode)
        push.wait(seconds, fallback_s=self._poll_seconds, stop=lambda: self.stopping)

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
            return
        # Short slices so a stop request is seen within STOP_CHECK_S.
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(STOP_CHECK_S, remaining))

    @staticmethod
    def _app_label(app: tuple[str, str] | None) -> str:
        return f"{app[0]}/{app[1]}" if app else "nothing"
