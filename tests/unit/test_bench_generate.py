"""Workload generators: deterministic per seed, realistic ranges, the standard suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.generate import INSTALL_S, SCENARIOS, SUITE, generate, main, split_counts
from bench.trace import load_trace, trace_to_json

JOBS, AGENTS = 120, 8


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_seed_gives_the_same_trace(scenario: str) -> None:
    first = generate(scenario, 7, jobs=JOBS, agents=AGENTS)
    again = generate(scenario, 7, jobs=JOBS, agents=AGENTS)
    other = generate(scenario, 8, jobs=JOBS, agents=AGENTS)

    assert trace_to_json(first) == trace_to_json(again)
    assert trace_to_json(first) != trace_to_json(other)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_generated_traces_have_the_requested_size_and_realistic_values(scenario: str) -> None:
    trace = generate(scenario, 3, jobs=JOBS, agents=AGENTS)

    assert len(trace.jobs) == JOBS
    assert len(trace.agents) == AGENTS
    assert all(20.0 <= j.duration_s <= 300.0 for j in trace.jobs)
    assert all(trace.install_s[t] == INSTALL_S[t] for t in trace.install_s)
    assert any(j.estimate_s is None for j in trace.jobs) or len(trace.jobs) < 50
    assert [j.arrival_s for j in trace.jobs] == sorted(j.arrival_s for j in trace.jobs)


def test_scenario_shapes() -> None:
    assert generate("ci_burst", 1, jobs=JOBS, agents=AGENTS).all_at_zero
    assert not generate("multi_org_day", 1, jobs=JOBS, agents=AGENTS).all_at_zero
    assert generate("multi_org_day", 1, at_zero=True, jobs=JOBS, agents=AGENTS).all_at_zero
    warm = generate("warm_start", 1, jobs=JOBS, agents=AGENTS)
    assert any(a.installed is not None for a in warm.agents)
    huge = generate("huge_family", 1, jobs=JOBS, agents=AGENTS)
    sizes = sorted(
        (sum(j.family == f for j in huge.jobs) for f in {j.family for j in huge.jobs}),
        reverse=True,
    )
    assert sizes[0] >= 0.85 * len(huge.jobs)
    skewed = generate("skewed_priorities", 1, jobs=400, agents=8)
    assert {j.priority for j in skewed.jobs} >= {1, 8}


def test_the_standard_suite_covers_the_acceptance_shapes() -> None:
    traces = {entry.name: entry.trace() for entry in SUITE}

    at_zero = [name for name, trace in traces.items() if trace.all_at_zero]
    assert len(at_zero) >= 5
    assert any(
        len(traces[name].jobs) >= 2000 and len(traces[name].agents) >= 50 for name in at_zero
    )
    assert {e.scenario for e in SUITE} == set(SCENARIOS)
    assert any(not trace.all_at_zero for trace in traces.values())


def test_split_counts_is_exact_and_respects_the_minimum() -> None:
    import random

    counts = split_counts(random.Random(1), 100, [1.0, 2.0, 7.0], minimum=5)

    assert sum(counts) == 100
    assert min(counts) >= 5
    with pytest.raises(ValueError, match="cannot split"):
        split_counts(random.Random(1), 2, [1.0, 1.0, 1.0])


def test_cli_lists_and_writes_a_loadable_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--list"]) == 0
    assert "huge_family" in capsys.readouterr().out

    out = tmp_path / "t.json"
    assert main(["many_tiny", "--seed", "5", "--jobs", "40", "--agents", "5", "-o", str(out)]) == 0

    assert trace_to_json(load_trace(out)) == trace_to_json(
        generate("many_tiny", 5, jobs=40, agents=5)
    )


def test_cli_rejects_an_unknown_scenario(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["nope", "-o", str(tmp_path / "t.json")])
    assert exit_info.value.code == 2
