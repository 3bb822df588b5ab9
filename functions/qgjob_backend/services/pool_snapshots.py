"""Queue position and ETA as the other services use them: advisory, never in the way.

The dispatcher hands over what a plan has just read (each pool's backlog head and
agents) and this service keeps one small snapshot per pool (domain.queue) in the store:
at most one write per pool every ``min_interval_s``, and none while it would say the
same as the last one (refreshed every ``refresh_s`` all the same, so its ``as_of`` tells
a reader it is alive). A run poll reads the run's pool's snapshot, one more read of one
item whatever the fleet and the backlog, and answers the run's place in it (a run that
moved jobs to its overflow pool reads that pool's snapshot too).

Every failure is logged and swallowed: a missing snapshot only leaves a run poll
without an ETA, while a failed plan or poll would hold up work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Agent, Job, Run
from qgjob_backend.domain.planner import PlanningPolicy
from qgjob_backend.domain.queue import (
    PoolSnapshot,
    RunQueue,
    moved_run_queue,
    pool_snapshot,
    run_queue,
)
from qgjob_backend.ports import PoolSnapshotStore
from qgjob_backend.schema import Target

logger = Logger(child=True)

# At most one snapshot write per pool this often (also the condition of the write):
# a busy pool costs about 17,000 one-unit writes a day, whatever its traffic.
SNAPSHOT_MIN_INTERVAL_S = 5.0
# An unchanged snapshot is written again after this long (its as_of stays recent).
SNAPSHOT_REFRESH_S = 60.0


@dataclass(frozen=True)
class SnapshotSettings:
    unknown_estimate_s: float
    # An idle agent last seen before now minus this is offline (the planner's rule).
    agent_offline_seconds: float
    min_interval_s: float = SNAPSHOT_MIN_INTERVAL_S
    refresh_s: float = SNAPSHOT_REFRESH_S


class PoolSnapshotService:
    def __init__(
        self,
        store: PoolSnapshotStore,
        clock: Callable[[], float],
        settings: SnapshotSettings,
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        # The last snapshot this container wrote (or saw refused) per pool: most plans
        # then cost no write, not even a refused conditional one (that costs a unit too).
        self._last: dict[Target, PoolSnapshot] = {}

    def observe(
        self,
        backlogs: Mapping[Target, Sequence[Job]],
        agents: Mapping[Target, Sequence[Agent]],
        install_s: Mapping[str, float],
        now: float,
        window: int,
    ) -> None:
        """Snapshots each pool a plan read (those with agents read: a waiting backlog)."""
        for target, pool_agents in agents.items():
            try:
                self._observe(target, backlogs.get(target, ()), pool_agents, install_s, now, window)
            except Exception:
                logger.warning(
                    "pool snapshot not written", extra={"target": target.value}, exc_info=True
                )

    def _observe(
        self,
        target: Target,
        backlog: Sequence[Job],
        agents: Sequence[Agent],
        install_s: Mapping[str, float],
        now: float,
        window: int,
    ) -> None:
        settings = self._settings
        last = self._last.get(target)
        if last is not None and now - last.taken_at < settings.min_interval_s:
            return
        snapshot = pool_snapshot(
            target,
            backlog,
            agents,
            now,
            online_after=now - settings.agent_offline_seconds,
            install_s=install_s.get(target.value, PlanningPolicy().default_install_s),
            unknown_estimate_s=settings.unknown_estimate_s,
            truncated=len(backlog) >= window,
        )
        if (
            last is not None
            and now - last.taken_at < settings.refresh_s
            and snapshot.same_estimates(last)
        ):
            return
        written = self._store.put_snapshot(snapshot, settings.min_interval_s)
        # Refused: another container wrote one a moment ago; either way, none for a while.
        self._last[target] = snapshot
        logger.debug("pool snapshot", extra={"target": target.value, "written": written})

    def run_queue(self, run: Run) -> RunQueue | None:
        """The run's queue place; None when it has nothing waiting or no snapshot says.

        One snapshot read; two for a run some of whose jobs moved to its overflow pool
        (its place there counts too)."""
        if run.counts.get("queued", 0) <= 0 and run.counts.get("active", 0) <= 0:
            return None  # finished: no read at all
        try:
            snapshot = self._store.get_snapshot(run.target)
        except Exception:
            logger.warning("pool snapshot unavailable", extra={"run_id": run.run_id}, exc_info=True)
            return None
        if run.overflow is None or run.moved <= 0:
            return run_queue(run, snapshot, self._clock())
        try:
            overflow = self._store.get_snapshot(run.overflow)
        except Exception:
            logger.warning(
                "overflow pool snapshot unavailable", extra={"run_id": run.run_id}, exc_info=True
            )
            overflow = None
        return moved_run_queue(run, snapshot, overflow, self._clock())
