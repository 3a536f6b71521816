"""``migsync baseline``: a folder's migrations up to a version recorded as applied, none run.

On real SQLite files and a real Postgres, through the real console script.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write_migrations
from dbtools import query, run, status_json, tables

from migsync.core.baseline import mark_applied
from migsync.core.client import Client
from migsync.core.errors import MigrationError
from migsync.core.sources import load_directory


def native(table: str) -> str:
    """A dbmate file that makes ``table``."""
    up = f"CREATE TABLE {table} (id INTEGER PRIMARY KEY);"
    return f"-- migrate:up\n{up}\n-- migrate:down\nDROP TABLE {table};\n"


FOLDER = {"0001_one.sql": native("one"), "0002_two.sql": native("two"), "0003_three.sql": native("three")}


def made_by_hand(url: str, *names: str) -> None:
    """The tables a migration would make, made without migsync (the database already has them)."""
    for name in names:
        query(url, f"CREATE TABLE {name} (id INTEGER PRIMARY KEY)")


def states(url: str) -> list[tuple[str, str]]:
    return [(r["name"], r["state"]) for r in status_json(url)]


def test_baseline_records_without_running_and_apply_runs_the_rest(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    made_by_hand(any_url, "one", "two")
    result = run("baseline", "--db", any_url, "--migrations", str(folder), "--version", "2")
    assert result.returncode == 0, result.stderr
    assert "recorded 2 migrations as applied up to version 2" in result.stdout
    assert "pending: 1 (0003_three)" in result.stdout
    assert states(any_url) == [("0001_one", "applied"), ("0002_two", "applied")]
    # Recorded as the processor records an applied migration: the checksum it was applied with.
    recorded = load_directory(folder)
    rows = query(
        any_url, "SELECT migration_name, applied_checksum FROM client_migration_status ORDER BY version"
    )
    assert rows == [(m.name, m.checksum) for m in recorded[:2]]

    # 'one' and 'two' exist: had apply run them, CREATE TABLE would have failed.
    applied = run("apply", "--db", any_url, "--migrations", str(folder))
    assert applied.returncode == 0, applied.stderr
    assert "applied 1 migration (0003_three)" in applied.stdout
    assert states(any_url) == [("0001_one", "applied"), ("0002_two", "applied"), ("0003_three", "applied")]


def test_baseline_twice_changes_nothing(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    made_by_hand(any_url, "one", "two")
    args = ("baseline", "--db", any_url, "--migrations", str(folder), "--version", "2")
    assert run(*args).returncode == 0
    before = query(any_url, "SELECT migration_name, applied_at FROM client_migration_status ORDER BY version")
    again = run(*args, "--json")
    assert again.returncode == 0, again.stderr
    shown = json.loads(again.stdout)
    assert shown["recorded"] == [] and shown["already_applied"] == ["0001_one", "0002_two"]
    assert shown["version"] == "2" and shown["pending"] == ["0003_three"]
    after = query(any_url, "SELECT migration_name, applied_at FROM client_migration_status ORDER BY version")
    assert after == before


def test_a_version_not_in_the_folder_is_refused_and_nothing_is_written(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    made_by_hand(any_url, "one")
    result = run("baseline", "--db", any_url, "--migrations", str(folder), "--version", "5")
    assert result.returncode == 2
    assert "version 5 is not a migration in" in result.stderr and "0003_three" in result.stderr
    assert tables(any_url) == {"one"}  # not even migsync's bookkeeping tables


def test_a_version_that_is_not_a_version_is_a_usage_error(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    result = run("baseline", "--db", db_url, "--migrations", str(folder), "--version", "two")
    assert result.returncode == 2 and "'two' is not a version" in result.stderr


def test_dry_run_writes_nothing(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    made_by_hand(any_url, "one")
    result = run("baseline", "--db", any_url, "--migrations", str(folder), "--version", "1", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would record 1 migration as applied up to version 1" in result.stdout
    assert "dry run: nothing was written" in result.stdout
    assert tables(any_url) == {"one"}


def test_an_applied_migration_with_other_content_is_refused(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_one.sql": FOLDER["0001_one.sql"]})
    assert run("apply", "--db", any_url, "--migrations", str(folder)).returncode == 0
    changed = FOLDER["0001_one.sql"].replace("id INTEGER PRIMARY KEY", "id INTEGER PRIMARY KEY, x TEXT")
    write_migrations(folder, {"0001_one.sql": changed, "0002_two.sql": FOLDER["0002_two.sql"]})
    before = query(any_url, "SELECT migration_name, applied_checksum FROM client_migration_status")
    result = run("baseline", "--db", any_url, "--migrations", str(folder), "--version", "2")
    assert result.returncode == 2
    assert "0001_one applied with checksum" in result.stderr and "nothing was recorded" in result.stderr
    assert query(any_url, "SELECT migration_name, applied_checksum FROM client_migration_status") == before
    assert [r[0] for r in query(any_url, "SELECT name FROM client_migration")] == ["0001_one"]


def test_a_baseline_below_what_migsync_applied_agrees_with_it(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    assert run("apply", "--db", any_url, "--migrations", str(folder)).returncode == 0
    result = run("baseline", "--db", any_url, "--migrations", str(folder), "--version", "2")
    assert result.returncode == 0, result.stderr
    assert "already recorded: 2 migrations up to version 2; nothing written" in result.stdout
    assert "pending" not in result.stdout  # 0003 is applied too


def test_an_unreachable_database_is_refused(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    missing = run(
        "baseline", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--migrations", str(folder), "--version", "1"
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    down = run(
        "baseline",
        "--db",
        "postgresql://postgres@127.0.0.1:1/x",
        "--migrations",
        str(folder),
        "--version",
        "1",
    )
    assert down.returncode == 2 and down.stderr.startswith("error: ")


def test_dotted_and_long_versions_in_other_formats(tmp_path: Path, any_url: str) -> None:
    flyway = write_migrations(
        tmp_path / "flyway",
        {
            "V1__one.sql": "CREATE TABLE one (id INTEGER PRIMARY KEY);",
            "V1_1__two.sql": "CREATE TABLE two (id INTEGER PRIMARY KEY);",
            "V1_10__three.sql": "CREATE TABLE three (id INTEGER PRIMARY KEY);",
        },
    )
    made_by_hand(any_url, "one", "two")
    result = run(
        "baseline", "--db", any_url, "--migrations", str(flyway), "--version", "1.1", "--format", "flyway"
    )
    assert result.returncode == 0, result.stderr
    assert states(any_url) == [("V1__one", "applied"), ("V1_1__two", "applied")]
    assert run("apply", "--db", any_url, "--migrations", str(flyway)).returncode == 0
    assert states(any_url)[-1] == ("V1_10__three", "applied")


def test_twenty_digit_versions(tmp_path: Path, any_url: str) -> None:
    pop = write_migrations(
        tmp_path / "pop",
        {
            "20150100000001000000_four.up.sql": "CREATE TABLE four (id INTEGER PRIMARY KEY);",
            "20150100000001000000_four.down.sql": "DROP TABLE four;",
            "20150100000002000000_five.up.sql": "CREATE TABLE five (id INTEGER PRIMARY KEY);",
            "20150100000002000000_five.down.sql": "DROP TABLE five;",
        },
    )
    made_by_hand(any_url, "four")
    result = run("baseline", "--db", any_url, "--migrations", str(pop), "--version", "20150100000001000000")
    assert result.returncode == 0, result.stderr
    assert [(r["version"], r["state"]) for r in status_json(any_url)] == [("20150100000001000000", "applied")]
    assert run("apply", "--db", any_url, "--migrations", str(pop)).returncode == 0
    assert [r["state"] for r in status_json(any_url)] == ["applied", "applied"]
    assert {"four", "five"} <= tables(any_url)


async def test_a_queued_migration_is_refused(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FOLDER)
    migrations = load_directory(folder)
    async with Client.connect(db_url) as client:
        await client.ledger.record(migrations)
        await client.ledger.queue_pending()
        try:
            await mark_applied(client.backend, migrations[:2])
        except MigrationError as exc:
            assert "has a change queued for 0001_one" in str(exc)
        else:
            raise AssertionError("a queued migration was baselined")
        assert all(s.state == "pending" for s in await client.status())


def test_source_options_reach_baseline(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "m", {**FOLDER, "0004_backfill.go": "package migrations\n"})
    made_by_hand(db_url, "one")
    args = ("baseline", "--db", db_url, "--migrations", str(folder), "--version", "1")
    refused = run(*args)
    assert refused.returncode == 2 and "0004_backfill.go" in refused.stderr
    assert tables(db_url) == {"one"}
    result = run(*args, "--ignore-unknown")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "0004_backfill.go" in result.stderr
    assert states(db_url) == [("0001_one", "applied")]
