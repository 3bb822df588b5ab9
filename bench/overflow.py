"""When overflow to BrowserStack pays: ours with and without ``--overflow browserstack``.

    python -m bench.overflow [--seed N] [--plot bench/overflow.png] [--json]

Each trace is a busy emulator pool (suites of several orgs, all at 0, every job allowed to
overflow) next to a BrowserStack pool that has a queue of its own. The sweep raises
BrowserStack's own queue (seconds of its own work per BrowserStack agent) from nothing to
more than the emulator pool's; a few named cases add the other ways it stops paying (an
emulator pool with room to spare, a slow BrowserStack upload). Every trace runs twice
under ours (``QgjobPolicy``): without overflow, and with ``OverflowPolicy()`` (the
dispatcher's defaults). Reported per run: when the overflow suites finish (the last
emulator-submitted job's end), when BrowserStack's own work finishes, the makespan, the
installs, the jobs moved and the BrowserStack minutes they cost (their installs and tests
on BrowserStack agents), per moved job and per submitted job.

Moved tests run on BrowserStack for their emulator duration (the simulator has one
duration per job), so the gains are an upper bound where BrowserStack runs slower.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.metrics import compute_metrics
from bench.policies import QgjobPolicy
from bench.simulator import DEFAULT_TICK_S, Schedule, simulate, validate_schedule
from bench.trace import OVERFLOW_TARGET, AgentSpec, JobSpec, Trace
from qgjob_backend.domain.overflow import OverflowPolicy

DEFAULT_SEED = 7
DEFAULT_PLOT = Path(__file__).with_name("overflow.png")
INSTALL_S = {"emulator": 60.0, OVERFLOW_TARGET: 90.0}
EMULATORS = 6
BROWSERSTACKS = 4
SUITES = 3  # overflow suites (one org and app version each)
TESTS_PER_SUITE = 80
MEDIAN_TEST_S = 70.0
# BrowserStack's own queue, in seconds of work per BrowserStack agent.
REMOTE_LOADS_S: tuple[float, ...] = (0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0)


@dataclass(frozen=True)
class Case:
    name: str
    remote_load_s: float  # BrowserStack's own queue, seconds per agent
    tests_per_suite: int = TESTS_PER_SUITE
    remote_install_s: float = INSTALL_S[OVERFLOW_TARGET]


NAMED_CASES: tuple[Case, ...] = (
    Case("emulators saturated, BrowserStack idle", 0.0),
    Case("emulators saturated, BrowserStack as busy", 3000.0),
    Case("emulators with room: 2 tests a suite", 0.0, tests_per_suite=2),
    Case("emulators nearly free: 8 tests a suite", 0.0, tests_per_suite=8),
    Case("BrowserStack upload of 15 min", 0.0, remote_install_s=900.0),
    Case("BrowserStack upload of 30 min", 0.0, remote_install_s=1800.0),
)


def _duration(rng: random.Random) -> float:
    return round(min(300.0, max(20.0, rng.lognormvariate(math.log(MEDIAN_TEST_S), 0.5))), 1)


def overflow_trace(case: Case, seed: int, *, overflow: bool = True) -> Trace:
    """A busy emulator pool whose suites may overflow, and BrowserStack's own queue."""
    # The suites do not depend on BrowserStack's queue: a sweep changes only that queue.
    suites_rng = random.Random(f"{seed}:{case.tests_per_suite}")
    own_rng = random.Random(f"{seed}:own:{case.remote_load_s}")
    rng = suites_rng
    agents = [AgentSpec(id=f"emu-{i:02d}", target="emulator") for i in range(EMULATORS)]
    agents += [AgentSpec(id=f"bs-{i:02d}", target=OVERFLOW_TARGET) for i in range(BROWSERSTACKS)]
    jobs: list[JobSpec] = []

    def job(org: str, app: str, target: str, may_overflow: bool) -> JobSpec:
        duration = _duration(rng)
        return JobSpec(
            id=f"j{len(jobs):04d}",
            arrival_s=0.0,
            org_id=org,
            app_version_id=app,
            target=target,
            test_path=f"tests/{org}/t{len(jobs):04d}.spec.ts",
            priority=5,
            duration_s=duration,
            # History is a little pessimistic and noisy, as estimates are.
            estimate_s=round(duration * rng.uniform(0.9, 1.25), 1),
            overflow=may_overflow,
        )

    for suite in range(SUITES):
        for _ in range(case.tests_per_suite):
            jobs.append(job(f"org{suite}", f"v{suite}", "emulator", overflow))
    rng = own_rng
    own_work = case.remote_load_s * BROWSERSTACKS
    while own_work > 0:
        own = job("bsorg", f"b{len(jobs) % 4}", OVERFLOW_TARGET, False)
        jobs.append(own)
        own_work -= own.duration_s
    install_s = dict(INSTALL_S, **{OVERFLOW_TARGET: case.remote_install_s})
    return Trace(agents=agents, install_s=install_s, jobs=jobs)


@dataclass(frozen=True)
class OverflowRun:
    """One simulated run of a trace under ours."""

    overflow: bool
    suites_end_s: float  # the last overflow-suite job's end
    mean_suite_end_s: float  # each overflow suite's last job's end, averaged over suites
    remote_own_end_s: float  # the last of BrowserStack's own jobs' end (0: none)
    makespan_s: float
    installs: int
    moved: int
    remote_minutes: float  # installs and tests of moved jobs on BrowserStack agents
    submitted: int  # jobs of the overflow suites

    @property
    def minutes_per_moved_job(self) -> float:
        return self.remote_minutes / self.moved if self.moved else 0.0

    @property
    def minutes_per_submitted_job(self) -> float:
        return self.remote_minutes / self.submitted if self.submitted else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "overflow": self.overflow,
            "suites_end_s": round(self.suites_end_s, 1),
            "mean_suite_end_s": round(self.mean_suite_end_s, 1),
            "browserstack_own_end_s": round(self.remote_own_end_s, 1),
            "makespan_s": round(self.makespan_s, 1),
            "installs": self.installs,
            "moved_jobs": self.moved,
            "browserstack_minutes": round(self.remote_minutes, 1),
            "browserstack_minutes_per_moved_job": round(self.minutes_per_moved_job, 2),
            "browserstack_minutes_per_submitted_job": round(self.minutes_per_submitted_job, 2),
        }


def measure(trace: Trace, schedule: Schedule, *, overflow: bool) -> OverflowRun:
    """What a (valid) schedule of an overflow trace achieved."""
    jobs = {j.id: j for j in trace.jobs}
    remote_agents = {a.id for a in trace.agents if a.target == OVERFLOW_TARGET}
    suites_end = own_end = remote_s = 0.0
    moved = 0
    moved_apps = set()
    suite_ends: dict[tuple[str, str], float] = {}
    for agent_id, lane in schedule.items():
        for seg in lane:
            if seg.kind != "test" or seg.job_id is None:
                continue
            job = jobs[seg.job_id]
            if job.target == OVERFLOW_TARGET:
                own_end = max(own_end, seg.end_s)
                continue
            suites_end = max(suites_end, seg.end_s)
            suite = (job.org_id, job.app_version_id)
            suite_ends[suite] = max(suite_ends.get(suite, 0.0), seg.end_s)
            if agent_id in remote_agents:
                moved += 1
                remote_s += seg.end_s - seg.start_s
                moved_apps.add((seg.org_id, seg.app_version_id))
    for agent_id in remote_agents:
        for seg in schedule.get(agent_id, []):
            if seg.kind == "install" and (seg.org_id, seg.app_version_id) in moved_apps:
                remote_s += seg.end_s - seg.start_s
    metrics = compute_metrics(trace, schedule)
    return OverflowRun(
        overflow=overflow,
        suites_end_s=suites_end,
        mean_suite_end_s=sum(suite_ends.values()) / len(suite_ends) if suite_ends else 0.0,
        remote_own_end_s=own_end,
        makespan_s=metrics.makespan_s,
        installs=metrics.installs,
        moved=moved,
        remote_minutes=remote_s / 60.0,
        submitted=sum(j.target != OVERFLOW_TARGET for j in trace.jobs),
    )


def run_case(
    case: Case,
    seed: int,
    policy: OverflowPolicy | None = None,
    tick_s: float | None = DEFAULT_TICK_S,
) -> tuple[OverflowRun, OverflowRun]:
    """The case without and with overflow (the same trace, ``policy`` or the defaults)."""
    runs = []
    for overflow in (False, True):
        trace = overflow_trace(case, seed, overflow=overflow)
        ours = QgjobPolicy(overflow=(policy or OverflowPolicy()) if overflow else None)
        result = simulate(trace, ours, tick_s=tick_s)
        problems = validate_schedule(trace, result.schedule)
        if problems:
            raise RuntimeError(f"{case.name}: invalid schedule: {problems[:3]}")
        runs.append(measure(trace, result.schedule, overflow=overflow))
    return runs[0], runs[1]


def sweep(
    seed: int, loads: Sequence[float] | None = None, tick_s: float | None = DEFAULT_TICK_S
) -> list[tuple[float, OverflowRun, OverflowRun]]:
    """Saturated emulators, BrowserStack's own queue rising (``REMOTE_LOADS_S``):
    (load, without, with)."""
    return [
        (load, *run_case(Case(f"load {load:g}", load), seed, tick_s=tick_s))
        for load in (REMOTE_LOADS_S if loads is None else loads)
    ]


def format_runs(rows: Sequence[tuple[str, OverflowRun, OverflowRun]]) -> str:
    lines = [
        "case                                        overflow  suites end  mean suite  "
        "BS own end  makespan  installs  moved  BS min  BS min/moved  BS min/job",
    ]
    for name, *runs in rows:
        for run in runs:
            lines.append(
                f"{name:<44}{'on' if run.overflow else 'off':>8}  {run.suites_end_s:>10.0f}  "
                f"{run.mean_suite_end_s:>10.0f}  {run.remote_own_end_s:>10.0f}  "
                f"{run.makespan_s:>8.0f}  {run.installs:>8}  "
                f"{run.moved:>5}  {run.remote_minutes:>6.1f}  "
                f"{run.minutes_per_moved_job:>12.2f}  {run.minutes_per_submitted_job:>10.2f}"
            )
    return "\n".join(lines)


def plot_sweep(points: Sequence[tuple[float, OverflowRun, OverflowRun]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [p[0] for p in points]
    figure, (ends, cost) = plt.subplots(1, 2, figsize=(11, 4.2))
    ends.plot(loads, [p[1].suites_end_s for p in points], "o-", label="suites end, no overflow")
    ends.plot(loads, [p[2].suites_end_s for p in points], "s-", label="suites end, overflow")
    ends.plot(
        loads,
        [p[2].remote_own_end_s for p in points],
        "^--",
        alpha=0.7,
        label="BrowserStack's own work ends, overflow",
    )
    ends.plot(
        loads,
        [p[1].remote_own_end_s for p in points],
        "v:",
        alpha=0.7,
        label="BrowserStack's own work ends, no overflow",
    )
    ends.set_xlabel("BrowserStack's own queue (s of work per BrowserStack agent)")
    ends.set_ylabel("time (s)")
    ends.set_title(
        f"{SUITES} suites x {TESTS_PER_SUITE} tests on {EMULATORS} emulators, "
        f"{BROWSERSTACKS} BrowserStack agents",
        fontsize=9,
    )
    ends.legend(fontsize=8)
    cost.bar(
        [str(int(load)) for load in loads],
        [p[2].moved for p in points],
        color="#4c72b0",
        label="jobs moved",
    )
    cost.set_xlabel("BrowserStack's own queue (s per agent)")
    cost.set_ylabel("jobs moved to BrowserStack")
    minutes = cost.twinx()
    minutes.plot(
        [str(int(load)) for load in loads],
        [p[2].remote_minutes for p in points],
        "o-",
        color="#dd8452",
        label="BrowserStack minutes",
    )
    minutes.set_ylabel("BrowserStack minutes (moved installs + tests)")
    cost.set_title("what overflow spends", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overflow",
        description="When overflow to BrowserStack pays: ours with and without it.",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="trace seed")
    parser.add_argument(
        "--plot", type=Path, default=None, help=f"write the sweep plot (e.g. {DEFAULT_PLOT})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    named = [(c.name, *run_case(c, args.seed)) for c in NAMED_CASES]
    points = sweep(args.seed)
    if args.plot is not None:
        plot_sweep(points, args.plot)
    if args.json:
        print(
            json.dumps(
                {
                    "seed": args.seed,
                    "cases": [
                        {"case": name, "runs": [r.to_json() for r in runs]} for name, *runs in named
                    ],
                    "sweep": [
                        {"browserstack_own_s_per_agent": load, "runs": [a.to_json(), b.to_json()]}
                        for load, a, b in points
                    ],
                },
                indent=1,
            )
        )
        return 0
    print(format_runs(named))
    print()
    print(
        format_runs([(f"BrowserStack own queue {load:g} s/agent", a, b) for load, a, b in points])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
