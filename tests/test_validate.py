"""``migsync validate``: every problem with a folder as one list (exit 2); with --db, where the
database disagrees with it (exit 1); clean is 0. It writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write_migrations
from dbtools import run, sqlite_path, tables

from migsync.core.validation import check_folder

GOOD = {
    "0001_users.sql": "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
    "-- migrate:down\nDROP TABLE users;\n",
    "0002_email.up.sql": "ALTER TABLE users ADD COLUMN email TEXT;",
    "0002_email.down.sql": "ALTER TABLE users DROP COLUMN email;",
}
TWO_UPS = "-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;\n"
NO_DIALECT = "-- migrate:up dialect=oracle\nSELECT 1;\n"


def test_a_clean_folder_is_valid(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", GOOD)
    result = run("validate", "--migrations", str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{folder}: 2 migrations (paired+native), valid"


def test_every_bad_file_is_listed_at_once(tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m",
        {
            **GOOD,
            "0003_twice.sql": TWO_UPS,
            "0004_oracle.sql": NO_DIALECT,
            "0005_backfill.go": "package main\n",
            "0006_report.py": "print()\n",
        },
    )
    result = run("validate", "--migrations", str(folder))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, result.stderr
    assert f"error: {folder / '0003_twice.sql'}:3: second 'up' section" in result.stderr
    assert f"error: {folder / '0004_oracle.sql'}:1: unknown dialect 'oracle'" in result.stderr
    assert f"error: {folder / '0005_backfill.go'}: a Go migration" in result.stderr
    assert f"error: {folder / '0006_report.py'}: a Python migration" in result.stderr
    assert result.stderr.rstrip().endswith(f"{folder}: 4 problems")

    shown = json.loads(run("validate", "--migrations", str(folder), "--json").stdout)
    assert shown["ok"] is False and len(shown["problems"]) == 4
    assert {(p["file"], p["line"]) for p in shown["problems"]} >= {(str(folder / "0003_twice.sql"), 3)}

    ignoring = run("validate", "--migrations", str(folder), "--ignore-unknown", "--json")
    assert ignoring.returncode == 2
    shown = json.loads(ignoring.stdout)
    assert len(shown["problems"]) == 2 and len(shown["warnings"]) == 2


def test_duplicates_and_scripts_that_cannot_run_are_problems(tmp_path: Path) -> None:
    duplicate = write_migrations(tmp_path / "dup", {**GOOD, "0002_other.up.sql": "SELECT 1;"})
    checked = check_folder(duplicate)
    assert len(checked.problems) == 1 and "0002" in str(checked.problems[0])

    commit = "-- migrate:up\nCREATE TABLE a (x INTEGER);\nCOMMIT;\nSELECT 1;\n"
    control = write_migrations(
        tmp_path / "ctl",
        {
            "0001_x.sql": commit,
            "0002_y.sql": commit.replace("TABLE a", "TABLE b"),
            "0003_z.up.sql": "SELECT 1;",
            "0003_other.up.sql": "SELECT 2;",
        },
    )
    result = run("validate", "--migrations", str(control))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # Each refusal the loader would make one at a time, all in one run.
    assert len(errors) == 3, result.stderr
    assert f"error: {control / '0001_x.sql'}:3: " in result.stderr and "COMMIT" in result.stderr
    assert f"error: {control / '0002_y.sql'}:3: " in result.stderr
    assert "version 3 is used twice" in result.stderr


def test_a_folder_that_cannot_be_read_is_one_problem(tmp_path: Path) -> None:
    missing = run("validate", "--migrations", str(tmp_path / "nowhere"), "--json")
    assert missing.returncode == 2
    shown = json.loads(missing.stdout)
    assert [p["file"] for p in shown["problems"]] == [str(tmp_path / "nowhere")]
    assert "does not exist" in shown["problems"][0]["message"]


def test_the_database_must_agree_with_the_folder(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", GOOD)
    assert run("validate", "--migrations", str(folder), "--db", any_url).returncode == 0
    assert tables(any_url) == set()  # validate wrote nothing
    assert run("apply", "--migrations", str(folder), "--db", any_url).returncode == 0
    agrees = run("validate", "--migrations", str(folder), "--db", any_url)
    assert agrees.returncode == 0 and "valid and the database agrees" in agrees.stdout

    # Pending work is no disagreement.
    write_migrations(folder, {"0003_orders.up.sql": "CREATE TABLE orders (id INTEGER);"})
    assert run("validate", "--migrations", str(folder), "--db", any_url).returncode == 0

    # Out of order: unapplied, and older than an applied one.
    (folder / "0003_orders.up.sql").rename(folder / "0000_orders.up.sql")
    late = run("validate", "--migrations", str(folder), "--db", any_url)
    assert late.returncode == 1
    assert "0000_orders is not applied and is older than an applied migration" in late.stderr
    (folder / "0000_orders.up.sql").unlink()

    (folder / "0001_users.sql").write_text(GOOD["0001_users.sql"] + "-- edited\n", encoding="utf-8")
    (folder / "0002_email.up.sql").unlink()
    (folder / "0002_email.down.sql").unlink()
    drift = run("validate", "--migrations", str(folder), "--db", any_url, "--json")
    assert drift.returncode == 1
    shown = json.loads(drift.stdout)
    assert [p["kind"] for p in shown["problems"]] == ["database", "database"]
    assert "0001_users was applied with checksum" in shown["problems"][0]["message"]
    assert shown["problems"][0]["file"] == str(folder / "0001_users.sql")
    assert "0002_email (version 2) is applied, but no file" in shown["problems"][1]["message"]
    assert [m["version"] for m in shown["database"]["missing"]] == ["2"]
    assert shown["database"]["layout"] is not None


def test_validate_against_a_missing_sqlite_file_creates_nothing(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "m", GOOD)
    result = run("validate", "--migrations", str(folder), "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert not Path(sqlite_path(db_url)).exists()
