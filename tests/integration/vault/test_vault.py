"""The results vault against an emulator: App Automate is mocked, S3/DynamoDB/SQS/SSM are
moto's. Each test drives the vault Lambda handler with a real SQS event and checks what
ended up in the bucket and the audit table."""

from __future__ import annotations

import base64
import hashlib
import json

import requests
import responses
from boto3.dynamodb.types import TypeDeserializer

from infra.events import build_sqs_event
from qgjob_backend.domain.vault import archive_key
from tests.integration.vault.conftest import (
    ACCESS_KEY,
    FIXED_NOW,
    JOB,
    ORG,
    USERNAME,
    VaultQueues,
    VaultRig,
    invoke_handler,
    message,
    session_json,
    session_url,
    use_settings,
)

SESSION = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
_deserialize = TypeDeserializer().deserialize


def _records(vault: VaultRig) -> list[dict[str, object]]:
    return [{k: _deserialize(v) for k, v in item.items()} for item in vault.audit_items()]


def _failed_ids(result: dict[str, object]) -> list[str]:
    failures = result["batchItemFailures"]
    assert isinstance(failures, list)
    return [f["itemIdentifier"] for f in failures]


# ------------------------------------------------------------------ happy path


def test_archives_the_raw_record_byte_for_byte_then_writes_its_audit_record(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    payload = session_json(SESSION)
    browserstack.get(session_url(SESSION), body=payload, content_type="application/json")

    assert _failed_ids(vault.handle(message())) == []

    key = archive_key(ORG, JOB, 1)
    assert key == f"vault/{ORG}/{JOB}/1.json"
    stored = vault.aws.s3.get_object(Bucket=vault.resources.bucket, Key=key)
    assert stored["Body"].read() == payload
    assert stored["ServerSideEncryption"] == "AES256"
    assert stored["ContentType"] == "application/json"
    [record] = _records(vault)
    assert record == {
        "job_id": JOB,
        "attempt": 1,
        "org_id": ORG,
        "session_id": SESSION,
        "outcome": "archived",
        "http_status": 200,
        "source": session_url(SESSION),
        "fetched_at": FIXED_NOW,
        "recorded_at": FIXED_NOW,
        "s3_key": key,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
    }
    # The org's credentials went to BrowserStack as HTTP basic auth, and nowhere else.
    [call] = browserstack.calls
    expected = base64.b64encode(f"{USERNAME}:{ACCESS_KEY}".encode()).decode()
    assert call.request.headers["Authorization"] == f"Basic {expected}"
    assert ACCESS_KEY not in json.dumps(record, default=str)
    assert vault.sleeps == []


# ------------------------------------------------------------------ S3 failures


def test_an_s3_403_writes_no_audit_record_and_fails_the_message(
    vault: VaultRig, browserstack: responses.RequestsMock, s3_denies_puts: list[str]
) -> None:
    browserstack.get(session_url(SESSION), body=session_json(SESSION))

    assert _failed_ids(vault.handle(message())) == ["m-0"]

    assert len(s3_denies_puts) == 1  # AccessDenied is not retried by boto3 either
    assert vault.object_keys() == []
    assert _records(vault) == []
    assert "VaultArchiveFailures" in vault.counts


def test_a_message_whose_archive_keeps_failing_ends_in_the_dead_letter_queue(
    vault: VaultRig,
    vault_queues: VaultQueues,
    browserstack: responses.RequestsMock,
    s3_denies_puts: list[str],
) -> None:
    # As the SQS event-source mapping does: receive, invoke, delete only the successes.
    # VisibilityTimeout=0 makes a failed message visible again at once (no waiting).
    browserstack.get(session_url(SESSION), body=session_json(SESSION))
    sqs = vault.aws.sqs
    sqs.send_message(QueueUrl=vault_queues.url, MessageBody=message().to_json())
    deliveries = 0
    while True:
        received = sqs.receive_message(
            QueueUrl=vault_queues.url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not received:
            break
        deliveries += 1
        assert deliveries <= vault_queues.max_receive_count, "never dead-lettered"
        result = invoke_handler(
            build_sqs_event(received, queue_arn=vault_queues.arn, region="us-east-1")
        )
        assert _failed_ids(result) == [m["MessageId"] for m in received]

    assert deliveries == vault_queues.max_receive_count
    dead = sqs.receive_message(QueueUrl=vault_queues.dlq_url, MaxNumberOfMessages=10)
    assert [m["Body"] for m in dead["Messages"]] == [message().to_json()]
    assert len(s3_denies_puts) == deliveries
    assert vault.object_keys() == []
    assert _records(vault) == []
    assert vault.counts.count("VaultArchiveFailures") == deliveries


def test_an_archive_written_by_a_delivery_that_crashed_before_its_record_is_the_one_recorded(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    # A first delivery archived, then died before the audit write. BrowserStack's record
    # changed since; the retry must not overwrite the archive, and the record must
    # describe the object actually stored.
    earlier = session_json(SESSION).replace(b'"passed"', b'"running"')
    key = archive_key(ORG, JOB, 1)
    vault.aws.s3.put_object(Bucket=vault.resources.bucket, Key=key, Body=earlier)
    browserstack.get(session_url(SESSION), body=session_json(SESSION))

    assert _failed_ids(vault.handle(message())) == []

    assert vault.object_keys() == [key]  # no second version
    [record] = _records(vault)
    assert record["sha256"] == hashlib.sha256(earlier).hexdigest()
    assert record["size"] == len(earlier)


# ------------------------------------------------------------------ retries


def test_a_503_is_retried_with_backoff_and_the_pipeline_completes(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    url = session_url(SESSION)
    browserstack.get(url, status=503, body="Service Unavailable")
    browserstack.get(url, status=503, body="Service Unavailable")
    browserstack.get(url, body=session_json(SESSION))

    assert _failed_ids(vault.handle(message())) == []

    assert len(browserstack.calls) == 3
    assert vault.sleeps == [0.5, 1.0]  # exponential: base 0.5 s, doubled
    [record] = _records(vault)
    assert record["outcome"] == "archived"
    assert record["http_status"] == 200


def test_a_429_waits_as_long_as_retry_after_says(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    url = session_url(SESSION)
    browserstack.get(url, status=429, headers={"Retry-After": "3"}, body="rate limited")
    browserstack.get(url, body=session_json(SESSION))

    assert _failed_ids(vault.handle(message())) == []

    assert vault.sleeps == [3.0]
    assert _records(vault)[0]["outcome"] == "archived"


def test_a_retry_after_beyond_the_cap_is_capped(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    url = session_url(SESSION)
    browserstack.get(url, status=429, headers={"Retry-After": "3600"}, body="slow down")
    browserstack.get(url, body=session_json(SESSION))

    vault.handle(message())

    assert vault.sleeps == [vault.service.settings.max_delay_s]


def test_an_api_that_stays_down_fails_the_message_after_bounded_retries_and_records_nothing(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    url = session_url(SESSION)
    browserstack.get(url, status=503)
    browserstack.get(url, body=requests.ConnectionError("connection reset"))
    browserstack.get(url, status=502)
    browserstack.get(url, status=500)

    assert _failed_ids(vault.handle(message())) == ["m-0"]

    settings = vault.service.settings
    assert len(browserstack.calls) == settings.max_attempts == 4
    assert vault.sleeps == [0.5, 1.0, 2.0]
    assert sum(vault.sleeps) <= settings.max_wait_s
    assert vault.object_keys() == []
    assert _records(vault) == []
    assert "VaultFetchGaveUp" in vault.counts


# ------------------------------------------------------------------ answers never archived


def test_a_401_is_not_retried_and_is_audited_as_unauthorized(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    browserstack.get(session_url(SESSION), status=401, json={"message": "Unauthorized"})

    assert _failed_ids(vault.handle(message())) == []  # retrying cannot help

    assert len(browserstack.calls) == 1
    assert vault.sleeps == []
    assert vault.object_keys() == []
    [record] = _records(vault)
    assert record["outcome"] == "unauthorized"
    assert record["http_status"] == 401
    assert "s3_key" not in record
    assert "credentials" in str(record["detail"])


def test_malformed_json_is_audited_and_not_archived(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    body = b'{"automation_session": {"name": "trunc'
    browserstack.get(session_url(SESSION), body=body, content_type="application/json")

    assert _failed_ids(vault.handle(message())) == []

    assert vault.object_keys() == []
    [record] = _records(vault)
    assert record["outcome"] == "malformed_json"
    assert record["size"] == len(body)
    assert "s3_key" not in record


def test_json_that_is_not_an_object_is_malformed_too(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    browserstack.get(session_url(SESSION), json=["not", "a", "session"])

    vault.handle(message())

    assert _records(vault)[0]["outcome"] == "malformed_json"


def test_a_payload_over_the_limit_is_audited_as_too_large_and_not_archived(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    use_settings(vault, max_bytes=1024)
    body = json.dumps({"automation_session": {"logs": "x" * 4096}}).encode()
    browserstack.get(session_url(SESSION), body=body)

    assert _failed_ids(vault.handle(message())) == []

    assert vault.object_keys() == []
    [record] = _records(vault)
    assert record["outcome"] == "too_large"
    assert record["size"] == len(body)


# ------------------------------------------------------------------ idempotency


def test_the_same_message_twice_yields_one_object_and_one_audit_record(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    browserstack.get(session_url(SESSION), body=session_json(SESSION))

    first = vault.handle(message())
    second = vault.handle(message(), message())  # and twice more in one batch

    assert _failed_ids(first) == _failed_ids(second) == []
    assert len(browserstack.calls) == 1  # the duplicates fetch nothing
    assert vault.object_keys() == [archive_key(ORG, JOB, 1)]
    assert len(_records(vault)) == 1
    assert vault.counts.count("VaultDuplicates") == 2


def test_each_attempt_of_a_job_has_its_own_archive_and_record(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    other = "ffeeddccbbaa99887766554433221100ffeeddcc"
    browserstack.get(session_url(SESSION), body=session_json(SESSION))
    browserstack.get(session_url(other), body=session_json(other))

    vault.handle(message(1, SESSION), message(2, other))

    assert sorted(vault.object_keys()) == [archive_key(ORG, JOB, 1), archive_key(ORG, JOB, 2)]
    assert [(r["attempt"], r["session_id"]) for r in _records(vault)] == [
        (1, SESSION),
        (2, other),
    ]


# ------------------------------------------------------------------ bad input


def test_a_malformed_message_is_dropped_without_failing_the_others(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    browserstack.get(session_url(SESSION), body=session_json(SESSION))
    bad = json.dumps({"org_id": ORG, "job_id": JOB, "attempt": 1, "session_id": "../../x"})

    result = vault.handle("not json", bad, message())

    assert _failed_ids(result) == []
    assert len(_records(vault)) == 1
    assert [c.request.url for c in browserstack.calls] == [session_url(SESSION)]


def test_no_stored_credentials_fails_the_message_without_calling_browserstack(
    vault: VaultRig, browserstack: responses.RequestsMock
) -> None:
    stranger = message().model_copy(update={"org_id": "globex"})

    assert _failed_ids(vault.handle(stranger)) == ["m-0"]

    assert len(browserstack.calls) == 0
    assert _records(vault) == []
    assert "VaultMissingCredentials" in vault.counts
