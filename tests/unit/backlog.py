"""Waiting jobs as the planning cores see them (planner, preemption, overflow tests)."""

from __future__ import annotations

from qgjob_backend.domain.models import group_key_for
from qgjob_backend.domain.planner import BacklogJob


def backlog_jobs(
    org: str,
    app: str,
    count: int,
    *,
    target: str = "emulator",
    priority: int = 5,
    enqueued_at: float = 0.0,
    estimate_s: float | None = 60.0,
    start: int = 0,
    prefix: str | None = None,
) -> list[BacklogJob]:
    """``count`` jobs of one group, positions ``start`` on (suite order), ids
    ``{prefix}-{position:03d}`` (prefix: ``{org}-{app}-{target}``)."""
    name = prefix or f"{org}-{app}-{target}"
    return [
        BacklogJob(
            job_id=f"{name}-{i:03d}",
            group_key=group_key_for(org, app, target),
            org_id=org,
            app_version_id=app,
            target=target,
            priority=priority,
            enqueued_at=enqueued_at,
            position=i,
            estimate_s=estimate_s,
            test_path=f"tests/t{i}.spec.ts",
        )
        for i in range(start, start + count)
    ]
