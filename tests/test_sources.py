"""The directory loader and the two file formats, on real files in ``tmp_path``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from migsync.core.errors import SourceError
from migsync.core.formats import NativeFormat, PairedFormat
from migsync.core.migration import ANY_DIALECT, EMPTY, Migration, Script
from migsync.core.sources import load_directory, scan_directory
from migsync.core.splitter import split

DEMO = Path(__file__).resolve().parent.parent / "migsync" / "demo" / "migrations"


def write(directory: Path, files: dict[str, str | bytes]) -> Path:
    """Write each file byte for byte (``str`` as UTF-8, no newline translation)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (directory / name).write_bytes(data)
    return directory


def load(tmp_path: Path, files: dict[str, str | bytes]) -> list[Migration]:
    return load_directory(write(tmp_path / "migrations", files))


def load_one(tmp_path: Path, files: dict[str, str | bytes]) -> Migration:
    migrations = load(tmp_path, files)
    assert len(migrations) == 1
    return migrations[0]


def load_error(tmp_path: Path, files: dict[str, str | bytes]) -> SourceError:
    with pytest.raises(SourceError) as info:
        load(tmp_path, files)
    return info.value


def statements(migration: Migration, direction: str, dialect: str) -> list[str]:
    assert direction in ("up", "down")
    script = migration.script("up" if direction == "up" else "down", dialect)
    return [s.sql for s in split(script.sql, dialect)]


NATIVE_USERS = """\
-- migrate:up
CREATE TABLE users (id INTEGER PRIMARY KEY);
-- migrate:up dialect=postgres
CREATE TABLE users (id BIGSERIAL PRIMARY KEY);
-- migrate:down
DROP TABLE users;
"""


# -- native format -------------------------------------------------------------------------


def test_native_file_gives_version_name_and_both_directions(tmp_path: Path) -> None:
    m = load_one(tmp_path, {"0001_create_users.sql": NATIVE_USERS})
    assert m.version == 1
    assert m.name == "0001_create_users"
    assert m.description == "create_users"
    assert m.up == {
        ANY_DIALECT: Script("CREATE TABLE users (id INTEGER PRIMARY KEY);"),
        "postgresql": Script("CREATE TABLE users (id BIGSERIAL PRIMARY KEY);"),
    }
    assert m.down == {ANY_DIALECT: Script("DROP TABLE users;")}
    assert m.dialects() == {"postgresql"}
    assert m.source == str(tmp_path / "migrations" / "0001_create_users.sql")


def test_native_dialect_section_wins_for_its_dialect_only(tmp_path: Path) -> None:
    m = load_one(tmp_path, {"0001_create_users.sql": NATIVE_USERS})
    assert statements(m, "up", "postgresql") == ["CREATE TABLE users (id BIGSERIAL PRIMARY KEY)"]
    assert statements(m, "up", "sqlite") == ["CREATE TABLE users (id INTEGER PRIMARY KEY)"]
    assert statements(m, "up", "mysql") == ["CREATE TABLE users (id INTEGER PRIMARY KEY)"]
    # No postgres down section: the generic one serves every dialect.
    assert statements(m, "down", "postgresql") == ["DROP TABLE users"]


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("sqlite", "sqlite"),
        ("sqlite3", "sqlite"),
        ("SQLite3", "sqlite"),
        ("postgres", "postgresql"),
        ("postgresql", "postgresql"),
        ("mysql", "mysql"),
        ("cockroach", "cockroachdb"),
        ("cockroachdb", "cockroachdb"),
    ],
)
def test_native_dialect_option_resolves_aliases(tmp_path: Path, alias: str, canonical: str) -> None:
    text = f"-- migrate:up\nSELECT 1;\n-- migrate:up dialect={alias}\nSELECT 2;\n"
    m = load_one(tmp_path, {"1_x.sql": text})
    assert set(m.up) == {ANY_DIALECT, canonical}
    assert m.up[canonical].sql == "SELECT 2;"


@pytest.mark.parametrize(
    ("options", "autocommit"),
    [
        ("", False),
        (" transaction:false", True),
        (" transaction=false", True),
        (" transaction:FALSE", True),
        (" autocommit", True),
        (" transaction:true", False),
        (" dialect=postgres transaction:false", True),
        (" transaction:false dialect=postgres", True),
    ],
)
def test_native_transaction_options(tmp_path: Path, options: str, autocommit: bool) -> None:
    text = f"-- migrate:up{options}\nCREATE INDEX i ON t (a);\n-- migrate:down\nDROP INDEX i;\n"
    m = load_one(tmp_path, {"1_index.sql": text})
    dialect = "postgresql" if "dialect" in options else ANY_DIALECT
    assert m.up[dialect].autocommit is autocommit
    assert m.script("up", "postgresql").autocommit is autocommit
    assert m.down[ANY_DIALECT].autocommit is False


def test_native_autocommit_is_per_section(tmp_path: Path) -> None:
    text = (
        "-- migrate:up\nCREATE INDEX i ON t (a);\n"
        "-- migrate:up dialect=postgres transaction:false\nCREATE INDEX CONCURRENTLY i ON t (a);\n"
        "-- migrate:down transaction:false\nDROP INDEX i;\n"
    )
    m = load_one(tmp_path, {"1_index.sql": text})
    assert m.script("up", "sqlite").autocommit is False
    assert m.script("up", "postgresql").autocommit is True
    assert m.script("down", "sqlite").autocommit is True


def test_native_down_section_may_come_first_and_is_optional(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "1_a.sql": "-- migrate:down\nDROP TABLE a;\n-- migrate:up\nCREATE TABLE a (x);\n",
        "2_b.sql": "-- migrate:up\nCREATE TABLE b (x);\n",
    }
    a, b = load(tmp_path, files)
    assert a.up[ANY_DIALECT].sql == "CREATE TABLE a (x);"
    assert a.down[ANY_DIALECT].sql == "DROP TABLE a;"
    assert b.down == {}
    assert b.script("down", "sqlite") == EMPTY


def test_native_comments_and_blank_lines_before_first_marker_are_allowed(tmp_path: Path) -> None:
    text = "\n-- Adds the users table.\n/* ticket 42; see docs */\n\n-- migrate:up\nSELECT 1;\n"
    m = load_one(tmp_path, {"1_x.sql": text})
    assert statements(m, "up", "sqlite") == ["SELECT 1"]


def test_native_crlf_file_parses_markers_and_options(tmp_path: Path) -> None:
    text = "-- migrate:up transaction:false\r\nSELECT 1;\r\n-- migrate:down dialect=sqlite\r\nSELECT 2;\r\n"
    m = load_one(tmp_path, {"1_x.sql": text})
    assert m.up == {ANY_DIALECT: Script("SELECT 1;", autocommit=True)}
    assert m.down == {"sqlite": Script("SELECT 2;")}


def test_native_empty_down_section_is_a_no_op(tmp_path: Path) -> None:
    m = load_one(tmp_path, {"1_x.sql": "-- migrate:up\nSELECT 1;\n-- migrate:down\n\n"})
    assert m.script("down", "sqlite").sql == ""
    assert statements(m, "down", "sqlite") == []


# -- paired (golang-migrate) format ----------------------------------------------------------


def test_paired_files_make_one_migration(tmp_path: Path) -> None:
    m = load_one(
        tmp_path,
        {
            "20240101120000_create_users.up.sql": "CREATE TABLE users (id INTEGER);\n",
            "20240101120000_create_users.down.sql": "DROP TABLE users;\n",
        },
    )
    assert m.version == 20240101120000
    assert m.name == "20240101120000_create_users"
    assert m.up == {ANY_DIALECT: Script("CREATE TABLE users (id INTEGER);")}
    assert m.down == {ANY_DIALECT: Script("DROP TABLE users;")}
    assert m.source is not None
    assert Path(m.source).parent == tmp_path / "migrations"


@pytest.mark.parametrize(
    ("infix", "canonical"),
    [
        ("sqlite", "sqlite"),
        ("sqlite3", "sqlite"),
        ("postgres", "postgresql"),
        ("postgresql", "postgresql"),
        ("mysql", "mysql"),
        ("cockroach", "cockroachdb"),
    ],
)
def test_paired_dialect_infix_resolves_to_canonical_name(tmp_path: Path, infix: str, canonical: str) -> None:
    m = load_one(
        tmp_path,
        {
            "3_x.up.sql": "SELECT 'generic';",
            f"3_x.{infix}.up.sql": f"SELECT '{infix}';",
        },
    )
    assert set(m.up) == {ANY_DIALECT, canonical}
    assert statements(m, "up", canonical) == [f"SELECT '{infix}'"]
    other = "mysql" if canonical != "mysql" else "sqlite"
    assert statements(m, "up", other) == ["SELECT 'generic'"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"1_x.autocommit.up.sql": "VACUUM;"}, {ANY_DIALECT: True}),
        ({"1_x.up.sql": "SELECT 1;"}, {ANY_DIALECT: False}),
        ({"1_x.sqlite.autocommit.up.sql": "VACUUM;"}, {"sqlite": True}),
        ({"1_x.postgres.autocommit.up.sql": "SELECT 1;", "1_x.up.sql": "SELECT 1;"},
         {"postgresql": True, ANY_DIALECT: False}),
    ],
)  # fmt: skip
def test_paired_autocommit_infix(
    tmp_path: Path, files: dict[str, str | bytes], expected: dict[str, bool]
) -> None:
    m = load_one(tmp_path, files)
    assert {d: s.autocommit for d, s in m.up.items()} == expected


def test_paired_migration_without_a_file_for_a_dialect_is_a_no_op_there(tmp_path: Path) -> None:
    m = load_one(
        tmp_path,
        {
            "3_audit.sqlite.up.sql": "CREATE TABLE audit (x);",
            "3_audit.sqlite.down.sql": "DROP TABLE audit;",
        },
    )
    assert m.dialects() == {"sqlite"}
    assert m.script("up", "postgresql") == EMPTY
    assert m.script("down", "postgresql") == EMPTY
    assert statements(m, "up", "postgresql") == []
    assert statements(m, "up", "sqlite") == ["CREATE TABLE audit (x)"]


def test_dialect_file_wins_even_when_it_is_empty(tmp_path: Path) -> None:
    m = load_one(
        tmp_path,
        {"4_x.up.sql": "CREATE EXTENSION hstore;", "4_x.sqlite.up.sql": "-- nothing to do on SQLite\n"},
    )
    assert m.script("up", "sqlite").sql == "-- nothing to do on SQLite"
    assert statements(m, "up", "sqlite") == []
    assert statements(m, "up", "postgresql") == ["CREATE EXTENSION hstore"]


@pytest.mark.parametrize("text", ["", "\n\n  \t\n", "-- only a comment\n", "/* block; */\n-- and ;\n;\n"])
def test_comment_or_whitespace_file_is_a_no_op(tmp_path: Path, text: str) -> None:
    m = load_one(tmp_path, {"5_noop.up.sql": text, "5_noop.down.sql": text})
    for dialect in ("sqlite", "postgresql", "mysql", "cockroachdb"):
        assert statements(m, "up", dialect) == []
        assert statements(m, "down", dialect) == []


def test_script_accepts_dialect_aliases(tmp_path: Path) -> None:
    m = load_one(tmp_path, {"1_x.up.sql": "SELECT 0;", "1_x.postgres.up.sql": "SELECT 1;"})
    assert m.script("up", "postgres").sql == "SELECT 1;"
    assert m.script("up", "postgresql").sql == "SELECT 1;"
    assert m.script("up", "sqlite3").sql == "SELECT 0;"


# -- the loader ------------------------------------------------------------------------------


def test_migrations_are_sorted_numerically_and_formats_mix(tmp_path: Path) -> None:
    migrations = load(
        tmp_path,
        {
            "10_ten.sql": "-- migrate:up\nSELECT 10;\n",
            "2_two.up.sql": "SELECT 2;",
            "0001_one.sql": "-- migrate:up\nSELECT 1;\n",
            "3_three.sqlite.up.sql": "SELECT 3;",
        },
    )
    assert [m.version for m in migrations] == [1, 2, 3, 10]
    assert [m.name for m in migrations] == ["0001_one", "2_two", "3_three", "10_ten"]


def test_load_directory_accepts_str(tmp_path: Path) -> None:
    directory = write(tmp_path / "m", {"1_x.up.sql": "SELECT 1;"})
    assert [m.name for m in load_directory(str(directory))] == ["1_x"]


def test_empty_directory_gives_no_migrations(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert load_directory(tmp_path / "m") == []


def test_other_files_hidden_files_and_subdirectories_are_ignored(tmp_path: Path) -> None:
    directory = write(
        tmp_path / "m",
        {
            "1_x.up.sql": "SELECT 1;",
            "README.md": "# not a migration; 1_x.sql",
            "notes.txt": "x",
            ".gitkeep": "",
            ".2_hidden.sql": "not sql at all",
            ".#1_x.up.sql": "emacs lock file",
            "1_x.up.sql~": "editor backup",
        },
    )
    (directory / "archive").mkdir()
    (directory / "archive" / "bad name.sql").write_text("garbage")
    (directory / "9_dir.sql").mkdir()
    migrations = load_directory(directory)
    assert [m.name for m in migrations] == ["1_x"]


def test_demo_migrations_load(tmp_path: Path) -> None:
    migrations = load_directory(DEMO)
    assert [m.version for m in migrations] == [1, 2, 3]
    audit = migrations[2]
    assert audit.dialects() == {"sqlite"}
    assert audit.script("up", "postgresql") == EMPTY
    assert len(statements(audit, "up", "sqlite")) == 2


# -- checksums -------------------------------------------------------------------------------


NATIVE_FULL = """\
-- migrate:up
CREATE TABLE t (id INTEGER);
-- migrate:up dialect=postgres transaction:false
CREATE INDEX CONCURRENTLY t_id ON t (id);
-- migrate:down
DROP TABLE t;
"""

PAIRED_FULL: dict[str, str | bytes] = {
    "7_tables.up.sql": "CREATE TABLE t (id INTEGER);\n",
    "7_tables.postgresql.autocommit.up.sql": "CREATE INDEX CONCURRENTLY t_id ON t (id);\n",
    "7_tables.down.sql": "DROP TABLE t;\n",
}


def test_checksum_is_sha256_of_canonical_content(tmp_path: Path) -> None:
    m = load_one(tmp_path, {"7_tables.sql": NATIVE_FULL})
    assert m.checksum == hashlib.sha256(m.canonical_content().encode()).hexdigest()
    assert len(m.checksum) == 64
    assert int(m.checksum, 16) >= 0


def test_native_and_paired_layouts_have_the_same_checksum(tmp_path: Path) -> None:
    native = load_directory(write(tmp_path / "native", {"7_tables.sql": NATIVE_FULL}))
    paired = load_directory(write(tmp_path / "paired", PAIRED_FULL))
    assert native == paired
    assert native[0].checksum == paired[0].checksum
    assert native[0].source != paired[0].source


def test_line_endings_and_bom_do_not_change_the_checksum(tmp_path: Path) -> None:
    text = NATIVE_FULL.replace("DROP TABLE t;", "DROP INDEX t_id;\n\nDROP TABLE t;")
    lf = load_directory(write(tmp_path / "lf", {"7_tables.sql": text}))[0]
    crlf_text = text.replace("\n", "\r\n")
    crlf = load_directory(write(tmp_path / "crlf", {"7_tables.sql": crlf_text}))[0]
    bom = load_directory(write(tmp_path / "bom", {"7_tables.sql": b"\xef\xbb\xbf" + crlf_text.encode()}))[0]
    assert (tmp_path / "crlf" / "7_tables.sql").read_bytes().count(b"\r\n") == 8
    assert lf.checksum == crlf.checksum == bom.checksum
    assert crlf.script("down", "sqlite").sql == "DROP INDEX t_id;\n\nDROP TABLE t;"


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace("id INTEGER", "id BIGINT"),
        lambda t: t.replace("DROP TABLE t;", "DROP TABLE t;\nSELECT 1;"),
        lambda t: t.replace("DROP TABLE t;", "DROP TABLE  t;"),
        lambda t: t.replace("t_id", "t_id2"),
        lambda t: t.replace("-- migrate:down", "-- migrate:down transaction:false"),
        lambda t: t.replace("dialect=postgres", "dialect=mysql"),
        lambda t: t.replace("DROP TABLE t;", "DROP TABLE t; -- comment"),
    ],
    ids=["type", "extra-statement", "whitespace-inside", "name", "autocommit", "dialect", "comment"],
)
def test_any_content_change_changes_the_checksum(tmp_path: Path, change: object) -> None:
    assert callable(change)
    changed_text = change(NATIVE_FULL)
    assert changed_text != NATIVE_FULL
    original = load_directory(write(tmp_path / "a", {"7_tables.sql": NATIVE_FULL}))[0]
    changed = load_directory(write(tmp_path / "b", {"7_tables.sql": changed_text}))[0]
    assert original.checksum != changed.checksum


def test_name_and_version_are_part_of_the_checksum(tmp_path: Path) -> None:
    a = load_directory(write(tmp_path / "a", {"7_tables.sql": NATIVE_FULL}))[0]
    b = load_directory(write(tmp_path / "b", {"7_tables2.sql": NATIVE_FULL}))[0]
    c = load_directory(write(tmp_path / "c", {"8_tables.sql": NATIVE_FULL}))[0]
    assert len({a.checksum, b.checksum, c.checksum}) == 3


def test_checksum_survives_a_json_round_trip(tmp_path: Path) -> None:
    m = load_one(tmp_path, PAIRED_FULL)
    again = Migration.from_json(m.to_json())
    assert again == m
    assert again.checksum == m.checksum


# -- errors ----------------------------------------------------------------------------------


def assert_error_at(err: SourceError, path: Path, line: int | None = None) -> None:
    assert err.path == path
    assert err.line == line
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(err).startswith(prefix), str(err)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        load_directory(tmp_path / "nope")
    assert_error_at(info.value, tmp_path / "nope")
    assert "does not exist" in str(info.value)


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError) as info:
        load_directory(tmp_path / "file")
    assert_error_at(info.value, tmp_path / "file")


@pytest.mark.parametrize(
    "files",
    [
        {"1_a.sql": "-- migrate:up\nSELECT 1;\n", "1_b.sql": "-- migrate:up\nSELECT 2;\n"},
        {"1_a.sql": "-- migrate:up\nSELECT 1;\n", "001_a.sql": "-- migrate:up\nSELECT 2;\n"},
        {"1_a.up.sql": "SELECT 1;", "1_b.up.sql": "SELECT 2;"},
        {"1_a.up.sql": "SELECT 1;", "1_b.sql": "-- migrate:up\nSELECT 2;\n"},
        # A native file is a whole migration; a pair file with its name is a second one.
        {"1_a.sql": "-- migrate:up\nSELECT 1;\n", "1_a.down.sql": "SELECT 2;"},
        {"1_a.sql": "-- migrate:up\nSELECT 1;\n", "1_a.sqlite.up.sql": "SELECT 2;"},
    ],
)
def test_two_migrations_with_one_version(tmp_path: Path, files: dict[str, str | bytes]) -> None:
    err = load_error(tmp_path, files)
    names = sorted(files)
    directory = tmp_path / "migrations"
    assert_error_at(err, directory / names[1])
    assert "version 1 is used twice" in str(err)
    assert str(directory / names[0]) in str(err)


@pytest.mark.parametrize(
    "files",
    [
        {"1_a.up.sql": "SELECT 1;", "1_a.autocommit.up.sql": "SELECT 1;"},
        {"1_a.sqlite.up.sql": "SELECT 1;", "1_a.sqlite3.up.sql": "SELECT 1;"},
        {"1_a.postgres.down.sql": "SELECT 1;", "1_a.postgresql.autocommit.down.sql": "SELECT 1;"},
    ],
)
def test_two_files_for_one_slot(tmp_path: Path, files: dict[str, str | bytes]) -> None:
    files = {**files, "1_a.up.sql": "SELECT 1;"}
    err = load_error(tmp_path, files)
    assert err.path is not None and err.path.name in files
    assert "has two" in str(err)


def test_down_without_up(tmp_path: Path) -> None:
    err = load_error(tmp_path, {"1_a.down.sql": "DROP TABLE a;"})
    assert_error_at(err, tmp_path / "migrations" / "1_a.down.sql")
    assert "no up script" in str(err)


@pytest.mark.parametrize(
    "name", ["create_users.sql", "001-create_users.sql", "v001_create.sql", "001_create.SQL", "1__x.up.SQL"]
)
def test_sql_file_name_that_fits_no_format(tmp_path: Path, name: str) -> None:
    err = load_error(tmp_path, {"0_ok.up.sql": "SELECT 1;", name: "SELECT 1;"})
    assert_error_at(err, tmp_path / "migrations" / name)
    assert "fits no migration format" in str(err)
    assert "<version>_<name>.sql" in str(err)


@pytest.mark.parametrize(
    ("name", "fmt", "migration"),
    [
        # Names migsync refused before: the tools that write them read them so.
        ("001_.sql", "sqlx", "001"),
        ("001_create.users.sql", "sqlx", "001_create.users"),
        ("001_create.UP.sql", "sqlx", "001_create.UP"),
        ("001_create.oracle.up.sql", "golang-migrate", "001_create.oracle"),
        ("001_create.sqlite.postgres.up.sql", "golang-migrate", "001_create.sqlite.postgres"),
        ("001_create.autocommit.autocommit.up.sql", "golang-migrate", "001_create.autocommit.autocommit"),
    ],
)
def test_names_other_tools_write_now_load(tmp_path: Path, name: str, fmt: str, migration: str) -> None:
    snapshot = scan_directory(write(tmp_path / "m", {"0_ok.up.sql": "SELECT 0;", name: "SELECT 1;"}))
    assert fmt in snapshot.format.split("+")
    assert [m.name for m in snapshot.migrations()] == ["0_ok", migration]
    assert snapshot.migrations()[1].up == {ANY_DIALECT: Script("SELECT 1;")}


def test_a_down_file_whose_up_file_is_missing_is_an_error(tmp_path: Path) -> None:
    # golang-migrate reads "001_create.up.down.sql" as the down script of "001_create.up".
    err = load_error(tmp_path, {"0_ok.up.sql": "SELECT 1;", "001_create.up.down.sql": "SELECT 1;"})
    assert_error_at(err, tmp_path / "migrations" / "001_create.up.down.sql")
    assert "migration 001_create.up has a down script but no up script" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("CREATE TABLE a (x);\n", None, "no '-- migrate:up' section"),
        ("", None, "no '-- migrate:up' section"),
        ("-- migrate:down\nDROP TABLE a;\n", None, "no '-- migrate:up' section"),
        ("--migrate:down\nDROP TABLE a;\n", None, "no '-- migrate:up' section"),
        ("SELECT 1;\n-- migrate:up\nSELECT 2;\n", 1, "SQL before the first"),
        ("-- intro\n\n/* more */\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", 4, "SQL before the first"),
        ("-- migrate:up\nA;\n-- migrate:down\nB;\n-- migrate:up\nC;\n", 5, "second 'up' section"),
        ("-- migrate:up\nA;\n-- migrate:down\nB;\n-- migrate:down\nC;\n", 5, "second 'down' section"),
        (
            "-- migrate:up\nA;\n-- migrate:up dialect=postgres\nB;\n-- migrate:up dialect=postgresql\nC;\n",
            5,
            "second 'up' section for postgresql (the first is at line 3)",
        ),
        ("-- migrate:up\nA;\n-- migrate:up dialect=oracle\nB;\n", 3, "unknown dialect 'oracle'"),
        ("-- migrate:up dialect=\nA;\n", 1, "unknown marker option 'dialect='"),
        ("-- migrate:up foo=bar\nA;\n", 1, "unknown marker option 'foo=bar'"),
        ("-- migrate:up transaction:maybe\nA;\n", 1, "unknown marker option"),
        ("-- migrate:up autocommit=yes\nA;\n", 1, "unknown marker option"),
        ("-- migrate:up\nA;\n\n-- migrate:sideways\nB;\n", 4, "unknown marker 'migrate:sideways'"),
        ("-- migrate:up\r\nA;\r\n-- migrate:up\r\nB;\r\n", 3, "second 'up' section"),
    ],
)
def test_native_file_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int | None, message: str
) -> None:
    directory = write(
        tmp_path / "migrations", {"0_fine.sql": "-- migrate:up\nSELECT 1;\n", "1_bad.sql": text}
    )
    with pytest.raises(SourceError) as info:
        load_directory(directory, format="native")
    err = info.value
    assert_error_at(err, tmp_path / "migrations" / "1_bad.sql", line)
    assert message in str(err)


@pytest.mark.parametrize(
    ("data", "line", "byte"),
    [
        (b"SELECT 'caf\xe9';\n", 1, "0xe9"),
        (b"SELECT 1;\nSELECT 2;\nSELECT '\xff';\n", 3, "0xff"),
        (b"\xef\xbb\xbfSELECT 1;\nSELECT '\x80';\n", 2, "0x80"),
        ("SELECT 1;\n".encode("utf-16"), 1, "0xff"),
    ],
    ids=["latin-1", "third-line", "bom-then-bad-byte", "utf-16"],
)
def test_text_that_is_not_utf8(tmp_path: Path, data: bytes, line: int, byte: str) -> None:
    err = load_error(tmp_path, {"1_a.up.sql": "SELECT 1;", "2_b.up.sql": data})
    assert_error_at(err, tmp_path / "migrations" / "2_b.up.sql", line)
    assert "not valid UTF-8" in str(err)
    assert f"byte {byte}" in str(err)
    offset = data.index(bytes([int(byte, 16)]))
    assert f"at offset {offset}" in str(err)


def test_utf8_bom_and_non_ascii_text_are_fine(tmp_path: Path) -> None:
    m = load_one(
        tmp_path,
        {"1_a.up.sql": "\ufeffINSERT INTO t VALUES ('café ☕');\n".encode()},
    )
    assert m.up[ANY_DIALECT].sql == "INSERT INTO t VALUES ('café ☕');"


def test_unreadable_file(tmp_path: Path) -> None:
    # A dangling symlink cannot be read even by root (a chmod 000 file can).
    directory = write(tmp_path / "m", {"2_b.up.sql": "SELECT 1;"})
    (directory / "1_a.up.sql").symlink_to(tmp_path / "gone.sql")
    with pytest.raises(SourceError) as info:
        load_directory(directory)
    assert_error_at(info.value, directory / "1_a.up.sql")
    assert "cannot read file" in str(info.value)


def test_nothing_is_returned_when_one_file_is_bad(tmp_path: Path) -> None:
    good: dict[str, str | bytes] = {f"{v}_m{v}.up.sql": f"CREATE TABLE t{v} (x);" for v in range(1, 6)}
    assert len(load(tmp_path / "good", good)) == 5
    err = load_error(tmp_path / "bad", {**good, "9_z.sql": "-- migrate:up\nA;\n-- migrate:up\nB;\n"})
    assert err.path is not None and err.path.name == "9_z.sql"


# -- the formats on their own ----------------------------------------------------------------


def test_format_name_matching() -> None:
    native, paired = NativeFormat(), PairedFormat()
    assert native.match("0001_create_users.sql") is not None
    assert native.match("0001_create_users.up.sql") is None
    assert paired.match("0001_create_users.sql") is None
    up = paired.match("0001_create_users.sqlite3.autocommit.up.sql")
    assert up is not None
    assert (up.version, up.name, up.direction, up.dialect, up.autocommit) == (
        1,
        "0001_create_users",
        "up",
        "sqlite",
        True,
    )
    down = paired.match("0002_x.down.sql")
    assert down is not None
    assert (down.direction, down.dialect, down.autocommit) == ("down", ANY_DIALECT, False)


def test_origins_point_at_the_first_line_of_each_script(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "0001_a.sql").write_text(
        "-- a comment\n-- migrate:up\n\nCREATE TABLE a (x INTEGER);\n"
        "-- migrate:down dialect=sqlite\nDROP TABLE a;\n"
    )
    (directory / "0002_b.up.sql").write_text("\n\n  CREATE TABLE b (x INTEGER);\n")
    first, second = load_directory(directory)
    assert first.origins == {
        "up:*": (str(directory / "0001_a.sql"), 4),
        "down:sqlite": (str(directory / "0001_a.sql"), 6),
    }
    assert first.origin("down", "postgresql") is None
    assert first.origin("up", "postgresql") == (str(directory / "0001_a.sql"), 4)
    assert second.origin("up", "sqlite") == (str(directory / "0002_b.up.sql"), 3)
    # Where a script came from is not part of what it is.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "0002_b.up.sql").write_text("CREATE TABLE b (x INTEGER);")
    assert load_directory(moved)[0].checksum == second.checksum


# -- pinned checksums: databases recorded these; a loader change must not move them ---------------

PINNED: dict[str, str | bytes] = {
    "0001_create_users.sql": (
        "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
        "-- migrate:up dialect=postgres\nCREATE TABLE users (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);\n"
        "-- migrate:down\nDROP TABLE users;\n"
    ),
    "0002_orders.up.sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER);\n",
    "0002_orders.down.sql": "DROP TABLE orders;\n",
    "0003_orders_index.postgres.autocommit.up.sql": (
        "CREATE INDEX CONCURRENTLY orders_user ON orders (user_id);\n"
    ),
    "0003_orders_index.sqlite3.up.sql": "CREATE INDEX orders_user ON orders (user_id);\n",
    "20150100000001000000_identities.sqlite3.up.sql": "CREATE TABLE identities (id TEXT PRIMARY KEY);\n",
    "20150100000001000000_identities.sqlite3.down.sql": "DROP TABLE identities;\n",
}


def test_checksums_of_migrations_that_loaded_before_do_not_change(tmp_path: Path) -> None:
    loaded = {m.name: m.checksum for m in load(tmp_path, PINNED)}
    assert loaded == {
        "0001_create_users": "644e6d64849ca354905fac93bcd48c06858db9e4919637648dba03dfbdd3570e",
        "0002_orders": "41b3afcedb46c815e41d01c1bbbd047451f151a9bca14ada3f1fff72a731703d",
        "0003_orders_index": "76d0c9a84fe440eb2da833dde61c3aa4e6f3069bb0f789baa81b88e671cc75cc",
        "20150100000001000000_identities": "adaedd95737977189e197b3570d72f3dfd19037ff6aa66da6d3af34d5563ab6d",
    }
    demo = {m.name: m.checksum for m in load_directory(DEMO)}
    assert demo == {
        "0001_create_customers": "4a4b2ba5df71d01fe15441d65a7d2b8f19c70520d4d138bf9d6f1348fba1256c",
        "0002_create_orders": "a35db60864eee8870b141e1b373c99e208c380b77428185bce45497d4d2ef8f7",
        "0003_order_audit": "8ac6c126debf50629e50abe29a772279c6b2390c7c05a15b902a8d7eb1d8615a",
    }
