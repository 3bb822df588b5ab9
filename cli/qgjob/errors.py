"""Errors raised by the qgjob client and CLI, each with the CLI exit code it maps to.

This module imports nothing heavy, so the CLI can use it before `requests` is loaded.
Exit codes (see the contract): 0 passed / accepted, 1 a test failed, 2 bad usage or
rejected input, 3 infrastructure (unreachable, 5xx, auth, timed out waiting).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_TEST_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3


class QgjobError(Exception):
    """Base class: a problem the CLI reports on one line and exits with `exit_code`."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(QgjobError):
    """Bad local usage or configuration (missing endpoint or token, invalid input)."""

    exit_code = EXIT_USAGE


class ApiError(QgjobError):
    """The qgjob API answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    def __str__(self) -> str:
        if self.status:
            return f"{self.message} (HTTP {self.status})"
        return self.message


class InvalidInput(ApiError):
    """The API rejected the request (400, 404, 409, 413, 422 and other 4xx)."""

    exit_code = EXIT_USAGE


class NotFound(InvalidInput):
    """404: unknown id, or it belongs to another org; for an agent: unknown agent."""


class Conflict(InvalidInput):
    """409: state conflict, e.g. a lost lease or an idempotency key reused."""


class AuthError(ApiError):
    """401/403: missing, invalid or wrong kind of token, or org mismatch."""

    exit_code = EXIT_INFRA


class ServerError(ApiError):
    """5xx or 429 after retries, or a response that is not the JSON we expect."""

    exit_code = EXIT_INFRA


class Unreachable(ApiError):
    """No HTTP response at all: connection refused, DNS failure, timeout."""

    exit_code = EXIT_INFRA

    def __init__(self, endpoint_url: str, reason: str) -> None:
        super().__init__(
            0,
            f"cannot reach qgjob at {endpoint_url}: {reason} "
            "(is the stack running? check --endpoint-url)",
        )
        self.endpoint_url = endpoint_url
        self.reason = reason


def error_for_status(status: int, message: str, body: Any = None) -> ApiError:
    """The typed exception for an HTTP error status."""
    if status in (401, 403):
        return AuthError(status, message, body)
    if status == 404:
        return NotFound(status, message, body)
    if status == 409:
        return Conflict(status, message, body)
    if status == 429 or status >= 500:
        return ServerError(status, message, body)
    return InvalidInput(status, message, body)
