"""API Gateway's WebSocket API, locally: the push channel of template.yaml on two ports.

- A WebSocket server (``websockets.sync.server``) at ``ws://127.0.0.1:<port>/<stage>``
  that behaves like the stage of the template's ``AWS::ApiGatewayV2::Api`` (WEBSOCKET):
  the upgrade request runs the ``$connect`` route (a non-2xx answer refuses it with that
  status), each message runs the route its ``RouteSelectionExpression``
  (``$request.body.action``) picks, else ``$default`` (and a two-way route's answer is
  sent back), and a closed connection runs ``$disconnect``. The events have API Gateway's
  shapes: ``requestContext.routeKey / eventType / connectionId / domainName / stage``,
  the headers on CONNECT. Connections are closed after API Gateway's idle timeout
  (10 minutes) and at its maximum duration (2 hours), both configurable.
- An HTTP server emulating the API Gateway Management API, the endpoint botocore's
  ``apigatewaymanagementapi`` client is pointed at (``http://127.0.0.1:<port>/<stage>``):
  ``POST /<stage>/@connections/{id}`` sends the body to that socket, ``DELETE`` closes it,
  ``GET`` describes it; an unknown id is ``410 GoneException``.

Routes, integrations, route responses and the stage name are read from template.yaml
(`websocket_api`); the functions are the local stack's `LambdaFunction`s.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from infra.runtime import HOST, InvocationSkippedError, LambdaFunction
from infra.serving import ServerThread
from infra.template import LocalTemplate, TemplateError

log = logging.getLogger("qgjob.local")

WEBSOCKET_API_TYPE = "AWS::ApiGatewayV2::Api"
ROUTE_TYPE = "AWS::ApiGatewayV2::Route"
INTEGRATION_TYPE = "AWS::ApiGatewayV2::Integration"
ROUTE_RESPONSE_TYPE = "AWS::ApiGatewayV2::RouteResponse"
STAGE_TYPE = "AWS::ApiGatewayV2::Stage"

# API Gateway's WebSocket limits (https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html).
IDLE_TIMEOUT_S = 10 * 60
MAX_CONNECTION_S = 2 * 60 * 60
MAX_MESSAGE_BYTES = 128 * 1024
# The close code API Gateway sends when it ends a connection (idle, too old, deleted).
GOING_AWAY = 1001


# ------------------------------------------------------------------ the template


@dataclass(frozen=True)
class WebSocketApiSpec:
    """What the local gateway needs of the template's WebSocket API."""

    logical_id: str
    stage: str
    route_selection_expression: str
    # route key ($connect, $disconnect, $default, or an action) -> function logical id
    routes: Mapping[str, str]
    # routes with a route response: the integration's answer goes back to the client
    two_way: frozenset[str] = field(default_factory=frozenset)


def _ref(value: Any) -> str | None:
    return str(value["Ref"]) if isinstance(value, dict) and "Ref" in value else None


def _sub_text(value: Any) -> str:
    if isinstance(value, dict) and "Fn::Sub" in value:
        arg = value["Fn::Sub"]
        return str(arg if isinstance(arg, str) else arg[0])
    return str(value)


def websocket_api(template: LocalTemplate) -> WebSocketApiSpec | None:
    """The template's WebSocket API (None when it has none)."""
    apis = [
        logical_id
        for logical_id in template.logical_ids(WEBSOCKET_API_TYPE)
        if template.properties(logical_id).get("ProtocolType") == "WEBSOCKET"
    ]
    if not apis:
        return None
    if len(apis) > 1:
        raise TemplateError(f"the local stack runs one WebSocket API, found {apis}")
    api = apis[0]

    def of_api(resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            lid: template.properties(lid)
            for lid in template.logical_ids(resource_type)
            if _ref(template.properties(lid).get("ApiId")) == api
        }

    functions: dict[str, str] = {}
    for logical_id, props in of_api(INTEGRATION_TYPE).items():
        if props.get("IntegrationType") != "AWS_PROXY":
            raise TemplateError(f"{logical_id}: only AWS_PROXY (Lambda) integrations run locally")
        match = re.search(
            r"/functions/\$\{(\w+)\.Arn\}/invocations", _sub_text(props["IntegrationUri"])
        )
        if match is None:
            raise TemplateError(f"{logical_id}: IntegrationUri names no function of the template")
        functions[logical_id] = match.group(1)
    routes: dict[str, str] = {}
    route_ids: dict[str, str] = {}
    for logical_id, props in of_api(ROUTE_TYPE).items():
        target = re.fullmatch(r"integrations/\$\{(\w+)\}", _sub_text(props.get("Target", "")))
        if target is None or target.group(1) not in functions:
            raise TemplateError(f"{logical_id}: Target is not one of the API's integrations")
        routes[str(props["RouteKey"])] = functions[target.group(1)]
        route_ids[logical_id] = str(props["RouteKey"])
    two_way = frozenset(
        route_ids[route]
        for props in of_api(ROUTE_RESPONSE_TYPE).values()
        if (route := _ref(props.get("RouteId"))) in route_ids
    )
    stages = [str(template.resolve(props["StageName"])) for props in of_api(STAGE_TYPE).values()]
    if len(stages) != 1:
        raise TemplateError(f"{api}: the local stack needs exactly one stage, found {stages}")
    return WebSocketApiSpec(
        logical_id=api,
        stage=stages[0],
        route_selection_expression=str(
            template.properties(api).get("RouteSelectionExpression", "$request.body.action")
        ),
        routes=routes,
        two_way=two_way,
    )


# ------------------------------------------------------------------ the events


def _now_ms() -> int:
    return int(time.time() * 1000)


def _request_time(epoch_ms: int) -> str:
    # API Gateway's format: 09/Apr/2015:12:34:56 +0000
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def _new_connection_id() -> str:
    # The shape of API Gateway's ids (base64, e.g. "L0SM9cOFvHcCIhw="): the '=' has to be
    # URL-encoded in a Management API path, as it is in AWS.
    return base64.b64encode(secrets.token_bytes(10)).decode("ascii")


@dataclass
class _Connection:
    connection_id: str
    socket: ServerConnection | None
    connected_at_ms: int
    source_ip: str
    user_agent: str
    last_active_ms: int = 0


class WebSocketGateway:
    """The WebSocket API's stage and its Management API, each on a local port."""

    def __init__(
        self,
        spec: WebSocketApiSpec,
        functions: Mapping[str, LambdaFunction],
        *,
        account_id: str,
        port: int = 0,
        management_port: int = 0,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connection_s: float = MAX_CONNECTION_S,
    ) -> None:
        missing = sorted(set(spec.routes.values()) - set(functions))
        if missing:
            raise TemplateError(f"the WebSocket routes need functions {missing}")
        self.spec = spec
        self._functions = functions
        self._account_id = account_id
        self._api_id = "ws" + uuid.uuid4().hex[:8]
        self._idle_timeout_s = idle_timeout_s
        self._max_connection_s = max_connection_s
        self._lock = threading.Lock()
        self._connections: dict[str, _Connection] = {}  # open ones, by id
        # Accepted by $connect, handshake under way (keyed by the socket object's id).
        self._pending: dict[int, _Connection] = {}
        self._server: Server = serve(
            self._serve_connection,
            HOST,
            port,
            process_request=self._on_upgrade,
            compression=None,
            # API Gateway does not ping; clients keep their connections alive themselves.
            ping_interval=None,
            max_size=MAX_MESSAGE_BYTES,
            server_header="qgjob-local-apigw-websocket",
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="websocket-gateway", daemon=True
        )
        management = _ManagementServer((HOST, management_port), _ManagementHandler)
        management.gateway = self
        self._management = ServerThread(management, "websocket-management-api")

    # ---- addresses

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    @property
    def domain_name(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """What agents connect to (``wss://<api>.execute-api.<region>.amazonaws.com/<stage>``)."""
        return f"ws://{self.domain_name}/{self.spec.stage}"

    @property
    def management_endpoint(self) -> str:
        """The Management API endpoint (``https://<api>.execute-api…/<stage>`` in AWS)."""
        return f"{self._management.base_url}/{self.spec.stage}"

    def connection_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._connections)

    # ---- lifecycle

    def start(self) -> None:
        self._thread.start()
        self._management.start()

    def stop(self) -> None:
        """Closes every connection (each runs $disconnect) and both servers."""
        self._management.stop()
        self._server.shutdown()
        self._thread.join(timeout=5)

    # ---- routes

    def _invoke(self, route: str, event: dict[str, Any]) -> Any:
        function = self._functions[self.spec.routes[route]]
        return function.invoke(event)

    def _context(self, route: str, event_type: str, connection: _Connection) -> dict[str, Any]:
        now = _now_ms()
        return {
            "routeKey": route,
            "eventType": event_type,
            "messageDirection": "IN",
            "extendedRequestId": uuid.uuid4().hex[:16],
            "requestTime": _request_time(now),
            "requestTimeEpoch": now,
            "stage": self.spec.stage,
            "connectedAt": connection.connected_at_ms,
            "identity": {"sourceIp": connection.source_ip, "userAgent": connection.user_agent},
            "requestId": uuid.uuid4().hex[:16],
            "domainName": self.domain_name,
            "connectionId": connection.connection_id,
            "apiId": self._api_id,
        }

    def _on_upgrade(self, socket: ServerConnection, request: Request) -> Response | None:
        """The upgrade request: the $connect route decides whether the connection opens."""
        path, _, query = request.path.partition("?")
        if path.rstrip("/") != f"/{self.spec.stage}":
            return socket.respond(403, "Forbidden\n")
        headers: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in request.headers.raw_items():
            headers[name] = value if name not in headers else f"{headers[name]},{value}"
            multi.setdefault(name, []).append(value)
        source_ip = str(socket.remote_address[0]) if socket.remote_address else HOST
        headers.setdefault("X-Forwarded-For", source_ip)
        connection = _Connection(
            connection_id=_new_connection_id(),
            socket=None,
            connected_at_ms=_now_ms(),
            source_ip=source_ip,
            user_agent=request.headers.get("User-Agent", ""),
        )
        socket_id = id(socket)
        if "$connect" in self.spec.routes:
            params = dict(parse_qsl(query, keep_blank_values=True)) or None
            event = {
                "headers": headers,
                "multiValueHeaders": multi,
                "queryStringParameters": params,
                "requestContext": self._context("$connect", "CONNECT", connection),
                "isBase64Encoded": False,
            }
            try:
                result = self._invoke("$connect", event)
            except InvocationSkippedError:
                return socket.respond(503, "Service Unavailable\n")
            except Exception:
                log.exception("push $connect failed")
                return socket.respond(500, "Internal server error\n")
            status = _status_of(result)
            if not 200 <= status < 300:
                return socket.respond(status, _body_of(result) or "Forbidden\n")
        with self._lock:
            self._pending[socket_id] = connection
        return None

    def _serve_connection(self, socket: ServerConnection) -> None:
        with self._lock:
            connection = self._pending.pop(id(socket))
            connection.socket = socket
            connection.last_active_ms = _now_ms()
            self._connections[connection.connection_id] = connection
        started = time.monotonic()
        code, reason = 1000, "Client closed"
        try:
            while True:
                idle_left = self._idle_timeout_s - (time.time() - connection.last_active_ms / 1000)
                life_left = self._max_connection_s - (time.monotonic() - started)
                timeout = min(idle_left, life_left)
                if timeout <= 0:
                    code, reason = GOING_AWAY, "Going away"
                    socket.close(GOING_AWAY, "Going away")
                    break
                try:
                    message = socket.recv(timeout=timeout)
                except TimeoutError:
                    continue
                connection.last_active_ms = _now_ms()
                self._on_message(connection, message)
        except ConnectionClosed as closed:
            received = closed.rcvd
            code = received.code if received is not None else 1006
            reason = received.reason if received is not None else "Connection closed abnormally"
        finally:
            with self._lock:
                self._connections.pop(connection.connection_id, None)
            self._on_disconnect(connection, code, reason)

    def _route_of(self, message: str | bytes) -> str:
        expression = self.spec.route_selection_expression
        field_match = re.fullmatch(r"\$request\.body\.(\w+)", expression)
        if field_match is not None and isinstance(message, str):
            try:
                body = json.loads(message)
            except ValueError:
                body = None
            key = body.get(field_match.group(1)) if isinstance(body, dict) else None
            if isinstance(key, str) and key in self.spec.routes and not key.startswith("$"):
                return key
        return "$default"

    def _on_message(self, connection: _Connection, message: str | bytes) -> None:
        route = self._route_of(message)
        if route not in self.spec.routes:
            return  # no $default route: API Gateway drops the message
        binary = isinstance(message, bytes)
        text = base64.b64encode(message).decode() if isinstance(message, bytes) else message
        event = {
            "requestContext": {
                **self._context(route, "MESSAGE", connection),
                "messageId": uuid.uuid4().hex[:16],
            },
            "body": text,
            "isBase64Encoded": binary,
        }
        try:
            result = self._invoke(route, event)
        except InvocationSkippedError:
            return
        except Exception:
            log.exception("push %s failed", route)
            if route in self.spec.two_way and connection.socket is not None:
                error = {
                    "message": "Internal server error",
                    "connectionId": connection.connection_id,
                }
                connection.socket.send(json.dumps(error))
            return
        body = _body_of(result)
        if route in self.spec.two_way and body and connection.socket is not None:
            connection.socket.send(body)

    def _on_disconnect(self, connection: _Connection, code: int, reason: str) -> None:
        if "$disconnect" not in self.spec.routes:
            return
        event = {
            "headers": {"Host": self.domain_name, "X-Forwarded-For": connection.source_ip},
            "multiValueHeaders": {
                "Host": [self.domain_name],
                "X-Forwarded-For": [connection.source_ip],
            },
            "requestContext": {
                **self._context("$disconnect", "DISCONNECT", connection),
                "disconnectStatusCode": code,
                "disconnectReason": reason,
            },
            "isBase64Encoded": False,
        }
        try:
            self._invoke("$disconnect", event)
        except InvocationSkippedError:
            pass  # the stack is stopping
        except Exception:
            log.exception("push $disconnect failed")

    # ---- the Management API

    def post(self, connection_id: str, data: bytes) -> bool:
        """Sends ``data`` to the connection (a text frame when it is UTF-8); False: gone."""
        with self._lock:
            connection = self._connections.get(connection_id)
        if connection is None or connection.socket is None:
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            payload: str | bytes = data
        else:
            payload = text
        try:
            connection.socket.send(payload)
        except ConnectionClosed:
            return False
        return True

    def delete(self, connection_id: str) -> bool:
        with self._lock:
            connection = self._connections.get(connection_id)
        if connection is None or connection.socket is None:
            return False
        connection.socket.close(GOING_AWAY, "Going away")
        return True

    def describe(self, connection_id: str) -> dict[str, Any] | None:
        with self._lock:
            connection = self._connections.get(connection_id)
        if connection is None:
            return None

        def iso(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")

        return {
            "connectedAt": iso(connection.connected_at_ms),
            "lastActiveAt": iso(connection.last_active_ms or connection.connected_at_ms),
            "identity": {"sourceIp": connection.source_ip, "userAgent": connection.user_agent},
        }


def _status_of(result: Any) -> int:
    if isinstance(result, Mapping):
        try:
            return int(result.get("statusCode", 200))
        except (TypeError, ValueError):
            return 502
    return 200  # a function that returns nothing accepts


def _body_of(result: Any) -> str | None:
    if isinstance(result, Mapping) and result.get("body") is not None:
        return str(result["body"])
    return None


# -------------------------------------------------------------- Management API


class _ManagementServer(ThreadingHTTPServer):
    daemon_threads = True
    gateway: WebSocketGateway


class _ManagementHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qgjob-local-apigw-management"

    def _connection_id(self) -> str | None:
        gateway: WebSocketGateway = self.server.gateway  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        prefix = f"/{gateway.spec.stage}/@connections/"
        if not path.startswith(prefix) or len(path) == len(prefix):
            return None
        return unquote(path[len(prefix) :])

    def _answer(self, status: int, body: Any = None, error_type: str | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Date", formatdate(usegmt=True))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if error_type is not None:
            self.send_header("x-amzn-ErrorType", error_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _gone(self) -> None:
        self._answer(410, {"message": None}, "GoneException")

    def _serve(self, action: str) -> None:
        gateway: WebSocketGateway = self.server.gateway  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        connection_id = self._connection_id()
        if connection_id is None:
            self._answer(403, {"message": "Missing Authentication Token"}, "ForbiddenException")
            return
        if action == "post":
            if len(data) > MAX_MESSAGE_BYTES:
                self._answer(413, {"message": "Payload too large"}, "PayloadTooLargeException")
            elif gateway.post(connection_id, data):
                self._answer(200)
            else:
                self._gone()
        elif action == "delete":
            if gateway.delete(connection_id):
                self._answer(204)
            else:
                self._gone()
        else:
            description = gateway.describe(connection_id)
            if description is None:
                self._gone()
            else:
                self._answer(200, description)

    def do_POST(self) -> None:
        self._serve("post")

    def do_DELETE(self) -> None:
        self._serve("delete")

    def do_GET(self) -> None:
        self._serve("get")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("management api %s - %s", self.client_address[0], format % args)
