"""Injected faults against the real adapters on moto: nothing lost, nothing completed twice."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace

import boto3

from infra.events import LambdaContext, build_sqs_event
from qgjob_backend.config import Config
from qgjob_backend.domain.models import Batch, Job
from qgjob_backend.domain.planner import IdleAgent, PlannedBatch, PlanningPolicy, plan_batches
from qgjob_backend.handlers import dispatcher
from qgjob_backend.schema import SuiteSubmission, Target
from qgjob_backend.services.dispatch import (
    AdmissionReads,
    DispatchService,
    backlog_view,
    batch_of,
)
from qgjob_backend.services.submission import SubmissionService
from qgjob_backend.wiring import Services, build_services, new_id
from tests.integration.conftest import (
    ACCOUNT,
    REGION,
    ApiCaller,
    dispatch_queue,
    legacy_run,
    receive_all,
    state_store_of,
)
from tests.unit.fakes import SHARED_FLEET

SUITE = {
    "org_id": "acme",
    "app_version_id": "v7",
    "target": "emulator",
    "test_paths": [f"tests/t{i}.spec.js" for i in range(4)],
}


_store = state_store_of


def _batch_of(plan: PlannedBatch) -> Batch:
    return batch_of(plan, "batch-" + new_id(), 0.0, 60.0)


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_lost_lease_requeues_unfinished_jobs_and_rejects_the_late_report(
    client: ApiCaller,
    agent_client: ApiCaller,
    services: Services,
    aws_session: boto3.Session,
    config: Config,
) -> None:
    run = client.post("/runs", SUITE).body
    dispatch_queue(aws_session, config)
    agent_client.post("/agents/register", {"target": "emulator", "device_id": "a"})
    batch = agent_client.post("/agents/emulator-a/lease").body["batch"]
    batch_id, jobs = batch["batch_id"], batch["jobs"]
    assert len(jobs) >= 2
    first, second = jobs[0]["job_id"], jobs[1]["job_id"]
    agent_client.post(f"/agents/emulator-a/jobs/{first}/start", {"batch_id": batch_id})
    agent_client.post(
        f"/agents/emulator-a/jobs/{first}/result",
        {"batch_id": batch_id, "status": "passed", "duration_s": 1.0},
    )
    agent_client.post(f"/agents/emulator-a/jobs/{second}/start", {"batch_id": batch_id})

    # Agent "a" goes silent: a reaper whose clock is past the lease sweeps.
    later = build_services(config, aws_session, clock=_Clock(batch["lease_expires_at"] + 1))
    report = later.reaper.sweep()

    assert report.expired_batches == 1
    assert report.requeued_jobs == len(jobs) - 1
    after = {j["job_id"]: j for j in client.get(f"/runs/{run['run_id']}/jobs").body["jobs"]}
    assert after[first]["status"] == "passed"
    assert after[second]["status"] == "queued"
    assert after[second]["attempts"] == 1  # it was running when the agent vanished
    rest = [j for j in run["job_ids"] if j not in (first, second)]
    assert [(after[j]["status"], after[j]["attempts"]) for j in rest] == [("queued", 0)] * 2

    late = agent_client.post(
        f"/agents/emulator-a/jobs/{second}/result",
        {"batch_id": batch_id, "status": "passed", "duration_s": 9.0},
    )
    assert late.status == 409
    assert "rejected" in late.body["message"]
    assert client.get(f"/jobs/{second}").body["status"] == "queued"
    assert agent_client.post("/agents/emulator-a/heartbeat").status == 404

    agent_client.post("/agents/register", {"target": "emulator", "device_id": "b"})
    rescued: list[str] = []
    while rescue := agent_client.post("/agents/emulator-b/lease").body["batch"]:
        for job in rescue["jobs"]:
            path = f"/agents/emulator-b/jobs/{job['job_id']}"
            agent_client.post(f"{path}/start", {"batch_id": rescue["batch_id"]})
            done = agent_client.post(
                f"{path}/result",
                {"batch_id": rescue["batch_id"], "status": "passed", "duration_s": 1.0},
            )
            assert done.status == 200
            rescued.append(job["job_id"])
        agent_client.post(f"/agents/emulator-b/batches/{rescue['batch_id']}/complete")
    assert rescued == [j for j in run["job_ids"] if j != first]  # in suite order
    final = client.get(f"/runs/{run['run_id']}").body
    assert final["finished"] is True
    assert final["counts"] == {"passed": 4}
    assert after[first]["agent_id"] == "emulator-a"


class _BrokenQueue:
    def send(self, jobs: Sequence[Job]) -> list[str]:
        raise ConnectionError("SQS unreachable")


def test_jobs_whose_plan_request_was_lost_are_planned_by_the_schedule(
    services: Services, aws_session: boto3.Session, config: Config
) -> None:
    store = _store(aws_session, config)
    crashed = SubmissionService(store, _BrokenQueue(), _Clock(1000.0), new_id)
    result = crashed.submit("acme", SuiteSubmission(**SUITE))
    assert receive_all(aws_session, config.jobs_queue_url) == []

    later = build_services(
        config, aws_session, clock=_Clock(1000.0 + config.resend_grace_seconds + 1)
    )
    assert later.reaper.sweep().resent_jobs == 0  # in the backlog: nothing to re-send
    later.agents.register(SHARED_FLEET, Target.EMULATOR, "d1", None)
    committed = later.dispatcher.plan()  # what the schedule's plan request does

    assert [job_id for batch in committed for job_id in batch.job_ids] == result.run.job_ids


def test_a_legacy_job_written_but_never_sent_is_resent_by_the_reaper(
    services: Services, aws_session: boto3.Session, config: Config
) -> None:
    job_ids = legacy_run(aws_session, config, "v7", 4, send=False)
    assert receive_all(aws_session, config.jobs_queue_url) == []

    later = build_services(
        config, aws_session, clock=_Clock(time.time() + config.resend_grace_seconds + 1)
    )
    assert later.reaper.sweep().resent_jobs == 4

    messages = receive_all(aws_session, config.jobs_queue_url)
    assert sorted(json.loads(m["Body"])["job_id"] for m in messages) == sorted(job_ids)
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {"acme/v7/emulator"}


def test_two_dispatchers_with_the_same_view_never_assign_a_job_twice(
    client: ApiCaller,
    agent_client: ApiCaller,
    services: Services,
    aws_session: boto3.Session,
    config: Config,
) -> None:
    client.post("/runs", SUITE)
    dispatch_queue(aws_session, config)
    for device in ("a", "b"):
        agent_client.post("/agents/register", {"target": "emulator", "device_id": device})
    store = _store(aws_session, config)
    backlog = [backlog_view(j) for j in store.backlog(Target.EMULATOR)]
    policy = PlanningPolicy(max_batch_jobs=10)
    # Both dispatchers loaded the same backlog before either committed.
    plan_one = plan_batches(backlog, [IdleAgent("emulator-a", "emulator", None)], 0.0, policy)
    plan_two = plan_batches(backlog, [IdleAgent("emulator-b", "emulator", None)], 0.0, policy)
    batch_one, batch_two = _batch_of(plan_one[0]), _batch_of(plan_two[0])

    assert store.commit_batch(batch_one, 0.0) is True
    assert store.commit_batch(batch_two, 0.0) is False

    agent_b = store.get_agent("emulator-b")
    assert agent_b is not None
    assert agent_b.batch_id is None  # the loser wrote nothing
    assert store.get_batch(batch_two.batch_id) is None
    owners = {j.batch_id for j in store.get_jobs(list(batch_one.job_ids))}
    assert owners == {batch_one.batch_id}


def test_redelivered_message_admits_the_job_once(
    client: ApiCaller, services: Services, aws_session: boto3.Session, config: Config
) -> None:
    single = {"org_id": "acme", "app_version_id": "v7", "test_path": "t.spec.js"}
    job_id = client.post("/jobs", single).body["job_id"]
    messages = receive_all(aws_session, config.jobs_queue_url)
    sqs = aws_session.client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=config.jobs_queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    event = build_sqs_event(messages, queue_arn=arn, region=REGION)
    context = LambdaContext("DispatcherFunction", REGION, ACCOUNT)

    store = _store(aws_session, config)
    assert dispatcher.lambda_handler(event, context) == {"batchItemFailures": []}
    first = store.get_job(job_id)
    assert dispatcher.lambda_handler(event, context) == {"batchItemFailures": []}
    second = store.get_job(job_id)

    assert first is not None
    assert first.admitted is True
    assert second == first  # the redelivery wrote nothing
    backlog = store.backlog(Target.EMULATOR)
    assert [j.job_id for j in backlog] == [job_id]


def test_a_failing_record_fails_it_and_the_rest_of_the_fifo_batch(
    client: ApiCaller, services: Services, aws_session: boto3.Session, config: Config
) -> None:
    legacy_run(aws_session, config, "v7", 4)
    messages = receive_all(aws_session, config.jobs_queue_url)
    assert len(messages) == 4
    bodies = [json.loads(m["Body"]) for m in messages]
    poisoned = bodies[1]["job_id"]
    sqs = aws_session.client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=config.jobs_queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]

    class _FlakyDispatch:
        def __init__(self, inner: DispatchService) -> None:
            self.inner = inner

        def prefetch(self, job_ids: Sequence[str]) -> AdmissionReads:
            return self.inner.prefetch(job_ids)

        def admit(self, job_id: str, reads: AdmissionReads | None = None) -> Job | None:
            if job_id == poisoned:
                raise ConnectionError("DynamoDB throttled")
            return self.inner.admit(job_id, reads)

        def plan(self, targets: object = None) -> list[object]:
            return []

    dispatcher.services.use(replace(services, dispatcher=_FlakyDispatch(services.dispatcher)))  # type: ignore[arg-type]
    response = dispatcher.lambda_handler(
        build_sqs_event(messages, queue_arn=arn, region=REGION),
        LambdaContext("DispatcherFunction", REGION, ACCOUNT),
    )

    failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    assert failed == [m["MessageId"] for m in messages[1:]]
    store = _store(aws_session, config)
    assert [j.job_id for j in store.backlog(Target.EMULATOR)] == [bodies[0]["job_id"]]
