"""API Gateway Management API implementation of the AgentNotifier port (the push channel)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError


class ApiGatewayNotifier:
    """Posts to WebSocket connections with ``apigatewaymanagementapi.post_to_connection``.

    The client's endpoint is the WebSocket API's stage URL over https
    (``https://<api-id>.execute-api.<region>.amazonaws.com/<stage>``); the caller needs
    ``execute-api:ManageConnections`` on ``<api>/<stage>/POST/@connections/*``.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def send(self, connection_id: str, message: Mapping[str, Any]) -> bool:
        data = json.dumps(message, separators=(",", ":")).encode("utf-8")
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=data)
        except ClientError as error:
            if _is_gone(error):
                return False
            raise
        return True


def _is_gone(error: ClientError) -> bool:
    response = error.response
    code = response.get("Error", {}).get("Code", "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code == "GoneException" or status == 410
