"""Runs every policy on one trace and compares them with the lower bounds.

    python -m bench.schedule TRACE.json [--json] [--plot FILE.png] [--schedule FILE.json]
                             [--policies qgjob,fifo,...] [--tick-s 60]
    python -m bench.schedule TRACE.json --frontier [--frontier-plot FILE.png] [--json]

``--json`` prints ``{"lower_bounds": {"makespan_s"}, "policies": {NAME: {"makespan_s",
"installs", "installs_lower_bound_at_makespan", "mean_wait_s", "p95_wait_s",
"p95_wait_s_by_priority", "utilization"}}}``; without it, a table. ``--plot`` draws the
``qgjob`` schedule as a device-lane timeline, ``--schedule`` writes it as JSON. Every
schedule is checked with ``validate_schedule`` first (exit 1 if one is invalid).
Exit 2: bad usage or an invalid trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bounds import makespan_lower_bound
from bench.metrics import PRIORITIES, PolicyMetrics, compute_metrics
from bench.policies import POLICIES, make_policy
from bench.simulator import (
    DEFAULT_TICK_S,
    SimResult,
    schedule_to_json,
    simulate,
    validate_schedule,
)
from bench.trace import Trace, TraceError, load_trace

OURS = "qgjob"


class InvalidSchedule(RuntimeError):
    """A policy produced a schedule that breaks the rules (a bug: never report it)."""


@dataclass(frozen=True)
class Outcome:
    result: SimResult
    metrics: PolicyMetrics


@dataclass(frozen=True)
class Evaluation:
    makespan_lower_bound_s: float
    outcomes: dict[str, Outcome]

    def to_json(self) -> dict[str, Any]:
        return {
            "lower_bounds": {"makespan_s": round(self.makespan_lower_bound_s, 1)},
            "policies": {name: o.metrics.to_json() for name, o in self.outcomes.items()},
        }


def evaluate(
    trace: Trace, policies: Sequence[str] = tuple(POLICIES), tick_s: float | None = DEFAULT_TICK_S
) -> Evaluation:
    """Simulates each policy on the trace, validates its schedule and measures it."""
    outcomes = {}
    for name in policies:
        result = simulate(trace, make_policy(name), tick_s=tick_s)
        problems = validate_schedule(trace, result.schedule)
        if problems:
            shown = "\n  ".join(problems[:20])
            raise InvalidSchedule(f"{name} made an invalid schedule:\n  {shown}")
        outcomes[name] = Outcome(result, compute_metrics(trace, result.schedule))
    return Evaluation(makespan_lower_bound(trace), outcomes)


def _ratio(value: float, bound: float | None) -> str:
    return f"{value / bound:.2f}" if bound else "-"


def format_table(trace: Trace, evaluation: Evaluation) -> str:
    bound = evaluation.makespan_lower_bound_s
    arrivals = "all jobs arrive at 0" if trace.all_at_zero else "jobs arrive over time"
    lines = [
        f"{len(trace.jobs)} jobs, {len(trace.agents)} agents, {arrivals}",
        f"makespan lower bound: {bound:.1f} s",
        "",
        f"{'policy':<17} {'makespan_s':>10} {'xLB':>5} {'installs':>8} {'inst_LB':>7} "
        f"{'xLB':>5} {'mean_wait':>9} {'p95_wait':>9} {'util':>5} {'plans':>6} {'max_ms':>7}",
    ]
    for name, outcome in evaluation.outcomes.items():
        m = outcome.metrics
        lb = m.installs_lower_bound_at_makespan
        lines.append(
            f"{name:<17} {m.makespan_s:>10.1f} {_ratio(m.makespan_s, bound):>5} "
            f"{m.installs:>8} {'-' if lb is None else lb:>7} {_ratio(m.installs, lb):>5} "
            f"{m.mean_wait_s:>9.1f} {m.p95_wait_s:>9.1f} {m.utilization:>5.2f} "
            f"{outcome.result.planning_calls:>6} {outcome.result.planning_s_max * 1000:>7.2f}"
        )
    present = [p for p in PRIORITIES if any(j.priority == p for j in trace.jobs)]
    lines += [
        "",
        "p95 wait (s) by priority",
        f"{'policy':<17} " + " ".join(f"{p:>7}" for p in present),
    ]
    for name, outcome in evaluation.outcomes.items():
        waits = outcome.metrics.p95_wait_s_by_priority
        lines.append(f"{name:<17} " + " ".join(f"{waits[p] or 0:>7.0f}" for p in present))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.schedule",
        description="Run every planning policy on a trace and compare them with the bounds.",
    )
    parser.add_argument("trace", type=Path, help="trace JSON (see bench/README.md)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="timeline of qgjob")
    parser.add_argument("--schedule", type=Path, metavar="FILE.json", help="qgjob's schedule")
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated subset of {','.join(POLICIES)} (default: all)",
    )
    parser.add_argument(
        "--frontier",
        action="store_true",
        help="sweep the planner's installs-versus-makespan knob (min_split_gain_s) and "
        "print the (makespan, installs) frontier instead of comparing policies",
    )
    parser.add_argument(
        "--frontier-plot", type=Path, metavar="FILE.png", help="with --frontier: plot it"
    )
    parser.add_argument(
        "--tick-s",
        type=float,
        default=DEFAULT_TICK_S,
        help="how often idle agents ask for work again (default 1 s: qgjob agents' lease "
        "polling); 0 plans only on arrivals and agents becoming idle",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if (args.plot or args.schedule) and OURS not in names:
        parser.error("--plot and --schedule show the qgjob policy: include it in --policies")
    try:
        trace = load_trace(args.trace)
    except TraceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.frontier:
        return _frontier(args, trace)
    if args.frontier_plot:
        parser.error("--frontier-plot needs --frontier")
    try:
        evaluation = evaluate(trace, names, args.tick_s or None)
    except InvalidSchedule as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    ours = evaluation.outcomes.get(OURS)
    if ours is not None and args.schedule:
        args.schedule.write_text(json.dumps(schedule_to_json(ours.result.schedule)) + "\n")
    if ours is not None and args.plot:
        from bench.plot import draw_timeline

        title = f"qgjob on {args.trace.name}: makespan {ours.metrics.makespan_s:.0f} s"
        draw_timeline(ours.result.schedule, args.plot, title)
    if args.json:
        print(json.dumps(evaluation.to_json(), indent=2))
    else:
        print(format_table(trace, evaluation))
    return 0


def _frontier(args: argparse.Namespace, trace: Trace) -> int:
    from bench.frontier import format_frontier, frontier, plot_frontier

    points = frontier(trace, tick_s=args.tick_s or None)
    if args.frontier_plot:
        plot_frontier(points, args.frontier_plot, f"qgjob on {args.trace.name}")
    if args.json:
        print(json.dumps({"frontier": [p.to_json() for p in points]}, indent=2))
    else:
        print(format_frontier(trace, points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
