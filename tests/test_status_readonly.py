"""``migsync status`` never writes: no database file, no bookkeeping table, no layout upgrade.

And ``status --migrations DIR`` sets the folder beside the database: pending, changed and
missing migrations, with ``--exit-code`` for CI and container start-up checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from conftest import write_migrations
from dbtools import aquery, is_sqlite, query, run, sqlite_path, tables
from test_layout_upgrade import build_layout_4
from test_sqlite_functions import text_plugins

from migsync import BackendError, BackendSpec, Client, hookimpl, make_plugins
from migsync.backends.sqlite import SQLiteBackend
from migsync.core import schema
from migsync.core.inspection import read_history

GOOD = {
    "0001_users.sql": "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
    "-- migrate:down\nDROP TABLE users;\n",
    "0002_email.up.sql": "ALTER TABLE users ADD COLUMN email TEXT;",
    "0002_email.down.sql": "ALTER TABLE users DROP COLUMN email;",
}


def files_beside(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


def test_status_of_a_missing_sqlite_file_says_so_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    result = run("status", "--db", f"sqlite:///{path}")
    assert result.returncode == 2
    assert f"SQLite database {path} does not exist" in result.stderr
    assert "'migsync apply' creates it" in result.stderr
    assert not path.exists() and files_beside(path) == set()


def test_status_of_a_fresh_database_leaves_it_without_tables(tmp_path: Path, any_url: str) -> None:
    if is_sqlite(any_url):
        Path(sqlite_path(any_url)).touch()  # an empty file is a fresh SQLite database
    result = run("status", "--db", any_url)
    assert result.returncode == 0, result.stderr
    assert "no migsync tables yet" in result.stdout
    if is_sqlite(any_url):
        assert "database: SQLite " in result.stdout
        assert Path(sqlite_path(any_url)).stat().st_size == 0  # not even a journal-mode header
    shown = json.loads(run("status", "--db", any_url, "--json").stdout)
    assert shown["migrations"] == [] and shown["layout"] is None
    assert shown["current_layout"] == schema.SCHEMA_VERSION
    assert ("sqlite_version" in shown) and (shown["sqlite_version"] is None) != is_sqlite(any_url)
    assert tables(any_url) == set()


def test_status_with_a_folder_on_a_fresh_database_lists_everything_pending(
    tmp_path: Path, any_url: str
) -> None:
    if is_sqlite(any_url):
        Path(sqlite_path(any_url)).touch()
    folder = write_migrations(tmp_path / "m", GOOD)
    result = run("status", "--db", any_url, "--migrations", str(folder), "--exit-code")
    assert result.returncode == 1, result.stderr
    assert "2 pending, 0 changed, 0 missing" in result.stdout
    assert "pending  0001_users" in result.stdout and "pending  0002_email" in result.stdout
    assert tables(any_url) == set()


def test_status_exit_code_follows_the_folder(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", GOOD)
    args = ("status", "--db", any_url, "--migrations", str(folder), "--exit-code")
    assert run("apply", "--db", any_url, "--migrations", str(folder)).returncode == 0
    clean = run(*args)
    assert clean.returncode == 0, clean.stderr + clean.stdout
    assert "0 pending, 0 changed, 0 missing" in clean.stdout

    write_migrations(folder, {"0003_orders.up.sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY);"})
    pending = run(*args, "--json")
    assert pending.returncode == 1
    shown = json.loads(pending.stdout)
    assert shown["pending"] == [
        {
            "version": "3",
            "name": "0003_orders",
            "file": str(folder / "0003_orders.up.sql"),
            "out_of_order": False,
        }
    ]
    assert shown["changed"] == [] and shown["missing"] == [] and shown["format"] == "paired+native"
    assert [m["version"] for m in shown["migrations"]] == ["1", "2"]

    (folder / "0003_orders.up.sql").unlink()
    (folder / "0002_email.up.sql").unlink()
    (folder / "0002_email.down.sql").unlink()
    (folder / "0001_users.sql").write_text(GOOD["0001_users.sql"] + "-- edited\n", encoding="utf-8")
    drifted = run(*args, "--json")
    assert drifted.returncode == 1  # changed
    shown = json.loads(drifted.stdout)
    assert [(c["version"], c["name"]) for c in shown["changed"]] == [("1", "0001_users")]
    assert shown["changed"][0]["applied_checksum"] != shown["changed"][0]["file_checksum"]
    assert [(m["version"], m["name"]) for m in shown["missing"]] == [("2", "0002_email")]
    text = run(*args).stdout
    assert "changed  0001_users: applied with checksum" in text
    assert "missing  0002_email: applied, but no file in" in text

    (folder / "0001_users.sql").write_text(GOOD["0001_users.sql"], encoding="utf-8")
    only_missing = run(*args)
    assert only_missing.returncode == 0  # missing alone is shown, not a failure of --exit-code
    assert "0 pending, 0 changed, 1 missing" in only_missing.stdout


def test_status_exit_code_without_a_folder_counts_what_the_database_has_pending(
    tmp_path: Path, db_url: str
) -> None:
    folder = write_migrations(tmp_path / "m", {**GOOD, "0003_x.sql": "-- migrate:up\nSELEC 1;\n"})
    assert run("apply", "--db", db_url, "--migrations", str(folder), "--max-attempts", "1").returncode == 1
    assert run("status", "--db", db_url, "--exit-code").returncode == 1
    assert run("status", "--db", db_url).returncode == 0


def test_status_with_a_bad_folder_exits_2_before_opening_the_database(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_x.sql": "-- migrate:up\nSELECT 1;\n", "0002_y.go": ""})
    path = tmp_path / "client.db"
    result = run("status", "--db", f"sqlite:///{path}", "--migrations", str(folder))
    assert result.returncode == 2 and "0002_y.go" in result.stderr and "Go migration" in result.stderr
    assert not path.exists()


async def test_status_reads_an_older_layout_without_upgrading_it(tmp_path: Path, any_url: str) -> None:
    await build_layout_4(any_url)
    t = schema.DEFAULT_TABLES if is_sqlite(any_url) else schema.Tables("public")
    layout = f"SELECT value FROM {t.meta} WHERE key = 'schema_version'"
    assert await aquery(any_url, layout) == [("4",)]
    shown = json.loads(run("status", "--db", any_url, "--json").stdout)
    assert [(m["version"], m["name"], m["state"], m["held"]) for m in shown["migrations"]] == [
        ("1", "0001_users", "applied", False),
        ("2", "0002_email", "pending", True),
    ]
    assert shown["layout"] == 4 and "'migsync apply' will upgrade them" in shown["note"]
    text = run("status", "--db", any_url)
    assert text.returncode == 0 and "layout 4" in text.stdout and "0001_users" in text.stdout
    assert await aquery(any_url, layout) == [("4",)]  # still layout 4: status upgraded nothing
    assert await aquery(any_url, f"SELECT version FROM {t.migrations} ORDER BY version") == [(1,), (2,)]


async def test_read_only_client_refuses_writes_and_reads_what_is_there(any_url: str) -> None:
    async with Client.connect(any_url, sinks=[]) as client:  # a writer makes the tables
        assert (await read_history(client.backend)).layout == schema.SCHEMA_VERSION
    async with Client.connect(any_url, sinks=[], read_only=True) as client:
        history = await read_history(client.backend)
        assert history.layout == schema.SCHEMA_VERSION and history.states == [] and history.note() is None
        with pytest.raises(BackendError):
            async with client.backend.transaction() as tx:
                await tx.execute("CREATE TABLE sneaky (x INTEGER)")
    assert "sneaky" not in await asyncio.to_thread(tables, any_url)


async def test_read_only_sqlite_keeps_the_plugins_functions(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    query(f"sqlite:///{path}", "CREATE TABLE t (x TEXT)")
    url = f"sqlite:///{path}"
    async with Client.connect(url, sinks=[], plugins=text_plugins(), read_only=True) as client:
        rows = await client.backend.fetch("SELECT normalize('  Hello   World ') AS n")
        assert rows == [{"n": "hello world"}]
        assert await client.sqlite_version() is not None
        assert (await read_history(client.backend)).layout is None
    assert await asyncio.to_thread(tables, url) == {"t"}


def test_a_changed_repeatable_migration_is_pending_not_changed(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(
        tmp_path / "sql",
        {
            "V1__users.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n",
            "R__names.sql": "DROP VIEW IF EXISTS names;\nCREATE VIEW names AS SELECT name FROM users;\n",
        },
    )
    args = ("status", "--db", db_url, "--migrations", str(folder), "--exit-code", "--json")
    assert run("apply", "--db", db_url, "--migrations", str(folder)).returncode == 0
    clean = run(*args)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["pending"] == []

    (folder / "R__names.sql").write_text(
        "DROP VIEW IF EXISTS names;\nCREATE VIEW names AS SELECT id, name FROM users;\n", encoding="utf-8"
    )
    again = run(*args)
    assert again.returncode == 1
    shown = json.loads(again.stdout)
    assert [(p["version"], p["name"]) for p in shown["pending"]] == [(None, "R__names")]
    assert shown["changed"] == [] and shown["missing"] == []


class _OldStyleSQLite(SQLiteBackend):
    """A plugin's backend from before read-only opens: its factory knows ``create`` only."""

    name: ClassVar[str] = "oldsqlite"

    def __init__(self, url: str, *, create: bool = True):
        super().__init__("sqlite:" + url.removeprefix("oldsqlite:"), create=create)


def test_a_backend_without_read_only_still_opens_for_looking_only(tmp_path: Path) -> None:
    @hookimpl
    def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
        register(BackendSpec("oldsqlite", ("oldsqlite",), _OldStyleSQLite))

    plugin = SimpleNamespace(__name__="old-backend", migsync_register_backends=migsync_register_backends)
    plugins = make_plugins(autoload=False, extra=[plugin])
    missing = Client.connect(f"oldsqlite:///{tmp_path / 'none.db'}", plugins=plugins, read_only=True)
    assert missing.read_only and missing.backend.create is False and missing.backend.read_only is False

    path = tmp_path / "app.db"
    path.touch()
    client = Client.connect(f"oldsqlite:///{path}", plugins=plugins, read_only=True, sinks=[])

    async def look() -> int | None:
        async with client:
            return (await read_history(client.backend)).layout

    assert asyncio.run(look()) is None
    assert tables(f"sqlite:///{path}") == set()  # no bookkeeping tables: ensure_schema never ran


def test_status_with_a_schema_option_creates_no_schema(pg_url: str) -> None:
    url = f"{pg_url}?schema=migsync_books"
    result = run("status", "--db", url, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layout"] is None
    assert query(pg_url, "SELECT 1 FROM pg_namespace WHERE nspname = 'migsync_books'") == []
