"""Real servers for tests: a free loopback port, and the HTTP API served by uvicorn in a thread.

A :class:`ServerThread` is a real server (sockets, HTTP/1.1, keep-alive), only in this process:
it starts in a fraction of a second and can be stopped and started again on the same port,
which is how a test plays a server that goes away and comes back.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

#: Ports below the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768 and
#: up on Linux), so that no outgoing connection takes one while a test's server is down; each
#: pytest-xdist worker draws from a slice of its own, so that parallel workers never race for one.
_PORTS_FROM, _PORTS_PER_WORKER, _WORKER_SLICES = 20000, 600, 20


def _worker_index() -> int:
    """This pytest-xdist worker's number (``gw3``: 3), 0 outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) % _WORKER_SLICES if worker[2:].isdigit() else 0


def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking), from this worker's own slice.

    A random one of the slice, tried until one binds: two runs of the suite at once (two
    checkouts, say) rarely pick the same, and never keep it if they do.
    """
    first = _PORTS_FROM + _worker_index() * _PORTS_PER_WORKER
    candidates = list(range(first, first + _PORTS_PER_WORKER))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free loopback port in {first}..{first + _PORTS_PER_WORKER - 1}")


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


@contextlib.contextmanager
def serve_process(store: str, *args: str, admin: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``migsync serve --store STORE ARGS`` (a real process) on a free loopback port until the
    block ends: its base URL, once it answers."""
    import httpx
    from dbtools import start, stop, wait_for

    port = free_port()
    proc = start("serve", "--store", store, "--port", str(port), "--admin-token", admin, *args, env=env)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, proc.communicate()
        try:
            httpx.get(f"{base}/api/openapi.json", timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_for(f"migsync serve on port {port}", answers, timeout=30)
        yield base
    finally:
        stop(proc)
