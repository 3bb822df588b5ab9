"""The installs-versus-makespan frontier of the qgjob planner on one trace.

    python -m bench.schedule TRACE.json --frontier [--frontier-plot FILE.png]

The planner's one trade-off knob is ``PlanningPolicy.min_split_gain_s`` (env
``MIN_SPLIT_GAIN_SECONDS``, per pool ``MIN_SPLIT_GAIN_SECONDS_<TARGET>``): a split must
shorten the plan by that many seconds to buy its installs. Sweeping it gives one
(makespan, installs) point per value; the points no other point beats on both are the
frontier an operator chooses from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.bounds import installs_lower_bound, makespan_lower_bound
from bench.metrics import compute_metrics
from bench.policies import DEFAULT_PLANNING, QgjobPolicy
from bench.simulator import DEFAULT_TICK_S, simulate, validate_schedule
from bench.trace import Trace

# Knob values swept (seconds): from "any gain buys a split" to "never split".
GAINS: tuple[float, ...] = (0.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0, math.inf)


@dataclass(frozen=True)
class FrontierPoint:
    gain_s: float
    makespan_s: float
    installs: int
    installs_lower_bound: int  # at this point's makespan
    on_frontier: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "min_split_gain_s": None if math.isinf(self.gain_s) else self.gain_s,
            "makespan_s": round(self.makespan_s, 1),
            "installs": self.installs,
            "installs_lower_bound_at_makespan": self.installs_lower_bound,
            "on_frontier": self.on_frontier,
        }


def pareto(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """The points marked: on the frontier when no other point has makespan and installs
    both at most its own, one strictly less."""

    def beaten(p: FrontierPoint) -> bool:
        return any(
            q.makespan_s <= p.makespan_s
            and q.installs <= p.installs
            and (q.makespan_s < p.makespan_s or q.installs < p.installs)
            for q in points
        )

    return [replace(p, on_frontier=not beaten(p)) for p in points]


def frontier(
    trace: Trace, gains: Sequence[float] = GAINS, tick_s: float | None = DEFAULT_TICK_S
) -> list[FrontierPoint]:
    """One simulated schedule per knob value (validated), marked for the frontier."""
    points = []
    for gain in gains:
        # "Never split": a gain no plan can reach (the planner compares it with seconds).
        planning = replace(DEFAULT_PLANNING, min_split_gain_s=gain if gain < math.inf else 1e12)
        result = simulate(trace, QgjobPolicy(planning), tick_s=tick_s)
        problems = validate_schedule(trace, result.schedule)
        if problems:
            raise RuntimeError(f"min_split_gain_s={gain}: invalid schedule: {problems[:3]}")
        metrics = compute_metrics(trace, result.schedule)
        bound = installs_lower_bound(trace, metrics.makespan_s)
        points.append(FrontierPoint(gain, metrics.makespan_s, metrics.installs, bound))
    return pareto(points)


def format_frontier(trace: Trace, points: Sequence[FrontierPoint]) -> str:
    lower = makespan_lower_bound(trace)
    lines = [
        f"makespan lower bound {lower:.0f} s; the default knob is "
        f"{DEFAULT_PLANNING.min_split_gain_s:g} s",
        "",
        "min_split_gain_s  makespan_s  x LB  installs  installs LB  frontier",
    ]
    for p in points:
        gain = "never split" if math.isinf(p.gain_s) else f"{p.gain_s:g}"
        ratio = f"{p.makespan_s / lower:.3f}" if lower else "-"
        mark = "*" if p.on_frontier else ""
        lines.append(
            f"{gain:>16}  {p.makespan_s:>10.0f}  {ratio:>5}  {p.installs:>8}  "
            f"{p.installs_lower_bound:>11}  {mark:>8}"
        )
    return "\n".join(lines)


def plot_frontier(points: Sequence[FrontierPoint], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    on = sorted((p for p in points if p.on_frontier), key=lambda p: p.makespan_s)
    off = [p for p in points if not p.on_frontier]
    axes.plot([p.makespan_s for p in on], [p.installs for p in on], "o-", label="frontier")
    if off:
        axes.plot([p.makespan_s for p in off], [p.installs for p in off], "x", label="beaten")
    axes.plot(
        [p.makespan_s for p in points],
        [p.installs_lower_bound for p in points],
        "s",
        markersize=4,
        alpha=0.6,
        label="installs lower bound at that makespan",
    )
    # Knob values that give the same schedule share one label ("0 / 30 / 60 s").
    labels: dict[tuple[float, int], list[str]] = {}
    for p in points:
        name = "never" if math.isinf(p.gain_s) else f"{p.gain_s:g}"
        labels.setdefault((p.makespan_s, p.installs), []).append(name)
    for (makespan, installs), names in labels.items():
        text = " / ".join(names) + ("" if names == ["never"] else " s")
        axes.annotate(text, (makespan, installs), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("makespan (s), one point per min_split_gain_s")
    axes.set_ylabel("app installs")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
