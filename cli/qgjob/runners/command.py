"""Runs each test as a command built from a template (no shell).

Placeholders: {test_path} {target} {app_version_id} {org_id} {app_path} ({app_path}: the
batch's build in the agent's cache; a test also gets it as $APP_BUILD_PATH, the variable
the AppWright config of examples/appwright reads). Each value is quoted
before the template is split with shlex, so paths with spaces stay one argument, and
no value can become an option of the command (see `argument_path`): a test path that
begins with '-' is passed as './-...'; an id that begins with '-' is refused.
Exit code 0 is "passed", anything else "failed"; past the timeout the process group
is killed and the outcome is "timed_out"; a missing binary is an "error".
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import string
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

from qgjob.runners.base import (
    MAX_OUTPUT_BYTES,
    InstallError,
    RunOutcome,
    UnsafeArgument,
    check_runnable_path,
    refused,
    truncate_output,
)

DEFAULT_COMMAND = "npx appwright test {test_path} --project {target}"
PLACEHOLDERS = frozenset({"test_path", "target", "app_version_id", "org_id", "app_path"})
# Where a test finds the build file (examples/appwright/appwright.config.ts reads it).
APP_PATH_ENV = "APP_BUILD_PATH"
POLL_S = 0.1
INSTALL_TIMEOUT_S = 1800.0
KILL_GRACE_S = 5.0


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(template: str, option: str = "--command") -> str:
    """Raises ValueError unless `template` is non-empty and uses only known placeholders."""
    if not template.strip():
        raise ValueError(f"{option} must not be empty")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"{option} is not a valid template: {error}") from None
    unknown = sorted(set(fields) - PLACEHOLDERS)
    if unknown or any(name == "" for name in fields):
        bad = ", ".join("{" + name + "}" for name in unknown) or "{}"
        known = " ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
        raise ValueError(f"{option} uses unknown placeholder {bad}; known: {known}")
    return template


def build_argv(template: str, values: Mapping[str, str]) -> list[str]:
    """The argument vector for `template` with every placeholder filled in and quoted.

    Raises UnsafeArgument when a value the template uses begins with '-' (pass a test
    path through `argument_path` first).
    """
    for name in sorted(_placeholders(template)):
        check_not_option(name, values[name])
    quoted = {key: shlex.quote(value) for key, value in values.items()}
    return shlex.split(template.format(**quoted))


def argument_path(test_path: str) -> str:
    """`test_path` as an argument that no command can read as an option.

    Raises UnsafeArgument for a path that is absolute or has a '..' segment.
    A path beginning with '-' gets a './' in front. An end-of-options '--' would not
    do: the template decides where {test_path} goes, and in the default
    `npx appwright test {test_path} --project {target}` a '--' before the path would
    turn `--project` into a positional too. appwright hands positionals to playwright
    as file filters (regular expressions matched against each spec's path), and
    './-x.spec.ts' still matches the spec '-x.spec.ts' in the working directory.
    """
    check_runnable_path(test_path)
    return f"./{test_path}" if test_path.startswith("-") else test_path


def check_not_option(name: str, value: str) -> str:
    """Returns `value`, or raises UnsafeArgument if it could be read as an option.

    Ids cannot be rewritten the way a path can ('./-c' is no app version).
    """
    if value.startswith("-"):
        raise UnsafeArgument(f"{name} {value!r} begins with '-' and could be read as an option")
    return value


class _Tail:
    """Reads a stream to the end in a thread, keeping only its last bytes."""

    def __init__(self, stream: IO[bytes] | None, limit: int = MAX_OUTPUT_BYTES) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()
        self.total = 0
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        if self._stream is None:
            return
        while True:
            chunk = self._stream.read(65536)
            if not chunk:
                break
            self.total += len(chunk)
            self._buffer += chunk
            if len(self._buffer) > 2 * self._limit:
                del self._buffer[: len(self._buffer) - self._limit]

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def text(self, join_timeout: float = 5.0) -> str:
        self._thread.join(join_timeout)
        data = bytes(self._buffer[-self._limit :])
        text = data.decode("utf-8", errors="replace")
        if self.total > len(data):
            text = f"[... {self.total - len(data)} earlier bytes truncated ...]\n" + text
        return truncate_output(text)


class CommandRunner:
    """Runs tests (and optionally installs apps) with command templates."""

    def __init__(
        self,
        command: str = DEFAULT_COMMAND,
        install_command: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        install_timeout_s: float = INSTALL_TIMEOUT_S,
    ) -> None:
        self.command = check_template(command, "--command")
        self.install_command = (
            check_template(install_command, "--install-command") if install_command else None
        )
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        self._clock = clock
        self._install_timeout_s = install_timeout_s
        self.app_path: str | None = None  # the build of the last install

    def install(
        self, org_id: str, app_version_id: str, target: str, app_path: str | None = None
    ) -> None:
        self.app_path = app_path
        if self.install_command is None:
            return
        if app_path is None and "app_path" in _placeholders(self.install_command):
            raise InstallError(
                f"install of {org_id}/{app_version_id}: the install command needs "
                "{app_path} but no build was uploaded for this app version "
                f"(qgjob app upload --org-id {org_id} --app-version-id {app_version_id} FILE)"
            )
        values = {
            "org_id": org_id,
            "app_version_id": app_version_id,
            "target": target,
            "test_path": "",
            "app_path": app_path or "",
        }
        try:
            argv = build_argv(self.install_command, values)
        except UnsafeArgument as error:
            raise InstallError(f"install of {org_id}/{app_version_id} refused: {error}") from None
        outcome = self._execute(argv, self._install_timeout_s, lambda: False)
        if outcome.status != "passed":
            detail = outcome.message or outcome.status
            tail = outcome.output.strip().splitlines()[-1:] if outcome.output else []
            suffix = f": {tail[0]}" if tail else ""
            raise InstallError(f"install of {org_id}/{app_version_id} failed ({detail}){suffix}")

    def run(
        self,
        test_path: str,
        target: str,
        timeout_s: float,
        should_stop: Callable[[], bool],
        *,
        org_id: str = "",
        app_version_id: str = "",
    ) -> RunOutcome:
        try:
            values = {
                "test_path": argument_path(test_path),
                "target": target,
                "org_id": org_id,
                "app_version_id": app_version_id,
                "app_path": self.app_path or "",
            }
            argv = build_argv(self.command, values)
        except UnsafeArgument as error:
            return refused(error)
        return self._execute(argv, timeout_s, should_stop, env=self.test_env())

    def test_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str] | None:
        """The environment of a test: the runner's (else the agent's), with the build's
        path in APP_BUILD_PATH when there is one; None: inherit the agent's as it is."""
        if self.app_path is None and not extra:
            return self._env
        env = dict(self._env if self._env is not None else os.environ)
        if self.app_path is not None:
            env[APP_PATH_ENV] = self.app_path
        env.update(extra or {})
        return env

    def _execute(
        self,
        argv: list[str],
        timeout_s: float,
        should_stop: Callable[[], bool],
        *,
        env: Mapping[str, str] | None = None,
    ) -> RunOutcome:
        started = self._clock()
        try:
            # A new session: a Ctrl-C meant for the agent must not kill the test; the
            # agent decides (through should_stop) when the test is interrupted.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self._cwd,
                env=dict(env) if env is not None else self._env,
                start_new_session=True,
            )
        except FileNotFoundError:
            return RunOutcome(
                "error",
                0.0,
                f"command not found: {argv[0]} (install it or fix the command template)",
            )
        except OSError as error:
            return RunOutcome("error", 0.0, f"cannot run {argv[0]}: {error}")
        tail = _Tail(process.stdout)
        verdict: RunOutcome | None = None
        while True:
            try:
                process.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = self._clock() - started
            if should_stop():
                self._kill(process)
                verdict = RunOutcome("error", elapsed, "interrupted: the agent is stopping")
                break
            if elapsed >= timeout_s:
                self._kill(process)
                verdict = RunOutcome("timed_out", elapsed, f"timed out after {timeout_s:g}s")
                break
        duration = self._clock() - started
        output = tail.text()
        if process.stdout is not None and tail.done:
            process.stdout.close()  # else a grandchild still holds the pipe; leave it be
        if verdict is not None:
            return RunOutcome(verdict.status, duration, verdict.message, output)
        code = process.returncode
        if code == 0:
            return RunOutcome("passed", duration, None, output)
        if code < 0:
            return RunOutcome("failed", duration, f"killed by signal {-code}", output)
        return RunOutcome("failed", duration, f"exit code {code}", output)

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the whole process group, SIGKILL if it does not go away; then
        SIGKILL to the group again, for children that outlived their parent (a test
        tool whose workers ignore SIGTERM must not keep a device busy)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                if hasattr(os, "killpg"):
                    os.killpg(process.pid, sig)
                else:  # pragma: no cover - not POSIX
                    process.kill()
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=KILL_GRACE_S)
                break
            except subprocess.TimeoutExpired:
                continue
        if hasattr(os, "killpg"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
