"""The held-out report's numbers on tiny traces with hand-made schedules."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import heldout_report as ho
from bench.metrics import PolicyMetrics, compute_metrics
from bench.policies import BASELINES
from bench.report import main as report_main
from bench.schedule import OURS, Evaluation, Outcome
from bench.simulator import Segment, SimResult, validate_schedule
from bench.trace import Trace, parse_trace

# One emulator pool of two agents, installs 10 s; family A: two 30 s tests, B: one 20 s.
# LB_split: k_A(T) = ceil(60 / (T - 10)), k_B = 1; at T = 55 the pool is exactly full
# (60 + 20 + 3 x 10 = 2 x 55), so the makespan bound is 55 s.
JOBS = [("a1", "a", 30.0, 1), ("a2", "a", 30.0, 1), ("b1", "b", 20.0, 5)]


def tiny_trace(arrivals: dict[str, float] | None = None) -> Trace:
    arrivals = arrivals or {}
    return parse_trace(
        {
            "agents": [{"id": "e1", "target": "emulator"}, {"id": "e2", "target": "emulator"}],
            "install_s": {"emulator": 10},
            "jobs": [
                {
                    "id": job_id,
                    "arrival_s": arrivals.get(job_id, 0.0),
                    "org_id": org,
                    "app_version_id": "1",
                    "target": "emulator",
                    "test_path": f"t/{job_id}",
                    "priority": priority,
                    "duration_s": seconds,
                }
                for job_id, org, seconds, priority in JOBS
            ],
        }
    )


def lane(start: float, *items: tuple[str, str | None, float]) -> list[Segment]:
    """(org, job id or None for an install, seconds) back to back from ``start``."""
    out, clock = [], start
    for org, job_id, seconds in items:
        kind = "install" if job_id is None else "test"
        out.append(Segment(kind, org, "1", clock, clock + seconds, job_id))
        clock += seconds
    return out


# Two installs, ends at 70: A whole on e1, B on e2.
GROUPED = {
    "e1": lane(0, ("a", None, 10), ("a", "a1", 30), ("a", "a2", 30)),
    "e2": lane(0, ("b", None, 10), ("b", "b1", 20)),
}
# Three installs, ends at 70: A split, B after it on e2.
SPLIT = {
    "e1": lane(0, ("a", None, 10), ("a", "a1", 30)),
    "e2": lane(0, ("a", None, 10), ("a", "a2", 30), ("b", None, 10), ("b", "b1", 20)),
}
# Two installs, ends at 80: B waits.
LATE = {
    "e1": lane(0, ("a", None, 10), ("a", "a1", 30), ("a", "a2", 30)),
    "e2": lane(50, ("b", None, 10), ("b", "b1", 20)),
}


def evaluation(trace: Trace, schedules: dict[str, Any], bound: float = 55.0) -> Evaluation:
    outcomes = {}
    for name, schedule in schedules.items():
        assert validate_schedule(trace, schedule) == []
        outcomes[name] = Outcome(SimResult(name, schedule), compute_metrics(trace, schedule))
    return Evaluation(bound, outcomes)


def result(schedules: dict[str, Any], trace: Trace | None = None, seed: int = 1) -> ho.CaseResult:
    trace = trace or tiny_trace()
    return ho.result_of("k", "k", seed, trace, evaluation(trace, schedules))


def at_zero_result(seed: int = 1) -> ho.CaseResult:
    # ours splits A (3 installs, 70 s); group_sequential ends as soon with 2 installs.
    return result(
        {
            OURS: SPLIT,
            "fifo": SPLIT,
            "group_sequential": GROUPED,
            "fixed_batch": LATE,
            "lpt_shards": SPLIT,
        },
        seed=seed,
    )


def test_the_tiny_traces_bounds_are_the_hand_computed_ones() -> None:
    from bench.bounds import installs_lower_bound, makespan_lower_bound

    assert makespan_lower_bound(tiny_trace()) == pytest.approx(55.0)
    assert installs_lower_bound(tiny_trace(), 70.0) == 2  # ceil(60/60) + ceil(20/60)
    assert installs_lower_bound(tiny_trace(), 50.0) == 3  # ceil(60/40) + 1


def test_ratios_dominance_and_fastest_on_a_trace_at_zero() -> None:
    r = at_zero_result()

    assert ho.makespan_ratio(r) == pytest.approx(70 / 55)
    assert ho.installs_ratio(r) == pytest.approx(3 / 2)  # LB at ours' makespan (70 s) is 2
    assert ho.dominating(r) == ["group_sequential"]  # same makespan, fewer installs
    # fifo, group_sequential and lpt_shards all end at 70: the first by name is "fastest".
    assert ho.fastest_baseline(r) == "fifo"
    assert ho.vs_fastest(r) == pytest.approx(0.0)


def test_a_baseline_that_is_only_faster_or_only_cheaper_does_not_dominate() -> None:
    r = result({OURS: GROUPED, "fifo": SPLIT, "fixed_batch": LATE})

    assert ho.dominating(r) == []  # SPLIT: same makespan, more installs; LATE: later
    assert ho.installs_ratio(r) == pytest.approx(1.0)
    # A baseline strictly sooner with as many installs dominates.
    sooner = PolicyMetrics(69.9, 2, None, 0.0, 0.0, {}, 0.0)
    assert ho.dominates(sooner, r.ours)
    assert not ho.dominates(PolicyMetrics(69.99, 2, None, 0.0, 0.0, {}, 0.0), r.ours)


def test_vs_fastest_is_positive_when_ours_ends_later() -> None:
    r = result({OURS: LATE, "fifo": GROUPED})

    assert ho.vs_fastest(r) == pytest.approx(80 / 70 - 1)


def test_wait_ratio_per_priority_against_fifo_with_arrivals() -> None:
    # b1 (priority 5) arrives at 0, a1 and a2 (priority 1) at 5. Ours: B on e2 at 0, A on
    # e1 at 5 and its second test after B on e2; "fifo" here: everything on e1, B first.
    trace = tiny_trace({"a1": 5.0, "a2": 5.0})
    ours = {
        "e1": lane(5, ("a", None, 10), ("a", "a1", 30)),
        "e2": lane(0, ("b", None, 10), ("b", "b1", 20), ("a", None, 10), ("a", "a2", 30)),
    }
    fifo = {
        "e1": lane(
            0, ("b", None, 10), ("b", "b1", 20), ("a", None, 10), ("a", "a1", 30), ("a", "a2", 30)
        ),
        "e2": [],
    }
    r = ho.result_of("day", "online_day", 1, trace, evaluation(trace, {OURS: ours, "fifo": fifo}))

    # Priority 1 waits: ours 10 and 35 (p95 35); fifo 35 and 65 (p95 65).
    assert r.ours.p95_wait_s_by_priority[1] == pytest.approx(35.0)
    assert ho.wait_ratio(r, 1) == pytest.approx(35.0 / 65.0)
    # Priority 5: b1 waits 10 in both.
    assert ho.wait_ratio(r, 5) == pytest.approx(1.0)
    assert ho.wait_ratio(r, 3) is None  # no such jobs
    assert ho.installs_ratio(r) is None  # arrivals: no installs bound


def test_wait_ratio_when_fifo_never_waits() -> None:
    r = at_zero_result()
    zero = PolicyMetrics(70, 3, None, 0.0, 0.0, {1: 0.0}, 0.0)
    some = PolicyMetrics(70, 3, None, 0.0, 0.0, {1: 4.0}, 0.0)
    same = ho.CaseResult("k", "k", 1, 3, 2, False, 55.0, {OURS: zero, "fifo": zero}, (1,))
    worse = ho.CaseResult("k", "k", 1, 3, 2, False, 55.0, {OURS: some, "fifo": zero}, (1,))

    assert r.priorities == (1, 5)
    assert ho.wait_ratio(same, 1) == 0.0
    assert ho.wait_ratio(worse, 1) == math.inf


def test_spread_is_nearest_rank_and_names_the_worst_seed() -> None:
    s = ho.spread([(1, 1.0), (2, 3.0), (3, 2.0), (4, None), (5, 3.0)])

    assert s == ho.Spread(count=4, min=1.0, median=2.0, p90=3.0, worst=3.0, worst_seed=2)
    assert ho.spread([(1, None)]) is None


def test_summary_and_verdicts_flag_each_missed_target() -> None:
    rows = [at_zero_result(seed) for seed in (10, 11)]
    summary = ho.summarize("k", rows)
    checks = dict((text.split(" (")[0].split(" <=")[0], ok) for text, ok in ho.verdicts(summary))

    assert summary.dominated == [(10, ["group_sequential"]), (11, ["group_sequential"])]
    assert summary.makespan_x_lb is not None
    assert summary.makespan_x_lb.worst == pytest.approx(70 / 55)
    assert checks == {
        "k: worst makespan 1.273 x LB": False,
        "k: worst installs 1.500 x LB at ours' makespan": False,
        "k: no baseline dominates ours on any of 2 traces": False,
        "k: worst makespan vs fastest baseline +0.00%": True,
    }


def test_online_summary_checks_the_urgent_and_every_other_class() -> None:
    # Ours: priority 1 waits 10 s (fifo 40 s), priority 5 waits 500 s: 5 x fifo's 100 s for
    # that class and 2.5 x fifo's p95 over all jobs (200 s), above the 2 x limit.
    fast = PolicyMetrics(100, 3, None, 0.0, 0.0, {1: 10.0, 5: 500.0}, 0.0)
    fifo = PolicyMetrics(100, 3, None, 0.0, 200.0, {1: 40.0, 5: 100.0}, 0.0)
    metrics = {OURS: fast, **{b: fifo for b in BASELINES}}
    rows = [
        ho.CaseResult("day", "online_day", s, 3, 2, False, 90.0, metrics, (1, 5)) for s in (1, 2)
    ]
    summary = ho.summarize("day", rows)
    checks = ho.verdicts(summary)

    assert summary.wait_x_fifo[1].worst == pytest.approx(0.25)
    assert summary.wait_x_fifo[5].worst == pytest.approx(5.0)
    assert summary.wait_x_fifo_all[5].worst == pytest.approx(2.5)
    assert summary.wait_x_fifo_all[1].worst == pytest.approx(0.05)
    assert [ok for _, ok in checks] == [True, False]
    assert "priority 5 2.50 x fifo's p95 over all jobs" in checks[1][0]
    assert summary.makespan_x_lb is None


def test_cases_run_online_kinds_twice_on_the_held_out_seeds() -> None:
    seeds = ho.heldout_seeds(3)
    todo = ho.cases(["tiny", "online_day"], seeds)

    assert seeds == [900000, 900001, 900002]
    assert [(c.name, c.seed) for c in todo] == [
        *(("tiny", s) for s in seeds),
        *(("online_day", s) for s in seeds),
        *(("online_day@0", s) for s in seeds),
    ]


def test_report_seeds_n_prints_writes_json_and_the_readme_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{ho.BEGIN}\nold\n{ho.END}\n\ntail\n", encoding="utf-8")
    monkeypatch.setattr(ho, "README", readme)
    monkeypatch.setattr(ho, "run_case", lambda case: at_zero_result(case.seed))
    out = tmp_path / "heldout.json"

    code = report_main(["--seeds", "2", "--kinds", "tiny", "--workers", "1", "--json", str(out)])

    assert code == 0
    printed = capsys.readouterr().out
    assert "| k | 2 |" in printed
    data = json.loads(out.read_text())
    assert data["method"]["seeds"] == [900000, 900001]
    assert data["summary"]["k"]["dominated"] == [
        {"seed": 900000, "by": ["group_sequential"]},
        {"seed": 900001, "by": ["group_sequential"]},
    ]
    assert [t["dominated_by"] for t in data["traces"]] == [["group_sequential"]] * 2
    text = readme.read_text()
    assert "old" not in text
    assert "| k | 2 |" in text
    assert text.endswith(f"{ho.END}\n\ntail\n")
    assert (
        report_main(["--seeds", "2", "--kinds", "tiny", "--workers", "1", "--check", "--dry-run"])
        == 1
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "the number of seeds must be >= 1"),
        (["--seeds", "x"], "not a number of seeds: 'x'"),
        (["--seeds", "3", "--kinds", "tiny,nope"], "unknown held-out kinds ['nope']"),
    ],
)
def test_report_rejects_bad_held_out_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report_main(argv)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_suite_kinds_are_opt_in_and_use_the_suites_generator() -> None:
    from bench.generate import generate
    from bench.trace import trace_to_json

    every = ho.expand_kinds(["all"])

    assert list(ho.DEFAULT_KINDS) == ["burst3", "giant", "tiny", "pareto_mix", "online_day"]
    assert every[:5] == list(ho.DEFAULT_KINDS)
    assert "suite:ci_burst" in every
    assert ho.expand_kinds(["tiny", "all", "tiny"]) == ["tiny", *(k for k in every if k != "tiny")]
    with pytest.raises(ValueError, match=r"unknown held-out kinds \['suite:nope'\]"):
        ho.expand_kinds(["suite:nope"])
    case = ho.Case("suite:many_tiny", 5, True)
    assert trace_to_json(case.trace()) == trace_to_json(generate("many_tiny", 5, at_zero=True))
    online = ho.cases(["suite:skewed_priorities"], [5])
    assert [c.name for c in online] == ["suite:skewed_priorities", "suite:skewed_priorities@0"]
    assert not online[0].trace().all_at_zero
