"""Seeded workload generators, and the standard suite the benchmark reports on.

    python -m bench.generate --list
    python -m bench.generate ci_burst --seed 1 [--jobs 2400 --agents 60] [--at-zero] -o t.json
    python -m bench.generate --suite DIR        # every trace of the standard suite

Durations are lognormal-ish: each org has a catalogue of tests with a base duration
(median about 70 s, clipped to 20-300 s); a run of a test takes its base times a per-target
slowdown (devices and BrowserStack are slower than emulators) times a little noise.
``estimate_s`` is what history would say (a high percentile: base x slowdown x 1.15) for
90% of the tests; new tests have none. Installs take 60 s on an emulator, 120 s on a
device, 90 s on BrowserStack. The same scenario, seed and sizes give the same trace.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.trace import AgentSpec, App, InstalledApp, JobSpec, Trace, dump_trace

INSTALL_S = {"emulator": 60.0, "device": 120.0, "browserstack": 90.0}
AGENT_PREFIX = {"emulator": "emu", "device": "dev", "browserstack": "bs"}
SLOWDOWN = {"emulator": 1.0, "device": 1.15, "browserstack": 1.3}
MIXED_POOLS = {"emulator": 0.6, "device": 0.25, "browserstack": 0.15}
MIN_TEST_S, MAX_TEST_S = 20.0, 300.0
MEDIAN_TEST_S = 70.0
ESTIMATED_SHARE = 0.9
WORKDAY_S = 8 * 3600.0
AREAS = ("login", "checkout", "search", "profile", "cart", "settings", "feed", "payments")
ORGS = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "aperture",
)


def _clip(value: float, low: float = MIN_TEST_S, high: float = MAX_TEST_S) -> float:
    return min(high, max(low, value))


def split_counts(
    rng: random.Random, total: int, weights: Sequence[float], minimum: int = 1
) -> list[int]:
    """Splits ``total`` into len(weights) parts proportional to weights, each >= minimum."""
    parts = len(weights)
    if total < parts * minimum:
        raise ValueError(f"cannot split {total} into {parts} parts of at least {minimum}")
    spare = total - parts * minimum
    scale = spare / sum(weights)
    raw = [w * scale for w in weights]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(parts), key=lambda i: (counts[i] - raw[i], rng.random()))
    for i in order[: spare - sum(counts)]:
        counts[i] += 1
    return [c + minimum for c in counts]


@dataclass
class SuiteRun:
    """One suite of one app version on one target (a run), before its jobs are made."""

    org_id: str
    app_version_id: str
    target: str
    size: int
    priority: int
    arrival_s: float = 0.0

    def job(self, test_path: str, duration_s: float, estimate_s: float | None) -> JobSpec:
        """One of the suite's jobs (its id is given when the trace is made)."""
        return JobSpec(
            id="pending",
            arrival_s=round(self.arrival_s, 1),
            org_id=self.org_id,
            app_version_id=self.app_version_id,
            target=self.target,
            test_path=test_path,
            priority=self.priority,
            duration_s=round(duration_s, 1),
            estimate_s=estimate_s,
        )


@dataclass
class _Builder:
    """Collects runs (one suite of one app version on one target) and makes the trace."""

    rng: random.Random
    runs: list[SuiteRun] = field(default_factory=list)
    catalogs: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    def new_version(self, org: str) -> str:
        previous = self.versions.get(org)
        build = (previous if previous is not None else 1000 + self.rng.randrange(9000)) + 1
        self.versions[org] = build
        return f"{org[:3]}-{build // 100}.{build % 100}.0+{build}"

    def last_version(self, org: str) -> str | None:
        build = self.versions.get(org)
        return None if build is None else f"{org[:3]}-{build // 100}.{build % 100}.0+{build}"

    def add(self, run: SuiteRun) -> None:
        if run.size > 0:
            self.runs.append(run)

    def _catalog(self, org: str, size: int) -> list[tuple[str, float]]:
        catalog = self.catalogs.setdefault(org, [])
        while len(catalog) < size:
            area = AREAS[len(catalog) % len(AREAS)]
            base = _clip(self.rng.lognormvariate(math.log(MEDIAN_TEST_S), 0.55))
            catalog.append((f"tests/{area}/{area}_{len(catalog):04d}.spec.ts", base))
        return catalog

    def _job(self, run: SuiteRun, path: str, base: float) -> JobSpec:
        typical = base * SLOWDOWN[run.target]
        duration = _clip(typical * self.rng.lognormvariate(0.0, 0.12))
        known = self.rng.random() < ESTIMATED_SHARE
        return run.job(path, duration, round(typical * 1.15, 1) if known else None)

    def jobs(self) -> list[JobSpec]:
        made: list[JobSpec] = []
        for run in self.runs:
            catalog = self._catalog(run.org_id, run.size)
            start = self.rng.randrange(len(catalog) - run.size + 1)
            made.extend(self._job(run, *catalog[start + i]) for i in range(run.size))
        ordered = sorted(enumerate(made), key=lambda item: (item[1].arrival_s, item[0]))
        return [job.model_copy(update={"id": f"j{n:05d}"}) for n, (_, job) in enumerate(ordered)]


def make_agents(rng: random.Random, count: int, shares: dict[str, float]) -> dict[str, list[str]]:
    """Agent ids per target, ``count`` in all, split by ``shares`` (at least one each)."""
    targets = sorted(shares)
    sizes = split_counts(rng, count, [shares[t] for t in targets])
    return {
        target: [f"{AGENT_PREFIX[target]}-{i + 1:03d}" for i in range(size)]
        for target, size in zip(targets, sizes, strict=True)
    }


def _agent_specs(
    pools: dict[str, list[str]], warm: dict[str, App] | None = None
) -> list[AgentSpec]:
    warm = warm or {}
    return [
        AgentSpec(
            id=agent_id,
            target=target,
            installed=(
                InstalledApp(
                    org_id=warm[agent_id].org_id, app_version_id=warm[agent_id].app_version_id
                )
                if agent_id in warm
                else None
            ),
        )
        for target, ids in sorted(pools.items())
        for agent_id in ids
    ]


def _trace(builder: _Builder, agents: list[AgentSpec]) -> Trace:
    targets = {a.target for a in agents}
    return Trace(
        agents=agents,
        install_s={t: INSTALL_S[t] for t in sorted(targets)},
        jobs=builder.jobs(),
    )


def _weighted_target(rng: random.Random, shares: dict[str, float]) -> str:
    targets = sorted(shares)
    return rng.choices(targets, weights=[shares[t] for t in targets])[0]


def _burst_runs(
    builder: _Builder, jobs: int, orgs: Sequence[str], versions: int, shares: dict[str, float]
) -> None:
    """One family per (org, version, target), sizes proportional to the target's pool."""
    rng = builder.rng
    specs: list[tuple[str, str, str, int]] = []
    for org in orgs:
        for _ in range(versions):
            version = builder.new_version(org)
            priority = rng.choice((3, 5))
            specs.extend((org, version, target, priority) for target in sorted(shares))
    weights = [shares[s[2]] * rng.lognormvariate(0.0, 0.5) for s in specs]
    for (org, version, target, priority), size in zip(
        specs, split_counts(rng, jobs, weights), strict=True
    ):
        builder.add(SuiteRun(org, version, target, size, priority))


def ci_burst(rng: random.Random, jobs: int, agents: int) -> Trace:
    builder = _Builder(rng)
    pools = make_agents(rng, agents, MIXED_POOLS)
    _burst_runs(builder, jobs, ORGS[:3], 2, MIXED_POOLS)
    return _trace(builder, _agent_specs(pools))


def _poisson_times(rng: random.Random, count: int, window_s: float) -> list[float]:
    """A Poisson process over the window, conditioned on ``count`` events: sorted uniforms."""
    return sorted(rng.uniform(0.0, window_s) for _ in range(count))


def multi_org_day(rng: random.Random, jobs: int, agents: int) -> Trace:
    builder = _Builder(rng)
    pools = make_agents(rng, agents, MIXED_POOLS)
    orgs = ORGS[:6]
    activity = [rng.uniform(0.5, 2.0) for _ in orgs]
    runs: list[SuiteRun] = []
    left = jobs
    while left > 0:
        org = rng.choices(orgs, weights=activity)[0]
        rerun = builder.last_version(org) if rng.random() < 0.35 else None
        version = rerun or builder.new_version(org)
        size = min(left, int(_clip(round(rng.lognormvariate(math.log(25), 0.8)), 3, 200)))
        runs.append(
            SuiteRun(
                org, version, _weighted_target(rng, MIXED_POOLS), size, rng.choice((2, 3, 5, 5, 7))
            )
        )
        left -= size
    for run, arrival in zip(runs, _poisson_times(rng, len(runs), WORKDAY_S), strict=True):
        run.arrival_s = arrival
        builder.add(run)
    return _trace(builder, _agent_specs(pools))


def huge_family(rng: random.Random, jobs: int, agents: int) -> Trace:
    builder = _Builder(rng)
    pools = make_agents(rng, agents, {"emulator": 1.0})
    huge = round(jobs * 0.9)
    builder.add(SuiteRun("bigco", builder.new_version("bigco"), "emulator", huge, 5))
    small_orgs = ORGS[:4]
    sizes = split_counts(rng, jobs - huge, [rng.uniform(0.5, 1.5) for _ in small_orgs])
    for org, size in zip(small_orgs, sizes, strict=True):
        builder.add(SuiteRun(org, builder.new_version(org), "emulator", size, 5))
    return _trace(builder, _agent_specs(pools))


def many_tiny(rng: random.Random, jobs: int, agents: int) -> Trace:
    builder = _Builder(rng)
    pools = make_agents(rng, agents, MIXED_POOLS)
    left = jobs
    while left > 0:
        org = rng.choice(ORGS)
        size = min(left, rng.randint(1, 6))
        target = _weighted_target(rng, MIXED_POOLS)
        builder.add(SuiteRun(org, builder.new_version(org), target, size, rng.randint(3, 7)))
        left -= size
    return _trace(builder, _agent_specs(pools))


def _runs_of(
    builder: _Builder, jobs: int, sizes: tuple[int, int], priorities: Sequence[int]
) -> list[SuiteRun]:
    shares = {"emulator": 0.7, "device": 0.3}
    runs, left = [], jobs
    while left > 0:
        org = builder.rng.choice(ORGS[:6])
        size = min(left, builder.rng.randint(*sizes))
        target = _weighted_target(builder.rng, shares)
        priority = builder.rng.choice(priorities)
        runs.append(SuiteRun(org, builder.new_version(org), target, size, priority))
        left -= size
    return runs


def skewed_priorities(rng: random.Random, jobs: int, agents: int) -> Trace:
    """A low-priority nightly backlog at 0, urgent and normal runs arriving in the first hour."""
    builder = _Builder(rng)
    pools = make_agents(rng, agents, {"emulator": 0.7, "device": 0.3})
    urgent, normal = round(jobs * 0.1), round(jobs * 0.15)
    for run in _runs_of(builder, jobs - urgent - normal, (40, 150), (8, 9, 10)):
        builder.add(run)
    later = _runs_of(builder, urgent, (3, 15), (1,)) + _runs_of(builder, normal, (5, 30), (4, 5, 6))
    rng.shuffle(later)
    for run, arrival in zip(later, _poisson_times(rng, len(later), 3600.0), strict=True):
        run.arrival_s = arrival
        builder.add(run)
    return _trace(builder, _agent_specs(pools))


def warm_start(rng: random.Random, jobs: int, agents: int) -> Trace:
    """A CI burst on agents that already hold apps: half of them a family's, some stale."""
    builder = _Builder(rng)
    pools = make_agents(rng, agents, MIXED_POOLS)
    orgs = ORGS[3:7]
    stale = {org: App(org, builder.new_version(org)) for org in orgs}
    _burst_runs(builder, jobs, orgs, 2, MIXED_POOLS)
    families_by_target: dict[str, list[App]] = {}
    for run in sorted(builder.runs, key=lambda r: -r.size):
        families_by_target.setdefault(run.target, []).append(App(run.org_id, run.app_version_id))
    warm: dict[str, App] = {}
    for target, ids in pools.items():
        families = families_by_target.get(target, [])
        for i, agent_id in enumerate(ids):
            roll = rng.random()
            if roll < 0.5 and families:
                warm[agent_id] = families[i % len(families)]
            elif roll < 0.7:
                warm[agent_id] = stale[rng.choice(orgs)]
    return _trace(builder, _agent_specs(pools, warm))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    jobs: int
    agents: int
    build: Callable[[random.Random, int, int], Trace]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "ci_burst",
            "one CI burst at t=0: 3 orgs x 2 builds x 3 targets",
            2400,
            60,
            ci_burst,
        ),
        Scenario(
            "multi_org_day",
            "6 orgs, runs of 3-200 tests arriving as a Poisson process over an 8 h day",
            3000,
            24,
            multi_org_day,
        ),
        Scenario(
            "huge_family",
            "one family with 90% of the jobs plus 4 small ones, one emulator pool",
            1500,
            20,
            huge_family,
        ),
        Scenario("many_tiny", "families of 1-6 tests from 12 orgs", 600, 16, many_tiny),
        Scenario(
            "skewed_priorities",
            "a priority 8-10 backlog at 0; priority 1 and 4-6 runs arrive over the first hour",
            1200,
            16,
            skewed_priorities,
        ),
        Scenario(
            "warm_start",
            "a CI burst where half the agents already hold a family's app, some a stale one",
            800,
            24,
            warm_start,
        ),
    )
}


def generate(
    scenario: str,
    seed: int,
    *,
    jobs: int | None = None,
    agents: int | None = None,
    at_zero: bool = False,
) -> Trace:
    """The trace of ``scenario`` for ``seed`` (defaults: the scenario's sizes)."""
    try:
        spec = SCENARIOS[scenario]
    except KeyError:
        raise ValueError(
            f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}"
        ) from None
    trace = spec.build(random.Random(seed), jobs or spec.jobs, agents or spec.agents)
    if at_zero:
        trace = all_at_zero(trace)
    return trace


def all_at_zero(trace: Trace) -> Trace:
    """The same workload with every job arriving at 0 (where the lower bounds are tight)."""
    jobs = [j.model_copy(update={"arrival_s": 0.0}) for j in trace.jobs]
    return trace.model_copy(update={"jobs": jobs})


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    scenario: str
    seed: int
    at_zero: bool = False

    def trace(self) -> Trace:
        return generate(self.scenario, self.seed, at_zero=self.at_zero)


# The standard suite: fixed seeds, default sizes. "@0" entries move every arrival to 0.
SUITE: tuple[SuiteEntry, ...] = (
    SuiteEntry("ci_burst", "ci_burst", 11),
    SuiteEntry("huge_family", "huge_family", 12),
    SuiteEntry("many_tiny", "many_tiny", 13),
    SuiteEntry("warm_start", "warm_start", 14),
    SuiteEntry("skewed_priorities@0", "skewed_priorities", 15, at_zero=True),
    SuiteEntry("multi_org_day@0", "multi_org_day", 16, at_zero=True),
    SuiteEntry("skewed_priorities", "skewed_priorities", 15),
    SuiteEntry("multi_org_day", "multi_org_day", 16),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generate", description="Generate a benchmark trace."
    )
    parser.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--jobs", type=int, help="number of jobs (default: the scenario's)")
    parser.add_argument("--agents", type=int, help="number of agents (default: the scenario's)")
    parser.add_argument("--at-zero", action="store_true", help="every job arrives at 0")
    parser.add_argument("-o", "--output", type=Path, help="trace file to write")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--suite", type=Path, metavar="DIR", help="write the standard suite")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for spec in SCENARIOS.values():
            print(
                f"{spec.name:<18} {spec.jobs:>5} jobs {spec.agents:>3} agents  {spec.description}"
            )
        return 0
    if args.suite:
        args.suite.mkdir(parents=True, exist_ok=True)
        for entry in SUITE:
            path = args.suite / f"{entry.name.replace('@', '_at')}.json"
            dump_trace(entry.trace(), path)
            print(path)
        return 0
    if not args.scenario or not args.output:
        parser.error("give SCENARIO and -o FILE (or --list, or --suite DIR)")
    try:
        trace = generate(
            args.scenario, args.seed, jobs=args.jobs, agents=args.agents, at_zero=args.at_zero
        )
    except ValueError as error:
        parser.error(str(error))
    dump_trace(trace, args.output)
    print(f"{args.output}: {len(trace.jobs)} jobs, {len(trace.agents)} agents", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
