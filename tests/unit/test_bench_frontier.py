"""The installs-versus-makespan frontier (bench/frontier.py, `bench.schedule --frontier`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.frontier import FrontierPoint, frontier, pareto
from bench.schedule import main
from bench.trace import Family
from tests.unit.test_bench_simulator import make_trace

BIG = Family("acme", "v1", "emulator")


def point(gain: float, makespan: float, installs: int) -> FrontierPoint:
    return FrontierPoint(gain, makespan, installs, installs)


def test_pareto_marks_only_the_points_nothing_beats_on_both() -> None:
    points = [point(0, 100, 9), point(60, 100, 8), point(300, 150, 5), point(600, 160, 5)]

    marked = pareto(points)

    assert [p.on_frontier for p in marked] == [False, True, True, False]
    # Equal points do not beat each other.
    assert [p.on_frontier for p in pareto([point(1, 100, 5), point(2, 100, 5)])] == [True, True]


def test_the_knob_trades_installs_for_makespan_on_a_splittable_family() -> None:
    # 12 tests of 100 s, 4 agents, 10 s installs: splitting over 4 ends at about 310 s;
    # a gain of 1,000 s is more than a split can save, so one agent runs it all (1,210 s).
    trace = make_trace(agents=4, jobs=[(f"t{i}", BIG, 100.0, 0.0) for i in range(12)])

    points = {p.gain_s: p for p in frontier(trace, gains=(0.0, 1000.0, math.inf), tick_s=None)}

    assert points[0.0].installs == 4
    assert points[0.0].makespan_s < 400
    assert (points[1000.0].installs, points[1000.0].makespan_s) == (1, pytest.approx(1210.0))
    assert points[math.inf].installs == 1
    assert all(p.on_frontier for p in points.values())
    assert all(p.installs >= p.installs_lower_bound for p in points.values())


def test_schedule_frontier_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.json"
    jobs = [{"id": f"t{i}", "arrival_s": 0, "org_id": "acme", "app_version_id": "v1",
             "target": "emulator", "test_path": f"t{i}", "priority": 5, "duration_s": 100,
             "estimate_s": 100} for i in range(4)]  # fmt: skip
    agents = [{"id": "e1", "target": "emulator"}, {"id": "e2", "target": "emulator"}]
    trace.write_text(json.dumps({"agents": agents, "install_s": {"emulator": 10}, "jobs": jobs}))

    assert main([str(trace), "--frontier", "--json", "--tick-s", "0"]) == 0

    answer = json.loads(capsys.readouterr().out)
    gains = [p["min_split_gain_s"] for p in answer["frontier"]]
    assert gains[0] == 0.0
    assert gains[-1] is None  # never split
    assert {"makespan_s", "installs", "on_frontier"} <= set(answer["frontier"][0])
