"""The local stack's api function serves requests concurrently, each with its own state.

Concurrency is shown with barriers (two invocations must be inside the handler at the same
time to pass one), never with timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver

from infra import events, runtime
from infra.runtime import LambdaFunction, ResolverStateError

WAIT_S = 10.0  # how long a barrier waits for the other party before failing the test


def _function(handler: Callable[[dict[str, Any], Any], Any], concurrency: int) -> LambdaFunction:
    return LambdaFunction(
        "test-api",
        handler,
        timeout_s=30,
        memory_mb=512,
        region="us-east-1",
        account_id="123456789012",
        concurrency=concurrency,
    )


def _in_threads(count: int, call: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = call(index)
        except BaseException as error:  # re-raised on the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=3 * WAIT_S)
    if errors:
        raise errors[0]
    return results


def test_invocations_up_to_the_concurrency_run_at_once() -> None:
    inside = threading.Barrier(2, timeout=WAIT_S)  # passes only with two inside at once
    function = _function(lambda event, context: inside.wait(), concurrency=2)
    assert sorted(_in_threads(2, lambda i: function.invoke({}))) == [0, 1]


def test_a_function_of_concurrency_one_runs_one_invocation_at_a_time() -> None:
    running: list[int] = []
    overlaps: list[int] = []
    release = threading.Event()
    started = threading.Semaphore(0)

    def handler(event: dict[str, Any], context: Any) -> None:
        running.append(1)
        overlaps.append(len(running))
        started.release()
        release.wait(WAIT_S)
        running.pop()

    function = _function(handler, concurrency=1)
    threads = [threading.Thread(target=function.invoke, args=({},)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=WAIT_S)
        release.set()  # let the one inside finish; the next may enter
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert overlaps == [1, 1, 1]


def test_a_waiting_invocation_of_a_full_function_is_dropped_at_stop() -> None:
    release = threading.Event()
    entered = threading.Barrier(3, timeout=WAIT_S)

    def handler(event: dict[str, Any], context: Any) -> str:
        entered.wait()
        release.wait(WAIT_S)
        return "ran"

    function = _function(handler, concurrency=2)
    busy = [threading.Thread(target=function.invoke, args=({},)) for _ in range(2)]
    for thread in busy:
        thread.start()
    entered.wait()  # both slots are taken
    outcome: list[str] = []

    def waiting() -> None:
        try:
            function.invoke({})
            outcome.append("ran")
        except runtime.ShuttingDownError:
            outcome.append("skipped")

    waiter = threading.Thread(target=waiting)
    waiter.start()
    function.stop()
    release.set()
    waiter.join(timeout=WAIT_S)
    for thread in busy:
        thread.join(timeout=WAIT_S)
    assert outcome == ["skipped"]


# ----------------------------------------------------- per-invocation state


def _resolver_app(inside: threading.Barrier) -> Callable[[dict[str, Any], Any], Any]:
    """A Powertools REST app that reads its event and context after both requests arrived
    (the events are an HTTP API's, whose path keeps the stage: routed without it)."""
    app = APIGatewayRestResolver(strip_prefixes=["/v1"])

    @app.get("/whoami/<name>")
    def whoami(name: str) -> dict[str, Any]:
        inside.wait()  # the other invocation has now set its own event and context
        return {
            "path": app.current_event.path,
            "context": app.context.get("caller"),
            "request_id": app.lambda_context.aws_request_id,
            "name": name,
        }

    def handler(event: dict[str, Any], context: Any) -> Any:
        app.append_context(caller=event["path"])
        return app.resolve(event, context)

    return handler


def _proxy_event(path: str) -> dict[str, Any]:
    request = events.HttpRequest(
        method="GET", raw_path=f"/v1{path}", headers=[], body=b"", source_ip="127.0.0.1"
    )
    return events.build_proxy_event(
        request, stage="v1", request_id=path, account_id="123456789012", api_id="local"
    )


def test_concurrent_invocations_each_see_their_own_event_and_context() -> None:
    inside = threading.Barrier(2, timeout=WAIT_S)
    function = _function(_resolver_app(inside), concurrency=2)
    paths = ["/whoami/alice", "/whoami/bob"]
    results = _in_threads(2, lambda i: function.invoke(_proxy_event(paths[i])))
    bodies = [events.proxy_response_to_http(r, "id").body.decode() for r in results]
    for path, body in zip(paths, bodies, strict=True):
        name = path.rsplit("/", 1)[1]
        assert f'"path":"/v1{path}"' in body
        assert f'"context":"/v1{path}"' in body
        assert f'"name":"{name}"' in body


def test_the_resolver_state_patch_refuses_unknown_powertools_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
    from aws_lambda_powertools.event_handler.http_resolver import HttpResolverLocal

    monkeypatch.delattr(ApiGatewayResolver, "qgjob_thread_local", raising=False)
    monkeypatch.setattr(HttpResolverLocal, "route_args", property(lambda self: {}), raising=False)
    with pytest.raises(ResolverStateError, match="route_args"):
        runtime.isolate_resolver_state()
