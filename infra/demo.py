"""``python -m infra.demo`` (``make demo``): qgjob end to end in well under a minute.

Starts the local stack with simulated agents, submits every suite of examples/suites.json
through the real `qgjob` CLI, waits for every run, then shows which agent ran which test
in which batch and how many app installs that took. Exits 0 when every job reached a
final state (the example's deliberately failing spec counts as final), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from infra.local_stack import LocalStack, LocalStackOptions, configure_logging
from infra.qgjob_cli import QgjobCli

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SUITES = REPO_ROOT / "examples" / "suites.json"
FINAL_STATUSES = frozenset({"passed", "failed", "error", "cancelled", "timed_out"})

INTRO = """\
qgjob demo
==========
qgjob groups test jobs by organisation, app version and target (emulator, device,
browserstack) so that a device installs an app version once and then runs a whole batch
of its tests. This demo starts the whole stack on your machine (AWS emulated by moto),
with {agents} simulated device agents ({per_target} per target), and submits
{suites} suites ({jobs} tests) from {suites_file} with the `qgjob` CLI.
"""

EXPLAIN = """\
How to read this: each row is one test job; `agent` is the device that ran it and
`batch` the batch it ran in. A batch holds jobs of one org + app version + target and
runs on one agent after a single app install (none if the agent already has that app).
Targets never share an agent. A group runs as several batches on the same agent when its
jobs arrive a few at a time; it is split over more agents only when that ends the work
sooner than the extra installs cost (by at least 300 s): never for suites this small.
tests/cart-sync-fail.spec.js fails on purpose: it shows how a failed test is reported
(`qgjob submit --wait` and `qgjob status --wait` exit 1, so CI fails the build).
"""


@dataclass(frozen=True)
class Suite:
    name: str
    org_id: str
    app_version_id: str
    target: str
    priority: int
    test_paths: tuple[str, ...]


@dataclass
class SubmittedRun:
    suite: Suite
    run_id: str
    view: dict[str, Any] | None = None


def load_suites(path: Path) -> tuple[Path, list[Suite]]:
    """The suites file, checked: every spec it names exists in the example project."""
    document = json.loads(path.read_text(encoding="utf-8"))
    project_dir = REPO_ROOT / document.get("project_dir", "examples/appwright")
    suites = [
        Suite(
            name=item["name"],
            org_id=item["org_id"],
            app_version_id=item["app_version_id"],
            target=item["target"],
            priority=int(item.get("priority", 5)),
            test_paths=tuple(item["test_paths"]),
        )
        for item in document["suites"]
    ]
    missing = [p for s in suites for p in s.test_paths if not (project_dir / p).is_file()]
    if missing:
        raise SystemExit(f"{path}: these specs are missing in {project_dir}: {missing}")
    return project_dir, suites


# ------------------------------------------------------------------ submit/wait


def submit_all(
    cli: QgjobCli, tokens: Mapping[str, str], suites: Sequence[Suite]
) -> list[SubmittedRun]:
    runs = []
    for suite in suites:
        result = cli.submit(
            token=tokens[suite.org_id],
            org_id=suite.org_id,
            app_version_id=suite.app_version_id,
            target=suite.target,
            test_paths=suite.test_paths,
            priority=suite.priority,
        )
        if result.exit_code != 0:
            raise RuntimeError(f"submitting {suite.name!r} failed: {result.describe()}")
        run_id = str(result.json()["run_id"])
        print(
            f"  submitted {len(suite.test_paths)} tests  {suite.org_id}/{suite.app_version_id}"
            f" on {suite.target:<12} priority {suite.priority}  run {run_id}"
        )
        runs.append(SubmittedRun(suite, run_id))
    return runs


def wait_all(
    cli: QgjobCli, tokens: Mapping[str, str], runs: Sequence[SubmittedRun], deadline: float
) -> None:
    """`qgjob status --run-id R --wait` for each run (exit 1 just means a test failed)."""
    for run in runs:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        result = cli.run(
            "status", "--run-id", run.run_id, "--wait", "--json",
            "--poll-interval", "0.5", "--wait-timeout", f"{remaining:.0f}",
            token=tokens[run.suite.org_id], timeout_s=remaining + 15,
        )  # fmt: skip
        if result.exit_code not in (0, 1):
            print(f"  waiting for run {run.run_id} failed: {result.describe()}")


def fetch_views(endpoint: str, tokens: Mapping[str, str], runs: Sequence[SubmittedRun]) -> None:
    with requests.Session() as session:
        for run in runs:
            response = session.get(
                f"{endpoint}/runs/{run.run_id}", headers=_auth(tokens[run.suite.org_id]), timeout=30
            )
            response.raise_for_status()
            run.view = response.json()
            run.view["jobs"] = _run_jobs(session, endpoint, tokens[run.suite.org_id], run.run_id)


def _run_jobs(session: requests.Session, endpoint: str, token: str, run_id: str) -> list[Any]:
    """Every job of a run: GET /runs/{id} holds only its counters, the jobs are paged."""
    jobs: list[Any] = []
    params: dict[str, str] = {}
    while True:
        response = session.get(
            f"{endpoint}/runs/{run_id}/jobs", headers=_auth(token), params=params, timeout=30
        )
        response.raise_for_status()
        page = response.json()
        jobs.extend(page["jobs"])
        if not page.get("next_cursor"):
            return jobs
        params = {"cursor": page["next_cursor"]}


def fetch_metrics(endpoint: str, tokens: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    metrics = {}
    for org, token in tokens.items():
        response = requests.get(f"{endpoint}/metrics", headers=_auth(token), timeout=30)
        response.raise_for_status()
        metrics[org] = response.json()
    return metrics


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------- report


def job_rows(runs: Sequence[SubmittedRun]) -> list[dict[str, Any]]:
    rows = [job for run in runs for job in (run.view or {}).get("jobs", [])]
    return sorted(
        rows,
        key=lambda j: (j["org_id"], j["app_version_id"], j["target"], j.get("started_at") or 0),
    )


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ("org", "app version", "target", "test", "status", "agent", "batch", "duration")
    lines = [header] + [
        (
            row["org_id"],
            row["app_version_id"],
            row["target"],
            row["test_path"],
            row["status"],
            row.get("agent_id") or "-",
            _short(row.get("batch_id")),
            f"{row['duration_s']:.2f}s" if row.get("duration_s") is not None else "-",
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    rendered = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    rendered.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rendered)


def _short(batch_id: str | None) -> str:
    # Batch ids are long; their tail is enough to tell the batches of one demo apart.
    return "-" if not batch_id else batch_id[-8:]


def render_summary(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]]
) -> str:
    jobs = len(rows)
    installs = sum(int(m.get("installs", 0)) for m in metrics.values())
    batches = sum(int(m.get("batches", 0)) for m in metrics.values())
    pairs = {
        (r["agent_id"], r["org_id"], r["app_version_id"], r["target"])
        for r in rows
        if r.get("agent_id")
    }
    groups = {(r["org_id"], r["app_version_id"], r["target"]) for r in rows}
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    mixed = [
        r for r in rows if r.get("agent_id") and not str(r["agent_id"]).startswith(r["target"])
    ]
    lines = [
        "Summary",
        "-------",
        f"  jobs            {jobs}  ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))})",
        f"  groups          {len(groups)}  (org + app version + target)",
        f"  batches         {batches}",
        f"  app installs    {installs}  (GET /metrics, summed over {', '.join(metrics)})",
        f"  agent/app pairs {len(pairs)}  (distinct agent, app version, target)",
        "",
        f"  Installs vs jobs: {installs} app installs for {jobs} tests (one install per test"
        f" would be {jobs}).",
    ]
    if installs <= len(groups):
        lines.append("  Each group was installed once, on the agent that ran it.")
    else:
        lines.append(
            f"  {installs - len(groups)} more install(s) than groups: some groups were split"
            " over idle agents to finish sooner."
        )
    lines.append(
        "  Targets never mixed: every job ran on an agent of its own target."
        if not mixed
        else f"  WARNING: {len(mixed)} job(s) ran on an agent of another target!"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.demo",
        description="Start the local stack, submit the example suites, show grouping, stop.",
    )
    parser.add_argument(
        "--suites",
        type=Path,
        default=DEFAULT_SUITES,
        help="suites file (default examples/suites.json)",
    )
    parser.add_argument(
        "--sim-scale",
        type=float,
        default=0.5,
        help="simulated test duration multiplier (default 0.5)",
    )
    parser.add_argument("--agents-per-target", type=int, default=2)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".qgjob-local/demo"),
        help="logs and agent journals (default .qgjob-local/demo/)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="give up waiting after this many seconds (default 120)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _, suites = load_suites(args.suites)
    log_path = configure_logging(args.state_dir)
    orgs = tuple(dict.fromkeys(s.org_id for s in suites))
    options = LocalStackOptions(
        state_dir=args.state_dir,
        sim_scale=args.sim_scale,
        agents_per_target=args.agents_per_target,
        agent_poll_seconds=0.2,
        orgs=orgs,
        plan_interval=1.0,
    )
    print(INTRO.format(
        agents=3 * args.agents_per_target, per_target=args.agents_per_target,
        suites=len(suites), jobs=sum(len(s.test_paths) for s in suites),
        suites_file=_relative(args.suites),
    ))  # fmt: skip
    started = time.monotonic()
    print("Starting the local stack...")
    with LocalStack(options) as stack:
        assert stack.ready is not None
        tokens = stack.ready.org_tokens
        print(f"  API at {stack.endpoint}, agents: {', '.join(stack.ready.agents)}\n")
        cli = QgjobCli(stack.endpoint)
        print("Submitting with `qgjob submit` (one run per suite):")
        runs = submit_all(cli, tokens, suites)
        print("\nWaiting with `qgjob status --run-id ... --wait`...\n")
        wait_all(cli, tokens, runs, started + args.timeout)
        fetch_views(stack.endpoint, tokens, runs)
        metrics = fetch_metrics(stack.endpoint, tokens)
        print("Stopping the agents and the stack...")
    rows = job_rows(runs)
    print()
    print(render_table(rows))
    print()
    print(EXPLAIN)
    print(render_summary(rows, metrics))
    unfinished = [r for r in rows if r["status"] not in FINAL_STATUSES]
    expected = sum(len(s.test_paths) for s in suites)
    elapsed = time.monotonic() - started
    print()
    if unfinished or len(rows) != expected:
        print(
            f"Demo FAILED after {elapsed:.0f}s: {len(unfinished)} job(s) unfinished, "
            f"{len(rows)}/{expected} jobs seen. Logs: {_relative(log_path.parent)}/"
        )
        return 1
    print(
        f"Demo finished in {elapsed:.0f}s: every job reached a final state. "
        f"Logs and agent journals: {_relative(log_path.parent)}/"
    )
    print("Next: `make dev` keeps the stack running so you can use `qgjob` yourself.")
    return 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
