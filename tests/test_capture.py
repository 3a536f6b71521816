"""Capture by triggers (``migsync.core.capture``, ``migsync capture``) on SQLite and Postgres."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dbtools import is_sqlite, query, run

from migsync.core import capture
from migsync.core.backend import Backend
from migsync.core.client import Client
from migsync.core.errors import BackendError, ConfigError
from migsync.core.version import Version
from migsync.testing.backend_suite import migration

TODO = migration(
    1,
    "0001_todo",
    "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT, n INTEGER);\n"
    "CREATE TABLE pair (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b));\n"
    "CREATE TABLE nokey (x INTEGER)",
)
LATER = migration(2, "0002_later", "CREATE TABLE later (x INTEGER)")

Change = tuple[str, str, str, Any, int | None]


async def changes(backend: Backend) -> list[Change]:
    """``(entity, entity_id, operation, parsed data, schema_version)`` of every change, in order."""
    rows = await backend.fetch(
        "SELECT entity, entity_id, operation, data, schema_version "
        f"FROM {backend.tables.changes} ORDER BY seq"
    )
    return [
        (
            r["entity"],
            r["entity_id"],
            r["operation"],
            None if r["data"] is None else json.loads(r["data"]),
            None if r["schema_version"] is None else Version.from_key(r["schema_version"]),
        )
        for r in rows
    ]


async def write(backend: Backend, *statements: str) -> None:
    """The statements in one transaction of the application's."""
    async with backend.transaction() as tx:
        for statement in statements:
            await tx.execute(statement)


async def test_insert_update_delete_are_recorded_with_the_schema_version(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        assert (await client.apply([TODO])).ok
        backend = client.backend
        info = await capture.install(backend, "todo")
        assert (info.table, info.key, info.columns) == ("todo", ("id",), ("id", "title", "n"))
        await write(backend, "INSERT INTO todo (id, title, n) VALUES (1, 'buy milk', 3)")
        await write(backend, "UPDATE todo SET title = 'buy oat milk', n = NULL WHERE id = 1")
        assert (await client.apply([TODO, LATER])).ok
        await write(
            backend, "INSERT INTO todo (id, title) VALUES (2, 'it''s late')", "DELETE FROM todo WHERE id = 1"
        )
        recorded = await changes(backend)
    assert recorded == [
        ("todo", "1", "insert", {"id": 1, "title": "buy milk", "n": 3}, 1),
        ("todo", "1", "update", {"id": 1, "title": "buy oat milk", "n": None}, 1),
        ("todo", "2", "insert", {"id": 2, "title": "it's late", "n": None}, 2),
        ("todo", "1", "delete", None, 2),
    ]


async def test_a_rolled_back_write_records_nothing(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        await capture.install(backend, "todo")
        with pytest.raises(RuntimeError):
            async with backend.transaction() as tx:
                await tx.execute("INSERT INTO todo (id, title) VALUES (1, 'never')")
                assert len(await tx.fetch(f"SELECT seq FROM {backend.tables.changes}")) == 1
                raise RuntimeError("the application changes its mind")
        assert await changes(backend) == []
        await write(backend, "INSERT INTO todo (id, title) VALUES (2, 'kept')")
        assert [c[:3] for c in await changes(backend)] == [("todo", "2", "insert")]


async def test_composite_key_is_a_json_array(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        info = await capture.install(backend, "pair")
        assert info.key == ("a", "b")
        await write(backend, "INSERT INTO pair (a, b, v) VALUES (1, 'x', 'first')")
        await write(backend, "UPDATE pair SET v = 'second' WHERE a = 1")
        await write(backend, "DELETE FROM pair")
        recorded = await changes(backend)
    # The same compact text on both backends, so the server sees one id for one row.
    assert recorded == [
        ("pair", '[1,"x"]', "insert", {"a": 1, "b": "x", "v": "first"}, 1),
        ("pair", '[1,"x"]', "update", {"a": 1, "b": "x", "v": "second"}, 1),
        ("pair", '[1,"x"]', "delete", None, 1),
    ]


async def test_changing_the_key_is_a_delete_and_an_insert(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        await capture.install(backend, "todo")
        await capture.install(backend, "pair")
        await write(
            backend, "INSERT INTO todo (id, title) VALUES (1, 'a')", "INSERT INTO pair VALUES (1, 'x', 'v')"
        )
        await write(backend, "UPDATE todo SET id = 7 WHERE id = 1", "UPDATE pair SET b = 'y'")
        recorded = (await changes(backend))[2:]
    assert recorded == [
        ("todo", "1", "delete", None, 1),
        ("todo", "7", "insert", {"id": 7, "title": "a", "n": None}, 1),
        ("pair", '[1,"x"]', "delete", None, 1),
        ("pair", '[1,"y"]', "insert", {"a": 1, "b": "y", "v": "v"}, 1),
    ]


async def test_a_table_without_primary_key_is_refused(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        with pytest.raises(ConfigError, match="'nokey' has no primary key"):
            await capture.install(backend, "nokey")
        await write(backend, "INSERT INTO nokey (x) VALUES (1)")
        assert await changes(backend) == []
        assert await capture.captured(backend) == []


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ("todo; DROP TABLE todo", "not a plain SQL identifier"),
        ('"todo"', "not a plain SQL identifier"),
        ("a.b.c", "not a plain SQL identifier"),
        ("1todo", "not a plain SQL identifier"),
        ("", "not a plain SQL identifier"),
        ("entity_changes", "migsync's"),
        ("CLIENT_MIGRATION_STATUS", "migsync's"),
        ("migsync_meta", "migsync's"),
        ("nosuch", "no table 'nosuch'"),
        ("v", "not a table"),
    ],
)
async def test_refused_names(any_url: str, table: str, reason: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        await write(backend, "CREATE VIEW v AS SELECT * FROM todo")
        with pytest.raises(ConfigError, match=reason):
            await capture.install(backend, table)
        await write(backend, "INSERT INTO todo (id) VALUES (1)")
        assert await changes(backend) == []
        assert await capture.captured(backend) == []


async def test_sqlite_refuses_a_schema_qualified_name(db_url: str) -> None:
    async with Client.connect(db_url) as client:
        await client.apply([TODO])
        with pytest.raises(ConfigError, match="without a schema"):
            await capture.install(client.backend, "main.todo")


async def test_installing_twice_records_each_write_once(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        first = await capture.install(backend, "todo")
        second = await capture.install(backend, "todo")
        assert first == second
        await write(backend, "INSERT INTO todo (id) VALUES (1)", "UPDATE todo SET n = 1", "DELETE FROM todo")
        assert [c[2] for c in await changes(backend)] == ["insert", "update", "delete"]
        assert await capture.captured(backend) == ["todo"]


async def test_remove_stops_capturing(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        await capture.install(backend, "todo")
        await capture.install(backend, "pair")
        await write(backend, "INSERT INTO todo (id) VALUES (1)")
        assert await capture.remove(backend, "todo") is True
        await write(backend, "INSERT INTO todo (id) VALUES (2)", "INSERT INTO pair VALUES (1, 'x', 'v')")
        assert [c[:3] for c in await changes(backend)] == [
            ("todo", "1", "insert"),
            ("pair", '[1,"x"]', "insert"),
        ]
        assert await capture.captured(backend) == ["pair"]
        assert await capture.remove(backend, "todo") is False


async def test_refresh_picks_up_a_new_column(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        await capture.install(backend, "todo")
        assert await capture.refresh(backend) == []  # nothing changed: nothing re-created
        # A migration outside migsync's processor: the refresh is then the caller's job.
        await write(backend, "ALTER TABLE todo ADD COLUMN due TEXT")
        await write(backend, "INSERT INTO todo (id, due) VALUES (1, 'monday')")
        refreshed = await capture.refresh(backend)
        await write(backend, "INSERT INTO todo (id, due) VALUES (2, 'tuesday')")
        recorded = [c[3] for c in await changes(backend)]
        assert await capture.refresh(backend) == []
    if is_sqlite(any_url):
        # SQLite's triggers list the columns: the new one is missing until the refresh.
        assert refreshed == ["todo"]
        assert recorded == [
            {"id": 1, "title": None, "n": None},
            {"id": 2, "title": None, "n": None, "due": "tuesday"},
        ]
    else:
        assert refreshed == []
        assert recorded == [
            {"id": 1, "title": None, "n": None, "due": "monday"},
            {"id": 2, "title": None, "n": None, "due": "tuesday"},
        ]


async def test_refresh_reinstalls_on_a_rebuilt_table_and_forgets_a_dropped_one(any_url: str) -> None:
    async with Client.connect(any_url) as client:
        await client.apply([TODO])
        backend = client.backend
        await capture.install(backend, "todo")
        await capture.install(backend, "pair")
        await write(
            backend,
            "DROP TABLE todo",
            "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)",
            "DROP TABLE pair",
        )
        await write(backend, "INSERT INTO todo (id) VALUES (1)")
        assert await capture.refresh(backend) == ["todo"]
        await write(backend, "INSERT INTO todo (id) VALUES (2)")
        assert [c[:4] for c in await changes(backend)] == [("todo", "2", "insert", {"id": 2, "title": None})]
        assert await capture.captured(backend) == ["todo"]


async def test_sqlite_names_ignore_case_and_blobs_do_not_break_writes(db_url: str) -> None:
    async with Client.connect(db_url) as client:
        await client.apply(
            [TODO, migration(2, "0002_files", "CREATE TABLE Files (id TEXT PRIMARY KEY, body BLOB)")]
        )
        backend = client.backend
        assert (await capture.install(backend, "FILES")).table == "Files"
        assert (await capture.install(backend, "files")).table == "Files"
        await write(backend, "INSERT INTO files (id, body) VALUES ('f', x'00ff')")
        assert await changes(backend) == [("Files", "f", "insert", {"id": "f", "body": "\\x00ff"}, 2)]
        assert await capture.captured(backend) == ["Files"]
        assert await capture.remove(backend, "files") is True
        assert await capture.captured(backend) == []


async def test_sqlite_a_captured_column_cannot_be_dropped_until_its_triggers_are(db_url: str) -> None:
    # The documented way: the migration drops migsync's triggers first; refresh puts them back.
    async with Client.connect(db_url) as client:
        await client.apply([TODO])
        backend = client.backend
        info = await capture.install(backend, "todo")
        with pytest.raises(BackendError, match="error in trigger migsync_capture_todo_"):
            await write(backend, "ALTER TABLE todo DROP COLUMN n")
        unhook = "".join(f"DROP TRIGGER IF EXISTS {name};\n" for name in info.triggers)
        drop = migration(2, "0002_drop_n", unhook + "ALTER TABLE todo DROP COLUMN n")
        assert (await client.apply([TODO, drop])).ok  # the pass's own refresh puts them back
        assert await capture.refresh(backend) == []
        await write(backend, "INSERT INTO todo (id) VALUES (1)")
        assert [c[3] for c in await changes(backend)] == [{"id": 1, "title": None}]


async def test_postgres_schemas(pg_url: str) -> None:
    # Bookkeeping tables (and the trigger function) in their own schema, the table in another.
    async with Client.connect(pg_url + "?schema=book") as client:
        await client.apply(
            [
                migration(
                    1,
                    "0001_app",
                    "CREATE SCHEMA app; CREATE TABLE app.item (sku TEXT PRIMARY KEY, qty INTEGER)",
                )
            ]
        )
        backend = client.backend
        assert backend.tables.changes == '"book".entity_changes'
        assert (await capture.install(backend, "app.item")).table == "app.item"
        await write(backend, "INSERT INTO app.item VALUES ('a-1', 5)")
        assert await changes(backend) == [("app.item", "a-1", "insert", {"sku": "a-1", "qty": 5}, 1)]
        assert await capture.captured(backend) == ["app.item"]
        assert await capture.refresh(backend) == []
        functions = await backend.fetch(
            "SELECT n.nspname AS schema FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = $1",
            (capture.FUNCTION,),
        )
        assert [f["schema"] for f in functions] == ["book"]
        with pytest.raises(ConfigError, match=r"no table 'app\.Item'"):
            await capture.install(backend, "app.Item")  # quoted as written: case-sensitive
        assert await capture.remove(backend, "app.item") is True
        await write(backend, "INSERT INTO app.item VALUES ('a-2', 1)")
        assert len(await changes(backend)) == 1


async def test_postgres_public_table_named_either_way_is_one_entity(pg_url: str) -> None:
    async with Client.connect(pg_url) as client:
        await client.apply([TODO])
        backend = client.backend
        assert (await capture.install(backend, "public.todo")).table == "todo"
        assert (await capture.install(backend, "todo")).table == "todo"
        await write(backend, "INSERT INTO todo (id) VALUES (1)")
        assert [c[:3] for c in await changes(backend)] == [("todo", "1", "insert")]
        assert await capture.captured(backend) == ["todo"]


def test_cli_installs_lists_and_removes(any_url: str) -> None:
    query(any_url, "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)")
    installed = run("capture", "--db", any_url, "--table", "todo")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout == "capturing todo (key: id; 2 columns)\n"
    query(any_url, "INSERT INTO todo (id, title) VALUES (1, 'a')")
    rows = query(any_url, "SELECT entity, entity_id, operation, data FROM entity_changes")
    assert [(*row[:3], json.loads(row[3])) for row in rows] == [
        ("todo", "1", "insert", {"id": 1, "title": "a"})
    ]

    listed = run("capture", "--db", any_url, "--list")
    assert (listed.returncode, listed.stdout) == (0, "todo\n")

    removed = run("capture", "--db", any_url, "--table", "todo", "--remove", "--list")
    assert (removed.returncode, removed.stdout) == (0, "stopped capturing todo\n")
    assert "no captured tables" in removed.stderr
    query(any_url, "INSERT INTO todo (id, title) VALUES (2, 'b')")
    assert len(query(any_url, "SELECT seq FROM entity_changes")) == 1


def test_cli_refusals(any_url: str) -> None:
    query(any_url, "CREATE TABLE nokey (x INTEGER)")
    no_key = run("capture", "--db", any_url, "--table", "nokey")
    assert no_key.returncode == 2 and "has no primary key" in no_key.stderr
    own = run("capture", "--db", any_url, "--table", "entity_changes")
    assert own.returncode == 2 and "migsync's" in own.stderr
    usage = run("capture", "--db", any_url, "--remove")
    assert usage.returncode == 2 and "give --table NAME" in usage.stderr


async def test_a_migration_that_adds_a_column_refreshes_the_capture_itself(tmp_path: Path) -> None:

    url = f"sqlite:///{tmp_path / 'app.db'}"
    first = migration(
        1, "0001_todo", "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)", "DROP TABLE todo"
    )
    second = migration(2, "0002_done", "ALTER TABLE todo ADD COLUMN done INTEGER", "")
    async with Client.connect(url, sinks=[], backend_options={"create": True}) as client:
        assert (await client.apply([first])).ok
        await capture.install(client.backend, "todo")
        assert (await client.apply([first, second])).ok  # no refresh by hand
        async with client.changes() as rec:
            await rec.execute("INSERT INTO todo (id, title, done) VALUES (1, 'milk', 1)")
        rows = await client.backend.fetch("SELECT data, schema_version FROM entity_changes")
    assert [(json.loads(r["data"]), r["schema_version"]) for r in rows] == [
        ({"id": 1, "title": "milk", "done": 1}, "012")  # stored as the version's key
    ]
