"""S3 implementation of the UploadStore port: presigned links, and one HEAD per check.

The client must sign with SigV4 (wiring does so): only SigV4 signs the Content-Length,
Content-Type and x-amz-checksum-sha256 headers of a presigned PUT, which is what makes S3
itself refuse a body of another size or SHA-256.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from qgjob_backend.ports import PresignedForm, StoredObject


class S3UploadStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    def presigned_put(
        self, key: str, size: int, sha256_b64: str, content_type: str, expires_s: int
    ) -> str:
        url: str = self._s3.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ContentLength": size,
                "ContentType": content_type,
                "ChecksumSHA256": sha256_b64,
            },
            ExpiresIn=expires_s,
        )
        return url

    def presigned_get(self, key: str, expires_s: int) -> str:
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url

    def presigned_post(self, key_prefix: str, max_bytes: int, expires_s: int) -> PresignedForm:
        post = self._s3.generate_presigned_post(
            self._bucket,
            key_prefix + "${filename}",
            Conditions=[
                ["starts-with", "$key", key_prefix],
                ["starts-with", "$Content-Type", ""],
                ["content-length-range", 0, max_bytes],
            ],
            ExpiresIn=expires_s,
        )
        return PresignedForm(
            url=str(post["url"]), fields={k: str(v) for k, v in post["fields"].items()}
        )

    def head(self, key: str) -> StoredObject | None:
        try:
            response = self._s3.head_object(Bucket=self._bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        checksum = response.get("ChecksumSHA256")
        # A multipart object's checksum is a checksum of checksums ("<b64>-<parts>"): not
        # the file's digest, so not comparable.
        if isinstance(checksum, str) and "-" in checksum:
            checksum = None
        return StoredObject(size=int(response["ContentLength"]), sha256_b64=checksum)
