"""A simulated fleet of N clients against ``migsync serve`` on Postgres, 1 and 2 server processes.

The clients are not migsync clients: each is a little state machine speaking the wire
protocol on raw keep-alive connections (asyncio streams, a pool of them shared by the
fleet), because a real client, or httpx, costs more CPU per request than the server does
and would measure itself. The store is filled in bulk: ``Store.add_clients`` (the path of
``clients add --from``), then one ``INSERT .. SELECT`` that marks migration 1 applied by
everyone. Per N and process count:

1. **fill**: clients registered per second through ``Store.add_clients``.
2. **first poll**: every client polls once without an ETag (the answer's ETag is kept).
3. **publish to all applied**: every client polls every ``--interval`` seconds (spread
   evenly), with its ETag; a 200 carrying a migration is "applied" and reported
   (``POST /api/migrations/status``), the next poll then keeps the answer's ETag. Migration
   2 is published and the time is taken until every client's report of it was
   acknowledged. The server's CPU (the process and its workers, utime + stime from /proc)
   over that window, per client, is the cost of one client cycle (poll, fetch, report, and
   the polls around them).
4. **idle**: every client's current ETag polled as fast as the generator can over
   ``--connections`` connections: 304/s, against a bare Starlette app answering 304
   under the same uvicorn settings and worker count, in the same run.
5. **fleet view**: ``GET /api/clients`` (first page, 100 clients), with the counts and
   without (``?counts=0``), the median of 10; and the server's RSS (its processes together).

    python bench/fleet_scale.py [-n 1000 10000] [--processes 1 2] [--interval 10]
    python bench/fleet_scale.py -n 100000 --sample 2000    # fill, fleet view, idle of 2000

The machine is shared and has 2 cores: server, Postgres and generator compete for them,
so ratios measured in one run are what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet import BARE_SERVER, Rate, Tally, _Poller, free_port, migration_file

from migsync import load_directory
from migsync.protocol.wire import PROTOCOL, PROTOCOL_HEADER
from migsync.server import Store, fleet_summary

ADMIN = "bench-admin-token"
PENDING = "/api/migrations/pending"
STATUS = "/api/migrations/status"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_ENV = {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}
_PG = os.environ.get("MIGSYNC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


# -- server processes -----------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _stat(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


class Server:
    """A server subprocess (and its workers) on a loopback port; CPU and RSS read from /proc."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_ENV)

    def cpu(self) -> float:
        total = 0.0
        for pid in tree(self.proc.pid):
            with contextlib.suppress(OSError):
                fields = _stat(pid)
                total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return total

    def rss_mb(self) -> float:
        total = 0
        for pid in tree(self.proc.pid):
            with contextlib.suppress(OSError):
                total += int(_stat(pid)[21]) * _PAGE
        return total / 1e6

    def wait_ready(self, probe: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + probe, timeout=1).status_code < 500:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not answer on {self.port} within {timeout:g}s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def serving(server: Server, probe: str) -> Iterator[Server]:
    try:
        server.wait_ready(probe)
        yield server
    finally:
        server.stop()


def bare_server(root: Path, processes: int) -> Server:
    module = root / "bare_app.py"
    module.write_text(BARE_SERVER.split("config = uvicorn.Config")[0])
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(root), "--port", str(port)]
    cmd += ["--log-level", "warning", "--workers", str(processes)]
    return Server("bare", cmd, port, root / "bare.log")


def migsync_server(store: str, root: Path, processes: int) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "migsync", "serve", "--store", store, "--admin-token", ADMIN]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-panel", "--workers", str(processes)]
    return Server(f"migsync serve --workers {processes}", cmd, port, root / f"serve-{processes}.log")


# -- the store, filled in bulk --------------------------------------------------------------------


async def fresh_store(name: str) -> str:
    admin = await asyncpg.connect(f"{_PG}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{_PG}/{name}"


@dataclass
class Filled:
    tokens: list[str]
    per_second: float
    migrations: Path
    key: Ed25519PrivateKey


async def fill(store_url: str, n: int, root: Path) -> Filled:
    """``n`` clients registered in bulk, migration 1 published and marked applied by all."""
    migrations = root / "migrations"
    migrations.mkdir(exist_ok=True)
    for old in migrations.iterdir():
        old.unlink()
    migration_file(migrations, 1)
    key = Ed25519PrivateKey.generate()
    async with Store.open(store_url) as store:
        await store.publish(load_directory(migrations), key)
        started = time.perf_counter()
        tokens: list[str] = []
        for start in range(0, n, 10_000):
            added = await store.add_clients([f"client-{i:07d}" for i in range(start, min(n, start + 10_000))])
            tokens += [token for _, _, token in added]
        rate = n / (time.perf_counter() - started)
    conn = await asyncpg.connect(store_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(
            "INSERT INTO store_client_status (client_id, version, applied, error, attempts, checksum, "
            "updated_at, dead) SELECT c.id, m.version, TRUE, NULL, 1, m.checksum, 0, FALSE "
            "FROM store_clients c CROSS JOIN store_migrations m"
        )
        await conn.execute(
            "UPDATE store_clients SET reported_version = (SELECT max(version) FROM store_migrations)"
        )
        await conn.execute(fleet_summary.REFRESH_ALL_SQL)  # rows written behind the store's back
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return Filled(tokens, rate, migrations, key)


# -- the simulated fleet --------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        body = await self.reader.readexactly(length) if length else b""
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


def get(port: int, token: str, etag: str | None) -> bytes:
    match = f"If-None-Match: {etag}\r\n" if etag else ""
    return (
        f"GET {PENDING} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"{PROTOCOL_HEADER}: {PROTOCOL}\r\nAccept: application/json\r\n{match}\r\n"
    ).encode()


def post(port: int, token: str, body: bytes) -> bytes:
    return (
        f"POST {STATUS} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"{PROTOCOL_HEADER}: {PROTOCOL}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Counters:
    polls: int = 0
    full: int = 0
    reports: int = 0
    errors: int = 0


class SimulatedFleet:
    """N clients, each with its token, its ETag and the versions it applied."""

    def __init__(self, port: int, tokens: Sequence[str], connections: int) -> None:
        self.port = port
        self.tokens = list(tokens)
        self.etags: list[str | None] = [None] * len(tokens)
        self.applied: list[set[str]] = [{"1"} for _ in tokens]
        self.connections = min(connections, len(tokens))
        self.counters = Counters()

    async def step(self, conn: Connection, i: int) -> None:
        """One client's poll; a 200 with migrations is applied and reported."""
        token = self.tokens[i]
        status, headers, body = await conn.request(get(self.port, token, self.etags[i]))
        self.counters.polls += 1
        if status == 304:
            return
        if status != 200:
            self.counters.errors += 1
            return
        self.counters.full += 1
        self.etags[i] = headers.get(b"etag", b"").decode() or None
        offered = json.loads(body)["migrations"]
        fresh = [m for m in offered if m["version"] not in self.applied[i]]
        if not fresh:
            return
        reports = [
            {
                "version": m["version"],
                "applied": True,
                "error": None,
                "attempts": 1,
                "checksum": m["checksum"],
            }
            for m in fresh
        ]
        status, _, _ = await conn.request(post(self.port, token, json.dumps({"reports": reports}).encode()))
        if status != 200:
            self.counters.errors += 1
            return
        self.counters.reports += 1
        self.applied[i] |= {m["version"] for m in fresh}

    async def poll_all_once(self) -> float:
        """Every client polls once, as fast as the connections go: the seconds it took."""
        queue = iter(range(len(self.tokens)))
        started = time.perf_counter()

        async def worker() -> None:
            conn = await Connection.open(self.port)
            try:
                for i in queue:
                    await self.step(conn, i)
            finally:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(self.connections)))
        return time.perf_counter() - started

    async def run(self, interval: float, until: asyncio.Event) -> None:
        """Every client polls every ``interval`` seconds (spread evenly) until ``until`` is set."""
        n = len(self.tokens)
        now = time.perf_counter()
        due = [(now + interval * i / n, i) for i in range(n)]
        heapq.heapify(due)

        async def worker() -> None:
            conn = await Connection.open(self.port)
            try:
                while not until.is_set():
                    when, i = heapq.heappop(due)
                    delay = when - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self.step(conn, i)
                    heapq.heappush(due, (max(when + interval, time.perf_counter()), i))
            finally:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(self.connections)))


async def idle_polls(server: Server, port: int, tokens: Sequence[str], etags: Sequence[str | None],
                     connections: int, seconds: float) -> Rate:  # fmt: skip
    """304s per second on raw keep-alive connections, the clients' tokens and ETags in turn
    (bench/fleet.py's generator)."""
    import itertools

    loop = asyncio.get_running_loop()
    requests = itertools.cycle([get(port, t, e or '"0"') for t, e in zip(tokens, etags, strict=True)])
    tally = Tally()
    pollers = [
        (await loop.create_connection(lambda: _Poller(requests, 1, tally), "127.0.0.1", port))[1]
        for _ in range(connections)
    ]
    try:
        await asyncio.sleep(0.5)
        ok, other = tally.ok, tally.other
        wall, cpu, mine = time.perf_counter(), server.cpu(), time.process_time()
        await asyncio.sleep(seconds)
        return Rate(
            tally.ok - ok,
            tally.other - other,
            time.perf_counter() - wall,
            server.cpu() - cpu,
            time.process_time() - mine,
        )
    finally:
        tally.running = False
        for poller in pollers:
            if poller.transport is not None:
                poller.transport.close()
        await asyncio.gather(*(p.closed for p in pollers))


async def report_rate(server: Server, fleet: SimulatedFleet, checksum: str, seconds: float) -> Rate:
    """Reports per second that change something (version 1 applied, its ``attempts`` one more
    each time: an upsert that writes, the client's row with its change stamp, and a status
    event), the clients in turn over the fleet's connections, each waiting for its answer: the
    throughput of the report path."""
    counts = Tally()
    attempts = 1

    async def worker(start: int) -> None:
        nonlocal attempts
        conn = await Connection.open(fleet.port)
        try:
            i = start
            while counts.running:
                attempts += 1
                body = json.dumps(
                    {
                        "reports": [
                            {
                                "version": "1",
                                "applied": True,
                                "error": None,
                                "attempts": attempts,
                                "checksum": checksum,
                            }
                        ]
                    }
                ).encode()
                status, _, answer = await conn.request(post(fleet.port, fleet.tokens[i], body))
                if status == 200 and json.loads(answer)["recorded"] == ["1"]:
                    counts.ok += 1
                else:
                    counts.other += 1
                    if counts.other == 1:
                        print(f"a report failed: {status} {answer[:300]!r}", file=sys.stderr)
                i = (i + fleet.connections) % len(fleet.tokens)
        finally:
            conn.close()

    tasks = [asyncio.create_task(worker(c)) for c in range(fleet.connections)]
    try:
        await asyncio.sleep(0.5)
        ok, other = counts.ok, counts.other
        wall, cpu, mine = time.perf_counter(), server.cpu(), time.process_time()
        await asyncio.sleep(seconds)
        return Rate(
            counts.ok - ok, counts.other - other, time.perf_counter() - wall, server.cpu() - cpu,
            time.process_time() - mine,
        )  # fmt: skip
    finally:
        counts.running = False
        await asyncio.gather(*tasks)


async def published_checksum(store_url: str, version: str) -> str:
    from migsync.core.version import Version

    conn = await asyncpg.connect(store_url)
    try:
        key = Version.parse(version).key  # the store keeps versions as sortable keys
        return str(await conn.fetchval("SELECT checksum FROM store_migrations WHERE version = $1", key))
    finally:
        await conn.close()


async def first_page_ms(server: Server, counts: bool = True) -> float:
    times = []
    params = {"limit": "100"} if counts else {"limit": "100", "counts": "0"}
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        for _ in range(11):
            started = time.perf_counter()
            answer = await http.get("/api/clients", params=params)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    return statistics.median(times[1:]) * 1000


# -- one configuration ----------------------------------------------------------------------------


@dataclass
class Row:
    n: int
    processes: int
    fill_per_s: float
    first_poll_s: float
    converge_s: float | None
    applied_share: float
    polls_per_s: float | None
    cpu_ms_per_client: float | None
    idle: Rate
    bare: Rate
    reports: Rate
    page_ms: float
    page_no_counts_ms: float
    rss_mb: float
    errors: int


async def bench(n: int, processes: int, root: Path, args: argparse.Namespace) -> Row:
    store_url = await fresh_store(f"migsync_bench_scale_{n}_{processes}")
    filled = await fill(store_url, n, root)
    with serving(migsync_server(store_url, root, processes), "/api/openapi.json") as server:
        polling = filled.tokens[: args.sample] if args.sample else filled.tokens
        fleet = SimulatedFleet(server.port, polling, args.connections)
        first_poll = await fleet.poll_all_once()
        converge = cpu_per_client = polls_per_s = None
        applied_share = 1.0
        if not args.skip_propagation and not args.sample:
            stop = asyncio.Event()
            running = asyncio.create_task(fleet.run(args.interval, stop))
            await asyncio.sleep(args.interval)  # the fleet at its steady polling rate
            migration_file(filled.migrations, 2)
            reports0, cpu0, polls0 = fleet.counters.reports, server.cpu(), fleet.counters.polls
            async with Store.open(store_url, create=False) as store:
                published = time.perf_counter()
                await store.publish(load_directory(filled.migrations), filled.key)
            deadline = published + args.timeout
            while fleet.counters.reports - reports0 < n and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            converge = time.perf_counter() - published
            cpu_per_client = (server.cpu() - cpu0) * 1000 / max(1, fleet.counters.reports - reports0)
            # Behind schedule when the generator (or the server) cannot keep n / interval polls a second.
            polls_per_s = (fleet.counters.polls - polls0) / converge
            if fleet.counters.reports - reports0 < n:
                converge = None  # did not converge within --timeout
                applied_share = (fleet.counters.reports - reports0) / n
            await asyncio.sleep(args.interval + 2)  # everyone's next poll keeps the post-report ETag
            stop.set()
            await running
        # Every idle poller's ETag current (one full answer each after a report); at most
        # --idle-clients of them (the LRU holds them all; a poll of all 100k takes minutes).
        idlers = SimulatedFleet(server.port, polling[: args.idle_clients], args.connections)
        await idlers.poll_all_once()
        idle = await idle_polls(
            server, server.port, idlers.tokens, idlers.etags, args.connections, args.seconds
        )
        checksum = await published_checksum(store_url, "1")
        reports = await report_rate(server, fleet, checksum, args.seconds)
        page = await first_page_ms(server)
        page_without_counts = await first_page_ms(server, counts=False)
        rss = server.rss_mb()
    with serving(bare_server(root, processes), "/api/migrations/pending") as bare:
        bare_rate = await idle_polls(
            bare, bare.port, idlers.tokens, idlers.etags, args.connections, args.seconds
        )
    return Row(
        n, processes, filled.per_second, first_poll, converge, applied_share, polls_per_s, cpu_per_client,
        idle, bare_rate, reports, page, page_without_counts, rss,
        fleet.counters.errors + idle.other + reports.other,
    )  # fmt: skip


def report(rows: Sequence[Row], args: argparse.Namespace) -> None:
    print(
        f"\nPostgres store, poll interval {args.interval:g} s, {args.connections} keep-alive connections "
        f"(machine shared: ratios within one run are what count)\n"
    )
    print(
        "| N | processes | bulk add (clients/s) | first poll of all (s) | publish to all applied (s) "
        "| polls/s meanwhile (wanted) "
        "| server CPU per client cycle (ms) | idle 304/s | bare 304/s | ratio | server µs per 304 (bare) "
        "| reports/s "
        "| server CPU per report (ms) | GET /api/clients (ms) "
        "| ... ?counts=0 (ms) | RSS (MB) | errors |"
    )
    print("| ---: " * 17 + "|")
    for r in rows:
        converge = "-" if r.converge_s is None else f"{r.converge_s:.1f}"
        if r.converge_s is None and r.polls_per_s is not None:
            converge = f"> {args.timeout:g} ({r.applied_share:.0%} applied)"
        cpu = "-" if r.cpu_ms_per_client is None else f"{r.cpu_ms_per_client:.2f}"
        polls = "-" if r.polls_per_s is None else f"{r.polls_per_s:,.0f}"
        ratio = r.idle.per_second / r.bare.per_second if r.bare.per_second else float("nan")
        print(
            f"| {r.n} | {r.processes} | {r.fill_per_s:,.0f} | {r.first_poll_s:.1f} | {converge} "
            f"| {polls} ({r.n / args.interval:,.0f}) | {cpu} "
            f"| {r.idle.per_second:,.0f} | {r.bare.per_second:,.0f} | {ratio:.2f} "
            f"| {r.idle.server_ms_per_1000:.0f} ({r.bare.server_ms_per_1000:.0f}) "
            f"| {r.reports.per_second:,.0f} "
            f"| {r.reports.server_ms_per_1000 / 1000:.2f} | {r.page_ms:.1f} "
            f"| {r.page_no_counts_ms:.1f} | {r.rss_mb:.0f} | {r.errors} |"
        )


async def run(args: argparse.Namespace) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="migsync-fleet-scale-") as tmp:
        for n in args.n:
            for processes in args.processes:
                root = Path(tmp) / f"{n}-{processes}"
                root.mkdir()
                row = await bench(n, processes, root, args)
                rows.append(row)
                report([row], args)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, nargs="+", default=[1000, 10_000], help="fleet sizes")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="server processes (workers)")
    parser.add_argument("--interval", type=float, default=10.0, help="each client's poll interval (s)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the fleet")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the idle measurement (s)")
    parser.add_argument(
        "--idle-clients", type=int, default=10_000, help="clients whose ETags the idle polls use (10000)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting for convergence (s)")
    parser.add_argument(
        "--skip-propagation", action="store_true", help="fill, first poll, idle and fleet view only"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=0,
        help="only the first SAMPLE clients poll (first poll, idle); no propagation: for a store of "
        "100k clients, whose first poll of everyone takes long before the poll path is fixed",
    )
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    print("\nAll rows:")
    report(rows, args)


if __name__ == "__main__":
    main()
