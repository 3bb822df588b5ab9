"""Locally the functions share one process: each invocation must still log as its own
function, with its own correlation id (infra.runtime.invocation_log_keys, and the
thread-local keys of qgjob_backend.observability)."""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import Any

from aws_lambda_powertools import Logger

from infra.runtime import LambdaFunction
from qgjob_backend.observability import begin_invocation, correlate

WAIT_S = 10.0


def _lines(stream: io.StringIO) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return {line["message"]: line for line in lines}


def test_concurrent_invocations_of_two_functions_each_log_as_themselves() -> None:
    stream = io.StringIO()
    # One service, one formatter, as every handler module of the backend shares.
    logger = Logger(service="invocation-logs-test", logger_handler=logging.StreamHandler(stream))
    api_started = threading.Event()
    dispatcher_done = threading.Event()

    @logger.inject_lambda_context
    def api(event: dict[str, Any], context: Any) -> None:
        begin_invocation("req-api")
        correlate("run-api")
        api_started.set()
        # The dispatcher's invocation starts and logs while this one is still running.
        assert dispatcher_done.wait(WAIT_S)
        logger.info("api line")

    @logger.inject_lambda_context
    def dispatcher(event: dict[str, Any], context: Any) -> None:
        begin_invocation("run-dispatch")
        logger.info("dispatcher line")

    def function(name: str, handler: Any) -> LambdaFunction:
        return LambdaFunction(
            f"stack-{name}", handler, timeout_s=3, memory_mb=128, region="us-east-1",
            account_id="123456789012",
        )  # fmt: skip

    api_function = function("ApiFunction", api)
    dispatcher_function = function("DispatcherFunction", dispatcher)
    errors: list[BaseException] = []

    def call_api() -> None:
        try:
            api_function.invoke({})
        except BaseException as error:  # surfaced below
            errors.append(error)

    thread = threading.Thread(target=call_api)
    thread.start()
    assert api_started.wait(WAIT_S)
    dispatcher_function.invoke({})
    dispatcher_done.set()
    thread.join(WAIT_S)
    assert not errors
    assert not thread.is_alive()

    lines = _lines(stream)
    assert lines["api line"]["function_name"] == "stack-ApiFunction"
    assert lines["api line"]["correlation_id"] == "run-api"
    assert lines["api line"]["cold_start"] is True
    assert lines["dispatcher line"]["function_name"] == "stack-DispatcherFunction"
    assert lines["dispatcher line"]["correlation_id"] == "run-dispatch"


def test_an_invocation_does_not_inherit_the_last_ones_correlation_id() -> None:
    stream = io.StringIO()
    # A service of its own: Powertools configures one handler per service name, once.
    logger = Logger(service="invocation-logs-test-2", logger_handler=logging.StreamHandler(stream))
    calls: list[str] = []

    @logger.inject_lambda_context
    def handler(event: dict[str, Any], context: Any) -> None:
        if event.get("correlation_id"):
            correlate(event["correlation_id"])
        calls.append(event["name"])
        logger.info(event["name"])

    function = LambdaFunction(
        "stack-ReaperFunction", handler, timeout_s=3, memory_mb=128, region="us-east-1",
        account_id="123456789012",
    )  # fmt: skip
    function.invoke({"name": "first", "correlation_id": "run-1"})
    function.invoke({"name": "second"})

    lines = _lines(stream)
    assert lines["first"]["correlation_id"] == "run-1"
    assert "correlation_id" not in lines["second"]
    assert (lines["first"]["cold_start"], lines["second"]["cold_start"]) == (True, False)
