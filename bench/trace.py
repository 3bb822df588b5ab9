"""The benchmark's trace format: agents, install times per target and jobs (JSON).

```
{"agents": [{"id", "target", "installed": {"org_id", "app_version_id"} | null}],
 "install_s": {target: seconds},
 "jobs": [{"id", "arrival_s", "org_id", "app_version_id", "target", "test_path",
           "priority", "duration_s", "estimate_s" (optional), "overflow" (optional)}]}
```
``duration_s`` is the truth (what the test takes in the simulation); ``estimate_s`` is what
history would tell the planner (absent: the planner has no estimate). ``overflow: true``
(absent: false) lets an emulator or device job run on a ``browserstack`` agent instead, as
``qgjob submit --overflow browserstack`` does (it runs there for the same ``duration_s``,
after BrowserStack's install). Unknown keys are
ignored; an invalid trace is rejected with a :class:`TraceError` naming the bad field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Name = Annotated[str, Field(min_length=1, max_length=256)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Priority = Annotated[int, Field(ge=1, le=10, strict=True)]


# The pool an `overflow` job may also run on (qgjob_backend.domain.overflow.BROWSERSTACK).
OVERFLOW_TARGET = "browserstack"


class App(NamedTuple):
    """An app build an agent can hold; versions of different orgs never count as the same."""

    org_id: str
    app_version_id: str


class Family(NamedTuple):
    """Jobs sharing one install: (org, app version, target)."""

    org_id: str
    app_version_id: str
    target: str

    @property
    def app(self) -> App:
        return App(self.org_id, self.app_version_id)

    def label(self) -> str:
        return f"{self.org_id}/{self.app_version_id}/{self.target}"


class TraceError(ValueError):
    """A trace that cannot be read or does not follow the format."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class InstalledApp(_Model):
    org_id: Name
    app_version_id: Name

    @property
    def app(self) -> App:
        return App(self.org_id, self.app_version_id)


class AgentSpec(_Model):
    id: Name
    target: Name
    installed: InstalledApp | None = None

    @property
    def installed_app(self) -> App | None:
        return None if self.installed is None else self.installed.app


class JobSpec(_Model):
    id: Name
    arrival_s: Seconds
    org_id: Name
    app_version_id: Name
    target: Name
    test_path: Name
    priority: Priority
    duration_s: PositiveSeconds
    estimate_s: PositiveSeconds | None = None
    overflow: Annotated[bool, Field(strict=True)] = False

    @property
    def family(self) -> Family:
        return Family(self.org_id, self.app_version_id, self.target)

    def family_on(self, target: str) -> Family | None:
        """Its family when it runs on a ``target`` agent; None if it may not run there."""
        if target == self.target or (self.overflow and target == OVERFLOW_TARGET):
            return Family(self.org_id, self.app_version_id, target)
        return None


class Trace(_Model):
    agents: Annotated[list[AgentSpec], Field(min_length=1)]
    install_s: dict[Name, Seconds]
    jobs: list[JobSpec]

    @model_validator(mode="after")
    def _consistent(self) -> Trace:
        _check_unique("agents", [a.id for a in self.agents])
        _check_unique("jobs", [j.id for j in self.jobs])
        pools = {a.target for a in self.agents}
        for i, agent in enumerate(self.agents):
            if agent.target not in self.install_s:
                raise ValueError(
                    f"agents[{i}].target: no install_s given for target {agent.target!r}"
                )
        for i, job in enumerate(self.jobs):
            if job.target not in pools:
                raise ValueError(f"jobs[{i}].target: no agent has target {job.target!r}")
            if job.overflow and job.target == OVERFLOW_TARGET:
                raise ValueError(f"jobs[{i}].overflow: a {OVERFLOW_TARGET} job cannot overflow")
        return self

    @property
    def all_at_zero(self) -> bool:
        """True when every job arrives at time 0 (the lower bounds are tight only then)."""
        return all(j.arrival_s == 0 for j in self.jobs)

    def agents_of(self, target: str) -> list[AgentSpec]:
        return [a for a in self.agents if a.target == target]


def _check_unique(field: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if value in seen:
            raise ValueError(f"{field}[{i}].id: duplicate id {value!r}")
        seen.add(value)


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        where = _field_path(tuple(item["loc"]))
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def parse_trace(data: Any, source: str = "trace") -> Trace:
    """Validates a decoded JSON document as a trace."""
    try:
        return Trace.model_validate(data)
    except ValidationError as error:
        raise TraceError(f"invalid {source}: {_describe(error)}") from None


def load_trace(path: str | Path) -> Trace:
    """Reads and validates a trace file; a :class:`TraceError` names what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise TraceError(f"cannot read trace {path}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TraceError(
            f"invalid trace {path}: not JSON ({error.msg} at line {error.lineno})"
        ) from None
    return parse_trace(data, f"trace {path}")


def trace_to_json(trace: Trace) -> dict[str, Any]:
    """The JSON document of a trace (``estimate_s`` left out when there is none,
    ``overflow`` when false)."""
    data = trace.model_dump(mode="json")
    for job in data["jobs"]:
        if job["estimate_s"] is None:
            del job["estimate_s"]
        if not job["overflow"]:
            del job["overflow"]
    return data


def dump_trace(trace: Trace, path: str | Path) -> None:
    """Writes a trace as JSON, one job per line (diff- and grep-friendly)."""
    data = trace_to_json(trace)
    lines = [
        "{",
        f' "agents": {_json_list(data["agents"])},',
        f' "install_s": {json.dumps(data["install_s"], sort_keys=True)},',
        f' "jobs": {_json_list(data["jobs"])}',
        "}",
    ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _json_list(items: list[Any]) -> str:
    if not items:
        return "[]"
    return "[\n  " + ",\n  ".join(json.dumps(item) for item in items) + "\n ]"
