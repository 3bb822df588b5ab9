"""The agent's end of the push channel: one WebSocket connection, kept in a background thread.

When the register answer carries a ``push_url`` (an API Gateway WebSocket API), the agent
connects with its credential (``Authorization: Bearer qgja.…``) and waits on the
connection while idle: the dispatcher posts ``{"type": "batch", "batch_id": …}`` the
moment it assigns the agent a batch, and the agent leases it at once. A push is a wake-up,
not the batch: losing one costs latency until the next lease, never a job.

- Reconnects with backoff (1 s doubling to a minute) whenever the connection drops or is
  refused; API Gateway ends every connection after 2 hours, which is a reconnect too.
- Every (re)connection counts as a wake-up: a batch assigned while it was not connected
  had no connection to be pushed to, so the agent leases once right away.
- Pings every 8 minutes (``{"action": "ping"}``, answered by the $default route's pong):
  API Gateway closes a connection idle for 10 minutes, and a ping left unanswered
  shows a connection that is dead without having been closed.

This module imports ``websockets`` only when a listener starts (``qgjob --help`` stays
fast, and client commands never load it).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

PING_INTERVAL_S = 8 * 60.0  # below API Gateway's 10-minute idle timeout
PONG_TIMEOUT_S = 30.0
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0  # stop() must be prompt (SIGTERM)
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
# A connection that lasted less than this counts as a failed attempt (for the backoff).
STABLE_AFTER_S = 10.0
WAIT_SLICE_S = 0.1


class PushChannel(Protocol):
    """What the agent needs of the push channel (`PushListener`, or a fake in tests)."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def clear(self) -> None:
        """Forgets the wake-ups received so far (called right before each lease)."""

    def wait(self, timeout_s: float, *, fallback_s: float, stop: Callable[[], bool]) -> bool:
        """Until a wake-up (True), or False after ``timeout_s``, once ``stop()`` is true, or
        after ``fallback_s`` when the connection is down (the agent then polls)."""


PushFactory = Callable[[str, str, Callable[[str], None]], PushChannel]


class PushListener:
    """Holds the connection in a daemon thread; `wait` lets the main loop sleep on it."""

    def __init__(
        self,
        url: str,
        credential: str,
        *,
        log: Callable[[str], None] = lambda line: None,
        connect: Callable[..., Any] | None = None,
        ping_interval_s: float = PING_INTERVAL_S,
        pong_timeout_s: float = PONG_TIMEOUT_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._credential = credential
        self._log = log
        self._connect = connect
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._connected = False
        self._socket: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="qgjob-push", daemon=True)
        self.connections = 0  # successful connections so far
        self.pushes = 0  # batch notifications received so far

    # ---------------------------------------------------------------- the agent's side

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Closes the connection and ends the thread (waits for it about a second)."""
        self._stopping.set()
        with self._lock:
            socket = self._socket
        if socket is not None:
            with contextlib.suppress(Exception):  # already closing: nothing more to do
                socket.close()
        # A daemon thread: an attempt to connect still under way may be left to time out.
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=CLOSE_TIMEOUT_S + 0.5)

    def clear(self) -> None:
        self._woken.clear()

    def wait(self, timeout_s: float, *, fallback_s: float, stop: Callable[[], bool]) -> bool:
        started = self._clock()
        while not stop():
            elapsed = self._clock() - started
            if elapsed >= timeout_s or (not self._connected and elapsed >= fallback_s):
                return False
            limit = min(WAIT_SLICE_S, timeout_s - elapsed)
            if self._woken.wait(limit):
                return True
        return False

    # ---------------------------------------------------------------- the thread

    def _open(self) -> Any:
        connect = self._connect
        if connect is None:
            from websockets.sync.client import connect as websocket_connect

            connect = websocket_connect
        return connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self._credential}"},
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            # API Gateway answers no protocol-level pings; keep-alives are messages (see
            # PING_INTERVAL_S), which its $default route answers.
            ping_interval=None,
            compression=None,
            proxy=None,
        )

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                socket = self._open()
            except Exception as error:  # refused (401/403), unreachable, timed out
                failures += 1
                self._backoff(f"cannot connect to {self.url}: {_describe(error)}", failures)
                continue
            with self._lock:
                self._socket = socket
            if self._stopping.is_set():
                socket.close()
                break
            self.connections += 1
            self._connected = True
            self._woken.set()  # a batch assigned while disconnected was pushed to no one
            if self.connections == 1:
                self._log(f"push channel connected ({self.url})")
            opened = self._clock()
            with socket:  # closes it, however the listening ends
                reason = self._listen(socket)
            self._connected = False
            with self._lock:
                self._socket = None
            if self._stopping.is_set():
                break
            failures = 0 if self._clock() - opened >= STABLE_AFTER_S else failures + 1
            if failures:
                self._backoff(f"push connection lost ({reason})", failures)
            else:
                self._log(f"push connection closed ({reason}); reconnecting")

    def _listen(self, socket: Any) -> str:
        """Receives until the connection ends; returns why it ended."""
        from websockets.exceptions import ConnectionClosed

        last_sent = self._clock()
        ping_sent_at: float | None = None
        while not self._stopping.is_set():
            now = self._clock()
            if ping_sent_at is not None:
                deadline = ping_sent_at + self._pong_timeout_s
            else:
                deadline = last_sent + self._ping_interval_s
            try:
                message = socket.recv(timeout=max(0.0, deadline - now))
            except TimeoutError:
                if ping_sent_at is not None:
                    socket.close()
                    return f"no answer to a ping within {self._pong_timeout_s:g}s"
                try:
                    socket.send(json.dumps({"action": "ping"}))
                except ConnectionClosed as closed:
                    return _closed(closed)
                ping_sent_at = last_sent = self._clock()
                continue
            except ConnectionClosed as closed:
                return _closed(closed)
            ping_sent_at = None  # anything received shows the connection is alive
            if _is_batch(message):
                self.pushes += 1
                self._woken.set()
        return "stopped"

    def _backoff(self, message: str, failures: int) -> None:
        delay = min(self._backoff_max_s, self._backoff_base_s * 2 ** (failures - 1))
        self._log(f"{message}; retrying in {delay:g}s (polling meanwhile)")
        self._stopping.wait(delay)


def _is_batch(message: str | bytes) -> bool:
    try:
        body = json.loads(message)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("type") == "batch"


def _closed(closed: Exception) -> str:
    received = getattr(closed, "rcvd", None)
    if received is None:
        return "closed without a close frame"
    return f"closed by the server: {received.code} {received.reason}".rstrip()


def _describe(error: Exception) -> str:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return str(error) or type(error).__name__


def open_push_channel(url: str, credential: str, log: Callable[[str], None]) -> PushChannel:
    """The production `PushFactory`."""
    return PushListener(url, credential, log=log)
