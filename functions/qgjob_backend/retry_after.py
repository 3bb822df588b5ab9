"""HTTP ``Retry-After``, read the same way by the agent's runners and the backend's
BrowserStack client (the CLI ships this file through the link cli/qgjob/retry_after.py)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None
    when there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())
