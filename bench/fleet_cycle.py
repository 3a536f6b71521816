"""A client cycle after a publish: server CPU and store statements, for one code tree.

N clients (registered in bulk, each with ``--published`` migrations applied) hold their
ETags; one more migration is published; then each client, as ``migsync client run`` would:
polls with its ETag (a full answer: the new migration), reports it applied (sending the ETag it
holds, ``Migsync-Held-ETag``), and polls again with the ETag it holds then (from the report's
answer when the server gives one, else from the fetch) until a poll is a 304. The cycle is
every request from the first poll to that 304, the 304 included.

Two measurements per run:

- **CPU**: ``migsync serve`` in a subprocess on a Postgres store; the load generator speaks
  HTTP/1.1 on raw keep-alive connections (asyncio streams, ``--connections`` at once), so it
  costs far less than the server. Server CPU (utime + stime from /proc) per cycle.
- **statements**: the same cycle against the app in this process (httpx's ASGI transport),
  counting the statements its connections send, ``BEGIN`` and ``COMMIT`` included: those
  SQLAlchemy runs (its events), and those asyncpg logs (the transactions' statements and the
  hot path's own, which the server runs on the asyncpg connection; asyncpg does not log a
  statement SQLAlchemy runs, so none is counted twice).

Run it with the code under test first on ``PYTHONPATH`` (the worktree, or /work/main for the
numbers before)::

    PYTHONPATH=. python bench/fleet_cycle.py -n 2000 --published 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg

from migsync import load_directory
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.server import Store

ADMIN = "bench-admin-token"
PG = "postgresql://postgres@127.0.0.1:5432"
HELD = "Migsync-Held-ETag"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def migration_file(directory: Path, version: int) -> None:
    (directory / f"{version:04d}_table_{version}.sql").write_text(
        f"-- migrate:up\nCREATE TABLE t_{version} (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
        f"CREATE INDEX ix_t_{version}_name ON t_{version} (name);\n"
        f"-- migrate:down\nDROP INDEX ix_t_{version}_name;\nDROP TABLE t_{version};\n"
    )


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    name = f"migsync_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield f"{PG}/{name}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def fill(url: str, root: Path, n: int, published: int) -> list[tuple[int, str]]:
    """A store with ``published`` migrations and ``n`` clients that applied them all: (id, token)."""
    migrations = root / "migrations"
    migrations.mkdir(exist_ok=True)
    for version in range(1, published + 1):
        migration_file(migrations, version)
    write_keypair(root / "key")
    key = load_private_key(root / "key")
    tokens = [secrets.token_urlsafe(32) for _ in range(n)]
    async with Store.open(url) as store:
        await store.publish(load_directory(migrations), key)
        checksums = {m.version: m.checksum for m in await store.migrations()}
    conn = await asyncpg.connect(url)
    try:
        now = time.time()
        await conn.copy_records_to_table(
            "store_clients",
            records=[
                (f"client-{i}", hashlib.sha256(tok.encode()).hexdigest(), now) for i, tok in enumerate(tokens)
            ],
            columns=["name", "token_hash", "created_at"],
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM store_clients ORDER BY id")]
        await conn.copy_records_to_table(
            "store_client_status",
            records=[
                (client_id, version.key, True, None, 1, checksum, now, False)
                for client_id in ids
                for version, checksum in checksums.items()
            ],
            columns=[
                "client_id",
                "version",
                "applied",
                "error",
                "attempts",
                "checksum",
                "updated_at",
                "dead",
            ],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return list(zip(ids, tokens, strict=True))


async def publish_one_more(url: str, root: Path, version: int) -> str:
    migration_file(root / "migrations", version)
    async with Store.open(url) as store:
        await store.publish(load_directory(root / "migrations"), load_private_key(root / "key"))
        return next(m.checksum for m in await store.migrations() if m.version == version)


def report_body(version: int, checksum: str) -> bytes:
    return json.dumps(
        {
            "reports": [
                {"version": str(version), "applied": True, "error": None, "attempts": 1, "checksum": checksum}
            ]
        }
    ).encode()


# -- a raw HTTP/1.1 client: one keep-alive connection, one request at a time --------------------------


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        answer = {}
        for line in head.decode().split("\r\n")[1:]:
            name, _, value = line.partition(":")
            answer[name.strip().lower()] = value.strip()
        length = int(answer.get("content-length", "0"))
        content = await self.reader.readexactly(length) if length else b""
        return status, answer, content


async def cycle(conn: Connection, token: str, etag: str, body: bytes) -> tuple[int, str]:
    """One client's cycle after a publish: (requests it took, the ETag it holds after)."""
    auth = {"Authorization": f"Bearer {token}", "Migsync-Protocol": "2", "Accept": "application/json"}
    requests = 0
    while True:  # a poll answered while the process reads what changed is answered from memory
        status, headers, _ = await conn.request(
            "GET", "/api/migrations/pending", auth | {"If-None-Match": etag}
        )
        requests += 1
        if status == 200:
            break
        assert status == 304, status
    held = headers["etag"]
    status, _, content = await conn.request("POST", "/api/migrations/status", auth | {HELD: held}, body)
    assert status == 200, (status, content)
    held = json.loads(content).get("etag", held)
    requests += 1
    while True:
        status, headers, _ = await conn.request(
            "GET", "/api/migrations/pending", auth | {"If-None-Match": held}
        )
        requests += 1
        if status == 304:
            return requests, held
        assert status == 200, status
        held = headers["etag"]


def server_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(url: str, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "migsync", "serve", "--store", url, "--port", str(port)]
    cmd += ["--admin-token", ADMIN, "--no-panel", "--log-level", "warning"]
    env = {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with log.open("wb") as out:
        # Run where no migsync is: ``-m`` puts the working folder first on the path.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited:\n{log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise SystemExit("serve did not start")
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def first_etags(conns: list[Connection], clients: list[tuple[int, str]]) -> list[str]:
    """Each client's ETag, from a first full poll (not measured)."""
    etags = [""] * len(clients)

    async def worker(k: int) -> None:
        for i in range(k, len(clients), len(conns)):
            auth = {"Authorization": f"Bearer {clients[i][1]}", "Migsync-Protocol": "2"}
            status, headers, _ = await conns[k].request("GET", "/api/migrations/pending", auth)
            assert status == 200, status
            etags[i] = headers["etag"]

    await asyncio.gather(*(worker(k) for k in range(len(conns))))
    return etags


async def measure_cpu(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    async with database() as url:
        clients = await fill(url, root, args.n, args.published)
        port = free_port()
        with serve(url, port, root / "serve.log") as proc:
            opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(args.connections)]
            conns = [Connection(r, w, f"127.0.0.1:{port}") for r, w in opened]
            etags = await first_etags(conns, clients)
            checksum = await publish_one_more(url, root, args.published + 1)
            await asyncio.sleep(1.5)  # past the server's cache_seconds: every process knows of it
            body = report_body(args.published + 1, checksum)
            requests = [0]

            async def worker(k: int) -> None:
                for i in range(k, len(clients), len(conns)):
                    done, _ = await cycle(conns[k], clients[i][1], etags[i], body)
                    requests[0] += done

            cpu, wall = server_cpu(proc.pid), time.perf_counter()
            await asyncio.gather(*(worker(k) for k in range(len(conns))))
            cpu, wall = server_cpu(proc.pid) - cpu, time.perf_counter() - wall
            for _, writer in opened:
                writer.close()
        return {
            "clients": args.n,
            "requests per cycle": requests[0] / args.n,
            "server CPU ms per cycle": cpu * 1000 / args.n,
            "cycles/s": args.n / wall,
        }


async def measure_statements(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import httpx
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    from migsync.server.app import create_app

    n = args.statement_clients
    async with database() as url:
        clients = await fill(url, root / "statements", n, args.published)
        clock = _Clock()
        app = create_app(url, admin_token=ADMIN, cache_seconds=args.cache_seconds, clock=clock)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                etags = []
                for _, token in clients:
                    response = await http.get("/api/migrations/pending", headers=_auth(token))
                    etags.append(response.headers["etag"])
                checksum = await publish_one_more(url, root / "statements", args.published + 1)
                clock.now_ += args.cache_seconds  # the app's cache ends: it reads the publish
                body = report_body(args.published + 1, checksum)
                statements: list[str] = []
                logging: set[int] = set()

                def count(query: Any) -> None:
                    statements.append(query.query)

                def count_sqlalchemy(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
                    statements.append(statement)

                def checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
                    driver = dbapi_connection.driver_connection
                    if id(driver) not in logging:
                        logging.add(id(driver))
                        driver.add_query_logger(count)

                event.listen(Pool, "checkout", checkout)
                event.listen(Engine, "before_cursor_execute", count_sqlalchemy)
                try:
                    requests = 0
                    for (_, token), etag in zip(clients, etags, strict=True):
                        requests += await asgi_cycle(http, token, etag, body)
                finally:
                    event.remove(Pool, "checkout", checkout)
                    event.remove(Engine, "before_cursor_execute", count_sqlalchemy)
    return {
        f"statements per cycle (cache_seconds={args.cache_seconds:g})": len(statements) / n,
        "of which BEGIN/COMMIT/ROLLBACK": sum(
            s.split()[0].upper().rstrip(";") in ("BEGIN", "COMMIT", "ROLLBACK") for s in statements
        )
        / n,
        "requests per cycle (ASGI)": requests / n,
    }


class _Clock:
    """The app's clock, moved by hand (its seen marks are flushed every 5 s of it: never)."""

    def __init__(self) -> None:
        self.now_ = 1_700_000_000.0

    def now(self) -> float:
        return self.now_

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Migsync-Protocol": "2"}


async def asgi_cycle(http: Any, token: str, etag: str, body: bytes) -> int:
    response = await http.get("/api/migrations/pending", headers=_auth(token) | {"If-None-Match": etag})
    assert response.status_code == 200
    held = response.headers["etag"]
    answer = await http.post(
        "/api/migrations/status",
        headers=_auth(token) | {HELD: held, "Content-Type": "application/json"},
        content=body,
    )
    assert answer.status_code == 200, answer.text
    held = answer.json().get("etag", held)
    requests = 2
    while True:
        response = await http.get("/api/migrations/pending", headers=_auth(token) | {"If-None-Match": held})
        requests += 1
        if response.status_code == 304:
            return requests
        held = response.headers["etag"]


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "statements").mkdir()
        result = await measure_cpu(args, root)
        result |= await measure_statements(args, root)
    code = Path(sys.modules["migsync"].__file__ or "?").parent.parent
    print(f"code: {code}")
    for name, value in result.items():
        print(f"{name:45s} {value:10.2f}" if isinstance(value, float) else f"{name:45s} {value:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=2000, help="clients (default 2000)")
    parser.add_argument("--published", type=int, default=20, help="migrations every client applied (20)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (8)")
    parser.add_argument(
        "--cache-seconds",
        type=float,
        default=0,
        help="the in-process app's cache_seconds for the statement count (0: every request reads "
        "what changed; 60: what a cycle costs besides that)",
    )
    parser.add_argument(
        "--statement-clients", type=int, default=50, help="clients of the statement count (50)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
