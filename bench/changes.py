"""Entity changes pushed from a SQLite client to a migsync server over HTTP, against a raw COPY.

Per N: a fresh Postgres database holds the server's store (one migration
published, one client registered) and ``migsync serve`` runs on it in a
subprocess, on loopback. The client (a SQLite file) syncs once, so it has
the schema the changes wait for, and N changes are recorded in it (direct
INSERTs, many per transaction: recording is not what is measured). Then a
subprocess of its own opens the client and runs one pass of the entity-change
processor (``Syncer.changes_processor.run_pass()``, what ``migsync client
sync`` does after the migrations): the wall time of that pass, and the peak
RSS (VmHWM) of that process, are what is measured. Twice per N: with the
default ``tables`` applier, the store database having a ``todo`` table so
that each change is applied to it (an INSERT), and with ``--no-apply-changes``
(the changes only stored in the inbox).

The ceiling, in the same run: the same N rows (client id, change id, entity,
entity id, operation, the data as JSON text, schema version, timestamps)
copied into the ``store_inbox`` table of another fresh store with asyncpg's
``copy_records_to_table``, one COPY.

Also shown per run, to tell where the time goes: the CPU time of the client,
of the server and of the server's Postgres backends (from /proc). The three
take turns (the client waits for each answer), so they add up to about the
wall time. ``--profile PREFIX`` records the server and the client with py-spy.

    python bench/changes.py [-n 10000 100000] [--batch-size 1000] [--repeat 3]
      (Postgres: MIGSYNC_BENCH_PG_DSN, default the local server; MIGSYNC_BENCH_SEND_AHEAD=0:
      one request at a time, Syncer(send_changes_ahead=False); the default sends each batch
      read ahead at once)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only what a client loads: the measured process is this one, as ``--push-child``. The server's
# side (SQLAlchemy, asyncpg, the store) is imported in the functions that use it.
from migsync import Client, make_plugins
from migsync.client.sync import Syncer
from migsync.core.changes import schema_version_sql
from migsync.core.migration import Migration, Script
from migsync.protocol.signing import load_private_key, load_public_keys, write_keypair
from migsync.transports.http import HttpTransport

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ENV = {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}
TODO = "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL, qty INTEGER)"
MIGRATION = Migration(1, "0001_todo", {"*": Script(TODO)}, {"*": Script("DROP TABLE todo")})
#: rows recorded per transaction while preparing the client
_RECORD_CHUNK = 10_000
MODES = {"tables": [], "none": ["--no-apply-changes"]}


def data_of(i: int) -> str:
    return json.dumps({"id": i, "title": f"item {i}", "done": i % 2 == 0, "qty": i % 7}, sort_keys=True)


def vm(field: str) -> float:
    """A VmXXX line of /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


# -- the client side ------------------------------------------------------------------------------


async def prepare_client(db: Path, url: str, token: str, public_key: Path, n: int) -> None:
    """Sync once (the migration applies), then record ``n`` changes."""
    plugins = make_plugins(autoload=False)
    async with Client.connect(
        f"sqlite:///{db}", plugins=plugins, sinks=[], backend_options={"create": True}
    ) as client:
        async with HttpTransport(url, client_id="bench", token=token) as transport:
            result = await Syncer(client, transport, load_public_keys([public_key])).sync()
        assert result.ok and any(o.ok for o in result.run.processed), result
        backend = client.backend
        insert = (
            f"INSERT INTO {backend.tables.changes} (entity, entity_id, operation, data, schema_version) "
            "VALUES ($1, $2, $3, $4, $5)"
        )
        for start in range(0, n, _RECORD_CHUNK):
            async with backend.transaction() as tx:
                version = (await tx.fetch(schema_version_sql(backend.tables)))[0]["v"]
                assert version == MIGRATION.version.key, version  # the stored key of version 1
                rows = [
                    (insert, ("todo", str(i), "insert", data_of(i), version))
                    for i in range(start, min(n, start + _RECORD_CHUNK))
                ]
                await tx.execute_batch(rows)


async def push(db: Path, url: str, token: str, public_key: Path, batch_size: int) -> dict[str, Any]:
    """In the child process: one pass of the entity-change processor, timed."""
    plugins = make_plugins(autoload=False)
    async with (
        Client.connect(f"sqlite:///{db}", plugins=plugins, sinks=[]) as client,
        HttpTransport(url, client_id="bench", token=token) as transport,
    ):
        ahead = os.environ.get("MIGSYNC_BENCH_SEND_AHEAD") != "0"  # two requests in flight
        syncer = Syncer(
            client, transport, load_public_keys([public_key]), batch_size=batch_size, send_changes_ahead=ahead
        )
        rss_before = vm("VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        result = await syncer.changes_processor.run_pass()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result.ok and result.remaining == 0 and result.gated is None, result
    return {"seconds": wall, "cpu": cpu, "rss_before": rss_before, "hwm": vm("VmHWM")}


def push_child(args: list[str]) -> None:
    db, url, token, public_key, batch_size = args
    print(json.dumps(asyncio.run(push(Path(db), url, token, Path(public_key), int(batch_size)))))


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Row:
    n: int
    #: by mode: the best run
    runs: dict[str, Run]
    #: seconds of the raw COPY (the best)
    raw: float


@dataclass
class Run:
    seconds: float
    client_cpu: float
    server_cpu: float
    #: the CPU of the store database's Postgres backends
    postgres_cpu: float
    rss_before: float
    hwm: float


async def migsync_run(n: int, mode: str, work: Path, key: Path, batch_size: int, profile: str | None) -> Run:
    import asyncpg
    import pg
    from fleet import ADMIN_TOKEN, free_port, serving

    from migsync.server import Store

    async with pg.scratch_database() as store_url:
        async with Store.open(store_url) as store:
            await store.publish([MIGRATION], load_private_key(key))
            _, token = await store.add_client("bench")
        if mode == "tables":  # the server's copy of the application's table: each change lands in it
            conn = await asyncpg.connect(store_url)
            await conn.execute(TODO)
            await conn.close()
        port = free_port()
        migsync = str(Path(sys.executable).with_name("migsync"))
        cmd = [migsync, "serve", "--store", store_url, "--port", str(port), "--admin-token", ADMIN_TOKEN]
        cmd += ["--log-level", "warning", *MODES[mode]]
        db = Path(tempfile.mkdtemp(dir=work)) / "client.db"  # a new client each run
        with serving("migsync serve", cmd, port, work / "server.log") as server:
            public_key = key.with_name(key.name + ".pub")
            await prepare_client(db, server.url, token, public_key, n)
            child = [sys.executable, __file__, "--push-child", str(db), server.url, token, str(public_key)]
            child.append(str(batch_size))
            spy = None
            if profile:  # py-spy: every thread of both, the client's SQLite worker's too
                record = [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "-r",
                    "500",
                    "--format",
                    "raw",
                    "-o",
                ]
                child = [*record, f"{profile}-client-{n}-{mode}.txt", "--", *child]
                server_out = f"{profile}-server-{n}-{mode}.txt"
                spy = subprocess.Popen(
                    [*record, server_out, "--pid", str(server.proc.pid)], stderr=subprocess.DEVNULL
                )
                await asyncio.sleep(1.0)  # py-spy attaches
            server_cpu, postgres_cpu = server.cpu(), await backends_cpu(store_url)
            done = subprocess.run(child, check=True, capture_output=True, text=True, env=_ENV)
            server_cpu = server.cpu() - server_cpu
            postgres_cpu = {
                p: cpu - postgres_cpu.get(p, 0.0) for p, cpu in (await backends_cpu(store_url)).items()
            }
            if spy is not None:
                spy.send_signal(2)
                spy.wait()
        (line,) = [x for x in done.stdout.splitlines() if x.startswith("{")]  # py-spy talks too
        out = json.loads(line)
        conn = await asyncpg.connect(store_url)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM store_inbox")
            failed = await conn.fetchval("SELECT count(*) FROM store_inbox WHERE apply_error IS NOT NULL")
            applied = await conn.fetchval("SELECT count(*) FROM todo") if mode == "tables" else n
        finally:
            await conn.close()
        assert stored == n and failed == 0 and applied == n, (stored, failed, applied)
    return Run(
        out["seconds"], out["cpu"], server_cpu, sum(postgres_cpu.values()), out["rss_before"], out["hwm"]
    )


async def backends_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of each Postgres backend of the migsync server on ``url``'s database."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'migsync-server'"
        )
    finally:
        await conn.close()
    cpu = {}
    for (pid,) in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu[pid] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return cpu


_COLUMNS = [
    "client_id",
    "change_id",
    "entity",
    "entity_id",
    "operation",
    "data",
    "schema_version",
    "client_timestamp",
    "received_at",
]


async def raw_run(n: int, key: Path) -> float:
    """The same rows into a fresh store's ``store_inbox``: one COPY."""
    import asyncpg
    import pg

    from migsync.server import Store

    async with pg.scratch_database() as store_url:
        async with Store.open(store_url) as store:
            await store.publish([MIGRATION], load_private_key(key))
            client_id, _ = await store.add_client("bench")
        now = time.time()
        records = [
            (
                client_id,
                os.urandom(16).hex(),
                "todo",
                str(i),
                "insert",
                data_of(i),
                MIGRATION.version.key,
                now,
                now,
            )
            for i in range(n)
        ]
        conn = await asyncpg.connect(store_url)
        try:
            started = time.perf_counter()
            await conn.copy_records_to_table("store_inbox", records=records, columns=_COLUMNS)
            elapsed = time.perf_counter() - started
            assert await conn.fetchval("SELECT count(*) FROM store_inbox") == n
        finally:
            await conn.close()
    return elapsed


# -- the table -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="migsync-changes-") as tmp:
        work = Path(tmp)
        key = work / "signing.key"
        write_keypair(key)
        for n in args.n:
            # Rounds interleaved (each mode, then the raw COPY, per round): a burst of load from
            # elsewhere falls on all of them alike, not on one mode's runs only.
            runs: dict[str, list[Run]] = {mode: [] for mode in args.modes}
            raws = []
            for _ in range(args.repeat):
                for mode in args.modes:
                    runs[mode].append(await migsync_run(n, mode, work, key, args.batch_size, args.profile))
                raws.append(await raw_run(n, key))
            best = {mode: min(found, key=lambda r: r.seconds) for mode, found in runs.items()}
            rows.append(Row(n, best, min(raws)))
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\nmigsync bench/changes.py  SQLite client -> migsync serve (Postgres store) over HTTP on loopback"
        f"  batch_size={args.batch_size}  best of {args.repeat}  cores={os.cpu_count()}"
    )
    print(
        f"{'N':>8}"
        + "".join(f"{mode + ' ch/s':>13}" for mode in args.modes)
        + f"{'raw COPY/s':>12}"
        + "".join(f"{'ratio ' + mode:>13}" for mode in args.modes)
        + f"{'client MB':>11}"
    )
    for row in rows:
        raw = row.n / row.raw
        rates = {mode: row.n / r.seconds for mode, r in row.runs.items()}
        print(
            f"{row.n:>8}"
            + "".join(f"{rates[mode]:>13.0f}" for mode in args.modes)
            + f"{raw:>12.0f}"
            + "".join(f"{rates[mode] / raw:>12.2f}x" for mode in args.modes)
            + f"{max(r.hwm for r in row.runs.values()):>11.1f}"
        )
    worst = min(r.raw / run.seconds for r in rows for run in r.runs.values())
    peaks = " -> ".join(f"{max(r.hwm for r in row.runs.values()):.1f}" for row in rows)
    print(
        f"targets: >= 0.30x raw (worst {worst:.2f}x); client peak RSS flat as the backlog grows ({peaks} MB)"
    )
    print(
        "\nper run: wall s; CPU s of the client, the server and its Postgres backends; "
        "client RSS before the pass and peak (MB)"
    )
    for row in rows:
        for mode, r in row.runs.items():
            print(
                f"{row.n:>8} {mode:<7}{r.seconds:>8.2f}{r.client_cpu:>8.2f}{r.server_cpu:>8.2f}"
                f"{r.postgres_cpu:>8.2f}{r.rss_before:>8.1f}{r.hwm:>8.1f}"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--push-child":
        push_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[10_000, 100_000], help="changes pushed")
    parser.add_argument("--batch-size", type=int, default=1000, help="Syncer(batch_size=...)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is shown")
    parser.add_argument(
        "--modes", nargs="+", choices=sorted(MODES), default=list(MODES), help="server appliers"
    )
    parser.add_argument(
        "--profile",
        help="record the server's and the client's processes with py-spy (collapsed stacks) "
        "to PREFIX-server-N-MODE.txt and PREFIX-client-N-MODE.txt",
    )
    args = parser.parse_args()
    import pg

    why = asyncio.run(pg.available())
    if why is not None:
        sys.exit(f"no Postgres at {pg.DSN}: {why}")
    started = time.perf_counter()
    rows = asyncio.run(run(args))
    report(rows, args)
    print(f"(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
