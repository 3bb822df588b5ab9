"""The API handler serves the same routes whatever front sends the event: an HTTP API on a
named stage (``path`` keeps the stage prefix), its $default stage, or a REST API."""

from __future__ import annotations

from typing import Any

import pytest

from qgjob_backend.handlers.api import _within_stage


def _event(path: str, stage: str) -> dict[str, Any]:
    return {"version": "1.0", "path": path, "requestContext": {"stage": stage}}


@pytest.mark.parametrize(
    ("path", "stage", "relative"),
    [
        ("/v1/runs/r1", "v1", "/runs/r1"),  # HTTP API, named stage
        ("/v1", "v1", "/"),
        ("/runs/r1", "$default", "/runs/r1"),  # HTTP API, $default stage
        ("/runs/r1", "v1", "/runs/r1"),  # REST API: path is stage-relative already
        ("/v10/runs", "v1", "/v10/runs"),  # only a whole segment is the stage
        ("/prod/v1/runs", "v1", "/prod/v1/runs"),
    ],
)
def test_the_path_is_made_relative_to_the_stage(path: str, stage: str, relative: str) -> None:
    assert _within_stage(_event(path, stage))["path"] == relative


def test_an_event_without_a_stage_is_left_alone() -> None:
    event = {"path": "/v1/runs"}
    assert _within_stage(event) is event
