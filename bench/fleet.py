"""One migsync server and N clients over real HTTP on loopback: propagation and idle polling.

The server (``migsync serve``, uvicorn, store on SQLite in a temp dir) runs in a
subprocess; the N clients (each an in-memory SQLite database with its own
``Client``, ``HttpTransport`` and ``Syncer``, one shared httpx pool) run in this
process. Per N:

1. **initial**: every client syncs once and applies the one published migration.
2. **propagation**: every client syncs every ``--interval`` seconds, as
   ``migsync client run`` does; a second migration is published (``Store.publish``,
   in this process) and the time is taken until the server has acknowledged
   every client's report of it (the report is committed before it is
   acknowledged; ``Store.fleet()`` then confirms that every client applied it).
   The server trusts a client's cached ETag parts for ``cache_seconds`` (1 s),
   so the expected latency is about that plus one poll interval. All N clients
   share this process's one core, a few syncs in flight at a time: the
   interval they reach is shown, and at N=1000 it is this process's limit
   (a no-op sync costs a few ms of client CPU), not the server's.
3. **idle**: the clients' up-to-date ETags are polled as fast as the load
   generator can, and the 304s per second and the server's CPU (utime + stime
   from /proc) per 1000 polls are taken. The generator is one asyncio process:
   raw keep-alive connections (asyncio protocols, one request in flight per
   connection unless ``--depth``), because httpx costs more CPU per request than
   the server does per 304 and would measure itself. The same generator polls a
   bare Starlette app (one route returning 304 with an ETag) under the same
   uvicorn settings in a subprocess: the ceiling. Also shown, to separate client
   cost from server cost: ``HttpTransport.fetch(etag)`` and a bare httpx loop.

    python bench/fleet.py [-n 100 1000] [--interval 0.5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from migsync import Client, load_directory, make_plugins
from migsync.client.sync import Syncer
from migsync.protocol.signing import load_private_key, load_public_keys
from migsync.server import Store
from migsync.transports.http import HttpTransport

T = TypeVar("T")

ADMIN_TOKEN = "bench-admin-token"
#: httpx's pool costs CPU per request in proportion to the requests waiting on it (1000
#: queued: ~6 ms each), so the simulated fleet shares a few connections and as many syncs
#: run at once; what a client process of its own pays is the cost at one or two.
HTTPX_CONNECTIONS = 8
PENDING = "/api/migrations/pending"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ENV = {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}

# The ceiling: the least a Starlette endpoint can do for a poll, under the uvicorn
# settings of `migsync serve` (cli_server.py: host, port, log_level, lifespan="on").
BARE_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def pending(request):
    return Response(status_code=304, headers={"ETag": '"1-1-1"', "Cache-Control": "no-cache"})

app = Starlette(routes=[Route("/api/migrations/pending", pending, methods=["GET"])])
config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="on")
uvicorn.Server(config).run()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess on a loopback port, its CPU time read from /proc."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_ENV)

    def cpu(self) -> float:
        """User + system CPU seconds of the process (all its threads) so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14, 15

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not listen on {self.port} within {timeout:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def serving(name: str, cmd: list[str], port: int, log: Path) -> Iterator[Server]:
    server = Server(name, cmd, port, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def migration_file(directory: Path, version: int) -> None:
    (directory / f"{version:04d}_table_{version}.sql").write_text(
        f"-- migrate:up\nCREATE TABLE t_{version} (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
        f"CREATE INDEX ix_t_{version}_name ON t_{version} (name);\n"
        f"-- migrate:down\nDROP INDEX ix_t_{version}_name;\nDROP TABLE t_{version};\n"
    )


# -- load generators: (name, request bytes) -> polls ----------------------------------------------


class _Poller(asyncio.Protocol):
    """One keep-alive connection: ``depth`` requests in flight, a new one sent per response."""

    def __init__(self, requests: Iterator[bytes], depth: int, tally: Tally) -> None:
        self.requests = requests
        self.depth = depth
        self.tally = tally
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"".join(next(self.requests) for _ in range(self.depth)))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        done = start = 0
        while (end := buffer.find(b"\r\n\r\n", start)) >= 0:
            head = buffer[start:end]
            polled = head[9:12] == b"304"
            length = 0 if polled else _content_length(head)
            if len(buffer) < end + 4 + length:
                break  # the body is still coming
            start = end + 4 + length
            if polled:
                self.tally.ok += 1
            else:
                self.tally.other += 1
            done += 1
        self.buffer = buffer[start:]
        if done and self.tally.running and self.transport is not None:
            self.transport.write(b"".join(next(self.requests) for _ in range(done)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@dataclass
class Tally:
    ok: int = 0
    other: int = 0
    running: bool = True


@dataclass
class Rate:
    polls: int = 0
    other: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def per_second(self) -> float:
        return self.polls / self.seconds if self.seconds else 0.0

    @property
    def server_ms_per_1000(self) -> float:
        return self.server_cpu * 1e6 / self.polls if self.polls else float("nan")

    @property
    def client_ms_per_1000(self) -> float:
        return self.client_cpu * 1e6 / self.polls if self.polls else float("nan")


def raw_requests(port: int, credentials: Sequence[tuple[str, str]]) -> list[bytes]:
    """One GET per (token, etag), as bytes on the wire."""
    return [
        (
            f"GET {PENDING} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: application/json\r\nIf-None-Match: {etag}\r\n\r\n"
        ).encode()
        for token, etag in credentials
    ]


async def stream_polls(
    server: Server, credentials: Sequence[tuple[str, str]], connections: int, depth: int, seconds: float
) -> Rate:
    """304s per second with raw keep-alive connections (the clients' tokens in turn)."""
    loop = asyncio.get_running_loop()
    requests = itertools.cycle(raw_requests(server.port, credentials))
    tally = Tally()
    pollers = [
        (await loop.create_connection(lambda: _Poller(requests, depth, tally), "127.0.0.1", server.port))[1]
        for _ in range(connections)
    ]

    try:
        return await measured(server, tally, seconds)
    finally:
        tally.running = False
        for poller in pollers:
            if poller.transport is not None:
                poller.transport.close()
        await asyncio.gather(*(p.closed for p in pollers))


async def httpx_polls(
    server: Server, credentials: Sequence[tuple[str, str]], connections: int, seconds: float
) -> Rate:
    """304s per second from a bare httpx loop: one task per connection."""
    url = f"{server.url}{PENDING}"
    headers = [
        {"Authorization": f"Bearer {t}", "Accept": "application/json", "If-None-Match": e}
        for t, e in credentials
    ]

    async def poll(http: httpx.AsyncClient, item: dict[str, str]) -> bool:
        return (await http.get(url, headers=item)).status_code == 304

    return await task_polls(server, connections, seconds, headers, poll)


async def fetch_polls(
    server: Server, transports: Sequence[tuple[HttpTransport, str]], connections: int, seconds: float
) -> Rate:
    """304s per second through ``HttpTransport.fetch(etag)``, the clients' own code path."""

    async def poll(_http: httpx.AsyncClient, item: tuple[HttpTransport, str]) -> bool:
        transport, etag = item
        return (await transport.fetch(etag)).migrations is None

    return await task_polls(server, connections, seconds, transports, poll)


async def task_polls(
    server: Server,
    connections: int,
    seconds: float,
    items: Sequence[T],
    poll: Callable[[httpx.AsyncClient, T], Awaitable[bool]],
) -> Rate:
    """``connections`` tasks, each polling its share of ``items`` in turn, one request at a time."""
    tally = Tally()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:

        async def worker(offset: int) -> None:
            for item in itertools.islice(itertools.cycle(items), offset, None, connections):
                if not tally.running:
                    return
                if await poll(http, item):
                    tally.ok += 1
                else:
                    tally.other += 1

        tasks = [asyncio.create_task(worker(i)) for i in range(connections)]
        try:
            return await measured(server, tally, seconds)
        finally:
            tally.running = False
            await asyncio.gather(*tasks, return_exceptions=True)


async def measured(server: Server, tally: Tally, seconds: float) -> Rate:
    """Warm up, then count polls and CPU (the server's, this process's) over one window."""
    await asyncio.sleep(0.5)
    ok, other = tally.ok, tally.other
    wall, server_cpu, client_cpu = time.perf_counter(), server.cpu(), time.process_time()
    await asyncio.sleep(seconds)
    return Rate(
        tally.ok - ok,
        tally.other - other,
        time.perf_counter() - wall,
        server.cpu() - server_cpu,
        time.process_time() - client_cpu,
    )


# -- the fleet ------------------------------------------------------------------------------------


@dataclass
class Fleet:
    syncers: list[Syncer] = field(default_factory=list)
    transports: list[HttpTransport] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fleet_of(
    url: str, credentials: Sequence[tuple[int, str]], public_key: Path, http: httpx.AsyncClient
) -> AsyncIterator[Fleet]:
    plugins = make_plugins(autoload=False)
    trusted = load_public_keys([public_key])
    fleet = Fleet()
    async with contextlib.AsyncExitStack() as stack:
        for client_id, token in credentials:
            client = Client.connect(
                "sqlite:///:memory:", plugins=plugins, sinks=[], backend_options={"create": True}
            )
            transport = HttpTransport(url, client_id=str(client_id), token=token, http=http)
            fleet.clients.append(await stack.enter_async_context(client))
            fleet.transports.append(transport)
            fleet.syncers.append(Syncer(client, transport, trusted))
        yield fleet


async def initial_sync(fleet: Fleet, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(syncer: Syncer) -> None:
        async with gate:
            result = await syncer.sync()
        assert result.ok and result.delivered == 1, result

    started = time.perf_counter()
    await asyncio.gather(*(one(s) for s in fleet.syncers))
    return time.perf_counter() - started


@dataclass
class Propagation:
    seconds: float
    #: the interval each client managed between the starts of its syncs, before the publish
    achieved_interval: float
    client_cpu_per_sync_ms: float
    #: the server's CPU seconds from the publish until the last report
    server_cpu: float


async def propagate(
    fleet: Fleet,
    store: Store,
    server: Server,
    migrations_dir: Path,
    key: Path,
    version: int,
    interval: float,
    in_flight: int,
) -> Propagation:
    """Clients sync every ``interval``; publish ``version`` and wait until every client reported it."""
    n = len(fleet.syncers)
    gate = asyncio.Semaphore(in_flight)
    done_at: list[float | None] = [None] * n
    applied = [False] * n
    syncs = 0
    stop = asyncio.Event()
    all_done = asyncio.Event()
    remaining = n

    async def poll(i: int, syncer: Syncer) -> None:
        nonlocal syncs, remaining
        await asyncio.sleep(random.uniform(0, interval))  # the fleet does not poll in lockstep
        while not stop.is_set():
            async with gate:
                result = await syncer.sync()
            syncs += 1
            applied[i] = applied[i] or any(o.ok for o in result.run.processed)
            if applied[i] and done_at[i] is None and result.undelivered == 0 and result.report_error is None:
                done_at[i] = time.perf_counter()
                remaining -= 1
                if remaining == 0:
                    all_done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    tasks = [asyncio.create_task(poll(i, s)) for i, s in enumerate(fleet.syncers)]
    try:
        await asyncio.sleep(interval * 2)  # the fleet at its steady polling rate
        syncs0, cpu0, wall0 = syncs, time.process_time(), time.perf_counter()
        await asyncio.sleep(interval * 2)
        steady = time.perf_counter() - wall0
        achieved = n * steady / max(1, syncs - syncs0)
        cpu_per_sync = (time.process_time() - cpu0) * 1000 / max(1, syncs - syncs0)
        migration_file(migrations_dir, version)
        result = await store.publish(load_directory(migrations_dir), load_private_key(key))
        published, server_cpu = time.perf_counter(), server.cpu()
        assert result.added, result
        await asyncio.wait_for(all_done.wait(), 120)
        server_cpu = server.cpu() - server_cpu
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    entries = await store.fleet()
    missing = [e.client.name for e in entries if version not in e.applied or e.pending]
    assert not missing, f"the fleet shows {len(missing)} clients without version {version}: {missing[:5]}"
    finished = max(t for t in done_at if t is not None)
    return Propagation(finished - published, achieved, cpu_per_sync, server_cpu)


@dataclass
class Row:
    n: int
    initial: float
    initial_server_cpu: float
    propagation: Propagation
    migsync: Rate
    bare: Rate
    fetch: Rate
    httpx_migsync: Rate
    httpx_bare: Rate


async def bench_fleet(n: int, root: Path, bare: Server, args: argparse.Namespace) -> Row:
    migsync = str(Path(sys.executable).with_name("migsync"))
    work = root / f"n{n}"
    migrations_dir = work / "migrations"
    migrations_dir.mkdir(parents=True)
    key = work / "key"
    subprocess.run([migsync, "keygen", "--out", str(key)], check=True, env=_ENV, capture_output=True)
    store_url = f"sqlite:///{work / 'store.db'}"
    migration_file(migrations_dir, 1)
    async with Store.open(store_url) as store:
        await store.publish(load_directory(migrations_dir), load_private_key(key))
        credentials = [await store.add_client(f"client-{i:05d}") for i in range(n)]

    port = free_port()
    cmd = [migsync, "serve", "--store", store_url, "--port", str(port)]
    cmd += ["--admin-token", ADMIN_TOKEN, "--log-level", "warning"]
    connections = min(n, args.connections)
    with serving("migsync serve", cmd, port, work / "server.log") as server:
        pool = min(n, HTTPX_CONNECTIONS)
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        async with (
            httpx.AsyncClient(limits=limits, timeout=60.0) as http,
            Store.open(store_url, create=False) as store,
        ):
            async with fleet_of(server.url, credentials, key.with_suffix(".pub"), http) as fleet:
                initial_cpu = server.cpu()
                initial = await initial_sync(fleet, pool)
                initial_cpu = server.cpu() - initial_cpu
                propagation = await propagate(
                    fleet, store, server, migrations_dir, key, 2, args.interval, pool
                )
            # The clients' databases are closed: only their transports poll from here on.
            offers = await asyncio.gather(*(t.fetch(None) for t in fleet.transports))
            assert all(o.migrations == () and o.etag for o in offers), offers[:3]
            etags = [str(o.etag) for o in offers]
            polled = [(token, etag) for (_, token), etag in zip(credentials, etags, strict=True)]
            # Alternated, best of --rounds: other work on the machine hits both alike.
            ours: list[Rate] = []
            ceiling: list[Rate] = []
            for _ in range(args.rounds):
                ours.append(await stream_polls(server, polled, connections, args.depth, args.seconds))
                ceiling.append(await stream_polls(bare, polled, connections, args.depth, args.seconds))
            pairs = list(zip(fleet.transports, etags, strict=True))
            fetch = await fetch_polls(server, pairs, pool, args.seconds)
            httpx_ours = await httpx_polls(server, polled, pool, args.seconds)
            httpx_bare = await httpx_polls(bare, polled, pool, args.seconds)
    for rate in (*ours, *ceiling, fetch, httpx_ours, httpx_bare):
        assert rate.other == 0, f"{rate.other} polls were not answered 304"
    best = functools.partial(max, key=lambda r: r.per_second)
    return Row(n, initial, initial_cpu, propagation, best(ours), best(ceiling), fetch, httpx_ours, httpx_bare)


def report(rows: Sequence[Row], args: argparse.Namespace) -> None:
    print(
        f"\nmigsync bench/fleet.py  poll interval {args.interval:g}s  idle window {args.seconds:g}s x "
        f"{args.rounds}  generator: raw asyncio keep-alive, <= {args.connections} connections, "
        f"depth {args.depth}  cores={os.cpu_count()}"
    )
    print(
        f"{'N':>6}{'propagation s':>15}{'304/s migsync':>15}{'304/s bare':>12}{'ratio':>8}"
        f"{'server ms/1000 polls':>22}{'bare ms/1000':>14}"
    )
    for r in rows:
        print(
            f"{r.n:>6}{r.propagation.seconds:>15.2f}{r.migsync.per_second:>15.0f}"
            f"{r.bare.per_second:>12.0f}{r.migsync.per_second / r.bare.per_second:>7.2f}x"
            f"{r.migsync.server_ms_per_1000:>22.0f}{r.bare.server_ms_per_1000:>14.0f}"
        )
    print("target: idle poll rate >= 0.5x bare Starlette")
    print(
        "\ninitial: first sync of every client (wall s, server CPU s); poll: the interval the clients "
        "reached\nwhile polling (s) and this process's CPU per sync (ms); propag.: server CPU s from "
        "publish to last report;\nrepoll: s between two idle polls of one client (over 1 s: past the "
        "server's cache);\nclient CPU ms per 1000 polls: the raw generator, HttpTransport.fetch and a "
        f"bare httpx loop ({HTTPX_CONNECTIONS} connections)"
    )
    print(
        f"{'N':>6}{'initial':>9}{'srv':>6}{'poll':>6}{'ms':>6}{'propag.':>9}{'repoll':>8}{'gen':>6}"
        f"{'fetch/s':>9}{'ms/1k':>7}{'httpx/s':>9}{'ms/1k':>7}{'httpx bare/s':>14}"
    )
    for r in rows:
        p = r.propagation
        print(
            f"{r.n:>6}{r.initial:>9.2f}{r.initial_server_cpu:>6.1f}{p.achieved_interval:>6.2f}"
            f"{p.client_cpu_per_sync_ms:>6.1f}{p.server_cpu:>9.2f}{r.n / r.migsync.per_second:>8.2f}"
            f"{r.migsync.client_ms_per_1000:>6.0f}{r.fetch.per_second:>9.0f}{r.fetch.client_ms_per_1000:>7.0f}"
            f"{r.httpx_migsync.per_second:>9.0f}{r.httpx_migsync.client_ms_per_1000:>7.0f}"
            f"{r.httpx_bare.per_second:>14.0f}"
        )


async def run(args: argparse.Namespace) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="migsync-fleet-") as tmp:
        root = Path(tmp)
        port = free_port()
        cmd = [sys.executable, "-c", BARE_SERVER, str(port)]
        with serving("bare Starlette", cmd, port, root / "bare.log") as bare:
            for n in args.n:
                rows.append(await bench_fleet(n, root, bare, args))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[100, 1000], help="fleet sizes")
    parser.add_argument("--interval", type=float, default=0.5, help="poll interval of the propagation phase")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each idle measurement")
    parser.add_argument("--connections", type=int, default=64, help="load generator connections (max)")
    parser.add_argument("--depth", type=int, default=1, help="requests in flight per connection")
    parser.add_argument("--rounds", type=int, default=2, help="idle rounds, migsync and bare in turn; best")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up the servers as on Ctrl-C
    started = time.perf_counter()
    try:
        rows = asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit("interrupted; the servers are stopped")
    report(rows, args)
    print(f"(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
