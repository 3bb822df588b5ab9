"""The event shapes AWS hands to Lambda, built locally so the handlers see real events.

- API Gateway REST API Lambda-proxy events (payload format 1.0) and their responses.
- SQS event-source records (one Lambda event carries up to BatchSize records).
- EventBridge "Scheduled Event"s.
- A Lambda context object with the attributes Powertools reads.

Pure functions: no sockets, no boto3, so they are unit-tested directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

PROXY_RESOURCE = "/{proxy+}"


# ---------------------------------------------------------------- API Gateway


@dataclass(frozen=True)
class HttpRequest:
    """What the shim read off the socket."""

    method: str
    raw_path: str  # path and query string as sent, including the stage prefix
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def stage_relative_path(raw_path: str, stage: str) -> str | None:
    """``/v1/jobs/1`` -> ``/jobs/1``; None when the path is outside the stage or its root.

    The API defines only ``/{proxy+}``, so the stage root itself has no resource either.
    """
    path = urlsplit(raw_path).path
    prefix = f"/{stage}/"
    if not path.startswith(prefix) or len(path) == len(prefix):
        return None
    return "/" + path[len(prefix) :]


def build_proxy_event(
    request: HttpRequest,
    *,
    stage: str,
    request_id: str,
    account_id: str,
    api_id: str,
    now: float | None = None,
) -> dict[str, Any]:
    """An HTTP API event, payload format version 1.0, for the ``ANY /{proxy+}`` route.

    As at AWS, header names arrive in lower case and, on a named stage, ``path`` keeps the
    stage prefix (``/v1/jobs/1``): the handler takes it off. ``pathParameters.proxy`` is
    the path within the stage.
    """
    now = time.time() if now is None else now
    relative = stage_relative_path(request.raw_path, stage)
    if relative is None:
        raise ValueError(f"{request.raw_path} is not under the /{stage}/ stage")
    split = urlsplit(request.raw_path)
    path = unquote(relative)
    headers, multi_headers = _headers(request)
    query, multi_query = _query(split.query)
    body, is_base64 = _body(request.body)
    host = headers.get("host", "localhost")
    return {
        "version": "1.0",
        "resource": PROXY_RESOURCE,
        "path": f"/{stage}{path}",
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "ANY /{proxy+}",
            "resourcePath": PROXY_RESOURCE,
            "httpMethod": request.method,
            "extendedRequestId": request_id,
            "requestTime": datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": f"/{stage}{path}",
            "accountId": account_id,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": host.split(".", 1)[0],
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "sourceIp": request.source_ip,
                "user": None,
                "userAgent": headers.get("user-agent"),
                "userArn": None,
            },
            "domainName": host,
            "apiId": api_id,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def _headers(request: HttpRequest) -> tuple[dict[str, str], dict[str, list[str]]]:
    # API Gateway adds the forwarding headers a load balancer would; an HTTP API passes
    # header names in lower case.
    received = [
        *request.headers,
        ("X-Forwarded-For", request.source_ip),
        ("X-Forwarded-Proto", "http"),
    ]
    multi: dict[str, list[str]] = {}
    for name, value in received:
        multi.setdefault(name.lower(), []).append(value)
    single = {name: values[-1] for name, values in multi.items()}
    return single, multi


def _query(query: str) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    if not query:
        return None, None
    multi: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        multi.setdefault(name, []).append(value)
    if not multi:
        return None, None
    return {name: values[-1] for name, values in multi.items()}, multi


def _body(raw: bytes) -> tuple[str | None, bool]:
    if not raw:
        return None, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True


class MalformedProxyResponseError(ValueError):
    """The function returned something API Gateway would answer with a 502."""


# Set by the HTTP server itself; a function's values would contradict the real body.
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def proxy_response_to_http(result: Any, request_id: str) -> HttpResponse:
    """A Lambda proxy result -> the HTTP response API Gateway sends back."""
    if not isinstance(result, Mapping) or "statusCode" not in result:
        raise MalformedProxyResponseError("the result has no statusCode")
    try:
        status = int(result["statusCode"])
    except (TypeError, ValueError) as exc:
        raise MalformedProxyResponseError(f"statusCode {result['statusCode']!r}") from exc
    body = result.get("body") or ""
    if not isinstance(body, str):
        raise MalformedProxyResponseError("body must be a string")
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    headers = _response_headers(result.get("headers"), result.get("multiValueHeaders"))
    headers.append(("x-amzn-RequestId", request_id))
    return HttpResponse(status=status, headers=headers, body=payload)


def _response_headers(single: Any, multi: Any) -> list[tuple[str, str]]:
    # Like API Gateway: multiValueHeaders and headers are merged; a name in both keeps the
    # multi-value list.
    merged: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, values in (multi or {}).items():
        seen.add(name.lower())
        merged.extend((name, str(v)) for v in values)
    for name, value in (single or {}).items():
        if name.lower() not in seen:
            merged.append((name, str(value)))
    return [(n, v) for n, v in merged if n.lower() not in _HOP_BY_HOP]


def error_response(status: int, message: str, request_id: str) -> HttpResponse:
    body = json.dumps({"message": message}).encode("utf-8")
    headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", request_id)]
    return HttpResponse(status=status, headers=headers, body=body)


# ------------------------------------------------------------------------ SQS


def build_sqs_event(
    messages: Iterable[Mapping[str, Any]], *, queue_arn: str, region: str
) -> dict[str, Any]:
    """An SQS event-source event from ReceiveMessage results (AttributeNames=All)."""
    return {"Records": [sqs_record(m, queue_arn=queue_arn, region=region) for m in messages]}


def sqs_record(message: Mapping[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _lambda_message_attribute(value)
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody")
        or hashlib.md5(  # noqa: S324 - SQS's own checksum
            message["Body"].encode("utf-8")
        ).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """ReceiveMessage's attribute shape -> Lambda's (camelCase, binary as base64)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    attribute: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [b64(v) for v in value.get("BinaryListValues", [])],
        "dataType": value["DataType"],
    }
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = b64(value["BinaryValue"])
    return attribute


# ----------------------------------------------------------------- EventBridge


def build_scheduled_event(
    *, rule_arn: str, region: str, account_id: str, now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account_id,
        "time": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


# --------------------------------------------------------------------- Lambda


@dataclass
class LambdaContext:
    """The attributes and method of the Lambda runtime's context object."""

    function_name: str
    region: str
    account_id: str
    memory_limit_in_mb: int = 512
    timeout_s: float = 30.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    started_at: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"local/[$LATEST]{self.aws_request_id.replace('-', '')}"

    def get_remaining_time_in_millis(self) -> int:
        elapsed = time.monotonic() - self.started_at
        return max(0, int((self.timeout_s - elapsed) * 1000))
