"""bench.fleet's pure parts: the workload from the seed, options, percentiles, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fleet import FleetOptions, parse_args, percentile, plan_runs
from bench.fleet_agents import ClientStats, route_of
from bench.fleet_support import Journals


def test_runs_come_from_the_seed_and_add_up_to_the_jobs() -> None:
    options = FleetOptions(jobs=45, suite_size=20, seed=3)
    runs = plan_runs(options)
    assert [len(r.tests) for r in runs] == [20, 20, 5]
    assert runs == plan_runs(FleetOptions(jobs=45, suite_size=20, seed=3))
    assert runs != plan_runs(FleetOptions(jobs=45, suite_size=20, seed=4))
    body = runs[0].body(seed=3)
    assert body["idempotency_key"] == "fleet-3-0"
    assert len(body["test_paths"]) == 20


def test_options_split_agents_between_hosts_and_victims() -> None:
    options = parse_args(["--agents", "200", "--kills", "20"])
    assert (options.victim_count, options.host_count) == (4, 2)
    assert parse_args(["--agents", "6", "--kills", "0"]).victim_count == 0
    assert parse_args(["--targets", "emulator", "--agents", "1"]).targets == ("emulator",)


def test_bad_options_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--agents", "2", "--targets", "emulator,tablet"])
    assert "--targets: unknown ['tablet']" in capsys.readouterr().err


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 99) == 99.0


def test_client_side_routes_and_totals() -> None:
    assert route_of("POST", "http://h:1/v1/agents/a-1/lease") == "POST /agents/{id}/lease"
    stats = ClientStats()
    for status in ("200", "503", "transport", "502"):
        stats.add("GET /runs/{id}", status)
    assert ClientStats.total(stats.snapshot(), "5xx") == 2
    assert ClientStats.total(stats.snapshot(), "transport") == 1


def test_journals_skip_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    line = '{"event": "result", "accepted": true, "job_id": "j%d", "ts": 1}\n'
    path.write_text(line % 1 + line % 1 + '{"event": "res')
    journals = Journals(lambda: [path]).refresh()
    assert journals.completed_twice() == {"j1": 2}
    with path.open("a") as handle:
        handle.write(line % 2)  # glued to the cut line: unreadable, skipped
    assert journals.refresh().result_count() == 1
