"""Org settings: what an operator sets for one org, and what a submission reads of it.

Today one setting: the pool an org's emulator and device runs overflow to when their
submission does not say (``SuiteSubmission.overflow`` absent). A submission that names
``overflow`` (a pool, or ``none``) keeps what it says, whatever the org's default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from aws_lambda_powertools import Logger

from qgjob_backend.ports import OrgSettings, OrgSettingsStore
from qgjob_backend.schema import ID_PATTERN, OVERFLOW_FROM, Overflow, Target
from qgjob_backend.services.errors import Conflict, ServiceError

logger = Logger(child=True)

# The pools an org's runs may overflow to (Overflow's values other than 'none').
OVERFLOW_POOLS = tuple(pool for o in Overflow if (pool := o.pool) is not None)
# A write that loses a race re-reads and tries again this many times in all: operators
# rarely race, and a bounded loop never spins.
MAX_WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class SettingsChange:
    settings: OrgSettings  # as stored after the call
    changed: bool  # False: it was set so already (nothing written)


class OrgSettingsService:
    def __init__(self, store: OrgSettingsStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    def settings(self, org_id: str) -> OrgSettings:
        """The org's settings (one strongly consistent read); the defaults when it never
        set any."""
        _check_org(org_id)
        return self._store.get(org_id) or OrgSettings(org_id)

    def set_overflow(self, org_id: str, overflow: Target | None) -> SettingsChange:
        """Sets the pool the org's runs overflow to by default (None: none). One
        conditional write when it changes, none when it is set so already. Runs submitted
        before keep theirs (a run's overflow is fixed when it is written)."""
        _check_org(org_id)
        if overflow is not None and overflow not in OVERFLOW_POOLS:
            allowed = ", ".join(p.value for p in OVERFLOW_POOLS)
            raise ServiceError(f"overflow: {overflow.value} is not an overflow pool ({allowed})")
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = self.settings(org_id)
            if current.overflow == overflow:
                return SettingsChange(current, changed=False)
            new = replace(
                current, overflow=overflow, updated_at=self._clock(), version=current.version + 1
            )
            if self._store.put(new, current.version or None):
                return SettingsChange(new, changed=True)
        raise Conflict(f"the settings of org {org_id} kept changing while being set; retry")

    def default_overflow(self, org_id: str, target: Target) -> Target | None:
        """The pool a run of ``target`` that does not say overflows to: the org's default
        for emulator and device runs (one eventually consistent read: a setting of the
        last moment may be missed), None for the others without reading anything."""
        if target not in OVERFLOW_FROM:
            return None
        try:
            stored = self._store.get(org_id, consistent=False)
        except Exception:
            # Overflow only makes a run sooner: a submission must not fail because its
            # org's default could not be read. The run is written without it.
            logger.warning(
                "org settings unavailable: the run does not overflow",
                extra={"org_id": org_id},
                exc_info=True,
            )
            return None
        return stored.overflow if stored is not None else None


def _check_org(org_id: str) -> None:
    if not re.fullmatch(ID_PATTERN, org_id):
        raise ServiceError(f"org_id: {org_id!r} must be 1-64 characters of [A-Za-z0-9._-]")
