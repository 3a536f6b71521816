"""``migsync adopt``: another tool's history table, read and recorded as migsync's.

Each tool's table is made with the tool's own CREATE TABLE for the backend
(as its driver source has it) and filled with rows as the tool writes them,
on real SQLite files and a real Postgres; the CLI runs as a real subprocess.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

from conftest import write_migrations
from dbtools import is_sqlite, migsync_env, query, run, status_json, tables

from migsync.cli.adopt import TOOL_NAMES
from migsync.core.adopters import TOOLS
from migsync.core.adopters.flyway import checksum as flyway_checksum

# -- each tool's table, as the tool creates it --------------------------------------------------

POPX_TABLE = (
    "CREATE TABLE schema_migration (version VARCHAR (48) NOT NULL, version_self INT NOT NULL DEFAULT 0)"
)

SCHEMAS = {
    "golang-migrate": {
        "sqlite": [
            "CREATE TABLE IF NOT EXISTS schema_migrations (version uint64,dirty bool)",
            "CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version)",
        ],
        "postgresql": [
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version bigint not null primary key, dirty boolean not null)"
        ],
    },
    "dbmate": {
        "sqlite": ["create table if not exists schema_migrations (version varchar(128) primary key)"],
        "postgresql": ["create table if not exists schema_migrations (version varchar(128) primary key)"],
    },
    "sqlx": {
        "sqlite": [
            "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, "
            "description TEXT NOT NULL, "
            "installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, "
            "checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)"
        ],
        "postgresql": [
            "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, "
            "description TEXT NOT NULL, "
            "installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, "
            "checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)"
        ],
    },
    "goose": {
        "sqlite": [
            "CREATE TABLE goose_db_version (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "version_id INTEGER NOT NULL, "
            "is_applied INTEGER NOT NULL, tstamp TIMESTAMP DEFAULT (datetime('now')))"
        ],
        "postgresql": [
            "CREATE TABLE goose_db_version (id serial NOT NULL, version_id bigint NOT NULL, "
            "is_applied boolean NOT NULL, tstamp timestamp NULL default now(), PRIMARY KEY(id))"
        ],
    },
    "flyway": {
        "sqlite": [
            'CREATE TABLE "main"."flyway_schema_history" ("installed_rank" INT NOT NULL PRIMARY KEY, '
            '"version" VARCHAR(50), "description" VARCHAR(200) NOT NULL, "type" VARCHAR(20) NOT NULL, '
            '"script" VARCHAR(1000) NOT NULL, "checksum" INT, "installed_by" VARCHAR(100) NOT NULL, '
            "\"installed_on\" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')), "
            '"execution_time" INT NOT NULL, "success" BOOLEAN NOT NULL)'
        ],
        "postgresql": [
            'CREATE TABLE "public"."flyway_schema_history" ("installed_rank" INT NOT NULL, '
            '"version" VARCHAR(50), "description" VARCHAR(200) NOT NULL, "type" VARCHAR(20) NOT NULL, '
            '"script" VARCHAR(1000) NOT NULL, "checksum" INTEGER, "installed_by" VARCHAR(100) NOT NULL, '
            '"installed_on" TIMESTAMP NOT NULL DEFAULT now(), "execution_time" INTEGER NOT NULL, '
            '"success" BOOLEAN NOT NULL)',
            'ALTER TABLE "public"."flyway_schema_history" ADD CONSTRAINT "flyway_schema_history_pk" '
            'PRIMARY KEY ("installed_rank")',
            'CREATE INDEX "flyway_schema_history_s_idx" ON "public"."flyway_schema_history" ("success")',
        ],
    },
    "pop": {
        "sqlite": [
            POPX_TABLE,
            "CREATE UNIQUE INDEX schema_migration_version_idx ON schema_migration (version)",
        ],
        "postgresql": [
            POPX_TABLE,
            "CREATE UNIQUE INDEX schema_migration_version_idx ON schema_migration (version)",
        ],
    },
}


def dialect(url: str) -> str:
    return "sqlite" if is_sqlite(url) else "postgresql"


def create(url: str, tool: str) -> None:
    for statement in SCHEMAS[tool][dialect(url)]:
        query(url, statement)


def boolean(url: str, value: bool) -> str:
    """A boolean as the tools write one: SQLite drivers store 1 and 0."""
    if is_sqlite(url):
        return "1" if value else "0"
    return "TRUE" if value else "FALSE"


def blob(url: str, data: bytes) -> str:
    return f"X'{data.hex()}'" if is_sqlite(url) else f"'\\x{data.hex()}'::bytea"


def made(url: str, *names: str) -> None:
    """Tables the other tool's migrations made."""
    for name in names:
        query(url, f"CREATE TABLE {name} (id INTEGER PRIMARY KEY)")


def states(url: str) -> list[tuple[str, str]]:
    return [(r["name"], r["state"]) for r in status_json(url)]


def adopt(url: str, folder: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return run("adopt", "--db", url, "--migrations", str(folder), *more)


def refused(result: subprocess.CompletedProcess[str], url: str, before: set[str], *words: str) -> None:
    """Exit 2 with a message holding ``words``, and no table written (migsync's neither)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    for word in words:
        assert word in result.stderr, result.stderr
    assert tables(url) == before


def create_sql(table: str) -> str:
    return f"CREATE TABLE {table} (id INTEGER PRIMARY KEY);"


def pair_folder(tmp_path: Path, names: dict[str, str]) -> Path:
    """golang-migrate's files: ``<version>_<title>.up.sql`` and ``.down.sql``."""
    files: dict[str, str] = {}
    for stem, table in names.items():
        files[f"{stem}.up.sql"] = create_sql(table)
        files[f"{stem}.down.sql"] = f"DROP TABLE {table};"
    return write_migrations(tmp_path / "m", files)


THREE = {"1_one": "one", "2_two": "two", "3_three": "three"}


def adopted_then_applied(
    url: str, folder: Path, result: subprocess.CompletedProcess[str], applied: int
) -> None:
    """``result`` recorded the first ``applied`` migrations; apply then runs the rest, and only those."""
    assert result.returncode == 0, result.stderr
    names = [r["name"] for r in status_json(url)]
    assert [s for _, s in states(url)] == ["applied"] * applied, result.stdout
    ran = run("apply", "--db", url, "--migrations", str(folder))
    assert ran.returncode == 0, ran.stderr  # a re-run migration would fail: its table exists
    after = states(url)
    assert [n for n, _ in after][:applied] == names
    assert all(s == "applied" for _, s in after)


# -- golang-migrate ------------------------------------------------------------------------------


def test_golang_migrate_current_version(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "golang-migrate")
    query(any_url, f"INSERT INTO schema_migrations (version, dirty) VALUES (2, {boolean(any_url, False)})")
    made(any_url, "one", "two")
    result = adopt(any_url, folder)
    assert "recorded 2 migrations as applied up to version 2 from golang-migrate (schema_migrations)" in (
        result.stdout
    ), result.stderr
    adopted_then_applied(any_url, folder, result, 2)
    # The other tool's table is only read.
    assert query(any_url, "SELECT version FROM schema_migrations") == [(2,)]


def test_golang_migrate_dirty_is_refused(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "golang-migrate")
    query(any_url, f"INSERT INTO schema_migrations (version, dirty) VALUES (2, {boolean(any_url, True)})")
    before = tables(any_url)
    refused(adopt(any_url, folder), any_url, before, "golang-migrate left version 2 dirty", "migrate force")


def test_golang_migrate_empty_table_records_nothing(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "golang-migrate")
    result = adopt(any_url, folder)
    assert result.returncode == 0, result.stderr
    assert "nothing to record from golang-migrate" in result.stdout and "pending: 3" in result.stdout


# -- dbmate --------------------------------------------------------------------------------------


def test_dbmate_applied_versions(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(
        tmp_path / "m",
        {
            f"2024010100000{n}_{t}.sql": f"-- migrate:up\n{create_sql(t)}\n-- migrate:down\nDROP TABLE {t};\n"
            for n, t in ((1, "one"), (2, "two"), (3, "three"))
        },
    )
    create(any_url, "dbmate")
    query(any_url, "INSERT INTO schema_migrations (version) VALUES ('20240101000001'), ('20240101000002')")
    made(any_url, "one", "two")
    result = adopt(any_url, folder, "--from", "dbmate")
    assert "from dbmate (schema_migrations)" in result.stdout, result.stderr
    adopted_then_applied(any_url, folder, result, 2)


# -- sqlx ----------------------------------------------------------------------------------------

SQLX = {"1_one.sql": create_sql("one"), "2_two.sql": create_sql("two"), "3_three.sql": create_sql("three")}


def sqlx_row(url: str, version: int, description: str, text: str, success: bool = True) -> None:
    digest = hashlib.sha384(text.encode()).digest()
    query(
        url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) "
        f"VALUES ({version}, '{description}', {boolean(url, success)}, {blob(url, digest)}, 1234)",
    )


def test_sqlx_applied_with_matching_checksums(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", SQLX)
    create(any_url, "sqlx")
    sqlx_row(any_url, 1, "one", SQLX["1_one.sql"])
    sqlx_row(any_url, 2, "two", SQLX["2_two.sql"])
    made(any_url, "one", "two")
    result = adopt(any_url, folder)
    assert "from sqlx (_sqlx_migrations)" in result.stdout, result.stderr
    adopted_then_applied(any_url, folder, result, 2)


def test_sqlx_failed_migration_is_refused(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", SQLX)
    create(any_url, "sqlx")
    sqlx_row(any_url, 1, "one", SQLX["1_one.sql"])
    sqlx_row(any_url, 2, "two", SQLX["2_two.sql"], success=False)
    before = tables(any_url)
    refused(adopt(any_url, folder), any_url, before, "sqlx recorded migration 2 (two) as failed")


def test_sqlx_changed_file_is_refused_unless_checksums_are_ignored(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", SQLX)
    create(any_url, "sqlx")
    sqlx_row(any_url, 1, "one", "CREATE TABLE one (id INTEGER);")  # the file as it was then
    made(any_url, "one")
    before = tables(any_url)
    refused(
        adopt(any_url, folder), any_url, before, "1_one changed since sqlx applied it", "--ignore-checksums"
    )
    result = adopt(any_url, folder, "--ignore-checksums")
    assert result.returncode == 0, result.stderr
    assert states(any_url) == [("1_one", "applied")]


# -- goose ---------------------------------------------------------------------------------------

GOOSE = {
    f"0000{n}_{t}.sql": f"-- +goose Up\n{create_sql(t)}\n\n-- +goose Down\nDROP TABLE {t};\n"
    for n, t in ((1, "one"), (2, "two"), (3, "three"))
}


def goose_rows(url: str, *rows: tuple[int, bool]) -> None:
    for version, applied in rows:
        query(
            url,
            "INSERT INTO goose_db_version (version_id, is_applied) "
            f"VALUES ({version}, {boolean(url, applied)})",
        )


def test_goose_latest_row_per_version_wins(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", GOOSE)
    create(any_url, "goose")
    # goose's own first row, then 1, 2, 3 applied and 3 reverted (as goose before v3.16 logs a down).
    goose_rows(any_url, (0, True), (1, True), (2, True), (3, True), (3, False))
    made(any_url, "one", "two")
    result = adopt(any_url, folder, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["tool"] == "goose" and shown["table"] == "goose_db_version"
    assert shown["recorded"] == ["00001_one", "00002_two"] and shown["pending"] == ["00003_three"]
    adopted_then_applied(any_url, folder, result, 2)


def test_goose_gap_is_refused(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", GOOSE)
    create(any_url, "goose")
    goose_rows(any_url, (0, True), (1, True), (3, True))  # applied out of order (goose -allow-missing)
    before = tables(any_url)
    refused(adopt(any_url, folder), any_url, before, "has version 3 applied but not the earlier 00002_two")


# -- Flyway --------------------------------------------------------------------------------------

FLYWAY = {
    "V1__one.sql": create_sql("one"),
    "V1_1__two.sql": create_sql("two"),
    "V2__three.sql": create_sql("three"),
    "R__names.sql": "DROP VIEW IF EXISTS names;\nCREATE VIEW names AS SELECT id FROM one;\n",
}


def flyway_row(
    url: str,
    rank: int,
    version: str | None,
    kind: str,
    script: str,
    *,
    success: bool = True,
    checksum: int | None,
) -> None:
    shown_version = "NULL" if version is None else f"'{version}'"
    shown_checksum = "NULL" if checksum is None else str(checksum)
    query(
        url,
        "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, checksum, "
        f"installed_by, execution_time, success) VALUES ({rank}, {shown_version}, 'x', '{kind}', '{script}', "
        f"{shown_checksum}, 'postgres', 12, {boolean(url, success)})",
    )


def file_checksum(name: str) -> int:
    return flyway_checksum(FLYWAY[name].encode())


def test_flyway_baseline_versioned_and_repeatable_rows(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FLYWAY)
    create(any_url, "flyway")
    made(any_url, "one", "two")
    query(any_url, "CREATE VIEW names AS SELECT id FROM one")
    flyway_row(any_url, 1, "1", "BASELINE", "<< Flyway Baseline >>", checksum=None)
    flyway_row(any_url, 2, "1.1", "SQL", "V1_1__two.sql", checksum=file_checksum("V1_1__two.sql"))
    flyway_row(any_url, 3, None, "SQL", "R__names.sql", checksum=file_checksum("R__names.sql"))
    result = adopt(any_url, folder, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["recorded"] == ["V1__one", "V1_1__two", "R__names"] and shown["pending"] == ["V2__three"]
    assert shown["version"] == "1.1"
    ran = run("apply", "--db", any_url, "--migrations", str(folder))
    assert ran.returncode == 0, ran.stderr
    assert "applied 1 migration (V2__three)" in ran.stdout  # the repeatable did not run again
    assert all(state == "applied" for _, state in states(any_url))


def test_flyway_changed_repeatable_runs_again(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", {k: v for k, v in FLYWAY.items() if k != "V2__three.sql"})
    create(any_url, "flyway")
    made(any_url, "one", "two")
    flyway_row(any_url, 1, "1", "SQL", "V1__one.sql", checksum=file_checksum("V1__one.sql"))
    flyway_row(any_url, 2, "1.1", "SQL", "V1_1__two.sql", checksum=file_checksum("V1_1__two.sql"))
    flyway_row(any_url, 3, None, "SQL", "R__names.sql", checksum=12345)  # an older text of the view
    result = adopt(any_url, folder)
    assert result.returncode == 0, result.stderr
    assert "pending: 1 (R__names)" in result.stdout
    ran = run("apply", "--db", any_url, "--migrations", str(folder))
    assert ran.returncode == 0 and "R__names" in ran.stdout, ran.stderr
    assert "names" in {r[0] for r in query(any_url, _VIEWS[dialect(any_url)])}


_VIEWS = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'view'",
    "postgresql": "SELECT viewname FROM pg_views WHERE schemaname = 'public'",
}


def test_flyway_failed_row_is_refused(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", FLYWAY)
    create(any_url, "flyway")
    flyway_row(any_url, 1, "1", "SQL", "V1__one.sql", checksum=file_checksum("V1__one.sql"))
    flyway_row(
        any_url, 2, "1.1", "SQL", "V1_1__two.sql", checksum=file_checksum("V1_1__two.sql"), success=False
    )
    before = tables(any_url)
    refused(adopt(any_url, folder), any_url, before, "flyway recorded version 1.1 (V1_1__two.sql) as failed")


def test_flyway_undone_and_deleted_versions_are_not_applied(tmp_path: Path, any_url: str) -> None:
    folder = write_migrations(tmp_path / "m", {k: v for k, v in FLYWAY.items() if k != "R__names.sql"})
    create(any_url, "flyway")
    made(any_url, "one")
    flyway_row(any_url, 1, "1", "SQL", "V1__one.sql", checksum=file_checksum("V1__one.sql"))
    flyway_row(any_url, 2, "1.1", "SQL", "V1_1__two.sql", checksum=file_checksum("V1_1__two.sql"))
    flyway_row(any_url, 3, "1.1", "UNDO_SQL", "U1_1__two.sql", checksum=None)
    flyway_row(any_url, 4, "2", "SQL", "V2__three.sql", checksum=None, success=True)
    flyway_row(any_url, 5, "2", "DELETE", "V2__three.sql", checksum=None)
    result = adopt(any_url, folder, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recorded"] == ["V1__one"]


def test_flyway_checksum_is_a_crc32_of_the_lines() -> None:
    joined = zlib.crc32(b"CREATE TABLE t (id INT);SELECT 1;")
    signed = joined - (1 << 32) if joined >= 1 << 31 else joined
    for text in (
        b"CREATE TABLE t (id INT);\nSELECT 1;\n",
        b"\xef\xbb\xbfCREATE TABLE t (id INT);\r\nSELECT 1;",
    ):
        assert flyway_checksum(text) == signed
    assert flyway_checksum(b"") == 0
    assert -(1 << 31) <= flyway_checksum(b"x" * 100) < 1 << 31


# -- pop -----------------------------------------------------------------------------------------


def test_pop_twenty_digit_versions(tmp_path: Path, any_url: str) -> None:
    files: dict[str, str] = {}
    for version, table in (("20150100000001000000", "one"), ("20210100000001000000", "two")):
        for infix in ("sqlite3", "postgres"):
            files[f"{version}_{table}.{infix}.up.sql"] = create_sql(table)
            files[f"{version}_{table}.{infix}.down.sql"] = f"DROP TABLE {table};"
    folder = write_migrations(tmp_path / "m", files)
    create(any_url, "pop")
    query(any_url, "INSERT INTO schema_migration (version) VALUES ('20150100000001000000')")
    made(any_url, "one")
    result = adopt(any_url, folder)
    assert "up to version 20150100000001000000 from pop (schema_migration)" in result.stdout, result.stderr
    adopted_then_applied(any_url, folder, result, 1)
    assert [r["version"] for r in status_json(any_url)] == ["20150100000001000000", "20210100000001000000"]


# -- detection, and what every tool shares -----------------------------------------------------


def test_no_history_table_is_refused(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    made(any_url, "one")
    refused(
        adopt(any_url, folder), any_url, {"one"}, "found no other tool's history table", "goose_db_version"
    )


def test_two_history_tables_need_from(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "dbmate")
    create(any_url, "goose")
    query(any_url, "INSERT INTO schema_migrations (version) VALUES ('1')")
    before = tables(any_url)
    refused(
        adopt(any_url, folder),
        any_url,
        before,
        "dbmate (schema_migrations), goose (goose_db_version)",
        "--from",
    )
    result = adopt(any_url, folder, "--from", "dbmate")
    assert result.returncode == 0 and "from dbmate" in result.stdout, result.stderr


def test_from_a_tool_whose_table_is_not_there(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "golang-migrate")
    before = tables(any_url)
    refused(adopt(any_url, folder, "--from", "flyway"), any_url, before, "no flyway_schema_history table")
    refused(adopt(any_url, folder, "--from", "dbmate"), any_url, before, "pass --from golang-migrate")


def test_an_applied_version_the_folder_lacks_is_refused(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "dbmate")
    query(any_url, "INSERT INTO schema_migrations (version) VALUES ('1'), ('2'), ('7')")
    before = tables(any_url)
    refused(
        adopt(any_url, folder), any_url, before, "records version 7 as applied", "has no migration with it"
    )


def test_dry_run_writes_nothing(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "dbmate")
    query(any_url, "INSERT INTO schema_migrations (version) VALUES ('1')")
    before = tables(any_url)
    result = adopt(any_url, folder, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would record 1 migration as applied up to version 1 from dbmate" in result.stdout
    assert tables(any_url) == before


def test_migsync_history_that_agrees_or_disagrees(tmp_path: Path, any_url: str) -> None:
    folder = pair_folder(tmp_path, THREE)
    create(any_url, "dbmate")
    query(any_url, "INSERT INTO schema_migrations (version) VALUES ('1'), ('2')")
    made(any_url, "one", "two")
    assert adopt(any_url, folder).returncode == 0
    again = adopt(any_url, folder)
    assert again.returncode == 0 and "already recorded: 2 migrations" in again.stdout, again.stderr
    # dbmate rolled back 2 since: migsync's history now says more than dbmate's.
    query(any_url, "DELETE FROM schema_migrations WHERE version = '2'")
    disagree = adopt(any_url, folder)
    assert disagree.returncode == 2 and "has 2_two applied, which the other tool's history does not" in (
        disagree.stderr
    )
    assert states(any_url) == [("1_one", "applied"), ("2_two", "applied")]


def test_migsync_start_up_does_not_import_adopt() -> None:
    # Every client start imports migsync.cli: the adopt command and its machinery only when it runs.
    probe = "import sys, migsync.cli\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=migsync_env(), check=False
    )
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert not {"migsync.cli.adopt", "migsync.core.baseline", "migsync.core.adopters"} & imported


def test_the_cli_lists_every_tool() -> None:
    assert tuple(tool.name for tool in TOOLS) == TOOL_NAMES


def test_postgres_bookkeeping_in_a_schema_of_its_own(tmp_path: Path, pg_url: str) -> None:
    # The other tool's table is found through the search_path; migsync's tables go to ?schema=.
    folder = pair_folder(tmp_path, THREE)
    create(pg_url, "dbmate")
    query(pg_url, "INSERT INTO schema_migrations (version) VALUES ('1')")
    made(pg_url, "one")
    url = f"{pg_url}?schema=migsync"
    result = adopt(url, folder)
    assert result.returncode == 0 and "from dbmate" in result.stdout, result.stderr
    assert tables(pg_url) == {"schema_migrations", "one"}
    assert states(url) == [("1_one", "applied")]
    assert run("apply", "--db", url, "--migrations", str(folder)).returncode == 0
    assert tables(pg_url) == {"schema_migrations", "one", "two", "three"}
