"""Which format a folder is in, refusals of folders that read two ways, the formats' own rules,
files in other languages and ``order="name"``: the loader on real files in ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import pytest

from migsync.core.errors import ConfigError, SourceError
from migsync.core.migration import ANY_DIALECT, Script, description_of
from migsync.core.sources import SourceSnapshot, builtin_formats, load_directory, scan_directory


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return directory


def scan(tmp_path: Path, files: dict[str, str], **options: object) -> SourceSnapshot:
    return scan_directory(write(tmp_path / "m", files), **options)  # type: ignore[arg-type]


def refusal(tmp_path: Path, files: dict[str, str], **options: object) -> SourceError:
    with pytest.raises(SourceError) as info:
        scan(tmp_path, files, **options).migrations()
    return info.value


NATIVE = "-- migrate:up\nCREATE TABLE a (x INTEGER);\n-- migrate:down\nDROP TABLE a;\n"
GOOSE = "-- +goose Up\nCREATE TABLE g (x INTEGER);\n-- +goose Down\nDROP TABLE g;\n"


# -- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "fmt"),
    [
        ({"0001_a.sql": NATIVE, "0002_b.up.sql": "SELECT 2;"}, "paired+native"),
        ({"0001_a.up.sql": "SELECT 1;", "0001_a.down.sql": "SELECT 0;"}, "paired"),
        ({"0001_a.sqlite3.up.sql": "SELECT 1;", "0002_b.up.sql": "SELECT 2;"}, "paired"),
        ({"0001_a.up.sql": "SELECT 1;", "0002_1.7.0_b.up.sql": "SELECT 2;"}, "golang-migrate"),
        ({"0001_a.sql": "SELECT 1;", "0002_b.up.sql": "SELECT 2;"}, "sqlx"),
        ({"0001_a.up.sql": "-- no-transaction\nSELECT 1;"}, "sqlx"),
        ({"0001_a.sql": GOOSE, "0002_b.sql": GOOSE.replace(" g ", " h ")}, "goose"),
        ({"V1__a.sql": "SELECT 1;", "R__b.sql": "SELECT 2;", "U1__a.sql": "SELECT 0;"}, "flyway"),
        ({"1_a/migration.sql": "SELECT 1;", "migration_lock.toml": 'provider = "sqlite"'}, "prisma"),
        ({}, ""),
    ],
    ids=["native+paired", "paired", "pop", "golang-migrate", "sqlx", "sqlx-no-tx", "goose", "flyway",
         "prisma", "empty"],
)  # fmt: skip
def test_a_folder_is_read_in_the_format_its_files_are_in(
    tmp_path: Path, files: dict[str, str], fmt: str
) -> None:
    assert scan(tmp_path, files).format == fmt


def test_a_file_with_a_dialect_infix_is_pop_s_so_the_folder_is_read_as_before(tmp_path: Path) -> None:
    snapshot = scan(tmp_path, {"0001_to.postgres.up.sql": "SELECT 1;", "0001_to.up.sql": "SELECT 0;"})
    [m] = snapshot.migrations()
    assert m.name == "0001_to" and set(m.up) == {ANY_DIALECT, "postgresql"}


@pytest.mark.parametrize(
    ("files", "bad", "words"),
    [
        # A native file, and one without markers that sqlx would read whole.
        ({"0001_a.sql": NATIVE, "0002_b.sql": "CREATE TABLE b (x);"}, "0002_b.sql",
         ["reads as sqlx (not as native: it has no '-- migrate:up' markers)",
          "0001_a.sql reads as native (it has '-- migrate:up' markers)"]),
        # A pop dialect infix, and a golang-migrate title with dots that pop cannot read.
        ({"0001_x.postgres.up.sql": "SELECT 1;", "0002_1.7.0_y.up.sql": "SELECT 2;"}, "0002_1.7.0_y.up.sql",
         ["reads as golang-migrate or sqlx", "0001_x.postgres.up.sql reads as paired (it has a dialect"]),
        ({"0001_a.sql": GOOSE, "0002_b.up.sql": "SELECT 2;"}, "0002_b.up.sql", ["goose"]),
        ({"0001_a.sql": GOOSE, "0002_b.sql": NATIVE}, "0001_a.sql", ["'-- +goose' annotations"]),
        ({"V1__a.sql": "SELECT 1;", "0002_b.sql": NATIVE}, "V1__a.sql", ["reads as flyway"]),
        ({"1_a/migration.sql": "SELECT 1;", "0002_b.sql": "SELECT 2;"}, "1_a/migration.sql", ["prisma"]),
    ],
    ids=["native+sqlx", "pop+golang-migrate", "goose+pairs", "goose+native", "flyway+native", "prisma+sqlx"],
)  # fmt: skip
def test_a_folder_that_mixes_formats_is_refused_naming_a_file_and_why(
    tmp_path: Path, files: dict[str, str], bad: str, words: list[str]
) -> None:
    err = refusal(tmp_path, files)
    assert err.path == tmp_path / "m" / bad
    for word in words:
        assert word in str(err)
    (other,) = set(files) - {bad}
    assert f"but {other} reads as" in str(err)
    assert "pass --format NAME" in str(err)
    assert "golang-migrate (migrate)" in str(err) and "native (dbmate)" in str(err)


def test_format_reads_every_file_one_way(tmp_path: Path) -> None:
    files = {"0001_x.postgres.up.sql": "SELECT 1;", "0002_1.7.0_y.up.sql": "SELECT 2;"}
    titles = scan(tmp_path / "a", files, format="golang-migrate").migrations()
    assert [(m.name, set(m.up)) for m in titles] == [("0001_x.postgres", {"*"}), ("0002_1.7.0_y", {"*"})]
    # dbmate's alias of native: a file without markers is then what native says of it.
    mixed = {"0001_a.sql": NATIVE, "0002_b.sql": "CREATE TABLE b (x);"}
    err = refusal(tmp_path / "b", mixed, format="dbmate")
    assert err.path == tmp_path / "b" / "m" / "0002_b.sql"
    assert "no '-- migrate:up' section" in str(err)
    whole = scan(tmp_path / "c", mixed, format="sqlx").migrations()
    assert whole[0].up[ANY_DIALECT].sql == NATIVE.strip()


def test_format_refuses_a_file_that_is_not_in_it(tmp_path: Path) -> None:
    err = refusal(tmp_path, {"0001_a.sql": NATIVE, "0002_b.up.sql": "SELECT 2;"}, format="native")
    assert err.path == tmp_path / "m" / "0002_b.up.sql"
    assert "not a native migration file (expected <version>_<name>.sql" in str(err)
    assert "it fits paired, golang-migrate, sqlx" in str(err)


def test_an_unknown_format_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown migration format 'liquibase' \(known: paired \(pop\), "):
        scan(tmp_path, {}, format="liquibase")
    with pytest.raises(ConfigError, match="unknown order 'date'"):
        scan(tmp_path, {}, order="date")


def test_aliases_and_case(tmp_path: Path) -> None:
    assert scan(tmp_path, {"1_a.up.sql": "SELECT 1;"}, format="POP").format == "paired"
    assert scan(tmp_path, {"1_a.up.sql": "SELECT 1;"}, format="migrate").format == "golang-migrate"


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "names"),
    [
        ({"0002_1.7.0_schema.up.sql": "A;"}, ["0002_1.7.0_schema"]),
        ({"0157.up.sql": "A;", "0157.down.sql": "B;"}, ["0157"]),
        ({"0158_.up.sql": "A;"}, ["0158"]),
        ({"20240813211251_passkey_backup_flags..up.sql": "A;"}, ["20240813211251_passkey_backup_flags"]),
        ({"0001_a.sql": NATIVE.replace("a (", "b ("), "0002.sql": NATIVE}, ["0001_a", "0002"]),
        ({"V1_2__Add_users.sql": "A;"}, ["V1_2__Add_users"]),
        ({"V3.sql": "A;"}, ["V3"]),
        ({"20240105120000_init/migration.sql": "A;"}, ["20240105120000_init"]),
    ],
)
def test_migration_names(tmp_path: Path, files: dict[str, str], names: list[str]) -> None:
    assert [m.name for m in scan(tmp_path, files).migrations()] == names


@pytest.mark.parametrize(
    ("name", "description"),
    [("0001_create_users", "create_users"), ("V1_2__Add_users", "Add_users"), ("R__views", "views"),
     ("0157", "0157"), ("V3", "V3"), ("20240105120000_init", "init"), ("0002_1.7.0_schema", "1.7.0_schema")],
)  # fmt: skip
def test_description_of(name: str, description: str) -> None:
    assert description_of(name) == description


def test_the_checksum_does_not_depend_on_the_format_that_reads_a_plain_pair(tmp_path: Path) -> None:
    pair = {"0001_a.up.sql": "CREATE TABLE a (x);", "0001_a.down.sql": "DROP TABLE a;"}
    checksums = {
        fmt: scan(tmp_path / fmt, pair, format=fmt).migrations()[0].checksum
        for fmt in ("paired", "golang-migrate", "sqlx")
    }
    assert len(set(checksums.values())) == 1


# -- goose ----------------------------------------------------------------------------------------


def test_goose_sections_and_no_transaction(tmp_path: Path) -> None:
    text = (
        "-- a comment before the annotations\n\n-- +goose NO TRANSACTION\n-- +goose Up\n"
        "-- +goose StatementBegin\nCREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n  RETURN 1;\nEND;\n$$ "
        "LANGUAGE plpgsql;\n-- +goose StatementEnd\nCREATE INDEX CONCURRENTLY i ON t (x);\n"
        "-- +goose Down\nDROP INDEX CONCURRENTLY i; -- trailing comment\nDROP FUNCTION f();\n"
    )
    [m] = scan(tmp_path, {"20240101000000_f.sql": text}).migrations()
    assert m.up[ANY_DIALECT].autocommit and m.down[ANY_DIALECT].autocommit
    assert m.up[ANY_DIALECT].sql.startswith("-- +goose StatementBegin\nCREATE FUNCTION f()")
    assert m.down[ANY_DIALECT].sql == "DROP INDEX CONCURRENTLY i; -- trailing comment\nDROP FUNCTION f();"
    assert m.origins["up:*"][1] == 5 and m.origins["down:*"][1] == 14


def test_goose_without_a_down_annotation_has_no_down_script(tmp_path: Path) -> None:
    [m] = scan(tmp_path, {"1_a.sql": "-- +goose Up\nCREATE TABLE a (x);\n"}).migrations()
    assert m.down == {} and m.irreversible("sqlite")
    [n] = scan(
        tmp_path / "n", {"1_a.sql": "-- +goose Up\nCREATE TABLE a (x);\n-- +goose Down\n"}
    ).migrations()
    assert n.down == {ANY_DIALECT: Script("")} and not n.irreversible("sqlite")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("CREATE TABLE a (x);\n-- +goose Up\nSELECT 1;\n", 1, "SQL before '-- +goose Up'"),
        ("-- +goose Down\nSELECT 1;\n-- +goose Up\nSELECT 2;\n", 1, "'-- +goose Down' before '-- +goose Up'"),
        ("-- +goose Up\nSELECT 1;\n-- +goose Up\nSELECT 2;\n", 3, "second '-- +goose Up'"),
        ("-- +goose Up\nSELECT 1;\n-- +goose Sideways\n", 3, "unknown goose annotation 'Sideways'"),
        ("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n", 2, "StatementBegin' without a StatementEnd"),
        ("-- +goose Up\nSELECT 1;\n-- +goose StatementEnd\n", 3, "StatementEnd' without a StatementBegin"),
        ("-- +goose Up\nSELECT 1\n-- +goose Down\nSELECT 2;\n", 2, "not ended by a ';' at the end of a line"),
        ("-- +goose Up\nSELECT 1;\nSELECT 2\n", 3, "not ended by a ';'"),
        ("-- +goose ENVSUB ON\n-- +goose Up\nSELECT '${HOME}';\n", 1, "ENVSUB ON' is not supported"),
        ("  -- +goose Up\nSELECT 1;\n", 1, "must start at the beginning of its line"),
        ("-- just a comment +goose\nSELECT 1;\n", 1, "unknown goose annotation 'just a comment'"),
    ],
)
def test_goose_refusals_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    err = refusal(tmp_path, {"00001_a.sql": text})
    assert err.path == tmp_path / "m" / "00001_a.sql"
    assert err.line == line, str(err)
    assert words in str(err)


def test_goose_annotations_are_case_insensitive(tmp_path: Path) -> None:
    text = "-- +goose up\n-- +goose statementbegin\nSELECT 1;\n-- +goose STATEMENTEND\n"
    text += "-- +goose no transaction\n"
    [m] = scan(tmp_path, {"1_a.sql": text}).migrations()
    assert m.up[ANY_DIALECT].autocommit


# -- Flyway ---------------------------------------------------------------------------------------


def test_flyway_versions_order_and_undo(tmp_path: Path) -> None:
    files = {
        "V10__ten.sql": "SELECT 10;",
        "V2__two.sql": "SELECT 2;",
        "V1_10__one_ten.sql": "SELECT 1.10;",
        "V1.9__one_nine.sql": "SELECT 1.9;",
        "V1__one.sql": "SELECT 1;",
        "U2__no_matter_what_it_says.sql": "SELECT -2;",
    }
    migrations = scan(tmp_path, files).migrations()
    assert [str(m.version) for m in migrations] == ["1", "1.9", "1.10", "2", "10"]
    two = migrations[3]
    assert two.name == "V2__two" and two.down == {ANY_DIALECT: Script("SELECT -2;")}
    assert two.source == str(tmp_path / "m" / "V2__two.sql")


@pytest.mark.parametrize(
    ("files", "bad", "words"),
    [
        ({"V1_2__a.sql": "A;", "V1.2__b.sql": "B;"}, "V1_2__a.sql", "version 1.2 is used twice"),
        ({"V1__a.sql": "A;", "V1.0__b.sql": "B;"}, "V1__a.sql", "version 1 is used twice"),
        ({"U3__undo.sql": "A;"}, "U3__undo.sql", "has a down script but no up script"),
        ({"V1__a.sql": "SELECT 1;\nSELECT '${flyway:user}';\n"}, "V1__a.sql", "placeholder '${flyway:user}'"),
        ({"V1__a.sql": "CREATE TABLE t (x int);\nCREATE INDEX CONCURRENTLY i ON t (x);\n"}, "V1__a.sql",
         "mixes statements that cannot run inside a transaction"),
    ],
)  # fmt: skip
def test_flyway_refusals(tmp_path: Path, files: dict[str, str], bad: str, words: str) -> None:
    err = refusal(tmp_path, files)
    assert err.path == tmp_path / "m" / bad
    assert words in str(err)


def test_flyway_repeatable_migrations_come_after_the_versioned_ones_by_description(tmp_path: Path) -> None:
    files = {
        "V1__a.sql": "SELECT 1;",
        "V2__b.sql": "SELECT 2;",
        "R__views.sql": "CREATE VIEW v AS SELECT 1;",
        "R__Accounts_view.sql": "CREATE VIEW w AS SELECT 1;",
    }
    migrations = scan(tmp_path, files).migrations()
    assert [(m.name, str(m.version), m.repeatable) for m in migrations] == [
        ("V1__a", "1", False),
        ("V2__b", "2", False),
        ("R__Accounts_view", "2.0.1", True),
        ("R__views", "2.0.2", True),
    ]
    views = migrations[3]
    # It reverts as a no-op: a revert marks it pending, and the next apply runs it again.
    assert views.down == {ANY_DIALECT: Script("")} and not views.irreversible("sqlite")
    assert views.to_json()["repeatable"] is True and "repeatable" not in migrations[0].to_json()
    only = scan(tmp_path / "only", {"R__x.sql": "SELECT 1;"}).migrations()
    assert [(m.name, str(m.version)) for m in only] == [("R__x", "0.0.1")]


def test_flyway_placeholder_refusal_names_its_line(tmp_path: Path) -> None:
    err = refusal(tmp_path, {"V1__a.sql": "SELECT 1;\nSELECT '${flyway:user}';\n"})
    assert err.line == 2


def test_flyway_runs_a_script_of_non_transactional_statements_outside_a_transaction(tmp_path: Path) -> None:
    files = {
        "V1__a.sql": "CREATE INDEX CONCURRENTLY i ON t (x);\n",
        "V2__b.sql": "VACUUM;\n",
        "V3__c.sql": "X;",
    }
    autocommit = [m.up[ANY_DIALECT].autocommit for m in scan(tmp_path, files).migrations()]
    assert autocommit == [True, True, False]


# -- Prisma, sqlx ----------------------------------------------------------------------------------


def test_prisma_folder_without_a_timestamp_is_refused(tmp_path: Path) -> None:
    err = refusal(tmp_path, {"init/migration.sql": "SELECT 1;", "1_a/migration.sql": "SELECT 1;"})
    assert err.path == tmp_path / "m" / "init" / "migration.sql"
    assert "starts with its timestamp" in str(err)


def test_prisma_ignores_other_files_in_its_folders(tmp_path: Path) -> None:
    files = {"1_a/migration.sql": "SELECT 1;", "1_a/README.md": "notes", "2_b/notes.sql": "SELECT 2;"}
    assert [m.name for m in scan(tmp_path, files).migrations()] == ["1_a"]


def test_sqlx_no_transaction_is_its_first_line_only(tmp_path: Path) -> None:
    files = {"1_a.sql": "-- no-transaction\nVACUUM;\n", "2_b.sql": "SELECT 1;\n-- no-transaction\n"}
    a, b = scan(tmp_path, files).migrations()
    assert a.up[ANY_DIALECT].autocommit and not b.up[ANY_DIALECT].autocommit
    assert a.down == {} and a.irreversible("sqlite")


# -- files in other languages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("00003_backfill.go", "a Go migration"),
        ("0003_backfill.py", "a Python migration"),
        ("20240101000000_seed.rb", "a Ruby migration"),
        ("20150100000001_networks.up.fizz", "a fizz migration"),
        ("V3__Java_migration.java", "a Java migration"),
        ("0004_x.ts", "a migration in another language (.ts)"),
        ("V1__a.sql.conf", "a Flyway script configuration file"),
    ],
)
def test_a_migration_in_another_language_is_an_error_or_with_ignore_unknown_a_warning(
    tmp_path: Path, name: str, what: str
) -> None:
    files = {"0001_a.up.sql": "SELECT 1;", name: "package main"}
    err = refusal(tmp_path, files)
    assert err.path == tmp_path / "m" / name
    assert what in str(err) and "--ignore-unknown" in str(err)
    snapshot = scan(tmp_path, files, ignore_unknown=True)
    assert [m.name for m in snapshot.migrations()] == ["0001_a"]
    [warning] = snapshot.ignored
    assert warning.startswith(f"{tmp_path / 'm' / name}: {what}") and warning.endswith(
        "skipped (--ignore-unknown)"
    )


def test_helpers_tests_and_documents_are_not_migrations(tmp_path: Path) -> None:
    files = {
        "0001_a.up.sql": "SELECT 1;",
        "helpers.go": "package migrations",
        "00002_x_test.go": "package migrations",
        "README.md": "# 0003_x.go",
        "2024-report.py": "print('not a migration: no <version>_')",
        "migration_lock.toml": "",
        "notes.txt": "",
    }
    snapshot = scan(tmp_path, files)
    assert snapshot.ignored == () and [m.name for m in snapshot.migrations()] == ["0001_a"]


def test_unknown_files_are_counted_in_the_error(tmp_path: Path) -> None:
    err = refusal(tmp_path, {"1_a.go": "", "2_b.go": "", "3_c.py": ""})
    assert err.path == tmp_path / "m" / "1_a.go"
    assert "(and 2 more such files)" in str(err)


# -- order="name" ------------------------------------------------------------------------------------


def test_files_that_share_a_number_need_name_order(tmp_path: Path) -> None:
    files = {"001_b.sql": "SELECT 'b';", "001_a.sql": "SELECT 'a';", "002_c.sql": "SELECT 'c';"}
    err = refusal(tmp_path, files)
    assert "version 1 is used twice" in str(err) and "pass --order name" in str(err)
    migrations = scan(tmp_path, files, order="name").migrations()
    assert [(m.name, str(m.version)) for m in migrations] == [
        ("001_a", "1"),
        ("001_b", "1.1"),
        ("002_c", "2"),
    ]


def test_name_order_refuses_names_that_sort_against_their_numbers(tmp_path: Path) -> None:
    err = refusal(tmp_path, {"9_a.sql": "SELECT 9;", "10_b.sql": "SELECT 10;"}, order="name")
    assert err.path == tmp_path / "m" / "9_a.sql"
    assert "comes after 10_b, whose number 10 is higher than its own 9" in str(err)


def test_name_order_keeps_pairs_and_prisma_folders_together(tmp_path: Path) -> None:
    files = {
        "20240105120000_b/migration.sql": "SELECT 'b';",
        "20240105120000_a/migration.sql": "SELECT 'a';",
        "20240106000000_c/migration.sql": "SELECT 'c';",
    }
    names = [(m.name, str(m.version)) for m in scan(tmp_path / "p", files, order="name").migrations()]
    assert names == [("20240105120000_a", "20240105120000"), ("20240105120000_b", "20240105120000.1"),
                     ("20240106000000_c", "20240106000000")]  # fmt: skip
    pairs = {"1_a.up.sql": "A;", "1_a.down.sql": "-A;", "1_b.up.sql": "B;", "1_b.down.sql": "-B;"}
    a, b = scan(tmp_path / "q", pairs, order="name").migrations()
    assert (a.name, b.name, str(b.version), b.down[ANY_DIALECT].sql) == ("1_a", "1_b", "1.1", "-B;")


def test_order_and_format_are_part_of_the_digest(tmp_path: Path) -> None:
    files = {"1_a.up.sql": "SELECT 1;"}
    digests = {
        scan(tmp_path, files).digest,
        scan(tmp_path, files, order="name").digest,
        scan(tmp_path, files, format="sqlx").digest,
    }
    assert len(digests) == 3


def test_builtin_formats_are_every_built_in_format(tmp_path: Path) -> None:
    names = [f.name for f in builtin_formats()]
    assert names == ["paired", "native", "golang-migrate", "sqlx", "goose", "flyway", "prisma"]
    assert load_directory(write(tmp_path / "m", {"V1__a.sql": "SELECT 1;"}))[0].name == "V1__a"
