"""Duration estimates in the use cases: recorded from reports, stamped at admission, fed to
the planner. Over the in-memory fakes with a fake clock.

The assertions never depend on how the planner cuts a group into batches.
"""

from __future__ import annotations

from typing import Any

import pytest

import qgjob_backend.services.dispatch as dispatch_module
from qgjob_backend.config import Config, ConfigError
from qgjob_backend.domain.estimates import DurationEstimate, EstimateKey
from qgjob_backend.domain.models import AppRef
from qgjob_backend.domain.planner import BusyAgent
from qgjob_backend.ports import EstimateConflict
from qgjob_backend.schema import JobStatus, SuiteSubmission, Target
from qgjob_backend.services.agents import LeasedBatch
from qgjob_backend.services.backlog_views import backlog_view
from tests.unit.fakes import (
    FakeClock,
    MemoryServices,
    PlanSpy,
    build_memory_services,
    fake_config,
    legacy_submit,
)

SETTINGS = fake_config(
    lease_seconds=60.0,
    agent_offline_seconds=180.0,
    max_batch_seconds=600.0,
    unknown_estimate_seconds=45.0,
    default_install_seconds_emulator=61.0,
)
PATHS = ("tests/login.spec.js", "tests/cart.spec.js", "tests/pay.spec.js")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def svc(clock: FakeClock) -> MemoryServices:
    return build_memory_services(SETTINGS, clock)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> PlanSpy:
    recorder = PlanSpy()
    monkeypatch.setattr(dispatch_module, "plan_batches", recorder)
    return recorder


# ------------------------------------------------------------------ helpers
def submit_and_admit(svc: MemoryServices, **overrides: Any) -> list[str]:
    fields: dict[str, Any] = {
        "org_id": "acme",
        "app_version_id": "v1",
        "target": "emulator",
        "test_paths": list(PATHS),
    }
    fields.update(overrides)
    suite = SuiteSubmission(**fields)
    result = svc.submissions.submit("acme", suite)  # straight into the backlog
    return [j.job_id for j in result.jobs]


def try_lease(
    svc: MemoryServices, device: str = "d1", target: Target = Target.EMULATOR
) -> LeasedBatch | None:
    agent_id = svc.as_agent.register(target, device, None).agent_id
    return svc.as_agent.lease(agent_id)


def lease(svc: MemoryServices, device: str = "d1", target: Target = Target.EMULATOR) -> LeasedBatch:
    leased = try_lease(svc, device, target)
    assert leased is not None
    return leased


def report(
    svc: MemoryServices,
    leased: LeasedBatch,
    index: int,
    status: JobStatus = JobStatus.PASSED,
    duration_s: float = 12.0,
) -> str:
    batch = leased.batch
    job_id = leased.jobs[index].job_id
    svc.as_agent.start(batch.agent_id, job_id, batch.batch_id)
    svc.as_agent.report(batch.agent_id, job_id, batch.batch_id, status, duration_s, None, None)
    return job_id


def key(path: str, org: str = "acme", target: Target = Target.EMULATOR) -> EstimateKey:
    return EstimateKey(org, target, path)


# ============================================================ recording tests
def test_an_accepted_result_updates_its_tests_estimate(svc: MemoryServices) -> None:
    submit_and_admit(svc)
    leased = lease(svc)

    passed = report(svc, leased, 0, JobStatus.PASSED, 12.0)
    path = leased.jobs[0].test_path

    assert svc.estimate_store.tests == {key(path): DurationEstimate().updated(12.0, passed)}


def test_a_failed_test_counts_too(svc: MemoryServices) -> None:
    submit_and_admit(svc)
    leased = lease(svc)

    report(svc, leased, 0, JobStatus.FAILED, 7.0)

    assert svc.estimate_store.tests[key(leased.jobs[0].test_path)].mean_s == 7.0


def test_infrastructure_errors_do_not_count(svc: MemoryServices) -> None:
    submit_and_admit(svc, retries=1)
    leased = lease(svc)

    job_id = report(svc, leased, 0, JobStatus.ERROR, 3.0)

    assert svc.store.jobs[job_id].status is JobStatus.QUEUED  # retried
    assert svc.estimate_store.tests == {}
    assert svc.estimate_store.writes == 0


def test_an_error_that_ends_the_job_does_not_count(svc: MemoryServices) -> None:
    submit_and_admit(svc, retries=0)
    leased = lease(svc)

    job_id = report(svc, leased, 0, JobStatus.ERROR, 3.0)

    assert svc.store.jobs[job_id].status is JobStatus.ERROR
    assert svc.estimate_store.tests == {}


def test_a_replayed_report_counts_once(svc: MemoryServices) -> None:
    submit_and_admit(svc)
    leased = lease(svc)
    job_id = report(svc, leased, 0, JobStatus.PASSED, 12.0)
    batch = leased.batch

    replay = svc.as_agent.report(
        batch.agent_id, job_id, batch.batch_id, JobStatus.PASSED, 12.0, None, None
    )

    assert replay.status is JobStatus.PASSED
    assert svc.estimate_store.tests[key(leased.jobs[0].test_path)].samples == 1
    assert svc.estimate_store.writes == 1


@pytest.mark.parametrize(
    "error", [ConnectionError("DynamoDB unreachable"), EstimateConflict("busy estimate")]
)
def test_a_failing_estimate_store_never_fails_the_agent(
    svc: MemoryServices, clock: FakeClock, error: Exception
) -> None:
    submit_and_admit(svc)
    leased = lease(svc)
    svc.estimate_store.error = error
    batch = leased.batch

    clock.advance(30)
    svc.as_agent.record_install(batch.agent_id, batch.batch_id)
    job_id = report(svc, leased, 0, JobStatus.PASSED, 12.0)

    assert svc.store.jobs[job_id].status is JobStatus.PASSED
    assert svc.store.batches[batch.batch_id].installed_at == clock.now
    assert svc.estimate_store.writes == 0


def test_the_first_install_report_counts_its_duration_once(
    svc: MemoryServices, clock: FakeClock
) -> None:
    submit_and_admit(svc)
    leased = lease(svc)
    batch = leased.batch

    clock.advance(45)
    svc.as_agent.record_install(batch.agent_id, batch.batch_id)
    clock.advance(5)
    svc.as_agent.record_install(batch.agent_id, batch.batch_id)  # a retried request

    assert svc.estimate_store.installs == {
        Target.EMULATOR: DurationEstimate().updated(45.0, batch.batch_id)
    }


# ============================================================ admission
def test_submission_stamps_the_tests_current_estimate(svc: MemoryServices) -> None:
    svc.estimate_store.record_test_duration(key(PATHS[0]), "old-job", 30.0, 0.0)
    svc.estimate_store.record_test_duration(key(PATHS[1], org="globex"), "old-2", 9.0, 0.0)

    job_ids = submit_and_admit(svc)

    stamped = [svc.store.jobs[j].estimate_s for j in job_ids]
    assert stamped == [DurationEstimate().updated(30.0).estimate_s, None, None]
    views = {v.job_id: v for v in map(backlog_view, svc.store.backlog(Target.EMULATOR))}
    assert [views[j].estimate_s for j in job_ids] == stamped
    assert [views[j].test_path for j in job_ids] == list(PATHS)


def test_admitting_many_messages_reads_the_estimates_once(svc: MemoryServices) -> None:
    svc.estimate_store.record_test_duration(key("tests/t2.spec.js"), "old-job", 20.0, 0.0)
    job_ids = legacy_submit(svc)  # jobs of an older version, admitted through jobs.fifo

    reads = svc.dispatcher.prefetch([*job_ids, "job-unknown"])
    before = svc.estimate_store.reads
    admitted = [svc.dispatcher.admit(j, reads) for j in job_ids]

    assert svc.estimate_store.reads == before
    assert all(a is not None for a in admitted)
    assert svc.store.jobs[job_ids[2]].estimate_s == DurationEstimate().updated(20.0).estimate_s
    assert svc.dispatcher.admit(job_ids[0], reads) is None  # stale read: the write settles it


def test_admission_goes_on_without_estimates(svc: MemoryServices) -> None:
    svc.estimate_store.error = ConnectionError("DynamoDB unreachable")

    job_ids = submit_and_admit(svc)
    reads = svc.dispatcher.prefetch(job_ids)

    assert all(svc.store.in_backlog(j) for j in job_ids)
    assert [svc.store.jobs[j].estimate_s for j in job_ids] == [None, None, None]
    assert reads.estimates == {}


# ============================================================ planning
def test_the_committed_batch_and_its_agent_carry_the_expected_end(
    svc: MemoryServices, clock: FakeClock, spy: PlanSpy
) -> None:
    submit_and_admit(svc)

    leased = lease(svc)

    (planned,) = spy.calls[-1]["result"]
    assert planned.expected_s > 0
    assert leased.batch.expected_end_at == clock.now + planned.expected_s
    agent = svc.store.agents[leased.batch.agent_id]
    assert agent.batch_expected_free_at == clock.now + planned.expected_s
    svc.as_agent.complete(leased.batch.agent_id, leased.batch.batch_id)
    assert svc.store.agents[leased.batch.agent_id].batch_expected_free_at is None


def test_a_busy_agents_expected_free_time_reaches_the_planner(
    svc: MemoryServices, clock: FakeClock, spy: PlanSpy
) -> None:
    submit_and_admit(svc)
    busy = lease(svc, "d1")
    clock.advance(10)
    submit_and_admit(svc, app_version_id="v2")

    try_lease(svc, "d2")  # whether d2 gets work is the planner's call

    call = spy.calls[-1]
    assert call["busy"] == [
        BusyAgent("emulator-d1", "emulator", busy.batch.group_key, busy.batch.expected_end_at)
    ]
    assert [a.agent_id for a in call["agents"]] == ["emulator-d2"]


def test_a_busy_agent_without_an_expected_end_counts_as_free_now(
    svc: MemoryServices, clock: FakeClock, spy: PlanSpy
) -> None:
    submit_and_admit(svc)
    busy = lease(svc, "d1")
    svc.store.agents["emulator-d1"].batch_expected_free_at = None  # committed before estimates
    submit_and_admit(svc, app_version_id="v2")

    try_lease(svc, "d2")  # whether d2 gets work is the planner's call

    assert spy.calls[-1]["busy"] == [
        BusyAgent("emulator-d1", "emulator", busy.batch.group_key, clock.now)
    ]


def test_install_time_is_the_targets_default_until_installs_are_reported(
    svc: MemoryServices, spy: PlanSpy
) -> None:
    submit_and_admit(svc)
    submit_and_admit(svc, target="device")
    lease(svc, "d1")
    lease(svc, "p1", Target.DEVICE)
    # Every pool with waiting jobs is planned in one call (pools end together).
    assert spy.calls[0]["install_s"] == {"emulator": 61.0, "device": 120.0}

    svc.estimate_store.record_install_duration(Target.EMULATOR, "b-old", 30.0, 0.0)
    submit_and_admit(svc, app_version_id="v2")
    try_lease(svc, "d2")  # whether d2 gets work is the planner's call

    expected = DurationEstimate().updated(30.0).estimate_s
    assert spy.calls[-1]["install_s"]["emulator"] == expected


def test_planning_goes_on_with_defaults_without_estimates(
    svc: MemoryServices, spy: PlanSpy
) -> None:
    submit_and_admit(svc)
    svc.estimate_store.error = ConnectionError("DynamoDB unreachable")

    leased = lease(svc)

    assert leased.jobs
    assert spy.calls[-1]["install_s"] == {"emulator": 61.0}


def test_the_planning_knobs_come_from_the_config(svc: MemoryServices, spy: PlanSpy) -> None:
    submit_and_admit(svc)
    lease(svc, "d1", Target.EMULATOR)

    policy = spy.calls[-1]["policy"]
    assert (policy.max_batch_seconds, policy.unknown_estimate_s) == (600.0, 45.0)


def test_a_warm_agent_is_not_asked_to_install(svc: MemoryServices, spy: PlanSpy) -> None:
    submit_and_admit(svc)
    agent_id = svc.as_agent.register(Target.EMULATOR, "d1", AppRef("acme", "v1")).agent_id

    leased = svc.as_agent.lease(agent_id)

    assert leased is not None
    assert leased.batch.install_required is False
    (planned,) = spy.calls[-1]["result"]
    assert leased.batch.expected_end_at == spy.calls[-1]["now"] + planned.expected_s


# ============================================================ configuration
REQUIRED_ENV = {
    "JOBS_TABLE": "jobs",
    "RUNS_TABLE": "runs",
    "AGENTS_TABLE": "agents",
    "BATCHES_TABLE": "batches",
    "TOKENS_TABLE": "tokens",
    "ESTIMATES_TABLE": "estimates",
    "JOBS_QUEUE_URL": "https://sqs/jobs.fifo",
    "ARTIFACTS_BUCKET": "bucket",
}


def test_estimate_settings_have_defaults() -> None:
    config = Config.from_env(REQUIRED_ENV)

    assert config.estimates_table == "estimates"
    assert (config.max_batch_seconds, config.unknown_estimate_seconds) == (900.0, 90.0)
    assert config.default_install_seconds == {
        Target.EMULATOR: 60.0,
        Target.DEVICE: 120.0,
        Target.BROWSERSTACK: 90.0,
    }


def test_estimate_settings_come_from_the_environment() -> None:
    env = {
        **REQUIRED_ENV,
        "MAX_BATCH_SECONDS": "300",
        "UNKNOWN_ESTIMATE_SECONDS": "20.5",
        "DEFAULT_INSTALL_SECONDS_EMULATOR": "30",
        "DEFAULT_INSTALL_SECONDS_DEVICE": "200",
        "DEFAULT_INSTALL_SECONDS_BROWSERSTACK": "0",
    }

    config = Config.from_env(env)

    assert (config.max_batch_seconds, config.unknown_estimate_seconds) == (300.0, 20.5)
    assert config.default_install_seconds == {
        Target.EMULATOR: 30.0,
        Target.DEVICE: 200.0,
        Target.BROWSERSTACK: 0.0,
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_BATCH_SECONDS", "0"),
        ("UNKNOWN_ESTIMATE_SECONDS", "soon"),
        ("DEFAULT_INSTALL_SECONDS_DEVICE", "-5"),
    ],
)
def test_bad_estimate_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({**REQUIRED_ENV, name: value})


def test_the_split_gain_knob_comes_from_the_environment_per_target() -> None:
    default = Config.from_env(REQUIRED_ENV)
    assert (default.min_split_gain_seconds, default.split_gain_seconds_by_target) == (300.0, ())

    env = {
        **REQUIRED_ENV,
        "MIN_SPLIT_GAIN_SECONDS": "60",
        "MIN_SPLIT_GAIN_SECONDS_DEVICE": "900",
    }
    config = Config.from_env(env)

    assert config.min_split_gain_seconds == 60.0
    assert config.split_gain_seconds_by_target == (("device", 900.0),)
    with pytest.raises(ConfigError, match="MIN_SPLIT_GAIN_SECONDS_EMULATOR"):
        Config.from_env({**REQUIRED_ENV, "MIN_SPLIT_GAIN_SECONDS_EMULATOR": "-1"})


def test_the_preemption_wait_comes_from_the_environment_and_can_be_turned_off() -> None:
    assert Config.from_env(REQUIRED_ENV).preempt_wait_seconds == 120.0
    assert (
        Config.from_env({**REQUIRED_ENV, "PREEMPT_WAIT_SECONDS": "30"}).preempt_wait_seconds == 30
    )
    assert (
        Config.from_env({**REQUIRED_ENV, "PREEMPT_WAIT_SECONDS": "Off"}).preempt_wait_seconds
        is None
    )
    with pytest.raises(ConfigError, match="PREEMPT_WAIT_SECONDS"):
        Config.from_env({**REQUIRED_ENV, "PREEMPT_WAIT_SECONDS": "soon"})


def test_the_urgent_piece_comes_from_the_environment_reaches_both_cores_and_can_be_off(
    clock: FakeClock,
) -> None:
    assert Config.from_env(REQUIRED_ENV).urgent_piece_seconds == 600.0
    env = {**REQUIRED_ENV, "URGENT_PIECE_SECONDS": "300"}
    assert Config.from_env(env).urgent_piece_seconds == 300.0
    env = {**REQUIRED_ENV, "URGENT_PIECE_SECONDS": "OFF"}
    assert Config.from_env(env).urgent_piece_seconds == float("inf")
    with pytest.raises(ConfigError, match="URGENT_PIECE_SECONDS"):
        Config.from_env({**REQUIRED_ENV, "URGENT_PIECE_SECONDS": "0"})
    # The planner cuts the pieces and the preemption core frees an agent per piece: one
    # setting for both, or they disagree on how many agents urgent work takes.
    settings = build_memory_services(fake_config(urgent_piece_seconds=240.0), clock).dispatcher
    assert settings._settings.policy.urgent_piece_s == 240.0
    assert settings._settings.preemption.urgent_piece_s == 240.0


def test_the_estimates_table_is_required() -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != "ESTIMATES_TABLE"}

    with pytest.raises(ConfigError, match="ESTIMATES_TABLE"):
        Config.from_env(env)


def _finished(job_id: str, duration_s: float, estimate_s: float | None) -> Any:
    from qgjob_backend.domain.models import Job

    return Job(
        job_id=job_id,
        run_id="run-1",
        org_id="acme",
        app_version_id="v1",
        test_path="tests/login.spec.js",
        priority=5,
        target=Target.EMULATOR,
        status=JobStatus.PASSED,
        created_at=0.0,
        updated_at=0.0,
        timeout_s=600,
        max_attempts=3,
        duration_s=duration_s,
        estimate_s=estimate_s,
    )


class CountingEstimateStore:
    def __init__(self) -> None:
        self.recorded: list[str] = []

    def record_test_duration(
        self, key: EstimateKey, sample_id: str, duration_s: float, now: float
    ) -> bool:
        self.recorded.append(sample_id)
        return True


def test_a_warm_tests_results_are_sampled_by_job_id_and_a_cold_tests_all_recorded() -> None:
    from qgjob_backend.services.estimates import WARM_SAMPLE_EVERY, EstimateService

    store = CountingEstimateStore()
    service = EstimateService(store, {})  # type: ignore[arg-type]
    warm = [_finished(f"job-{i}", 10.0, 12.0) for i in range(400)]
    for job in warm:
        service.record_test(job)
    sampled = list(store.recorded)
    assert 400 / WARM_SAMPLE_EVERY * 0.7 < len(sampled) < 400 / WARM_SAMPLE_EVERY * 1.3
    for job in warm:  # replays choose the same
        service.record_test(job)
    assert store.recorded == sampled + sampled

    store.recorded.clear()
    for i in range(20):
        service.record_test(_finished(f"cold-{i}", 10.0, None))
    assert len(store.recorded) == 20  # no history: every result counts

    store.recorded.clear()
    skipped = [j for j in warm if j.job_id not in sampled][:10]
    for job in skipped:  # the same jobs, now much slower than their estimate
        service.record_test(_finished(job.job_id, 18.1, 12.0))
    assert store.recorded == [j.job_id for j in skipped]


# ============================================================ renewed at each start
def started_late(
    svc: MemoryServices, clock: FakeClock, spy: PlanSpy, late_s: float
) -> tuple[LeasedBatch, float]:
    """d1 leases the suite, installs on time, and starts its first test ``late_s`` late;
    returns the batch and that job's rest of batch as the planner planned it."""
    submit_and_admit(svc)
    leased = lease(svc)
    (planned,) = spy.calls[-1]["result"]
    assert planned.install_required
    assert len(planned.rests_s) == len(planned.job_ids)
    clock.advance(61.0 + late_s)  # SETTINGS' install, then the delay
    first = leased.batch.job_ids[0]
    assert svc.as_agent.start("emulator-d1", first, leased.batch.batch_id).status is (
        JobStatus.RUNNING
    )
    assert svc.store.jobs[first].rest_of_batch_s == planned.rests_s[0]
    return leased, planned.rests_s[0]


def test_a_late_start_renews_the_expected_end_the_planner_reads(
    svc: MemoryServices, clock: FakeClock, spy: PlanSpy
) -> None:
    leased, rest = started_late(svc, clock, spy, late_s=300.0)

    renewed = clock.now + rest
    assert renewed == leased.batch.expected_end_at + 300.0
    assert svc.store.agents["emulator-d1"].batch_expected_free_at == renewed
    submit_and_admit(svc, app_version_id="v2")
    try_lease(svc, "d2")  # whether d2 gets work is the planner's call
    assert spy.calls[-1]["busy"] == [
        BusyAgent("emulator-d1", "emulator", leased.batch.group_key, renewed)
    ]


def test_a_start_within_the_drift_writes_nothing(
    svc: MemoryServices, clock: FakeClock, spy: PlanSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewals: list[Any] = []
    monkeypatch.setattr(svc.store, "renew_batch_free_at", lambda *a: renewals.append(a))

    leased, _ = started_late(svc, clock, spy, late_s=30.0)

    assert renewals == []
    assert svc.store.agents["emulator-d1"].batch_expected_free_at == leased.batch.expected_end_at


def test_a_failed_renewal_does_not_fail_the_start(
    svc: MemoryServices, clock: FakeClock, spy: PlanSpy
) -> None:
    svc.store.fail_next("renew_batch_free_at", ConnectionError("DynamoDB throttled"))

    leased, _ = started_late(svc, clock, spy, late_s=300.0)  # asserts the start ran

    assert svc.store.agents["emulator-d1"].batch_expected_free_at == leased.batch.expected_end_at
