"""Held-out generators: deterministic per seed, and each follows the parameters it drew."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from bench.heldout import (
    GIANT_SHARE,
    INSTALL_BANDS,
    KINDS,
    MAX_INSTALL_S,
    MIN_INSTALL_S,
    Estimates,
    Lognormal,
    Pareto,
    _sizes,
    heldout_case,
    heldout_trace,
    main,
)
from bench.heldout_report import HELDOUT_SEED_BASE
from bench.trace import Family, load_trace, trace_to_json

# Seeds for tests: far below the held-out range, which no test may touch.
SEED, OTHER = 7, 8
assert max(SEED, OTHER) < HELDOUT_SEED_BASE


def _family_sizes(kind: str, seed: int = SEED) -> Counter[Family]:
    return Counter(j.family for j in heldout_trace(kind, seed).jobs)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_same_seed_same_trace_and_another_seed_another(kind: str) -> None:
    first, again, other = (heldout_trace(kind, s) for s in (SEED, SEED, OTHER))

    assert trace_to_json(first) == trace_to_json(again)
    assert trace_to_json(first) != trace_to_json(other)
    assert heldout_case(kind, SEED)[0] == heldout_case(kind, SEED)[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_trace_follows_its_drawn_parameters(kind: str) -> None:
    params, trace = heldout_case(kind, SEED)
    low, high = params.duration_bounds

    assert len(trace.jobs) == params.jobs
    assert {t: len(trace.agents_of(t)) for t in trace.install_s} == params.agents
    assert all(low <= j.duration_s <= high for j in trace.jobs)
    assert all(MIN_INSTALL_S <= s <= MAX_INSTALL_S for s in trace.install_s.values())
    assert trace.install_s == {t: params.install_s[t] for t in trace.install_s}
    assert [j.arrival_s for j in trace.jobs] == sorted(j.arrival_s for j in trace.jobs)
    assert trace.all_at_zero != KINDS[kind].online
    assert heldout_trace(kind, SEED, at_zero=True).all_at_zero


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_estimates_and_their_bias_match_the_parameters(kind: str) -> None:
    params, trace = heldout_case(kind, SEED)
    missing = sum(j.estimate_s is None for j in trace.jobs) / len(trace.jobs)
    # Estimates are typical x exp(bias) x noise; the duration is typical x a little noise,
    # clipped: the median log ratio is the bias.
    logs = [math.log(j.estimate_s / j.duration_s) for j in trace.jobs if j.estimate_s]

    assert abs(missing - params.estimates.missing) < 0.04
    assert abs(statistics.median(logs) - params.estimates.bias) < 0.06


def test_burst3_puts_three_orgs_on_every_target_with_very_different_installs() -> None:
    params, trace = heldout_case("burst3", SEED)
    installs = sorted(trace.install_s.values())
    families = {j.family for j in trace.jobs}

    assert {f.org_id for f in families} == {"acme", "globex", "initech"}
    assert {f.target for f in families} == set(trace.install_s) == set(params.agents)
    for value, (low, high) in zip(installs, INSTALL_BANDS, strict=True):
        assert low <= value <= high
    assert installs[-1] >= 3 * installs[0]


def test_giant_has_one_family_with_most_of_the_jobs_in_one_pool() -> None:
    params, trace = heldout_case("giant", SEED)
    sizes = sorted(_family_sizes("giant").values(), reverse=True)

    assert len(trace.install_s) == 1
    assert GIANT_SHARE[0] <= sizes[0] / len(trace.jobs) <= GIANT_SHARE[1]
    assert isinstance(params.durations, Pareto)
    assert sum(j.duration_s == params.durations.high for j in trace.jobs) < 0.02 * len(trace.jobs)


def test_tiny_has_hundreds_of_install_dominated_families() -> None:
    params, trace = heldout_case("tiny", SEED)
    sizes = _family_sizes("tiny")
    work: dict[Family, float] = defaultdict(float)
    for job in trace.jobs:
        work[job.family] += job.duration_s

    assert params.family_size is not None
    assert len(sizes) >= 200
    assert all(params.family_size.low <= n <= params.family_size.high for n in sizes.values())
    # Install-dominated: most families' whole work is shorter than their install.
    shorter = sum(work[f] < trace.install_s[f.target] for f in sizes)
    assert shorter > 0.5 * len(sizes)


def test_pareto_mix_has_heavy_tailed_families_noisy_estimates_and_warm_agents() -> None:
    params, trace = heldout_case("pareto_mix", SEED)
    sizes = sorted(_family_sizes("pareto_mix").values())
    waiting_apps = {(j.org_id, j.app_version_id, j.target) for j in trace.jobs}
    held = [(a.installed, a.target) for a in trace.agents if a.installed is not None]

    assert isinstance(params.family_size, Pareto)
    assert params.estimates.sigma >= 0.35
    assert params.estimates.missing >= 0.2
    # Heavy tail: the largest family is many times the median one.
    assert sizes[-1] >= 10 * statistics.median(sizes)
    assert any((i.org_id, i.app_version_id, t) in waiting_apps for i, t in held)


def test_online_day_has_poisson_suites_urgent_share_bursts_and_warm_agents() -> None:
    params, trace = heldout_case("online_day", SEED)
    assert params.day is not None
    arrivals = sorted({j.arrival_s for j in trace.jobs})
    urgent = {j.family for j in trace.jobs if j.priority == 1}
    by_app: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    for job in trace.jobs:
        by_app[job.org_id, job.app_version_id].append((job.target, job.arrival_s))

    assert params.day.urgent_share == 0.1
    assert arrivals[0] >= 0
    assert arrivals[-1] <= params.day.day_s + params.day.burst_window_s
    assert len(arrivals) > 50
    # Poisson: the gaps between suites are exponential, so their CV is about 1.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert 0.7 < statistics.pstdev(gaps) / statistics.mean(gaps) < 1.6
    assert urgent
    assert all(n >= 2 for n in params.agents.values())
    assert any(a.installed is not None for a in trace.agents)
    # Each burst: a new build on all three targets, arriving within the burst window.
    bursts = [
        app
        for app, runs in by_app.items()
        if {t for t, _ in runs} == set(trace.install_s)
        and max(a for _, a in runs) - min(a for _, a in runs) <= params.day.burst_window_s
    ]
    assert len(bursts) >= params.day.bursts


def test_distributions_respect_their_bounds_and_shapes() -> None:
    rng = random.Random(3)
    lognormal = Lognormal(40.0, 0.8, 10.0, 200.0)
    pareto = Pareto(3.0, 1.5, 400.0)
    logs = [lognormal.draw(rng) for _ in range(4000)]
    tails = [pareto.draw(rng) for _ in range(4000)]

    assert all(10.0 <= v <= 200.0 for v in logs)
    assert abs(statistics.median(logs) - 40.0) < 3.0
    assert all(3.0 <= v <= 400.0 for v in tails)
    # Pareto's median is xmin * 2^(1/alpha).
    assert abs(statistics.median(tails) - 3.0 * 2 ** (1 / 1.5)) < 0.3

    estimates = Estimates(bias=0.0, sigma=0.1, missing=0.25)
    drawn = [estimates.draw(rng, 100.0) for _ in range(4000)]
    assert abs(sum(d is None for d in drawn) / 4000 - 0.25) < 0.03


def test_sizes_sum_to_the_total_and_stay_in_bounds() -> None:
    sizes = _sizes(random.Random(1), 500, Pareto(2.0, 1.2, 50.0))

    assert sum(sizes) == 500
    assert all(1 <= s <= 50 for s in sizes)


def test_cli_lists_writes_and_rejects_an_unknown_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--list"]) == 0
    assert "pareto_mix" in capsys.readouterr().out
    out = tmp_path / "t.json"
    assert main(["tiny", "--seed", str(SEED), "-o", str(out)]) == 0
    assert trace_to_json(load_trace(out)) == trace_to_json(heldout_trace("tiny", SEED))
    with pytest.raises(SystemExit) as exit_info:
        main(["nope", "-o", str(out)])
    assert exit_info.value.code == 2
    assert "unknown held-out kind 'nope'" in capsys.readouterr().err
