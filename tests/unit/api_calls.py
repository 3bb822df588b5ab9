"""One API request through the real handler, in process, with the services a test built."""

from __future__ import annotations

import json
import uuid
from typing import Any

from infra.events import HttpRequest, LambdaContext, build_proxy_event
from qgjob_backend.handlers import api
from qgjob_backend.wiring import Services


def api_get(services: Services, token: str, path: str) -> tuple[int, dict[str, Any]]:
    """GET ``path`` (under the /v1 stage) with ``token``: the status and the JSON body."""
    event = build_proxy_event(
        HttpRequest(
            "GET",
            f"/v1{path}",
            [("Host", "localhost"), ("Authorization", f"Bearer {token}")],
            b"",
            "127.0.0.1",
        ),
        stage="v1",
        request_id=str(uuid.uuid4()),
        account_id="123456789012",
        api_id="local",
    )
    api.services.use(services)
    try:
        result = api.lambda_handler(event, LambdaContext("ApiFunction", "us-east-1", "1"))
    finally:
        api.services.use(None)
    return result["statusCode"], json.loads(result["body"])
