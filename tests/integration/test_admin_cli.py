"""`python -m infra.admin`: tokens, agents and the dead-letter queue, against the tables and
queues template.yaml creates (moto), as an operator runs it (``main`` with argv)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from infra.admin import StackResources, main
from infra.admin.stack import from_cloudformation, from_template
from infra.template import LocalTemplate
from qgjob_backend.adapters.sqs import job_message
from qgjob_backend.config import Config
from qgjob_backend.domain.models import Job
from qgjob_backend.handlers import api
from qgjob_backend.schema import JobStatus, Target
from qgjob_backend.services.auth import TOKEN_CACHE_SECONDS
from qgjob_backend.wiring import Services, build_services
from tests.integration.conftest import (
    ACCOUNT,
    REGION,
    AgentCaller,
    ApiCaller,
    dispatch_queue,
    legacy_run,
    receive_all,
    state_store_of,
)
from tests.unit.fakes import FakeClock


@pytest.fixture
def stack(stack_env: dict[str, str], aws_session: boto3.Session) -> StackResources:
    """The test's stack as the admin finds a stack created from template.yaml."""
    name = stack_env["JOBS_TABLE"].removesuffix("-JobsTable")
    template = LocalTemplate.from_file(stack_name=name, region=REGION, account_id=ACCOUNT)
    return from_template(template, aws_session, None)


class Admin:
    """Runs admin commands against the test's stack with the test's clock."""

    def __init__(
        self, stack: StackResources, clock: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.stack = stack
        self.clock = clock
        self.capsys = capsys
        self.err = ""

    def run(self, *argv: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = main(list(argv), resources=self.stack, clock=self.clock)
        captured = self.capsys.readouterr()
        self.err = captured.err
        return code, captured.out

    def json(self, *argv: str) -> Any:
        code, out = self.run(*argv, "--json")
        assert code == 0, self.err
        return json.loads(out)


# ------------------------------------------------------------------- tokens


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def clocked_api(config: Config, aws_session: boto3.Session, clock: FakeClock) -> Iterator[Services]:
    """The api function's services (one warm container) on the test's clock."""
    built = build_services(config, aws_session, clock=clock)
    api.services.use(built)
    yield built
    api.services.use(None)


def test_a_revoked_token_gets_401_within_the_documented_cache_ttl(
    stack: StackResources,
    clocked_api: Services,
    config: Config,
    aws_session: boto3.Session,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = Admin(stack, clock, capsys)
    created = admin.json("tokens", "create", "--kind", "org", "--org-id", "acme")
    caller = ApiCaller(created["token"])
    assert caller.get("/metrics").status == 200  # the container now caches the token

    clock.advance(10)
    revoked = admin.json("tokens", "revoke", "--token-id", created["token_id"])

    assert revoked["changed"] is True
    assert revoked["effective_within_s"] == TOKEN_CACHE_SECONDS
    revoked_at = revoked["token"]["revoked_at"]
    assert revoked_at == clock.now
    # The warm container may still trust its cached check, never past the TTL...
    clock.set(revoked_at + TOKEN_CACHE_SECONDS - 10.5)
    assert caller.get("/metrics").status == 200
    clock.set(revoked_at + TOKEN_CACHE_SECONDS)
    refused = caller.get("/metrics")
    assert refused.status == 401, refused.body
    # ... and a container that never saw the token refuses it at once.
    api.services.use(build_services(config, aws_session, clock=clock))
    clock.set(revoked_at)
    assert caller.get("/metrics").status == 401


def test_the_documented_ttl_is_the_one_the_service_uses(clocked_api: Services) -> None:
    code_ttl = clocked_api.tokens.cache_seconds
    assert code_ttl == TOKEN_CACHE_SECONDS
    from infra.admin.cli import build_parser

    parser = build_parser()
    assert f"within {code_ttl:g} s" in parser.format_help()


def test_tokens_list_pages_revoke_twice_and_rotate(
    stack: StackResources,
    clocked_api: Services,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = Admin(stack, clock, capsys)
    made = [
        admin.json("tokens", "create", "--kind", "org", "--org-id", org, "--label", f"ci-{org}")
        for org in ("acme", "globex")
    ]
    ids = [m["token_id"] for m in made]
    fleet = admin.json("tokens", "create", "--kind", "agent", "--target", "device")
    ids.append(fleet["token_id"])

    first = admin.json("tokens", "list", "--limit", "2")
    rest = admin.json("tokens", "list", "--limit", "2", "--after", first["after"])
    everything = admin.json("tokens", "list", "--limit", "1", "--all")

    assert len(first["tokens"]) == 2
    listed = [t["token_id"] for t in first["tokens"] + rest["tokens"]]
    assert sorted(listed) == sorted(ids)
    assert sorted(t["token_id"] for t in everything["tokens"]) == sorted(ids)
    assert everything["after"] is None
    assert {t["label"] for t in everything["tokens"]} == {"ci-acme", "ci-globex", None}

    # Revoking twice: done the first time, nothing changes the second (exit 0).
    assert admin.json("tokens", "revoke", "--token-id", ids[0])["changed"] is True
    again = admin.json("tokens", "revoke", "--token-id", ids[0])
    assert again["changed"] is False
    assert again["token"]["revoked_at"] == clock.now

    # Rotating: the new token has the old one's scope; the old one is revoked, pointing at it.
    clock.advance(5)
    rotated = admin.json("tokens", "rotate", "--token-id", ids[1])
    assert rotated["replaced"]["replaced_by"] == rotated["token_id"]
    assert rotated["replaced"]["revoked_at"] == clock.now
    principal = clocked_api.tokens.authenticate(f"Bearer {rotated['token']}")
    assert (principal.kind.value, principal.org_id) == ("org", "globex")
    assert ApiCaller(made[1]["token"]).get("/metrics").status == 401  # never cached here
    listed_again = {t["token_id"]: t for t in admin.json("tokens", "list", "--all")["tokens"]}
    assert listed_again[rotated["token_id"]]["label"] == "ci-globex"
    assert listed_again[ids[1]]["revoked"] is True
    # A revoked token cannot be rotated again (that would mint a second replacement).
    code, _ = admin.run("tokens", "rotate", "--token-id", ids[1])
    assert code == 2
    assert "already revoked" in admin.err
    assert rotated["token_id"] in admin.err

    # A fleet token read from stdin (never on the command line).
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(fleet["token"] + "\n"))
        code, out = admin.run("tokens", "revoke", "--token-stdin")
    assert code == 0, admin.err
    assert fleet["token_id"] in out
    assert "agents drain" in out  # its agents keep their own credentials


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["tokens", "revoke", "--token-id", "not-a-hash"], "token id"),
        (["tokens", "revoke", "--token-id", "0" * 64], "--token-id"),
        (["tokens", "rotate", "--token-id", "f" * 64], "--token-id"),
        (["agents", "drain", "--agent-id", "device-nobody"], "--agent-id"),
    ],
)
def test_bad_or_unknown_ids_exit_2_naming_the_field(
    stack: StackResources,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    field: str,
) -> None:
    admin = Admin(stack, clock, capsys)
    code, out = admin.run(*argv)
    assert (code, out) == (2, "")
    assert field in admin.err


@pytest.mark.parametrize(
    "argv",
    [
        ["tokens", "list", "--limit", "0"],
        ["tokens", "create", "--kind", "org"],
        ["tokens", "create", "--kind", "org", "--org-id", "a/b"],
        ["agents", "drain"],
        ["dlq", "inspect", "--queue", "nope"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_deployed_stack_is_found_by_its_cloudformation_resources(
    stack: StackResources, aws_session: boto3.Session
) -> None:
    summaries = [
        {"LogicalResourceId": logical, "PhysicalResourceId": physical}
        for logical, physical in stack.physical.items()
    ]

    class Paginator:
        def paginate(self, StackName: str) -> list[dict[str, Any]]:  # noqa: N803
            assert StackName == "prod"
            return [
                {"StackResourceSummaries": summaries[:3]},
                {"StackResourceSummaries": summaries[3:]},
            ]

    class Session:
        def client(self, name: str, **kwargs: Any) -> Any:
            if name == "cloudformation":
                return type("Cfn", (), {"get_paginator": lambda self, op: Paginator()})()
            return aws_session.client(name, **kwargs)

    found = from_cloudformation("prod", Session())

    assert found.physical == stack.physical
    assert found.name("JobsDeadLetterQueue").endswith("-jobs-dlq.fifo")
    assert found.name(found.dead_letter_queue("JobsQueue")) == stack.name("JobsDeadLetterQueue")


# ------------------------------------------------------------------- agents

SUITE = {
    "org_id": "acme",
    "app_version_id": "v1",
    "target": "device",
    "test_paths": ["tests/login.spec.js", "tests/cart.spec.js"],
}


def _finish(agent_client: AgentCaller, agent_id: str, batch: dict[str, Any]) -> None:
    for job in batch["jobs"]:
        path = f"/agents/{agent_id}/jobs/{job['job_id']}"
        assert agent_client.post(f"{path}/start", {"batch_id": batch["batch_id"]}).status == 200
        reported = agent_client.post(
            f"{path}/result",
            {"batch_id": batch["batch_id"], "status": "passed", "duration_s": 1.0},
        )
        assert reported.status == 200, reported.body
    done = agent_client.post(f"/agents/{agent_id}/batches/{batch['batch_id']}/complete")
    assert done.status == 200, done.body


def test_a_drained_agent_finishes_its_batch_and_gets_no_new_work(
    stack: StackResources,
    client: ApiCaller,
    agent_client: AgentCaller,
    aws_session: boto3.Session,
    config: Config,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = Admin(stack, __import__("time").time, capsys)
    agent_client.post("/agents/register", {"target": "device", "device_id": "a"})
    first = client.post("/runs", SUITE).body
    batch = agent_client.post("/agents/device-a/lease").body["batch"]
    assert [j["job_id"] for j in batch["jobs"]] == first["job_ids"]

    code, out = admin.run("agents", "drain", "--agent-id", "device-a")
    assert code == 0, admin.err
    assert f"finishes batch {batch['batch_id']}" in out
    second = client.post("/runs", {**SUITE, "app_version_id": "v2"}).body

    # It still holds and finishes its batch...
    beat = agent_client.post("/agents/device-a/heartbeat")
    assert beat.status == 200, beat.body
    _finish(agent_client, "device-a", batch)
    # ... then, idle with work waiting, it is given none.
    assert agent_client.post("/agents/device-a/lease").body["batch"] is None
    store = state_store_of(aws_session, config)
    assert {j.status for j in store.get_jobs(second["job_ids"])} == {JobStatus.QUEUED}
    listed = admin.json("agents", "list", "--target", "device")["agents"]
    assert [(a["agent_id"], a["state"]) for a in listed] == [("device-a", "drained, safe to stop")]
    # Draining survives a restart (a new registration) and a second drain.
    agent_client.post("/agents/register", {"target": "device", "device_id": "a"})
    again = admin.json("agents", "drain", "--agent-id", "device-a")["agents"][0]
    assert (again["changed"], again["state"]) == (False, "drained, safe to stop")
    assert agent_client.post("/agents/device-a/lease").body["batch"] is None

    undrained = admin.json("agents", "undrain", "--agent-id", "device-a")["agents"][0]
    assert undrained["changed"] is True
    later = agent_client.post("/agents/device-a/lease").body["batch"]
    assert later is not None
    assert [j["job_id"] for j in later["jobs"]] == second["job_ids"]


def test_drain_by_lab_drains_only_that_labs_agents(
    stack: StackResources,
    services: Services,
    agent_client: AgentCaller,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = Admin(stack, __import__("time").time, capsys)
    from qgjob_backend.services.auth import TokenKind

    lab = AgentCaller(services.tokens.create(TokenKind.AGENT, "acme", target="device"))
    lab.post("/agents/register", {"target": "device", "device_id": "p1"})
    agent_client.post("/agents/register", {"target": "device", "device_id": "shared"})

    drained = admin.json("agents", "drain", "--lab", "acme")["agents"]
    listed = {a["agent_id"]: a["state"] for a in admin.json("agents", "list")["agents"]}

    assert [a["agent_id"] for a in drained] == ["device-p1@acme"]
    assert listed == {"device-p1@acme": "drained, safe to stop", "device-shared": "idle"}


# ---------------------------------------------------------------------- dlq


def _dead_letter(aws_session: boto3.Session, stack: StackResources, job: Job, n: int) -> None:
    """A copy of the job's jobs.fifo message, dead-lettered (as after 5 failed receives)."""
    message = job_message(job)
    aws_session.client("sqs").send_message(
        QueueUrl=stack.name("JobsDeadLetterQueue"),
        MessageBody=message["MessageBody"],
        MessageGroupId=message["MessageGroupId"],
        MessageDeduplicationId=f"copy-{n}",
    )


def test_a_job_redriven_twice_is_admitted_once_and_an_assigned_one_not_again(
    stack: StackResources,
    services: Services,
    agent_client: AgentCaller,
    aws_session: boto3.Session,
    config: Config,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = Admin(stack, __import__("time").time, capsys)
    [job_id] = legacy_run(aws_session, config, "v9", tests=1, send=False)
    store = state_store_of(aws_session, config)
    job = store.get_jobs([job_id])[0]
    assert not job.admitted
    _dead_letter(aws_session, stack, job, 1)
    _dead_letter(aws_session, stack, job, 2)  # dead-lettered twice (a re-send, the original)
    services.request_plan()
    plan = receive_all(aws_session, config.jobs_queue_url)
    aws_session.client("sqs").send_message(
        QueueUrl=stack.name("JobsDeadLetterQueue"),
        MessageBody=plan[0]["Body"],
        MessageGroupId="plan",
        MessageDeduplicationId="plan-copy",
    )
    sqs = aws_session.client("sqs")
    sqs.delete_message(QueueUrl=config.jobs_queue_url, ReceiptHandle=plan[0]["ReceiptHandle"])

    inspected = admin.json("dlq", "inspect")
    assert sorted((m["kind"], m["verdict"].split(":")[0]) for m in inspected["messages"]) == [
        ("job", "re-send"),
        ("job", "re-send"),
        ("plan", "merged into one new plan request"),
    ]
    assert len(admin.json("dlq", "inspect")["messages"]) == 3  # inspecting leaves them there

    report = admin.json("dlq", "redrive")["report"]
    assert len(report["resent"]) == 2
    assert report["plan_requested"] is True
    assert admin.json("dlq", "inspect")["messages"] == []

    admissions: list[str] = []
    real_admit = services.dispatcher.admit

    def counting_admit(job_id: str, reads: Any = None) -> Job | None:
        admitted = real_admit(job_id, reads)
        if admitted is not None:
            admissions.append(job_id)
        return admitted

    monkeypatch.setattr(services.dispatcher, "admit", counting_admit)
    assert dispatch_queue(aws_session, config) == {"batchItemFailures": []}
    assert admissions == [job_id]  # two messages, one admission

    agent_client.post("/agents/register", {"target": "emulator", "device_id": "e1"})
    batch = agent_client.post("/agents/emulator-e1/lease").body["batch"]
    assert [j["job_id"] for j in batch["jobs"]] == [job_id]

    # Dead-lettered once more, now that it is assigned: the redrive drops it.
    _dead_letter(aws_session, stack, job, 3)
    again = admin.json("dlq", "redrive")
    assert again["report"]["resent"] == []
    assert again["messages"][0]["verdict"] == "drop: already assigned"
    assert receive_all(aws_session, config.jobs_queue_url) == []
    assert store.get_jobs([job_id])[0].status is JobStatus.ASSIGNED
    assert store.backlog(Target.EMULATOR) == []
    assert admissions == [job_id]


def test_a_vault_dead_letter_goes_back_to_the_vault_queue(
    stack: StackResources,
    aws_session: boto3.Session,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = Admin(stack, __import__("time").time, capsys)
    sqs = aws_session.client("sqs")
    body = json.dumps({"job_id": "job-1", "attempt": 1})
    sqs.send_message(QueueUrl=stack.name("VaultDeadLetterQueue"), MessageBody=body)

    report = admin.json("dlq", "redrive", "--queue", "vault")["report"]

    assert len(report["resent"]) == 1
    assert [m["Body"] for m in receive_all(aws_session, stack.name("VaultQueue"))] == [body]
    assert receive_all(aws_session, stack.name("VaultDeadLetterQueue")) == []
