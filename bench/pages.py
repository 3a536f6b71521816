"""The pages each migration's commit writes on SQLite, read from the WAL, per b-tree.

Applies (and reverts) N trivial migrations with raw sqlite3 (one history row per
migration) and with migsync in-process, with automatic checkpoints off so the WAL
keeps every frame, then reads the WAL: a frame is one page written by a commit, so
the frames per commit are exact. Each page is named by the table or index that owns
it (``dbstat`` of the database at the end of the pass).

    python bench/pages.py [-n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

# bench/ is not a package: apply.py's helpers by path.
from apply import generate, prepare_queue, raw_apply, raw_connect, raw_revert  # type: ignore[import-not-found]

from migsync import Client
from migsync.core.plugins import make_plugins

PRAGMAS = {"journal_mode": "WAL", "synchronous": "FULL"}


def commits(wal: Path, start: int) -> Iterator[list[int]]:
    """The page numbers of each commit's frames in ``wal`` from byte ``start`` on."""
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    offset = max(start, 32)
    pages: list[int] = []
    while offset + 24 + page_size <= len(data):
        pgno, commit_size = struct.unpack(">II", data[offset : offset + 8])
        pages.append(pgno)
        offset += 24 + page_size
        if commit_size:
            yield pages
            pages = []


def owners(db: Path) -> dict[int, str]:
    """Which b-tree owns each page; the migrations' own tables and indexes are one group."""
    conn = sqlite3.connect(db)
    out = {}
    for name, pageno in conn.execute("SELECT name, pageno FROM dbstat"):
        if name.startswith(("t_", "ix_t_")):
            name = "(the migration's own table and index)"
        out[pageno] = name
    conn.close()
    return out


def report(label: str, db: Path, found: list[list[int]]) -> None:
    names = owners(db)
    per = collections.Counter(names.get(p, "(freelist)") for pages in found for p in pages)
    n = len(found)
    total = sum(len(p) for p in found)
    print(f"-- {label}: {n} commits, {total / n:.2f} pages per commit")
    for name, count in per.most_common():
        print(f"   {count / n:6.2f}  {name}")


def no_autocheckpoint() -> None:
    """Every connection opened from here on keeps its frames in the WAL."""
    original = sqlite3.connect

    def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        conn = original(*args, **kwargs)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]


def wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def migsync_pass(db: Path, directory: Path) -> None:
    holder = sqlite3.connect(db)  # keeps the WAL from being checkpointed away on close
    holder.execute("SELECT 1 FROM sqlite_master").fetchall()
    await prepare_queue(db, directory)
    async with Client.connect(f"sqlite:///{db}", plugins=make_plugins(autoload=False), sinks=[]) as client:
        start = wal_size(db)
        result = await client.process()
        assert result.ok and result.remaining == 0, result
        report("migsync apply", db, list(commits(db.with_name(db.name + "-wal"), start)))
        await client.ledger.revert(everything=True)
        start = wal_size(db)
        result = await client.process()
        assert result.ok and result.remaining == 0, result
        report("migsync revert", db, list(commits(db.with_name(db.name + "-wal"), start)))
    holder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args()
    no_autocheckpoint()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "migrations"
        directory.mkdir()
        scripts = generate(directory, args.n)
        raw_db = Path(tmp) / "raw.db"
        conn = raw_connect(raw_db, PRAGMAS)
        start = wal_size(raw_db)
        raw_apply(conn, scripts)
        report("raw apply", raw_db, list(commits(raw_db.with_name("raw.db-wal"), start)))
        start = wal_size(raw_db)
        raw_revert(conn, scripts)
        report("raw revert", raw_db, list(commits(raw_db.with_name("raw.db-wal"), start)))
        conn.close()
        asyncio.run(migsync_pass(Path(tmp) / "migsync.db", directory))


if __name__ == "__main__":
    main()
