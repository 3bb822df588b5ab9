"""Runs a socketserver-style HTTP server on a background thread."""

from __future__ import annotations

import threading
from socketserver import BaseServer


class ServerThread:
    """Starts ``serve_forever`` on a daemon thread; ``stop`` shuts it down and waits."""

    def __init__(self, server: BaseServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    @property
    def base_url(self) -> str:
        address = self.server.server_address
        if not isinstance(address, tuple):
            raise TypeError(f"not a TCP server address: {address!r}")
        host, port = address[0], address[1]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # shutdown() waits for serve_forever to return: it would hang if it never ran.
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
