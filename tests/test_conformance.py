"""The backend conformance suite (:mod:`migsync.testing.backend_suite`) on the built-in backends."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from migsync import Client
from migsync.core.plugins import Plugins, make_plugins
from migsync.testing import FakeClock
from migsync.testing.backend_suite import BackendSuite, migration


class TestSQLite(BackendSuite):
    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'conformance.db'}"

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins(autoload=False)


class TestPostgres(BackendSuite):
    @pytest.fixture
    def backend_url(self, pg_url: str) -> str:
        return pg_url

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins(autoload=False)


async def test_postgres_schema_option_holds_only_the_bookkeeping(pg_url: str) -> None:
    url = f"{pg_url}?schema=custom_schema"
    users = migration(1, "0001_users", "CREATE TABLE users (id INTEGER)", "DROP TABLE users")
    async with Client.connect(
        url, plugins=make_plugins(autoload=False), sinks=[], clock=FakeClock()
    ) as client:
        result = await client.apply([users])
        assert result.ok
        assert [s.state for s in await client.status()] == ["applied"]
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'custom_schema') ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        ("custom_schema", "client_migration"),
        ("custom_schema", "client_migration_status"),
        ("custom_schema", "entity_changes"),
        ("custom_schema", "migration_changes"),
        ("custom_schema", "migsync_actions"),
        ("custom_schema", "migsync_meta"),
        ("custom_schema", "migsync_report_outbox"),
        ("public", "users"),
    ]
