"""``migsync apply --dry-run``: the statements that would run, per migration; none runs, nothing
is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import write_migrations
from dbtools import is_sqlite, migsync_env, query, run, sqlite_path, status_json, tables

USERS = (
    "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
    "CREATE INDEX users_id ON users (id);\n-- migrate:down\nDROP TABLE users;\n"
)
FILES = {
    "0001_users.sql": USERS,
    "0002_email.up.sql": "ALTER TABLE users ADD COLUMN email TEXT;",
    "0002_email.down.sql": "ALTER TABLE users DROP COLUMN email;",
}
ORDERS = {
    "0003_orders.up.sql": "BEGIN;\nCREATE TABLE orders (id INTEGER PRIMARY KEY);\n"
    "INSERT INTO orders (id) VALUES (1);\nCOMMIT;\n",
    "0003_orders.down.sql": "DROP TABLE orders;",
}


def test_dry_run_on_a_missing_sqlite_file_prints_every_statement_and_creates_nothing(
    tmp_path: Path,
) -> None:
    folder = write_migrations(tmp_path / "m", FILES)
    path = tmp_path / "client.db"
    result = run("apply", "--dry-run", "--migrations", str(folder), "--db", f"sqlite:///{path}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-- the database does not exist yet: apply would create it" in out
    assert "-- 0001_users (version 1): 2 statements, in one transaction" in out
    assert f"-- from {folder / '0001_users.sql'}:2" in out
    assert "CREATE TABLE users (id INTEGER PRIMARY KEY);\nCREATE INDEX users_id ON users (id);\n" in out
    assert "-- 0002_email (version 2): 1 statement, in one transaction" in out
    assert f"-- from {folder / '0002_email.up.sql'}:1" in out
    assert "-- 2 migrations would be applied (dry run: none was)" in out
    assert out.index("0001_users") < out.index("0002_email")
    assert not path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_dry_run_lists_only_what_apply_would_run_and_writes_nothing(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FILES)
    assert run("apply", "--migrations", str(folder), "--db", any_url).returncode == 0
    write_migrations(folder, ORDERS)
    before = status_json(any_url)
    digest = "SELECT value FROM migsync_meta WHERE key = 'source_digest'"
    recorded = query(any_url, digest)

    result = run("apply", "--dry-run", "--migrations", str(folder), "--db", any_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "0001_users" not in out and "0002_email" not in out
    # The BEGIN/COMMIT wrapper is left out, as the processor leaves it out: two statements run.
    assert "-- 0003_orders (version 3): 2 statements, in one transaction" in out
    assert "CREATE TABLE orders (id INTEGER PRIMARY KEY);\nINSERT INTO orders (id) VALUES (1);\n" in out
    assert "BEGIN;" not in out and "COMMIT;" not in out
    assert "-- 1 migration would be applied" in out
    dialect = "sqlite" if is_sqlite(any_url) else "postgresql"
    assert out.startswith(f"-- dry run on {dialect}: nothing is run or written\n")

    assert status_json(any_url) == before  # 0003 not even recorded
    assert query(any_url, digest) == recorded
    assert "orders" not in tables(any_url)

    nothing = run("apply", "--dry-run", "--migrations", str(folder), "--db", any_url)
    assert "orders" in nothing.stdout  # still to do: the dry run did not do it
    assert run("apply", "--migrations", str(folder), "--db", any_url).returncode == 0
    done = run("apply", "--dry-run", "--migrations", str(folder), "--db", any_url)
    assert done.returncode == 0 and "-- nothing to do (dry run: none was)" in done.stdout


def test_dry_run_on_a_fresh_postgres_database_leaves_it_empty(tmp_path: Path, pg_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FILES)
    result = run("apply", "--dry-run", "--migrations", str(folder), "--db", pg_url)
    assert result.returncode == 0, result.stderr
    assert "-- 2 migrations would be applied" in result.stdout
    assert tables(pg_url) == set()


def test_dry_run_refuses_what_apply_would_refuse(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FILES)
    assert run("apply", "--migrations", str(folder), "--db", db_url).returncode == 0
    (folder / "0001_users.sql").write_text(USERS.replace("users_id", "users_by_id"), encoding="utf-8")
    changed = run("apply", "--dry-run", "--migrations", str(folder), "--db", db_url)
    assert changed.returncode == 2
    assert "0001_users was applied with checksum" in changed.stderr and "apply would refuse" in changed.stderr


def test_dry_run_stops_where_apply_would_stop(tmp_path: Path, db_url: str) -> None:
    broken = {"0003_broken.up.sql": "SELEC oops;", "0004_after.up.sql": "CREATE TABLE after_it (x INTEGER);"}
    folder = write_migrations(tmp_path / "m", {**FILES, **broken})
    failed = run("apply", "--migrations", str(folder), "--db", db_url, "--max-attempts", "1")
    assert failed.returncode == 1
    result = run("apply", "--dry-run", "--migrations", str(folder), "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert "-- apply would stop here: 0003_broken is dead" in result.stdout
    assert "after_it" not in result.stdout and "-- nothing to do" in result.stdout


def test_apply_without_dry_run_does_not_import_the_inspection_modules(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FILES)
    program = (
        "import sys\nfrom migsync.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "import json\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('migsync'))\n"
        "print(json.dumps({'code': code, 'modules': loaded}))"
    )
    args = ["apply", "--migrations", str(folder), "--db", db_url]
    done = subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, env=migsync_env(), check=False
    )
    shown = json.loads(done.stdout.splitlines()[-1])
    assert shown["code"] == 0, done.stderr
    new = {
        "migsync.cli.inspection",
        "migsync.core.inspection",
        "migsync.core.plan",
        "migsync.core.authoring",
        "migsync.core.validation",
    }
    assert "migsync.core.ledger" in shown["modules"]  # it did run
    assert new.isdisjoint(shown["modules"])
    assert Path(sqlite_path(db_url)).exists()
