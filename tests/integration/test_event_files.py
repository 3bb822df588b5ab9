"""events/*.json, the `sam local invoke` events, fed through the real handlers on moto.

The README's `sam local invoke <Function> -e events/<file>` commands use these same files,
so an event shape a handler stops understanding fails here. Where a file carries a
placeholder (a token to paste), the test answers it as is first, then with the one value
put in that a user would paste.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import responses

from infra.events import HttpRequest, LambdaContext, build_proxy_event
from infra.template import FUNCTION_TYPE
from qgjob_backend.adapters.browserstack import Credentials, credentials_to_json, parameter_name
from qgjob_backend.adapters.sqs import job_message
from qgjob_backend.config import Config
from qgjob_backend.handlers import api, dispatcher, push, reaper, vault
from qgjob_backend.wiring import Services, build_vault_service
from tests.integration.conftest import ACCOUNT, REGION
from tests.unit.sam_template import resources, source_template

EVENTS = Path(__file__).resolve().parents[2] / "events"
# Each file's function: its name's first word.
FUNCTION_OF = {
    "api": "ApiFunction",
    "dispatcher": "DispatcherFunction",
    "push": "PushFunction",
    "reaper": "ReaperFunction",
    "vault": "VaultFunction",
}


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return event


def context(function: str) -> LambdaContext:
    return LambdaContext(function, REGION, ACCOUNT)


def with_bearer(event: dict[str, Any], token: str) -> dict[str, Any]:
    """The event with a real token where the file says PASTE_..."""
    pasted = copy.deepcopy(event)
    for key in ("headers", "multiValueHeaders"):
        for name in pasted[key]:
            if name.lower() == "authorization":
                pasted[key][name] = f"Bearer {token}" if key == "headers" else [f"Bearer {token}"]
    return pasted


def answer_body(result: dict[str, Any]) -> Any:
    return json.loads(result["body"]) if result.get("body") else None


def test_every_function_has_event_files_for_its_event_sources() -> None:
    files = sorted(p.name for p in EVENTS.glob("*.json"))
    functions = resources(source_template(), FUNCTION_TYPE)
    assert set(FUNCTION_OF.values()) == set(functions)
    for prefix, function in FUNCTION_OF.items():
        kinds = {f.removesuffix(".json").split("-")[1] for f in files if f.startswith(prefix)}
        assert kinds, f"no events/{prefix}-*.json for {function}"
        sources = {e["Type"] for e in (functions[function].get("Events") or {}).values()}
        for source, kind in (("SQS", "sqs"), ("Schedule", "schedule")):
            if source in sources:
                assert kind in kinds, f"no events/{prefix}-{kind}*.json for {function}"


def test_api_events_use_the_templates_payload_format() -> None:
    (route,) = resources(source_template(), FUNCTION_TYPE)["ApiFunction"]["Events"].values()
    version = route["Properties"]["PayloadFormatVersion"]
    for path in EVENTS.glob("api-*.json"):
        event = load(path.name)
        assert event["version"] == version, path.name
        assert event["path"].startswith("/v1/"), path.name  # the stage stays in `path`
        # The same keys as the local stack's API Gateway shim sends (infra/events.py).
        shim = build_proxy_event(
            HttpRequest(event["httpMethod"], event["path"], [("host", "x")], b"", "127.0.0.1"),
            stage="v1",
            request_id="r",
            account_id=ACCOUNT,
            api_id="a",
        )
        assert set(event) == set(shim), path.name
        assert set(event["requestContext"]) == set(shim["requestContext"]), path.name


def test_api_health(services: Services) -> None:
    result = api.lambda_handler(load("api-health.json"), context("ApiFunction"))
    assert result["statusCode"] == 200
    assert answer_body(result)["status"] == "ok"


def test_api_submit_run_needs_a_pasted_token_and_then_queues_the_run(
    services: Services, org_token: str, state_store: Any
) -> None:
    event = load("api-submit-run.json")
    refused = api.lambda_handler(event, context("ApiFunction"))
    assert refused["statusCode"] == 401

    result = api.lambda_handler(with_bearer(event, org_token), context("ApiFunction"))
    assert result["statusCode"] == 201, result
    body = answer_body(result)
    submitted = json.loads(event["body"])
    assert len(body["job_ids"]) == len(submitted["test_paths"])
    job = state_store.get_job(body["job_ids"][0])
    assert (job.org_id, job.app_version_id) == (submitted["org_id"], submitted["app_version_id"])


def test_api_job_status_of_a_job_the_org_does_not_have(services: Services, org_token: str) -> None:
    event = load("api-job-status.json")
    assert api.lambda_handler(event, context("ApiFunction"))["statusCode"] == 401
    result = api.lambda_handler(with_bearer(event, org_token), context("ApiFunction"))
    assert result["statusCode"] == 404


def test_dispatcher_sqs_job_admits_the_job_its_message_names(
    services: Services, org_token: str, state_store: Any
) -> None:
    event = load("dispatcher-sqs-job.json")
    # As shipped, it names a job no stack has: dropped, never retried.
    assert dispatcher.lambda_handler(event, context("DispatcherFunction")) == {
        "batchItemFailures": []
    }
    submitted = api.lambda_handler(
        with_bearer(load("api-submit-run.json"), org_token), context("ApiFunction")
    )
    job = state_store.get_job(answer_body(submitted)["job_ids"][0])
    message = job_message(job)
    assert message["MessageGroupId"] == event["Records"][0]["attributes"]["MessageGroupId"]
    record = event["Records"][0]
    record["body"] = message["MessageBody"]
    record["attributes"]["MessageDeduplicationId"] = message["MessageDeduplicationId"]
    assert dispatcher.lambda_handler(event, context("DispatcherFunction")) == {
        "batchItemFailures": []
    }
    assert state_store.get_job(job.job_id).admitted


def _queued_bodies(queue_url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=REGION)
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def test_dispatcher_sqs_plan(services: Services) -> None:
    result = dispatcher.lambda_handler(load("dispatcher-sqs-plan.json"), context("Dispatcher"))
    assert result == {"batchItemFailures": []}


def test_dispatcher_schedule_requests_a_plan(services: Services, config: Config) -> None:
    result = dispatcher.lambda_handler(load("dispatcher-schedule.json"), context("Dispatcher"))
    assert result == {"plan_requested": True}
    assert [body.get("plan") for body in _queued_bodies(config.jobs_queue_url)] == [True]


def test_reaper_schedule_sweeps_an_empty_stack(services: Services) -> None:
    result = reaper.lambda_handler(load("reaper-schedule.json"), context("ReaperFunction"))
    assert result, "the sweep's report"
    assert all(value == 0 for value in result.values()), result


def test_push_ping_and_connect(services: Services) -> None:
    pong = push.lambda_handler(load("push-ping.json"), context("PushFunction"))
    assert pong == {"statusCode": 200, "body": json.dumps({"type": "pong"})}
    # The placeholder is no agent credential: the connection is refused.
    assert (
        push.lambda_handler(load("push-connect.json"), context("PushFunction"))["statusCode"] == 401
    )


@pytest.fixture
def vault_service(config: Config, aws_session: boto3.Session) -> Any:
    service = build_vault_service(config, aws_session, sleep=lambda _: None)
    vault.vault.use(service)
    yield service
    vault.vault.use(None)


def test_vault_sqs_archives_the_session(
    config: Config, aws_session: boto3.Session, vault_service: Any
) -> None:
    event = load("vault-sqs.json")
    message = json.loads(event["Records"][0]["body"])
    ssm = aws_session.client("ssm")
    name = parameter_name(config.browserstack_credentials_prefix, message["org_id"])
    # Without the org's BrowserStack credentials the record fails, to be delivered again.
    failed = vault.lambda_handler(event, context("VaultFunction"))
    assert failed == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}

    ssm.put_parameter(
        Name=name, Value=credentials_to_json(Credentials("user", "key")), Type="SecureString"
    )
    url = f"{config.browserstack_api_url.rstrip('/')}/app-automate/sessions/"
    with responses.RequestsMock(assert_all_requests_are_fired=True) as browserstack:
        browserstack.get(
            f"{url}{message['session_id']}.json",
            json={"automation_session": {"hashed_id": message["session_id"], "status": "done"}},
        )
        done = vault.lambda_handler(event, context("VaultFunction"))
    assert done == {"batchItemFailures": []}
    keys = aws_session.client("s3").list_objects_v2(Bucket=config.vault_bucket).get("Contents")
    assert keys
    assert message["job_id"] in keys[0]["Key"]
