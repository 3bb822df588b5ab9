"""Opt-in metering of the local stack: AWS requests, Lambda invocations and API routes.

Off unless ``QGJOB_METER_FILE`` names a file. Then `install_from_env` (the local stack calls
it first thing when it starts) does two things, both inside the stack process:

- every botocore client created from then on reports each call (service, operation,
  errors) through its event hooks (``before-parameter-build`` / ``after-call`` /
  ``after-call-error``), with DynamoDB request units estimated from the request and the
  answer (see `dynamodb_units`), SQS requests billed per 64 KB of payload, and whether a
  ReceiveMessage came back empty;
- every function of the template is wrapped: invocations, errors and handler time by
  function and trigger (api / sqs / schedule / websocket / invoke), and for API events the
  route (``POST /agents/{id}/lease``) and the status code answered.

An AWS call made while a function runs is credited to that function and trigger
(``ApiFunction/api``); one made outside any function (the SQS event-source poller, the
bootstrap) to ``platform``. Causes travel through SQS: a message remembers who sent it, so
an SQS-triggered invocation is credited as ``DispatcherFunction/sqs@ApiFunction/api`` (a
job the API submitted) or ``...@DispatcherFunction/schedule`` (a planning tick).

The counts are cumulative; they are written as one JSON object to the file every
``QGJOB_METER_INTERVAL`` seconds (default 1), atomically, and once more by `flush` when
the stack stops. Each write carries its wall-clock time ``t``, so a reader
takes two snapshots and subtracts them to meter a window (``bench.fleet`` does).

The schema, by example::

    {"version": 1, "t": 1764580000.1, "pid": 4242, "started_at": 1764579990.0,
     "memory_mb": {"ApiFunction": 512},
     "aws": {"ApiFunction/api": {"dynamodb.Query": {"calls": 3, "errors": 0,
             "billed": 3, "wru": 0, "rru": 1.5, "empty": 0}}},
     "functions": {"ApiFunction/api": {"invocations": 3, "errors": 0,
                   "duration_s": 0.12, "billed_ms": 121}},
     "api": {"POST /agents/{id}/lease": {"count": 3, "duration_s": 0.1,
             "status": {"200": 3}}}}
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

log = logging.getLogger("qgjob.local")

METER_FILE_ENV = "QGJOB_METER_FILE"
METER_INTERVAL_ENV = "QGJOB_METER_INTERVAL"
PLATFORM = "platform"  # AWS calls made outside any function (event-source poller, bootstrap)
_CONTEXT_KEY = "qgjob_meter_params"

Handler = Callable[[dict[str, Any], Any], Any]


# ------------------------------------------------------------------ the meter


def call_site() -> str:
    """The innermost qgjob_backend function on this thread's stack, with its caller
    (``adapters.dynamodb.jobs.finish_job<services.agents.progress``), or ``-``."""
    frame = sys._getframe(1)
    found: list[str] = []
    while frame is not None and len(found) < 2:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("qgjob_backend."):
            name = f"{module.removeprefix('qgjob_backend.')}.{frame.f_code.co_name}"
            if not found or not found[-1].startswith(module.removeprefix("qgjob_backend.")):
                found.append(name)
        frame = frame.f_back  # type: ignore[assignment]
    return "<".join(found) or "-"


class Meter:
    """Thread-safe cumulative counters; `snapshot` returns them as plain JSON data."""

    def __init__(self, memory_mb: Mapping[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.started_at = time.time()
        self.memory_mb = dict(memory_mb or {})
        self._aws: dict[str, dict[str, dict[str, float]]] = {}
        self._functions: dict[str, dict[str, float]] = {}
        self._api: dict[str, dict[str, Any]] = {}
        # Opt-in (QGJOB_METER_SITES=1): AWS usage by the backend function that made the
        # call, to see which code path pays; walking the stack per call is not free.
        self.sites_enabled = os.environ.get("QGJOB_METER_SITES") == "1"
        self._sites: dict[str, dict[str, float]] = {}
        # SQS message id -> the attribution that sent it, root first (see `origin_of`).
        self._origins: collections.OrderedDict[str, str] = collections.OrderedDict()

    # ---- attribution

    @property
    def current(self) -> str:
        return getattr(self._local, "current", None) or PLATFORM

    @contextlib.contextmanager
    def attributed_to(self, name: str) -> Any:
        previous = getattr(self._local, "current", None)
        self._local.current = name
        try:
            yield
        finally:
            self._local.current = previous

    # ---- causes carried through SQS

    def sent(self, message_ids: list[str], origin: str | None = None) -> None:
        """Remembers who sent these messages (by default the current attribution's root
        cause); receipt handles are remembered the same way, by `received`."""
        origin = sys.intern(origin or root_of(self.current))
        with self._lock:
            for message_id in message_ids:
                self._origins[message_id] = origin
            while len(self._origins) > MAX_ORIGINS:
                self._origins.popitem(last=False)

    def received(self, messages: list[Mapping[str, Any]]) -> str | None:
        """The origin of a received batch (its first known message); its receipt handles
        inherit it, so deleting or releasing them is credited to the same cause."""
        origin = next(
            (o for m in messages if (o := self.origin_of(str(m.get("MessageId", ""))))), None
        )
        if origin is not None:
            self.sent([str(m["ReceiptHandle"]) for m in messages if "ReceiptHandle" in m], origin)
        return origin

    def origin_of(self, message_id: str) -> str | None:
        with self._lock:
            return self._origins.get(message_id)

    # ---- recording

    def record_aws(
        self,
        service: str,
        operation: str,
        *,
        error: bool = False,
        billed: float = 1.0,
        wru: float = 0.0,
        rru: float = 0.0,
        empty: bool = False,
        attribution: str | None = None,
    ) -> None:
        key = f"{service}.{operation}"
        with self._lock:
            ops = self._aws.setdefault(attribution or self.current, {})
            stats = ops.setdefault(
                key, {"calls": 0, "errors": 0, "billed": 0, "wru": 0, "rru": 0, "empty": 0}
            )
            stats["calls"] += 1
            stats["errors"] += int(error)
            stats["billed"] += billed
            stats["wru"] += wru
            stats["rru"] += rru
            stats["empty"] += int(empty)
            if self.sites_enabled:
                site = self._sites.setdefault(
                    f"{key} {call_site()}", {"calls": 0, "wru": 0, "rru": 0}
                )
                site["calls"] += 1
                site["wru"] += wru
                site["rru"] += rru

    def record_invocation(self, name: str, duration_s: float, *, error: bool) -> None:
        with self._lock:
            stats = self._functions.setdefault(
                name, {"invocations": 0, "errors": 0, "duration_s": 0.0, "billed_ms": 0}
            )
            stats["invocations"] += 1
            stats["errors"] += int(error)
            stats["duration_s"] += duration_s
            # Lambda bills duration rounded up to the millisecond, per invocation.
            stats["billed_ms"] += max(1, math.ceil(duration_s * 1000))

    def record_api(self, route: str, status: int, duration_s: float) -> None:
        with self._lock:
            stats = self._api.setdefault(route, {"count": 0, "duration_s": 0.0, "status": {}})
            stats["count"] += 1
            stats["duration_s"] += duration_s
            codes: dict[str, int] = stats["status"]
            codes[str(status)] = codes.get(str(status), 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data = {
                "version": 1,
                "t": time.time(),
                "pid": os.getpid(),
                "started_at": self.started_at,
                "memory_mb": dict(self.memory_mb),
                "aws": json.loads(json.dumps(self._aws)),
                "functions": json.loads(json.dumps(self._functions)),
                "api": json.loads(json.dumps(self._api)),
            }
            if self.sites_enabled:
                data["sites"] = json.loads(json.dumps(self._sites))
        return data

    # ---- functions

    def wrap(self, logical_id: str, resolve: Callable[[], Handler]) -> Handler:
        """A handler that meters ``resolve()`` (called once, at the first invocation)."""
        resolved: list[Handler] = []

        def metered(event: dict[str, Any], context: Any) -> Any:
            if not resolved:
                resolved.append(resolve())
            trigger = trigger_of(event)
            name = f"{logical_id}/{trigger}"
            origin = self._origin_of_records(event) if trigger == "sqs" else None
            if origin is not None:
                name = f"{name}@{origin}"
            started = time.perf_counter()
            status = 502  # what API Gateway answers when the function raises
            try:
                with self.attributed_to(name):
                    result = resolved[0](event, context)
                if isinstance(result, Mapping):
                    status = int(result.get("statusCode") or 200)
                else:
                    status = 200
                return result
            finally:
                elapsed = time.perf_counter() - started
                self.record_invocation(name, elapsed, error=status == 502 and trigger == "api")
                if trigger in ("api", "websocket"):
                    self.record_api(route_of(event), status, elapsed)

        return metered

    def _origin_of_records(self, event: Mapping[str, Any]) -> str | None:
        for record in event.get("Records") or []:
            if isinstance(record, Mapping):
                origin = self.origin_of(str(record.get("messageId", "")))
                if origin is not None:
                    return origin
        return None


# A message matters from its send to its delete (seconds, minutes): the newest suffice.
MAX_ORIGINS = 50_000


def root_of(attribution: str) -> str:
    """The root cause of an attribution: ``DispatcherFunction/sqs@ApiFunction/api`` (an
    SQS-triggered run of a message the API sent) -> ``ApiFunction/api``."""
    return attribution.rsplit("@", 1)[-1]


def trigger_of(event: Mapping[str, Any]) -> str:
    """What invoked a function, from the shape of its event."""
    if not isinstance(event, Mapping):
        return "invoke"
    if "httpMethod" in event:
        return "api"
    context = event.get("requestContext")
    if isinstance(context, Mapping) and "eventType" in context:
        return "websocket"
    records = event.get("Records")
    if isinstance(records, list) and records:
        source = str(records[0].get("eventSource", "")) if isinstance(records[0], Mapping) else ""
        return source.removeprefix("aws:") or "records"
    if event.get("detail-type") == "Scheduled Event" or event.get("source") == "aws.events":
        return "schedule"
    return "invoke"


_COLLECTIONS = frozenset({"jobs", "runs", "agents", "batches", "builds"})
_LITERALS = frozenset({"register"})
_MAX_SEGMENTS = 8


def route_of(event: Mapping[str, Any]) -> str:
    """``POST /agents/{id}/jobs/{id}/start``: ids after a collection name become ``{id}``.

    Paths that are not of the API's shape (hostile or mistyped) all count as one route,
    so the table stays small whatever clients send.
    """
    context = event.get("requestContext")
    if "httpMethod" not in event and isinstance(context, Mapping):
        return f"WS {context.get('routeKey') or context.get('eventType')}"
    method = str(event.get("httpMethod", "?"))
    # The path within the stage: an HTTP API's ``path`` keeps the stage prefix.
    parameters = event.get("pathParameters")
    proxy = parameters.get("proxy") if isinstance(parameters, Mapping) else None
    path = proxy if isinstance(proxy, str) else str(event.get("path", ""))
    segments = [s for s in path.split("/") if s]
    if len(segments) > _MAX_SEGMENTS:
        return f"{method} (other)"
    normalized: list[str] = []
    for index, segment in enumerate(segments):
        previous = segments[index - 1] if index else ""
        if previous in _COLLECTIONS and segment not in _LITERALS:
            normalized.append("{id}")
        elif re.fullmatch(r"[a-z][a-z_-]{0,31}", segment):
            normalized.append(segment)
        else:
            return f"{method} (other)"
    return f"{method} /{'/'.join(normalized)}"


# ------------------------------------------------------------------ DynamoDB units


def item_size(item: Mapping[str, Any]) -> int:
    """Approximate DynamoDB item size in bytes: names plus values (AttributeValue form)."""
    return sum(len(name.encode("utf-8")) + _value_size(value) for name, value in item.items())


def _value_size(value: Any) -> int:
    if not isinstance(value, Mapping) or len(value) != 1:
        return 1
    ((kind, data),) = value.items()
    if kind == "S":
        return len(str(data).encode("utf-8"))
    if kind == "N":
        digits = str(data).lstrip("-").replace(".", "").lstrip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(data) if isinstance(data, bytes | bytearray) else len(str(data))
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: member}) for member in data)
    if kind == "L":
        return 3 + sum(1 + _value_size(member) for member in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode("utf-8")) + _value_size(v) for k, v in data.items())
    return 1  # BOOL, NULL


def _write_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def _read_units(size: int, consistent: bool) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


_UPDATE_KEYWORDS = frozenset(
    {"SET", "REMOVE", "ADD", "DELETE", "if_not_exists", "list_append", "AND", "OR", "NOT"}
)
GsiKeys = Mapping[str, list[frozenset[str]]]  # table name -> key attributes of each GSI


def _updated_names(request: Mapping[str, Any]) -> set[str]:
    expression = str(request.get("UpdateExpression", ""))
    aliases: Mapping[str, str] = request.get("ExpressionAttributeNames") or {}
    tokens = re.findall(r"(?<![:\w#])#?[A-Za-z_]\w*", expression)
    names = {aliases.get(t, t) for t in tokens if t not in _UPDATE_KEYWORDS}
    names.update(str(k) for k in (request.get("AttributeUpdates") or {}))
    return names


def _index_writes(table: str, names: set[str], gsi_keys: GsiKeys) -> int:
    """One extra write per GSI whose key attributes an update sets or removes (a lower
    bound: moving an item within an index costs a delete and a put)."""
    return sum(1 for keys in gsi_keys.get(table, []) if keys & names)


def _put_index_writes(table: str, names: set[str], gsi_keys: GsiKeys) -> int:
    """One extra write per GSI the new item is in: it has all of that index's key
    attributes (an item missing one is not in the index, whatever else it has)."""
    return sum(1 for keys in gsi_keys.get(table, []) if keys <= names)


def dynamodb_units(
    operation: str,
    params: Mapping[str, Any],
    parsed: Mapping[str, Any],
    gsi_keys: GsiKeys | None = None,
) -> tuple[float, float]:
    """(write request units, read request units) one call consumes, estimated.

    Writes: 1 unit per KB of the item (Put: its size; Update/Delete: the returned item when
    the call asked for it, else 1 KB), plus one per GSI whose keys it sets; transactions
    cost double (ConditionCheck included). Reads: 1 unit per 4 KB strongly consistent, half
    eventually consistent, double in a transaction; a Query or Scan by the total size it
    returned (at least one unit), an item not found still costs one read.
    """
    gsi = gsi_keys or {}
    p = params
    if operation == "PutItem":
        item = p.get("Item") or {}
        return _write_units(item_size(item)) + _put_index_writes(p["TableName"], set(item), gsi), 0
    if operation in ("UpdateItem", "DeleteItem"):
        returned = parsed.get("Attributes")
        base = _write_units(item_size(returned)) if returned else 1
        names = _updated_names(p) if operation == "UpdateItem" else set()
        return base + _index_writes(str(p.get("TableName")), names, gsi), 0
    if operation == "BatchWriteItem":
        units = 0
        for table, requests in (p.get("RequestItems") or {}).items():
            for request in requests:
                item = (request.get("PutRequest") or {}).get("Item")
                if item is not None:
                    units += _write_units(item_size(item)) + _put_index_writes(
                        table, set(item), gsi
                    )
                else:
                    units += 1
        return units, 0
    if operation == "TransactWriteItems":
        units = 0
        for action in p.get("TransactItems") or []:
            if "Put" in action:
                put = action["Put"]
                item = put.get("Item") or {}
                units += _write_units(item_size(item)) + _put_index_writes(
                    put["TableName"], set(item), gsi
                )
            elif "Update" in action:
                update = action["Update"]
                units += 1 + _index_writes(update["TableName"], _updated_names(update), gsi)
            else:  # Delete, ConditionCheck
                units += 1
        return 2 * units, 0
    if operation == "GetItem":
        item = parsed.get("Item") or {}
        return 0, _read_units(item_size(item), bool(p.get("ConsistentRead")))
    if operation == "BatchGetItem":
        reads = 0.0
        responses: Mapping[str, list[Any]] = parsed.get("Responses") or {}
        unprocessed: Mapping[str, Any] = parsed.get("UnprocessedKeys") or {}
        for table, request in (p.get("RequestItems") or {}).items():
            consistent = bool(request.get("ConsistentRead"))
            found = responses.get(table, [])
            reads += sum(_read_units(item_size(item), consistent) for item in found)
            pending = len((unprocessed.get(table) or {}).get("Keys", []))
            missing = max(0, len(request.get("Keys", [])) - len(found) - pending)
            reads += missing * _read_units(0, consistent)
        return 0, reads
    if operation == "TransactGetItems":
        reads = 0.0
        for response in parsed.get("Responses") or []:
            reads += 2 * _read_units(item_size(response.get("Item") or {}), True)
        return 0, reads
    if operation in ("Query", "Scan"):
        items = parsed.get("Items")
        if items is not None:
            size = sum(item_size(item) for item in items)
            count, scanned = len(items), int(parsed.get("ScannedCount") or len(items))
            if scanned > count:  # a filter dropped items it had read: scale by the average
                size = int(size * scanned / count) if count else scanned * 1024
        else:  # Select=COUNT: about 1 KB per item read
            size = int(parsed.get("ScannedCount") or 0) * 1024
        return 0, _read_units(size, bool(p.get("ConsistentRead")))
    return 0, 0


# ------------------------------------------------------------------ botocore hooks


SQS_CHUNK_BYTES = 64 * 1024
WEBSOCKET_CHUNK_BYTES = 32 * 1024


def _sqs_billed(operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]) -> float:
    """SQS bills each 64 KB chunk of a request's payload as one request."""
    if operation == "SendMessage":
        payload = len(str(params.get("MessageBody", "")).encode("utf-8"))
    elif operation == "SendMessageBatch":
        payload = sum(
            len(str(e.get("MessageBody", "")).encode("utf-8")) for e in params.get("Entries", [])
        )
    elif operation == "ReceiveMessage":
        payload = sum(
            len(str(m.get("Body", "")).encode("utf-8")) for m in parsed.get("Messages", [])
        )
    else:
        return 1.0
    return float(max(1, math.ceil(payload / SQS_CHUNK_BYTES)))


class BotocoreHook:
    """Registers the meter's handlers on every botocore client created after `install`."""

    def __init__(self, meter: Meter, gsi_keys: GsiKeys | None = None) -> None:
        self.meter = meter
        self.gsi_keys = dict(gsi_keys or {})

    def install(self) -> None:
        import botocore.session

        hook = self
        current = botocore.session.Session.create_client
        # Never wrap twice (botocore's own decorators also set __wrapped__: keep them).
        original = getattr(current, "_qgjob_unmetered", current)

        @functools.wraps(original)
        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            hook.attach(client)
            return client

        create_client._qgjob_unmetered = original  # type: ignore[attr-defined]
        botocore.session.Session.create_client = create_client  # type: ignore[method-assign,assignment]

    def attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-parameter-build", self._before, unique_id="qgjob-meter-params")
        events.register("after-call", self._after, unique_id="qgjob-meter-after")
        events.register("after-call-error", self._after_error, unique_id="qgjob-meter-error")

    @staticmethod
    def _before(params: Any = None, context: Any = None, **kwargs: Any) -> None:
        if isinstance(context, MutableMapping):
            context[_CONTEXT_KEY] = params

    def _after(
        self,
        http_response: Any = None,
        parsed: Any = None,
        model: Any = None,
        context: Any = None,
        **kwargs: Any,
    ) -> None:
        try:
            service = str(model.service_model.service_name)
            operation = str(model.name)
            params = (context or {}).get(_CONTEXT_KEY) or {}
            parsed = parsed if isinstance(parsed, Mapping) else {}
            status = int(getattr(http_response, "status_code", 200) or 200)
            wru = rru = 0.0
            billed = 1.0
            attribution = None
            if service == "dynamodb":
                wru, rru = dynamodb_units(operation, params, parsed, self.gsi_keys)
            elif service == "sqs":
                billed = _sqs_billed(operation, params, parsed)
                if operation == "SendMessage" and parsed.get("MessageId"):
                    self.meter.sent([str(parsed["MessageId"])])
                elif operation == "SendMessageBatch":
                    self.meter.sent([str(e["MessageId"]) for e in parsed.get("Successful", [])])
                attribution = self._event_source_cause(operation, params, parsed)
            elif service == "apigatewaymanagementapi" and operation == "PostToConnection":
                data = params.get("Data") or b""
                billed = float(max(1, math.ceil(len(data) / WEBSOCKET_CHUNK_BYTES)))
            empty = operation == "ReceiveMessage" and not parsed.get("Messages")
            self.meter.record_aws(
                service,
                operation,
                error=status >= 400,
                billed=billed,
                wru=wru,
                rru=rru,
                empty=empty,
                attribution=attribution,
            )
        except Exception:  # metering must never break a call
            log.exception("metering an AWS call failed")

    def _event_source_cause(
        self, operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]
    ) -> str | None:
        """``platform@<cause>`` for the event-source poller's work on messages someone sent
        (receive, delete, release), so it is credited to that cause; else None."""
        if self.meter.current != PLATFORM:
            return None
        origin: str | None = None
        if operation == "ReceiveMessage" and parsed.get("Messages"):
            origin = self.meter.received(list(parsed["Messages"]))
        elif operation in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
            entries = params.get("Entries") or []
            origin = self.meter.origin_of(str(entries[0].get("ReceiptHandle"))) if entries else None
        elif operation in ("DeleteMessage", "ChangeMessageVisibility"):
            origin = self.meter.origin_of(str(params.get("ReceiptHandle")))
        return f"{PLATFORM}@{origin}" if origin else None

    def _after_error(self, event_name: str = "", **kwargs: Any) -> None:
        # Transport failures (no HTTP answer); botocore names only the service id here.
        parts = event_name.split(".")
        service = parts[1].lower().replace(" ", "") if len(parts) > 2 else "unknown"
        operation = parts[2] if len(parts) > 2 else "unknown"
        self.meter.record_aws(service, operation, error=True)


# ------------------------------------------------------------------ the stack's hook


class _Writer:
    """Writes the meter's snapshot to a file every interval and on `flush`."""

    def __init__(self, meter: Meter, path: Path, interval_s: float) -> None:
        self.meter = meter
        self.path = path
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="qgjob-meter", daemon=True)

    def start(self) -> None:
        self.flush()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                temporary.write_text(json.dumps(self.meter.snapshot()), encoding="utf-8")
                temporary.replace(self.path)
            except OSError:
                log.exception("could not write the meter file %s", self.path)


_writer: _Writer | None = None


def install_from_env(template: Any, handlers: MutableMapping[str, Handler]) -> Meter | None:
    """Turns metering on when ``QGJOB_METER_FILE`` is set; otherwise does nothing.

    ``template`` is the stack's `infra.template.LocalTemplate`; ``handlers`` its handler
    overrides by logical id, which get a metered handler for every function (wrapping the
    override, or the template's handler, imported at the first invocation).
    """
    global _writer
    path = os.environ.get(METER_FILE_ENV)
    if not path or _writer is not None:
        return _writer.meter if _writer is not None else None
    from infra.runtime import import_handler
    from infra.template import FUNCTION_TYPE, TABLE_TYPE

    function_ids = template.logical_ids(FUNCTION_TYPE)
    globals_ = template.template.get("Globals", {}).get("Function", {})
    memory = {
        lid: int(
            template.resolve(
                template.properties(lid).get("MemorySize", globals_.get("MemorySize", 128))
            )
        )
        for lid in function_ids
    }
    meter = Meter(memory)
    BotocoreHook(meter, table_gsi_keys(template, TABLE_TYPE)).install()
    for lid in function_ids:
        handlers[lid] = meter.wrap(
            lid, _resolver(handlers.get(lid), template.function_handler(lid), import_handler)
        )
    interval = float(os.environ.get(METER_INTERVAL_ENV) or 1.0)
    _writer = _Writer(meter, Path(path), interval)
    _writer.start()
    log.info("metering on: counts go to %s every %.3gs", path, interval)
    return meter


def _resolver(
    override: Handler | None, dotted: str, importer: Callable[[str], Handler]
) -> Callable[[], Handler]:
    """The override when there is one, else the template's handler, imported when asked."""
    if override is not None:
        return lambda: override
    return lambda: importer(dotted)


def table_gsi_keys(template: Any, table_type: str) -> dict[str, list[frozenset[str]]]:
    """Physical table name -> the key attribute names of each of its GSIs."""
    keys: dict[str, list[frozenset[str]]] = {}
    for lid in template.logical_ids(table_type):
        properties = template.properties(lid)
        indexes = template.resolve(properties.get("GlobalSecondaryIndexes") or [])
        keys[str(template.physical_name(lid))] = [
            frozenset(str(k["AttributeName"]) for k in index.get("KeySchema", []))
            for index in indexes
        ]
    return keys


def flush() -> None:
    """Writes the final counts (the stack calls it when it stops); no-op when metering is off."""
    if _writer is not None:
        _writer.flush()
