"""Reverting a migration that has no down script is refused before anything runs (issue 14, item 5).

A migration without a down script for the database's dialect cannot be undone: a revert would
run nothing, mark it pending, and the next apply would fail (``duplicate column``). An empty down
section is different: its author says reverting needs nothing undone, and it reverts.
Each test runs on a SQLite file and on Postgres (``any_url``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import aquery, is_sqlite, run, status_json, tables

from migsync import Client, load_directory
from migsync.client.sync import Syncer
from migsync.core.errors import MigrationError
from migsync.core.migration import ANY_DIALECT, Migration, Script
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.testing import FakeClock
from migsync.transports.memory import MemoryServer, MemoryTransport


def history(url: str) -> dict[str, str]:
    """Seven migrations; 0002, 0003 and 0004 have no down script for ``url``'s dialect.

    0005 has scripts for SQLite only (on Postgres it runs nothing either way); 0006's down
    section is there but empty (a deliberate no-op; its up can run again).
    """
    other = "postgresql" if is_sqlite(url) else "sqlite"
    return {
        "0001_users.sql": "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
        "-- migrate:down\nDROP TABLE users;\n",
        "0002_email.sql": "-- migrate:up\nALTER TABLE users ADD COLUMN email TEXT;\n",
        "0003_ix.up.sql": "CREATE INDEX ix_users_email ON users (email);",
        "0004_phone.up.sql": "ALTER TABLE users ADD COLUMN phone TEXT;",
        f"0004_phone.{other}.down.sql": "ALTER TABLE users DROP COLUMN phone;",
        "0005_audit.sqlite.up.sql": "CREATE TABLE audit (x INTEGER);",
        "0005_audit.sqlite.down.sql": "DROP TABLE audit;",
        "0006_notes.sql": "-- migrate:up\nCREATE TABLE IF NOT EXISTS notes (x INTEGER);\n-- migrate:down\n",
        "0007_tags.sql": "-- migrate:up\nCREATE TABLE tags (name TEXT);\n-- migrate:down\nDROP TABLE tags;\n",
    }


def connect(url: str) -> Client:
    return Client.connect(url, sinks=[], backend_options={"create": True}, clock=FakeClock())


async def user_tables(url: str) -> set[str]:
    """The tables migrations made (read on a connection of the test's own, off the event loop)."""
    return await asyncio.to_thread(tables, url, bookkeeping=False)


# -- what the loaders record ----------------------------------------------------------------------


def test_an_empty_down_section_is_recorded_apart_from_none(tmp_path: Path) -> None:
    up = "CREATE TABLE t (x INTEGER);"
    layouts = {
        "native_empty": {"0001_t.sql": f"-- migrate:up\n{up}\n-- migrate:down\n"},
        "paired_empty": {"0001_t.up.sql": up, "0001_t.down.sql": ""},
        "native_none": {"0001_t.sql": f"-- migrate:up\n{up}\n"},
        "paired_none": {"0001_t.up.sql": up},
        "native_real": {"0001_t.sql": f"-- migrate:up\n{up}\n-- migrate:down\nDROP TABLE t;\n"},
    }
    loaded = {
        name: load_directory(write_migrations(tmp_path / name, files))[0] for name, files in layouts.items()
    }

    for empty in (loaded["native_empty"], loaded["paired_empty"]):
        assert empty.to_json()["down"] == {ANY_DIALECT: {"sql": "", "autocommit": False}}
        assert not empty.irreversible("sqlite") and not empty.irreversible("postgresql")
    for none in (loaded["native_none"], loaded["paired_none"]):
        assert none.to_json()["down"] == {}
        assert none.irreversible("sqlite") and none.irreversible("postgres")
    assert loaded["native_empty"].checksum == loaded["paired_empty"].checksum
    assert loaded["native_none"].checksum == loaded["paired_none"].checksum != loaded["native_empty"].checksum
    # What is stored (and signed) is what it always was for a migration with a real down script.
    assert (
        loaded["native_real"].checksum == "944f889e80351531e43c36210255413dfeca3a77018b9f9dd263886ad482163e"
    )


def test_a_migration_that_runs_nothing_on_a_dialect_reverts_there() -> None:
    sqlite_only = Migration(5, "0005_audit", {"sqlite": Script("CREATE TABLE audit (x INTEGER)")})
    assert sqlite_only.irreversible("sqlite")
    assert not sqlite_only.irreversible("postgresql")  # its up ran nothing there: nothing to undo
    other_down = Migration(
        4,
        "0004_phone",
        {ANY_DIALECT: Script("ALTER TABLE u ADD c TEXT")},
        {"postgresql": Script("ALTER TABLE u DROP c")},
    )
    assert other_down.irreversible("sqlite") and not other_down.irreversible("postgresql")


# -- through the Python API -------------------------------------------------------------------------

#: What a refused revert of everything says, newest first.
REFUSED = (
    "cannot revert 0004_phone, 0003_ix, 0002_email: they have no down script for {dialect}, so "
    "reverting would undo nothing; nothing was queued. Write a new migration that undoes them, "
    "or revert only the migrations after 0004_phone"
)


async def test_a_revert_covering_migrations_without_down_scripts_is_refused_before_anything_runs(
    tmp_path: Path, any_url: str
) -> None:
    files = history(any_url)
    migrations = write_migrations(tmp_path / "m", files)
    async with connect(any_url) as client:
        assert (await client.apply(load_directory(migrations))).ok
        # 0008 is queued, not applied: a revert of everything would cancel it.
        write_migrations(migrations, {"0008_more.sql": "-- migrate:up\nCREATE TABLE more (x INTEGER);\n"})
        await client.ledger.record(load_directory(migrations))
        assert await client.ledger.queue("0008_more") == ["0008_more"]
        before = await user_tables(any_url)
        dialect = client.backend.dialect

        with pytest.raises(MigrationError) as refused:
            await client.ledger.revert(everything=True)
        assert str(refused.value) == REFUSED.format(dialect=dialect)
        with pytest.raises(MigrationError, match=r"^cannot revert 0004_phone, 0003_ix, 0002_email: "):
            await client.ledger.revert("0002_email")
        with pytest.raises(MigrationError, match=r"^cannot revert 0004_phone, 0003_ix: they have "):
            await client.ledger.revert("3")
        with pytest.raises(MigrationError, match=r"^cannot revert 0004_phone: it has no down script"):
            await client.ledger.revert(to=3)

        states = await client.status()
        assert [(s.state, s.queued) for s in states] == [("applied", None)] * 7 + [("pending", "apply")]
        assert await aquery(any_url, "SELECT operation FROM migration_changes WHERE processed = FALSE") == [
            ("apply",)
        ]
        assert await client.ledger.held_from() is None
        assert await user_tables(any_url) == before
        assert (await client.process()).ok  # the queued apply of 0008 was not cancelled
        assert "more" in await user_tables(any_url)


async def test_a_revert_above_them_still_works_and_an_empty_down_section_is_a_no_op(
    tmp_path: Path, any_url: str
) -> None:
    migrations = write_migrations(tmp_path / "m", history(any_url))
    async with connect(any_url) as client:
        assert (await client.apply(load_directory(migrations))).ok
        assert {"users", "notes", "tags"} <= await user_tables(any_url)
        assert ("audit" in await user_tables(any_url)) == is_sqlite(any_url)

        reverting = await client.ledger.revert(to=4)
        assert reverting.reverting == ["0007_tags", "0006_notes", "0005_audit"]
        result = await client.process()
        assert result.ok and [o.label for o in result.processed] == [
            "revert 0007_tags",
            "revert 0006_notes",
            "revert 0005_audit",
        ]
        assert await user_tables(any_url) == {"users", "notes"}  # 0006's empty down left its table
        assert [s.state for s in await client.status()] == ["applied"] * 4 + ["pending"] * 3

        again = await client.apply(load_directory(migrations))
        assert again.ok and len(again.processed) == 3
        assert [s.state for s in await client.status()] == ["applied"] * 7


async def test_the_admins_revert_request_is_answered_failed_and_leaves_no_hold(
    tmp_path: Path, any_url: str
) -> None:
    trusted = write_keypair(tmp_path / "key")
    key = load_private_key(tmp_path / "key")
    requester = write_keypair(tmp_path / "request-key")
    server = MemoryServer(request_key=load_private_key(tmp_path / "request-key"))
    server.publish_signed(load_directory(write_migrations(tmp_path / "m", history(any_url))), key)

    async def sync() -> dict[str, str]:
        async with connect(any_url) as client:
            transport = MemoryTransport(server, client_id="c1")
            result = await Syncer(client, transport, [trusted], request_keys=[requester]).sync()
            assert result.ok
            return {s.name: "held" if s.held else s.state for s in await client.status()}

    assert set((await sync()).values()) == {"applied"}
    request = server.request("c1", "revert", 2, "alice")
    assert set((await sync()).values()) == {"applied"}
    state, detail = server.answers[request.id].state, server.answers[request.id].detail
    dialect = "sqlite" if is_sqlite(any_url) else "postgresql"
    assert (state, detail) == ("failed", REFUSED.format(dialect=dialect))
    # No hold was left: a migration published later applies as usual.
    server.publish_signed(
        [Migration(8, "0008_more", {ANY_DIALECT: Script("CREATE TABLE more (x INTEGER)")})], key
    )
    assert (await sync())["0008_more"] == "applied"


# -- through the CLI ------------------------------------------------------------------------------


def test_cli_revert_exits_2_naming_each_migration_without_a_down_script(tmp_path: Path, any_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", history(any_url))
    applied = run("apply", "--migrations", str(migrations), "--db", any_url)
    assert applied.returncode == 0, applied.stderr
    dialect = "sqlite" if is_sqlite(any_url) else "postgresql"

    # The case: revert 0002 alone printed "reverted", and the next apply failed.
    for args in (["0002_email"], ["--all"], ["--to", "1"], ["--queue-only", "email"]):
        refused = run("revert", "--db", any_url, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stdout == ""
        assert refused.stderr.splitlines() == [f"error: {REFUSED.format(dialect=dialect)}"]
    assert [(r["state"], r["queued"]) for r in status_json(any_url)] == [("applied", None)] * 7
    unchanged = run("apply", "--migrations", str(migrations), "--db", any_url)
    assert (unchanged.returncode, unchanged.stdout) == (0, "nothing to do: the database is up to date\n")

    above = run("revert", "--db", any_url, "--to", "4")
    assert above.returncode == 0, above.stderr
    assert "reverted 3 migrations (0007_tags .. 0005_audit)" in above.stdout
    again = run("apply", "--migrations", str(migrations), "--db", any_url)
    assert again.returncode == 0, again.stderr
    assert "applied 3 migrations (0005_audit .. 0007_tags)" in again.stdout
