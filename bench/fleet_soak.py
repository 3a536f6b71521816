"""A two-process soak: two ``migsync serve`` processes on one Postgres store, a simulated fleet
polling and reporting through both in turn, publishes and admin requests meanwhile.

The fleet is ``bench/fleet_scale.py``'s (clients speaking the wire protocol on raw keep-alive
connections, registered in bulk, migration 1 applied by all). Each client polls every
``--interval`` seconds, each of its requests going to the other server than its last one. A
poll that offers a new migration is reported twice, each report through the other process:
failed (attempt 1), then applied (attempt 2), each with the ETag it holds
(``Migsync-Held-ETag``), keeping the report answer's ETag. Meanwhile a new migration is published
every ``--publish-every`` seconds (through the store, as ``migsync publish`` does), a request to
revert migration 1 goes to every client every ``--request-every`` seconds (``POST /api/actions``,
through one process or the other), and the first page of ``GET /api/clients`` is read every few
seconds. After ``--minutes``, the generator checks:

- **deadlocks**: none in either server's log (``deadlock detected``), and Postgres's own count
  for the database (``pg_stat_database.deadlocks``) did not move;
- **lost or doubled reports**: every report a server acknowledged as recorded is one status event
  in the store, no more (counted per client, version and state), and each client's status row of
  each version holds the last report it sent;
- **errors**: answers other than 200/304/201, and tracebacks in the server logs.

    python bench/fleet_soak.py [--minutes 10] [-n 2000] [--interval 5]

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from fleet import free_port, migration_file
from fleet_scale import ADMIN, Connection, Server, fill, fresh_store, get, serving

from migsync import load_directory
from migsync.protocol.signing import write_keypair
from migsync.protocol.wire import HELD_ETAG_HEADER, PROTOCOL, PROTOCOL_HEADER
from migsync.server import Store

STATUS = "/api/migrations/status"


def report_request(port: int, token: str, held: str | None, body: bytes) -> bytes:
    held_line = f"{HELD_ETAG_HEADER}: {held}\r\n" if held else ""
    return (
        f"POST {STATUS} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"{PROTOCOL_HEADER}: {PROTOCOL}\r\nContent-Type: application/json\r\n{held_line}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Sent:
    """What the generator sent and what the servers answered."""

    polls: int = 0
    full: int = 0
    reports: int = 0
    #: (client index, version, state) -> reports acknowledged as recorded
    recorded: collections.Counter[tuple[int, str, str]] = field(default_factory=collections.Counter)
    #: (client index, version) -> (applied, attempts) of the last report acknowledged
    last: dict[tuple[int, str], tuple[bool, int]] = field(default_factory=dict)
    unchanged: int = 0
    retried: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    publishes: int = 0
    requests: int = 0
    pages: int = 0
    reconnects: int = 0


class SoakFleet:
    def __init__(self, ports: list[int], tokens: list[str], sent: Sent) -> None:
        self.ports, self.tokens, self.sent = ports, tokens, sent
        self.etags: list[str | None] = [None] * len(tokens)
        self.applied: list[set[str]] = [{"1"} for _ in tokens]
        self.turn = [i % 2 for i in range(len(tokens))]  # which server the client's next request goes to

    async def send(
        self, conns: list[Connection], which: int, raw: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """``raw`` on the connection to server ``which``; on a fresh one when the server closed the
        old one (uvicorn closes a keep-alive connection idle for 5 s), without counting an error."""
        try:
            return await conns[which].request(raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            conns[which].close()
            conns[which] = await Connection.open(self.ports[which])
            self.sent.reconnects += 1
            return await conns[which].request(raw)

    def _next(self, i: int) -> int:
        server = self.turn[i]
        self.turn[i] ^= 1
        return server

    async def step(self, conns: list[Connection], i: int) -> None:
        which = self._next(i)
        status, headers, body = await self.send(
            conns, which, get(self.ports[which], self.tokens[i], self.etags[i])
        )
        self.sent.polls += 1
        if status == 304:
            return
        if status != 200:
            self.sent.errors[f"poll {status}"] += 1
            return
        self.sent.full += 1
        self.etags[i] = headers.get(b"etag", b"").decode() or None
        offered = json.loads(body)["migrations"]
        for m in offered:
            if m["version"] in self.applied[i]:
                continue
            for applied, attempts, error in ((False, 1, "soak: first try fails"), (True, 2, None)):
                await self.report(conns, i, m, applied, attempts, error)
            self.applied[i].add(m["version"])

    async def report(self, conns: list[Connection], i: int, m: dict, applied: bool, attempts: int,
                     error: str | None) -> None:  # fmt: skip
        body = json.dumps(
            {
                "reports": [
                    {
                        "version": m["version"],
                        "applied": applied,
                        "error": error,
                        "attempts": attempts,
                        "checksum": m["checksum"],
                    }
                ]
            }
        ).encode()
        for _try in range(5):  # a failed request is sent again (a report is idempotent)
            which = self._next(i)
            try:
                status, _, answer = await self.send(
                    conns, which, report_request(self.ports[which], self.tokens[i], self.etags[i], body)
                )
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.sent.errors[f"report {type(exc).__name__}"] += 1
                conns[which] = await Connection.open(self.ports[which])
                self.sent.retried += 1
                continue
            self.sent.reports += 1
            if status != 200:
                self.sent.errors[f"report {status}"] += 1
                self.sent.retried += 1
                continue
            result = json.loads(answer)
            state = "applied" if applied else "failed"
            if m["version"] in result["recorded"]:
                self.sent.recorded[(i, m["version"], state)] += 1
            else:
                self.sent.unchanged += 1
            self.sent.last[(i, m["version"])] = (applied, attempts)
            if "etag" in result:
                self.etags[i] = result["etag"]
            return

    async def run(self, interval: float, connections: int, until: asyncio.Event) -> None:
        n = len(self.tokens)
        start = time.perf_counter()
        per_worker = [list(range(w, n, connections)) for w in range(connections)]

        async def worker(mine: list[int]) -> None:
            conns = [await Connection.open(p) for p in self.ports]
            try:
                due = {i: start + interval * i / n for i in mine}
                while not until.is_set():
                    i = min(due, key=due.__getitem__)
                    delay = due[i] - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(min(delay, 0.5))
                        continue
                    await self.step(conns, i)
                    due[i] = max(due[i] + interval, time.perf_counter())
            finally:
                for c in conns:
                    c.close()

        await asyncio.gather(*(worker(m) for m in per_worker if m))


def soak_server(store: str, root: Path, name: str, key: Path, secret: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "migsync", "serve", "--store", store, "--admin-token", ADMIN]
    cmd += ["--port", str(port), "--log-level", "warning", "--request-key", str(key)]
    cmd += ["--panel-secret", secret]
    return Server(name, cmd, port, root / f"{name}.log")


async def admin_load(urls: list[str], filled_migrations: Path, store_url: str, key: object, sent: Sent,
                     args: argparse.Namespace, until: asyncio.Event) -> None:  # fmt: skip
    """Publishes, requests for every client and fleet pages, each through one server or the other."""
    started = time.perf_counter()
    next_publish, next_request, next_page = (
        started + args.publish_every,
        started + args.request_every / 2,
        started + 5,
    )
    version = 1
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        while not until.is_set():
            now = time.perf_counter()
            if now >= next_publish:
                version += 1
                migration_file(filled_migrations, version)
                async with Store.open(store_url, create=False) as store:
                    await store.publish(load_directory(filled_migrations), key)  # type: ignore[arg-type]
                sent.publishes += 1
                next_publish += args.publish_every
            if now >= next_request:
                url = urls[sent.requests % 2]
                order = {"action": "revert", "version": "1", "clients": None, "requested_by": "soak"}
                answer = await http.post(f"{url}/api/actions", json=order)
                if answer.status_code != 201:
                    sent.errors[f"request {answer.status_code}: {answer.text[:200]}"] += 1
                sent.requests += 1
                next_request += args.request_every
            if now >= next_page:
                answer = await http.get(f"{urls[sent.pages % 2]}/api/clients", params={"limit": "100"})
                if answer.status_code != 200:
                    sent.errors[f"page {answer.status_code}"] += 1
                sent.pages += 1
                next_page += 5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), 0.2)


async def pg_deadlocks(store_url: str) -> int:
    conn = await asyncpg.connect(store_url)
    try:
        return int(
            await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )
    finally:
        await conn.close()


async def compare(store_url: str, fleet: SoakFleet, sent: Sent) -> list[str]:
    """What the store holds against what the servers acknowledged: the problems found."""
    problems = []
    conn = await asyncpg.connect(store_url)
    try:
        ids = {r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM store_clients ORDER BY id")}
        index = {ids[f"client-{i:07d}"]: i for i in range(len(fleet.tokens))}
        events = collections.Counter(
            (index[r["client_id"]], r["version"], r["state"])
            for r in await conn.fetch(
                "SELECT client_id, CAST(version AS TEXT) AS version, state FROM store_status_events"
            )
        )
        rows = {
            (index[r["client_id"]], r["version"]): (r["applied"], r["attempts"])
            for r in await conn.fetch(
                "SELECT client_id, CAST(version AS TEXT) AS version, applied, attempts "
                "FROM store_client_status"
            )
        }
    finally:
        await conn.close()
    version_text = _version_texts(events, sent)
    store_events = collections.Counter({(i, version_text.get(v, v), s): c for (i, v, s), c in events.items()})
    lost = sent.recorded - store_events
    doubled = store_events - sent.recorded
    if lost:
        problems.append(f"{sum(lost.values())} recorded reports without their event, e.g. {list(lost)[:3]}")
    if doubled:
        problems.append(
            f"{sum(doubled.values())} events more than reports recorded, e.g. {list(doubled)[:3]}"
        )
    wrong = [
        (key, want, rows.get((key[0], _key_of(version_text, key[1]))))
        for key, want in sent.last.items()
        if rows.get((key[0], _key_of(version_text, key[1]))) != want
    ]
    if wrong:
        problems.append(f"{len(wrong)} status rows differ from the last report sent, e.g. {wrong[:3]}")
    return problems


def _version_texts(events: collections.Counter[tuple[int, str, str]], sent: Sent) -> dict[str, str]:
    """The store's version keys (as text) -> the versions the wire spoke of."""
    from migsync.core.version import Version

    return {Version.parse(v).key: v for _, v, _ in sent.recorded} | {
        Version.parse(v).key: v for _, v in sent.last
    }


def _key_of(texts: dict[str, str], version: str) -> str:
    return next((k for k, v in texts.items() if v == version), version)


async def soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="migsync-fleet-soak-") as tmp:
        root = Path(tmp)
        store_url = await fresh_store("migsync_bench_soak")
        filled = await fill(store_url, args.n, root)
        key = root / "request.key"
        write_keypair(key)
        deadlocks_before = await pg_deadlocks(store_url)
        servers = [
            soak_server(store_url, root, f"serve-{x}", key, "soak-panel-secret-" + "0" * 32) for x in "ab"
        ]
        sent = Sent()
        with serving(servers[0], "/api/openapi.json"), serving(servers[1], "/api/openapi.json"):
            fleet = SoakFleet([s.port for s in servers], filled.tokens, sent)
            cpu0 = [s.cpu() for s in servers]
            until = asyncio.Event()
            started = time.perf_counter()
            running = asyncio.gather(
                fleet.run(args.interval, args.connections, until),
                admin_load(
                    [s.url for s in servers], filled.migrations, store_url, filled.key, sent, args, until
                ),
            )
            while time.perf_counter() - started < args.minutes * 60:
                await asyncio.wait(
                    [running], timeout=min(30.0, args.minutes * 60 - (time.perf_counter() - started))
                )
                if running.done():
                    running.result()  # the generator failed: say why
                    raise SystemExit("the generator stopped before the end")
                print(
                    f"{time.perf_counter() - started:6.0f} s: {sent.polls} polls, {sent.full} full, "
                    f"{sent.reports} reports, {sum(sent.recorded.values())} recorded, {sent.publishes} "
                    f"publishes, {sent.requests} requests, errors {dict(sent.errors)}",
                    flush=True,
                )
            until.set()
            await running
            seconds = time.perf_counter() - started
            cpu = [s.cpu() - c for s, c in zip(servers, cpu0, strict=True)]
            rss = [s.rss_mb() for s in servers]
        logs = {s.name: s.log.read_text(errors="replace") for s in servers}
        deadlocks = await pg_deadlocks(store_url) - deadlocks_before
        problems = await compare(store_url, fleet, sent)
    for name, text in logs.items():
        if "deadlock detected" in text:
            problems.append(f"{name}: 'deadlock detected' {text.count('deadlock detected')} times in its log")
        if "Traceback" in text:
            problems.append(f"{name}: {text.count('Traceback')} tracebacks in its log")
    if deadlocks:
        problems.append(f"Postgres counted {deadlocks} deadlocks in the store's database")
    if sent.errors:
        problems.append(f"errors: {dict(sent.errors)}")
    print(
        f"\n{args.n} clients, 2 processes, {seconds:.0f} s: {sent.polls} polls ({sent.full} full), "
        f"{sent.reports} reports sent, {sum(sent.recorded.values())} recorded, {sent.unchanged} unchanged, "
        f"{sent.retried} sent again, {sent.publishes} publishes, {sent.requests} requests for every client, "
        f"{sent.pages} fleet pages; server CPU {cpu[0]:.0f} + {cpu[1]:.0f} s, "
        f"RSS {rss[0]:.0f} + {rss[1]:.0f} MB; "
        f"Postgres deadlocks {deadlocks}"
    )
    for problem in problems:
        print("FAIL:", problem)
    if not problems:
        print("OK: no deadlock, no lost or doubled report, no error")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the soak runs")
    parser.add_argument("-n", type=int, default=2000, help="clients")
    parser.add_argument("--interval", type=float, default=5.0, help="each client's poll interval (s)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections per server")
    parser.add_argument("--publish-every", type=float, default=60.0, help="seconds between publishes")
    parser.add_argument("--request-every", type=float, default=45.0, help="seconds between requests to all")
    args = parser.parse_args()
    random.seed(0)
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
