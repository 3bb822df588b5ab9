"""The cost model: metered requests (infra.metering snapshots) priced with bench.prices.

A *window* is the difference of two meter snapshots (`window`). Its usage is split by who
caused it, from the attribution the meter records (``Function/trigger`` or ``platform``):

- **event-driven**: API invocations, SQS-triggered and WebSocket invocations, direct
  invokes, and the AWS calls they make, plus the event-source mapping's work on messages
  (non-empty ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibility). This scales
  with jobs and agents: it is what $ per job and $ per idle agent-day are made of.
- **schedule**: the EventBridge-scheduled invocations, their AWS calls and what their
  messages caused (an SQS-triggered planning run a tick queued). Locally they run every
  second or two; in AWS at the template's rate, so they are priced per invocation and
  scaled to the template's rate (`fixed_per_day`).
- **platform/other**: the bootstrap and the local poller's empty receives (AWS's event
  source mapping long-polls instead: modeled as `ESM_IDLE_RECEIVES_PER_DAY`).

Lambda duration is the handler time measured in the stack process (billed per ms) times
the function's configured memory (template.yaml).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from bench.prices import price

Json = dict[str, Any]
SECONDS_PER_DAY = 86_400
# Lambda's SQS event-source mapping starts with 5 pollers, each long-polling 20 s.
ESM_IDLE_RECEIVES_PER_DAY = 5 * SECONDS_PER_DAY / 20
S3_PUT_CLASS = frozenset(
    {"PutObject", "CopyObject", "PostObject", "ListObjects", "ListObjectsV2", "ListBuckets"}
)
S3_GET_CLASS = frozenset({"GetObject", "HeadObject", "SelectObjectContent"})
S3_FREE = frozenset({"DeleteObject", "DeleteObjects"})
SQS_ESM_OPERATIONS = frozenset(
    {"ReceiveMessage", "DeleteMessageBatch", "DeleteMessage", "ChangeMessageVisibility"}
)


def subtract(later: Any, earlier: Any) -> Any:
    """``later - earlier`` for nested dicts of numbers (keys missing in ``earlier`` are 0)."""
    if isinstance(later, Mapping):
        earlier = earlier if isinstance(earlier, Mapping) else {}
        return {key: subtract(value, earlier.get(key)) for key, value in later.items()}
    if isinstance(later, bool) or not isinstance(later, int | float):
        return later
    return later - (earlier if isinstance(earlier, int | float) else 0)


def window(earlier: Json, later: Json) -> Json:
    """What happened between two meter snapshots, with its length in seconds."""
    diff: Json = {
        "seconds": float(later["t"]) - float(earlier["t"]),
        "memory_mb": dict(later.get("memory_mb", {})),
    }
    for part in ("aws", "functions", "api"):
        diff[part] = subtract(later.get(part, {}), earlier.get(part, {}))
    return diff


def root(attribution: str) -> str:
    """``DispatcherFunction/sqs@DispatcherFunction/schedule`` -> the schedule: the work a
    message caused belongs to whoever sent it (see infra.metering)."""
    return attribution.rsplit("@", 1)[-1]


def trigger(attribution: str) -> str:
    cause = root(attribution)
    return cause.split("/", 1)[1] if "/" in cause else cause


def is_event_driven(attribution: str) -> bool:
    return trigger(attribution) not in ("schedule", "other", "platform")


def is_schedule(attribution: str) -> bool:
    return trigger(attribution) == "schedule"


@dataclass
class Usage:
    """Billable quantities; `cost` prices them."""

    api_requests: float = 0.0
    websocket_messages: float = 0.0
    websocket_connection_minutes: float = 0.0
    lambda_requests: float = 0.0
    lambda_gb_s: float = 0.0
    dynamodb_wru: float = 0.0
    dynamodb_rru: float = 0.0
    sqs_requests: float = 0.0
    s3_put_requests: float = 0.0
    s3_get_requests: float = 0.0
    aws_calls: float = 0.0  # every AWS request, priced or not
    unpriced: dict[str, float] = field(default_factory=dict)

    def scaled(self, factor: float) -> Usage:
        values = {
            f.name: getattr(self, f.name) * factor for f in fields(self) if f.name != "unpriced"
        }
        return Usage(**values, unpriced={k: v * factor for k, v in self.unpriced.items()})

    def plus(self, other: Usage) -> Usage:
        values = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "unpriced"
        }
        unpriced = dict(self.unpriced)
        for key, value in other.unpriced.items():
            unpriced[key] = unpriced.get(key, 0.0) + value
        return Usage(**values, unpriced=unpriced)

    def cost(self, api_type: str = "rest") -> dict[str, float]:
        """Dollars by line; ``api_type`` ``rest`` or ``http`` prices the API requests."""
        lines = {
            f"API Gateway ({api_type.upper()} requests)": self.api_requests
            * price(f"apigw.{api_type}_request"),
            "API Gateway (WebSocket messages)": self.websocket_messages
            * price("apigw.websocket_message"),
            "API Gateway (WebSocket connection minutes)": self.websocket_connection_minutes
            * price("apigw.websocket_connection_minute"),
            "Lambda requests": self.lambda_requests * price("lambda.request"),
            "Lambda duration": self.lambda_gb_s * price("lambda.gb_second"),
            "DynamoDB writes": self.dynamodb_wru * price("dynamodb.write_request_unit"),
            "DynamoDB reads": self.dynamodb_rru * price("dynamodb.read_request_unit"),
            "SQS (FIFO)": self.sqs_requests * price("sqs.fifo_request"),
            "S3 PUT/LIST": self.s3_put_requests * price("s3.put_request"),
            "S3 GET": self.s3_get_requests * price("s3.get_request"),
        }
        return lines

    def total(self, api_type: str = "rest") -> float:
        return sum(self.cost(api_type).values())


def usage_of(win: Json, keep: Callable[[str], bool]) -> Usage:
    """The usage of the attributions ``keep`` accepts (see the module docstring)."""
    usage = Usage()
    for attribution, operations in win.get("aws", {}).items():
        for key, stats in operations.items():
            service, _, operation = key.partition(".")
            calls, billed, empty = stats["calls"], stats["billed"], stats.get("empty", 0)
            if attribution == "platform":
                if service == "sqs" and operation in SQS_ESM_OPERATIONS:
                    # The event-source mapping's work on messages is event-driven; its
                    # empty receives are modeled separately (ESM_IDLE_RECEIVES_PER_DAY).
                    if not keep("platform/esm"):
                        continue
                    calls, billed = calls - empty, billed - empty
                elif not keep("platform/other"):
                    continue
            elif not keep(attribution):
                continue
            usage.aws_calls += calls
            if service == "dynamodb":
                usage.dynamodb_wru += stats.get("wru", 0)
                usage.dynamodb_rru += stats.get("rru", 0)
            elif service == "sqs":
                usage.sqs_requests += billed
            elif service == "s3" and operation in S3_PUT_CLASS:
                usage.s3_put_requests += calls
            elif service == "s3" and operation in S3_GET_CLASS:
                usage.s3_get_requests += calls
            elif service == "apigatewaymanagementapi" and operation == "PostToConnection":
                usage.websocket_messages += billed
            elif not (service == "s3" and operation in S3_FREE):
                usage.unpriced[key] = usage.unpriced.get(key, 0.0) + calls
    memory = win.get("memory_mb", {})
    for attribution, stats in win.get("functions", {}).items():
        if not keep(attribution):
            continue
        function = attribution.split("/", 1)[0]
        usage.lambda_requests += stats["invocations"]
        usage.lambda_gb_s += stats["billed_ms"] / 1000 * memory.get(function, 128) / 1024
    if keep("ApiFunction/api"):
        for route, stats in win.get("api", {}).items():
            if route.startswith("WS "):
                # Connect and disconnect are not messages; anything an agent sends is.
                if route not in ("WS $connect", "WS $disconnect", "WS CONNECT", "WS DISCONNECT"):
                    usage.websocket_messages += stats["count"]
            else:
                usage.api_requests += stats["count"]
    return usage


def api_requests(win: Json, routes: Callable[[str], bool] = lambda route: True) -> float:
    return float(sum(s["count"] for r, s in win.get("api", {}).items() if routes(r)))


def api_status_count(win: Json, at_least: int = 500) -> int:
    total = 0
    for stats in win.get("api", {}).values():
        for status, count in stats.get("status", {}).items():
            if int(status) >= at_least:
                total += int(count)
    return total


def schedule_invocations(win: Json) -> dict[str, float]:
    """Scheduled invocations by function in the window."""
    return {
        attribution.split("/", 1)[0]: float(stats["invocations"])
        for attribution, stats in win.get("functions", {}).items()
        if attribution.endswith("/schedule")
    }


def fixed_per_day(win: Json, schedule_rates_s: Mapping[str, float]) -> Usage:
    """A day of the scheduled functions at the template's rates, each invocation costing
    what it cost on average in ``win``, plus the event-source mapping's idle receives."""
    usage = Usage(sqs_requests=ESM_IDLE_RECEIVES_PER_DAY, aws_calls=ESM_IDLE_RECEIVES_PER_DAY)
    invocations = schedule_invocations(win)
    for function, rate_s in schedule_rates_s.items():
        count = invocations.get(function, 0.0)
        if count <= 0 or rate_s <= 0:
            continue
        # The tick itself and whatever its messages caused (a planning run via SQS).
        one = usage_of(win, _rooted_at(f"{function}/schedule")).scaled(1 / count)
        usage = usage.plus(one.scaled(SECONDS_PER_DAY / rate_s))
    return usage


def _rooted_at(cause: str) -> Callable[[str], bool]:
    return lambda attribution: root(attribution) == cause


def dollars(value: float) -> str:
    """$0.0042 / $1.23 / $202: enough digits to compare small figures."""
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.2g}" if abs(value) < 0.001 else f"${value:.4f}"
