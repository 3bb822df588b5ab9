"""domain.batch_end: each job's rest of batch, and when a start renews the agent's end."""

from __future__ import annotations

import pytest

from qgjob_backend.domain.batch_end import PROGRESS_DRIFT_S, renewed_free_at, rests_of_batch


def test_each_job_carries_its_estimate_and_those_after_it() -> None:
    assert rests_of_batch([30.0, 10.0, 5.0]) == (45.0, 15.0, 5.0)
    assert rests_of_batch([]) == ()


def test_a_start_on_time_keeps_the_stored_end() -> None:
    # Committed at 0: three 100 s tests, free at 300. The second starts at 100: on time.
    assert renewed_free_at(300.0, 100.0, 200.0) is None
    # Late or early, but within the drift: nothing to write either.
    assert renewed_free_at(300.0, 100.0 + PROGRESS_DRIFT_S, 200.0) is None
    assert renewed_free_at(300.0, 100.0 - PROGRESS_DRIFT_S, 200.0) is None


@pytest.mark.parametrize("late_s", [PROGRESS_DRIFT_S + 1, 400.0, -(PROGRESS_DRIFT_S + 1)])
def test_a_start_beyond_the_drift_renews_the_end_to_the_start_plus_its_rest(
    late_s: float,
) -> None:
    started = 100.0 + late_s
    assert renewed_free_at(300.0, started, 200.0) == started + 200.0


def test_without_a_stored_end_a_start_sets_one_and_without_a_rest_none() -> None:
    assert renewed_free_at(None, 50.0, 20.0) == 70.0
    assert renewed_free_at(300.0, 900.0, None) is None
    assert renewed_free_at(300.0, 900.0, 10.0, drift_s=1000.0) is None
