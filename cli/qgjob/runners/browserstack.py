"""Runs tests on BrowserStack App Automate through AppWright's BrowserStack provider.

The batch's install step uploads the app build to App Automate once (REST API v1,
``POST /app-automate/upload``), under a ``custom_id`` derived from the org, the app
version and the build's SHA-256: when BrowserStack still holds that build (``GET
/app-automate/recent_apps/<custom_id>``), the earlier upload is reused. Each test then
runs as ``npx appwright test <test_path> --project <target>`` in the AppWright project,
with the returned ``bs://`` app URL in ``BROWSERSTACK_APP_URL`` (and
``BROWSERSTACK_APP_URL_<PROJECT>``), which the project's config gives AppWright's
BrowserStack provider as its ``buildPath`` (AppWright uses a ``bs://`` build path as it
is; a file it would upload again for every test), and the session id of the test is
reported with its result (the results vault archives that session).

Where the session id comes from: the test (an AppWright fixture, see the README) appends
it to the file named by ``QGJOB_SESSION_FILE``, or prints ``BrowserStack session:
<id>``; the last one wins.

Credentials: ``BROWSERSTACK_USERNAME`` / ``BROWSERSTACK_ACCESS_KEY`` from the agent's
environment. They go only into the Authorization header and the test's environment:
never into a log line, a message or a result (any text the runner reports is scrubbed
of them). 429, 5xx and connection errors are retried with bounded exponential backoff
that honours ``Retry-After``; 401/403 are not retried and fail the install with a clear
message: the batch's jobs end as ``error`` and are reported as not retryable, so the
server does not requeue them either (another attempt would be refused the same way).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from qgjob.retry_after import parse_retry_after
from qgjob.runners.base import InstallError, RunOutcome, UnsafeArgument, check_runnable_path
from qgjob.runners.command import DEFAULT_COMMAND, CommandRunner, check_not_option

DEFAULT_API_URL = "https://api-cloud.browserstack.com"
API_URL_ENV = "QGJOB_BROWSERSTACK_API_URL"
APP_PATH_ENV = "QGJOB_APP_PATH"
USERNAME_ENV = "BROWSERSTACK_USERNAME"
ACCESS_KEY_ENV = "BROWSERSTACK_ACCESS_KEY"
SESSION_FILE_ENV = "QGJOB_SESSION_FILE"
APP_URL_ENV = "BROWSERSTACK_APP_URL"
RETRYABLE = frozenset({429, 500, 502, 503, 504})
# BrowserStack accepts custom ids of up to 100 characters of [A-Za-z0-9_.-].
MAX_CUSTOM_ID = 100
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PRINTED_SESSION = re.compile(r"browserstack session(?: id)?\s*[:=]\s*([A-Za-z0-9_-]{1,128})", re.I)
REDACTED = "***"
MIN_SCRUBBED = 6


class BrowserStackError(Exception):
    """The App Automate API refused or kept failing a request.

    ``retryable`` is False when no later attempt can succeed (401/403).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def delay(self, failures: int, retry_after: float | None) -> float:
        delay = self.base_delay_s * 2 ** max(failures - 1, 0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return float(min(delay, self.max_delay_s))


def custom_id_for(org_id: str, app_version_id: str, sha256: str) -> str:
    """``qgjob-<org>-<version>-<sha12>``: one per build, so a replaced build is uploaded
    anew; long org and version ids are shortened with a digest to fit BrowserStack's limit."""
    name = f"{org_id}-{app_version_id}"
    if len(name) > MAX_CUSTOM_ID - 20:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: MAX_CUSTOM_ID - 34]}-{digest}"
    return f"qgjob-{name}-{sha256[:12]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


class AppAutomateClient:
    """The few App Automate REST calls the runner makes, each retried on 429/5xx."""

    def __init__(
        self,
        username: str,
        access_key: str,
        *,
        api_url: str = DEFAULT_API_URL,
        http: requests.Session | None = None,
        sleep: Callable[[float], object] = time.sleep,
        retry: RetryPolicy | None = None,
        log: Callable[[str], None] = lambda line: None,
        timeout_s: float = 600.0,
    ) -> None:
        self._auth = (username, access_key)
        self._base = api_url.rstrip("/")
        self._http = http or requests.Session()
        self._sleep = sleep
        self._retry = retry or RetryPolicy()
        self._log = log
        self._timeout = (10.0, timeout_s)

    def recent_upload(self, custom_id: str) -> str | None:
        """The app URL of the latest upload under ``custom_id`` that BrowserStack still has."""
        answer = self._call("GET", f"/app-automate/recent_apps/{quote(custom_id, safe='')}")
        if answer.status_code == 404:
            return None
        apps = _json(answer)
        if not isinstance(apps, list):  # {"message": "No results found"}
            return None
        for app in apps:
            if isinstance(app, dict) and app.get("custom_id", custom_id) == custom_id:
                url = app.get("app_url")
                if isinstance(url, str) and url.startswith("bs://"):
                    return url
        return None

    def upload(self, path: Path, custom_id: str) -> str:
        def send() -> requests.Response:
            with path.open("rb") as handle:
                return self._http.post(
                    f"{self._base}/app-automate/upload",
                    auth=self._auth,
                    files={"file": (path.name, handle, "application/octet-stream")},
                    data={"custom_id": custom_id},
                    timeout=self._timeout,
                )

        answer = self._retrying("upload", send)
        if answer.status_code != 200:
            raise BrowserStackError(f"upload answered {answer.status_code}{_reason(answer)}")
        body = _json(answer)
        url = body.get("app_url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith("bs://"):
            raise BrowserStackError("upload answered without a bs:// app_url")
        return url

    def _call(self, method: str, path: str) -> requests.Response:
        def send() -> requests.Response:
            return self._http.request(
                method, f"{self._base}{path}", auth=self._auth, timeout=self._timeout
            )

        answer = self._retrying(f"{method} {path}", send)
        if answer.status_code not in (200, 404):
            raise BrowserStackError(
                f"{method} {path} answered {answer.status_code}{_reason(answer)}"
            )
        return answer

    def _retrying(self, what: str, send: Callable[[], requests.Response]) -> requests.Response:
        failures = 0
        while True:
            try:
                answer = send()
            except (requests.ConnectionError, requests.Timeout) as error:
                problem = f"{type(error).__name__}"
                retry_after = None
            else:
                if answer.status_code in (401, 403):
                    raise BrowserStackError(
                        f"BrowserStack refused the credentials ({answer.status_code}) for "
                        f"{what}: check {USERNAME_ENV} and {ACCESS_KEY_ENV} on this agent "
                        "(not retried)",
                        retryable=False,
                    )
                if answer.status_code not in RETRYABLE:
                    return answer
                problem = f"HTTP {answer.status_code}"
                retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            failures += 1
            if failures >= self._retry.attempts:
                raise BrowserStackError(f"{what}: {problem}, {failures} attempts; giving up")
            delay = self._retry.delay(failures, retry_after)
            self._log(f"browserstack {what}: {problem}; retrying in {delay:g}s")
            self._sleep(delay)


def _json(answer: requests.Response) -> Any:
    try:
        return answer.json()
    except ValueError:
        raise BrowserStackError(
            f"answered {answer.status_code} with a body that is not JSON"
        ) from None


def _reason(answer: requests.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        text = body.get("error") or body.get("message")
        if isinstance(text, str) and text:
            return f": {text[:200]}"
    return ""


class BrowserStackRunner:
    """Uploads the batch's build to App Automate once, then runs each test through
    AppWright's BrowserStack provider and reports the test's session id."""

    def __init__(
        self,
        *,
        app_path: str | None = None,
        cwd: str | None = None,
        command: str = DEFAULT_COMMAND,
        env: Mapping[str, str] | None = None,
        http: requests.Session | None = None,
        sleep: Callable[[float], object] = time.sleep,
        retry: RetryPolicy | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        """``app_path``: the build, a template with {org_id} {app_version_id} (else the
        agent's build cache passes it to install, else $QGJOB_APP_PATH)."""
        self._env = dict(os.environ if env is None else env)
        self._app_path = app_path or self._env.get(APP_PATH_ENV) or None
        self._cwd = cwd
        self._command = command
        self._http = http
        self._sleep = sleep
        self._retry = retry
        self._log = log
        # Scrubbed from reported text; a value that short would mangle ordinary words
        # (App Automate access keys are 20 characters).
        self._secrets = [
            s
            for s in (self._env.get(USERNAME_ENV), self._env.get(ACCESS_KEY_ENV))
            if s and len(s) >= MIN_SCRUBBED
        ]
        self.app_url: str | None = None
        self._installed: tuple[str, str] | None = None
        self._test_env: dict[str, str] | None = None  # set by install: carries the app URL
        self.uploads = 0  # builds this runner uploaded (the rest were reused)

    # ------------------------------------------------------------ install

    def install(
        self, org_id: str, app_version_id: str, target: str, app_path: str | None = None
    ) -> None:
        try:
            self._install(org_id, app_version_id, target, app_path)
        except BrowserStackError as error:
            raise InstallError(
                self.scrub(f"BrowserStack App Automate: {error}"), retryable=error.retryable
            ) from None

    def _install(self, org_id: str, app_version_id: str, target: str, app_path: str | None) -> None:
        username = self._env.get(USERNAME_ENV, "")
        access_key = self._env.get(ACCESS_KEY_ENV, "")
        if not username or not access_key:
            raise InstallError(
                f"{USERNAME_ENV} and {ACCESS_KEY_ENV} must be set in the agent's environment"
            )
        try:
            for name, value in (("org_id", org_id), ("app_version_id", app_version_id)):
                check_not_option(name, value)
            path = self._build_path(org_id, app_version_id, app_path)
        except UnsafeArgument as error:
            raise InstallError(f"install of {org_id}/{app_version_id} refused: {error}") from None
        client = AppAutomateClient(
            username,
            access_key,
            api_url=self._env.get(API_URL_ENV) or DEFAULT_API_URL,
            http=self._http,
            sleep=self._sleep,
            retry=self._retry,
            log=self._log,
        )
        custom_id = custom_id_for(org_id, app_version_id, file_sha256(path))
        app_url = client.recent_upload(custom_id)
        if app_url is None:
            app_url = client.upload(path, custom_id)
            self.uploads += 1
            self._log(f"browserstack: uploaded {path.name} as {custom_id}: {app_url}")
        else:
            self._log(f"browserstack: {custom_id} is still uploaded: {app_url}")
        self.app_url = app_url
        self._installed = (org_id, app_version_id)
        project = re.sub(r"[^A-Za-z0-9]", "_", target).upper()
        self._test_env = {
            **self._env,
            APP_URL_ENV: app_url,
            # The variable AppWright's provider sets from buildPath and starts sessions with.
            f"{APP_URL_ENV}_{project}": app_url,
            "QGJOB_APP_URL": app_url,
            "QGJOB_BUILD_NAME": f"qgjob {org_id}/{app_version_id}",
        }

    def _build_path(self, org_id: str, app_version_id: str, given: str | None) -> Path:
        if given:  # the agent's build cache: a verified file, used as it is
            path = Path(given)
        elif self._app_path:
            path = Path(self._app_path.format(org_id=org_id, app_version_id=app_version_id))
        else:
            raise InstallError(
                f"no build of {org_id}/{app_version_id} to upload: upload one "
                f"(qgjob app upload), or give --app-path / ${APP_PATH_ENV}"
            )
        if self._cwd and not path.is_absolute():
            path = Path(self._cwd) / path
        if not path.is_file():
            raise InstallError(f"build of {org_id}/{app_version_id} not found at {path}")
        return path

    # ------------------------------------------------------------ run

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
            check_runnable_path(test_path)
        except UnsafeArgument as error:
            return RunOutcome("failed", 0.0, f"refused to run: {error}")
        env = self._test_env
        if env is None or (org_id and self._installed != (org_id, app_version_id)):
            return RunOutcome("error", 0.0, "the app is not uploaded to BrowserStack (no install)")
        with tempfile.TemporaryDirectory(prefix="qgjob-bs-") as scratch:
            session_file = Path(scratch) / "sessions.txt"
            runner = CommandRunner(
                command=self._command,
                cwd=self._cwd,
                env={**env, SESSION_FILE_ENV: str(session_file)},
            )
            outcome = runner.run(
                test_path,
                target,
                timeout_s,
                should_stop,
                org_id=org_id,
                app_version_id=app_version_id,
            )
            session_id = _session_id(session_file, outcome.output)
        return replace(
            outcome,
            message=self.scrub(outcome.message) if outcome.message else outcome.message,
            output=self.scrub(outcome.output),
            session_id=session_id,
        )

    def scrub(self, text: str) -> str:
        """``text`` without the credentials (in case a tool printed them)."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def _session_id(session_file: Path, output: str) -> str | None:
    found: list[str] = []
    if session_file.is_file():
        found += session_file.read_text(encoding="utf-8", errors="replace").split()
    found += _PRINTED_SESSION.findall(output)
    valid = [s for s in found if SESSION_ID.match(s)]
    return valid[-1] if valid else None
