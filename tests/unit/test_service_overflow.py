"""Overflow to BrowserStack in the dispatcher, over the in-memory fakes: a run submitted
with ``overflow=browserstack`` to a busy emulator pool has waiting jobs moved to an idle
BrowserStack agent (each one conditionally, its run counting it), and nothing moves
without the allowance."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from qgjob_backend.domain.overflow import OverflowPolicy
from qgjob_backend.domain.planner import BusyAgent, IdleAgent
from qgjob_backend.schema import JobStatus, Overflow, SuiteSubmission, Target
from qgjob_backend.services.auth import Principal, TokenKind
from qgjob_backend.services.overflow_moves import OverflowMoves
from tests.unit.fakes import FakeClock, MemoryServices, build_memory_services, fake_config

SETTINGS = fake_config(lease_seconds=60.0, agent_offline_seconds=180.0)


@pytest.fixture
def svc() -> MemoryServices:
    return build_memory_services(SETTINGS, FakeClock(1_000_000.0))


def submit(svc: MemoryServices, app: str, tests: int, **fields: Any) -> list[str]:
    suite = SuiteSubmission(
        org_id="acme",
        app_version_id=app,
        test_paths=[f"tests/{app}/t{i}.spec.ts" for i in range(tests)],
        **fields,
    )
    return [j.job_id for j in svc.submissions.submit("acme", suite).jobs]


def busy_emulator(svc: MemoryServices) -> str:
    """One emulator agent, busy with a long batch of another suite."""
    agent_id = svc.as_agent.register(Target.EMULATOR, "emu-1", None).agent_id
    submit(svc, "other", 20)
    assert svc.as_agent.lease(agent_id) is not None
    return agent_id


def test_an_overflow_run_moves_waiting_jobs_to_an_idle_browserstack_agent(
    svc: MemoryServices,
) -> None:
    busy_emulator(svc)
    job_ids = submit(svc, "v1", 30, overflow="browserstack")
    bs = svc.as_agent.register(Target.BROWSERSTACK, "bs-1", None).agent_id

    leased = svc.as_agent.lease(bs)

    assert leased is not None
    assert leased.batch.target is Target.BROWSERSTACK
    jobs = {j: svc.store.get_job(j) for j in job_ids}
    moved = [j for j in jobs.values() if j is not None and j.moved_from is Target.EMULATOR]
    assert moved
    assert all(j.target is Target.BROWSERSTACK for j in moved)
    assert all(j.group_key == "acme/v1/browserstack" for j in moved)
    # The moved ones are the suite's last tests (the emulators would reach them last).
    positions = sorted(j.position for j in moved)
    assert positions == list(range(30 - len(moved), 30))
    # The batch holds only moved jobs, and the rest stays in the emulator backlog.
    assert set(j.job_id for j in leased.jobs) <= {j.job_id for j in moved}
    stayed = [j for j in jobs.values() if j is not None and j.moved_from is None]
    assert stayed
    assert all(j.target is Target.EMULATOR and svc.store.in_backlog(j.job_id) for j in stayed)
    run = svc.store.get_run(moved[0].run_id)
    assert run is not None
    assert run.overflow is Target.BROWSERSTACK
    assert run.moved == len(moved)
    assert sum(run.counts.values()) == 30  # the state counters still add up to the suite


def test_an_org_s_own_browserstack_lab_takes_its_overflow_and_no_other_org_s(
    svc: MemoryServices,
) -> None:
    # BrowserStack agents are usually scoped to one org (its credentials): acme's lab
    # takes acme's overflow; globex's overflow has no BrowserStack agent it may use.
    busy_emulator(svc)
    acme_jobs = submit(svc, "v1", 30, overflow="browserstack")
    globex = SuiteSubmission(
        org_id="globex",
        app_version_id="g1",
        test_paths=[f"tests/g{i}.spec.ts" for i in range(30)],
        overflow="browserstack",
    )
    globex_jobs = [j.job_id for j in svc.submissions.submit("globex", globex).jobs]
    acme_lab = Principal(TokenKind.AGENT, "acme", Target.BROWSERSTACK, "acme-bs-fleet")
    bs = svc.as_agent.register(Target.BROWSERSTACK, "bs-1", None, fleet=acme_lab).agent_id

    leased = svc.as_agent.lease(bs)

    assert leased is not None
    assert leased.batch.org_id == "acme"
    moved = [svc.store.get_job(j) for j in acme_jobs]
    assert any(j is not None and j.moved_from is Target.EMULATOR for j in moved)
    assert all(
        (j := svc.store.get_job(job_id)) is not None and j.target is Target.EMULATOR
        for job_id in globex_jobs
    )


def test_a_move_is_conditional_and_counted_once(svc: MemoryServices) -> None:
    job_ids = submit(svc, "v1", 3, overflow="browserstack")
    job = svc.store.get_job(job_ids[0])
    assert job is not None
    now = svc.clock()

    moved = svc.store.move_job(job, Target.BROWSERSTACK, now)

    assert moved is not None
    assert (moved.target, moved.moved_from) == (Target.BROWSERSTACK, Target.EMULATOR)
    assert svc.store.move_job(job, Target.BROWSERSTACK, now) is None  # a replay: nothing
    stored = svc.store.get_job(job_ids[0])
    assert stored is not None
    assert svc.store.move_job(stored, Target.BROWSERSTACK, now) is None  # moved before
    assert [j.job_id for j in svc.store.backlog(Target.BROWSERSTACK)] == [job_ids[0]]
    run = svc.store.get_run(job.run_id)
    assert run is not None
    assert run.moved == 1
    # Not to a pool its run did not allow, nor once it left the queue.
    other = svc.store.get_job(job_ids[1])
    assert other is not None
    assert svc.store.move_job(other, Target.DEVICE, now) is None
    svc.submissions.cancel("acme", job_ids[2])
    cancelled = svc.store.get_job(job_ids[2])
    assert cancelled is not None
    assert svc.store.move_job(cancelled, Target.BROWSERSTACK, now) is None


def test_nothing_moves_without_the_allowance(svc: MemoryServices) -> None:
    busy_emulator(svc)
    job_ids = submit(svc, "v1", 30)
    bs = svc.as_agent.register(Target.BROWSERSTACK, "bs-1", None).agent_id

    assert svc.as_agent.lease(bs) is None

    for job_id in job_ids:
        job = svc.store.get_job(job_id)
        assert job is not None
        assert (job.target, job.moved_from, job.status) == (
            Target.EMULATOR,
            None,
            JobStatus.QUEUED,
        )


def test_nothing_moves_while_the_home_pool_has_room(svc: MemoryServices) -> None:
    emulators = [svc.as_agent.register(Target.EMULATOR, f"e{i}", None) for i in range(3)]
    svc.as_agent.register(Target.BROWSERSTACK, "bs-1", None)
    job_ids = submit(svc, "v1", 3, overflow="browserstack")

    assert svc.as_agent.lease(emulators[0].agent_id) is not None

    assert all(
        (job := svc.store.get_job(j)) is not None and job.moved_from is None for j in job_ids
    )


def test_planning_twice_moves_no_job_twice(svc: MemoryServices) -> None:
    busy_emulator(svc)
    job_ids = submit(svc, "v1", 30, overflow="browserstack")
    svc.as_agent.register(Target.BROWSERSTACK, "bs-1", None)
    submitted = svc.store.get_job(job_ids[0])
    assert submitted is not None
    run_id = submitted.run_id
    svc.dispatcher.plan()
    first = svc.store.get_run(run_id)
    svc.dispatcher.plan()
    again = svc.store.get_run(run_id)
    moved = [j for j in job_ids if (job := svc.store.get_job(j)) and job.moved_from]
    assert first is not None
    assert again is not None
    assert again.moved == len(moved) >= first.moved > 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target": "browserstack", "overflow": "browserstack"}, "a browserstack run cannot"),
        ({"overflow": "device"}, "Input should be 'browserstack'"),
    ],
)
def test_only_emulator_and_device_runs_may_overflow_to_browserstack(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        SuiteSubmission(org_id="acme", app_version_id="v1", test_paths=["t.spec.ts"], **fields)
    errors = raised.value.errors()
    assert [e["loc"] for e in errors] == [("overflow",)]
    assert message in errors[0]["msg"]
    device = SuiteSubmission(
        org_id="acme",
        app_version_id="v1",
        test_paths=["t.spec.ts"],
        target=Target.DEVICE,
        overflow=Overflow.BROWSERSTACK,
    )
    assert device.jobs()[0].overflow == "browserstack"


def test_moved_jobs_leave_the_home_backlog_the_plan_reads_and_join_browserstack_s(
    svc: MemoryServices,
) -> None:
    # The plan that follows the moves uses these backlogs: a moved job left in its home
    # backlog could be given to a home agent in the same plan.
    job_ids = submit(svc, "v1", 30, overflow="browserstack")
    backlogs = {target: svc.store.backlog(target, 2000) for target in Target}
    now = svc.clock()
    home_group = "acme/other/emulator"
    moves = OverflowMoves(svc.store, OverflowPolicy())

    moves.move(
        backlogs,
        {None: [IdleAgent("bs-1", Target.BROWSERSTACK.value, None)]},
        {None: [BusyAgent("emu-1", Target.EMULATOR.value, home_group, now + 3600)]},
        {"emulator": 60.0, "browserstack": 60.0},
        now,
    )

    moved = {j for j in job_ids if (job := svc.store.get_job(j)) and job.moved_from}
    assert moved
    assert not moved & {j.job_id for j in backlogs[Target.EMULATOR]}
    assert moved == {j.job_id for j in backlogs[Target.BROWSERSTACK]}
    assert len(backlogs[Target.EMULATOR]) == 30 - len(moved)
