"""An org's default overflow, over the in-memory fakes: a submission that does not name
``overflow`` takes its org's default (emulator and device runs only), ``none`` opts out,
the default is not part of the request's fingerprint, and reading it costs at most one
read per submission; the service's writes are conditional and bounded."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from qgjob_backend.ports import OrgSettings
from qgjob_backend.schema import Overflow, SuiteSubmission, Target
from qgjob_backend.services.errors import Conflict, ServiceError
from qgjob_backend.services.org_settings import MAX_WRITE_ATTEMPTS, OrgSettingsService
from tests.unit.fakes import (
    FakeClock,
    MemoryOrgSettingsStore,
    MemoryServices,
    build_memory_services,
    fake_config,
)
from tests.unit.test_service_overflow import busy_emulator

SETTINGS = fake_config(lease_seconds=60.0, agent_offline_seconds=180.0)


@pytest.fixture
def settings_store() -> MemoryOrgSettingsStore:
    return MemoryOrgSettingsStore()


@pytest.fixture
def svc(settings_store: MemoryOrgSettingsStore) -> MemoryServices:
    return build_memory_services(
        SETTINGS, FakeClock(1_000_000.0), org_settings_store=settings_store
    )


def org_settings(svc: MemoryServices) -> OrgSettingsService:
    assert svc.org_settings is not None  # wired because the fixture passed a store
    return svc.org_settings


def suite(app: str = "v1", tests: int = 2, **fields: Any) -> SuiteSubmission:
    return SuiteSubmission(
        org_id="acme",
        app_version_id=app,
        test_paths=[f"tests/{app}/t{i}.spec.ts" for i in range(tests)],
        **fields,
    )


def submitted_overflow(svc: MemoryServices, **fields: Any) -> Target | None:
    result = svc.submissions.submit("acme", suite(**fields))
    assert {j.overflow for j in result.jobs} == {result.run.overflow}  # jobs as their run
    stored = svc.store.get_run(result.run.run_id)
    assert stored is not None
    return stored.overflow


@pytest.mark.parametrize("target", [Target.EMULATOR, Target.DEVICE])
def test_a_submission_without_overflow_takes_the_org_default(
    svc: MemoryServices, target: Target
) -> None:
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    assert submitted_overflow(svc, target=target) is Target.BROWSERSTACK


def test_explicit_none_opts_out_of_the_org_default(svc: MemoryServices) -> None:
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    assert submitted_overflow(svc, overflow="none") is None


def test_explicit_browserstack_overflows_without_any_setting(
    svc: MemoryServices, settings_store: MemoryOrgSettingsStore
) -> None:
    assert submitted_overflow(svc, overflow="browserstack") is Target.BROWSERSTACK
    assert settings_store.reads == 0  # the submission said: nothing to read


def test_without_a_setting_nothing_overflows(svc: MemoryServices) -> None:
    assert submitted_overflow(svc) is None


def test_another_orgs_setting_does_not_apply(svc: MemoryServices) -> None:
    org_settings(svc).set_overflow("globex", Target.BROWSERSTACK)
    assert submitted_overflow(svc) is None


def test_a_browserstack_run_ignores_the_default_and_reads_nothing(
    svc: MemoryServices, settings_store: MemoryOrgSettingsStore
) -> None:
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    reads = settings_store.reads
    assert submitted_overflow(svc, target="browserstack") is None
    assert submitted_overflow(svc, target="browserstack", overflow="none") is None
    assert settings_store.reads == reads


def test_an_unreadable_setting_does_not_fail_the_submission(
    svc: MemoryServices, settings_store: MemoryOrgSettingsStore
) -> None:
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)

    def down(org_id: str, *, consistent: bool = True) -> OrgSettings | None:
        raise RuntimeError("settings read throttled")

    settings_store.get = down  # type: ignore[method-assign]
    # Written, without the default it could not read (overflow only makes runs sooner).
    assert submitted_overflow(svc) is None


def test_a_submission_reads_the_setting_once_eventually_consistent(
    svc: MemoryServices, settings_store: MemoryOrgSettingsStore
) -> None:
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    reads = settings_store.reads
    svc.submissions.submit("acme", suite(tests=50))
    assert (settings_store.reads - reads, settings_store.eventual_reads) == (1, 1)


def test_the_default_is_not_part_of_the_fingerprint_and_a_replay_keeps_its_runs(
    settings_store: MemoryOrgSettingsStore,
) -> None:
    plain = build_memory_services(SETTINGS, FakeClock(1_000_000.0))  # no settings at all
    fingerprint = plain.submissions.submit("acme", suite(idempotency_key="k1")).run.fingerprint
    svc = build_memory_services(SETTINGS, FakeClock(1_000_000.0), org_settings_store=settings_store)
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)

    first = svc.submissions.submit("acme", suite(idempotency_key="k1"))
    assert first.run.fingerprint == fingerprint
    # ... and it is the hash such a request had before the overflow field existed.
    before_overflow = suite().model_dump_json(exclude={"idempotency_key", "overflow"})
    assert fingerprint == hashlib.sha256(before_overflow.encode()).hexdigest()
    assert first.run.overflow is Target.BROWSERSTACK
    org_settings(svc).set_overflow("acme", None)
    replay = svc.submissions.submit("acme", suite(idempotency_key="k1"))  # no 409

    assert (replay.created, replay.run.run_id) == (False, first.run.run_id)
    assert replay.run.overflow is Target.BROWSERSTACK  # as first written
    assert {j.overflow for j in replay.jobs} == {Target.BROWSERSTACK}


def test_a_replay_heals_missing_jobs_with_its_runs_overflow(svc: MemoryServices) -> None:
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    first = svc.submissions.submit("acme", suite(idempotency_key="k2", tests=3))
    lost = first.jobs[-1].job_id
    svc.store.jobs.pop(lost)  # as if the first attempt died before writing it
    org_settings(svc).set_overflow("acme", None)

    svc.submissions.submit("acme", suite(idempotency_key="k2", tests=3))

    healed = svc.store.get_job(lost)
    assert healed is not None
    assert healed.overflow is Target.BROWSERSTACK


def test_a_run_that_took_the_default_overflows_like_an_explicit_one(
    svc: MemoryServices,
) -> None:
    busy_emulator(svc)
    org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    job_ids = [j.job_id for j in svc.submissions.submit("acme", suite(tests=30)).jobs]
    bs = svc.as_agent.register(Target.BROWSERSTACK, "bs-1", None).agent_id

    leased = svc.as_agent.lease(bs)

    assert leased is not None
    assert {j.job_id for j in leased.jobs} <= set(job_ids)
    run = svc.store.get_run(leased.jobs[0].run_id)
    assert run is not None
    assert (run.overflow, run.moved > 0) == (Target.BROWSERSTACK, True)


# ------------------------------------------------------------------ the service


def test_setting_twice_changes_nothing_the_second_time(
    svc: MemoryServices, settings_store: MemoryOrgSettingsStore
) -> None:
    first = org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    again = org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)

    assert first.changed
    assert not again.changed
    assert again.settings == first.settings
    assert first.settings == OrgSettings("acme", Target.BROWSERSTACK, 1_000_000.0, version=1)
    assert settings_store.writes == 1
    cleared = org_settings(svc).set_overflow("acme", None)
    assert (cleared.changed, cleared.settings.overflow, cleared.settings.version) == (
        True,
        None,
        2,
    )


def test_an_org_that_never_set_anything_shows_the_defaults(svc: MemoryServices) -> None:
    assert org_settings(svc).settings("acme") == OrgSettings("acme")
    assert not org_settings(svc).set_overflow("acme", None).changed  # nothing to clear


def test_a_write_racing_another_rereads_and_applies_on_top(
    svc: MemoryServices, settings_store: MemoryOrgSettingsStore
) -> None:
    service = org_settings(svc)
    service.set_overflow("acme", Target.BROWSERSTACK)  # version 1
    # Another operator writes version 2 between this call's read and its write.
    rewrite = OrgSettings("acme", Target.BROWSERSTACK, 5.0, version=2)
    settings_store.before_put = lambda: settings_store.put(rewrite, expected_version=1)

    change = service.set_overflow("acme", None)

    # Its first write lost (it named version 1); it re-read and wrote version 3.
    assert (change.changed, change.settings.version, change.settings.overflow) == (True, 3, None)
    assert settings_store.get("acme") == change.settings


def test_a_write_that_keeps_losing_gives_up_with_a_conflict(
    svc: MemoryServices, settings_store: MemoryOrgSettingsStore
) -> None:
    flips = [0]

    def racing_writer() -> None:
        # Someone writes before each of this call's writes (the same overflow, a newer
        # version): every read this call made is stale by the time it writes.
        flips[0] += 1
        current = settings_store.settings["acme"]
        settings_store.settings["acme"] = OrgSettings("acme", None, 1.0, current.version + 1)
        settings_store.before_put = racing_writer

    settings_store.settings["acme"] = OrgSettings("acme", None, 1.0, 1)
    settings_store.before_put = racing_writer
    with pytest.raises(Conflict, match="kept changing"):
        org_settings(svc).set_overflow("acme", Target.BROWSERSTACK)
    assert flips[0] == MAX_WRITE_ATTEMPTS  # bounded: it gave up, it did not spin
    assert settings_store.writes == 0


@pytest.mark.parametrize(
    ("org_id", "overflow", "field"),
    [("acme", Target.DEVICE, "overflow"), ("not an org", None, "org_id")],
)
def test_bad_input_names_the_field(
    svc: MemoryServices, org_id: str, overflow: Target | None, field: str
) -> None:
    with pytest.raises(ServiceError, match=f"^{field}: "):
        org_settings(svc).set_overflow(org_id, overflow)


# ------------------------------------------------------------------- the schema


def test_none_is_accepted_on_every_target_browserstack_only_where_it_can_move() -> None:
    assert suite(target="browserstack", overflow="none").overflow is Overflow.NONE
    assert Overflow.NONE.pool is None
    assert Overflow.BROWSERSTACK.pool is Target.BROWSERSTACK
    with pytest.raises(ValidationError) as raised:
        suite(overflow="sometimes")
    assert [e["loc"] for e in raised.value.errors()] == [("overflow",)]
    assert "'browserstack' or 'none'" in raised.value.errors()[0]["msg"]
