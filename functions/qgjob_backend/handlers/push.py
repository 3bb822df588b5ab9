"""Push Lambda: the routes of the WebSocket API agents connect to ($connect, $disconnect,
$default). Parses the API Gateway WebSocket event, calls PushService, maps errors.

A non-2xx answer to ``$connect`` makes API Gateway refuse the connection with that status.
``$default`` answers any message with a pong (its route has a route response): agents
ping every few minutes, which keeps the connection inside API Gateway's 10-minute idle
timeout and shows them it is alive.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from qgjob_backend.agent_protocol import parse_credential
from qgjob_backend.services.agents import AgentCredential
from qgjob_backend.services.errors import ServiceError
from qgjob_backend.wiring import LazyServices

logger = Logger()
services = LazyServices()

PONG = json.dumps({"type": "pong"})


def _answer(status: int, body: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"statusCode": status}
    if body is not None:
        answer["body"] = body
    return answer


def _credential(event: dict[str, Any]) -> AgentCredential | None:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    parsed = parse_credential(token.strip()) if scheme.lower() == "bearer" else None
    return AgentCredential(*parsed) if parsed else None


def _connect(event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    credential = _credential(event)
    if credential is None:
        return _answer(401, "an agent credential is required: Authorization: Bearer qgja....")
    try:
        services().push.connect(credential, connection_id)
    except ServiceError as error:
        logger.info("push connection refused", extra={"reason": error.message})
        return _answer(error.status_code, error.message)
    return _answer(200)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = event.get("requestContext") or {}
    route = request.get("routeKey")
    connection_id = str(request.get("connectionId") or "")
    if not connection_id:
        return _answer(400, "not an API Gateway WebSocket event")
    try:
        if route == "$connect":
            return _connect(event, connection_id)
        if route == "$disconnect":
            services().push.disconnect(connection_id)
            return _answer(200)
    except (ClientError, BotoCoreError):
        logger.exception("AWS call failed", extra={"route": route})
        return _answer(503, "temporarily unavailable; reconnect shortly")
    return _answer(200, PONG)  # $default: any message
