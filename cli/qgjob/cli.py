"""The `qgjob` command line: submit tests, follow runs, read results, run device agents.

Heavy modules (requests, pydantic) are imported inside the commands so `qgjob --help`
starts fast. Exit codes: 0 passed / accepted, 1 a test failed, 2 bad usage or rejected
input, 3 infrastructure (unreachable, 5xx, auth, timed out waiting).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from qgjob import __version__, render
from qgjob.errors import (
    EXIT_INFRA,
    EXIT_OK,
    EXIT_TEST_FAILED,
    ApiError,
    ConfigError,
    QgjobError,
)
from qgjob.follow import DEFAULT_MAX_POLL_INTERVAL_S, DEFAULT_POLL_INTERVAL_S

if TYPE_CHECKING:
    from qgjob.client import ApiClient
    from qgjob.follow import WaitOutcome

ENDPOINT_ENV = "QGJOB_ENDPOINT_URL"
TOKEN_ENV = "QGJOB_TOKEN"  # noqa: S105 - the name of an env var
# The same values as qgjob.schema.Target (a unit test keeps them in step); spelled out
# here so `--help` does not need pydantic.
TARGETS = ("emulator", "device", "browserstack")
# schema.Overflow's values (the pools, and 'none': opt out of the org's default), kept here
# so that --help does not import pydantic; a test holds them equal to the schema's.
OVERFLOW_CHOICES = ("browserstack", "none")
DEFAULT_WAIT_TIMEOUT_S = 3600.0
MAX_JUNIT_OUTPUTS = 200
EXIT_INTERRUPTED = 130


@dataclass
class CliState:
    """Options shared by every command; tests pass one in (with a fake clock and sleep)."""

    endpoint_url: str | None = None
    token: str | None = None
    as_json: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] = time.sleep
    client_options: dict[str, Any] = field(default_factory=dict)
    # A followed run's progress as a live line (True) or a line per change (False);
    # None: live when stderr is a terminal.
    live: bool | None = None
    terminal_width: Callable[[], int] = lambda: shutil.get_terminal_size((100, 24)).columns

    def live_progress(self) -> bool:
        if self.as_json:
            return False
        if self.live is not None:
            return self.live
        return sys.stderr.isatty()

    def client(self, *, need_token: bool = True, **options: Any) -> ApiClient:
        if not self.endpoint_url:
            raise ConfigError(
                f"no qgjob endpoint: pass --endpoint-url URL or set {ENDPOINT_ENV} "
                "(the local stack prints its URL, e.g. http://127.0.0.1:PORT/v1)"
            )
        if need_token and not self.token:
            raise ConfigError(f"no token: pass --token TOKEN or set {TOKEN_ENV}")
        from qgjob.client import ApiClient

        settings: dict[str, Any] = {"sleep": self.sleep, **self.client_options, **options}
        try:
            return ApiClient(self.endpoint_url, self.token, **settings)
        except ValueError as error:
            raise ConfigError(f"--endpoint-url: {error}") from None


def _set_endpoint(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(CliState).endpoint_url = value


def _set_token(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(CliState).token = value


def _set_json(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(CliState).as_json = True


def _global_options() -> list[click.Option]:
    """`--endpoint-url`, `--token` and `--json` as a subcommand's own options too, so
    `qgjob submit --token T ...` works as `qgjob --token T submit ...` does (the env vars
    are read once, by the group)."""
    return [
        click.Option(
            ["--endpoint-url"],
            metavar="URL",
            expose_value=False,
            callback=_set_endpoint,
            help=f"qgjob API base URL, with the stage (…/v1) [env {ENDPOINT_ENV}].",
        ),
        click.Option(
            ["--token"],
            metavar="TOKEN",
            expose_value=False,
            callback=_set_token,
            help=f"Org token (fleet token for `qgjob agent`) [env {TOKEN_ENV}].",
        ),
        click.Option(
            ["--json"],
            is_flag=True,
            expose_value=False,
            callback=_set_json,
            help="Machine-readable JSON on stdout; errors on stderr.",
        ),
    ]


class QgjobGroup(click.Group):
    """Turns qgjob errors into one line on stderr and the matching exit code; gives each
    subcommand the global options too (nested groups, such as `qgjob app`, included)."""

    group_class = type  # `@cli.group()` makes a QgjobGroup too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            taken = {opt for param in cmd.params for opt in param.opts}
            cmd.params.extend(o for o in _global_options() if not set(o.opts) & taken)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QgjobError as error:
            click.echo(f"qgjob: error: {error}", err=True)
            ctx.exit(error.exit_code)


class Interrupted(QgjobError):
    exit_code = EXIT_INTERRUPTED


class NoAnswer(QgjobError):
    """--wait gave up without a single answer from qgjob (exit 3)."""

    exit_code = EXIT_INFRA


def _state(ctx: click.Context, as_json: bool = False) -> CliState:
    state = ctx.ensure_object(CliState)
    if as_json:
        state.as_json = True
    return state


def _emit(state: CliState, data: Any, text: str) -> None:
    if state.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text)


def _note(state: CliState, text: str) -> None:
    """A progress or hint line: stderr, human mode only."""
    if not state.as_json:
        click.echo(text, err=True)


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable JSON on stdout (same as qgjob --json).",
)
poll_option = click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_POLL_INTERVAL_S,
    show_default=True,
    metavar="S",
    help=(
        "Seconds before the first status poll with --wait. Each wait is 1.5x the last, up "
        "to --max-poll-interval; once a run's jobs finish, half its estimated time left "
        "(never under S), so its end is seen within seconds."
    ),
)
max_poll_option = click.option(
    "--max-poll-interval",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_MAX_POLL_INTERVAL_S,
    show_default=True,
    metavar="S",
    help="Longest wait between two status polls with --wait.",
)
wait_timeout_option = click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_WAIT_TIMEOUT_S,
    show_default=True,
    metavar="S",
    help="Give up waiting after this many seconds (exit 3); the run keeps going.",
)
fail_on_option = click.option(
    "--fail-on",
    type=click.Choice(("failure", "flaky", "never")),
    default="failure",
    show_default=True,
    help=(
        "With --wait: exit 1 when a test did not pass (failure), also when one passed only "
        "on a re-run (flaky), or never (exit 0 once the run finished)."
    ),
)
junit_option = click.option(
    "--junit",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="With --wait: write a JUnit XML report of the run to FILE.",
)


@click.group(
    cls=QgjobGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=f"""\b
Examples:
  # the API URL and a token: `make dev` prints the local stack's (random PORT)
  export {ENDPOINT_ENV}=http://127.0.0.1:PORT/v1 {TOKEN_ENV}=<org token>
  qgjob submit --org-id acme --app-version-id v1.4.2 --test tests/login.spec.ts --wait
  qgjob status --run-id <run id>
  qgjob --json result --job-id <job id>

\b
Exit codes: 0 passed / accepted, 1 a test failed, 2 bad usage or rejected input,
3 infrastructure (unreachable, auth, server error, timed out waiting).""",
)
@click.option(
    "--endpoint-url",
    envvar=ENDPOINT_ENV,
    metavar="URL",
    help=f"qgjob API base URL [env {ENDPOINT_ENV}].",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    metavar="TOKEN",
    help=f"Org token (agent token for `qgjob agent`) [env {TOKEN_ENV}].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout; errors on stderr."
)
@click.version_option(__version__, prog_name="qgjob")
@click.pass_context
def cli(ctx: click.Context, endpoint_url: str | None, token: str | None, as_json: bool) -> None:
    """Queue, group and run AppWright tests on emulators, devices and BrowserStack."""
    state = _state(ctx, as_json)
    if endpoint_url:
        state.endpoint_url = endpoint_url
    if token:
        state.token = token


# ---------------------------------------------------------------------- submit


@cli.command(
    epilog="""\b
Examples:
  qgjob submit --org-id acme --app-version-id v1.4.2 --test tests/login.spec.ts
  qgjob submit --org-id acme --app-version-id v1.4.2 --target device --priority 2 \\
      --test tests/login.spec.ts --test tests/checkout.spec.ts \\
      --wait --wait-timeout 1800 --junit report.xml
  qgjob submit --org-id acme --app-version-id v1.4.2 --test tests/login.spec.ts \\
      --overflow browserstack
  qgjob submit --org-id acme --app-version-id v1.4.2 --test tests/login.spec.ts \\
      --overflow none

\b
With --wait the exit code is 0 when every test passed, 1 when one failed, errored,
timed out or was cancelled, 3 when --wait-timeout passed first."""
)
@click.option("--org-id", required=True, metavar="ORG", help="Your organisation (the token's).")
@click.option("--app-version-id", required=True, metavar="V", help="App build under test.")
@click.option(
    "--test",
    "tests",
    required=True,
    multiple=True,
    metavar="PATH",
    help="Relative path of an AppWright spec; repeat for a suite.",
)
@click.option(
    "--priority",
    type=int,
    default=5,
    show_default=True,
    metavar="1..10",
    help="1 is the most urgent.",
)
@click.option("--target", type=click.Choice(TARGETS), default="emulator", show_default=True)
@click.option(
    "--overflow",
    type=click.Choice(OVERFLOW_CHOICES),
    help=(
        "browserstack: let waiting tests move to the browserstack pool when it would "
        "finish them sooner, counting its upload time and its own queue (emulator and "
        "device runs only). none: they never move. Default: your org's setting (an "
        "operator's; none unless set). `qgjob status` says which moved."
    ),
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Same key, same run: a retried submit never queues twice (default: a new UUID).",
)
@click.option(
    "--timeout-s", type=int, metavar="S", help="Longest one test may run [default: 1800]."
)
@click.option(
    "--retries",
    type=int,
    metavar="N",
    help=(
        "Re-run a failed test up to N times [default: 0]; a test that fails and then "
        "passes is flaky (it passes; see --fail-on)."
    ),
)
@click.option(
    "--infra-retries",
    type=int,
    metavar="N",
    help=(
        "Re-runs after an infrastructure error or a lost agent, on another agent when one "
        "is free [default: 2]; they never spend --retries."
    ),
)
@fail_on_option
@click.option("--wait", is_flag=True, help="Wait until every test finished; print a table.")
@click.option(
    "--cancel-on-timeout",
    is_flag=True,
    help="With --wait: cancel the run when --wait-timeout passes (default: it keeps going).",
)
@click.option(
    "--cancel-on-interrupt",
    is_flag=True,
    help=(
        "With --wait: Ctrl-C cancels the run without asking (default: ask on a terminal, "
        "leave the run going otherwise)."
    ),
)
@poll_option
@max_poll_option
@wait_timeout_option
@junit_option
@json_option
@click.pass_context
def submit(
    ctx: click.Context,
    org_id: str,
    app_version_id: str,
    tests: tuple[str, ...],
    priority: int,
    target: str,
    overflow: str | None,
    idempotency_key: str | None,
    timeout_s: int | None,
    retries: int | None,
    infra_retries: int | None,
    fail_on: str,
    wait: bool,
    cancel_on_timeout: bool,
    cancel_on_interrupt: bool,
    poll_interval: float,
    max_poll_interval: float,
    wait_timeout: float,
    junit: str | None,
    as_json: bool,
) -> None:
    """Submit one or more tests of an app version as a run; print the run and job ids."""
    state = _state(ctx, as_json)
    if junit and not wait:
        raise click.UsageError("--junit needs --wait (the report is written when the run ends)")
    if (cancel_on_timeout or cancel_on_interrupt) and not wait:
        raise click.UsageError("--cancel-on-timeout and --cancel-on-interrupt need --wait")
    fields: dict[str, Any] = {
        "org_id": org_id,
        "app_version_id": app_version_id,
        "target": target,
        "priority": priority,
        "test_paths": list(tests),
        "idempotency_key": idempotency_key or uuid.uuid4().hex,
    }
    if timeout_s is not None:
        fields["timeout_s"] = timeout_s
    if retries is not None:
        fields["failure_retries"] = retries
    if infra_retries is not None:
        fields["retries"] = infra_retries
    if overflow is not None:
        fields["overflow"] = overflow
    payload = _validated_suite(fields)
    client = state.client()
    answer = client.submit_run(payload)
    job_ids = answer.get("job_ids")
    if answer.get("job_id") is None and isinstance(job_ids, list) and len(job_ids) == 1:
        answer = {**answer, "job_id": job_ids[0]}  # one test: its job id, as POST /jobs
    run_id = str(answer.get("run_id"))
    if not wait:
        _emit(state, answer, render.submitted_text(answer, payload))
        return
    if not state.as_json:
        click.echo(render.submitted_text(answer, payload))
    polls = Polling(poll_interval, max_poll_interval, wait_timeout)
    _finish_run_wait(
        ctx,
        state,
        client,
        run_id,
        polls,
        junit,
        cancel_on_timeout=cancel_on_timeout,
        on_interrupt="cancel" if cancel_on_interrupt else "ask",
        fail_on=fail_on,
    )


# Submission fields whose option is not the field's name.
FIELD_OPTIONS = {"failure_retries": "--retries", "retries": "--infra-retries"}


def _as_option_problem(item: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    """Names the command-line option the user typed, not the JSON field behind it."""
    location = list(item.get("loc", ()))
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    if location and location[0] == "test_paths":
        if len(location) > 1 and isinstance(location[1], int):
            value = fields["test_paths"][location[1]]
            return f"--test {value!r}: {message}"
        return f"--test: {message}"
    name = str(location[0]) if location else "body"
    return f"{FIELD_OPTIONS.get(name, '--' + name.replace('_', '-'))}: {message}"


def _validated_suite(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /runs body, validated with the shared schema before anything is sent."""
    from pydantic import ValidationError

    from qgjob.schema import SuiteSubmission, describe_validation_error

    try:
        suite = SuiteSubmission(**fields)
    except ValidationError as error:
        problems = [_as_option_problem(item, fields) for item in error.errors()]
        detail = "; ".join(problems) or describe_validation_error(error)
        raise ConfigError(f"invalid submission: {detail}") from None
    body: dict[str, Any] = suite.model_dump(mode="json", exclude_unset=True)
    return body


# ---------------------------------------------------------------------- waiting


@dataclass(frozen=True)
class Polling:
    """--poll-interval, --max-poll-interval and --wait-timeout."""

    first: float
    longest: float
    timeout: float


def _wait_for(
    state: CliState,
    fetch: Callable[[], dict[str, Any]],
    done: Callable[[dict[str, Any]], bool],
    progress: Callable[[dict[str, Any], float], str],
    eta: Callable[[dict[str, Any], float], float | None] | None,
    polls: Polling,
    resume_hint: str,
    interrupted: Callable[[], str | None] | None = None,
    live_text: Callable[[dict[str, Any], float, float | None], str] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Polls until done; returns the last view and whether --wait-timeout passed first.

    Raises NoAnswer when not one poll got an answer before the deadline (e.g. with
    --wait-timeout 0 and a failing first fetch): there is nothing to print.
    """
    from qgjob.follow import LiveProgress, follow_eta, wait_until

    last_line: list[str] = []
    failures: list[Exception] = []
    live = None
    sleep = state.sleep
    if live_text is not None and state.live_progress():
        live = LiveProgress(
            live_text,
            follow_eta,
            # color=True: click strips escapes it takes for styling; the line needs its own.
            lambda text: click.echo(text, err=True, nl=False, color=True),
            state.clock,
            state.terminal_width,
        )
        sleep = live.sleeper(state.sleep)

    def on_view(view: dict[str, Any], elapsed: float) -> None:
        if live is not None:
            live.on_view(view, elapsed)
            return
        line = progress(view, elapsed)
        key = line.rsplit(" after ", 1)[0]
        if not last_line or last_line[0] != key:
            last_line[:] = [key]
            _note(state, line)

    def on_failure(error: Exception) -> None:
        failures[:] = [error]
        warning = f"qgjob: warning: {error}; still waiting"
        if live is not None:
            live.interject(warning)
        else:
            _note(state, warning)

    wait_timeout = polls.timeout
    try:
        outcome: WaitOutcome = wait_until(
            fetch,
            done,
            poll_interval=polls.first,
            max_poll_interval=polls.longest,
            eta=eta,
            wait_timeout=wait_timeout,
            clock=state.clock,
            sleep=sleep,
            on_view=on_view,
            on_failure=on_failure,
        )
    except KeyboardInterrupt:
        if live is not None:
            live.close()
        cancelled = interrupted() if interrupted is not None else None
        if cancelled is not None:
            raise Interrupted(f"interrupted; {cancelled}") from None
        raise Interrupted(f"interrupted; the work goes on in qgjob: {resume_hint}") from None
    finally:
        if live is not None:
            live.close()
    if outcome.view is None:
        reason = f"; last error: {failures[-1]}" if failures else ""
        raise NoAnswer(
            f"no answer from qgjob within {wait_timeout:g}s (--wait-timeout){reason}. "
            f"The work goes on in qgjob: {resume_hint}"
        )
    return outcome.view, outcome.timed_out


def _with_jobs(state: CliState, client: ApiClient, run: Mapping[str, Any]) -> dict[str, Any]:
    """The run's progress and its jobs (read a page at a time, once: a poll reads only
    the counters). When the jobs cannot be read the verdict still stands, on counts."""
    from qgjob.errors import ServerError, Unreachable

    run_id = str(run.get("run_id"))
    try:
        jobs = client.run_jobs(run_id)
    except (Unreachable, ServerError) as error:
        _note(state, f"qgjob: warning: could not read the jobs of run {run_id}: {error}")
        jobs = []
    return {**run, "jobs": jobs}


def _finish_run_wait(
    ctx: click.Context,
    state: CliState,
    client: ApiClient,
    run_id: str,
    polls: Polling,
    junit: str | None,
    *,
    cancel_on_timeout: bool = False,
    on_interrupt: str = "keep",
    fail_on: str = "failure",
) -> None:
    """Waits for the run and prints it. ``on_interrupt`` (Ctrl-C): "keep" the run going,
    "ask" (on a terminal; else keep), or "cancel" it."""
    from qgjob.follow import run_done, run_eta

    def interrupted() -> str | None:
        if on_interrupt == "keep":
            return None
        if on_interrupt == "ask":
            if not _is_tty():
                return None
            try:
                if not click.confirm(f"\nCancel run {run_id} in qgjob?", default=False, err=True):
                    return None
            except (click.Abort, EOFError, KeyboardInterrupt):
                return None
        answer = client.cancel_run(run_id)
        return f"run {run_id} cancelled ({answer.get('cancelled', 0)} job(s) stopped)"

    progress, timed_out = _wait_for(
        state,
        lambda: client.get_run(run_id),
        run_done,
        render.progress_line,
        run_eta,
        polls,
        f"qgjob status --run-id {run_id} --wait",
        interrupted,
        live_text=render.live_text,
    )
    wait_timeout = polls.timeout
    if timed_out and cancel_on_timeout:
        answer = client.cancel_run(run_id)
        _note(
            state,
            f"run {run_id} not finished after {wait_timeout:g}s: cancelled "
            f"({answer.get('cancelled', 0)} job(s) stopped; --cancel-on-timeout)",
        )
        progress = client.get_run(run_id)
    run = _with_jobs(state, client, progress)
    if junit:
        from qgjob.junit import write_junit

        write_junit(junit, run, _failure_outputs(client, run))
    result: dict[str, Any] = dict(run)
    if timed_out:
        result["wait_timed_out"] = True
    _emit(state, result, render.run_text(run))
    if junit:
        _note(state, f"JUnit report written to {junit}")
    if timed_out:
        goes_on = (
            "it was cancelled (--cancel-on-timeout)"
            if cancel_on_timeout
            else f"it keeps going: qgjob status --run-id {run_id} --wait"
        )
        click.echo(
            f"qgjob: error: run {run_id} not finished after {wait_timeout:g}s "
            f"(--wait-timeout); {goes_on}",
            err=True,
        )
        ctx.exit(EXIT_INFRA)
    ctx.exit(run_exit_code(run, fail_on))


def run_exit_code(run: Mapping[str, Any], fail_on: str) -> int:
    """The exit code of a finished run under --fail-on: failure (a test did not pass),
    flaky (that, or a test passed only on a re-run), never (0 whatever the tests did)."""
    if fail_on == "never":
        return EXIT_OK
    if not render.run_passed(run):
        return EXIT_TEST_FAILED
    flaky = run.get("flaky")
    if fail_on == "flaky" and isinstance(flaky, int) and flaky > 0:
        return EXIT_TEST_FAILED
    return EXIT_OK


def _failure_outputs(client: ApiClient, run: Mapping[str, Any]) -> dict[str, str]:
    """Test output of the jobs that did not pass, for the JUnit report (best effort)."""
    outputs: dict[str, str] = {}
    wanted = [
        str(job.get("job_id"))
        for job in run.get("jobs") or []
        if job.get("status") in render.NOT_PASSED and job.get("status") != "cancelled"
    ]
    for job_id in wanted[:MAX_JUNIT_OUTPUTS]:
        try:
            result = client.get_result(job_id)
        except ApiError:
            continue
        if isinstance(result.get("output"), str) and result["output"]:
            outputs[job_id] = result["output"]
    return outputs


# ---------------------------------------------------------------------- status


@cli.command(
    epilog="""\b
Examples:
  qgjob status --job-id <job id>
  qgjob status --run-id <run id>
  qgjob status --run-id <run id> --wait --junit report.xml
  qgjob status --run-id <run id> --follow
  qgjob --json status --run-id <run id>

\b
Without --wait the exit code is 0 whatever the status. With --wait: 0 all passed,
1 a test failed, 3 when --wait-timeout passed first."""
)
@click.option("--job-id", metavar="ID", help="A job id (from qgjob submit).")
@click.option("--run-id", metavar="ID", help="A run id: prints every job of the run.")
@click.option("--wait", is_flag=True, help="Wait until the job or run finished.")
@click.option(
    "--follow",
    is_flag=True,
    help=(
        "--wait, showing the run's progress: on a terminal a live line (done, running, "
        "queued, flaky, elapsed, ETA from the duration estimates and the queue ahead, or "
        "why nothing moves); otherwise a line per change."
    ),
)
@fail_on_option
@poll_option
@max_poll_option
@wait_timeout_option
@junit_option
@json_option
@click.pass_context
def status(
    ctx: click.Context,
    job_id: str | None,
    run_id: str | None,
    wait: bool,
    follow: bool,
    fail_on: str,
    poll_interval: float,
    max_poll_interval: float,
    wait_timeout: float,
    junit: str | None,
    as_json: bool,
) -> None:
    """Print the status of a job or of a whole run."""
    state = _state(ctx, as_json)
    wait = wait or follow
    if bool(job_id) == bool(run_id):
        raise click.UsageError("pass exactly one of --job-id or --run-id")
    if junit and not (wait and run_id):
        raise click.UsageError("--junit needs --run-id and --wait")
    client = state.client()
    polls = Polling(poll_interval, max_poll_interval, wait_timeout)
    if run_id:
        if wait:
            _finish_run_wait(ctx, state, client, run_id, polls, junit, fail_on=fail_on)
            return
        run = _with_jobs(state, client, client.get_run(run_id))
        _emit(state, run, render.run_text(run))
        return
    assert job_id is not None
    if not wait:
        job = client.get_job(job_id)
        _emit(state, job, render.job_text(job))
        return
    from qgjob.follow import job_done

    job, timed_out = _wait_for(
        state,
        lambda: client.get_job(job_id),
        job_done,
        lambda view, elapsed: f"job {job_id}: {view.get('status')} after {elapsed:.0f}s",
        None,  # one job: no pace to follow, the backoff alone
        polls,
        f"qgjob status --job-id {job_id} --wait",
    )
    data = dict(job, wait_timed_out=True) if timed_out else job
    _emit(state, data, render.job_text(job))
    if timed_out:
        click.echo(
            f"qgjob: error: job {job_id} not finished after {wait_timeout:g}s (--wait-timeout)",
            err=True,
        )
        ctx.exit(EXIT_INFRA)
    ctx.exit(EXIT_OK if job.get("status") == "passed" else EXIT_TEST_FAILED)


# ---------------------------------------------------------------------- result


@cli.command(
    epilog="""\b
Examples:
  qgjob result --job-id <job id>
  qgjob --json result --job-id <job id> | jq .output

\b
Exit code: 0 passed (or not finished yet: the message says so; JSON has
"finished": false), 1 failed, errored, timed out or cancelled."""
)
@click.option("--job-id", required=True, metavar="ID", help="A job id (from qgjob submit).")
@json_option
@click.pass_context
def result(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Print a job's result: status, duration, message and the tail of its output."""
    state = _state(ctx, as_json)
    answer = state.client().get_result(job_id)
    _emit(state, answer, render.result_text(answer))
    if answer.get("finished") and answer.get("status") != "passed":
        ctx.exit(EXIT_TEST_FAILED)


@cli.command(
    epilog="""\b
Examples:
  qgjob audit --job-id <job id>
  qgjob --json audit --job-id <job id> | jq -r '.records[0].link'

\b
The results vault archives the BrowserStack App Automate record of each attempt
of a job that ran on BrowserStack, then audits it: S3 key, sha256, size, HTTP
status, outcome. Each link downloads the archive for a few minutes."""
)
@click.option("--job-id", required=True, metavar="ID", help="A job id (from qgjob submit).")
@json_option
@click.pass_context
def audit(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Print a job's results-vault audit records (BrowserStack sessions archived)."""
    state = _state(ctx, as_json)
    answer = state.client().get_audit(job_id)
    _emit(state, answer, render.audit_text(answer))


# ---------------------------------------------------------------------- cancel


@cli.command(
    epilog="""\b
Examples:
  qgjob cancel --job-id <job id>
  qgjob cancel --run-id <run id>

\b
A queued job is cancelled at once. A job an agent already started is cancelled
too: its agent stops the test (killing its processes) at its next heartbeat, and
a result it sends afterwards is not applied. A run is cancelled a page of jobs
per request (safe to repeat). Cancelling a finished job is rejected (exit 2)."""
)
@click.option("--job-id", metavar="ID", help="The job to cancel.")
@click.option("--run-id", metavar="ID", help="The run to cancel: every job not finished.")
@json_option
@click.pass_context
def cancel(ctx: click.Context, job_id: str | None, run_id: str | None, as_json: bool) -> None:
    """Cancel a job or a whole run; started tests are stopped by their agents."""
    state = _state(ctx, as_json)
    if bool(job_id) == bool(run_id):
        raise click.UsageError("pass exactly one of --job-id or --run-id")
    client = state.client()
    if run_id:
        answer = client.cancel_run(run_id)
        run = answer.get("run") or {}
        counts = render.counts_text(run.get("counts") or {})
        _emit(
            state,
            answer,
            f"run {run_id}: cancelled {answer.get('cancelled', 0)} job(s); now {counts}",
        )
        return
    assert job_id is not None
    job = client.cancel_job(job_id)
    _emit(state, job, f"job {job.get('job_id', job_id)}: {job.get('status', 'cancelled')}")


def _is_tty() -> bool:
    import sys

    return sys.stdin.isatty() and sys.stderr.isatty()


# ---------------------------------------------------------------------- artifacts


@cli.command(
    epilog="""\b
Examples:
  qgjob artifacts --job-id <job id> -o out/
  qgjob artifacts --run-id <run id> -o out/

\b
Writes DIR/<job id>/output.log (the full output) and each attachment the agent
uploaded (screenshots, videos, traces), downloaded through short-lived links, and
DIR/index.json. Jobs not finished yet are listed as skipped."""
)
@click.option("--job-id", metavar="ID", help="One job.")
@click.option("--run-id", metavar="ID", help="Every job of a run.")
@click.option(
    "--only-failed",
    is_flag=True,
    help="With --run-id: only the jobs that did not pass, and the flaky ones.",
)
@click.option(
    "-o",
    "--output-dir",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, writable=True),
    metavar="DIR",
    help="Where to write the files.",
)
@json_option
@click.pass_context
def artifacts(
    ctx: click.Context,
    job_id: str | None,
    run_id: str | None,
    only_failed: bool,
    output_dir: str,
    as_json: bool,
) -> None:
    """Download jobs' full output and attachments."""
    from pathlib import Path

    from qgjob.artifacts import fetch

    state = _state(ctx, as_json)
    if bool(job_id) == bool(run_id):
        raise click.UsageError("pass exactly one of --job-id or --run-id")
    client = state.client()
    jobs = client.run_jobs(run_id) if run_id else [{"job_id": job_id}]
    if only_failed:
        jobs = [j for j in jobs if j.get("status") != "passed" or j.get("flaky")]
    job_ids = [str(j.get("job_id")) for j in jobs]
    index = fetch(client, job_ids, Path(output_dir), lambda line: _note(state, line))
    _emit(
        state,
        index,
        f"{index['files']} file(s) of {len(job_ids)} job(s) written to {output_dir}",
    )


# ---------------------------------------------------------------------- report


@cli.command(
    epilog="""\b
Examples:
  qgjob report --run-id <run id> -o report.html
  qgjob report --run-id <run id> --html out/report.html

\b
One self-contained HTML file (no network): totals, install savings, a sortable and
filterable table of tests (status, flaky, duration, device, attempts), the failures
with their output, and a device timeline (one lane per agent, tests coloured by app
version). It reads on a phone and prints well. Exit code 0 once written."""
)
@click.option("--run-id", required=True, metavar="ID", help="The run to report on.")
@click.option(
    "-o",
    "--output",
    "--html",
    "output",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Where to write the HTML file.",
)
@click.option(
    "--artifacts-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help=(
        "Where `qgjob artifacts` wrote the run's files: each job found there gets a "
        "link to its output (relative to the report)."
    ),
)
@json_option
@click.pass_context
def report(
    ctx: click.Context, run_id: str, output: str, artifacts_dir: str | None, as_json: bool
) -> None:
    """Write an HTML report of a run (finished or not)."""
    import os
    from pathlib import Path

    from qgjob.artifacts import safe_name
    from qgjob.report import write_report

    state = _state(ctx, as_json)
    client = state.client()
    run = _with_jobs(state, client, client.get_run(run_id))
    run["reported_at"] = time.time()
    links: dict[str, str] = {}
    if artifacts_dir:
        base = Path(output).resolve().parent
        for job in run.get("jobs") or []:
            folder = Path(artifacts_dir) / safe_name(str(job.get("job_id")))
            if folder.is_dir():
                log = folder / "output.log"
                target = log if log.exists() else folder
                links[str(job.get("job_id"))] = Path(
                    os.path.relpath(target.resolve(), base)
                ).as_posix()
    write_report(output, run, _failure_outputs(client, run), links)
    _emit(state, {"run_id": run_id, "report_path": output}, f"report written to {output}")


# ---------------------------------------------------------------------- agent


@cli.command(
    epilog="""\b
Examples:
  # a simulated emulator (demo, tests): outcomes follow the test file names
  QGJOB_TOKEN=<agent token> qgjob agent --target emulator --device-id 1 --runner simulated
  # a real device, running AppWright and installing the build first
  qgjob agent --target device --device-id pixel-7 --runner command \\
      --install-command "./install-app.sh {org_id} {app_version_id}" \\
      --command "npx appwright test {test_path} --project {target}"
  # BrowserStack App Automate: uploads each build once, reports each test's session;
  # --app-path only for versions without an uploaded build
  BROWSERSTACK_USERNAME=... BROWSERSTACK_ACCESS_KEY=... qgjob agent \\
      --target browserstack --device-id bs-1 --runner browserstack \\
      --project-dir examples/appwright --app-path "builds/{app_version_id}.apk"
  # AppWright on an emulator: the batch's build (qgjob app upload) is downloaded once
  # into the build cache and handed to the project's config as $APP_BUILD_PATH
  qgjob agent --target emulator --device-id emu-1 --runner appwright \\
      --project-dir examples/appwright --build-cache ~/.cache/qgjob/builds

\b
Placeholders: {test_path} {target} {app_version_id} {org_id} {app_path}.

\b
The simulated runner (no device) decides by the test's file name, case ignored:
  a name containing "infra-error" ends "error" (an infrastructure error, retried
  on another agent); one containing "fail" ends "failed"; any other "passed".
  Each test takes 0.2-1.0 s (picked by the path's sha256) and an install 1.0 s,
  both times --sim-scale. The same path always gets the same outcome.

\b
Stopping: SIGTERM or Ctrl-C lets the current test run to its end, reports it, hands
the rest of the batch back to qgjob, deregisters and exits 0. A second SIGTERM or
Ctrl-C stops now: the current test is interrupted and not reported (qgjob requeues
it without spending a retry), then the agent hands the batch back and exits 0."""
)
@click.option("--target", required=True, type=click.Choice(TARGETS), help="Device pool.")
@click.option(
    "--device-id",
    required=True,
    metavar="D",
    help="Stable id of this device slot; the agent id is <target>-<device-id>.",
)
@click.option(
    "--runner",
    "runner_name",
    type=click.Choice(("simulated", "command", "browserstack", "appwright")),
    default="command",
    show_default=True,
    help="How tests run.",
)
@click.option(
    "--command",
    "command_template",
    default="npx appwright test {test_path} --project {target}",
    show_default=True,
    metavar="TEMPLATE",
    help="Command runner: the test command (run without a shell).",
)
@click.option(
    "--install-command",
    metavar="TEMPLATE",
    help=(
        "Command and appwright runners: installs the app build on the device once per "
        "batch, e.g. 'adb install -r {app_path}' (default: no install step)."
    ),
)
@click.option(
    "--project-dir",
    type=click.Path(file_okay=False, exists=True),
    metavar="DIR",
    help=(
        "Appwright and browserstack runners: the AppWright project (appwright.config.ts) "
        "[default: .]."
    ),
)
@click.option(
    "--build-cache",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help=(
        "Where builds are kept, one per sha256, downloaded once and verified "
        "[env QGJOB_BUILD_CACHE; default ~/.cache/qgjob/builds]."
    ),
)
@click.option(
    "--app-path",
    metavar="TEMPLATE",
    help=(
        "BrowserStack runner: the app build to upload when the batch's version has no "
        "uploaded build ({org_id} {app_version_id} placeholders; default $QGJOB_APP_PATH)."
    ),
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Wait between leases while idle.",
)
@click.option(
    "--report-every",
    "report_every_s",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help=(
        "Tests that start within this long of the agent's last report are told with the "
        "next one (their results and the next start in one call, at most 10 results): "
        "short tests cost fewer requests, and the run view lags by at most this. A "
        "batch's first test is always told at once; 0 tells every test as it starts."
    ),
)
@click.option(
    "--sim-scale",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Simulated runner: multiplies every simulated duration.",
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, writable=True),
    metavar="PATH",
    help="Append one JSON line per install/start/result/lease_lost event to PATH.",
)
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    metavar="N",
    help="Exit (deregistered) after N batches.",
)
@click.pass_context
def agent(
    ctx: click.Context,
    target: str,
    device_id: str,
    runner_name: str,
    command_template: str,
    install_command: str | None,
    project_dir: str | None,
    build_cache: str | None,
    app_path: str | None,
    poll_seconds: float,
    report_every_s: float,
    sim_scale: float,
    journal: str | None,
    max_batches: int | None,
) -> None:
    """Run a device agent: lease batches, install the app once, run and report the tests."""
    import signal

    from qgjob.agent import Agent, Journal
    from qgjob.builds import BuildCache
    from qgjob.runners import get_runner

    state = _state(ctx)
    options: dict[str, Any]
    if runner_name == "simulated":
        options = {"sim_scale": sim_scale}
    elif runner_name == "browserstack":
        # Credentials (BROWSERSTACK_USERNAME / _ACCESS_KEY) and QGJOB_BROWSERSTACK_API_URL
        # come from the environment; the runner never prints the credentials.
        options = {
            "app_path": app_path,
            "cwd": project_dir,
            "command": command_template,
            "log": _stderr_line,
        }
    elif runner_name == "appwright":
        options = {"project_dir": project_dir, "install_command": install_command}
    else:
        options = {"command": command_template, "install_command": install_command}
    try:
        runner = get_runner(runner_name, **options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    api = state.client(retries=1, timeout=30.0)
    heartbeat_api = state.client(retries=0, timeout=10.0)
    worker = Agent(
        api,
        runner,
        target,
        device_id,
        heartbeat_api=heartbeat_api,
        journal=Journal(journal) if journal else None,
        poll_seconds=poll_seconds,
        max_batches=max_batches,
        build_cache=BuildCache(build_cache),
        report_every_s=report_every_s,
    )

    def request_stop(signum: int, frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    ctx.exit(worker.run())


# ---------------------------------------------------------------------- app builds


@cli.group(
    epilog="""\b
Examples:
  qgjob app upload --org-id acme --app-version-id v1.4.2 build/app-release.apk
  qgjob app upload --org-id acme --app-version-id v1.4.2 --replace app-release.apk
  qgjob app show --app-version-id v1.4.2
  qgjob --json app list"""
)
def app() -> None:
    """App builds: upload one per app version; agents install it once per batch."""


@app.command(
    "upload",
    epilog="""\b
The file goes straight to storage (a presigned PUT signed with its size and
SHA-256); qgjob then checks the stored object. Uploading the same bytes again
changes nothing. Other bytes for an app version that has a build are rejected
(exit 2) unless --replace; the old build stays until the new one is complete.""",
)
@click.option("--org-id", required=True, metavar="ORG", help="Your organisation (the token's).")
@click.option("--app-version-id", required=True, metavar="V", help="The app version it builds.")
@click.option("--replace", is_flag=True, help="Replace the version's build if it differs.")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False))
@json_option
@click.pass_context
def app_upload(
    ctx: click.Context,
    org_id: str,
    app_version_id: str,
    replace: bool,
    file: str,
    as_json: bool,
) -> None:
    """Upload an app build (.apk, .aab, .ipa, .app.zip) for an app version."""
    from pathlib import Path

    from qgjob.builds import check_build_file, upload_build

    state = _state(ctx, as_json)
    _validated_ids(org_id=org_id, app_version_id=app_version_id)
    path = Path(file)
    check_build_file(path)  # exit 2 naming FILE before any request
    build = upload_build(
        state.client(),
        org_id,
        app_version_id,
        path,
        replace=replace,
        note=lambda line: _note(state, line),
    )
    _emit(state, build, render.build_text(build))


def _validated_ids(**ids: str) -> None:
    """Ids checked with the shared schema before anything is sent (exit 2 naming it)."""
    import re

    from qgjob.schema import ID_PATTERN

    for name, value in ids.items():
        if not re.match(ID_PATTERN, value):
            raise ConfigError(
                f"--{name.replace('_', '-')} {value!r}: must be 1-64 characters of "
                "A-Z a-z 0-9 . _ -"
            )


@app.command(
    "show",
    epilog="""\b
Examples:
  qgjob app show --app-version-id v1.4.2
  qgjob --json app show --app-version-id v1.4.2 | jq -r .sha256

Exit 2 when the version has no build (404).""",
)
@click.option("--app-version-id", required=True, metavar="V", help="An app version.")
@json_option
@click.pass_context
def app_show(ctx: click.Context, app_version_id: str, as_json: bool) -> None:
    """Show the build of an app version (of the token's org)."""
    from urllib.parse import quote

    state = _state(ctx, as_json)
    _validated_ids(app_version_id=app_version_id)
    build = state.client().request("GET", f"/builds/{quote(app_version_id, safe='')}")
    _emit(state, build, render.build_text(build))


@app.command(
    "list",
    epilog="""\b
Examples:
  qgjob app list
  qgjob --json app list --limit 10""",
)
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Most builds."
)
@json_option
@click.pass_context
def app_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List the org's builds by app version id."""
    from urllib.parse import urlencode

    state = _state(ctx, as_json)
    client = state.client()
    builds: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(builds) < limit:
        query = {"limit": min(100, limit - len(builds)), **({"cursor": cursor} if cursor else {})}
        page = client.request("GET", f"/builds?{urlencode(query)}")
        builds.extend(page.get("builds") or [])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    _emit(state, {"builds": builds}, render.builds_text(builds))


def _stderr_line(line: str) -> None:
    click.echo(line, err=True)


def main() -> None:
    """Entry point of the `qgjob` console script."""
    cli.main(prog_name="qgjob")


if __name__ == "__main__":  # pragma: no cover
    main()
