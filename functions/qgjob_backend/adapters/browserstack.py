"""The ResultsApi port over BrowserStack App Automate's REST API (v1), with ``requests``.

Credentials come from a ``CredentialSource`` (SSM Parameter Store in production) per org
and go only into the Authorization header: never into a URL, a log line, an exception
or a result. One call is one GET; retrying is the service's policy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import requests

from qgjob_backend.ports import FetchedSession, MissingCredentials, ResultsApiUnreachable
from qgjob_backend.retry_after import parse_retry_after

DEFAULT_API_URL = "https://api-cloud.browserstack.com"
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Credentials:
    username: str
    access_key: str

    def __repr__(self) -> str:  # never print the key, even in a traceback's locals
        return f"Credentials(username={self.username!r}, access_key=***)"


class CredentialSource(Protocol):
    def __call__(self, org_id: str) -> Credentials:
        """The org's credentials; raises MissingCredentials when none are stored."""


class BrowserStackResultsApi:
    def __init__(
        self,
        http: requests.Session,
        credentials: CredentialSource,
        base_url: str = DEFAULT_API_URL,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
    ) -> None:
        self._http = http
        self._credentials = credentials
        self._base = base_url.rstrip("/")
        self._timeout = timeout

    def session_url(self, session_id: str) -> str:
        return f"{self._base}/app-automate/sessions/{quote(session_id, safe='')}.json"

    def fetch_session(self, org_id: str, session_id: str, max_bytes: int) -> FetchedSession:
        creds = self._credentials(org_id)
        url = self.session_url(session_id)
        try:
            with self._http.get(
                url,
                auth=(creds.username, creds.access_key),
                timeout=self._timeout,
                stream=True,
                headers={"Accept": "application/json"},
            ) as response:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                declared = _int(response.headers.get("Content-Length"))
                if declared is not None and declared > max_bytes:
                    return FetchedSession(
                        response.status_code, b"", url, retry_after, too_large=True, size=declared
                    )
                body = bytearray()
                for chunk in response.iter_content(_CHUNK):
                    body += chunk
                    if len(body) > max_bytes:
                        return FetchedSession(
                            response.status_code, b"", url, retry_after, True, len(body)
                        )
                return FetchedSession(
                    response.status_code, bytes(body), url, retry_after, size=len(body)
                )
        except (requests.ConnectionError, requests.Timeout) as error:
            # The exception text names the host, never the credentials (they are a header).
            raise ResultsApiUnreachable(f"{type(error).__name__} for {url}") from None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class SsmCredentials:
    """Per-org credentials in SSM Parameter Store: a SecureString at ``<prefix>/<org>``
    holding ``{"username": ..., "access_key": ...}``; cached per container for ``ttl_s``."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = 300.0,
    ) -> None:
        self._ssm = client
        self._prefix = prefix.rstrip("/")
        self._clock = clock
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Credentials]] = {}

    def parameter_name(self, org_id: str) -> str:
        return parameter_name(self._prefix, org_id)

    def __call__(self, org_id: str) -> Credentials:
        cached = self._cache.get(org_id)
        if cached is not None and self._clock() - cached[0] < self._ttl_s:
            return cached[1]
        name = self.parameter_name(org_id)
        try:
            value = self._ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except self._ssm.exceptions.ParameterNotFound:
            raise MissingCredentials(
                f"no BrowserStack credentials for org {org_id} ({name})"
            ) from None
        creds = credentials_from_json(value, name)
        self._cache[org_id] = (self._clock(), creds)
        return creds


def parameter_name(prefix: str, org_id: str) -> str:
    return f"{prefix.rstrip('/')}/{org_id}"


def credentials_from_json(value: str, where: str) -> Credentials:
    try:
        data = json.loads(value)
        creds = Credentials(str(data["username"]), str(data["access_key"]))
    except (ValueError, KeyError, TypeError):
        raise MissingCredentials(f"{where} is not {{username, access_key}} JSON") from None
    if not creds.username or not creds.access_key:
        raise MissingCredentials(f"{where} has an empty username or access key")
    return creds


def credentials_to_json(creds: Credentials) -> str:
    return json.dumps({"username": creds.username, "access_key": creds.access_key})
