"""The dispatcher tells the planner when every pool's running batches end, also those of a
pool with nothing queued: the planner plans the other pools to end no sooner and spends
that slack on fewer installs (domain.planner.plan_batches)."""

from __future__ import annotations

from qgjob_backend.schema import SuiteSubmission, Target
from tests.unit.fakes import build_memory_services


def plan_suite(device_busy_for_s: float | None) -> int:
    """Batches a plan gives 4 idle emulators for an 8-test suite (90 s each, no history),
    with one device agent running a batch for ``device_busy_for_s`` (None: no device)."""
    svc = build_memory_services()
    store, now = svc.store, svc.clock()
    for index in range(4):
        store.register_agent(
            f"emu-{index}", Target.EMULATOR, f"e{index}", None, now, credential_hash="x"
        )
    if device_busy_for_s is not None:
        store.register_agent("dev-0", Target.DEVICE, "d0", None, now, credential_hash="x")
        device = store.agents["dev-0"]
        device.batch_id, device.batch_group = "batch-other", "globex/v9/device"
        device.batch_expected_free_at = now + device_busy_for_s
    suite = SuiteSubmission(
        org_id="acme",
        app_version_id="v1",
        target="emulator",
        test_paths=[f"tests/t{i}.spec.js" for i in range(8)],
    )
    svc.submissions.submit("acme", suite)
    return len(svc.dispatcher.plan())


def test_a_long_batch_in_a_pool_with_nothing_queued_saves_the_other_pools_installs() -> None:
    # Alone, the suite is split over the 4 emulators (4 installs, ends in 240 s). With a
    # device batch running for another 2,000 s, one emulator does it (one install, 780 s).
    assert plan_suite(None) == 4
    assert plan_suite(60.0) == 4  # a batch ending sooner than the split changes nothing
    assert plan_suite(2_000.0) == 1
