"""The fleet benchmark: the whole local stack under a device fleet, metered and priced.

``python -m bench.fleet --jobs 5000 --clients 20 --agents 200 --kills 20`` starts the local
stack (``python -m infra.local_stack --no-agents``, metered: infra.metering), starts the
agents, and runs four phases:

1. **load**: ``--jobs`` jobs in suites of ``--suite-size`` from ``--clients`` concurrent
   clients (each a CI pipeline: submit a suite, follow it to the end like ``qgjob submit
   --wait``, submit the next), while ``--kills`` times an agent is SIGKILLed mid-test and
   started again with the same device id: requests and $ per job.
2. **idle**: every agent idle for ``--idle-window`` seconds: requests per idle agent-hour
   and $ per idle agent-day.
3. **latency**: ``--latency-samples`` single jobs, one at a time, each while agents of its
   target are idle: submit -> start (the agent's journal stamps the accepted start).
4. **verify**: every run read back from the API; every journal read.

Agents are the real `qgjob.agent.Agent` with the simulated runner: most of them as threads
of a few host processes (``--agent-procs``), the victims each in a process of its own
(``--victims``), since only a process can be SIGKILLed; see bench/README.md.
The exit code is 0 when every job is final, none was lost or completed twice, and no
request got a 5xx; 1 otherwise; 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.costs import (
    SECONDS_PER_DAY,
    Usage,
    api_requests,
    api_status_count,
    dollars,
    fixed_per_day,
    is_event_driven,
    usage_of,
    window,
)
from bench.fleet_agents import ClientStats, CountingSession
from bench.fleet_support import AgentProcess, BenchError, Journals, MeteredStack, wait_for
from bench.prices import PRICES_TAKEN_ON, REGION
from qgjob.client import ApiClient
from qgjob.errors import ApiError, InvalidInput, ServerError, Unreachable
from qgjob.follow import DEFAULT_MAX_POLL_INTERVAL_S, run_done, run_eta, wait_until
from qgjob.schema import JobPayload, SuiteSubmission, Target

FINAL_STATUSES = frozenset({"passed", "failed", "error", "cancelled", "timed_out"})
TARGETS = ("emulator", "device", "browserstack")
THREADS_PER_HOST = 100
Json = dict[str, Any]


def log(message: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ options


@dataclass
class FleetOptions:
    jobs: int = 200
    clients: int = 4
    agents: int = 20
    kills: int = 4
    seed: int = 1
    suite_size: int = 20
    catalogue_size: int = 0  # tests per org that suites are drawn from (0: the suite size)
    fresh_tests: bool = False  # every suite's tests new (no duration history)
    targets: tuple[str, ...] = TARGETS
    orgs: tuple[str, ...] = ("acme", "globex")
    app_versions: int = 3
    fail_rate: float = 0.05
    sim_scale: float = 1.0
    agent_procs: int = 0  # 0: one host per THREADS_PER_HOST agents
    victims: int = 0  # 0: min(kills, 4)
    restart_delay: float = 1.0
    idle_window: float = 0.0  # 0: one safety-poll period of the agents + 10 s
    latency_samples: int = 20
    lease_seconds: float = 10.0
    plan_interval: float = 2.0
    reap_interval: float = 1.0
    agent_poll: float = 1.0
    follow: bool = True
    poll_interval: float = 2.0
    timeout: float = 1800.0
    state_dir: Path | None = None
    as_json: bool = False

    @property
    def victim_count(self) -> int:
        if self.kills <= 0:
            return 0
        return max(1, min(self.victims or min(self.kills, 4), self.agents))

    @property
    def host_count(self) -> int:
        threaded = self.agents - self.victim_count
        if threaded <= 0:
            return 0
        return max(1, min(threaded, self.agent_procs or math.ceil(threaded / THREADS_PER_HOST)))


HELP_EPILOG = """\
examples:
  python -m bench.fleet                                   # 200 jobs, 20 agents, 4 kills
      (about 6 minutes: the idle phase lasts one 300 s safety-poll period + 10 s)
  python -m bench.fleet --jobs 5000 --clients 20 --agents 200 --kills 20   # acceptance
  python -m bench.fleet --jobs 60 --agents 6 --kills 2 --idle-window 3 --json
  python -m bench.fleet --no-follow --suite-size 100      # clients only submit

what it prints (and --json carries as one object):
  jobs submitted / final / lost / completed twice (journals: >1 accepted result), kills,
  5xx (server-side meter and client-side answers), wall time, submit->start p50/p99 with
  idle agents, AWS and API requests per job, requests per idle agent-hour, peak RSS of
  the stack process, $ per 1M jobs and $ per idle agent-day (bench/prices.py).

exit codes: 0 all jobs final, none lost or completed twice, no 5xx; 1 otherwise;
  2 the benchmark could not run (the stack or an agent host did not start).
"""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the epilog's layout and shows every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> FleetOptions:
    defaults = FleetOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Run qgjob's local stack under a simulated device fleet: concurrent "
        "CI clients, hundreds of agents, SIGKILLed agents; count every AWS and API "
        "request and price them at AWS list prices.",
        epilog=HELP_EPILOG,
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    work = parser.add_argument_group("workload")
    work.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs in the load phase")
    work.add_argument(
        "--clients", type=int, default=defaults.clients, help="concurrent submitting clients"
    )
    work.add_argument("--suite-size", type=int, default=defaults.suite_size, help="tests per run")
    work.add_argument(
        "--catalogue-size",
        type=int,
        default=defaults.catalogue_size,
        help="tests per org that each suite draws from, as CI re-runs the same tests "
        "(default: the suite size: every run of an org submits its whole suite)",
    )
    work.add_argument(
        "--fresh-tests",
        action="store_true",
        help="every suite's tests are new: no duration history (the planner's worst case)",
    )
    work.add_argument(
        "--targets",
        type=_csv,
        default=",".join(defaults.targets),
        help="device pools used; agents are spread over them",
    )
    work.add_argument("--orgs", type=_csv, default=",".join(defaults.orgs), help="orgs submitting")
    work.add_argument(
        "--app-versions", type=int, default=defaults.app_versions, help="app builds per org"
    )
    work.add_argument(
        "--fail-rate", type=float, default=defaults.fail_rate, help="share of failing tests"
    )
    work.add_argument("--seed", type=int, default=defaults.seed, help="workload and kill choices")
    work.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="clients submit without following their runs (the benchmark polls slowly)",
    )
    work.add_argument(
        "--poll-interval",
        type=float,
        default=defaults.poll_interval,
        help="seconds between a client's run polls (qgjob's default)",
    )
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--agents", type=int, default=defaults.agents, help="agents in all")
    fleet.add_argument(
        "--kills", type=int, default=defaults.kills, help="SIGKILLs during the load phase"
    )
    fleet.add_argument(
        "--victims",
        type=int,
        default=0,
        help="agents in processes of their own, the ones killed (0: min(kills, 4))",
    )
    fleet.add_argument(
        "--agent-procs",
        type=int,
        default=0,
        help=f"host processes for the other agents (0: one per {THREADS_PER_HOST})",
    )
    fleet.add_argument(
        "--restart-delay", type=float, default=defaults.restart_delay, help="kill -> restart (s)"
    )
    fleet.add_argument(
        "--sim-scale", type=float, default=defaults.sim_scale, help="simulated test durations x"
    )
    fleet.add_argument(
        "--agent-poll", type=float, default=defaults.agent_poll, help="agents' --poll-seconds"
    )
    phases = parser.add_argument_group("phases and the stack")
    phases.add_argument(
        "--idle-window",
        type=float,
        default=defaults.idle_window,
        help="idle phase length in seconds (default: the agents' safety-poll period "
        "from template.yaml + 10 s, so every idle agent polls in it; shorter windows sample)",
    )
    phases.add_argument(
        "--latency-samples",
        type=int,
        default=defaults.latency_samples,
        help="single jobs timed submit->start",
    )
    phases.add_argument(
        "--lease-seconds",
        type=float,
        default=defaults.lease_seconds,
        help="the stack's agent lease: how long a killed agent's batch waits for the reaper",
    )
    phases.add_argument(
        "--plan-interval",
        type=float,
        default=defaults.plan_interval,
        help="the stack's scheduled dispatcher runs (AWS: once a minute)",
    )
    phases.add_argument(
        "--reap-interval",
        type=float,
        default=defaults.reap_interval,
        help="the stack's scheduled reaper runs (AWS: once a minute)",
    )
    phases.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout,
        help="give up on the load phase after this many seconds",
    )
    phases.add_argument(
        "--state-dir", type=Path, help="keep logs, journals and meter files here (default: temp)"
    )
    add("--json", dest="as_json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    options = FleetOptions(
        **{k: v for k, v in vars(args).items() if k in FleetOptions.__annotations__}
    )
    if isinstance(options.targets, str):
        options.targets = _csv(options.targets)
    if isinstance(options.orgs, str):
        options.orgs = _csv(options.orgs)
    problems = [
        f"--{name.replace('_', '-')} must be at least {low}"
        for name, low in (("jobs", 1), ("clients", 1), ("agents", 1), ("suite_size", 1))
        if getattr(options, name) < low
    ]
    if options.agents < len(options.targets):
        problems.append(f"--agents must be at least the number of targets ({len(options.targets)})")
    if unknown := set(options.targets) - set(TARGETS):
        problems.append(f"--targets: unknown {sorted(unknown)}; choose from {','.join(TARGETS)}")
    if problems:
        parser.error("; ".join(problems))
    return options


# ------------------------------------------------------------------ workload


@dataclass(frozen=True)
class RunSpec:
    index: int
    org: str
    app_version_id: str
    target: str
    priority: int
    tests: tuple[str, ...]

    def body(self, seed: int) -> Json:
        suite = SuiteSubmission(
            org_id=self.org,
            app_version_id=self.app_version_id,
            target=Target(self.target),
            priority=self.priority,
            test_paths=list(self.tests),
            idempotency_key=f"fleet-{seed}-{self.index}",
        )
        body: Json = suite.model_dump(mode="json", exclude_unset=True)
        return body


def plan_runs(options: FleetOptions) -> list[RunSpec]:
    """The load phase's suites, from the seed alone."""
    rng = random.Random(options.seed)
    runs: list[RunSpec] = []
    remaining = options.jobs
    index = 0
    while remaining > 0:
        size = min(options.suite_size, remaining)
        org = options.orgs[index % len(options.orgs)]
        version = f"v{options.seed}.{rng.randrange(options.app_versions)}"
        # CI re-runs the same tests commit after commit: a suite is drawn from its org's
        # catalogue, so the backend knows most tests' durations (--fresh-tests: none).
        if options.fresh_tests:
            cases = [f"run-{index}/case-{k}" for k in range(size)]
        else:
            catalogue = max(size, options.catalogue_size or options.suite_size)
            cases = [f"{org}/case-{k}" for k in sorted(rng.sample(range(catalogue), size))]
        tests = tuple(
            f"tests/fleet/{case}"
            + ("-fail" if rng.random() < options.fail_rate else "")
            + ".spec.js"
            for case in cases
        )
        runs.append(
            RunSpec(
                index=index,
                org=org,
                app_version_id=version,
                target=rng.choice(options.targets),
                priority=rng.choice((1, 3, 5, 5, 5, 7, 9)),
                tests=tests,
            )
        )
        remaining -= size
        index += 1
    return runs


@dataclass
class SubmittedRun:
    spec: RunSpec
    run_id: str
    job_ids: list[str]
    submitted_at: float
    finished: bool = False


@dataclass
class Kill:
    at_s: float
    victim: str
    mid_test: bool
    progress: int


def _has_result(job_id: str) -> Callable[[Journals], bool]:
    return lambda journals: journals.has_result(job_id)


def _has_start(job_id: str) -> Callable[[Journals], bool]:
    return lambda journals: journals.first_start(job_id) is not None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# ------------------------------------------------------------------ the benchmark


@dataclass
class FleetResult:
    report: Json
    ok: bool


class Fleet:
    def __init__(self, options: FleetOptions, state_dir: Path) -> None:
        self.options = options
        self.state_dir = state_dir
        self.rng = random.Random(options.seed + 7919)
        self.client_stats = ClientStats()
        self.hosts: list[AgentProcess] = []
        self.victims: list[AgentProcess] = []
        self.journals = Journals(self._journal_paths)
        self.stack: MeteredStack | None = None
        self.kills: list[Kill] = []
        self.submitted: list[SubmittedRun] = []
        self.latency_jobs: dict[str, str] = {}  # job id -> org
        self.submit_failures: list[str] = []
        self.load_timed_out = False
        self._submitted_lock = threading.Lock()

    # ---- plumbing

    def _journal_paths(self) -> list[Path]:
        return [path for proc in self.hosts + self.victims for path in proc.journals]

    def refresh_journals(self) -> Journals:
        return self.journals.refresh()

    def client(self, org: str) -> ApiClient:
        assert self.stack is not None
        return ApiClient(
            self.stack.endpoint, self.stack.org_token(org), CountingSession(self.client_stats)
        )

    # ---- start and stop

    def start_stack(self) -> MeteredStack:
        o = self.options
        args = [
            "--lease-seconds", str(o.lease_seconds), "--plan-interval", str(o.plan_interval),
            "--reap-interval", str(o.reap_interval), "--orgs", ",".join(o.orgs),
        ]  # fmt: skip
        directory = self.state_dir / "stack"
        directory.mkdir(parents=True, exist_ok=True)
        log(f"starting the local stack (logs: {directory})")
        self.stack = MeteredStack.start(directory, args)
        return self.stack

    def start_agents(self) -> None:
        assert self.stack is not None
        o = self.options
        fleet = [(o.targets[i % len(o.targets)], f"fleet-{i:04d}") for i in range(o.agents)]
        victims, threaded = fleet[: o.victim_count], fleet[o.victim_count :]
        directory = self.state_dir / "agents"

        def process(name: str, agents: list[tuple[str, str]]) -> AgentProcess:
            return AgentProcess(
                name, agents, directory, self.stack.endpoint if self.stack else "",
                self.stack.agent_token if self.stack else "", o.sim_scale, o.agent_poll,
            )  # fmt: skip

        hosts = o.host_count
        for h in range(hosts):
            self.hosts.append(process(f"host-{h}", threaded[h::hosts]))
        for v, agent in enumerate(victims):
            self.victims.append(process(f"victim-{v}", [agent]))
        log(
            f"starting {o.agents} agents: {len(threaded)} as threads of {hosts} process(es), "
            f"{len(victims)} in processes of their own (the ones killed)"
        )
        for proc in self.hosts + self.victims:
            proc.start()
        wait_for(
            lambda: all(proc.ready() for proc in self.hosts + self.victims),
            timeout_s=60 + 0.5 * o.agents,
            what="every agent to register",
            interval_s=0.2,
        )

    def stop_agents(self) -> None:
        procs = self.hosts + self.victims
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + 60
        for proc in procs:
            proc.wait(deadline - time.monotonic())

    # ---- phases

    def idle_phase(self) -> Json:
        """Every agent idle for a window. It follows the load phase: by then the agents'
        safety polls are out of step (they registered together, they did not finish
        together), so a window shorter than one poll period samples them fairly."""
        assert self.stack is not None
        seconds = self.options.idle_window or idle_poll_seconds() + 10.0
        time.sleep(2.0)  # the last batches' completions settle
        log(f"idle phase: {self.options.agents} idle agents for {seconds:g}s")
        before = self.stack.snapshot_after(time.time())
        time.sleep(seconds)
        after = self.stack.snapshot_after(time.time())
        return window(before, after)

    def latency_phase(self) -> tuple[list[float], int]:
        """Submit -> accepted start of single jobs, one at a time; (latencies, not started)."""
        n = self.options.latency_samples
        if n <= 0:
            return [], 0
        log(f"latency phase: {n} single jobs, each submitted while agents are idle")
        latencies: list[float] = []
        missed = 0
        clients = {org: self.client(org) for org in self.options.orgs}
        previous: str | None = None
        for i in range(n):
            org = self.options.orgs[i % len(self.options.orgs)]
            target = self.options.targets[i % len(self.options.targets)]
            if previous is not None:  # its agent is idle again before the next one
                self._wait_journal(_has_result(previous), timeout_s=60)
            time.sleep(self.rng.uniform(0.3, 1.2))  # not in step with the agents' polls
            payload = JobPayload(
                org_id=org,
                app_version_id=f"latency-{self.options.seed}",
                target=Target(target),
                test_path=f"tests/latency/sample-{i}.spec.js",
                idempotency_key=f"fleet-{self.options.seed}-latency-{i}",
            ).model_dump(mode="json", exclude_unset=True)
            sent = time.time()
            job_id = str(clients[org].submit_job(payload)["job_id"])
            self.latency_jobs[job_id] = org
            started = self._wait_journal(_has_start(job_id), timeout_s=60)
            start_ts = self.journals.first_start(job_id)
            if started is None or start_ts is None:
                missed += 1
                continue
            latencies.append(start_ts - sent)
            previous = job_id
        if previous is not None:
            self._wait_journal(_has_result(previous), timeout_s=60)
        return latencies, missed

    def _wait_journal(self, probe: Callable[[Journals], bool], timeout_s: float) -> bool | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if probe(self.refresh_journals()):
                return True
            time.sleep(0.02)
        return None

    def load_phase(self) -> tuple[Json, float]:
        assert self.stack is not None
        o = self.options
        runs = plan_runs(o)
        log(
            f"load phase: {o.jobs} jobs in {len(runs)} runs from {o.clients} clients, "
            f"{o.kills} kills ({'following' if o.follow else 'not following'} the runs)"
        )
        load_jobs = {f"{r.index}": len(r.tests) for r in runs}
        total_jobs = sum(load_jobs.values())
        pending = deque(runs)
        lock = threading.Lock()
        deadline = time.monotonic() + o.timeout
        done = threading.Event()
        before = self.stack.snapshot_after(time.time())
        started = time.monotonic()

        def next_run() -> RunSpec | None:
            with lock:
                return pending.popleft() if pending else None

        def client_loop(number: int) -> None:
            clients: dict[str, ApiClient] = {}
            while (spec := next_run()) is not None and time.monotonic() < deadline:
                api = clients.setdefault(spec.org, self.client(spec.org))
                submitted = self._submit(api, spec, deadline)
                if submitted is not None and o.follow:
                    self._follow(api, submitted, deadline)

        threads = [
            threading.Thread(target=client_loop, args=(n,), name=f"client-{n}", daemon=True)
            for n in range(o.clients)
        ]
        killer = threading.Thread(
            target=self._kill_loop, args=(total_jobs, done, started), name="killer", daemon=True
        )
        killer.start()
        for thread in threads:
            thread.start()
        last_note = time.monotonic()
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            time.sleep(0.5)
            if time.monotonic() - last_note >= 15:
                last_note = time.monotonic()
                self._note_progress(total_jobs, started)
        if not o.follow:
            self._watch_runs(deadline)
        self.load_timed_out = time.monotonic() >= deadline
        if self.load_timed_out:
            log(f"  the load phase ran out of time (--timeout {o.timeout:g}s); verifying as is")
        done.set()
        killer.join(timeout=30)
        wall = time.monotonic() - started
        after = self.stack.snapshot_after(time.time())
        self._note_progress(total_jobs, started)
        return window(before, after), wall

    def _note_progress(self, total_jobs: int, started: float) -> None:
        reported = self.refresh_journals().reported(excluding=self.latency_jobs)
        with self._submitted_lock:
            runs_done = sum(1 for run in self.submitted if run.finished)
            runs = len(self.submitted)
        log(
            f"  {time.monotonic() - started:.0f}s: {reported}/{total_jobs} jobs reported, "
            f"runs finished {runs_done}/{runs} submitted, kills {len(self.kills)}"
        )

    def _submit(self, api: ApiClient, spec: RunSpec, deadline: float) -> SubmittedRun | None:
        body = spec.body(self.options.seed)
        while time.monotonic() < deadline:
            try:
                answer = api.submit_run(body)
            except InvalidInput as error:  # a bug in the benchmark or the API: report it
                self.submit_failures.append(f"run {spec.index}: {error}")
                return None
            except ApiError as error:  # unreachable / 5xx after the client's retries
                log(f"  run {spec.index}: submit failed ({error}); retrying, same key")
                time.sleep(1.0)
                continue
            run = SubmittedRun(
                spec, str(answer["run_id"]), [str(j) for j in answer["job_ids"]], time.time()
            )
            with self._submitted_lock:
                self.submitted.append(run)
            return run
        self.submit_failures.append(f"run {spec.index}: not submitted before the deadline")
        return None

    def _follow(self, api: ApiClient, run: SubmittedRun, deadline: float) -> None:
        """Polls the run as ``qgjob submit --wait`` does (``qgjob.follow.wait_until``, the
        CLI's backoff and pace) until it is finished."""

        def failed(error: Exception) -> None:
            log(f"  run {run.run_id}: poll failed ({error}); still waiting")

        with contextlib.suppress(Unreachable, ServerError):  # too many failures in a row
            outcome = wait_until(
                lambda: api.get_run(run.run_id),
                run_done,
                poll_interval=self.options.poll_interval,
                max_poll_interval=DEFAULT_MAX_POLL_INTERVAL_S,
                eta=run_eta,
                wait_timeout=max(0.0, deadline - time.monotonic()),
                clock=time.monotonic,
                sleep=time.sleep,
                on_failure=failed,
                max_consecutive_failures=1_000_000,
            )
            run.finished = outcome.finished

    def _watch_runs(self, deadline: float) -> None:
        """--no-follow: the benchmark polls every unfinished run every few seconds."""
        clients = {org: self.client(org) for org in self.options.orgs}
        while time.monotonic() < deadline:
            with self._submitted_lock:
                unfinished = [run for run in self.submitted if not run.finished]
            if not unfinished:
                return
            for run in unfinished:
                with contextlib.suppress(Unreachable, ServerError):
                    run.finished = run_done(clients[run.spec.org].get_run(run.run_id))
            time.sleep(max(5.0, self.options.poll_interval))

    def _kill_loop(self, total_jobs: int, done: threading.Event, started: float) -> None:
        """Kill number k when k/(kills+1) of the load's jobs are reported; a victim that is
        mid-test if one is within a few seconds; start it again after --restart-delay."""
        kills = self.options.kills if self.victims else 0
        restarts: list[tuple[float, AgentProcess]] = []
        waiting_since: float | None = None
        while not done.is_set():
            now = time.monotonic()
            for due, victim in list(restarts):
                if now >= due:
                    victim.start()
                    restarts.remove((due, victim))
            if len(self.kills) < kills:
                journals = self.refresh_journals()
                reported = journals.reported(excluding=self.latency_jobs)
                threshold = (len(self.kills) + 1) / (kills + 1) * total_jobs
                alive = [v for v in self.victims if v.alive()]
                if reported >= threshold and alive:
                    waiting_since = waiting_since or now
                    busy = [v for v in alive if journals.busy(v.journal)]
                    if busy or now - waiting_since > 1.5:
                        victim = self.rng.choice(busy or alive)
                        victim.kill()
                        self.kills.append(Kill(now - started, victim.name, bool(busy), reported))
                        restarts.append((now + self.options.restart_delay, victim))
                        waiting_since = None
            done.wait(0.2)

    # ---- verification

    def verify(self) -> Json:
        """Every run and latency job read back; statuses counted; journals read."""
        clients = {org: self.client(org) for org in self.options.orgs}
        by_status: dict[str, int] = {}
        not_final: list[str] = []
        submitted = 0
        for run in self.submitted:
            submitted += len(run.job_ids)
            try:
                view = clients[run.spec.org].get_run(run.run_id)
            except ApiError as error:
                not_final.extend(run.job_ids)
                log(f"  run {run.run_id}: cannot read it back ({error})")
                continue
            counts: dict[str, int] = dict(view.get("counts") or {})
            if not counts and view.get("jobs"):
                for job in view["jobs"]:
                    counts[job["status"]] = counts.get(job["status"], 0) + 1
            for status, count in counts.items():
                by_status[status] = by_status.get(status, 0) + int(count)
            final = sum(int(c) for s, c in counts.items() if s in FINAL_STATUSES)
            if final < len(run.job_ids):
                not_final.append(f"{run.run_id}: {len(run.job_ids) - final} not final {counts}")
        for job_id, org in self.latency_jobs.items():
            submitted += 1
            try:
                status = str(clients[org].get_job(job_id)["status"])
            except ApiError:
                status = "unreadable"
            by_status[status] = by_status.get(status, 0) + 1
            if status not in FINAL_STATUSES:
                not_final.append(f"{job_id}: {status}")
        journals = self.refresh_journals()
        final = sum(c for s, c in by_status.items() if s in FINAL_STATUSES)
        twice = journals.completed_twice()
        return {
            "submitted": submitted,
            "final": final,
            "lost": submitted - final,
            "completed_twice": len(twice),
            "completed_twice_jobs": sorted(twice)[:20],
            "by_status": dict(sorted(by_status.items())),
            "not_final_examples": not_final[:10],
            "journal_results": journals.result_count(),
            "submit_failures": self.submit_failures[:10],
        }

    def agent_client_stats(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for proc in self.hosts + self.victims:
            for route, codes in proc.client_stats().items():
                into = total.setdefault(route, {})
                for status, count in codes.items():
                    into[status] = into.get(status, 0) + count
        return total


# ------------------------------------------------------------------ the report


def idle_poll_seconds() -> float:
    """The agents' safety poll while idle with a push channel (template.yaml)."""
    from infra.template import LocalTemplate

    return float(LocalTemplate.from_file().parameters.get("IdlePollSeconds", 300.0))


def template_facts() -> tuple[str, dict[str, float]]:
    """(API Gateway type priced: rest | http, scheduled functions -> rate in seconds)."""
    from infra.runtime import rate_seconds
    from infra.template import FUNCTION_TYPE, LocalTemplate

    template = LocalTemplate.from_file()
    http = template.logical_ids("AWS::Serverless::HttpApi") or template.logical_ids(
        "AWS::ApiGatewayV2::Api"
    )
    rest = template.logical_ids("AWS::Serverless::Api") or template.logical_ids(
        "AWS::ApiGateway::RestApi"
    )
    api_type = "rest" if rest or not http else "http"
    rates: dict[str, float] = {}
    for lid in template.logical_ids(FUNCTION_TYPE):
        for event in template.function_events(lid, "Schedule"):
            rates[lid] = rate_seconds(str(template.resolve(event["Schedule"])))
    return api_type, rates


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _usage_json(usage: Usage, api_type: str) -> Json:
    return {
        "api_requests": _round(usage.api_requests),
        "aws_requests": _round(usage.aws_calls),
        "lambda_invocations": _round(usage.lambda_requests),
        "lambda_gb_s": _round(usage.lambda_gb_s, 6),
        "dynamodb_wru": _round(usage.dynamodb_wru),
        "dynamodb_rru": _round(usage.dynamodb_rru),
        "sqs_requests": _round(usage.sqs_requests),
        "websocket_messages": _round(usage.websocket_messages),
        "usd": usage.total(api_type),
        "usd_by_line": {k: v for k, v in usage.cost(api_type).items() if v},
        "unpriced": usage.unpriced,
    }


def build_report(
    fleet: Fleet,
    *,
    idle: Json,
    latencies: list[float],
    latency_missed: int,
    load: Json,
    load_wall: float,
    whole: Json,
    verified: Json,
    rss_kb: tuple[int | None, int | None],
    wall: float,
) -> Json:
    o = fleet.options
    api_type, rates = template_facts()
    jobs = max(1, o.jobs)
    agents = max(1, o.agents)
    # Per job: what the load phase's event-driven work cost, over its jobs.
    per_job = usage_of(load, is_event_driven).scaled(1 / jobs)
    per_job_all = usage_of(load, lambda a: True).scaled(1 / jobs)
    # Per idle agent: the idle window's event-driven work, scaled to a day.
    idle_s = max(1e-9, float(idle["seconds"]))
    idle_day = usage_of(idle, is_event_driven).scaled(SECONDS_PER_DAY / idle_s / agents)
    push = any(route.startswith("WS ") for route in whole.get("api", {}))
    if push:  # each idle agent holds its push connection all day
        idle_day = idle_day.plus(Usage(websocket_connection_minutes=24 * 60))
    fixed = fixed_per_day(idle, rates)
    idle_agent_day = idle_day.plus(fixed.scaled(1 / agents))
    agent_routes = lambda route: "/agents/" in route or route.startswith("WS ")  # noqa: E731
    agents_seen = fleet.agent_client_stats()
    client_seen = fleet.client_stats.snapshot()
    peak, end = rss_kb
    return {
        "config": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in asdict(o).items()
            if k not in ("as_json",)
        },
        "jobs": verified,
        "kills": {
            "requested": o.kills,
            "done": len(fleet.kills),
            "mid_test": sum(1 for k in fleet.kills if k.mid_test),
            "victims": len(fleet.victims),
            "at_s": [round(k.at_s, 1) for k in fleet.kills],
        },
        "errors": {
            "api_5xx_server": api_status_count(whole, 500),
            "api_5xx_clients": ClientStats.total(client_seen, "5xx")
            + ClientStats.total(agents_seen, "5xx"),
            "transport_errors_clients": ClientStats.total(client_seen, "transport")
            + ClientStats.total(agents_seen, "transport"),
            "api_4xx_server": api_status_count(whole, 400) - api_status_count(whole, 500),
        },
        "wall_s": round(wall, 1),
        "load_timed_out": fleet.load_timed_out,
        "load_wall_s": round(load_wall, 1),
        "latency_s": {
            "samples": len(latencies),
            "not_started_within_60s": latency_missed,
            "p50": _round(percentile(latencies, 50)),
            "p99": _round(percentile(latencies, 99)),
            "max": _round(max(latencies) if latencies else None),
            "mean": _round(statistics.fmean(latencies) if latencies else None),
        },
        "per_job": {
            **_usage_json(per_job, api_type),
            "aws_requests_all": _round(per_job_all.aws_calls),
        },
        "idle": {
            "window_s": round(idle_s, 1),
            "agents": o.agents,
            "api_requests_per_agent_hour": _round(
                api_requests(idle, agent_routes) / agents / idle_s * 3600, 1
            ),
            "aws_requests_per_agent_hour": _round(idle_day.aws_calls / 24, 1),
            "push_channel": push,
            "window_covers_safety_poll": idle_s >= idle_poll_seconds(),
            "per_agent_day": _usage_json(idle_day, api_type),
        },
        "fixed_per_day": _usage_json(fixed, api_type),
        "usd_per_million_jobs": round(per_job.total(api_type) * 1_000_000, 2),
        "usd_per_million_jobs_http_api": round(per_job.total("http") * 1_000_000, 2),
        "usd_per_idle_agent_day": idle_agent_day.total(api_type),
        "stack_rss_mb": {
            "peak": None if peak is None else round(peak / 1024, 1),
            "end": None if end is None else round(end / 1024, 1),
        },
        "load_api_routes": {
            route: stats["count"]
            for route, stats in sorted(load.get("api", {}).items())
            if stats.get("count")
        },
        "load_aws_operations": _operations(load),
        "idle_api_routes": {
            route: stats["count"]
            for route, stats in sorted(idle.get("api", {}).items())
            if stats.get("count")
        },
        "idle_aws_operations": _operations(idle, by_attribution=True),
        "prices": {"taken_on": PRICES_TAKEN_ON, "region": REGION, "api_type": api_type},
        "state_dir": str(fleet.state_dir),
    }


def _operations(win: Json, *, by_attribution: bool = False) -> dict[str, int]:
    """AWS requests by operation (``dynamodb.Query``), or by who made them and operation
    (``ApiFunction/api dynamodb.Query``), most frequent first."""
    total: dict[str, int] = {}
    for attribution, operations in win.get("aws", {}).items():
        for key, stats in operations.items():
            name = f"{attribution} {key}" if by_attribution else key
            if int(stats["calls"]):
                total[name] = total.get(name, 0) + int(stats["calls"])
    return dict(sorted(total.items(), key=lambda item: -item[1]))


def passed(report: Json) -> bool:
    jobs, errors = report["jobs"], report["errors"]
    return (
        jobs["lost"] == 0
        and jobs["completed_twice"] == 0
        and jobs["final"] == jobs["submitted"]
        and not jobs["submit_failures"]
        and errors["api_5xx_server"] == 0
        and errors["api_5xx_clients"] == 0
    )


def render(report: Json) -> str:
    j, k, e, lat = report["jobs"], report["kills"], report["errors"], report["latency_s"]
    pj, idle, rss = report["per_job"], report["idle"], report["stack_rss_mb"]
    c = report["config"]
    api_type = report["prices"]["api_type"].upper()

    def s(value: float | None, unit: str = "s") -> str:
        return "-" if value is None else f"{value:.3g}{unit}"

    lines = [
        f"qgjob fleet benchmark: {c['jobs']} jobs, {c['clients']} clients, {c['agents']} agents, "
        f"{c['kills']} kills, seed {c['seed']}",
        "",
        f"  jobs            submitted {j['submitted']}, final {j['final']}, lost {j['lost']}, "
        f"completed twice {j['completed_twice']}   {j['by_status']}",
        f"  kills           {k['done']} of {k['requested']} ({k['mid_test']} mid-test), "
        f"{k['victims']} victim process(es)",
        f"  5xx             {e['api_5xx_server']} (stack), {e['api_5xx_clients']} (clients); "
        f"transport errors {e['transport_errors_clients']}",
        f"  wall time       {report['wall_s']:.0f}s in all, "
        f"load phase {report['load_wall_s']:.0f}s",
        f"  submit->start   p50 {s(lat['p50'])}, p99 {s(lat['p99'])}, max {s(lat['max'])} "
        f"({lat['samples']} samples with idle agents, {lat['not_started_within_60s']} missed)",
        f"  per job         {pj['api_requests']:.2f} API requests, {pj['aws_requests']:.1f} AWS "
        f"requests ({pj['aws_requests_all']:.1f} with schedules and the local poller), "
        f"{pj['dynamodb_wru']:.1f} WRU, {pj['dynamodb_rru']:.1f} RRU",
        f"  idle agent      {idle['api_requests_per_agent_hour']:.0f} API requests/hour, "
        f"{idle['aws_requests_per_agent_hour']:.0f} AWS requests/hour "
        f"(push channel: {'yes' if idle['push_channel'] else 'no'})",
        f"  stack RSS       peak {s(rss['peak'], ' MB')}, at the end {s(rss['end'], ' MB')}",
        "",
        f"  $ per 1M jobs        {dollars(report['usd_per_million_jobs'])} "
        f"({api_type} API; {dollars(report['usd_per_million_jobs_http_api'])} with an HTTP API)",
        f"  $ per idle agent-day {dollars(report['usd_per_idle_agent_day'])} "
        f"(schedules: {dollars(report['fixed_per_day']['usd'])}/day for the whole fleet)",
        f"  prices: AWS list, {report['prices']['region']}, taken {report['prices']['taken_on']} "
        "(bench/prices.py)",
        "",
        "  per-job cost by line: "
        + ", ".join(f"{line} {dollars(v * 1e6)}/M" for line, v in pj["usd_by_line"].items()),
        "  load-phase API requests by route: "
        + ", ".join(f"{r} {n}" for r, n in report["load_api_routes"].items()),
        "  load-phase AWS requests: "
        + ", ".join(f"{op} {n}" for op, n in list(report["load_aws_operations"].items())[:12]),
    ]
    if report["load_timed_out"]:
        lines.append("  the load phase ran out of time: jobs not final were still in progress")
    if j["not_final_examples"]:
        lines.append(f"  not final: {j['not_final_examples']}")
    if j["completed_twice_jobs"]:
        lines.append(f"  completed twice: {j['completed_twice_jobs']}")
    lines.append(f"  logs, journals and meter files: {report['state_dir']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def run(options: FleetOptions) -> FleetResult:
    keep = options.state_dir is not None
    state_dir = options.state_dir or Path(tempfile.mkdtemp(prefix="qgjob-fleet-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(options, state_dir)
    began = time.monotonic()
    stack = fleet.start_stack()
    try:
        first = stack.snapshot_after(time.time())
        fleet.start_agents()
        load, load_wall = fleet.load_phase()
        idle = fleet.idle_phase()
        latencies, missed = fleet.latency_phase()
        log("verifying: every run read back, every journal read")
        verified = fleet.verify()
        rss = stack.rss_kb()
        log("stopping the agents (SIGTERM: they hand work back and deregister)")
        fleet.stop_agents()
        whole = window(first, stack.snapshot_after(time.time()))
    finally:
        fleet.stop_agents()
        stack.stop()
    report = build_report(
        fleet,
        idle=idle,
        latencies=latencies,
        latency_missed=missed,
        load=load,
        load_wall=load_wall,
        whole=whole,
        verified=verified,
        rss_kb=rss,
        wall=time.monotonic() - began,
    )
    ok = passed(report)
    if ok and not keep:
        shutil.rmtree(state_dir, ignore_errors=True)
        report["state_dir"] = "(removed; pass --state-dir to keep it)"
    return FleetResult(report, ok)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C: run()'s finally stops the agents and the stack it started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = run(options)
    except BenchError as error:
        print(f"bench.fleet: error: {error}", file=sys.stderr)
        return 2
    if options.as_json:
        print(json.dumps(result.report, indent=2, sort_keys=True))
    else:
        print(render(result.report))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
