"""Real servers for tests: a free loopback port, and the HTTP API served by uvicorn in a thread.

A :class:`ServerThread` is a real server (sockets, HTTP/1.1, keep-alive), only in this process:
it starts in a fraction of a second and can be stopped and started again on the same port,
which is how a test plays a server that goes away and comes back.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """``make_app()`` served by uvicorn on ``127.0.0.1:port``, in a thread with its own event loop.

    Each :meth:`start` serves a new app from ``make_app`` (its lifespan runs again) on the same
    port. :meth:`stop` shuts down gracefully: the port refuses connections afterwards.
    """

    def __init__(self, make_app: Callable[[], ASGIApp], port: int | None = None) -> None:
        self.make_app = make_app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> None:
        assert self._server is None, "the server is running already"
        # log_config=None: uvicorn must not reconfigure this process's logging.
        config = uvicorn.Config(
            self.make_app(),
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="none",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"uvicorn:{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise AssertionError(f"the server on port {self.port} did not start (see the log above)")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise AssertionError(f"the server on port {self.port} did not start within {timeout:g}s")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def stop(self, timeout: float = 15.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the server on port {self.port} did not stop within {timeout:g}s")
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None
