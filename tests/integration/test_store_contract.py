"""The StateStore contract, run against the in-memory fake AND DynamoDB (moto).

Every precondition the services rely on is asserted here for both implementations, which
is what lets the unit tests trust ``tests/unit/fakes.MemoryStateStore``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest

from qgjob_backend.adapters.dynamodb import DynamoTokenStore
from qgjob_backend.config import MAX_BATCH_JOBS, Config
from qgjob_backend.domain.models import (
    Agent,
    AgentStatus,
    AppRef,
    Batch,
    BatchState,
    Job,
    Run,
    group_key_for,
)
from qgjob_backend.domain.progress import counter_of, nonzero, run_job_ids
from qgjob_backend.ports import (
    Finish,
    JobOutcome,
    JobPage,
    OrgMetrics,
    StateStore,
    TokenRecord,
    TokenStore,
)
from qgjob_backend.schema import JobStatus, Target
from tests.integration.conftest import state_store_of
from tests.unit.fakes import MemoryStateStore, MemoryTokenStore

T0 = 1_000.0
LEASE = 60.0


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore()
        return
    config: Config = request.getfixturevalue("config")
    session: boto3.Session = request.getfixturevalue("aws_session")
    yield state_store_of(session, config)


@pytest.fixture(params=["memory", "dynamo"])
def token_store(request: pytest.FixtureRequest) -> TokenStore:
    if request.param == "memory":
        return MemoryTokenStore()
    config: Config = request.getfixturevalue("config")
    session: boto3.Session = request.getfixturevalue("aws_session")
    return DynamoTokenStore(session.client("dynamodb"), config.tokens_table)


# ------------------------------------------------------------------ builders
def make_job(job_id: str, **overrides: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "run_id": "run-1",
        "org_id": "acme",
        "app_version_id": "v1",
        "target": Target.EMULATOR,
        "test_path": f"tests/{job_id}.spec.js",
        "priority": 5,
        "status": JobStatus.QUEUED,
        "created_at": T0,
        "updated_at": T0,
        "timeout_s": 600,
        "max_attempts": 3,
    }
    fields.update(overrides)
    return Job(**fields)


def make_batch(batch_id: str, agent_id: str, job_ids: list[str], **overrides: Any) -> Batch:
    fields: dict[str, Any] = {
        "batch_id": batch_id,
        "agent_id": agent_id,
        "group_key": group_key_for("acme", "v1", Target.EMULATOR),
        "org_id": "acme",
        "app_version_id": "v1",
        "target": Target.EMULATOR,
        "job_ids": job_ids,
        "state": BatchState.ACTIVE,
        "created_at": T0,
        "lease_expires_at": T0 + LEASE,
        "install_required": True,
    }
    fields.update(overrides)
    return Batch(**fields)


# Runs the helpers create for their jobs hold this many jobs (so they never finish early).
RUN_SIZE = 100


def ensure_run(store: StateStore, run_id: str, org_id: str = "acme") -> Run:
    """The run a job belongs to (a job's run is written before it), created if missing."""
    run = store.get_run(run_id)
    if run is None:
        run = Run(run_id, org_id, "v1", Target.EMULATOR, 5, run_job_ids(run_id, RUN_SIZE), "fp", T0)
        store.create_run(run)
    return run


def write_jobs(store: StateStore, jobs: list[Job]) -> None:
    """create_jobs, after creating the runs the jobs belong to."""
    for job in jobs:
        ensure_run(store, job.run_id, job.org_id)
    store.create_jobs(jobs)


def queued(store: StateStore, *job_ids: str, **overrides: Any) -> list[Job]:
    """Jobs written and admitted into the backlog."""
    jobs = [make_job(j, position=i, **overrides) for i, j in enumerate(job_ids)]
    write_jobs(store, jobs)
    admitted = [store.admit_job(j, T0) for j in jobs]
    assert all(a is not None for a in admitted)
    return [a for a in admitted if a is not None]


def agent(store: StateStore, agent_id: str = "emulator-d1", **kwargs: Any) -> Agent:
    target = kwargs.pop("target", Target.EMULATOR)
    installed = kwargs.pop("installed", None)
    now = kwargs.pop("now", T0)
    registered = store.register_agent(
        agent_id,
        target,
        agent_id.split("-", 1)[-1],
        installed,
        now,
        credential_hash=kwargs.pop("credential_hash", cred(agent_id)),
        **kwargs,
    )
    assert registered is not None
    return registered


def cred(agent_id: str) -> str:
    """The credential hash ``agent`` registers an agent with unless told otherwise."""
    return f"hash-of-{agent_id}"


def assigned(
    store: StateStore, *job_ids: str, batch_id: str = "b1", agent_id: str = "a-1"
) -> Batch:
    """Queued jobs committed to a fresh batch on a fresh idle agent."""
    queued(store, *job_ids)
    agent(store, agent_id)
    batch = make_batch(batch_id, agent_id, list(job_ids))
    assert store.commit_batch(batch, T0)
    return batch


def get_job(store: StateStore, job_id: str) -> Job:
    job = store.get_job(job_id)
    assert job is not None
    return job


def get_run(store: StateStore, run_id: str = "run-1") -> Run:
    found = store.get_run(run_id)
    assert found is not None
    return found


def get_agent(store: StateStore, agent_id: str) -> Agent:
    found = store.get_agent(agent_id)
    assert found is not None
    return found


def get_batch(store: StateStore, batch_id: str) -> Batch:
    found = store.get_batch(batch_id)
    assert found is not None
    return found


def backlog_ids(store: StateStore, target: Target = Target.EMULATOR) -> list[str]:
    return [j.job_id for j in store.backlog(target)]


PASSED = JobOutcome(JobStatus.PASSED, 2.5, "ok", "tail", "results/acme/j1/b1.log")


# ================================================================== runs and jobs
def test_a_run_is_created_once(store: StateStore) -> None:
    run = Run("run-1", "acme", "v1", Target.DEVICE, 3, run_job_ids("run-1", 2), "fp", T0)

    assert store.create_run(run) is True
    assert store.create_run(replace(run, fingerprint="other")) is False
    assert store.get_run("run-1") == run
    assert store.get_run("run-1", consistent=False) == run
    assert store.get_run("run-unknown") is None


def test_a_runs_job_ids_are_derived_from_the_run(store: StateStore) -> None:
    with pytest.raises(ValueError, match="run_job_ids"):
        store.create_run(Run("run-1", "acme", "v1", Target.DEVICE, 3, ["j1"], "fp", T0))
    assert store.get_run("run-1") is None


def test_create_jobs_adds_only_missing_ones(store: StateStore) -> None:
    queued(store, "j1")
    write_jobs(store, [make_job("j1", test_path="changed.js"), make_job("j2", position=1)])

    first, second = store.get_jobs(["j1", "j2"])
    assert (first.test_path, first.admitted) == ("tests/j1.spec.js", True)
    assert (second.status, second.admitted, second.position) == (JobStatus.QUEUED, False, 1)


def test_jobs_read_back_in_the_order_asked_without_duplicates(store: StateStore) -> None:
    write_jobs(store, [make_job(j) for j in ("j1", "j2", "j3")])
    write_jobs(store, [make_job("x1", run_id="run-2")])

    assert [j.job_id for j in store.get_jobs(["j3", "missing", "j1", "j3"])] == ["j3", "j1"]
    assert store.get_jobs([]) == []
    assert store.get_job("missing") is None


def test_a_job_reads_back_as_written(store: StateStore) -> None:
    job = make_job("j1", target=Target.BROWSERSTACK, priority=1, position=7, max_attempts=1)
    write_jobs(store, [job])

    assert store.get_job("j1") == job


def test_returned_objects_are_copies(store: StateStore) -> None:
    queued(store, "j1")
    job = get_job(store, "j1")
    job.status = JobStatus.PASSED

    assert get_job(store, "j1").status is JobStatus.QUEUED


# ================================================================== admit and backlog
def test_a_job_is_admitted_only_once(store: StateStore) -> None:
    job = make_job("j1")
    write_jobs(store, [job])

    admitted = store.admit_job(job, T0 + 5)
    assert admitted is not None
    assert (admitted.admitted, admitted.updated_at) == (True, T0 + 5)
    assert store.admit_job(job, T0 + 9) is None
    assert get_job(store, "j1").updated_at == T0 + 5
    assert store.admit_job(make_job("unknown"), T0) is None


def test_the_backlog_holds_admitted_queued_jobs_of_one_target_in_order(store: StateStore) -> None:
    write_jobs(
        store,
        [
            make_job("late", created_at=T0 + 1),
            make_job("urgent", priority=1, created_at=T0 + 2),
            make_job("second", position=1),
            make_job("first", position=0),
            make_job("device", target=Target.DEVICE),
            make_job("never-admitted"),
        ],
    )
    for job_id in ("late", "urgent", "second", "first", "device"):
        assert store.admit_job(get_job(store, job_id), T0) is not None

    assert backlog_ids(store) == ["urgent", "first", "second", "late"]
    assert backlog_ids(store, Target.DEVICE) == ["device"]
    assert backlog_ids(store, Target.BROWSERSTACK) == []


def test_unadmitted_jobs_are_found_until_admitted(store: StateStore) -> None:
    write_jobs(store, [make_job("j1", created_at=T0), make_job("j2", created_at=T0 + 10)])

    assert store.unadmitted_job_ids(T0) == []  # strictly older than the cutoff
    assert store.unadmitted_job_ids(T0 + 10) == ["j1"]
    assert store.unadmitted_job_ids(T0 + 11) == ["j1", "j2"]
    store.admit_job(get_job(store, "j1"), T0)
    assert store.unadmitted_job_ids(T0 + 11) == ["j2"]


def test_only_queued_jobs_are_cancelled(store: StateStore) -> None:
    queued(store, "j1")
    write_jobs(store, [make_job("j2")])
    assigned(store, "j3")

    cancelled = store.cancel_job("j1", T0 + 3)
    assert cancelled is not None
    assert (cancelled.status, cancelled.finished_at) == (JobStatus.CANCELLED, T0 + 3)
    assert store.cancel_job("j2", T0 + 3) is not None
    assert store.cancel_job("j1", T0 + 4) is None
    assert store.cancel_job("j3", T0 + 4) is None
    assert store.cancel_job("unknown", T0) is None
    assert backlog_ids(store) == []
    assert store.unadmitted_job_ids(T0 + 100) == []
    assert store.admit_job(get_job(store, "j2"), T0) is None
    assert get_job(store, "j3").status is JobStatus.ASSIGNED


def test_cancel_jobs_cancels_queued_and_started_jobs_once(store: StateStore) -> None:
    queued(store, "j1")
    write_jobs(store, [make_job("j2", position=1)])  # not admitted
    assigned(store, "j3", "j4", batch_id="b1", agent_id="a-1")
    assert store.start_job("j3", "a-1", "b1", T0 + 1) is not None
    write_jobs(store, [make_job("j5", position=5)])
    store.cancel_jobs([get_job(store, "j5")], T0 + 1)  # final before the big call
    jobs = store.get_jobs(["j1", "j2", "j3", "j4", "j5"])

    done = store.cancel_jobs(jobs, T0 + 3)

    assert sorted(j.job_id for j in done) == ["j1", "j2", "j3", "j4"]
    for job in store.get_jobs(["j1", "j2", "j3", "j4"]):
        assert (job.status, job.finished_at) == (JobStatus.CANCELLED, T0 + 3)
    assert get_job(store, "j3").message == "cancelled while running on agent a-1"
    assert get_job(store, "j4").message == "cancelled before it started on agent a-1"
    assert (get_job(store, "j3").batch_id, get_job(store, "j3").agent_id) == ("b1", "a-1")
    assert get_run(store).counts == {"cancelled": 5}
    assert store.org_metrics("acme").jobs_by_status == {"cancelled": 5}
    assert backlog_ids(store) == []
    assert store.unadmitted_job_ids(T0 + 100) == []
    assert store.overdue_job_ids(T0 + 10_000) == []
    assert get_agent(store, "a-1").cancelled_job_ids == ["j3", "j4"]
    # Repeated (the same stale copies): nothing moves twice.
    assert store.cancel_jobs(jobs, T0 + 4) == []
    assert get_run(store).counts == {"cancelled": 5}
    # A late result or start of a cancelled job is refused.
    assert store.finish_job("j3", "a-1", "b1", PASSED, T0 + 5) is None
    assert store.start_job("j4", "a-1", "b1", T0 + 5) is None
    assert (
        store.requeue_job(get_job(store, "j4"), "b1", T0 + 5, count_attempt=False, reason="x")
        is None
    )
    # The marks go with the batch.
    assert store.release_agent("a-1", "b1", offline=False, now=T0 + 6)
    assert get_agent(store, "a-1").cancel_marks == frozenset()


def test_cancel_jobs_from_a_stale_read_cancels_what_is_still_open(store: StateStore) -> None:
    queued(store, "j1", "j2", "j3")
    stale = store.get_jobs(["j1", "j2", "j3"])
    agent(store, "a-1")
    assert store.commit_batch(make_batch("b1", "a-1", ["j2"]), T0 + 1)  # j2 now assigned
    assert store.finish_job("j2", "a-1", "b1", PASSED, T0 + 2) is not None  # and passed
    assert store.commit_batch(make_batch("b2", "a-9", ["j3"]), T0 + 1) is False

    done = store.cancel_jobs(stale, T0 + 3)

    assert sorted(j.job_id for j in done) == ["j1", "j3"]
    assert get_job(store, "j2").status is JobStatus.PASSED
    assert get_run(store).counts == {"passed": 1, "cancelled": 2}
    assert store.org_metrics("acme").jobs_by_status == {"passed": 1, "cancelled": 2}


def test_cancel_jobs_of_many_runs_and_more_than_one_transaction(store: StateStore) -> None:
    jobs = [make_job(f"j{i:03d}", position=i) for i in range(120)]
    jobs += [make_job(f"k{i}", run_id="run-2", position=i) for i in range(3)]
    write_jobs(store, jobs)

    done = store.cancel_jobs(store.get_jobs([j.job_id for j in jobs]), T0 + 1)

    assert len(done) == 123
    assert get_run(store).counts == {"cancelled": 120}
    assert get_run(store, "run-2").counts == {"cancelled": 3}
    assert store.org_metrics("acme").jobs_by_status == {"cancelled": 123}


def test_a_failed_test_is_put_back_with_its_try_and_a_later_pass_counts_flaky(
    store: StateStore,
) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    assert store.start_job("j1", "a-1", "b1", T0 + 1) is not None
    tried = {
        "attempt": 1,
        "agent_id": "a-1",
        "batch_id": "b1",
        "status": "failed",
        "duration_s": 1.5,
        "message": "boom",
        "output": None,
        "finished_at": T0 + 2,
    }

    assert store.retry_failed_job(get_job(store, "j1"), "a-2", "b1", tried, "r", T0 + 2) is None
    assert store.retry_failed_job(get_job(store, "j1"), "a-1", "b9", tried, "r", T0 + 2) is None
    back = store.retry_failed_job(get_job(store, "j1"), "a-1", "b1", tried, "re-run", T0 + 2)

    assert back is not None
    stored = get_job(store, "j1")
    assert (stored.status, stored.batch_id, stored.agent_id) == (JobStatus.QUEUED, None, None)
    assert (stored.attempts, stored.retry_of_batch, stored.message) == (0, "b1", "re-run")
    expected = {k: v for k, v in tried.items() if v is not None}
    assert stored.tries == [expected]
    assert back.tries == [expected]
    # The planner prefers another agent for it (domain.planner.BacklogJob.avoid_agent_id).
    assert stored.last_agent_id == back.last_agent_id == "a-1"
    assert backlog_ids(store) == ["j1"]
    assert store.overdue_job_ids(T0 + 10_000) == []
    assert get_run(store).counts == {"queued": 1}
    # Replayed: the job is no longer that batch's, nothing is written.
    assert store.retry_failed_job(get_job(store, "j1"), "a-1", "b1", tried, "x", T0 + 3) is None
    assert len(get_job(store, "j1").tries) == 1
    # The next try passes on another agent: flaky, counted once on the run.
    agent(store, "a-2")
    assert store.commit_batch(make_batch("b2", "a-2", ["j1"]), T0 + 4)
    assert store.start_job("j1", "a-2", "b2", T0 + 5) is not None
    assert store.finish_job("j1", "a-2", "b2", PASSED, T0 + 6) is not None
    assert store.finish_job("j1", "a-2", "b2", PASSED, T0 + 7) is None
    assert get_job(store, "j1").flaky
    assert get_run(store).counts == {"passed": 1}
    assert get_run(store).flaky == 1


def test_a_pass_without_a_failed_try_is_not_flaky(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    assert store.finish_job("j1", "a-1", "b1", PASSED, T0 + 1) is not None
    assert not get_job(store, "j1").flaky
    assert get_run(store).flaky == 0


# ================================================================== commit_batch
def test_commit_batch_assigns_jobs_and_makes_the_agent_busy(store: StateStore) -> None:
    batch = assigned(store, "j1", "j2", batch_id="b1", agent_id="a-1")

    for job in store.get_jobs(["j1", "j2"]):
        assert (job.status, job.batch_id, job.agent_id) == (JobStatus.ASSIGNED, "b1", "a-1")
    assert (get_agent(store, "a-1").status, get_agent(store, "a-1").batch_id) == (
        AgentStatus.BUSY,
        "b1",
    )
    assert get_batch(store, "b1") == batch
    assert backlog_ids(store) == []


def test_commit_batches_commits_each_batch_whose_preconditions_hold(store: StateStore) -> None:
    # Two runs of two orgs over five agents; one agent is busy, one batch names a job
    # another batch took: those two are not written, every other one is, with its counts.
    queued(store, "j1", "j2", "j3", "j4", "j5", "j6", run_id="run-1")
    queued(store, "k1", "k2", run_id="run-2", org_id="globex")
    for agent_id in ("a-1", "a-2", "a-3", "a-4", "a-5"):
        agent(store, agent_id)
    assert store.commit_batch(make_batch("b0", "a-4", ["j5"]), T0)  # a-4 busy, j5 taken
    metrics_before = store.org_metrics("acme").batches
    batches = [
        make_batch("b1", "a-1", ["j1", "j2"]),
        make_batch("b2", "a-4", ["j3"]),  # agent busy
        make_batch("b3", "a-2", ["j4", "j5"]),  # j5 taken
        make_batch("b4", "a-3", ["k1", "k2"], org_id="globex"),
        make_batch("b5", "a-5", ["j6"]),
    ]

    committed = store.commit_batches(batches, T0 + 1)

    assert [b.batch_id for b in committed] == ["b1", "b4", "b5"]
    assert store.get_batch("b2") is None
    assert store.get_batch("b3") is None
    assert [j.status for j in store.get_jobs(["j1", "j2", "j3", "j4", "j6"])] == [
        JobStatus.ASSIGNED,
        JobStatus.ASSIGNED,
        JobStatus.QUEUED,
        JobStatus.QUEUED,
        JobStatus.ASSIGNED,
    ]
    assert get_job(store, "j6").batch_id == "b5"
    assert get_agent(store, "a-2").status is AgentStatus.IDLE
    assert get_run(store, "run-1").counts == {"queued": 2, "active": 4}
    assert get_run(store, "run-2").counts == {"active": 2}
    assert store.org_metrics("acme").batches == metrics_before + 2
    assert store.org_metrics("globex").batches == 1
    assert backlog_ids(store) == ["j3", "j4"]


def test_commit_batches_of_more_than_one_transaction_all_commit(store: StateStore) -> None:
    # 40 batches of 3 jobs: 200 transaction items, and more job reads than one batch read.
    jobs = [f"j{i:03d}" for i in range(120)]
    for start in range(0, 120, 60):
        queued(store, *jobs[start : start + 60], run_id=f"run-{start}")
    for index in range(40):
        agent(store, f"a-{index}")
    batches = [make_batch(f"b{i}", f"a-{i}", jobs[3 * i : 3 * i + 3]) for i in range(40)]

    committed = store.commit_batches(batches, T0)

    assert [b.batch_id for b in committed] == [b.batch_id for b in batches]
    assert get_run(store, "run-0").counts == {"active": 60}
    assert get_run(store, "run-60").counts == {"active": 60}
    assert backlog_ids(store) == []


def test_commit_batch_is_all_or_nothing_when_a_job_was_taken(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    queued(store, "j2")
    agent(store, "a-2")
    before = [get_job(store, "j1"), get_job(store, "j2"), get_agent(store, "a-2")]

    assert store.commit_batch(make_batch("b2", "a-2", ["j2", "j1"]), T0 + 1) is False

    assert [get_job(store, "j1"), get_job(store, "j2"), get_agent(store, "a-2")] == before
    assert store.get_batch("b2") is None
    assert backlog_ids(store) == ["j2"]


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda s: s.deregister_agent("a-2", T0), id="agent-offline"),
        pytest.param(
            lambda s: s.commit_batch(make_batch("b0", "a-2", ["j9"]), T0), id="agent-busy"
        ),
        pytest.param(lambda s: s.cancel_job("j2", T0), id="job-cancelled"),
        pytest.param(lambda s: write_jobs(s, [make_job("j3")]), id="job-not-admitted"),
    ],
)
def test_commit_batch_checks_every_precondition(
    store: StateStore, spoil: Callable[[StateStore], object]
) -> None:
    queued(store, "j2", "j9")
    agent(store, "a-2")
    spoil(store)
    jobs = ["j2", "j3"] if store.get_job("j3") else ["j2"]
    before = [get_agent(store, "a-2"), *store.get_jobs(jobs)]

    assert store.commit_batch(make_batch("b1", "a-2", jobs), T0) is False

    assert [get_agent(store, "a-2"), *store.get_jobs(jobs)] == before
    assert store.get_batch("b1") is None


def test_commit_batch_refuses_an_unknown_agent_or_job_or_a_reused_batch_id(
    store: StateStore,
) -> None:
    queued(store, "j1", "j2")
    agent(store, "a-1")
    agent(store, "a-2")

    assert store.commit_batch(make_batch("b1", "a-unknown", ["j1"]), T0) is False
    assert store.commit_batch(make_batch("b1", "a-1", ["j1", "missing"]), T0) is False
    assert store.commit_batch(make_batch("b1", "a-1", ["j1"]), T0) is True
    assert store.commit_batch(make_batch("b1", "a-2", ["j2"]), T0) is False
    assert get_batch(store, "b1").agent_id == "a-1"
    assert get_agent(store, "a-2").status is AgentStatus.IDLE
    assert backlog_ids(store) == ["j2"]


def test_a_batch_larger_than_one_transaction_is_refused(store: StateStore) -> None:
    agent(store, "a-1")

    with pytest.raises(ValueError, match=f"at most {MAX_BATCH_JOBS}"):
        store.commit_batch(make_batch("b1", "a-1", [f"j{i}" for i in range(49)]), T0)
    assert get_agent(store, "a-1").batch_id is None


def test_the_largest_batch_of_jobs_of_as_many_runs_commits_in_one_transaction(
    store: StateStore,
) -> None:
    job_ids = [f"j{i}" for i in range(MAX_BATCH_JOBS)]
    for i, job_id in enumerate(job_ids):  # each job of its own run: one counter item each
        write_jobs(store, [make_job(job_id, run_id=f"run-{i}")])
        assert store.admit_job(make_job(job_id, run_id=f"run-{i}"), T0) is not None
    agent(store, "a-1")

    assert store.commit_batch(make_batch("b1", "a-1", job_ids), T0) is True
    assert {get_job(store, j).status for j in job_ids} == {JobStatus.ASSIGNED}
    assert all(get_run(store, f"run-{i}").counts == {"active": 1} for i in range(len(job_ids)))
    assert store.org_metrics("acme").jobs_by_status == {"active": MAX_BATCH_JOBS}


# ================================================================== start / finish / requeue
def test_start_and_finish_only_for_the_owning_batch_and_agent(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")

    assert store.start_job("j1", "a-2", "b1", T0) is None
    assert store.start_job("j1", "a-1", "b2", T0) is None
    assert store.finish_job("j1", "a-2", "b1", PASSED, T0) is None
    started = store.start_job("j1", "a-1", "b1", T0 + 1)
    assert started is not None
    assert (started.status, started.started_at) == (JobStatus.RUNNING, T0 + 1)
    assert store.start_job("j1", "a-1", "b1", T0 + 2) is not None  # a retried start

    finished = store.finish_job("j1", "a-1", "b1", PASSED, T0 + 5)

    assert finished is not None
    assert (finished.status, finished.finished_at, finished.duration_s) == (
        JobStatus.PASSED,
        T0 + 5,
        2.5,
    )
    assert (finished.message, finished.output_excerpt, finished.output_key) == (
        "ok",
        "tail",
        "results/acme/j1/b1.log",
    )
    assert store.finish_job("j1", "a-1", "b1", PASSED, T0 + 6) is None
    assert store.start_job("j1", "a-1", "b1", T0 + 6) is None
    assert get_job(store, "j1") == finished


def drain(store: StateStore, agent_id: str) -> None:
    """What `python -m infra.admin agents drain` writes (the store has no method for it)."""
    if isinstance(store, MemoryStateStore):
        store.agents[agent_id].drained_at = T0
        return
    db, table = store._db, store._agents  # type: ignore[attr-defined]
    db.update_item(
        TableName=table,
        Key={"agent_id": {"S": agent_id}},
        UpdateExpression="SET drained_at = :t",
        ExpressionAttributeValues={":t": {"N": str(T0)}},
    )


def test_a_drained_agent_gets_no_batch_even_from_a_plan_made_before(store: StateStore) -> None:
    queued(store, "j1")
    agent(store, "a-1")
    drain(store, "a-1")

    assert store.commit_batch(make_batch("b1", "a-1", ["j1"]), T0) is False

    assert get_job(store, "j1").status is JobStatus.QUEUED
    assert get_agent(store, "a-1").batch_id is None


def test_finish_jobs_ends_several_jobs_in_one_write_with_their_counters(
    store: StateStore,
) -> None:
    assigned(store, "j1", "j2", "j3")
    assert store.start_job("j1", "a-1", "b1", T0) is not None  # j2, j3 never told started
    passed = JobOutcome(JobStatus.PASSED, 2.0, None, "ok", None)
    failed = JobOutcome(JobStatus.FAILED, 3.0, "boom", "x", None)
    finishes = [
        Finish(get_job(store, "j1"), "a-1", "b1", passed),
        Finish(get_job(store, "j2"), "a-1", "b1", failed),
    ]

    done = store.finish_jobs(finishes, T0 + 10)

    assert done is not None
    assert [(j.job_id, j.status) for j in done] == [
        ("j1", JobStatus.PASSED),
        ("j2", JobStatus.FAILED),
    ]
    assert get_job(store, "j1").started_at == T0
    # A job finished without a start started its duration before its result.
    assert get_job(store, "j2").started_at == T0 + 10 - 3.0
    assert get_job(store, "j2").message == "boom"
    assert get_run(store).counts == {"active": 1, "passed": 1, "failed": 1}
    assert store.org_metrics("acme").jobs_by_status == {"active": 1, "passed": 1, "failed": 1}
    # A replay writes nothing and counts nothing again.
    assert store.finish_jobs(finishes, T0 + 11) is None
    assert get_run(store).counts == {"active": 1, "passed": 1, "failed": 1}


def test_finish_jobs_writes_nothing_when_one_job_is_not_the_agents(store: StateStore) -> None:
    assigned(store, "j1")
    assigned(store, "j2", batch_id="b2", agent_id="a-2")
    passed = JobOutcome(JobStatus.PASSED, 1.0, None, None, None)
    finishes = [
        Finish(get_job(store, "j1"), "a-1", "b1", passed),
        Finish(get_job(store, "j2"), "a-1", "b1", passed),  # a-2's job, in b2
    ]

    assert store.finish_jobs(finishes, T0 + 5) is None

    assert get_job(store, "j1").status is JobStatus.ASSIGNED
    assert get_job(store, "j2").status is JobStatus.ASSIGNED
    assert get_run(store).counts == {"active": 2}


def test_finish_replaces_what_an_earlier_attempt_left(store: StateStore) -> None:
    assigned(store, "j1")
    job = get_job(store, "j1")
    store.requeue_job(job, "b1", T0, count_attempt=False, reason="retry")
    assert store.commit_batch(make_batch("b2", "a-1", ["j1"]), T0) is False  # a-1 still busy
    assert get_job(store, "j1").message == "retry"

    agent(store, "a-2")
    assert store.commit_batch(make_batch("b2", "a-2", ["j1"]), T0)
    bare = JobOutcome(JobStatus.FAILED, 1.0, None, None, None)
    finished = store.finish_job("j1", "a-2", "b2", bare, T0 + 1)

    assert finished is not None
    assert (finished.message, finished.output_excerpt, finished.output_key) == (None, None, None)


def test_requeue_returns_a_job_to_the_backlog_once(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    running = store.start_job("j1", "a-1", "b1", T0)
    assert running is not None

    requeued = store.requeue_job(running, "b1", T0 + 1, count_attempt=True, reason="lost")

    assert requeued is not None
    assert (requeued.status, requeued.attempts, requeued.message) == (JobStatus.QUEUED, 1, "lost")
    assert (requeued.batch_id, requeued.agent_id, requeued.started_at) == (None, None, None)
    assert requeued.last_agent_id == "a-1"
    assert backlog_ids(store) == ["j1"]
    assert store.requeue_job(running, "b1", T0 + 2, count_attempt=True, reason="again") is None
    assert get_job(store, "j1") == requeued


def test_requeue_without_counting_an_attempt(store: StateStore) -> None:
    assigned(store, "j1")

    requeued = store.requeue_job(get_job(store, "j1"), "b1", T0, count_attempt=False, reason="r")

    assert requeued is not None
    assert requeued.attempts == 0


def test_an_error_requeue_marks_the_batch_until_another_requeue_or_a_result(
    store: StateStore,
) -> None:
    """``retry_of_batch`` is what recognises a re-delivered error report: it must survive
    the write and the read back, and be cleared by a reaper's requeue and by a result."""
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    running = store.start_job("j1", "a-1", "b1", T0)
    assert running is not None
    assert running.retry_of_batch is None

    requeued = store.requeue_job(
        running, "b1", T0 + 1, count_attempt=True, reason="adb offline", retry_of_batch="b1"
    )

    assert requeued is not None
    assert (requeued.status, requeued.attempts, requeued.retry_of_batch) == (
        JobStatus.QUEUED,
        1,
        "b1",
    )
    assert get_job(store, "j1").retry_of_batch == "b1"
    assert get_job(store, "j1") == requeued

    # Planned again into b2 on another agent: the mark stays until something replaces it.
    agent(store, "a-2")
    assert store.commit_batch(make_batch("b2", "a-2", ["j1"]), T0 + 2)
    assert get_job(store, "j1").retry_of_batch == "b1"
    by_reaper = store.requeue_job(
        get_job(store, "j1"), "b2", T0 + 3, count_attempt=True, reason="agent lost"
    )
    assert by_reaper is not None
    assert by_reaper.retry_of_batch is None
    assert get_job(store, "j1").retry_of_batch is None

    # Marked again, then a result clears the mark.
    agent(store, "a-3")
    assert store.commit_batch(make_batch("b3", "a-3", ["j1"]), T0 + 4)
    store.requeue_job(
        get_job(store, "j1"), "b3", T0 + 5, count_attempt=False, reason="e", retry_of_batch="b3"
    )
    assert get_job(store, "j1").retry_of_batch == "b3"
    agent(store, "a-4")
    assert store.commit_batch(make_batch("b4", "a-4", ["j1"]), T0 + 6)
    finished = store.finish_job("j1", "a-4", "b4", PASSED, T0 + 7)
    assert finished is not None
    assert finished.retry_of_batch is None
    assert get_job(store, "j1").retry_of_batch is None


def test_requeue_out_of_attempts_is_a_final_error(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    job = replace(get_job(store, "j1"), attempts=2)  # the third of three attempts

    ended = store.requeue_job(job, "b1", T0 + 1, count_attempt=True, reason="agent lost")

    assert ended is not None
    assert (ended.status, ended.attempts, ended.finished_at, ended.message) == (
        JobStatus.ERROR,
        3,
        T0 + 1,
        "agent lost",
    )
    assert ended.batch_id == "b1"  # it ended in that batch
    assert backlog_ids(store) == []
    assert store.requeue_job(job, "b1", T0 + 2, count_attempt=True, reason="again") is None


def test_requeue_only_from_the_batch_holding_the_job(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1")
    queued(store, "j2")
    job = get_job(store, "j1")

    assert store.requeue_job(job, "b-other", T0, count_attempt=True, reason="r") is None
    assert store.requeue_job(get_job(store, "j2"), "b1", T0, count_attempt=True, reason="r") is None
    store.finish_job("j1", "a-1", "b1", PASSED, T0)
    assert store.requeue_job(job, "b1", T0, count_attempt=True, reason="r") is None
    assert get_job(store, "j1").status is JobStatus.PASSED


def test_requeue_for_an_agent_only_when_that_agent_holds_the_job(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    job = get_job(store, "j1")

    assert store.requeue_job(job, "b1", T0, count_attempt=True, reason="r", agent_id="a-2") is None
    assert get_job(store, "j1").status is JobStatus.ASSIGNED
    requeued = store.requeue_job(job, "b1", T0, count_attempt=True, reason="r", agent_id="a-1")
    assert requeued is not None
    assert requeued.status is JobStatus.QUEUED


# ================================================================== agents
def test_registration_keeps_the_credential_hash_lab_and_fleet(store: StateStore) -> None:
    agent(store, "emulator-d1@acme", credential_hash="h1", lab_org_id="acme", fleet_hash="f1")

    stored = store.get_agent("emulator-d1@acme")
    assert stored is not None
    assert (stored.credential_hash, stored.lab_org_id, stored.fleet_hash) == ("h1", "acme", "f1")


def test_only_the_fleet_that_registered_an_agent_registers_it_again(store: StateStore) -> None:
    agent(store, "emulator-d1", credential_hash="h1", fleet_hash="f1")

    other = store.register_agent(
        "emulator-d1", Target.EMULATOR, "d1", None, T0 + 1, credential_hash="h2", fleet_hash="f2"
    )
    again = store.register_agent(
        "emulator-d1", Target.EMULATOR, "d1", None, T0 + 2, credential_hash="h3", fleet_hash="f1"
    )

    assert other is None
    assert again is not None
    assert again.credential_hash == "h3"
    stored = store.get_agent("emulator-d1")
    assert stored is not None
    assert stored.credential_hash == "h3"


def test_touch_needs_the_current_credential(store: StateStore) -> None:
    agent(store, "a-1", credential_hash="h1")
    agent(store, "a-1", credential_hash="h2", now=T0 + 1)  # a newer registration

    assert store.touch_agent("a-1", T0 + 5, "h1") is None
    stored = store.get_agent("a-1")
    assert stored is not None
    assert stored.last_seen == T0 + 1
    touched = store.touch_agent("a-1", T0 + 6, "h2")
    assert touched is not None
    assert touched.last_seen == T0 + 6


def test_register_creates_and_revives_an_agent(store: StateStore) -> None:
    created = agent(store, "device-d1", target=Target.DEVICE, now=T0)
    assert (created.status, created.batch_id, created.installed) == (AgentStatus.IDLE, None, None)
    assert (created.target, created.device_id, created.last_seen) == (Target.DEVICE, "d1", T0)

    store.deregister_agent("device-d1", T0 + 1)
    app = AppRef("acme", "v1")
    revived = agent(store, "device-d1", target=Target.DEVICE, installed=app, now=T0 + 2)

    assert (revived.status, revived.installed, revived.registered_at) == (
        AgentStatus.IDLE,
        app,
        T0 + 2,
    )


def test_register_without_an_app_forgets_the_old_install(store: StateStore) -> None:
    agent(store, "a-1", installed=AppRef("acme", "v1"))

    assert agent(store, "a-1", installed=None).installed is None
    assert agent(store, "a-1", installed=AppRef("acme", "v2")).installed == AppRef("acme", "v2")


def test_register_keeps_an_agents_batch(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")

    again = agent(store, "a-1", installed=AppRef("acme", "v9"), now=T0 + 30)

    assert (again.status, again.batch_id, again.last_seen) == (AgentStatus.BUSY, "b1", T0 + 30)
    assert again.installed is None
    assert again.registered_at == T0


def test_touch_only_a_known_agent_not_offline(store: StateStore) -> None:
    agent(store, "a-1")
    agent(store, "a-2")
    store.deregister_agent("a-2", T0)

    touched = store.touch_agent("a-1", T0 + 9, cred("a-1"))
    assert touched is not None
    assert touched.last_seen == T0 + 9
    assert store.touch_agent("a-2", T0 + 9, cred("a-2")) is None
    assert store.touch_agent("unknown", T0 + 9, cred("unknown")) is None


def test_a_push_connection_is_stored_only_with_the_current_credential(
    store: StateStore,
) -> None:
    agent(store, "a-1", credential_hash="h1")
    agent(store, "a-1", credential_hash="h2", now=T0 + 1)  # a newer registration

    assert store.set_agent_connection("a-1", "h1", "conn-old", T0 + 2) is None
    assert get_agent(store, "a-1").connection_id is None
    connected = store.set_agent_connection("a-1", "h2", "conn-1", T0 + 3)
    assert connected is not None
    assert (connected.connection_id, connected.last_seen) == ("conn-1", T0 + 3)
    assert get_agent(store, "a-1").connection_id == "conn-1"
    assert store.agent_for_connection("conn-1") == "a-1"
    assert store.agent_for_connection("conn-unknown") is None


def test_no_push_connection_for_an_unknown_or_offline_agent(store: StateStore) -> None:
    agent(store, "a-1")
    store.deregister_agent("a-1", T0)

    assert store.set_agent_connection("a-1", cred("a-1"), "conn-1", T0 + 1) is None
    assert store.set_agent_connection("nobody", cred("nobody"), "conn-2", T0 + 1) is None
    assert get_agent(store, "a-1").connection_id is None


def test_a_push_connection_is_cleared_only_by_its_own_id(store: StateStore) -> None:
    agent(store, "a-1")
    assert store.set_agent_connection("a-1", cred("a-1"), "conn-1", T0)
    assert store.set_agent_connection("a-1", cred("a-1"), "conn-2", T0 + 1)  # reconnected

    assert not store.clear_agent_connection("a-1", "conn-1")  # the old one's $disconnect
    assert get_agent(store, "a-1").connection_id == "conn-2"
    assert store.clear_agent_connection("a-1", "conn-2")
    assert get_agent(store, "a-1").connection_id is None
    assert not store.clear_agent_connection("a-1", "conn-2")  # a repeat changes nothing
    assert not store.clear_agent_connection("nobody", "conn-2")


@pytest.mark.parametrize("holding_a_batch", [False, True])
def test_a_new_registration_forgets_the_old_processs_connection(
    store: StateStore, holding_a_batch: bool
) -> None:
    if holding_a_batch:
        assigned(store, "j1", batch_id="b1", agent_id="a-1")
    else:
        agent(store, "a-1")
    assert store.set_agent_connection("a-1", cred("a-1"), "conn-1", T0)

    again = agent(store, "a-1", credential_hash="h-new", now=T0 + 5)

    assert again.connection_id is None
    assert get_agent(store, "a-1").connection_id is None
    assert again.batch_id == ("b1" if holding_a_batch else None)


def test_agents_are_listed_by_target(store: StateStore) -> None:
    agent(store, "emulator-b")
    agent(store, "emulator-a")
    agent(store, "device-c", target=Target.DEVICE)

    assert [a.agent_id for a in store.list_agents(Target.EMULATOR)] == ["emulator-a", "emulator-b"]
    assert [a.agent_id for a in store.list_agents(Target.BROWSERSTACK)] == []
    assert [a.agent_id for a in store.list_agents(Target.DEVICE)] == ["device-c"]


def test_an_install_is_recorded_only_while_holding_the_batch(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    agent(store, "a-2")
    app = AppRef("acme", "v1")

    assert store.record_install("a-2", "b1", app, T0) is False
    assert store.record_install("a-1", "b-other", app, T0) is False
    assert store.record_install("a-1", "b1", app, T0 + 1) is True
    assert store.record_install("a-1", "b1", app, T0 + 2) is True

    assert get_agent(store, "a-1").installed == app
    assert get_agent(store, "a-2").installed is None
    assert get_batch(store, "b1").installed_at == T0 + 1  # the first install counts
    store.release_agent("a-1", "b1", offline=False, now=T0 + 3)
    assert store.record_install("a-1", "b1", AppRef("acme", "v2"), T0 + 4) is False
    assert get_agent(store, "a-1").installed == app


def test_release_frees_the_agent_only_from_its_batch(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    assigned(store, "j2", batch_id="b2", agent_id="a-2")

    assert store.release_agent("a-1", "b-other", offline=False, now=T0) is False
    assert store.release_agent("a-1", "b1", offline=False, now=T0) is True
    assert store.release_agent("a-1", "b1", offline=False, now=T0) is False
    assert store.release_agent("a-2", "b2", offline=True, now=T0) is True
    assert store.release_agent("unknown", "b1", offline=True, now=T0) is False

    one, two = get_agent(store, "a-1"), get_agent(store, "a-2")
    assert (one.status, one.batch_id) == (AgentStatus.IDLE, None)
    assert (two.status, two.batch_id) == (AgentStatus.OFFLINE, None)


def test_a_yield_is_asked_only_of_the_agent_holding_that_batch(store: StateStore) -> None:
    assigned(store, "j1", "j2", batch_id="b1", agent_id="a-1")
    agent(store, "a-2")

    assert get_agent(store, "a-1").yield_requested is False
    assert store.request_yield("a-1", "b-other", T0) is False
    assert store.request_yield("a-2", "b1", T0) is False  # idle: it holds no batch
    assert store.request_yield("unknown", "b1", T0) is False
    assert store.request_yield("a-1", "b1", T0 + 1) is True
    assert store.request_yield("a-1", "b1", T0 + 2) is True  # a repeat changes nothing

    held = get_agent(store, "a-1")
    assert (held.yield_requested, held.batch_id, held.status) == (True, "b1", AgentStatus.BUSY)
    assert get_agent(store, "a-2").yield_requested is False
    # Released (the agent handed the rest back): the mark means nothing for its next batch.
    assert store.release_agent("a-1", "b1", offline=False, now=T0 + 3)
    assert get_agent(store, "a-1").yield_requested is False
    assert store.request_yield("a-1", "b1", T0 + 4) is False
    queued(store, "j3")
    assert store.commit_batch(make_batch("b2", "a-1", ["j3"]), T0 + 5)
    assert get_agent(store, "a-1").yield_requested is False


def test_only_a_silent_idle_agent_is_marked_offline(store: StateStore) -> None:
    agent(store, "a-idle", now=T0)
    assigned(store, "j1", agent_id="a-busy")

    assert store.mark_agent_offline("a-idle", T0, T0 + 100) is False  # not strictly older
    assert store.mark_agent_offline("a-busy", T0 + 50, T0 + 100) is False
    assert store.mark_agent_offline("unknown", T0 + 50, T0 + 100) is False
    assert store.mark_agent_offline("a-idle", T0 + 50, T0 + 100) is True
    assert store.mark_agent_offline("a-idle", T0 + 50, T0 + 100) is False

    assert get_agent(store, "a-idle").status is AgentStatus.OFFLINE
    assert get_agent(store, "a-busy").status is AgentStatus.BUSY


def test_deregister_only_an_agent_without_a_batch(store: StateStore) -> None:
    agent(store, "a-idle")
    assigned(store, "j1", agent_id="a-busy")

    assert store.deregister_agent("a-idle", T0) is True
    assert store.deregister_agent("a-busy", T0) is False
    assert store.deregister_agent("unknown", T0) is False
    assert get_agent(store, "a-idle").status is AgentStatus.OFFLINE
    assert get_agent(store, "a-busy").batch_id == "b1"
    assert store.get_agent("unknown") is None


# ================================================================== leases
def test_extend_lease_only_for_the_active_owner(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")

    assert store.extend_lease("b1", "a-1", T0 + 100) is True
    assert get_batch(store, "b1").lease_expires_at == T0 + 100
    assert store.extend_lease("b1", "a-1", T0 + 80) is True  # a longer lease already stands
    assert get_batch(store, "b1").lease_expires_at == T0 + 100
    assert store.extend_lease("b1", "a-2", T0 + 200) is False
    assert store.extend_lease("unknown", "a-1", T0 + 200) is False
    assert get_batch(store, "b1").lease_expires_at == T0 + 100


def test_expire_batch_only_once_the_lease_lapsed(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1")

    assert store.expire_batch("b1", T0 + LEASE) is False  # not strictly after
    assert get_batch(store, "b1").state is BatchState.ACTIVE
    assert store.expire_batch("b1", T0 + LEASE + 1) is True
    assert store.expire_batch("b1", T0 + LEASE + 2) is False
    assert store.expire_batch("unknown", T0 + LEASE + 2) is False
    assert get_batch(store, "b1").state is BatchState.EXPIRED


def test_extend_lease_is_refused_after_expiry(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    assert store.expire_batch("b1", T0 + LEASE + 1)

    assert store.extend_lease("b1", "a-1", T0 + 500) is False
    assert get_batch(store, "b1").lease_expires_at == T0 + LEASE


def test_lapsed_batches_until_they_are_closed(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b-early", agent_id="a-1")
    assigned(store, "j2", batch_id="b-late", agent_id="a-2")
    assert store.extend_lease("b-late", "a-2", T0 + 2 * LEASE)

    assert store.lapsed_batches(T0 + LEASE) == []
    assert [b.batch_id for b in store.lapsed_batches(T0 + LEASE + 1)] == ["b-early"]
    assert [b.batch_id for b in store.lapsed_batches(T0 + 3 * LEASE)] == ["b-early", "b-late"]

    store.expire_batch("b-early", T0 + LEASE + 1)
    lapsed = store.lapsed_batches(T0 + LEASE + 1)
    assert [(b.batch_id, b.state) for b in lapsed] == [("b-early", BatchState.EXPIRED)]

    assert store.close_batch(lapsed[0], T0 + LEASE + 2) is True
    assert store.lapsed_batches(T0 + LEASE + 5) == []


def test_close_batch_once_from_the_state_read(store: StateStore) -> None:
    active = assigned(store, "j1", batch_id="b1", agent_id="a-1")
    assigned(store, "j2", batch_id="b2", agent_id="a-2")
    store.expire_batch("b2", T0 + LEASE + 1)
    expired = get_batch(store, "b2")

    assert store.close_batch(replace(expired, state=BatchState.ACTIVE), T0) is False  # stale
    assert store.close_batch(active, T0 + 5) is True
    assert store.close_batch(active, T0 + 6) is False
    assert store.close_batch(expired, T0 + 7) is True
    assert store.close_batch(expired, T0 + 8) is False

    done, cleaned = get_batch(store, "b1"), get_batch(store, "b2")
    assert (done.state, done.finished_at) == (BatchState.DONE, T0 + 5)
    assert (cleaned.state, cleaned.finished_at) == (BatchState.EXPIRED, T0 + 7)
    assert store.lapsed_batches(T0 + 10 * LEASE) == []


# ================================================================== metrics and tokens
def test_org_metrics_count_only_that_org(store: StateStore) -> None:
    assigned(store, "j1", "j2", batch_id="b1", agent_id="a-1")
    store.record_install("a-1", "b1", AppRef("acme", "v1"), T0)
    store.finish_job("j1", "a-1", "b1", PASSED, T0)
    write_jobs(store, [make_job("g1", org_id="globex", run_id="run-g")])

    metrics = store.org_metrics("acme")

    assert metrics.jobs_by_status == {"passed": 1, "active": 1}
    assert (metrics.batches, metrics.installs, metrics.agent_app_pairs) == (1, 1, 1)
    other = store.org_metrics("globex")
    assert (other.jobs_by_status, other.batches) == ({"queued": 1}, 0)
    assert store.org_metrics("nobody").jobs_by_status == {}


def test_a_token_hash_is_stored_once(token_store: TokenStore) -> None:
    record = TokenRecord("h1", "org", "acme", T0, "ci")

    assert token_store.put(record) is True
    assert token_store.put(replace(record, org_id="globex")) is False
    assert token_store.get("h1") == record
    assert token_store.get("unknown") is None
    agent_record = TokenRecord("h2", "agent", None, T0)
    assert token_store.put(agent_record) is True
    assert token_store.get("h2") == agent_record


def test_an_agent_holding_a_batch_names_its_group_until_released(store: StateStore) -> None:
    batch = assigned(store, "j1", "j2")

    assert get_agent(store, "a-1").batch_group == batch.group_key
    assert store.release_agent("a-1", "b1", offline=False, now=T0 + 1)
    released = get_agent(store, "a-1")
    assert (released.batch_id, released.batch_group) == (None, None)


def test_time_out_only_the_same_running_attempt(store: StateStore) -> None:
    assigned(store, "j1", "j2")
    started = store.start_job("j1", "a-1", "b1", T0 + 1)
    assert started is not None

    assert store.overdue_job_ids(T0 + 1 + 600) == []
    assert store.overdue_job_ids(T0 + 1 + 601) == ["j1"]
    assert store.time_out_job(get_job(store, "j2"), T0 + 2) is None  # never started
    stale = replace(started, started_at=T0 - 50)
    assert store.time_out_job(stale, T0 + 2) is None  # another attempt's start
    timed_out = store.time_out_job(started, T0 + 2)
    assert timed_out is not None
    assert timed_out.status is JobStatus.TIMED_OUT
    assert store.time_out_job(started, T0 + 3) is None
    assert store.overdue_job_ids(T0 + 10_000) == []


def test_restarting_a_running_job_keeps_its_first_start(store: StateStore) -> None:
    assigned(store, "j1")
    first = store.start_job("j1", "a-1", "b1", T0 + 1)
    again = store.start_job("j1", "a-1", "b1", T0 + 9)

    assert first is not None
    assert again is not None
    assert again.started_at == first.started_at == T0 + 1


def test_a_resend_is_claimed_once_per_read(store: StateStore) -> None:
    write_jobs(store, [make_job("j1")])
    seen = get_job(store, "j1")

    assert store.claim_resend(seen, T0 + 31) is True
    assert store.claim_resend(seen, T0 + 31) is False  # another reaper read the same state
    assert get_job(store, "j1").resends == 1
    admitted = store.admit_job(get_job(store, "j1"), T0 + 32)
    assert admitted is not None
    assert store.claim_resend(admitted, T0 + 99) is False  # admitted: nothing to re-send


# ================================================================== duration estimates
def test_admission_stamps_the_estimate_it_is_given(store: StateStore) -> None:
    write_jobs(store, [make_job("j1"), make_job("j2")])

    stamped = store.admit_job(replace(get_job(store, "j1"), estimate_s=42.5), T0)
    plain = store.admit_job(get_job(store, "j2"), T0)

    assert stamped is not None
    assert plain is not None
    assert (stamped.estimate_s, plain.estimate_s) == (42.5, None)
    assert get_job(store, "j1").estimate_s == 42.5
    assert [j.estimate_s for j in store.backlog(Target.EMULATOR)] == [42.5, None]
    # A second admission changes nothing, whatever estimate it carries.
    assert store.admit_job(replace(get_job(store, "j1"), estimate_s=1.0), T0 + 1) is None
    assert get_job(store, "j1").estimate_s == 42.5


def test_a_batch_and_its_agent_carry_the_expected_end_until_released(store: StateStore) -> None:
    queued(store, "j1", "j2")
    agent(store, "a-1")
    batch = make_batch("b1", "a-1", ["j1", "j2"], expected_end_at=T0 + 300)

    assert store.commit_batch(batch, T0)

    assert get_batch(store, "b1").expected_end_at == T0 + 300
    assert get_agent(store, "a-1").batch_expected_free_at == T0 + 300
    assert [a.batch_expected_free_at for a in store.list_agents(Target.EMULATOR)] == [T0 + 300]
    assert store.release_agent("a-1", "b1", offline=False, now=T0 + 1)
    assert get_agent(store, "a-1").batch_expected_free_at is None


def test_a_batch_without_an_expected_end_leaves_none_on_the_agent(store: StateStore) -> None:
    batch = assigned(store, "j1")

    assert batch.expected_end_at is None
    assert get_batch(store, "b1").expected_end_at is None
    assert get_agent(store, "a-1").batch_expected_free_at is None


def test_a_commit_gives_each_job_its_rest_of_batch_and_a_recommit_replaces_it(
    store: StateStore,
) -> None:
    queued(store, "j1", "j2")
    agent(store, "a-1")
    assert store.commit_batch(make_batch("b1", "a-1", ["j1", "j2"], rests_s=[30.0, 10.0]), T0)

    assert [get_job(store, j).rest_of_batch_s for j in ("j1", "j2")] == [30.0, 10.0]
    assert get_batch(store, "b1").rests_s == []  # kept on the jobs only
    # Put back and committed again without rests: the first batch's must not stay.
    assert store.requeue_job(get_job(store, "j1"), "b1", T0 + 1, count_attempt=False, reason="x")
    agent(store, "a-2")
    assert store.commit_batch(make_batch("b2", "a-2", ["j1"]), T0 + 2)
    assert get_job(store, "j1").rest_of_batch_s is None


def test_renewing_an_agents_expected_end_holds_only_for_the_batch_it_holds(
    store: StateStore,
) -> None:
    queued(store, "j1")
    agent(store, "a-1")
    assert store.commit_batch(make_batch("b1", "a-1", ["j1"], expected_end_at=T0 + 300), T0)

    assert store.renew_batch_free_at("a-1", "b1", T0 + 500)
    assert get_agent(store, "a-1").batch_expected_free_at == T0 + 500
    assert [a.batch_expected_free_at for a in store.list_agents(Target.EMULATOR)] == [T0 + 500]
    assert not store.renew_batch_free_at("a-1", "b-other", T0 + 900)
    assert get_agent(store, "a-1").batch_expected_free_at == T0 + 500
    assert store.release_agent("a-1", "b1", offline=False, now=T0 + 1)
    assert not store.renew_batch_free_at("a-1", "b1", T0 + 900)  # a start after release
    assert get_agent(store, "a-1").batch_expected_free_at is None
    assert not store.renew_batch_free_at("a-missing", "b1", T0 + 900)


# ================================================================== counters
def true_counts(store: StateStore, job_ids: list[str]) -> dict[str, int]:
    """The jobs' real states, counted as the run counts them (assigned, running: active)."""
    return nonzero(Counter(counter_of(j.status) for j in store.get_jobs(job_ids)))


def test_every_transition_replayed_twice_leaves_the_counters_true(store: StateStore) -> None:
    job_ids = [f"j{i}" for i in range(6)]
    jobs = [
        make_job(j, position=i, max_attempts=1 if j == "j5" else 3) for i, j in enumerate(job_ids)
    ]
    store.create_run(
        Run("run-1", "acme", "v1", Target.EMULATOR, 5, run_job_ids("run-1", 6), "fp", T0)
    )
    replays: list[str] = []

    def twice(name: str, step: Callable[[], object]) -> None:
        first, second = step(), step()
        assert first not in (None, False), f"{name}: the first call must apply"
        assert second in (None, False) or name in ("create_jobs", "record_install"), name
        replays.append(name)
        expected = true_counts(store, job_ids)
        assert get_run(store).counts == expected, f"run counters drifted after {name}"
        assert store.org_metrics("acme").jobs_by_status == expected, f"org drifted: {name}"

    def job(job_id: str) -> Job:
        return get_job(store, job_id)

    twice("create_jobs", lambda: store.create_jobs(jobs) or True)
    for j in jobs:
        assert store.admit_job(j, T0) is not None
    agent(store, "a-1")
    agent(store, "a-2")
    b1 = make_batch("b1", "a-1", ["j0", "j1", "j2", "j3"])
    twice("commit_batch", lambda: store.commit_batch(b1, T0))
    assert get_run(store).counts == {"queued": 2, "active": 4}
    for j in ("j0", "j1", "j2"):
        first = store.start_job(j, "a-1", "b1", T0 + 1)
        assert first is not None
        assert store.start_job(j, "a-1", "b1", T0 + 1) is not None
    assert get_run(store).counts == {"queued": 2, "active": 4}  # start moves no counter
    twice("record_install", lambda: store.record_install("a-1", "b1", AppRef("acme", "v1"), T0))
    twice("finish_job", lambda: store.finish_job("j0", "a-1", "b1", PASSED, T0 + 2))
    failed = JobOutcome(JobStatus.FAILED, 1.0, "boom", None, None)
    twice("finish_job", lambda: store.finish_job("j1", "a-1", "b1", failed, T0 + 2))
    running = job("j2")
    twice("time_out_job", lambda: store.time_out_job(running, T0 + 900))
    j3 = job("j3")
    twice(
        "requeue_job", lambda: store.requeue_job(j3, "b1", T0 + 3, count_attempt=False, reason="x")
    )
    twice("cancel_job", lambda: store.cancel_job("j4", T0 + 3))
    b2 = make_batch("b2", "a-2", ["j3", "j5"])
    twice("commit_batch", lambda: store.commit_batch(b2, T0 + 4))
    j5 = job("j5")
    twice(
        "requeue_job", lambda: store.requeue_job(j5, "b2", T0 + 5, count_attempt=True, reason="y")
    )
    assert job("j5").status is JobStatus.ERROR  # out of attempts
    twice("finish_job", lambda: store.finish_job("j3", "a-2", "b2", PASSED, T0 + 6))

    assert get_run(store).counts == {
        "passed": 2, "failed": 1, "error": 1, "cancelled": 1, "timed_out": 1
    }  # fmt: skip
    metrics = store.org_metrics("acme")
    assert (metrics.batches, metrics.installs, metrics.agent_app_pairs) == (2, 1, 2)
    assert store.org_metrics("globex") == OrgMetrics({}, 0, 0, 0)
    # Every StateStore method that moves a job to another counter was replayed.
    assert set(replays) == {
        "create_jobs", "commit_batch", "finish_job", "time_out_job", "requeue_job",
        "cancel_job", "record_install",
    }  # fmt: skip


def test_a_failed_transition_moves_no_counter(store: StateStore) -> None:
    batch = assigned(store, "j1", "j2")
    before = (get_run(store).counts, store.org_metrics("acme"))

    assert store.finish_job("j1", "a-other", "b1", PASSED, T0) is None  # not its agent
    assert store.cancel_job("j1", T0) is None  # not queued
    assert store.commit_batch(make_batch("b2", "a-1", ["j1"]), T0) is False  # agent busy
    assert store.time_out_job(get_job(store, "j1"), T0) is None  # never started
    assert (
        store.requeue_job(get_job(store, "j1"), "b-other", T0, count_attempt=True, reason="x")
        is None
    )

    assert (get_run(store).counts, store.org_metrics("acme")) == before
    assert batch.job_ids == ["j1", "j2"]


def test_jobs_need_their_run(store: StateStore) -> None:
    with pytest.raises(LookupError, match="run-missing"):
        store.create_jobs([make_job("j1", run_id="run-missing")])

    assert store.get_job("j1") is None
    assert store.org_metrics("acme").jobs_by_status == {}


def test_a_replayed_creation_counts_only_the_jobs_it_adds(store: StateStore) -> None:
    write_jobs(store, [make_job("j1")])

    write_jobs(store, [make_job("j1"), make_job("j2", position=1), make_job("j3", position=2)])

    assert get_run(store).counts == {"queued": 3}
    assert store.org_metrics("acme").jobs_by_status == {"queued": 3}


def test_a_large_run_is_created_and_counted_in_chunks(store: StateStore) -> None:
    run_id = "run-big"
    size = 250  # three transactions of at most 98 jobs
    store.create_run(
        Run(run_id, "acme", "v1", Target.EMULATOR, 5, run_job_ids(run_id, size), "fp", T0)
    )
    jobs = [make_job(f"k{i:03d}", run_id=run_id, position=i) for i in range(size)]

    store.create_jobs(jobs)

    assert get_run(store, run_id).counts == {"queued": size}
    assert store.org_metrics("acme").jobs_by_status == {"queued": size}


def test_a_runs_jobs_come_in_pages_in_suite_order(store: StateStore) -> None:
    # A run's job ids derive from the run and each position (run_job_ids).
    ids = run_job_ids("run-p", 5)
    store.create_run(Run("run-p", "acme", "v1", Target.EMULATOR, 5, ids, "fp", T0))
    store.create_jobs([make_job(ids[i], run_id="run-p", position=i) for i in (3, 0, 4, 1, 2)])
    other = run_job_ids("run-q", 1)
    store.create_run(Run("run-q", "acme", "v1", Target.EMULATOR, 5, other, "fp", T0))
    store.create_jobs([make_job(other[0], run_id="run-q", position=0)])

    first = store.run_jobs("run-p", -1, 2, total=5)
    second = store.run_jobs("run-p", first.jobs[-1].position, 2, total=5)
    last = store.run_jobs("run-p", second.jobs[-1].position, 2, total=5)

    assert ([j.job_id for j in first.jobs], first.more) == (ids[0:2], True)
    assert ([j.job_id for j in second.jobs], second.more) == (ids[2:4], True)
    assert ([j.job_id for j in last.jobs], last.more) == (ids[4:], False)
    assert store.run_jobs("run-p", -1, 5, total=5).more is False
    assert store.run_jobs("run-p", 4, 5, total=5) == JobPage([], more=False)
    assert [j.job_id for j in store.run_jobs("run-q", -1, 100, total=1).jobs] == other
    assert store.run_jobs("run-unknown", -1, 100, total=0) == JobPage([], more=False)


def test_a_run_reads_as_its_counters_not_as_other_items(store: StateStore) -> None:
    assigned(store, "j1")  # writes an org metrics shard and an agent/app pair marker

    assert store.get_run("org#acme#0") is None
    assert all(store.get_run(f"org#acme#{n}") is None for n in range(8))
    assert get_run(store).counts == {"active": 1}


# ====================================================== sharded indexes (issue 9, item 4)
def test_the_backlog_window_is_the_most_urgent_then_oldest_across_shards(
    store: StateStore,
) -> None:
    jobs = [
        make_job(f"j{n:02d}", position=n, priority=1 + n % 4, created_at=T0 + (37 * n) % 50)
        for n in range(40)
    ]
    write_jobs(store, jobs)
    for job in jobs:
        assert store.admit_job(job, T0) is not None
    order = [j.job_id for j in sorted(jobs, key=lambda j: (j.priority, j.created_at))]

    assert backlog_ids(store) == order
    for limit in (1, 3, 7, 25, 40, 100):
        assert [j.job_id for j in store.backlog(Target.EMULATOR, limit)] == order[:limit]
    assert store.backlog(Target.DEVICE, 5) == []


def test_unadmitted_jobs_across_shards_oldest_first(store: StateStore) -> None:
    jobs = [make_job(f"u{n:02d}", position=n, created_at=T0 + (7 * n) % 30) for n in range(30)]
    write_jobs(store, jobs)
    order = [j.job_id for j in sorted(jobs, key=lambda j: (j.created_at, j.job_id))]

    assert store.unadmitted_job_ids(T0 + 30) == order
    assert store.unadmitted_job_ids(T0 + 10) == order[:10]


def test_a_heartbeat_keeps_a_batch_alive_and_a_lapse_is_found_exactly(
    store: StateStore,
) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    now = T0
    for _ in range(6):  # beats every LEASE/3, the reaper sweeping after each
        now += LEASE / 3
        assert store.extend_lease("b1", "a-1", now + LEASE)
        assert store.lapsed_batches(now + 1) == []
        assert store.lapsed_batches(now + LEASE - 1) == []
    # Silent from here: lapsed exactly once the last lease has ended, not before.
    assert store.lapsed_batches(now + LEASE) == []
    assert [b.batch_id for b in store.lapsed_batches(now + LEASE + 0.5)] == ["b1"]
    assert store.lapsed_batches(now + LEASE + 0.5)[0].lease_expires_at == now + LEASE
    assert store.expire_batch("b1", now + LEASE + 0.5)


def test_silent_idle_agents_are_found_without_a_scan(store: StateStore) -> None:
    agent(store, "e-old", now=T0)
    agent(store, "e-new", now=T0 + 50)
    agent(store, "d-old", target=Target.DEVICE, now=T0 + 10)
    assigned(store, "j1", batch_id="b1", agent_id="e-busy")  # busy: its lease covers it
    agent(store, "e-gone", now=T0)
    assert store.deregister_agent("e-gone", T0 + 1)

    assert store.silent_agent_ids(T0 + 20) == ["e-old", "d-old"]
    assert store.silent_agent_ids(T0) == []
    assert store.touch_agent("e-old", T0 + 30, cred("e-old")) is not None
    assert store.silent_agent_ids(T0 + 20) == ["d-old"]
    assert store.mark_agent_offline("d-old", T0 + 20, T0 + 40)
    assert store.silent_agent_ids(T0 + 100) == ["e-old", "e-new"]


def test_a_released_agent_is_idle_in_the_index_again(store: StateStore) -> None:
    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    assert store.silent_agent_ids(T0 + 1000) == []
    assert store.release_agent("a-1", "b1", offline=False, now=T0 + 5)
    assert store.silent_agent_ids(T0 + 1000) == ["a-1"]
    assert store.mark_agent_offline("a-1", T0 + 1000, T0 + 1000)
    assert store.silent_agent_ids(T0 + 2000) == []


def test_only_running_jobs_are_overdue_until_they_move_on(store: StateStore) -> None:
    assigned(store, "j1", "j2", "j3", "j4")
    for n, job_id in enumerate(("j1", "j2", "j3")):
        assert store.start_job(job_id, "a-1", "b1", T0 + n) is not None
    assert store.start_job("j1", "a-1", "b1", T0 + 9) is not None  # keeps its first start

    assert store.overdue_job_ids(T0 + 600) == []
    assert store.overdue_job_ids(T0 + 602.5) == ["j1", "j2", "j3"]
    assert store.finish_job("j2", "a-1", "b1", PASSED, T0 + 5) is not None
    requeued = store.requeue_job(
        get_job(store, "j3"), "b1", T0 + 6, count_attempt=True, reason="agent error"
    )
    assert requeued is not None
    assert store.overdue_job_ids(T0 + 10_000) == ["j1"]


# ================================================================== TTL (DynamoDB only)
def test_finished_items_expire_a_retention_later_and_metrics_never(
    config: Config, aws_session: boto3.Session
) -> None:
    store = state_store_of(aws_session, config)
    db = aws_session.client("dynamodb")
    retention = 30 * 86400

    def raw(table: str, key: str, value: str) -> dict[str, Any]:
        item = db.get_item(TableName=table, Key={key: {"S": value}}, ConsistentRead=True)
        return dict(item["Item"])

    batch = assigned(store, "j1", "j2", "j3")
    assert store.start_job("j1", "a-1", "b1", T0 + 1) is not None
    assert "expires_at" not in raw(config.jobs_table, "job_id", "j1")  # running
    assert "expires_at" not in raw(config.runs_table, "run_id", "run-1")
    assert store.finish_job("j1", "a-1", "b1", PASSED, T0 + 10) is not None
    assert raw(config.jobs_table, "job_id", "j1")["expires_at"] == {
        "N": str(int(T0 + 10 + retention))
    }
    assert raw(config.runs_table, "run_id", "run-1")["expires_at"] == {
        "N": str(int(T0 + 10 + retention))
    }
    assert store.time_out_job(
        store.start_job("j2", "a-1", "b1", T0 + 2) or get_job(store, "j2"), T0 + 20
    )
    assert raw(config.jobs_table, "job_id", "j2")["expires_at"] == {
        "N": str(int(T0 + 20 + retention))
    }
    assert "expires_at" not in raw(config.jobs_table, "job_id", "j3")  # still assigned
    assert store.close_batch(batch, T0 + 30)
    assert raw(config.batches_table, "batch_id", "b1")["expires_at"] == {
        "N": str(int(T0 + 30 + retention))
    }
    shards = db.scan(TableName=config.runs_table)["Items"]  # test-only: every item, any kind
    metrics = [i for i in shards if i.get("kind", {}).get("S") == "org_metrics"]
    assert metrics
    assert all("expires_at" not in i for i in metrics)
    assert store.org_metrics("acme").jobs_by_status.get("passed") == 1


def test_a_heartbeat_writes_no_index_key_and_a_sweep_moves_it_once(
    config: Config, aws_session: boto3.Session
) -> None:
    """lease-index (DynamoDB only): extend_lease leaves lease_check_at alone; the sweep that
    finds the lease extended moves it to the lease's end, and a repeat writes nothing."""
    store = state_store_of(aws_session, config)
    db = aws_session.client("dynamodb")

    def check_at() -> float:
        item = db.get_item(
            TableName=config.batches_table, Key={"batch_id": {"S": "b1"}}, ConsistentRead=True
        )["Item"]
        return float(item["lease_check_at"]["N"])

    assigned(store, "j1", batch_id="b1", agent_id="a-1")
    assert check_at() == T0 + LEASE
    for beat in range(1, 4):
        assert store.extend_lease("b1", "a-1", T0 + LEASE + beat * 10)
    assert check_at() == T0 + LEASE  # three beats, no index write
    assert store.lapsed_batches(T0 + LEASE + 1) == []
    assert check_at() == T0 + LEASE + 30
    assert store.lapsed_batches(T0 + LEASE + 2) == []
    assert check_at() == T0 + LEASE + 30


# ------------------------------------------------------------------ overflow (move_job)
def test_a_waiting_job_moves_to_the_pool_its_run_allows_once(store: StateStore) -> None:
    first, second = queued(store, "j1", "j2", overflow=Target.BROWSERSTACK)

    moved = store.move_job(first, Target.BROWSERSTACK, T0 + 5)

    assert moved is not None
    assert (moved.target, moved.moved_from, moved.updated_at) == (
        Target.BROWSERSTACK,
        Target.EMULATOR,
        T0 + 5,
    )
    assert moved.group_key == group_key_for("acme", "v1", Target.BROWSERSTACK)
    assert get_job(store, "j1") == moved
    assert backlog_ids(store) == ["j2"]
    assert backlog_ids(store, Target.BROWSERSTACK) == ["j1"]
    # Replayed (from the old read or the new one): nothing moves or counts twice.
    assert store.move_job(first, Target.BROWSERSTACK, T0 + 6) is None
    assert store.move_job(moved, Target.BROWSERSTACK, T0 + 6) is None
    run = store.get_run("run-1")
    assert run is not None
    assert run.moved == 1
    assert run.counts == {counter_of(JobStatus.QUEUED): 2}  # still two queued jobs
    # A moved job is committed, run and finished in its new pool like any other.
    agent(store, "browserstack-b1", target=Target.BROWSERSTACK)
    batch = make_batch(
        "b1",
        "browserstack-b1",
        ["j1"],
        group_key=moved.group_key,
        target=Target.BROWSERSTACK,
    )
    assert store.commit_batch(batch, T0 + 7)
    assert get_job(store, "j1").status is JobStatus.ASSIGNED
    assert store.move_job(second, Target.BROWSERSTACK, T0 + 8) is not None
    run = store.get_run("run-1")
    assert run is not None
    assert run.moved == 2


def test_a_job_moves_only_while_queued_and_allowed(store: StateStore) -> None:
    (plain,) = queued(store, "plain")
    assert store.move_job(plain, Target.BROWSERSTACK, T0) is None  # its run did not allow it
    write_jobs(store, [make_job("waits", overflow=Target.BROWSERSTACK, position=9)])
    unadmitted = get_job(store, "waits")
    assert store.move_job(unadmitted, Target.BROWSERSTACK, T0) is None  # not in a backlog
    (busy,) = queued(store, "busy", overflow=Target.BROWSERSTACK)
    assert store.move_job(busy, Target.DEVICE, T0) is None  # not where its run allows
    agent(store, "a-9")
    assert store.commit_batch(make_batch("b9", "a-9", ["busy"]), T0)
    assert store.move_job(busy, Target.BROWSERSTACK, T0) is None  # assigned since the read
    assert get_job(store, "busy").target is Target.EMULATOR
    run = store.get_run("run-1")
    assert run is not None
    assert run.moved == 0
    assert backlog_ids(store, Target.BROWSERSTACK) == []
    assert backlog_ids(store) == ["plain"]


def test_a_run_keeps_its_overflow_and_jobs_their_moves_when_read_back(store: StateStore) -> None:
    run = Run(
        "run-o", "acme", "v1", Target.DEVICE, 5, run_job_ids("run-o", 1), "fp", T0,
        overflow=Target.BROWSERSTACK,
    )  # fmt: skip
    assert store.create_run(run)
    job = make_job(
        run_job_ids("run-o", 1)[0], run_id="run-o", target=Target.DEVICE,
        overflow=Target.BROWSERSTACK,
    )  # fmt: skip
    store.create_jobs([job])
    admitted = store.admit_job(job, T0)
    assert admitted is not None
    assert store.move_job(admitted, Target.BROWSERSTACK, T0) is not None
    read = store.get_run("run-o")
    assert read is not None
    assert (read.overflow, read.moved) == (Target.BROWSERSTACK, 1)
    stored = get_job(store, job.job_id)
    assert (stored.overflow, stored.moved_from, stored.target) == (
        Target.BROWSERSTACK,
        Target.DEVICE,
        Target.BROWSERSTACK,
    )
