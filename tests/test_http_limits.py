"""What a hostile or broken server can make an HTTP client spend (issue 16): an answer is read as
a stream and refused past ``max_answer_bytes``, and each attempt has one deadline, not one per
read. Fake servers on loopback sockets, in a thread: one sends an endless body, one trickles."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbtools import run

from migsync.core.errors import ConfigError, MalformedAnswer, ServerUnavailable
from migsync.protocol.signing import write_keypair
from migsync.testing import FakeClock
from migsync.transports.http import MAX_ANSWER_BYTES, HttpTransport

HUGE = 300 * 1024 * 1024
CHUNK = b"x" * 65536


class FakeServer:
    """Answers every request on a loopback port with ``mode``'s answer, counting what it sent:
    ``endless`` streams up to 300 MiB without a length, ``declared`` says 300 MiB in its
    Content-Length and then streams, ``trickle`` sends one byte of a promised body a second."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent = 0
        self.requests = 0
        self.stop = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            self.requests += 1
            length = {"endless": "", "declared": f"Content-Length: {HUGE}\r\n"}.get(
                self.mode, "Content-Length: 1000\r\n"
            )
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMigsync-Protocol: 2\r\n{length}"
            try:
                conn.sendall((head + "Connection: close\r\n\r\n").encode())
                while not self.stop.is_set() and self.sent < HUGE:
                    if self.mode == "trickle":
                        conn.sendall(b" ")
                        self.sent += 1
                        self.stop.wait(1.0)
                    else:
                        conn.sendall(CHUNK)
                        self.sent += len(CHUNK)
            except OSError:  # the client hung up: what it wanted
                return

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def endless() -> Iterator[FakeServer]:
    with FakeServer("endless") as server:
        yield server


@pytest.mark.parametrize("mode", ["endless", "declared"])
async def test_an_answer_over_the_limit_is_refused_without_being_held(mode: str) -> None:
    with FakeServer(mode) as server:
        tracemalloc.start()
        try:
            async with HttpTransport(server.url, token="t", retries=3, clock=FakeClock()) as transport:
                with pytest.raises(MalformedAnswer) as caught:
                    await transport.fetch()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    url = f"{server.url}/api/migrations/pending"
    assert str(caught.value) == f"GET {url}: answer larger than {MAX_ANSWER_BYTES} bytes"
    assert server.requests == 1, "an oversized answer is not asked for again"
    assert peak < 3 * MAX_ANSWER_BYTES, peak
    # Read no further than the limit (and what the sockets' buffers held): far from 300 MiB.
    assert server.sent < MAX_ANSWER_BYTES + 32 * 1024 * 1024, server.sent
    if mode == "declared":  # refused from its Content-Length, before its body
        assert server.sent < MAX_ANSWER_BYTES


async def test_the_limit_is_set_on_the_url_or_as_an_option(endless: FakeServer) -> None:
    url = f"{endless.url}/api/migrations/pending"
    for transport in (
        HttpTransport(f"{endless.url}?max_answer_bytes=1000", token="t", clock=FakeClock()),
        HttpTransport(endless.url, token="t", clock=FakeClock(), max_answer_bytes=1000),
    ):
        async with transport:
            assert transport.where == endless.url
            with pytest.raises(MalformedAnswer, match=f"^GET {url}: answer larger than 1000 bytes$"):
                await transport.fetch()
    for bad in ("x", "0", "-1", "1e6", "²"):
        with pytest.raises(ConfigError, match="max_answer_bytes"):
            HttpTransport(f"{endless.url}?max_answer_bytes={bad}", token="t")


async def test_a_trickling_server_cannot_hold_a_request_past_its_deadline() -> None:
    with FakeServer("trickle") as server:
        began = time.monotonic()
        async with HttpTransport(server.url, token="t", timeout=1, retries=1, clock=FakeClock()) as transport:
            with pytest.raises(ServerUnavailable) as caught:
                await transport.fetch()
        took = time.monotonic() - began
    url = f"{server.url}/api/migrations/pending"
    assert str(caught.value) == f"GET {url}: no complete answer within 1 s (tried 2 times)"
    assert server.requests == 2
    assert took < 10, took  # two attempts of 1 s; a per-read timeout would wait for ever


def test_client_sync_against_a_trickling_server_ends_within_its_timeout(tmp_path: Path) -> None:
    write_keypair(tmp_path / "key")
    with FakeServer("trickle") as server:
        began = time.monotonic()
        cli = run(
            "client", "sync", "--db", f"sqlite:///{tmp_path / 'c.db'}", "--server", server.url,
            "--client-id", "1", "--token", "t", "--trust-key", str(tmp_path / "key.pub"),
            "--timeout", "2", "--retries", "1",
            timeout=60,
        )  # fmt: skip
        took = time.monotonic() - began
    assert cli.returncode == 1, cli.stderr
    assert f"offline: GET {server.url}/api/migrations/pending: no complete answer within 2 s" in cli.stderr
    assert took < 15, took
