"""Held-out workloads: other families of distributions than ``bench.generate``'s suite.

    python -m bench.heldout --list
    python -m bench.heldout pareto_mix --seed 900003 -o t.json [--at-zero]

The standard suite (``bench.generate``) was what the planner was tuned on: lognormal
test durations clipped to 20-300 s, estimates 15 % high for 90 % of the tests, fixed
installs (60/120/90 s), uniform family sizes. A planner that only holds there is tuned,
not good. These kinds draw from other families, and every parameter is itself drawn from
the seed (``heldout_params``), so no two seeds share a shape:

* durations lognormal (wide sigma, 5-900 s) or Pareto (heavy tail), family sizes
  lognormal or Pareto;
* install times per target anywhere from 15 s to 180 s, in one trace very different;
* estimates with a per-trace bias and multiplicative noise (sigma up to 0.5), and a
  missing share up to 35 %;
* agents already holding a family's app (warm) or another build (stale);
* an online working day: Poisson arrivals of suites, about 10 % of them priority 1,
  with CI bursts on top.

Kinds (the issue's five workloads): ``burst3`` (a 3-org burst over all three targets with
very different install times), ``giant`` (one giant family), ``tiny`` (hundreds of
install-dominated tiny families), ``pareto_mix`` (Pareto-sized families, noisy estimates),
``online_day`` (the working day; ``--at-zero`` moves its arrivals to 0). The same kind and
seed give the same trace; the seeds the report uses are in ``bench.heldout_report``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.generate import (
    AGENT_PREFIX,
    AREAS,
    ORGS,
    SLOWDOWN,
    SuiteRun,
    all_at_zero,
    split_counts,
)
from bench.trace import AgentSpec, App, InstalledApp, JobSpec, Trace, dump_trace

TARGETS = ("browserstack", "device", "emulator")
MIN_INSTALL_S, MAX_INSTALL_S = 15.0, 180.0
# burst3: one install band per target (shuffled), so installs differ by 3-12x in a trace.
INSTALL_BANDS = ((15.0, 40.0), (60.0, 110.0), (130.0, 180.0))
# A run of a test differs from its catalogue base by this much (lognormal sigma).
RUN_NOISE = 0.15
DAY_S = 8 * 3600.0


@dataclass(frozen=True)
class Lognormal:
    """exp(N(log median, sigma)), clipped to [low, high]."""

    median: float
    sigma: float
    low: float
    high: float

    def draw(self, rng: random.Random) -> float:
        return min(self.high, max(self.low, rng.lognormvariate(math.log(self.median), self.sigma)))


@dataclass(frozen=True)
class Pareto:
    """xmin * Pareto(alpha) (support [xmin, inf)), capped at high."""

    xmin: float
    alpha: float
    high: float

    @property
    def low(self) -> float:
        return self.xmin

    def draw(self, rng: random.Random) -> float:
        return min(self.high, self.xmin * rng.paretovariate(self.alpha))


Distribution = Lognormal | Pareto


@dataclass(frozen=True)
class Estimates:
    """What history tells the planner: typical x exp(bias) x lognormal(0, sigma), or none
    for a ``missing`` share of the tests (new tests)."""

    bias: float
    sigma: float
    missing: float

    def draw(self, rng: random.Random, typical: float) -> float | None:
        if rng.random() < self.missing:
            return None
        return round(
            max(1.0, typical * math.exp(self.bias) * rng.lognormvariate(0.0, self.sigma)), 1
        )


@dataclass(frozen=True)
class DayShape:
    """The online day: suites arrive as a Poisson process over ``day_s``."""

    day_s: float
    load: float  # offered work / pool capacity over the day, per target
    urgent_share: float  # share of suites at priority 1
    bursts: int  # CI bursts on top: several suites of one build within burst_window_s
    burst_window_s: float = 120.0
    rerun_share: float = 0.35


@dataclass(frozen=True)
class Params:
    """Everything one held-out trace was drawn from (itself drawn from the seed)."""

    kind: str
    jobs: int  # the number of jobs in the trace (exact)
    agents: dict[str, int]  # per target (for online_day: derived from the load, see build)
    install_s: dict[str, float]
    durations: Distribution  # a test's base duration (its catalogue entry)
    family_size: Distribution | None  # tests per family (None: the kind splits the jobs)
    estimates: Estimates
    orgs: int
    warm_share: float = 0.0  # agents holding a waiting family's app at 0
    stale_share: float = 0.0  # agents holding another build at 0
    day: DayShape | None = None
    priorities: tuple[int, ...] = (3, 4, 5, 6, 7)

    @property
    def duration_bounds(self) -> tuple[float, float]:
        return self.durations.low, self.durations.high


@dataclass
class _Builder:
    rng: random.Random
    params: Params
    suites: list[SuiteRun] = field(default_factory=list)
    catalogs: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    builds: dict[str, int] = field(default_factory=dict)

    def new_version(self, org: str) -> str:
        self.builds[org] = self.builds.get(org, 2000 + self.rng.randrange(7000)) + 1
        return self._name(org)

    def last_version(self, org: str) -> str:
        """The org's latest build (a re-run), or a first one."""
        return self._name(org) if org in self.builds else self.new_version(org)

    def _name(self, org: str) -> str:
        build = self.builds[org]
        return f"{org[:3]}-{build // 100}.{build % 100}.0+{build}"

    def _catalog(self, org: str, size: int) -> list[tuple[str, float]]:
        catalog = self.catalogs.setdefault(org, [])
        while len(catalog) < size:
            area = AREAS[len(catalog) % len(AREAS)]
            base = self.params.durations.draw(self.rng)
            catalog.append((f"tests/{area}/{area}_{len(catalog):04d}.spec.ts", base))
        return catalog

    def _job(self, suite: SuiteRun, path: str, base: float) -> JobSpec:
        low, high = self.params.duration_bounds
        typical = base * SLOWDOWN[suite.target]
        duration = min(high, max(low, typical * self.rng.lognormvariate(0.0, RUN_NOISE)))
        return suite.job(path, duration, self.params.estimates.draw(self.rng, typical))

    def jobs(self) -> list[JobSpec]:
        made: list[JobSpec] = []
        for suite in self.suites:
            catalog = self._catalog(suite.org_id, suite.size)
            start = self.rng.randrange(len(catalog) - suite.size + 1)
            made.extend(self._job(suite, *catalog[start + i]) for i in range(suite.size))
        ordered = sorted(enumerate(made), key=lambda item: (item[1].arrival_s, item[0]))
        return [job.model_copy(update={"id": f"j{n:05d}"}) for n, (_, job) in enumerate(ordered)]


def _sizes(rng: random.Random, total: int, dist: Distribution) -> list[int]:
    """Family sizes drawn from ``dist`` (rounded, at least 1) until they sum to ``total``."""
    sizes: list[int] = []
    left = total
    while left > 0:
        size = min(left, max(1, round(dist.draw(rng))))
        sizes.append(size)
        left -= size
    return sizes


def _agent_ids(pools: dict[str, int]) -> dict[str, list[str]]:
    return {
        t: [f"{AGENT_PREFIX[t]}-{i + 1:03d}" for i in range(n)] for t, n in sorted(pools.items())
    }


def _agents(
    rng: random.Random, builder: _Builder, pools: dict[str, int], stale: dict[str, App]
) -> list[AgentSpec]:
    """Agents; ``warm_share`` of each pool hold one of its waiting families' apps (larger
    families more often), ``stale_share`` an older build of a waiting org."""
    params = builder.params
    work: dict[tuple[str, App], int] = {}
    for suite in builder.suites:
        key = (suite.target, App(suite.org_id, suite.app_version_id))
        work[key] = work.get(key, 0) + suite.size
    specs = []
    for target, ids in _agent_ids(pools).items():
        families = sorted((app for t, app in work if t == target), key=lambda a: -work[target, a])
        for agent_id in ids:
            roll = rng.random()
            held: App | None = None
            if roll < params.warm_share and families:
                weights = [work[target, a] for a in families]
                held = rng.choices(families, weights=weights)[0]
            elif roll < params.warm_share + params.stale_share and stale:
                held = stale[rng.choice(sorted(stale))]
            installed = (
                None if held is None else InstalledApp(org_id=held[0], app_version_id=held[1])
            )
            specs.append(AgentSpec(id=agent_id, target=target, installed=installed))
    return specs


def _trace(builder: _Builder, agents: list[AgentSpec]) -> Trace:
    install = builder.params.install_s
    return Trace(
        agents=agents,
        install_s={t: install[t] for t in sorted({a.target for a in agents})},
        jobs=builder.jobs(),
    )


def _installs(rng: random.Random, targets: Sequence[str]) -> dict[str, float]:
    return {t: round(rng.uniform(MIN_INSTALL_S, MAX_INSTALL_S)) for t in targets}


def _pools(rng: random.Random, agents: int, shares: dict[str, float]) -> dict[str, int]:
    targets = sorted(shares)
    return dict(zip(targets, split_counts(rng, agents, [shares[t] for t in targets]), strict=True))


# --- the kinds: each draws its Params from the rng, then builds the trace ---------------


def _burst3_params(rng: random.Random) -> Params:
    bands = list(INSTALL_BANDS)
    rng.shuffle(bands)
    agents = rng.randint(20, 32)
    shares = {t: rng.uniform(0.15, 0.5) for t in TARGETS}
    return Params(
        kind="burst3",
        jobs=rng.randint(600, 1000),
        agents=_pools(rng, agents, shares),
        install_s={t: round(rng.uniform(*band)) for t, band in zip(TARGETS, bands, strict=True)},
        durations=Lognormal(rng.uniform(40, 100), rng.uniform(0.5, 0.9), 10.0, 600.0),
        family_size=None,
        estimates=Estimates(rng.uniform(0.0, 0.2), rng.uniform(0.1, 0.2), rng.uniform(0.05, 0.15)),
        orgs=3,
        priorities=(3, 5),
    )


def _burst3(rng: random.Random, params: Params) -> Trace:
    builder = _Builder(rng, params)
    specs = []
    for org in ORGS[:3]:
        for _ in range(rng.randint(1, 2)):
            version = builder.new_version(org)
            priority = rng.choice(params.priorities)
            specs += [(org, version, t, priority) for t in TARGETS]
    # Work follows the pools, with noise: a target's families together are about its share.
    weights = [params.agents[s[2]] * rng.lognormvariate(0.0, 0.7) for s in specs]
    for (org, version, target, priority), size in zip(
        specs, split_counts(rng, params.jobs, weights), strict=True
    ):
        builder.suites.append(SuiteRun(org, version, target, size, priority))
    return _trace(builder, _agents(rng, builder, params.agents, {}))


def _giant_params(rng: random.Random) -> Params:
    target = rng.choice(TARGETS)
    return Params(
        kind="giant",
        jobs=rng.randint(1000, 1600),
        agents={target: rng.randint(12, 24)},
        install_s=_installs(rng, [target]),
        durations=Pareto(rng.uniform(15, 30), rng.uniform(1.8, 2.6), 600.0),
        family_size=None,
        estimates=Estimates(rng.uniform(-0.1, 0.2), rng.uniform(0.2, 0.3), rng.uniform(0.1, 0.2)),
        orgs=rng.randint(4, 7),
    )


GIANT_SHARE = (0.85, 0.95)


def _giant(rng: random.Random, params: Params) -> Trace:
    builder = _Builder(rng, params)
    (target,) = params.agents
    giant = round(params.jobs * rng.uniform(*GIANT_SHARE))
    builder.suites.append(SuiteRun("bigco", builder.new_version("bigco"), target, giant, 5))
    small = ORGS[: params.orgs - 1]
    sizes = split_counts(rng, params.jobs - giant, [rng.uniform(0.3, 1.7) for _ in small])
    for org, size in zip(small, sizes, strict=True):
        builder.suites.append(
            SuiteRun(org, builder.new_version(org), target, size, rng.choice(params.priorities))
        )
    return _trace(builder, _agents(rng, builder, params.agents, {}))


def _tiny_params(rng: random.Random) -> Params:
    agents = rng.randint(12, 24)
    shares = {t: rng.uniform(0.2, 0.5) for t in TARGETS}
    return Params(
        kind="tiny",
        jobs=rng.randint(700, 1100),
        agents=_pools(rng, agents, shares),
        install_s={t: round(rng.uniform(60, MAX_INSTALL_S)) for t in TARGETS},
        durations=Lognormal(rng.uniform(15, 35), 0.5, 5.0, 120.0),
        family_size=Lognormal(2.0, 0.6, 1.0, 5.0),
        estimates=Estimates(rng.uniform(0.0, 0.2), 0.2, rng.uniform(0.15, 0.25)),
        orgs=12,
    )


def _tiny(rng: random.Random, params: Params) -> Trace:
    assert params.family_size is not None
    builder = _Builder(rng, params)
    weights = [params.agents[t] for t in TARGETS]
    for size in _sizes(rng, params.jobs, params.family_size):
        org = rng.choice(ORGS[: params.orgs])
        target = rng.choices(TARGETS, weights=weights)[0]
        builder.suites.append(
            SuiteRun(org, builder.new_version(org), target, size, rng.choice(params.priorities))
        )
    return _trace(builder, _agents(rng, builder, params.agents, {}))


def _pareto_params(rng: random.Random) -> Params:
    agents = rng.randint(20, 32)
    shares = {t: rng.uniform(0.15, 0.5) for t in TARGETS}
    return Params(
        kind="pareto_mix",
        jobs=rng.randint(1000, 1600),
        agents=_pools(rng, agents, shares),
        install_s=_installs(rng, TARGETS),
        durations=Lognormal(rng.uniform(40, 90), rng.uniform(0.6, 0.9), 5.0, 900.0),
        family_size=Pareto(rng.choice((2.0, 3.0)), rng.uniform(1.1, 1.6), 400.0),
        estimates=Estimates(
            rng.uniform(-0.15, 0.3), rng.uniform(0.35, 0.5), rng.uniform(0.2, 0.35)
        ),
        orgs=rng.randint(6, 10),
        warm_share=rng.uniform(0.0, 0.3),
        stale_share=rng.uniform(0.0, 0.2),
    )


def _pareto_mix(rng: random.Random, params: Params) -> Trace:
    assert params.family_size is not None
    builder = _Builder(rng, params)
    orgs = ORGS[: params.orgs]
    stale = {org: App(org, builder.new_version(org)) for org in orgs}
    weights = [params.agents[t] for t in TARGETS]
    for size in _sizes(rng, params.jobs, params.family_size):
        org = rng.choice(orgs)
        # Half the families are another target's run of the org's current build.
        version = builder.last_version(org) if rng.random() < 0.5 else builder.new_version(org)
        target = rng.choices(TARGETS, weights=weights)[0]
        builder.suites.append(SuiteRun(org, version, target, size, rng.choice(params.priorities)))
    return _trace(builder, _agents(rng, builder, params.agents, stale))


def _day_params(rng: random.Random) -> Params:
    return Params(
        kind="online_day",
        jobs=rng.randint(2500, 3500),
        agents={},  # from the load: see _online_day
        install_s=_installs(rng, TARGETS),
        durations=Lognormal(rng.uniform(45, 90), rng.uniform(0.5, 0.8), 10.0, 600.0),
        family_size=Lognormal(15.0, 0.9, 1.0, 200.0),
        estimates=Estimates(rng.uniform(0.0, 0.2), rng.uniform(0.15, 0.3), rng.uniform(0.1, 0.2)),
        orgs=rng.randint(5, 8),
        warm_share=rng.uniform(0.3, 0.5),
        stale_share=rng.uniform(0.1, 0.2),
        day=DayShape(DAY_S, rng.uniform(0.8, 0.95), 0.1, rng.randint(2, 4)),
        priorities=(3, 4, 5, 6, 7),
    )


URGENT_SIZE = Lognormal(5.0, 0.7, 1.0, 30.0)
TARGET_SHARES = {"emulator": 0.55, "device": 0.3, "browserstack": 0.15}


def _online_day(rng: random.Random, params: Params) -> Trace:
    assert params.family_size is not None
    assert params.day is not None
    day = params.day
    builder = _Builder(rng, params)
    orgs = ORGS[: params.orgs]
    current = {org: App(org, builder.new_version(org)) for org in orgs}  # warm at 0
    stale = {org: App(org, f"{current[org][1]}-old") for org in orgs}
    activity = [rng.uniform(0.5, 2.0) for _ in orgs]
    targets = sorted(TARGET_SHARES)
    left = params.jobs
    suites: list[SuiteRun] = []
    while left > 0:
        org = rng.choices(orgs, weights=activity)[0]
        version = (
            builder.last_version(org)
            if rng.random() < day.rerun_share
            else builder.new_version(org)
        )
        urgent = rng.random() < day.urgent_share
        size = round((URGENT_SIZE if urgent else params.family_size).draw(rng))
        size = max(1, min(left, size))
        target = rng.choices(targets, weights=[TARGET_SHARES[t] for t in targets])[0]
        suites.append(
            SuiteRun(org, version, target, size, 1 if urgent else rng.choice(params.priorities))
        )
        left -= size
    # Arrivals: a Poisson process (exponential gaps) rescaled onto the day; then some
    # suites become bursts: a build on every target within a short window.
    gaps = [rng.expovariate(1.0) for _ in suites]
    scale = day.day_s / sum(gaps)
    clock = 0.0
    for suite, gap in zip(suites, gaps, strict=True):
        clock += gap * scale
        suite.arrival_s = min(day.day_s, clock)
    normal = [s for s in suites if s.priority != 1]
    chosen = rng.sample(normal, min(len(normal), day.bursts * len(targets)))
    for b in range(day.bursts):
        group = chosen[b * len(targets) : (b + 1) * len(targets)]
        if not group:
            continue
        at = rng.uniform(0.1, 0.8) * day.day_s
        org = group[0].org_id
        version = builder.new_version(org)  # a CI burst: a new build on every target
        for suite, target in zip(group, targets, strict=False):
            suite.org_id, suite.app_version_id, suite.target = org, version, target
            suite.arrival_s = at + rng.uniform(0.0, day.burst_window_s)
    builder.suites = suites
    # Pools sized to the offered load: expected work per target / (load x day).
    mean_s = _mean(params.durations, rng)
    pools = {}
    for target in targets:
        work = sum(s.size for s in suites if s.target == target) * mean_s * SLOWDOWN[target]
        pools[target] = max(2, round(work / (day.load * day.day_s)))
    final = Params(**{**params.__dict__, "agents": pools})
    builder.params = final
    return _trace(builder, _agents(rng, builder, pools, stale))


def _mean(dist: Distribution, rng: random.Random, samples: int = 4000) -> float:
    """The distribution's mean after clipping (by sampling a private stream)."""
    local = random.Random(rng.random())
    return sum(dist.draw(local) for _ in range(samples)) / samples


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    params: Callable[[random.Random], Params]
    build: Callable[[random.Random, Params], Trace]
    online: bool = False  # has arrivals over time (evaluated both online and at 0)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "burst3",
            "3 orgs x 1-2 builds x 3 targets at 0, installs 15-40/60-110/130-180 s by target",
            _burst3_params,
            _burst3,
        ),
        Kind(
            "giant",
            "one family with 85-95% of the jobs, Pareto durations, one pool",
            _giant_params,
            _giant,
        ),
        Kind(
            "tiny",
            "hundreds of 1-5-test families of 5-120 s tests, installs 60-180 s",
            _tiny_params,
            _tiny,
        ),
        Kind(
            "pareto_mix",
            "Pareto family sizes, noisy/biased estimates (20-35% missing), some warm agents",
            _pareto_params,
            _pareto_mix,
        ),
        Kind(
            "online_day",
            "an 8 h day of Poisson suites (10% priority 1) with CI bursts, warm agents",
            _day_params,
            _online_day,
            online=True,
        ),
    )
}


def _rng(kind: str, seed: int) -> random.Random:
    # A string seed is hashed (SHA-512) by random.Random: deterministic across runs and
    # platforms, and the kinds never share a stream for one seed.
    return random.Random(f"heldout:{kind}:{seed}")


def _kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown held-out kind {name!r}; choose from {', '.join(KINDS)}"
        ) from None


def heldout_case(kind: str, seed: int) -> tuple[Params, Trace]:
    """The parameters drawn for (kind, seed) and the trace drawn from them."""
    spec = _kind(kind)
    rng = _rng(kind, seed)
    params = spec.params(rng)
    trace = spec.build(rng, params)
    if params.kind == "online_day":
        params = Params(**{**params.__dict__, "agents": _pool_sizes(trace)})
    return params, trace


def _pool_sizes(trace: Trace) -> dict[str, int]:
    return {t: len(trace.agents_of(t)) for t in sorted({a.target for a in trace.agents})}


def heldout_params(kind: str, seed: int) -> Params:
    return heldout_case(kind, seed)[0]


def heldout_trace(kind: str, seed: int, *, at_zero: bool = False) -> Trace:
    trace = heldout_case(kind, seed)[1]
    return all_at_zero(trace) if at_zero else trace


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.heldout", description="Generate a held-out benchmark trace."
    )
    parser.add_argument("kind", nargs="?", help="held-out kind (see --list)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--at-zero", action="store_true", help="every job arrives at 0")
    parser.add_argument("-o", "--output", type=Path, help="trace file to write")
    parser.add_argument("--list", action="store_true", help="list the kinds")
    args = parser.parse_args(argv)
    if args.list:
        for spec in KINDS.values():
            print(f"{spec.name:<11} {spec.description}")
        return 0
    if not args.kind or not args.output:
        parser.error("give KIND and -o FILE (or --list)")
    try:
        trace = heldout_trace(args.kind, args.seed, at_zero=args.at_zero)
    except ValueError as error:
        parser.error(str(error))
    dump_trace(trace, args.output)
    print(f"{args.output}: {len(trace.jobs)} jobs, {len(trace.agents)} agents", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
