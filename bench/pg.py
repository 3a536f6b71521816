"""The Postgres half of bench/apply.py: migsync against raw asyncpg, in one run.

Raw asyncpg runs the same statements with one transaction and one history
row per migration. Each side works in a database of its own, created for
the round and dropped after it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from migsync import Client
from migsync.core.plugins import make_plugins
from migsync.core.sources import scan_directory

DSN = os.environ.get("MIGSYNC_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

Scripts = list[tuple[list[str], list[str]]]


async def available() -> str | None:
    """None if the bench's Postgres answers, else why not."""
    try:
        conn = await asyncpg.connect(DSN, timeout=3)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    await conn.close()
    return None


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    name = f"migsync_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(DSN)
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def raw_round(scripts: Scripts) -> dict[str, float]:
    async with scratch_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE history (version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION)"
            )
            started = time.perf_counter()
            for version, (up, _) in enumerate(scripts, 1):
                async with conn.transaction():
                    await conn.execute(";\n".join(up))
                    await conn.execute("INSERT INTO history VALUES ($1, $2)", version, time.time())
            applied = time.perf_counter() - started
            started = time.perf_counter()
            for version in range(len(scripts), 0, -1):
                async with conn.transaction():
                    await conn.execute(";\n".join(scripts[version - 1][1]))
                    await conn.execute("DELETE FROM history WHERE version = $1", version)
            reverted = time.perf_counter() - started
        finally:
            await conn.close()
    return {"apply": applied, "revert": reverted}


async def migsync_round(migrations_dir: Path) -> dict[str, float]:
    async with (
        scratch_database() as url,
        Client.connect(url, plugins=make_plugins(autoload=False), sinks=[]) as client,
    ):
        started = time.perf_counter()
        result = await client.apply(scan_directory(migrations_dir))
        assert result.ok and result.remaining == 0, result
        applied = time.perf_counter() - started
        started = time.perf_counter()
        noop = await client.apply(scan_directory(migrations_dir))
        assert noop.ok and not noop.processed
        idle = time.perf_counter() - started
        started = time.perf_counter()
        await client.ledger.revert(everything=True)
        result = await client.process()
        assert result.ok and result.remaining == 0, result
        reverted = time.perf_counter() - started
    return {"apply": applied, "revert": reverted, "noop": idle}


def rounds(migrations_dir: Path, scripts: Scripts, repeat: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for _ in range(repeat):
        for key, value in asyncio.run(raw_round(scripts)).items():
            samples.setdefault(f"raw {key}", []).append(value)
        for key, value in asyncio.run(migsync_round(migrations_dir)).items():
            samples.setdefault(f"migsync {key}", []).append(value)
    return samples
