"""Retry-After as the runners and the vault read it (one module, shipped to both)."""

from __future__ import annotations

import qgjob.retry_after as cli_copy
from qgjob_backend.retry_after import parse_retry_after

NOW = 1_796_126_400.0  # Tue, 01 Dec 2026 12:00:00 GMT


def test_seconds_a_date_and_nonsense() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 30 ") == 30.0
    assert parse_retry_after("Tue, 01 Dec 2026 12:00:05 GMT", now=lambda: NOW) == 5.0
    assert parse_retry_after("Tue, 01 Dec 2026 11:59:00 GMT", now=lambda: NOW) == 0.0  # past
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def test_the_cli_ships_the_same_module() -> None:
    assert cli_copy.parse_retry_after.__code__.co_code == parse_retry_after.__code__.co_code
