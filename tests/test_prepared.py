"""The hot path's statements on the asyncpg connection itself (:mod:`migsync.server.prepared`).

On Postgres a :class:`Prepared` statement bypasses SQLAlchemy's execution: these tests hold it
to what SQLAlchemy's would do. It runs in the unit of work's transaction (also when it is the
transaction's first statement), its rows read back with SQLAlchemy's types, and its failures are
SQLAlchemy's exceptions, which the store maps to its own.
"""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from migsync.core.errors import BackendError
from migsync.core.version import Version
from migsync.server import Store
from migsync.server import engine as engines
from migsync.server import tables as t
from migsync.server.prepared import Prepared

_meta = t.store_meta.c
_PUT = Prepared(insert(t.store_meta).values(key=bindparam("key"), value=bindparam("value")))
_GET = Prepared(select(_meta.key, _meta.value).where(_meta.key == bindparam("key")))
_VERSIONS = Prepared(
    select(t.store_migrations.c.version).where(t.store_migrations.c.version == bindparam("version"))
)


async def test_a_prepared_statement_runs_in_the_unit_of_works_transaction(any_store: str) -> None:
    async with Store.open(any_store) as store:
        with pytest.raises(RuntimeError):
            async with store._write("test") as conn:
                await _PUT.rows(conn, {"key": "first", "value": "1"})  # the transaction's first statement
                raise RuntimeError("rolled back")
        async with store._write("test") as conn:
            await _PUT.rows(conn, {"key": "kept", "value": "2"})
        async with store._read("test") as conn:
            assert await _GET.rows(conn, {"key": "first"}) == []
            (row,) = await _GET.rows(conn, {"key": "kept"})
            assert (row.key, row.value) == ("kept", "2")


async def test_its_rows_read_back_with_sqlalchemys_types(any_store: str) -> None:
    async with Store.open(any_store) as store:
        async with store._write("test") as conn:
            await conn.execute(
                insert(t.store_migrations).values(
                    version=Version.parse("1.10"),
                    name="n",
                    content="{}",
                    checksum="c",
                    signature="s",
                    signed_by="k",
                    published_at=0.0,
                )
            )
        async with store._read("test") as conn:
            (row,) = await _VERSIONS.rows(conn, {"version": Version.parse("1.10")})
            assert row.version == Version.parse("1.10") and isinstance(row.version, Version)


async def test_its_failures_are_the_stores_errors(any_store: str) -> None:
    async with Store.open(any_store) as store:
        async with store._write("test") as conn:
            await _PUT.rows(conn, {"key": "twice", "value": "1"})
        with pytest.raises(BackendError, match="conflicting data") as raised:
            async with store._write("writing it twice") as conn:
                await _PUT.rows(conn, {"key": "twice", "value": "2"})
        assert not engines.is_retryable(raised.value)


async def test_a_statement_expanded_at_execution_is_refused(pg_url: str) -> None:
    async with Store.open(pg_url):
        pass
    engine = create_async_engine(engines.store_url(pg_url))
    try:
        listed = Prepared(select(_meta.value).where(_meta.key.in_(["a", "b"])))
        async with engine.connect() as conn:
            with pytest.raises(TypeError, match="expanded at execution"):
                await listed.rows(conn)
    finally:
        await engine.dispose()
