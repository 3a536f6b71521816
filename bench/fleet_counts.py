"""The fleet view's pages with their counts, before and after the per-client summary, on one
store filled in bulk: ``fleet.page`` of this tree against ``fleet.page`` of an earlier commit
(``--before``, read with ``git show``), on the same connection, interleaved, best and median of
``--repeat``.

The store: 3 published migrations; every client applied them but 5% lack the third, 1% failed
it, 0.5% applied the second with other content (drift); 10% never seen. Written with
``INSERT .. SELECT`` (Postgres) or ``executemany`` (SQLite), then every client's summary in one
statement (:data:`migsync.server.fleet_summary.REFRESH_ALL_SQL`), then ``VACUUM ANALYZE``.

    python bench/fleet_counts.py -n 100000 1000000          # Postgres
    python bench/fleet_counts.py --sqlite -n 1000 10000     # SQLite files
    python bench/fleet_counts.py -n 1000000 --no-fill       # the store an earlier run filled

The machine is shared and has 2 cores: the ratio in one run is what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_scale import _PG, fresh_store
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from migsync.core.migration import Migration, Script
from migsync.core.version import Version
from migsync.server import Store, fleet, fleet_summary
from migsync.server.fleet import FleetFilter, encode_cursor

REPO = Path(__file__).resolve().parent.parent


def before_module(rev: str) -> ModuleType:
    """``migsync/server/fleet.py`` as commit ``rev`` had it, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:migsync/server/fleet.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "fleet_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fleet_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def migration(version: int) -> Migration:
    return Migration(
        version,
        f"{version:04d}_m{version}",
        {"*": Script(f"CREATE TABLE t{version} (x INTEGER)")},
        {"*": Script(f"DROP TABLE t{version}")},
    )


_PG_CLIENTS = (
    "INSERT INTO store_clients (id, name, token_hash, created_at, last_seen_at, status_serial, change_seq) "
    "SELECT i, 'client-' || lpad(i::text, 7, '0'), md5(i::text) || md5((-i)::text), 0, "
    "CASE WHEN i % 10 = 0 THEN NULL ELSE 1000 + i % 100 END, 0, 0 FROM generate_series(1, :n) AS i"
)
_PG_ROWS = (
    "INSERT INTO store_client_status "
    "(client_id, version, applied, error, attempts, checksum, updated_at, dead) "
    "SELECT c.id, m.version, NOT (m.version = :v3 AND c.id % 100 = 7), "
    "CASE WHEN m.version = :v3 AND c.id % 100 = 7 THEN 'boom' END, 1, "
    "CASE WHEN m.version = :v2 AND c.id % 200 = 3 THEN repeat('e', 64) ELSE m.checksum END, 0, FALSE "
    "FROM store_clients c CROSS JOIN store_migrations m WHERE NOT (m.version = :v3 AND c.id % 20 = 11)"
)


async def fill(url: str, n: int) -> None:
    async with Store.open(url) as store:
        await store.publish([migration(v) for v in (1, 2, 3)], Ed25519PrivateKey.generate())
        sums = {int(m.version.text): m.checksum for m in await store.migrations()}
    engine = create_async_engine(fleet_url(url))
    v2, v3 = Version.parse(2).key, Version.parse(3).key
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(_PG_CLIENTS), {"n": n})
            await conn.execute(
                text("SELECT setval(pg_get_serial_sequence('store_clients', 'id'), :n)"), {"n": n}
            )
            await conn.execute(text(_PG_ROWS), {"v2": v2, "v3": v3})
        else:
            await conn.execute(
                text(
                    "INSERT INTO store_clients (id, name, token_hash, created_at, last_seen_at) "
                    "VALUES (:id, :name, :hash, 0, :seen)"
                ),
                [
                    {
                        "id": i,
                        "name": f"client-{i:07d}",
                        "hash": f"{i:064x}",
                        "seen": None if i % 10 == 0 else 1000 + i % 100,
                    }
                    for i in range(1, n + 1)
                ],
            )
            rows = []
            for i in range(1, n + 1):
                for v in (1, 2, 3):
                    if v == 3 and i % 20 == 11:
                        continue
                    failed = v == 3 and i % 100 == 7
                    checksum = "e" * 64 if v == 2 and i % 200 == 3 else sums[v]
                    rows.append(
                        {"id": i, "v": Version.parse(v).key, "applied": not failed,
                         "error": "boom" if failed else None, "sum": checksum}
                    )  # fmt: skip
            await conn.execute(
                text(
                    "INSERT INTO store_client_status (client_id, version, applied, error, attempts, "
                    "checksum, updated_at, dead) VALUES (:id, :v, :applied, :error, 1, :sum, 0, 0)"
                ),
                rows,
            )
        await conn.execute(text(fleet_summary.REFRESH_ALL_SQL))
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE" if conn.dialect.name == "postgresql" else "ANALYZE"))
    await engine.dispose()


def fleet_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return url.replace("postgresql://", "postgresql+asyncpg://", 1)
    return url.replace("sqlite://", "sqlite+aiosqlite://", 1)


Case = tuple[str, FleetFilter, dict[str, Any]]


def cases(n: int) -> list[Case]:
    return [
        ("first page, counts", FleetFilter(), {}),
        ("first page, ?counts=0", FleetFilter(), {"counts": False}),
        ("state=failing", FleetFilter(state="failing"), {}),
        ("state=drift", FleetFilter(state="drift"), {}),
        ("state=pending", FleetFilter(state="pending"), {}),
        ("state=ok", FleetFilter(state="ok"), {}),
        ("failing=1", FleetFilter(failing=True), {}),
        ("applied=3", FleetFilter(applied=Version.parse(3)), {}),
        ("lacking=3", FleetFilter(lacking=Version.parse(3)), {}),
        ("stale=60", FleetFilter(stale=60), {}),
        ("q=client-00012", FleetFilter(name="client-00012"), {}),
        ("deep cursor (90%)", FleetFilter(), {"cursor": encode_cursor(n * 9 // 10)}),
        ("state=ok, deep cursor", FleetFilter(state="ok"), {"cursor": encode_cursor(n * 9 // 10)}),
    ]


async def timed(run: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await run()
    return (time.perf_counter() - started) * 1000


async def measure(
    url: str, n: int, before: ModuleType, repeat: int
) -> list[tuple[str, list[float], list[float]]]:
    engine = create_async_engine(fleet_url(url))
    results = []
    async with engine.connect() as conn:
        for name, which, options in cases(n):
            old: list[float] = []
            new: list[float] = []

            async def page(
                module: Any, conn: AsyncConnection = conn, which: Any = which, options: Any = options
            ) -> Any:
                result = await module.page(conn, which, now=1050.0, **options)
                await conn.rollback()
                return result

            # The two agree, or the comparison means nothing.
            a, b = await page(before), await page(fleet)
            assert (a.counts, a.total, a.next_cursor) == (b.counts, b.total, b.next_cursor), (name, a, b)
            assert [e.client.client_id for e in a.entries] == [e.client.client_id for e in b.entries], name
            for _ in range(repeat):
                old.append(await timed(lambda: page(before)))
                new.append(await timed(lambda: page(fleet)))
            results.append((name, old, new))
    await engine.dispose()
    return results


def table(n: int, backend: str, results: list[tuple[str, list[float], list[float]]]) -> str:
    lines = [
        f"N = {n:,} clients ({3 * n - n // 20:,} status rows), {backend}: ms, best / median",
        "",
        "| page | before | after | before/after (median) |",
        "| --- | --- | --- | --- |",
    ]
    for name, old, new in results:
        mo, mn = statistics.median(old), statistics.median(new)
        lines.append(f"| {name} | {min(old):.1f} / {mo:.1f} | {min(new):.1f} / {mn:.1f} | {mo / mn:.1f}x |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    before = before_module(args.before)
    for n in args.n:
        if args.sqlite:
            url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'store.db'}"
        elif args.no_fill:
            url = f"{_PG}/migsync_bench_counts_{n}"
        else:
            url = await fresh_store(f"migsync_bench_counts_{n}")
        if not args.no_fill:
            started = time.perf_counter()
            await fill(url, n)
            print(f"filled {n:,} clients in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results = await measure(url, n, before, args.repeat)
        print(table(n, "SQLite" if args.sqlite else "Postgres", results))
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--sqlite", action="store_true", help="SQLite files instead of Postgres")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-fill", action="store_true", help="Postgres: the store an earlier run filled")
    parser.add_argument("--before", default="4ed0063", help="the commit to compare with (its fleet.py)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
