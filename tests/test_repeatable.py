"""Repeatable migrations (Flyway's ``R__x.sql``) in the ledger, on SQLite and Postgres: run after
the versioned ones, again whenever their scripts change, never again when they do not."""

from __future__ import annotations

from pathlib import Path

from dbtools import aquery

from migsync import Client
from migsync.core.errors import ChecksumMismatch
from migsync.core.sources import load_directory
from migsync.core.version import Version

# Each run of a repeatable migration leaves a row: how often it ran is counted, not guessed.
LOG = "CREATE TABLE runs (what VARCHAR(20));\n"


def write(folder: Path, files: dict[str, str | None]) -> Path:
    """Write (``None``: remove) each file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if text is None:
            (folder / name).unlink()
        else:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


async def runs(url: str) -> list[str]:
    return [what for (what,) in await aquery(url, "SELECT what FROM runs")]


async def states(url: str) -> list[tuple[str, str, str]]:
    rows = await aquery(
        url,
        "SELECT m.version, m.name, s.applied FROM client_migration m "
        "LEFT JOIN client_migration_status s ON s.version = m.version",
    )
    return sorted(
        ((str(Version.from_key(v)), name, "applied" if applied else "pending") for v, name, applied in rows),
        key=lambda row: Version.parse(row[0]),
    )


async def apply(url: str, folder: Path) -> None:
    async with Client.connect(url, sinks=[]) as client:
        result = await client.apply(load_directory(folder))
        assert result.ok, result


async def test_a_repeatable_migration_runs_after_the_versioned_ones_and_again_only_when_it_changes(
    tmp_path: Path, any_url: str
) -> None:
    folder = write(
        tmp_path / "sql",
        {
            "V1__log.sql": LOG,
            "V2__items.sql": "CREATE TABLE items (x INTEGER);\n",
            "R__items_view.sql": "INSERT INTO runs VALUES ('view 1');\n",
            "R__a_counts.sql": "INSERT INTO runs VALUES ('counts 1');\n",
        },
    )
    await apply(any_url, folder)
    assert (await runs(any_url)) == ["counts 1", "view 1"]  # by description, after V1 and V2
    assert (await states(any_url)) == [
        ("1", "V1__log", "applied"),
        ("2", "V2__items", "applied"),
        ("2.0.1", "R__a_counts", "applied"),
        ("2.0.2", "R__items_view", "applied"),
    ]
    await apply(any_url, folder)
    assert (await runs(any_url)) == ["counts 1", "view 1"], "unchanged: not run again"

    # A new versioned migration: it runs, and the repeatable ones move after it, not run again.
    write(folder, {"V3__more.sql": "INSERT INTO runs VALUES ('v3');\n"})
    await apply(any_url, folder)
    assert (await runs(any_url)) == ["counts 1", "view 1", "v3"]
    assert [row[0] for row in (await states(any_url))] == ["1", "2", "3", "3.0.1", "3.0.2"]

    # Changed: runs again, after the versioned migration that came with it.
    write(
        folder,
        {
            "R__items_view.sql": "INSERT INTO runs VALUES ('view 2');\n",
            "V4__more.sql": "INSERT INTO runs VALUES ('v4');\n",
        },
    )
    await apply(any_url, folder)
    assert (await runs(any_url)) == ["counts 1", "view 1", "v3", "v4", "view 2"]

    # A new repeatable migration whose description sorts first takes the first place; the others
    # move along (through keys of their own, so no two rows ever share a version).
    write(folder, {"R__0_first.sql": "INSERT INTO runs VALUES ('first 1');\n"})
    await apply(any_url, folder)
    assert (await runs(any_url))[-1] == "first 1"
    assert [row[1:] for row in (await states(any_url))][-3:] == [
        ("R__0_first", "applied"),
        ("R__a_counts", "applied"),
        ("R__items_view", "applied"),
    ]
    assert [row[0] for row in (await states(any_url))][-3:] == ["4.0.1", "4.0.2", "4.0.3"]


async def test_revert_marks_repeatable_migrations_pending_and_apply_runs_them_again(
    tmp_path: Path, any_url: str
) -> None:
    folder = write(
        tmp_path / "sql",
        {
            "V1__log.sql": LOG,
            "V2__items.sql": "CREATE TABLE items (x INTEGER);\n",
            "U2__items.sql": "DROP TABLE items;\n",
            "R__count.sql": "INSERT INTO runs VALUES ('count');\n",
        },
    )
    await apply(any_url, folder)
    async with Client.connect(any_url, sinks=[]) as client:
        requested = await client.ledger.revert(to=1)
        assert requested.reverting == ["R__count", "V2__items"]
        assert (await client.process()).ok
    assert "items" not in {t for (t,) in await aquery(any_url, _TABLES[any_url.split(":")[0]])}
    assert (await runs(any_url)) == ["count"], "reverting a repeatable migration undoes nothing"
    await apply(any_url, folder)
    assert (await runs(any_url)) == ["count", "count"]


_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
}


async def test_versioned_migrations_still_may_not_change(tmp_path: Path, db_url: str) -> None:
    folder = write(tmp_path / "sql", {"V1__log.sql": LOG, "R__count.sql": "INSERT INTO runs VALUES ('a');\n"})
    await apply(db_url, folder)
    write(folder, {"V1__log.sql": LOG + "-- changed\n"})
    async with Client.connect(db_url, sinks=[]) as client:
        try:
            await client.ledger.record(load_directory(folder))
        except ChecksumMismatch as exc:
            assert "migration V1__log was applied" in str(exc)
        else:
            raise AssertionError("a changed versioned migration was accepted")


async def test_a_repeatable_migration_that_fails_blocks_nothing_before_it(
    tmp_path: Path, db_url: str
) -> None:
    folder = write(
        tmp_path / "sql",
        {"V1__log.sql": LOG, "R__bad.sql": "INSERT INTO nowhere VALUES (1);\n"},
    )
    async with Client.connect(db_url, sinks=[], max_attempts=1) as client:
        result = await client.apply(load_directory(folder))
        assert not result.ok and result.failure is not None and "R__bad" in str(result.failure.error)
    assert (await states(db_url)) == [("1", "V1__log", "applied"), ("1.0.1", "R__bad", "pending")]
    # Fixed: the dead change takes the new script and a fresh start.
    write(folder, {"R__bad.sql": "INSERT INTO runs VALUES ('fixed');\n"})
    async with Client.connect(db_url, sinks=[]) as client:
        await client.ledger.record(load_directory(folder))
        await client.ledger.queue("R__bad")
        assert (await client.process()).ok
    assert (await runs(db_url)) == ["fixed"]
