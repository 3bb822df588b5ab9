"""App builds: which bytes are an org's app version (plain dataclasses, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BuildState(StrEnum):
    READY = "ready"  # ``ready`` holds the version's build
    PENDING = "pending"  # an upload started; no build was ever completed


@dataclass(frozen=True)
class BuildFile:
    """One upload's bytes: content-addressed by sha256 under its org and version."""

    sha256: str
    size: int
    file_name: str
    key: str


@dataclass(frozen=True)
class Build:
    """An org's app version and its build.

    ``ready`` is what agents install; ``pending`` an upload started and not yet completed
    (a replacement keeps ``ready`` until it completes). ``version`` counts writes: each
    write is conditional on the version it read (optimistic concurrency).
    """

    org_id: str
    app_version_id: str
    created_at: float
    updated_at: float
    version: int = 1
    ready: BuildFile | None = None
    pending: BuildFile | None = None
    uploaded_at: float | None = None
    replaced: int = 0

    @property
    def state(self) -> BuildState:
        return BuildState.READY if self.ready is not None else BuildState.PENDING
