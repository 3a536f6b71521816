"""Apply and revert N migrations with migsync against raw sqlite3, in one run.

Each migration creates a table and an index (down drops both). Raw sqlite3
runs the same statements with one transaction and one history-row insert
per migration, on a file with the same pragmas migsync sets (WAL journal,
synchronous=FULL). Also measured: a no-op ``apply`` (nothing pending) in
processor time, and whole processes (``migsync apply`` against a raw
driver script) for the no-op case, where start-up is most of the cost.

    python bench/apply.py [-n 1000] [--repeat 3] [--backend sqlite|postgresql|all]

``--compare`` runs the side-by-side benchmark instead (bench/compare.py):
raw driver, migsync in-process and as a process, alembic, yoyo and dbmate, at
each ``--sizes`` N, as one table (docs/performance.md shows one)::

    python bench/apply.py --compare [--sizes 100 1000 5000] [--repeat 5] [--chart perf.png]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from migsync import Client, load_directory
from migsync.backends.sqlite import SQLiteBackend
from migsync.core.plugins import make_plugins
from migsync.core.sources import scan_directory


def generate(directory: Path, n: int) -> list[tuple[list[str], list[str]]]:
    scripts = []
    for i in range(1, n + 1):
        up = [
            f"CREATE TABLE t_{i} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL)",
            f"CREATE INDEX ix_t_{i}_name ON t_{i} (name)",
        ]
        down = [f"DROP INDEX ix_t_{i}_name", f"DROP TABLE t_{i}"]
        (directory / f"{i:05d}_table_{i}.sql").write_text(
            "-- migrate:up\n" + ";\n".join(up) + ";\n-- migrate:down\n" + ";\n".join(down) + ";\n"
        )
        scripts.append((up, down))
    return scripts


def raw_connect(path: Path, pragmas: dict[str, str]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode = {pragmas['journal_mode']}")
    conn.execute(f"PRAGMA synchronous = {pragmas['synchronous']}")
    conn.execute("CREATE TABLE IF NOT EXISTS history (version INTEGER PRIMARY KEY, applied_at REAL)")
    return conn


def raw_apply(conn: sqlite3.Connection, scripts: list[tuple[list[str], list[str]]]) -> None:
    for version, (up, _) in enumerate(scripts, 1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in up:
            conn.execute(statement)
        conn.execute("INSERT INTO history VALUES (?, ?)", (version, time.time()))
        conn.execute("COMMIT")


def raw_revert(conn: sqlite3.Connection, scripts: list[tuple[list[str], list[str]]]) -> None:
    for version in range(len(scripts), 0, -1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in scripts[version - 1][1]:
            conn.execute(statement)
        conn.execute("DELETE FROM history WHERE version = ?", (version,))
        conn.execute("COMMIT")


async def prepare_queue(db: Path, migrations_dir: Path) -> None:
    """A database with the migrations recorded and queued by migsync, nothing applied."""
    async with Client.connect(f"sqlite:///{db}", plugins=make_plugins(autoload=False), sinks=[]) as client:
        await client.ledger.record_source(scan_directory(migrations_dir))
        await client.ledger.queue_pending()


def raw_bookkeeping_apply(
    db: Path, scripts: list[tuple[list[str], list[str]]], pragmas: dict[str, str]
) -> float:
    """Raw sqlite3 running the statements a migsync pass runs: the SQL floor of the design.

    Same status upsert and done statement (which is the claim) as the processor
    (its own SQL strings), without the Python around them.
    """
    from migsync.backends.sqlite import _placeholders
    from migsync.core.handler import MigrationHandler
    from migsync.core.processor import ChangesProcessor

    conn = raw_connect(db, pragmas)
    proc = ChangesProcessor.__new__(ChangesProcessor)
    handler = MigrationHandler("sqlite")
    ChangesProcessor.__init__(proc, None, handler)  # type: ignore[arg-type]
    done = _placeholders(proc._sql_finish)
    upsert = _placeholders(handler._upsert_status)
    changes = conn.execute(
        "SELECT q.seq, q.migration_name, m.version, m.checksum FROM migration_changes q "
        "JOIN client_migration m ON m.name = q.migration_name ORDER BY q.seq"
    ).fetchall()
    started = time.perf_counter()
    for (seq, name, version, checksum), (up, _) in zip(changes, scripts, strict=True):
        conn.execute("BEGIN IMMEDIATE")
        for statement in up:
            conn.execute(statement)
        now = time.time()
        conn.execute(upsert, (name, version, True, now, checksum, 1, now))
        if conn.execute(done, (now, 1, seq, 0, now, checksum)).rowcount != 1:
            raise AssertionError("the claim failed")
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


async def migsync_round(db: Path, migrations_dir: Path) -> dict[str, tuple[float, float]]:
    plugins = make_plugins(autoload=False)
    out: dict[str, tuple[float, float]] = {}
    async with Client.connect(f"sqlite:///{db}", plugins=plugins, sinks=[]) as client:

        async def apply() -> None:
            # What `migsync apply` does: a snapshot, parsed only if its digest is new.
            result = await client.apply(scan_directory(migrations_dir))
            assert result.ok and result.remaining == 0, result

        async def revert() -> None:
            await client.ledger.revert(everything=True)
            result = await client.process()
            assert result.ok and result.remaining == 0, result

        for name, step in (("apply", apply), ("noop", apply), ("revert", revert)):
            wall, cpu = time.perf_counter(), time.process_time()
            await step()
            out[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    return out


def process_noop(migrations_dir: Path, db: Path, pragmas: dict[str, str]) -> tuple[float, float, float]:
    """Wall time of a whole no-op `migsync apply` process, of a raw sqlite3 and a raw aiosqlite script."""
    raw_script = (
        "import sqlite3, pathlib\n"
        f"conn = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        f"conn.execute('PRAGMA journal_mode = {pragmas['journal_mode']}')\n"
        f"conn.execute('PRAGMA synchronous = {pragmas['synchronous']}')\n"
        f"files = sorted(pathlib.Path({str(migrations_dir)!r}).glob('*.sql'))\n"
        "texts = [f.read_text() for f in files]\n"
        "done = {r[0] for r in conn.execute('SELECT version FROM client_migration')}\n"
        "assert len(done) == len(texts)\n"
    )
    migsync = str(Path(sys.executable).with_name("migsync"))
    env = {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}

    def run(cmd: list[str]) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            best = min(best, time.perf_counter() - started)
        return best

    # The same work through aiosqlite, the driver migsync's SQLite backend uses (and so asyncio).
    aio_script = (
        "import asyncio, pathlib, aiosqlite\n"
        "async def main():\n"
        f"    async with aiosqlite.connect({str(db)!r}, isolation_level=None) as conn:\n"
        f"        await conn.execute('PRAGMA journal_mode = {pragmas['journal_mode']}')\n"
        f"        await conn.execute('PRAGMA synchronous = {pragmas['synchronous']}')\n"
        f"        files = sorted(pathlib.Path({str(migrations_dir)!r}).glob('*.sql'))\n"
        "        texts = [f.read_text() for f in files]\n"
        "        rows = await conn.execute_fetchall('SELECT version FROM client_migration')\n"
        "        assert len(rows) == len(texts)\n"
        "asyncio.run(main())\n"
    )
    cmd = [migsync, "apply", "--migrations", str(migrations_dir), "--db", f"sqlite:///{db}"]
    return run(cmd), run([sys.executable, "-c", raw_script]), run([sys.executable, "-c", aio_script])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="number of migrations")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is shown")
    parser.add_argument(
        "--backend",
        choices=("all", "sqlite", "postgresql"),
        default="all",
        help="which backends to time (Postgres: MIGSYNC_BENCH_PG_DSN, default the local server)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="side by side with alembic, yoyo and dbmate (bench/compare.py)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 1000, 5000], help="--compare: the Ns to run"
    )
    parser.add_argument("--tools", nargs="+", default=[], help="--compare: only these tools (names as shown)")
    parser.add_argument("--chart", type=Path, help="--compare: also draw a PNG chart here (needs matplotlib)")
    parser.add_argument("--save", type=Path, help="--compare: also write the samples here (JSON)")
    parser.add_argument(
        "--load",
        type=Path,
        nargs="+",
        default=[],
        help="--compare: show saved runs (merged) instead of running",
    )
    args = parser.parse_args()
    if args.compare:
        compare_tools(args)
        return
    if args.backend in ("all", "sqlite"):
        sqlite_bench(args.n, args.repeat)
    if args.backend in ("all", "postgresql"):
        postgres_bench(args.n, args.repeat)


def compare_tools(args: argparse.Namespace) -> None:
    import compare
    import pg

    if args.load:
        compare.show_saved(args.load, args.chart)
        return
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    if "postgresql" in backends:
        why = asyncio.run(pg.available())
        if why is not None:
            print(f"postgres: skipped, no server at {pg.DSN}: {why}")
            backends.remove("postgresql")
    started = time.perf_counter()
    load = os.getloadavg()
    result = compare.compare(args.sizes, args.repeat, backends, pg.DSN, args.tools, args.save)
    print(
        f"\nmigsync bench/apply.py --compare  sizes={args.sizes}  repeat={args.repeat}  "
        f"sqlite {sqlite3.sqlite_version}  {os.cpu_count()} CPUs  load average {load[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after  ({time.perf_counter() - started:.0f} s)"
    )
    print(compare.table(result))
    for tool, why in result.skipped.items():
        print(f"skipped {tool}: {why}")
    if any(n > compare.DBMATE_REVERT_MAX for n in args.sizes):
        print(f"dbmate revert: not run above N={compare.DBMATE_REVERT_MAX} (one process per migration)")
    if args.chart is not None:
        print(compare.chart(result, args.chart))


def postgres_bench(n: int, repeat: int) -> None:
    import pg

    why = asyncio.run(pg.available())
    if why is not None:
        print(f"\npostgres: skipped, no server at {pg.DSN}: {why}")
        return
    with tempfile.TemporaryDirectory(prefix="migsync-bench-") as tmp:
        migrations_dir = Path(tmp)
        scripts = generate(migrations_dir, n)
        samples = pg.rounds(migrations_dir, scripts, repeat)

    def median(key: str) -> float:
        return statistics.median(samples[key]) * 1000

    print(f"\nmigsync bench/apply.py  N={n}  postgres (asyncpg)  repeat={repeat}")
    print(f"{'operation':<34}{'raw ms':>10}{'migsync ms':>12}{'ms/migration':>14}{'ratio':>8}")
    for op in ("apply", "revert"):
        raw_ms, ours_ms = median(f"raw {op}"), median(f"migsync {op}")
        print(f"{op + ' N':<34}{raw_ms:>10.1f}{ours_ms:>12.1f}{ours_ms / n:>14.3f}{ours_ms / raw_ms:>7.2f}x")
    print(f"{'no-op apply (in-process, wall)':<34}{'':>10}{median('migsync noop'):>12.1f}")
    print("target: apply and revert <= 1.1x raw")


def sqlite_bench(n: int, repeat: int) -> None:
    pragmas = SQLiteBackend("sqlite:///x.db").pragmas

    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="migsync-bench-") as tmp:
        root = Path(tmp)
        migrations_dir = root / "migrations"
        migrations_dir.mkdir()
        scripts = generate(migrations_dir, n)
        for round_ in range(repeat):
            raw = raw_connect(root / f"raw{round_}.db", pragmas)
            samples.setdefault("raw apply", []).append(timed(functools.partial(raw_apply, raw, scripts)))
            samples.setdefault("raw revert", []).append(timed(functools.partial(raw_revert, raw, scripts)))
            raw.close()
            floor_db = root / f"floor{round_}.db"
            asyncio.run(prepare_queue(floor_db, migrations_dir))
            floor = raw_bookkeeping_apply(floor_db, scripts, pragmas)
            samples.setdefault("floor apply", []).append((floor, floor))
            ours = asyncio.run(migsync_round(root / f"migsync{round_}.db", migrations_dir))
            for key, value in ours.items():
                samples.setdefault(f"migsync {key}", []).append(value)
        db = root / "migsync0.db"
        asyncio.run(migsync_round(db, migrations_dir))  # leave it fully applied for the no-op
        asyncio.run(_apply_all(db, migrations_dir))
        proc_migsync, proc_raw, proc_aio = process_noop(migrations_dir, db, pragmas)

    def median(key: str, index: int = 0) -> float:
        return statistics.median(s[index] for s in samples[key])

    print(f"\nmigsync bench/apply.py  N={n}  pragmas={pragmas}  sqlite {sqlite3.sqlite_version}")
    print(
        f"{'operation':<34}{'raw ms':>10}{'migsync ms':>12}{'ms/migration':>14}{'ratio':>8}"
        f"{'raw CPU ms':>12}{'migsync CPU ms':>16}{'CPU ratio':>11}"
    )
    for op in ("apply", "revert"):
        raw_ms, ours_ms = median(f"raw {op}") * 1000, median(f"migsync {op}") * 1000
        raw_cpu, ours_cpu = median(f"raw {op}", 1) * 1000, median(f"migsync {op}", 1) * 1000
        print(
            f"{op + ' N':<34}{raw_ms:>10.1f}{ours_ms:>12.1f}{ours_ms / n:>14.3f}{ours_ms / raw_ms:>7.2f}x"
            f"{raw_cpu:>12.1f}{ours_cpu:>16.1f}{ours_cpu / raw_cpu:>10.2f}x"
        )
    raw_ms, floor_ms = median("raw apply") * 1000, median("floor apply") * 1000
    label = "apply N, raw + migsync's bookkeeping"
    print(f"{label:<34}{raw_ms:>10.1f}{floor_ms:>12.1f}{floor_ms / n:>14.3f}{floor_ms / raw_ms:>7.2f}x")
    noop_cpu = median("migsync noop", 1) * 1000
    noop_wall = median("migsync noop") * 1000
    print(f"{'no-op apply (in-process, CPU)':<34}{'':>10}{noop_cpu:>12.1f}{'':>14}{'':>8}")
    print(f"{'no-op apply (in-process, wall)':<34}{'':>10}{noop_wall:>12.1f}{'':>14}{'':>8}")
    print(
        f"{'no-op apply (process) vs aiosqlite':<34}{proc_aio * 1000:>10.1f}{proc_migsync * 1000:>12.1f}"
        f"{'':>14}{proc_migsync / proc_aio:>7.2f}x"
    )
    print(
        f"{'no-op apply (process) vs sqlite3':<34}{proc_raw * 1000:>10.1f}{proc_migsync * 1000:>12.1f}"
        f"{'':>14}{proc_migsync / proc_raw:>7.2f}x"
    )
    print("targets: apply and revert <= 1.2x raw; no-op apply < 20 ms CPU")


async def _apply_all(db: Path, migrations_dir: Path) -> None:
    async with Client.connect(f"sqlite:///{db}", plugins=make_plugins(autoload=False), sinks=[]) as c:
        result = await c.apply(load_directory(migrations_dir))
        assert result.ok, result


if __name__ == "__main__":
    main()
