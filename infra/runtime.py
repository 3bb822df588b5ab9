"""The AWS side of running Lambda functions locally: invocation, API Gateway, SQS, schedules.

- `LambdaFunction`: a handler invoked with a Lambda context, up to its concurrency at a
  time (one by default); a waiting invocation is skipped when its caller left or the stack
  is stopping.
- `ApiGatewayShim`: a threaded HTTP server behaving like the HTTP API's ``ANY /{proxy+}``
  route (payload version 1.0 events in, proxy results out, 404/413/500/503 like API
  Gateway).
- `SqsEventSource`: Lambda's SQS event-source mapping with ReportBatchItemFailures.
- `Schedule`: an EventBridge rule invoking a function with Scheduled Events.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import importlib
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infra import events
from infra.serving import ServerThread

log = logging.getLogger("qgjob.local")

HOST = "127.0.0.1"
# API Gateway rejects payloads above 10 MB before the function sees them.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024

# The methods an ``ANY`` route stands for. A request with any other method (TRACE,
# PROPFIND, CONNECT, a made-up one), or outside the stage, matches no route of the HTTP
# API, which answers 404 {"message": "Not Found"} without invoking the function.
ANY_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"})

Handler = Callable[[dict[str, Any], Any], Any]


def _never() -> bool:
    return False


# ------------------------------------------------------------------- functions


class InvocationSkippedError(Exception):
    """An invocation was never run (nothing of it happened)."""


class CallerGoneError(InvocationSkippedError):
    """The caller left while the invocation waited for its turn."""


class ShuttingDownError(InvocationSkippedError):
    """The stack is stopping: invocations still waiting are dropped."""


class LambdaFunction:
    """One function of the template, invoked in-process with a Lambda context.

    ``concurrency`` invocations run at once, on their callers' threads, like that many
    Lambda containers; the others wait their turn. The handlers keep per-invocation state
    on module-level objects (as one container may): with more than one, that state is made
    per thread first (`isolate_resolver_state`). The default, 1, runs one at a time.
    """

    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        timeout_s: float,
        memory_mb: int,
        region: str,
        account_id: str,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if concurrency > 1:
            isolate_resolver_state()
        self.name = name
        self.concurrency = concurrency
        self._handler = handler
        self._timeout_s = timeout_s
        self._memory_mb = memory_mb
        self._region = region
        self._account_id = account_id
        self._slots = threading.BoundedSemaphore(concurrency)
        # Bumped by drop_waiting(): an invocation that began waiting before is skipped.
        self._generation = 0
        self._stopped = False
        self._cold = True  # the first invocation of this function is its cold start

    def invoke(self, event: dict[str, Any], *, caller_gone: Callable[[], bool] = _never) -> Any:
        """Runs the handler once it is this call's turn.

        Raises `InvocationSkippedError` instead when, at its turn, ``caller_gone()`` is true
        or the function was stopped: under load hundreds of calls wait here, and running
        them for callers that left, or while the stack stops, only delays everything else.
        """
        generation = self._generation
        with self._slots:
            if self._stopped or generation != self._generation:
                raise ShuttingDownError(self.name)
            if caller_gone():
                raise CallerGoneError(self.name)
            context = events.LambdaContext(
                function_name=self.name,
                region=self._region,
                account_id=self._account_id,
                memory_limit_in_mb=self._memory_mb,
                timeout_s=self._timeout_s,
            )
            cold_start, self._cold = self._cold, False
            with invocation_log_keys(context, cold_start=cold_start):
                return self._handler(event, context)

    def drop_waiting(self) -> None:
        """Skips every invocation waiting for its turn now; later ones still run."""
        self._generation += 1

    def stop(self) -> None:
        """Skips every invocation that has not started, now and from now on."""
        self._stopped = True
        self.drop_waiting()


@contextlib.contextmanager
def invocation_log_keys(context: events.LambdaContext, *, cold_start: bool) -> Iterator[None]:
    """Log lines of this invocation name its own function, whatever runs beside it.

    Powertools' ``inject_lambda_context`` appends function_name and the other context keys
    to one formatter that every handler in this process shares: with the api, dispatcher
    and reaper running at once, a line would carry whichever function started last. Its
    thread-local keys win over the shared ones, and an invocation runs on one thread: they
    are set here for the invocation and cleared after it (with anything else the handler
    put there, such as its correlation id). In Lambda one process is one function.
    """
    from aws_lambda_powertools.logging.formatter import clear_context_keys, set_context_keys

    keys: dict[str, Any] = {
        "function_name": context.function_name,
        "function_memory_size": context.memory_limit_in_mb,
        "function_arn": context.invoked_function_arn,
        "function_request_id": context.aws_request_id,
        "cold_start": cold_start,
    }
    clear_context_keys()
    set_context_keys(**keys)
    try:
        yield
    finally:
        clear_context_keys()


# The request state Powertools keeps on a REST resolver (and on its BaseRouter class) while
# it resolves one event; its HttpResolverLocal keeps the same four per request (ContextVar).
RESOLVER_REQUEST_STATE = ("current_event", "lambda_context", "context", "processed_stack_frames")


class ResolverStateError(RuntimeError):
    """Powertools keeps request state this module does not know of: review the patch."""


@dataclass
class _RequestState:
    current_event: Any = None
    lambda_context: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    processed_stack_frames: list[str] = field(default_factory=list)


_resolver_state = threading.local()
_isolate_lock = threading.Lock()


def _request_state() -> _RequestState:
    state: _RequestState | None = getattr(_resolver_state, "state", None)
    if state is None:
        state = _resolver_state.state = _RequestState()
    return state


def isolate_resolver_state() -> None:
    """Makes the request state of Powertools' API Gateway resolvers per thread (idempotent).

    A resolver keeps the event it is resolving on its class (``BaseRouter.current_event``)
    and its context dict on the instance: two invocations on two threads would read each
    other's. Like Powertools' own HttpResolverLocal (per asyncio task), each attribute of
    RESOLVER_REQUEST_STATE becomes a property backed by per-thread state, and ``resolve``
    puts the event and Lambda context there. Raises ResolverStateError when Powertools'
    per-request state is not those four attributes any more.
    """
    from aws_lambda_powertools.event_handler import api_gateway
    from aws_lambda_powertools.event_handler.http_resolver import HttpResolverLocal
    from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

    resolver: Any = api_gateway.ApiGatewayResolver
    with _isolate_lock:
        if getattr(resolver, "qgjob_thread_local", False):
            return
        known = {n for n, v in vars(HttpResolverLocal).items() if isinstance(v, property)}
        if known - {"_state"} != set(RESOLVER_REQUEST_STATE):
            raise ResolverStateError(
                f"Powertools' per-request resolver state is now {sorted(known)}; "
                "review infra.runtime.isolate_resolver_state"
            )
        for name in RESOLVER_REQUEST_STATE:
            setattr(resolver, name, _state_property(name))
        original_resolve = resolver.resolve

        @functools.wraps(original_resolve)
        def resolve(self: Any, event: Any, context: Any) -> Any:
            raw = event.raw_event if isinstance(event, BaseProxyEvent) else event
            state = _request_state()
            state.current_event = self._to_proxy_event(raw)
            state.lambda_context = context
            return original_resolve(self, event, context)

        resolver.resolve = resolve
        resolver.qgjob_thread_local = True


def _state_property(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(_request_state(), name)

    def set_(self: Any, value: Any) -> None:
        setattr(_request_state(), name, value)

    return property(get, set_, doc=f"Powertools' {name}, per thread (see isolate_resolver_state)")


def import_handler(dotted: str) -> Handler:
    """``package.module.function`` (a template Handler) -> the function."""
    module_name, _, attribute = dotted.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module_name), attribute)
    return handler


# ------------------------------------------------------------ API Gateway shim


class ApiGatewayShim:
    """A threaded HTTP server that behaves like the REST API's ``/{proxy+}`` resource."""

    def __init__(self, function: LambdaFunction, *, stage: str, port: int, account_id: str) -> None:
        self._function = function
        self.stage = stage
        self._account_id = account_id
        self._api_id = "local" + uuid.uuid4().hex[:6]
        self._server = _ShimServer((HOST, port), _ProxyRequestHandler)
        self._server.shim = self
        self._serving = ServerThread(self._server, "api-gateway")

    @property
    def url(self) -> str:
        return f"{self._serving.base_url}/{self.stage}"

    def start(self) -> None:
        self._serving.start()

    def drop_waiting(self) -> None:
        """Answers 503 to every request still waiting for the function (the stack stops)."""
        self._function.drop_waiting()

    def stop(self) -> None:
        """Stops accepting and drops waiting requests; never waits for request threads."""
        self._function.stop()
        self._serving.stop()

    def handle(
        self, request: events.HttpRequest, *, client_gone: Callable[[], bool] = _never
    ) -> events.HttpResponse | None:
        """The response API Gateway would send; None when the client left before its turn
        (the request was not run, and there is no one to answer)."""
        request_id = str(uuid.uuid4())
        if (
            request.method not in ANY_METHODS
            or events.stage_relative_path(request.raw_path, self.stage) is None
        ):
            # What an HTTP API answers when no route matches (see ANY_METHODS).
            return events.error_response(404, "Not Found", request_id)
        event = events.build_proxy_event(
            request,
            stage=self.stage,
            request_id=request_id,
            account_id=self._account_id,
            api_id=self._api_id,
        )
        try:
            result = self._function.invoke(event, caller_gone=client_gone)
            return events.proxy_response_to_http(result, request_id)
        except CallerGoneError:
            log.warning("%s %s: the client left before it was run; skipped", *_line(request))
            return None
        except ShuttingDownError:
            return events.error_response(503, "Service Unavailable", request_id)
        except Exception:
            # A crashed or malformed function is a 500 at an HTTP API; the log has the trace.
            log.exception("%s %s: the api function failed", request.method, request.raw_path)
            return events.error_response(500, "Internal Server Error", request_id)


def _line(request: events.HttpRequest) -> tuple[str, str]:
    return request.method, request.raw_path.split("?", 1)[0]


class _ShimServer(ThreadingHTTPServer):
    daemon_threads = True
    # A burst of clients waits in the listen queue instead of being refused.
    request_queue_size = 128
    shim: ApiGatewayShim

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for every error; a client that hung up
        # (BrokenPipe, ConnectionReset) is routine under load and worth one line.
        error = sys.exception()
        if isinstance(error, ConnectionError):
            log.warning("api %s: the client went away (%s)", client_address[0], _name(error))
        else:
            log.error("api %s: the request failed", client_address[0], exc_info=error)


def _name(error: BaseException) -> str:
    return type(error).__name__


class _ProxyRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients reuse connections
    server_version = "qgjob-local-apigw"

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler answers 501 for a method without a do_<METHOD>. API
        # Gateway answers every method, so every method goes to _serve and the shim
        # decides (404 for a method `ANY` does not cover).
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        shim: ApiGatewayShim = self.server.shim  # type: ignore[attr-defined]
        response: events.HttpResponse | None
        try:
            body = self._read_body()
        except _PayloadTooLargeError:
            response = events.error_response(413, "Request Entity Too Large", str(uuid.uuid4()))
            self.close_connection = True
        else:
            request = events.HttpRequest(
                method=self.command,
                raw_path=self.path,
                headers=list(self.headers.items()),
                body=body,
                source_ip=self.client_address[0],
            )
            response = shim.handle(request, client_gone=self._client_gone)
        if response is None:
            self.close_connection = True
            return
        self._write(response)

    def _client_gone(self) -> bool:
        """True once the client closed its end: the socket reads EOF (or is reset).

        A peek without waiting: data (a pipelined request) or nothing yet means the client
        is still there.
        """
        connection: socket.socket = self.connection
        try:
            return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD_BYTES:
            raise _PayloadTooLargeError
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()  # the blank line after the last chunk
                return b"".join(chunks)
            total += size
            if total > MAX_PAYLOAD_BYTES:
                raise _PayloadTooLargeError
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _write(self, response: events.HttpResponse) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except ConnectionError as error:
            # The client gave up after its request ran: one line, no traceback.
            log.warning(
                "%s %s: the client went away before the response (%s)",
                self.command,
                self.path.split("?", 1)[0],
                _name(error),
            )
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api %s - %s", self.client_address[0], format % args)


class _PayloadTooLargeError(Exception):
    pass


# ------------------------------------------------------------ SQS event source


class SqsEventSource:
    """Polls a queue like Lambda's SQS event-source mapping and invokes a function.

    Successes are deleted; ``batchItemFailures`` are made visible again after a short
    backoff (instead of the queue's 6-minute VisibilityTimeout, so local retries are quick).
    When the function raises, nothing is deleted and the whole batch comes back the same way.
    """

    def __init__(
        self,
        function: LambdaFunction,
        sqs: Any,
        *,
        queue_url: str,
        queue_arn: str,
        region: str,
        batch_size: int,
        stop: threading.Event,
        retry_backoff_s: float = 0.5,
        idle_poll_s: float = 0.05,
    ) -> None:
        self._function = function
        self._sqs = sqs
        self._queue_url = queue_url
        self._queue_arn = queue_arn
        self._region = region
        self._batch_size = batch_size
        self._stop = stop
        self._retry_backoff_s = retry_backoff_s
        self._idle_poll_s = idle_poll_s
        self._to_release: list[tuple[float, str]] = []  # (due, receipt handle), a heap
        self._thread = threading.Thread(target=self._run, name=f"sqs-{function.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Waits at most ``timeout`` seconds; True when the loop has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def name(self) -> str:
        return self._thread.name

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                received = self.poll_once()
            except Exception:
                log.exception("polling %s failed; retrying", self._queue_url)
                received = 0
                self._stop.wait(1.0)
            if received == 0:
                self._stop.wait(self._idle_poll_s)

    def poll_once(self) -> int:
        """Releases due retries, receives one batch and hands it to the function."""
        self._release_due()
        # Short polls, not long polls: moto wakes a long poll on the first message of a
        # SendMessageBatch, so a run's jobs would reach the dispatcher one or two at a time
        # (SQS commits a batch together); polling every few ms sees whole batches.
        response = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self._batch_size,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        if messages:
            self._deliver(messages)
        return len(messages)

    def _deliver(self, messages: list[dict[str, Any]]) -> None:
        event = events.build_sqs_event(messages, queue_arn=self._queue_arn, region=self._region)
        try:
            failed_ids = _batch_item_failures(self._function.invoke(event))
        except InvocationSkippedError:
            return  # the stack is stopping: the messages stay in the queue, untouched
        except Exception:
            # Like Lambda: an error (or an unreadable response) fails the whole batch.
            log.exception(
                "%s failed on %d SQS messages; all will be retried",
                self._function.name,
                len(messages),
            )
            failed_ids = {m["MessageId"] for m in messages}
        done = [m for m in messages if m["MessageId"] not in failed_ids]
        self._delete(done)
        for message in messages:
            if message["MessageId"] in failed_ids:
                self._schedule_release(message)

    def _delete(self, messages: Sequence[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        response = self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
        for failure in response.get("Failed", []):
            log.warning("could not delete an SQS message: %s", failure)

    def _schedule_release(self, message: dict[str, Any]) -> None:
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        delay = min(5.0, self._retry_backoff_s * 2 ** (receives - 1))
        heapq.heappush(self._to_release, (time.monotonic() + delay, message["ReceiptHandle"]))

    def _release_due(self) -> None:
        now = time.monotonic()
        while self._to_release and self._to_release[0][0] <= now:
            _, receipt = heapq.heappop(self._to_release)
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self._queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
                )
            except Exception as exc:  # the message may be gone already (moved to the DLQ)
                log.warning("could not release an SQS message for retry: %s", exc)


def _batch_item_failures(result: Any) -> set[str]:
    """Message ids a ReportBatchItemFailures response names; a malformed one fails all."""
    if result is None:
        return set()
    if not isinstance(result, Mapping):
        raise TypeError(f"SQS handler returned {type(result).__name__}, not a mapping")
    return {str(item["itemIdentifier"]) for item in result.get("batchItemFailures") or []}


# ------------------------------------------------------------------ schedules


class Schedule:
    """An EventBridge rule: invokes a function with a Scheduled Event every interval."""

    def __init__(
        self,
        function: LambdaFunction,
        *,
        interval_s: float,
        rule_arn: str,
        region: str,
        account_id: str,
        stop: threading.Event,
    ) -> None:
        self._function = function
        self._interval_s = interval_s
        self._rule_arn = rule_arn
        self._region = region
        self._account_id = account_id
        self._stop = stop
        self._thread = threading.Thread(
            target=self._run, name=f"schedule-{function.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Waits at most ``timeout`` seconds; True when the loop has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def name(self) -> str:
        return self._thread.name

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            event = events.build_scheduled_event(
                rule_arn=self._rule_arn, region=self._region, account_id=self._account_id
            )
            try:
                self._function.invoke(event)
            except InvocationSkippedError:
                return  # the stack is stopping
            except Exception:
                log.exception("scheduled %s failed", self._function.name)


def rate_seconds(expression: str) -> float:
    """``rate(1 minute)`` -> 60.0 (the only schedule form the template uses)."""
    inner = expression.strip().removeprefix("rate(").removesuffix(")")
    amount, unit = inner.split()
    seconds = {
        "minute": 60,
        "minutes": 60,
        "hour": 3600,
        "hours": 3600,
        "day": 86400,
        "days": 86400,
    }
    return float(amount) * seconds[unit]
