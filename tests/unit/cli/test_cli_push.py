"""The agent's push listener over fake WebSocket connections (no network, no real waits)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from qgjob.push import PushListener

PUSH_URL = "wss://push.example/v1"
CREDENTIAL = "qgja.emulator-1.secret"


def closed(code: int = 1001, reason: str = "Going away") -> ConnectionClosed:
    return ConnectionClosed(Close(code, reason), None)


class FakeSocket:
    """A connection whose recv answers from a script: a message, or an exception to raise."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.recv_timeouts: list[float | None] = []
        self.sent: list[str] = []
        self.closes = 0

    def recv(self, timeout: float | None = None) -> str:
        self.recv_timeouts.append(timeout)
        item = self.script.pop(0) if self.script else closed()
        if isinstance(item, BaseException):
            raise item
        return str(item)

    def send(self, message: str) -> None:
        self.sent.append(message)

    def close(self) -> None:
        self.closes += 1

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Connector:
    """The `connect` function: hands out the sockets (or raises the errors) in order; once
    they run out, it stops the listener, so `_run` returns."""

    def __init__(self, *outcomes: FakeSocket | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.listener: PushListener | None = None

    def __call__(self, url: str, **options: Any) -> FakeSocket:
        self.calls.append((url, options))
        if not self.outcomes:
            assert self.listener is not None
            self.listener._stopping.set()
            raise OSError("no more connections in this test")
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def listener_over(connector: Connector, logs: list[str] | None = None, **kw: Any) -> PushListener:
    listener = PushListener(
        PUSH_URL,
        CREDENTIAL,
        connect=connector,
        log=(logs if logs is not None else []).append,
        clock=lambda: 0.0,
        backoff_base_s=0.001,
        backoff_max_s=0.004,
        **kw,
    )
    connector.listener = listener
    return listener


def never() -> bool:
    return False


def test_it_connects_with_the_credential_and_a_batch_message_wakes_the_agent() -> None:
    socket = FakeSocket([json.dumps({"type": "batch", "batch_id": "b1"}), closed()])
    connector = Connector(socket)
    listener = listener_over(connector)

    listener._run()

    url, options = connector.calls[0]
    assert url == PUSH_URL
    assert options["additional_headers"] == {"Authorization": f"Bearer {CREDENTIAL}"}
    assert options["ping_interval"] is None  # keep-alives are messages API Gateway routes
    assert (listener.connections, listener.pushes) == (1, 1)
    assert listener.wait(5.0, fallback_s=5.0, stop=never) is True
    assert socket.closes == 1


def test_other_messages_do_not_wake_the_agent() -> None:
    socket = FakeSocket([json.dumps({"type": "pong"}), "not json", b"\x00\x01"])
    listener = listener_over(Connector(socket))

    listener._run()
    listener.clear()  # the wake-up of the connection itself

    assert listener.pushes == 0
    clock = iter(range(100))
    listener._clock = lambda: float(next(clock))
    assert listener.wait(3.0, fallback_s=3.0, stop=never) is False


def test_every_connection_wakes_the_agent_once() -> None:
    # A batch assigned while the agent was not connected was pushed to no one.
    listener = listener_over(Connector(FakeSocket([]), FakeSocket([])))

    listener._run()

    assert listener.connections == 2
    assert listener.wait(5.0, fallback_s=5.0, stop=never) is True


def test_an_idle_connection_is_pinged_and_closed_when_the_ping_goes_unanswered() -> None:
    socket = FakeSocket([TimeoutError(), json.dumps({"type": "pong"}), TimeoutError()])
    socket.script.append(TimeoutError())  # no answer to the second ping
    connector = Connector(socket, FakeSocket([]))
    logs: list[str] = []
    listener = listener_over(connector, logs, ping_interval_s=480.0, pong_timeout_s=30.0)

    listener._run()

    assert socket.sent == [json.dumps({"action": "ping"})] * 2
    # Until the next ping, then until the pong is due (the clock stands still here).
    assert socket.recv_timeouts == [480.0, 30.0, 480.0, 30.0]
    assert socket.closes >= 1
    assert listener.connections == 2  # it reconnected
    assert any("no answer to a ping within 30s" in line for line in logs)


def test_refused_connections_back_off_exponentially_up_to_the_cap() -> None:
    refusals = [ConnectionRefusedError("refused") for _ in range(4)]
    logs: list[str] = []
    listener = listener_over(Connector(*refusals), logs)

    listener._run()

    delays = [line.rsplit("retrying in ", 1)[1].split("s", 1)[0] for line in logs]
    assert delays[:4] == ["0.001", "0.002", "0.004", "0.004"]
    assert listener.connections == 0
    assert not listener.connected


def test_wait_ends_on_stop_on_timeout_and_falls_back_to_polling_when_disconnected() -> None:
    listener = listener_over(Connector())
    ticks = iter(float(t) for t in range(1000))
    listener._clock = lambda: next(ticks)

    assert listener.wait(100.0, fallback_s=2.0, stop=lambda: True) is False
    listener._connected = True
    assert listener.wait(5.0, fallback_s=2.0, stop=never) is False  # the safety poll is due
    listener._connected = False
    waited_from = next(ticks)
    assert listener.wait(100.0, fallback_s=2.0, stop=never) is False  # polling again
    assert next(ticks) - waited_from <= 5  # after the fallback, not the 100 s


def test_stop_closes_the_connection_and_ends_the_thread() -> None:
    opened = threading.Event()
    released = threading.Event()

    class BlockingSocket(FakeSocket):
        def recv(self, timeout: float | None = None) -> str:
            opened.set()
            released.wait(timeout=10)
            raise closed(1000, "")

        def close(self) -> None:
            super().close()
            released.set()

    socket = BlockingSocket([])
    connect: Callable[..., FakeSocket] = lambda url, **options: socket  # noqa: E731
    listener = PushListener(PUSH_URL, CREDENTIAL, connect=connect)
    listener.start()
    assert opened.wait(timeout=10)
    assert listener.connected

    listener.stop()

    assert not listener._thread.is_alive()
    assert socket.closes >= 1
    assert not listener.connected
