"""``python -m bench.schedule``: the JSON contract, the schedule file, the plot, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.generate import SUITE, generate
from bench.report import dominates, reseeded
from bench.report import main as report_main
from bench.schedule import main
from bench.simulator import schedule_from_json, validate_schedule
from bench.trace import dump_trace, load_trace

METRICS = {
    "makespan_s",
    "installs",
    "installs_lower_bound_at_makespan",
    "mean_wait_s",
    "p95_wait_s",
    "p95_wait_s_by_priority",
    "utilization",
}


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.json"
    dump_trace(generate("skewed_priorities", 4, jobs=80, agents=5, at_zero=True), path)
    return path


def test_json_output_has_exactly_the_issue_shape(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(trace_file), "--json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"lower_bounds", "policies"}
    assert set(report["lower_bounds"]) == {"makespan_s"}
    assert list(report["policies"]) == [
        "qgjob",
        "fifo",
        "group_sequential",
        "fixed_batch",
        "lpt_shards",
    ]
    for metrics in report["policies"].values():
        assert set(metrics) == METRICS
        assert set(metrics["p95_wait_s_by_priority"]) == {str(p) for p in range(1, 11)}
        assert metrics["makespan_s"] >= report["lower_bounds"]["makespan_s"]
        assert metrics["installs"] >= metrics["installs_lower_bound_at_makespan"]


def test_schedule_file_and_plot_of_ours(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule_path, plot = tmp_path / "ours.json", tmp_path / "ours.png"

    code = main(
        [
            str(trace_file),
            *("--policies", "qgjob,fifo"),
            *("--schedule", str(schedule_path)),
            *("--plot", str(plot)),
        ]
    )

    assert code == 0
    table = capsys.readouterr().out
    assert "makespan lower bound" in table
    assert "fifo" in table
    assert "lpt_shards" not in table
    schedule = schedule_from_json(json.loads(schedule_path.read_text()))
    assert validate_schedule(load_trace(trace_file), schedule) == []
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_invalid_trace_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"agents": [{"id": "e1", "target": "emulator"}], "jobs": []}))

    assert main([str(bad), "--json"]) == 2
    assert "install_s: Field required" in capsys.readouterr().err


def test_bad_policy_lists_are_usage_errors(trace_file: Path) -> None:
    with pytest.raises(SystemExit) as unknown:
        main([str(trace_file), "--policies", "qgjob,random"])
    with pytest.raises(SystemExit) as no_ours:
        main([str(trace_file), "--policies", "fifo", "--plot", "x.png"])
    assert unknown.value.code == no_ours.value.code == 2


def test_domination_needs_no_worse_on_both_and_better_on_one() -> None:
    from bench.metrics import PolicyMetrics

    def m(makespan: float, installs: int) -> PolicyMetrics:
        return PolicyMetrics(makespan, installs, None, 0.0, 0.0, {}, 0.0)

    assert dominates(m(100, 5), m(100, 6))
    assert dominates(m(99, 6), m(100, 6))
    assert not dominates(m(100, 6), m(100, 6))
    assert not dominates(m(90, 7), m(100, 6))


def test_reseeded_suite_keeps_every_scenario_and_changes_only_the_seed() -> None:
    entries = reseeded([100, 101])

    assert len(entries) == 2 * len(SUITE)
    for seed, block in ((100, entries[: len(SUITE)]), (101, entries[len(SUITE) :])):
        for original, entry in zip(SUITE, block, strict=True):
            assert entry.name == f"{original.name}/s{seed}"
            assert (entry.scenario, entry.at_zero, entry.seed) == (
                original.scenario,
                original.at_zero,
                seed,
            )


def test_report_rejects_a_bad_seed_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report_main(["--seeds", "100,abc"])

    assert exit_info.value.code == 2
    assert "not a comma-separated list of seeds: '100,abc'" in capsys.readouterr().err
