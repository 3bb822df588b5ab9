"""The API's first look at a body: nesting counted outside strings, in linear time."""

from __future__ import annotations

import time

import pytest

from qgjob_backend.handlers.body import MAX_JSON_DEPTH, Rejection, check_body, nesting_depth

MAX_BODY_BYTES = 1024 * 1024  # what the API handler lets through to the check


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('{"a": "[[[{{{"}', 1),
        ('{"a": "\\"[[["}', 1),  # an escaped quote does not end the string
        ('{"a": "\\\\", "b": [[]]}', 3),  # an escaped backslash does not escape the quote
        ('["\\u005b", "]]]"]', 1),
        ('"unterminated [[[', 0),
        ("[" * 100, MAX_JSON_DEPTH + 1),  # stops counting past the limit
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


@pytest.mark.parametrize(
    "text",
    [
        '"' + '\\"' * (MAX_BODY_BYTES // 2 - 1),  # quadratic for a backtracking string regex
        '"' * MAX_BODY_BYTES,
        "[" + "[]," * (MAX_BODY_BYTES // 3 - 1) + "[]]",
        '{"a": "' + "[{" * (MAX_BODY_BYTES // 2 - 10) + '"}',
    ],
    ids=["escaped-quotes", "quotes", "empty-arrays", "brackets-in-a-string"],
)
def test_a_largest_body_is_checked_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    check_body(text)
    assert time.perf_counter() - started < 2.0  # a quadratic scan takes minutes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ('{"org_id": "acme"}', None),
        ("[" * 40 + "]" * 40, Rejection(400, f"body: nested deeper than {MAX_JSON_DEPTH} levels")),
        ("[{}]", Rejection(422, "body: must be a JSON object, not an array")),
        ("null", Rejection(422, "body: must be a JSON object, not null")),
        ("true", Rejection(422, "body: must be a JSON object, not a boolean")),
        ("-0", Rejection(422, "body: must be a JSON object, not a number")),
        ('"x"', Rejection(422, "body: must be a JSON object, not a string")),
        ('{"a": NaN}', Rejection(400, "body: NaN is not a JSON number; send a JSON object")),
        (
            '{"a": -Infinity}',
            Rejection(400, "body: -Infinity is not a JSON number; send a JSON object"),
        ),
        ('{"a": 1e400}', Rejection(400, "body: 1e400 is out of range; send a JSON object")),
        ('{"a": 1' + "0" * 5000 + "}", Rejection(400, "body: not valid JSON; send a JSON object")),
        ("{not json", Rejection(400, "body: not valid JSON; send a JSON object")),
    ],
)
def test_check_body(text: str, expected: Rejection | None) -> None:
    assert check_body(text) == expected
