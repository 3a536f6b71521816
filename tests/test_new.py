"""``migsync new``: the next migration in the folder's own format and numbering.

Each format's folder is laid out as its own tool's docs show; the new files must keep the
folder in that format (detection says the same) and apply with ``migsync apply``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import run, status_json

from migsync.core.authoring import new_migration
from migsync.core.errors import ConfigError, SourceError
from migsync.core.formats import FileName, Section, SourceFormat
from migsync.core.sources import builtin_formats, scan_directory
from migsync.testing import FakeClock

USERS = "CREATE TABLE users (id INTEGER PRIMARY KEY);\n"
DROP = "DROP TABLE users;\n"
#: 2027-01-15 08:00:00 UTC: after every timestamp in the folders below.
LATER = 1_800_000_000.0
STAMP = "20270115080000"

FOLDERS: dict[str, tuple[dict[str, str], list[str]]] = {
    # format: (the folder's files, the files 'new add_email' writes)
    "native": (
        {"20240101120000_create_users.sql": f"-- migrate:up\n{USERS}\n-- migrate:down\n{DROP}"},
        [f"{STAMP}_add_email.sql"],
    ),
    "golang-migrate": (
        {
            "000001_create_users_table.up.sql": USERS,
            "000001_create_users_table.down.sql": DROP,
            "000002_1.7.0_schema.up.sql": "CREATE TABLE roles (name TEXT);\n",
            "000002_1.7.0_schema.down.sql": "DROP TABLE roles;\n",
        },
        ["000003_add_email.up.sql", "000003_add_email.down.sql"],
    ),
    "paired": (
        {
            "20150100000001000000_identities.up.sql": USERS,
            "20150100000001000000_identities.down.sql": DROP,
        },
        ["20150100000001000001_add_email.up.sql", "20150100000001000001_add_email.down.sql"],
    ),
    "sqlx": (
        {"20240101120000_users.sql": "-- Add migration script here\n" + USERS},
        [f"{STAMP}_add_email.sql"],
    ),
    "goose": (
        {"00001_create_users.sql": f"-- +goose Up\n{USERS}\n-- +goose Down\n{DROP}"},
        ["00002_add_email.sql"],
    ),
    "flyway": (
        {"V1__create_users.sql": USERS, "V2__add_roles.sql": "CREATE TABLE roles (name TEXT);\n"},
        ["V3__add_email.sql"],
    ),
    "prisma": (
        {"20240105120000_init/migration.sql": USERS, "migration_lock.toml": 'provider = "sqlite"\n'},
        [f"{STAMP}_add_email/migration.sql"],
    ),
}


def make_folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("fmt", list(FOLDERS))
def test_new_in_each_format_keeps_the_folder_and_applies(tmp_path: Path, any_url: str, fmt: str) -> None:
    files, expected = FOLDERS[fmt]
    folder = make_folder(tmp_path / "migrations", files)
    before = scan_directory(folder).format
    assert before == fmt
    written = new_migration(folder, "add email", clock=FakeClock(LATER))
    assert [p.relative_to(folder).as_posix() for p in written] == expected
    assert all(p.is_file() for p in written)
    assert scan_directory(folder).format == before

    result = run("apply", "--migrations", str(folder), "--db", any_url)
    assert result.returncode == 0, result.stderr
    rows = status_json(any_url)
    assert all(r["state"] == "applied" for r in rows)
    # The migration's name: the file's (or Prisma's folder's) without its suffixes.
    assert rows[-1]["name"] == expected[0].split("/")[0].split(".")[0]


def test_new_in_an_empty_folder_is_dbmate_with_a_timestamp(tmp_path: Path) -> None:
    folder = tmp_path / "db" / "migrations"  # not there yet: made
    result = run("new", "add users", "--migrations", str(folder))
    assert result.returncode == 0, result.stderr
    (printed,) = result.stdout.splitlines()
    path = Path(printed)
    assert path.parent == folder and re.fullmatch(r"\d{14}_add_users\.sql", path.name)
    assert path.read_text(encoding="utf-8") == "-- migrate:up\n\n\n-- migrate:down\n\n"
    assert scan_directory(folder).format == "native"

    written = new_migration(tmp_path / "other", "x", clock=FakeClock(LATER))
    assert [p.name for p in written] == [f"{STAMP}_x.sql"]


def test_new_follows_a_sequence_and_its_width(tmp_path: Path) -> None:
    native = write_migrations(tmp_path / "n", {"0009_x.sql": f"-- migrate:up\n{USERS}"})
    result = run("new", "next one", "--migrations", str(native))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(native / "0010_next_one.sql")

    short = write_migrations(tmp_path / "s", {"9_x.sql": f"-- migrate:up\n{USERS}"})
    assert [p.name for p in new_migration(short, "y")] == ["10_y.sql"]

    dotted = write_migrations(tmp_path / "f", {"V1_2__a.sql": USERS, "V1.2.9__b.sql": "SELECT 1;\n"})
    assert [p.name for p in new_migration(dotted, "c")] == ["V1.2.10__c.sql"]


def test_new_writes_down_files_only_where_the_folder_has_them(tmp_path: Path) -> None:
    undo = write_migrations(tmp_path / "u", {"V1__users.sql": USERS, "U1__users.sql": DROP})
    assert [p.name for p in new_migration(undo, "roles")] == ["V2__roles.sql", "U2__roles.sql"]
    assert scan_directory(undo).format == "flyway"

    empty = tmp_path / "sqlx"
    written = new_migration(empty, "users", format="sqlx", clock=FakeClock(LATER))
    assert [p.name for p in written] == [f"{STAMP}_users.up.sql", f"{STAMP}_users.down.sql"]

    goose = new_migration(tmp_path / "goose", "users", format="goose", clock=FakeClock(LATER))
    assert [p.name for p in goose] == [f"{STAMP}_users.sql"]
    assert goose[0].read_text(encoding="utf-8").startswith("-- +goose Up\n")
    assert scan_directory(tmp_path / "goose").format == "goose"


def test_new_refuses_and_writes_nothing(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_x.sql": f"-- migrate:up\n{USERS}"})
    before = sorted(p.name for p in folder.iterdir())

    path_name = run("new", "../evil", "--migrations", str(folder))
    assert path_name.returncode == 2 and "is a path" in path_name.stderr

    future = write_migrations(tmp_path / "t", {"29991231235959_x.sql": f"-- migrate:up\n{USERS}"})
    behind = run("new", "y", "--migrations", str(future))
    assert behind.returncode == 2 and "older than the newest migration's" in behind.stderr
    assert [p.name for p in future.iterdir()] == ["29991231235959_x.sql"]

    stamped = tmp_path / "same"
    new_migration(stamped, "a", clock=FakeClock(LATER))
    with pytest.raises(SourceError, match=f"a migration of version {STAMP} exists already"):
        new_migration(stamped, "b", clock=FakeClock(LATER))
    assert [p.name for p in stamped.iterdir()] == [f"{STAMP}_a.sql"]

    with pytest.raises(ConfigError, match="needs a name"):
        new_migration(folder, "   ")
    unknown = run("new", "z", "--migrations", str(folder), "--format", "liquibase")
    assert unknown.returncode == 2 and "unknown migration format 'liquibase'" in unknown.stderr
    assert sorted(p.name for p in folder.iterdir()) == before


class _TicketFormat(SourceFormat):
    """A plugin's format that does not author migrations (no ``new_files``)."""

    name = "tickets"
    group = "tickets"
    suffixes = (".psql",)
    pattern_help = "<version>-<ticket>.psql"

    def match(self, filename: str) -> FileName | None:
        m = re.fullmatch(r"(\d+)-(\w+)\.psql", filename)
        return FileName(m[1], f"{m[1]}-{m[2]}", "up") if m else None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        return [Section("up", text, path=path)]


def test_a_format_without_new_files_cannot_author(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "t", {"1-abc.psql": USERS})
    with pytest.raises(ConfigError, match="format 'tickets' cannot write new migrations"):
        new_migration(folder, "x", [_TicketFormat(), *builtin_formats()])
    assert [p.name for p in folder.iterdir()] == ["1-abc.psql"]
