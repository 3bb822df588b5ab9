"""How long one planning call takes: ``plan_batches`` with 2,000 queued jobs and 50 idle
agents (reported, never asserted).

    python -m bench.plan_speed [--jobs 2000] [--agents 50] [--repeat 30] [--json]

Workload shapes: ``ci_burst`` (18 families over 3 pools), ``huge_family`` (one pool, one
family with 90% of the jobs) and ``many_tiny`` (hundreds of 1-6 job families), every job
waiting and every agent idle and cold: the planner's largest decision. The backlog and
agents are converted to ``BacklogJob`` / ``IdleAgent`` once (as the dispatcher reads them
from its store); only ``plan_batches`` is timed, ``repeat`` times (median and max).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.generate import generate
from bench.policies import DEFAULT_PLANNING, QgjobPolicy
from bench.simulator import QueuedJob
from qgjob_backend.domain.planner import IdleAgent, plan_batches

SHAPES = ("ci_burst", "huge_family", "many_tiny")


def measure(scenario: str, jobs: int, agents: int, repeat: int) -> dict[str, Any]:
    trace = generate(scenario, seed=7, jobs=jobs, agents=agents, at_zero=True)
    adapter = QgjobPolicy()
    backlog = [adapter.backlog_job(QueuedJob.of(j, i)) for i, j in enumerate(trace.jobs)]
    idle = [IdleAgent(a.id, a.target, None) for a in trace.agents]
    timings = []
    batches = 0
    for _ in range(repeat):
        started = time.perf_counter()
        plan = plan_batches(backlog, idle, 0.0, DEFAULT_PLANNING, (), dict(trace.install_s))
        timings.append(time.perf_counter() - started)
        batches = len(plan)
    return {
        "scenario": scenario,
        "jobs": len(backlog),
        "agents": len(idle),
        "families": len({j.group_key for j in backlog}),
        "batches_planned": batches,
        "median_ms": round(statistics.median(timings) * 1000, 2),
        "max_ms": round(max(timings) * 1000, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plan_speed", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [measure(s, args.jobs, args.agents, args.repeat) for s in SHAPES]
    if args.json:
        print(json.dumps({"plan_batches": rows}, indent=2))
        return 0
    print(f"plan_batches, {args.repeat} calls each (all jobs waiting, all agents idle and cold)")
    for row in rows:
        print(
            f"{row['scenario']:<12} {row['jobs']:>5} jobs {row['agents']:>3} agents "
            f"{row['families']:>4} families -> {row['batches_planned']:>3} batches: "
            f"median {row['median_ms']:.2f} ms, max {row['max_ms']:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
