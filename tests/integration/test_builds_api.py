"""App builds through the api Lambda on moto: upload, complete, read, conflicts, org
isolation, the lease's build and artifact form, and results with artifacts."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pytest

from qgjob_backend.config import Config
from tests.integration.conftest import AgentCaller, ApiCaller

APK = b"PK\x03\x04" + bytes(range(256)) * 40
OTHER = b"PK\x03\x04" + bytes(reversed(range(256))) * 40


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start(client: ApiCaller, data: bytes = APK, **extra: Any) -> Any:
    body = {
        "org_id": "acme",
        "app_version_id": "v1",
        "file_name": "app-release.apk",
        "size": len(data),
        "sha256": sha(data),
        **extra,
    }
    return client.post("/builds", body)


def put(aws_session: boto3.Session, config: Config, data: bytes, sha256: str) -> None:
    """What the uploader's presigned PUT stores (moto does not check the signature)."""
    aws_session.client("s3").put_object(
        Bucket=config.artifacts_bucket,
        Key=f"builds/acme/v1/{sha256}/app-release.apk",
        Body=data,
        ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
    )


def upload(client: ApiCaller, aws_session: boto3.Session, config: Config, data: bytes) -> Any:
    started = start(client, data, replace=True)
    assert started.status in (200, 201), started.body
    if started.body["upload"] is not None:
        put(aws_session, config, data, sha(data))
    done = client.post("/builds/v1/complete", {"sha256": sha(data)})
    assert done.status == 200, done.body
    return done.body


def test_upload_is_a_signed_put_then_complete_makes_the_build(
    client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    started = start(client)
    assert started.status == 201, started.body
    upload = started.body["upload"]
    assert upload["method"] == "PUT"
    assert (
        upload["headers"]["x-amz-checksum-sha256"]
        == base64.b64encode(hashlib.sha256(APK).digest()).decode()
    )
    signed = parse_qs(urlparse(upload["url"]).query)
    # SigV4: the size and the checksum are part of what S3 verifies against the signature.
    assert signed["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "x-amz-checksum-sha256" in signed["X-Amz-SignedHeaders"][0]
    assert "content-length" in signed["X-Amz-SignedHeaders"][0]
    assert started.body["build"]["state"] == "pending"

    early = client.post("/builds/v1/complete", {"sha256": sha(APK)})
    assert early.status == 409
    assert "sha256" in early.body["message"]

    put(aws_session, config, APK, sha(APK))
    done = client.post("/builds/v1/complete", {"sha256": sha(APK)})
    assert done.status == 200, done.body
    assert done.body["state"] == "ready"
    assert (done.body["sha256"], done.body["size"]) == (sha(APK), len(APK))
    shown = client.get("/builds/v1")
    assert shown.status == 200
    assert shown.body["sha256"] == sha(APK)
    listed = client.get("/builds")
    assert [b["app_version_id"] for b in listed.body["builds"]] == ["v1"]


def test_same_bytes_are_idempotent_other_bytes_409_unless_replace(
    client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    upload(client, aws_session, config, APK)
    again = start(client, APK)
    assert again.status == 200
    assert again.body["upload"] is None
    conflict = start(client, OTHER)
    assert conflict.status == 409
    assert "replace" in conflict.body["message"]
    replaced = upload(client, aws_session, config, OTHER)
    assert replaced["sha256"] == sha(OTHER)
    assert replaced["replaced"] == 1


def test_another_org_gets_404_and_cannot_upload_for_this_one(
    client: ApiCaller,
    other_org_token: str,
    aws_session: boto3.Session,
    config: Config,
) -> None:
    upload(client, aws_session, config, APK)
    other = ApiCaller(other_org_token)
    assert other.get("/builds/v1").status == 404
    assert other.post("/builds/v1/complete", {"sha256": sha(APK)}).status == 404
    assert other.get("/builds").body["builds"] == []
    forbidden = start(other, APK)
    assert forbidden.status == 403
    assert "org_id" in forbidden.body["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("file_name", "app.exe"), ("sha256", "nothex"), ("size", 0), ("file_name", "../x.apk")],
)
def test_bad_input_is_a_4xx_naming_the_field(client: ApiCaller, field: str, value: Any) -> None:
    response = start(client, **{field: value})
    assert response.status == 422
    assert response.body["errors"][0]["field"] == field


def test_a_run_says_whether_its_version_had_a_build(
    client: ApiCaller, aws_session: boto3.Session, config: Config
) -> None:
    suite = {"org_id": "acme", "app_version_id": "v1", "test_paths": ["a.spec.js"]}
    without = client.post("/runs", {**suite, "idempotency_key": "k1"})
    assert without.status == 201
    assert without.body["build_sha256"] is None
    assert "no build was uploaded" in without.body["build_note"]
    run = client.get(f"/runs/{without.body['run_id']}")
    assert "no build was uploaded" in run.body["build_note"]

    upload(client, aws_session, config, APK)
    with_build = client.post("/runs", {**suite, "idempotency_key": "k2"})
    assert with_build.body["build_sha256"] == sha(APK)
    assert with_build.body["build_note"] is None


def test_the_lease_carries_the_build_and_results_carry_their_artifacts(
    client: ApiCaller,
    agent_client: AgentCaller,
    aws_session: boto3.Session,
    config: Config,
) -> None:
    upload(client, aws_session, config, APK)
    submitted = client.post(
        "/runs", {"org_id": "acme", "app_version_id": "v1", "test_paths": ["a.spec.js"]}
    )
    job_id = submitted.body["job_ids"][0]
    agent = agent_client.post("/agents/register", {"target": "emulator", "device_id": "e1"})
    agent_id = agent.body["agent_id"]
    lease = agent_client.post(f"/agents/{agent_id}/lease")
    batch = lease.body["batch"]
    assert batch is not None
    build = batch["build"]
    assert (build["sha256"], build["size"]) == (sha(APK), len(APK))
    assert build["file_name"] == "app-release.apk"
    form = batch["artifacts"]
    batch_id = batch["batch_id"]
    assert form["key_prefix"] == f"artifacts/acme/{batch_id}/"
    assert form["max_bytes"] > 0
    assert form["fields"]  # the signed policy

    key = f"artifacts/acme/{batch_id}/{job_id}/0-shot.png"
    aws_session.client("s3").put_object(Bucket=config.artifacts_bucket, Key=key, Body=b"png")
    result = {
        "job_id": job_id,
        "status": "failed",
        "duration_s": 1.5,
        "message": "expected Login",
        "artifacts": [{"name": "screenshot", "key": key, "content_type": "image/png", "size": 3}],
    }
    wrong = {**result, "artifacts": [{**result["artifacts"][0], "key": "builds/acme/x.apk"}]}
    refused = agent_client.post(
        f"/agents/{agent_id}/batches/{batch_id}/progress", {"start": job_id}
    )
    assert refused.status == 200
    bad = agent_client.post(f"/agents/{agent_id}/batches/{batch_id}/progress", {"results": [wrong]})
    assert bad.status == 400
    assert "artifacts[0].key" in bad.body["message"]
    done = agent_client.post(
        f"/agents/{agent_id}/batches/{batch_id}/progress", {"results": [result], "complete": True}
    )
    assert done.status == 200, done.body
    assert done.body["results"][0]["accepted"]

    shown = client.get(f"/jobs/{job_id}/result")
    assert shown.status == 200
    (artifact,) = shown.body["artifacts"]
    assert (artifact["name"], artifact["key"], artifact["size"]) == ("screenshot", key, 3)
    assert artifact["url"].startswith("http")
