"""moto's server on a thread, with DynamoDB requests made atomic.

DynamoDB applies each conditional write and each transaction atomically; qgjob's
correctness rests on that (an agent gets one batch, a job sits in one batch). moto's
threaded server does not: it checks conditions and writes without a lock, and a failed
TransactWriteItems restores a deep copy of every table it touched, taken when it began,
wiping out whatever other requests wrote meanwhile. The stack's functions run
concurrently (api, dispatcher and reaper, like separate Lambdas), so this module runs
DynamoDB requests one at a time. SQS and S3 requests stay concurrent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from infra.serving import ServerThread

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
DYNAMODB_TARGET_PREFIX = "DynamoDB_"  # X-Amz-Target of every DynamoDB API call


class SerializedDynamoDB:
    """WSGI middleware: one DynamoDB request at a time, everything else passes through."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(DYNAMODB_TARGET_PREFIX):
            return self._app(environ, start_response)
        with self._lock:
            # The body is produced inside the lock: the work may happen while it is read.
            return list(self._app(environ, start_response))


class MotoServer:
    """moto's full server (every service) on ``host``, a free port by default."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = SerializedDynamoDB(DomainDispatcherApplication(create_backend_app))
        server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=MotoRequestHandler
        )
        self._serving = ServerThread(server, "moto-server")

    @property
    def endpoint(self) -> str:
        return self._serving.base_url

    def start(self) -> None:
        self._serving.start()

    def stop(self) -> None:
        self._serving.stop()
