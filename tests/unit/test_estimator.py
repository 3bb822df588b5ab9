"""The duration estimator (pure domain): EWMA of mean and variance, a high percentile."""

from __future__ import annotations

import math
import random
from functools import reduce

import pytest

from qgjob_backend.domain.estimates import (
    MAX_SAMPLE_S,
    MIN_ESTIMATE_S,
    OUTLIER_RATIO,
    RECENT_IDS,
    DurationEstimate,
)

EMPTY = DurationEstimate()


def fed(*samples: float) -> DurationEstimate:
    return reduce(lambda estimate, sample: estimate.updated(sample), samples, EMPTY)


def test_no_history_means_no_estimate() -> None:
    assert EMPTY.estimate_s is None
    assert EMPTY.samples == 0


def test_the_first_sample_counts_fully_with_a_safety_margin() -> None:
    first = EMPTY.updated(60.0)

    assert (first.mean_s, first.var_s2, first.samples) == (60.0, 0.0, 1)
    assert first.estimate_s is not None
    # One sample says little about the spread: the prior adds about a third.
    assert 70.0 < first.estimate_s < 90.0


def test_early_samples_are_averaged_equally() -> None:
    estimate = fed(10.0, 20.0, 30.0)

    assert estimate.mean_s == pytest.approx(20.0)
    assert estimate.var_s2 == pytest.approx(200.0 / 3)  # population variance


def test_the_estimate_is_a_high_percentile_not_the_mean() -> None:
    rng = random.Random(7)
    samples = [max(0.0, rng.gauss(100.0, 15.0)) for _ in range(400)]
    estimate = fed(*samples[:200])
    assert estimate.estimate_s is not None

    covered = sum(1 for s in samples[200:] if s <= estimate.estimate_s) / 200
    assert estimate.estimate_s > estimate.mean_s
    assert 0.8 <= covered < 1.0


def test_a_steady_test_settles_a_little_above_its_duration() -> None:
    estimate = fed(*[42.0] * 50)

    assert estimate.mean_s == pytest.approx(42.0)
    assert estimate.estimate_s is not None
    assert 42.0 < estimate.estimate_s < 42.0 * 1.2


def test_a_test_that_got_slower_is_learnt_within_a_few_runs() -> None:
    estimate = fed(*[30.0] * 20, *[60.0] * 12)

    assert estimate.mean_s == pytest.approx(60.0, rel=0.05)
    assert estimate.estimate_s is not None
    assert estimate.estimate_s >= 60.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_unusable_samples_are_ignored(bad: float) -> None:
    estimate = fed(10.0, 12.0)

    assert estimate.updated(bad) is estimate
    assert estimate.updated(bad, "job-x") is estimate


def test_an_absurd_sample_is_capped() -> None:
    estimate = EMPTY.updated(10 * MAX_SAMPLE_S)

    assert estimate.mean_s == MAX_SAMPLE_S


def test_once_warm_one_outlier_moves_the_average_only_so_far() -> None:
    warm = fed(10.0, 10.0, 10.0, 10.0)
    hung = warm.updated(5000.0)
    crashed = warm.updated(0.0)

    cap = 10.0 * OUTLIER_RATIO
    assert hung.mean_s == pytest.approx(10.0 + 0.2 * (cap - 10.0))
    assert crashed.mean_s == pytest.approx(10.0 - 0.2 * (10.0 - 10.0 / OUTLIER_RATIO))


def test_a_zero_duration_test_still_has_a_positive_estimate() -> None:
    assert fed(0.0, 0.0).estimate_s == MIN_ESTIMATE_S


def test_a_sample_id_is_counted_once() -> None:
    once = EMPTY.updated(10.0, "job-1")
    again = once.updated(99.0, "job-1")

    assert once.counted("job-1")
    assert again is once
    assert once.updated(20.0, "job-2").samples == 2


def test_only_the_last_sample_ids_are_kept() -> None:
    estimate = EMPTY
    for index in range(RECENT_IDS + 5):
        estimate = estimate.updated(1.0, f"job-{index}")

    assert len(estimate.recent_ids) == RECENT_IDS
    assert estimate.recent_ids[-1] == f"job-{RECENT_IDS + 4}"
    assert not estimate.counted("job-0")
