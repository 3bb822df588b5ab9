"""S3 implementations of the ArtifactStore and the vault's ObjectStore ports."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from botocore.exceptions import ClientError


class S3ArtifactStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    def put_text(self, key: str, text: str) -> None:
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=text.encode("utf-8"),
            ContentType="text/plain; charset=utf-8",
        )


class S3VaultStore:
    """The vault's ObjectStore: raw archives, encrypted (SSE-S3), never overwritten.

    ``put_new`` is a conditional PUT (If-None-Match: *): a second delivery of the same
    message cannot replace, or add a version to, an archive already written. S3 checks
    the body against its SHA-256 (ChecksumSHA256) before storing it.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    def put_new(self, key: str, body: bytes, content_type: str) -> bool:
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ServerSideEncryption="AES256",
                ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
                IfNoneMatch="*",
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def get(self, key: str) -> bytes | None:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        data: bytes = response["Body"].read()
        return data

    def presigned_get(self, key: str, expires_s: int) -> str:
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url
