"""Overflow to BrowserStack in the benchmark: the trace flag, the simulator accepting moved
jobs, ours moving them (bench/policies.py) and the benchmark module (bench/overflow.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import bench.overflow as overflow_bench
from bench.overflow import Case, measure, overflow_trace, run_case
from bench.policies import QgjobPolicy
from bench.simulator import (
    Assignment,
    PlanningState,
    PolicyError,
    Segment,
    simulate,
    validate_schedule,
)
from bench.trace import Family, Trace, TraceError, parse_trace, trace_to_json
from qgjob_backend.domain.overflow import OverflowPolicy

EMU = Family("acme", "v1", "emulator")


def install(org: str, start: float, end: float) -> Segment:
    return Segment("install", org, "v1", start, end)


def ran(org: str, start: float, end: float, job_id: str) -> Segment:
    return Segment("test", org, "v1", start, end, job_id)


ON_BS = Family("acme", "v1", "browserstack")


def trace_data(overflow: bool | None, jobs: int = 2, target: str = "emulator") -> dict[str, Any]:
    job_list = []
    for i in range(jobs):
        job: dict[str, Any] = {
            "id": f"j{i}",
            "arrival_s": 0,
            "org_id": "acme",
            "app_version_id": "v1",
            "target": target,
            "test_path": f"t{i}",
            "priority": 5,
            "duration_s": 100,
            "estimate_s": 100,
        }
        if overflow is not None:
            job["overflow"] = overflow
        job_list.append(job)
    return {
        "agents": [{"id": "e1", "target": "emulator"}, {"id": "b1", "target": "browserstack"}],
        "install_s": {"emulator": 10, "browserstack": 30},
        "jobs": job_list,
    }


def test_the_overflow_flag_is_optional_and_left_out_when_off() -> None:
    plain = parse_trace(trace_data(None))
    assert not any(j.overflow for j in plain.jobs)
    assert all("overflow" not in j for j in trace_to_json(plain)["jobs"])  # old JSON unchanged
    flagged = parse_trace(trace_data(True))
    assert [j["overflow"] for j in trace_to_json(flagged)["jobs"]] == [True, True]
    assert parse_trace(trace_to_json(flagged)) == flagged


def test_a_browserstack_job_cannot_overflow_and_the_flag_is_a_boolean() -> None:
    with pytest.raises(TraceError, match=r"jobs\[0\]\.overflow: a browserstack job cannot"):
        parse_trace(trace_data(True, target="browserstack"))
    data = trace_data(None)
    data["jobs"][0]["overflow"] = "yes"
    with pytest.raises(TraceError, match=r"jobs\[0\]\.overflow"):
        parse_trace(data)


class Scripted:
    """Gives each idle agent named in ``plans`` its batch once, when it is idle."""

    name = "scripted"
    time_dependent = False

    def __init__(self, plans: Sequence[Assignment]) -> None:
        self.plans = list(plans)
        self.calls = 0

    def plan(self, state: PlanningState) -> list[Assignment]:
        self.calls += 1
        idle = {a.agent_id for a in state.idle}
        waiting = {j.job_id for j in state.backlog}
        out = [p for p in self.plans if p.agent_id in idle and set(p.job_ids) <= waiting]
        for p in out:
            self.plans.remove(p)
            idle.discard(p.agent_id)
        return out


def test_an_overflow_job_runs_on_browserstack_with_its_install() -> None:
    trace = parse_trace(trace_data(True))
    policy = Scripted([Assignment("e1", EMU, ("j0",)), Assignment("b1", ON_BS, ("j1",))])
    result = simulate(trace, policy, tick_s=None)
    assert result.schedule["b1"] == [
        Segment("install", "acme", "v1", 0.0, 30.0),  # BrowserStack's install time
        Segment("test", "acme", "v1", 30.0, 130.0, "j1"),
    ]
    assert validate_schedule(trace, result.schedule) == []


def test_a_job_without_the_flag_is_refused_on_browserstack() -> None:
    trace = parse_trace(trace_data(None))
    with pytest.raises(PolicyError, match="not waiting in family"):
        simulate(trace, Scripted([Assignment("b1", ON_BS, ("j1",))]), tick_s=None)
    # ... and the checker finds it in a schedule made by hand.
    schedule = {
        "e1": [install("acme", 0, 10), ran("acme", 10, 110, "j0")],
        "b1": [install("acme", 0, 30), ran("acme", 30, 130, "j1")],
    }
    problems = validate_schedule(trace, schedule)
    assert problems == ["b1[1]: j1 needs a emulator agent, not browserstack"]
    assert validate_schedule(parse_trace(trace_data(True)), schedule) == []


def test_an_idle_browserstack_agent_is_asked_about_waiting_overflow_jobs() -> None:
    # j1 arrives at 50 while e1 runs j0 and only the BrowserStack agent is idle: the
    # policy is asked then (not only when e1 is free at 110) and moves j1 there.
    data = trace_data(True)
    data["jobs"][1]["arrival_s"] = 50
    trace = parse_trace(data)
    policy = Scripted([Assignment("e1", EMU, ("j0",)), Assignment("b1", ON_BS, ("j1",))])
    result = simulate(trace, policy, tick_s=None)
    assert result.schedule["b1"][0] == Segment("install", "acme", "v1", 50.0, 80.0)
    assert [s.job_id for s in result.schedule["b1"] if s.kind == "test"] == ["j1"]


def saturated(jobs: int = 40) -> Trace:
    data = trace_data(True, jobs=jobs)
    data["agents"] = [{"id": "e1", "target": "emulator"}, {"id": "e2", "target": "emulator"}] + [
        {"id": f"b{i}", "target": "browserstack"} for i in range(1, 4)
    ]
    return parse_trace(data)


def test_ours_moves_tail_jobs_of_a_saturated_pool_and_ends_sooner() -> None:
    trace = saturated()
    plain = simulate(trace, QgjobPolicy(), tick_s=1.0)
    ours = QgjobPolicy(overflow=OverflowPolicy())
    moved = simulate(trace, ours, tick_s=1.0)
    assert validate_schedule(trace, moved.schedule) == []
    on_bs = [
        s.job_id
        for a in ("b1", "b2", "b3")
        for s in moved.schedule[a]
        if s.kind == "test" and s.job_id is not None
    ]
    assert on_bs  # some jobs ran on BrowserStack ...
    assert sorted(on_bs) == sorted(m.job_id for m in ours.moves)  # ... exactly those moved
    assert len({m.job_id for m in ours.moves}) == len(ours.moves)  # each moved once
    # The last tests of the suite moved (the home pool would have reached them last).
    assert min(int(j[1:]) for j in on_bs) > 40 - len(on_bs) - 1
    end = max(s.end_s for lane in moved.schedule.values() for s in lane)
    plain_end = max(s.end_s for lane in plain.schedule.values() for s in lane)
    assert end < plain_end
    # Without the policy's overflow, nothing runs on BrowserStack.
    assert all(not plain.schedule[a] for a in ("b1", "b2", "b3"))


def test_measure_counts_browserstack_minutes_of_moved_jobs_only() -> None:
    data = trace_data(True)
    data["jobs"].append(dict(data["jobs"][0], id="own", target="browserstack", org_id="bsorg"))
    del data["jobs"][-1]["overflow"]
    trace = parse_trace(data)
    schedule = {
        "e1": [install("acme", 0, 10), ran("acme", 10, 110, "j0")],
        "b1": [
            install("bsorg", 0, 30),
            ran("bsorg", 30, 130, "own"),
            install("acme", 130, 160),
            ran("acme", 160, 260, "j1"),
        ],
    }
    assert validate_schedule(trace, schedule) == []
    run = measure(trace, schedule, overflow=True)
    assert run.moved == 1
    assert run.remote_minutes == pytest.approx((30 + 100) / 60)  # its install and its test
    assert run.suites_end_s == 260.0
    assert run.remote_own_end_s == 130.0
    assert run.submitted == 2
    assert run.minutes_per_submitted_job == pytest.approx(run.remote_minutes / 2)


SMALL = Case("small", 0.0, tests_per_suite=30)


def test_the_benchmark_shows_overflow_paying_when_browserstack_is_free() -> None:
    off, on = run_case(SMALL, seed=3)
    assert off.moved == 0
    assert off.remote_minutes == 0
    assert on.moved > 0
    assert on.suites_end_s < off.suites_end_s
    assert on.remote_minutes > 0


def test_the_benchmark_shows_no_move_when_browserstack_is_busier() -> None:
    busy = Case("busy", 4000.0, tests_per_suite=30)
    off, on = run_case(busy, seed=3)
    assert on.moved == 0
    assert (on.suites_end_s, on.makespan_s, on.installs) == (
        off.suites_end_s,
        off.makespan_s,
        off.installs,
    )


def test_overflow_traces_are_seeded_and_flag_only_the_emulator_suites() -> None:
    first = overflow_trace(Case("c", 500.0, tests_per_suite=5), seed=1)
    again = overflow_trace(Case("c", 500.0, tests_per_suite=5), seed=1)
    assert trace_to_json(first) == trace_to_json(again)
    assert all(j.overflow == (j.target == "emulator") for j in first.jobs)
    off = overflow_trace(Case("c", 500.0, tests_per_suite=5), seed=1, overflow=False)
    assert not any(j.overflow for j in off.jobs)
    # BrowserStack's own queue holds about 500 s per agent.
    own = sum(j.duration_s for j in first.jobs if j.target == "browserstack")
    assert 500.0 * overflow_bench.BROWSERSTACKS <= own < 500.0 * overflow_bench.BROWSERSTACKS + 300


def test_main_prints_json_and_writes_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overflow_bench, "NAMED_CASES", (SMALL,))
    monkeypatch.setattr(overflow_bench, "REMOTE_LOADS_S", (0.0, 4000.0))
    plot = tmp_path / "o.png"
    assert overflow_bench.main(["--seed", "3", "--json", "--plot", str(plot)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [c["case"] for c in answer["cases"]] == ["small"]
    loads = [p["browserstack_own_s_per_agent"] for p in answer["sweep"]]
    assert loads == [0.0, 4000.0]
    assert answer["sweep"][0]["runs"][1]["moved_jobs"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
