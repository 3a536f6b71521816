"""The ``migsync`` command through its real console script, in subprocesses."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from conftest import write_migrations
from dbtools import ClockFile, migsync_env, query, run, sqlite_path, start, status_json

GOOD = {
    "0001_users.sql": "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
    "-- migrate:down\nDROP TABLE users;\n",
    "0002_email.up.sql": "ALTER TABLE users ADD COLUMN email TEXT;",
    "0002_email.down.sql": "ALTER TABLE users DROP COLUMN email;",
}
BROKEN = "-- migrate:up\nCREATE TABLE t (x);\nSELEC oops;\n-- migrate:down\nDROP TABLE t;\n"


def test_apply_then_status_json(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", GOOD)
    result = run("apply", "--migrations", str(migrations), "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert "applied 2 migrations (0001_users .. 0002_email)" in result.stdout
    rows = status_json(db_url)
    assert [(r["version"], r["name"], r["state"], r["attempts"], r["error"]) for r in rows] == [
        ("1", "0001_users", "applied", 1, None),  # versions are text: they may be long, or dotted
        ("2", "0002_email", "applied", 1, None),
    ]
    assert all(isinstance(r["applied_at"], str) and r["applied_at"].endswith("Z") for r in rows)

    again = run("apply", "--migrations", str(migrations), "--db", db_url)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_failed_migration_exits_1_naming_it(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {**GOOD, "0003_broken.sql": BROKEN})
    result = run("apply", "--migrations", str(migrations), "--db", db_url, "--max-attempts", "1")
    assert result.returncode == 1
    assert "applied 2 migrations" in result.stdout
    assert "dead: apply 0003_broken failed 1 of 1 attempts" in result.stderr
    # The failing statement's file and line: the migrate:up marker is line 1.
    assert f"statement 2 ({migrations / '0003_broken.sql'}:3)" in result.stderr
    assert "syntax error" in result.stderr
    rows = status_json(db_url)
    assert [r["state"] for r in rows] == ["applied", "applied", "dead"]
    assert "syntax error" in str(rows[2]["error"])


def test_failed_migration_waits_for_backoff(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_broken.sql": BROKEN})
    clock = ClockFile(tmp_path / "now")
    apply = ("apply", "--migrations", str(migrations), "--db", db_url)
    first = run(*apply, env=clock.env)
    assert first.returncode == 1 and "failed: apply 0001_broken (attempt 1 of 3)" in first.stderr
    clock.advance(0.9)  # the first backoff is 1 to 2 seconds (2 s, less up to half of it in jitter)
    second = run(*apply, env=clock.env)
    assert second.returncode == 1 and "waiting: the next queued change retries after" in second.stderr
    assert status_json(db_url)[0]["attempts"] == 1
    third = run(*apply, "--retry-now", env=clock.env)
    assert third.returncode == 1 and "attempt 2 of 3" in third.stderr
    clock.advance(8.1)  # past the second backoff (2 to 4 s): it runs again by itself
    fourth = run(*apply, env=clock.env)
    assert fourth.returncode == 1 and "dead: apply 0001_broken failed 3 of 3 attempts" in fourth.stderr


def test_invalid_source_exits_2_and_touches_nothing(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {**GOOD, "0003_x.sql": "CREATE TABLE x (a);\n"})
    result = run("apply", "--migrations", str(migrations), "--db", db_url)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "0003_x.sql" in result.stderr and "migrate:up" in result.stderr
    assert "Traceback" not in result.stderr
    # The folder is refused before the database is even opened: nothing is recorded or applied.
    assert not Path(sqlite_path(db_url)).exists()


def test_revert_and_queue(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", GOOD)
    assert run("apply", "--migrations", str(migrations), "--db", db_url).returncode == 0
    reverted = run("revert", "--db", db_url, "--all")
    assert reverted.returncode == 0, reverted.stderr
    assert "reverted 2 migrations (0002_email .. 0001_users)" in reverted.stdout
    assert [r["state"] for r in status_json(db_url)] == ["pending", "pending"]

    queued = run("queue", "--db", db_url, "email")
    assert queued.returncode == 0 and "queued: 0001_users, 0002_email" in queued.stdout
    processed = run("process", "--db", db_url)
    assert processed.returncode == 0 and "processed 2 migrations" in processed.stdout
    columns = [r[1] for r in query(db_url, "PRAGMA table_info(users)")]
    assert columns == ["id", "email"]

    usage = run("revert", "--db", db_url)
    assert usage.returncode == 2 and "exactly one of NAME, --to VERSION or --all" in usage.stderr
    unknown = run("revert", "--db", db_url, "nope")
    assert unknown.returncode == 2 and "no migration 'nope'" in unknown.stderr


def test_bad_database_url_lists_known_schemes(tmp_path: Path) -> None:
    result = run("status", "--db", "oracle://x")
    assert result.returncode == 2
    assert "no backend serves database URL 'oracle://x'" in result.stderr
    assert "sqlite://" in result.stderr
    missing = run("status", "--db", f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_sinks_from_the_command_line(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", GOOD)
    events = tmp_path / "events.jsonl"
    result = run("apply", "--migrations", str(migrations), "--db", db_url, "--sink", f"jsonl:path={events}")
    assert result.returncode == 0, result.stderr
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds.count("migration_applied") == 2 and kinds[-1] == "pass_completed"
    unknown = run("apply", "--migrations", str(migrations), "--db", db_url, "--sink", "nope")
    assert (
        unknown.returncode == 2 and "unknown event sink 'nope'; valid: bus, jsonl, logging" in unknown.stderr
    )


def test_status_shows_the_sqlite_version_on_sqlite_only(tmp_path: Path, any_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", GOOD)
    assert run("apply", "--migrations", str(migrations), "--db", any_url).returncode == 0
    sqlite = any_url.startswith("sqlite:")
    shown = run("status", "--db", any_url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["sqlite_version"] == (sqlite3.sqlite_version if sqlite else None)
    text = run("status", "--db", any_url)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    if sqlite:
        assert first == f"database: SQLite {sqlite3.sqlite_version}"
    else:
        assert "SQLite" not in text.stdout and first.split() == [
            "version",
            "name",
            "state",
            "applied",
            "at",
            "attempts",
        ]


def test_plugins_lists_builtins() -> None:
    result = run("plugins", "--json")
    assert result.returncode == 0
    registered = {item for plugin in json.loads(result.stdout) for item in plugin["registers"]}
    assert {"backend:sqlite", "event sink:jsonl", "source format:native"} <= registered


def test_processes_racing_on_a_new_file_apply_each_migration_exactly_once(tmp_path: Path) -> None:
    # Each migration inserts a row: a migration run twice would leave two.
    files = {
        "0001_runs.sql": "-- migrate:up\nCREATE TABLE runs (migration INTEGER);\n"
        "-- migrate:down\nDROP TABLE runs;\n"
    }
    files |= {
        f"{i:04d}_m{i}.sql": f"-- migrate:up\nINSERT INTO runs VALUES ({i});\n"
        f"-- migrate:down\nDELETE FROM runs WHERE migration = {i};\n"
        for i in range(2, 31)
    }
    migrations = write_migrations(tmp_path / "m", files)
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        procs = [start("apply", "--migrations", str(migrations), "--db", url) for _ in range(6)]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, outputs
        runs = sorted(r[0] for r in query(url, "SELECT migration FROM runs"))
        statuses = query(url, "SELECT applied FROM client_migration_status")
        [open_changes] = query(url, "SELECT count(*) FROM migration_changes WHERE processed = 0")
        assert runs == list(range(2, 31)), f"round {round_}: a migration ran more or less than once"
        assert statuses == [(1,)] * 30 and open_changes == (0,)


def test_commands_other_than_apply_never_create_a_database(tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    for args in (["status"], ["process"], ["queue", "x"], ["revert", "--all"]):
        result = run(*args, "--db", f"sqlite:///{db}")
        assert result.returncode == 2 and "does not exist" in result.stderr, (args, result.stderr)
    assert not db.exists()
    bad_option = run("status", "--db", f"sqlite:///{db}?busy_timout=5")
    assert bad_option.returncode == 2 and "unknown option(s) busy_timout" in bad_option.stderr


def test_wait_retries_through_backoff_left_by_an_earlier_run(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_broken.sql": BROKEN})
    apply = ("apply", "--migrations", str(migrations), "--db", db_url)
    clock = ClockFile(tmp_path / "now")
    first = run(*apply, "--max-attempts", "2", env=clock.env)
    assert first.returncode == 1 and "attempt 1 of 2" in first.stderr
    # --wait sleeps through the backoff: on the test clock that moves time on instead of waiting.
    waited = run(*apply, "--wait", env=clock.env)
    assert waited.returncode == 1 and "dead: apply 0001_broken failed 2 of 2 attempts" in waited.stderr
    assert status_json(db_url)[0]["state"] == "dead"
    assert 1_700_000_001 <= clock.now() <= 1_700_000_002  # it slept the backoff, 1 to 2 s


def test_revert_reports_cancelled_applies(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {**GOOD, "0003_broken.sql": BROKEN})
    assert (
        run("apply", "--migrations", str(migrations), "--db", db_url, "--max-attempts", "1").returncode == 1
    )
    result = run("revert", "--db", db_url, "--to", "1")
    assert result.returncode == 0, result.stderr
    assert "cancelled queued applies: 0003_broken" in result.stdout
    assert "reverted 1 migration (0002_email)" in result.stdout
    rows = status_json(db_url)
    assert [(r["state"], r["error"]) for r in rows] == [
        ("applied", None),
        ("pending", None),
        ("pending", None),
    ]


def test_migration_outside_a_transaction_runs(tmp_path: Path, db_url: str) -> None:
    # VACUUM refuses to run inside a transaction on SQLite.
    migrations = write_migrations(
        tmp_path / "m", {**GOOD, "0003_vacuum.sql": "-- migrate:up transaction:false\nVACUUM;\n"}
    )
    result = run("apply", "--migrations", str(migrations), "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert [r["state"] for r in status_json(db_url)] == ["applied"] * 3


def test_half_finished_migration_outside_a_transaction_leaves_the_database_dirty(
    tmp_path: Path, db_url: str
) -> None:
    half = "CREATE TABLE half (x INTEGER);\nINSERT INTO nowhere VALUES (1);\n"
    migrations = write_migrations(
        tmp_path / "m",
        {
            **GOOD,
            "0003_half.autocommit.up.sql": half,
            "0004_after.sql": "-- migrate:up\nCREATE TABLE after (x INTEGER);\n",
        },
    )
    result = run("apply", "--migrations", str(migrations), "--db", db_url)
    assert result.returncode == 1
    assert "dirty: apply 0003_half stopped half-way" in result.stderr
    assert "statement 1 had already committed" in result.stderr
    rows = status_json(db_url)
    assert [r["state"] for r in rows] == ["applied", "applied", "dirty", "pending"]

    again = run("apply", "--migrations", str(migrations), "--db", db_url, "--retry-now")
    assert again.returncode == 1 and "the database is dirty: migration 0003_half" in again.stderr
    status = run("status", "--db", db_url)
    assert "0003_half is dirty" in status.stdout and "migsync repair" in status.stdout

    usage = run("repair", "--db", db_url, "0003_half")
    assert usage.returncode == 2 and "--applied or --not-applied" in usage.stderr
    not_dirty = run("repair", "--db", db_url, "0001_users", "--applied")
    assert not_dirty.returncode == 2 and "is not dirty" in not_dirty.stderr

    # The operator finishes the job by hand and says it took effect.
    query(db_url, "CREATE TABLE nowhere (x INTEGER)")
    repaired = run("repair", "--db", db_url, "0003_half", "--applied")
    assert repaired.returncode == 0 and "repaired: 0003_half is now applied" in repaired.stdout
    after = run("apply", "--migrations", str(migrations), "--db", db_url)
    assert after.returncode == 0, after.stderr
    assert [r["state"] for r in status_json(db_url)] == ["applied"] * 4


def test_repair_not_applied_runs_it_again(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(
        tmp_path / "m",
        {"0001_half.autocommit.up.sql": "CREATE TABLE half (x INTEGER);\nINSERT INTO nowhere VALUES (1);\n"},
    )
    assert run("apply", "--migrations", str(migrations), "--db", db_url).returncode == 1
    query(db_url, "DROP TABLE half")  # undo by hand what did commit
    query(db_url, "CREATE TABLE nowhere (x INTEGER)")  # and fix the cause
    repaired = run("repair", "--db", db_url, "half", "--not-applied")
    assert repaired.returncode == 0 and "is now pending" in repaired.stdout
    result = run("process", "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert status_json(db_url)[0]["state"] == "applied"


def test_first_statement_failing_outside_a_transaction_is_an_ordinary_failure(
    tmp_path: Path, db_url: str
) -> None:
    migrations = write_migrations(
        tmp_path / "m", {"0001_bad.autocommit.up.sql": "INSERT INTO nowhere VALUES (1);\nVACUUM;\n"}
    )
    result = run("apply", "--migrations", str(migrations), "--db", db_url)
    assert result.returncode == 1 and "failed: apply 0001_bad (attempt 1 of 3)" in result.stderr
    assert status_json(db_url)[0]["state"] == "failed"


def test_apply_imports_only_what_it_needs(tmp_path: Path, db_url: str) -> None:
    # Start-up is paid by every client run: no server, ORM, web, network or
    # Postgres driver for a SQLite apply, and no importlib.metadata without plugins.
    import sys

    migrations = write_migrations(tmp_path / "m", GOOD)
    probe = (
        "import sys\n"
        "from migsync.cli import main\n"
        "try:\n"
        "    main(['apply', '--migrations', sys.argv[1], '--db', sys.argv[2]])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(migrations), db_url],
        capture_output=True, text=True, env=migsync_env(),
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert {"migsync.backends.sqlite", "aiosqlite"} <= imported
    for heavy in (
        "sqlalchemy",
        "starlette",
        "httpx",
        "asyncpg",
        "rich",
        "uvicorn",
        "importlib.metadata",
        "cryptography",
    ):
        assert heavy not in imported, f"'migsync apply' imported {heavy}"


def test_status_table_shows_errors_with_brackets_intact(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(
        tmp_path / "m", {"0001_[x].sql": "-- migrate:up\nINSERT INTO nowhere VALUES (1);\n"}
    )
    assert (
        run("apply", "--migrations", str(migrations), "--db", db_url, "--max-attempts", "1").returncode == 1
    )
    table = " ".join(run("status", "--db", db_url).stdout.split())
    assert "0001_[x]" in table
    assert "[in: INSERT INTO nowhere VALUES (1)]" in table
