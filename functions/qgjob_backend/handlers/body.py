"""The first look at a request body, before any parser that can be driven into a 5xx.

Every body the API takes is a JSON object a few levels deep. Python's json decoder,
pydantic and the resolver all recurse per nesting level, so a 2 kB body of 1,000
brackets raises RecursionError (a 502); an integer literal over 4,300 digits raises a
ValueError that is not a JSONDecodeError; and a JSON array of jobs was read as one job.
`check_body` rejects all of these with a 4xx before the resolver parses the body.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

# Deepest nesting a body may have. The deepest real body (an agent registration with
# its `installed` app) has 2 levels; 32 leaves room for growth and stays far below
# Python's recursion limit (1,000), whichever parser reads the body next.
MAX_JSON_DEPTH = 32

# What decides nesting: brackets, and the quotes that start a string (whose brackets do
# not count). The rest of a string is skipped by one anchored, greedy match that can
# never fail, so it never backtracks: a pattern that must find the closing quote would
# be retried at every escaped quote of an unterminated string, quadratic (minutes a MB).
_STRUCTURE = re.compile(r'[\[\]{}"]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)


class Rejection(NamedTuple):
    """Why a body is refused: the HTTP status and a message naming `body`."""

    status: int
    message: str


class _NotJson(ValueError):
    """A number JSON (RFC 8259) cannot carry: NaN, Infinity, or one that overflows."""


def nesting_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply `text` nests arrays and objects, counting brackets outside strings.

    Linear in the length of `text`, and stops once past `limit`. Invalid JSON gets
    some number; the parser that runs next rejects it.
    """
    depth = deepest = position = 0
    while match := _STRUCTURE.search(text, position):
        char, position = match.group(), match.end()
        if char == '"':
            rest = _STRING_REST.match(text, position)  # always matches: it may match nothing
            position = rest.end() if rest else len(text)
            if not text.startswith('"', position):
                break  # unterminated, or a lone backslash: not JSON
            position += 1
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        else:
            depth -= 1
    return deepest


def _reject_constant(token: str) -> Any:
    raise _NotJson(f"{token} is not a JSON number")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NotJson(f"{token[:20]} is out of range")
    return value


def parse_body(text: str) -> Any:
    """The JSON value of `text`; raises ValueError for anything that is not strict JSON."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def check_body(text: str) -> Rejection | None:
    """None when `text` is empty or a JSON object of bounded depth, else why not.

    Every route that takes a body takes an object, and the agent sends `{}` to the
    routes that take none, so one rule serves every route; an empty body is left to
    the route (a route that needs a body answers 422 "body: Field required").
    """
    if not text:
        return None
    if nesting_depth(text) > MAX_JSON_DEPTH:
        return Rejection(400, f"body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = parse_body(text)
    except _NotJson as error:
        return Rejection(400, f"body: {error}; send a JSON object")
    except (ValueError, RecursionError):  # JSONDecodeError, or an over-long integer
        return Rejection(400, "body: not valid JSON; send a JSON object")
    if not isinstance(value, dict):
        return Rejection(422, f"body: must be a JSON object, not {_json_kind(value)}")
    return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"
