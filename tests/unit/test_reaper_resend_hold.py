"""The reaper does not re-send jobs whose admission merely lags behind a backed-up queue
(runs written before jobs went straight into their backlog: see ``legacy_submit``)."""

from __future__ import annotations

import pytest

from qgjob_backend.services.reaper import ReaperService, ReaperSettings
from tests.unit.fakes import (
    FakeClock,
    MemoryServices,
    build_memory_services,
    fake_config,
    legacy_submit,
)

GRACE = 30.0
HOLD = 300.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(fake_config(resend_grace_seconds=GRACE), clock)


class QueueDepth:
    """What SQS's approximate message counts would say; settable by the test."""

    def __init__(self) -> None:
        self.messages = 0
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.messages


def _reaper(svc: MemoryServices, clock: FakeClock, depth: QueueDepth) -> ReaperService:
    settings = ReaperSettings(
        agent_offline_seconds=3600.0, resend_grace_seconds=GRACE, resend_hold_seconds=HOLD
    )
    return ReaperService(svc.store, svc.queue, clock, settings, queue_depth=depth)


def _submit(svc: MemoryServices, tests: int) -> list[str]:
    # Only runs written before jobs went straight into their backlog are ever re-sent.
    return legacy_submit(svc, tests, send=False)


def _resend_times(reaper: ReaperService, clock: FakeClock, seconds: int) -> list[int]:
    start = clock()
    times = []
    for _ in range(seconds):
        clock.advance(1)
        if reaper.sweep().resent_jobs:
            times.append(round(clock() - start))
    return times


def test_a_lagging_admission_is_not_re_sent_while_the_queue_holds_messages(
    svc: MemoryServices, clock: FakeClock
) -> None:
    depth = QueueDepth()
    reaper = _reaper(svc, clock, depth)
    job_ids = _submit(svc, 20)
    depth.messages = 500  # the dispatcher is behind: their messages wait in the queue
    assert _resend_times(reaper, clock, int(HOLD)) == []
    assert svc.queue.sent == []
    # The dispatcher catches up and admits them: nothing was ever sent twice.
    for job_id in job_ids:
        assert svc.dispatcher.admit(job_id) is not None
    depth.messages = 0
    assert _resend_times(reaper, clock, int(HOLD)) == []
    assert svc.queue.sent == []


def test_a_held_job_is_re_sent_once_per_hold_not_in_a_burst(
    svc: MemoryServices, clock: FakeClock
) -> None:
    # A message really lost while other traffic keeps the queue busy: still recovered.
    depth = QueueDepth()
    depth.messages = 500
    reaper = _reaper(svc, clock, depth)
    (job_id,) = _submit(svc, 1)
    assert _resend_times(reaper, clock, int(3 * HOLD)) == [int(HOLD) + 1, 2 * int(HOLD) + 1]
    assert svc.queue.sent_ids == [job_id, job_id]


def test_with_an_empty_queue_a_lost_message_is_re_sent_after_the_grace(
    svc: MemoryServices, clock: FakeClock
) -> None:
    depth = QueueDepth()
    reaper = _reaper(svc, clock, depth)
    (job_id,) = _submit(svc, 1)
    # Grace, then the usual backoff (3x, 7x grace).
    assert _resend_times(reaper, clock, int(8 * GRACE)) == [31, 91, 211]
    assert svc.queue.sent_ids == [job_id] * 3


def test_the_queue_depth_is_read_only_when_a_re_send_is_due(
    svc: MemoryServices, clock: FakeClock
) -> None:
    depth = QueueDepth()
    reaper = _reaper(svc, clock, depth)
    _submit(svc, 3)
    clock.advance(GRACE)
    reaper.sweep()
    assert depth.reads == 0  # nothing due yet: no SQS request
    clock.advance(1)
    reaper.sweep()
    assert depth.reads == 1


def test_an_unreadable_depth_falls_back_to_the_grace(svc: MemoryServices, clock: FakeClock) -> None:
    def broken() -> int:
        raise ConnectionError("sqs unreachable")

    settings = ReaperSettings(agent_offline_seconds=3600.0, resend_grace_seconds=GRACE)
    reaper = ReaperService(svc.store, svc.queue, clock, settings, queue_depth=broken)
    _submit(svc, 2)
    clock.advance(GRACE + 1)
    assert reaper.sweep().resent_jobs == 2
