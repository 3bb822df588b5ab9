"""The benchmark's trace format: validation errors name the field, dump and load round-trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.trace import Family, TraceError, dump_trace, load_trace, parse_trace


def trace_data() -> dict[str, Any]:
    return {
        "agents": [
            {"id": "e1", "target": "emulator", "installed": None},
            {
                "id": "d1",
                "target": "device",
                "installed": {"org_id": "acme", "app_version_id": "v1"},
            },
        ],
        "install_s": {"emulator": 60, "device": 120},
        "jobs": [
            {
                "id": "j1",
                "arrival_s": 0,
                "org_id": "acme",
                "app_version_id": "v1",
                "target": "emulator",
                "test_path": "tests/a.spec.ts",
                "priority": 1,
                "duration_s": 30.5,
                "estimate_s": 33,
            },
            {
                "id": "j2",
                "arrival_s": 12.5,
                "org_id": "acme",
                "app_version_id": "v1",
                "target": "device",
                "test_path": "tests/b.spec.ts",
                "priority": 10,
                "duration_s": 40,
            },
        ],
    }


def test_a_valid_trace_loads_with_families_and_optional_estimates() -> None:
    trace = parse_trace(trace_data())

    assert [j.family for j in trace.jobs] == [
        Family("acme", "v1", "emulator"),
        Family("acme", "v1", "device"),
    ]
    assert trace.jobs[0].estimate_s == 33.0
    assert trace.jobs[1].estimate_s is None  # absent: the planner has no estimate
    assert trace.agents[1].installed_app == ("acme", "v1")
    assert trace.agents[0].installed_app is None
    assert not trace.all_at_zero


def test_unknown_keys_are_ignored() -> None:
    data = trace_data()
    data["comment"] = "recorded on Tuesday"
    data["jobs"][0]["retries"] = 2
    data["agents"][0]["hostname"] = "lab-1"

    assert len(parse_trace(data).jobs) == 2


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["jobs"][1].update(priority=11), "jobs[1].priority"),
        (lambda d: d["jobs"][1].update(priority=0), "jobs[1].priority"),
        (lambda d: d["jobs"][0].update(priority="1"), "jobs[0].priority"),
        (lambda d: d["jobs"][0].pop("duration_s"), "jobs[0].duration_s: Field required"),
        (lambda d: d["jobs"][0].update(duration_s=0), "jobs[0].duration_s"),
        (lambda d: d["jobs"][0].update(arrival_s=-1), "jobs[0].arrival_s"),
        (lambda d: d["jobs"][0].update(estimate_s=-3), "jobs[0].estimate_s"),
        (lambda d: d["jobs"][0].update(org_id=""), "jobs[0].org_id"),
        (lambda d: d["jobs"][1].update(id="j1"), "jobs[1].id: duplicate id 'j1'"),
        (lambda d: d["agents"][1].update(id="e1"), "agents[1].id: duplicate id 'e1'"),
        (lambda d: d["jobs"][0].update(target="browserstack"), "jobs[0].target: no agent"),
        (lambda d: d["install_s"].pop("device"), "agents[1].target: no install_s"),
        (lambda d: d["install_s"].update(device=-5), "install_s.device"),
        (lambda d: d["agents"][1].update(installed={"org_id": "acme"}), "agents[1].installed"),
        (lambda d: d.update(agents=[]), "agents: List should have at least 1 item"),
        (lambda d: d.pop("jobs"), "jobs: Field required"),
    ],
)
def test_invalid_traces_are_rejected_naming_the_field(mutate: Any, expected: str) -> None:
    data = trace_data()
    mutate(data)

    with pytest.raises(TraceError) as error:
        parse_trace(data)

    assert expected in str(error.value)


def test_load_trace_reports_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"agents": [')
    with pytest.raises(TraceError, match="not JSON"):
        load_trace(broken)
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({**trace_data(), "install_s": {"emulator": "slow"}}))
    with pytest.raises(TraceError, match=r"invalid trace .*invalid\.json: install_s\.emulator"):
        load_trace(invalid)


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    trace = parse_trace(trace_data())
    path = tmp_path / "trace.json"

    dump_trace(trace, path)

    assert load_trace(path) == trace
    written = json.loads(path.read_text())
    assert "estimate_s" not in written["jobs"][1]  # absent stays absent
    assert written["agents"][0]["installed"] is None
