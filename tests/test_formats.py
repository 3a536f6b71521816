"""Every built-in format on folders laid out as its tool's own docs show, applied with ``migsync
apply`` on SQLite and Postgres.

Each test writes a folder as the tool writes it, applies it with the ``migsync`` command, applies
the same scripts in the tool's order with the plain driver (``sqlite3``, ``asyncpg``) to a second
database, and compares the two: tables, columns, indexes, constraints, views, functions,
triggers, types and rows. The scripts the plain driver runs are written out here, apart from the
files, so that migsync's parsing is checked, not assumed. Where the format has down scripts,
``migsync revert --all`` is compared the same way with the downs run newest first.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
from conftest import throwaway_database
from dbtools import BOOKKEEPING_TABLES, is_sqlite, query, run, sqlite_path, status_json, tables

# -- the comparison -------------------------------------------------------------------------------


@pytest.fixture
def reference_url(any_url: str, tmp_path: Path) -> Iterator[str]:
    """A second fresh database on ``any_url``'s backend, for the plain driver."""
    if is_sqlite(any_url):
        yield f"sqlite:///{tmp_path / 'reference.db'}"
        return
    with throwaway_database("migsync_ref") as url:
        yield url


def plain(url: str, scripts: Sequence[str]) -> None:
    """Run each script as a tool's driver does: the whole text in one call."""
    if is_sqlite(url):
        conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
        try:
            for script in scripts:
                conn.executescript(script)
        finally:
            conn.close()
        return

    async def on_postgres() -> None:
        conn = await asyncpg.connect(url)
        try:
            for script in scripts:
                if re.sub(r"--[^\n]*", "", script).strip():  # asyncpg refuses an empty query
                    await conn.execute(script)
        finally:
            await conn.close()

    asyncio.run(on_postgres())


_PG_SCHEMA = {
    "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default "
    "FROM information_schema.columns WHERE table_schema = 'public'",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE connamespace = 'public'::regnamespace",
    "views": "SELECT viewname, viewname, definition FROM pg_views WHERE schemaname = 'public'",
    "functions": "SELECT proname, proname, pg_get_functiondef(oid) FROM pg_proc "
    "WHERE pronamespace = 'public'::regnamespace",
    "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal",
    "types": "SELECT t.typname, t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) "
    "FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname",
}


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the migrations made: the schema objects and every row, migsync's own tables left out."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    if is_sqlite(url):
        rows = query(
            url, "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        )
        found["schema"] = sorted(r for r in rows if r[2] not in BOOKKEEPING_TABLES)
        user_tables = sorted(r[1] for r in rows if r[0] == "table" and r[2] not in BOOKKEEPING_TABLES)
    else:
        for what, sql in _PG_SCHEMA.items():
            found[what] = sorted(
                tuple(str(v) for v in r) for r in query(url, sql) if r[0] not in BOOKKEEPING_TABLES
            )
        user_tables = sorted({r[0] for r in found["columns"]} - {r[0] for r in found["views"]})
    for table in user_tables:
        found[f"rows of {table}"] = sorted(tuple(map(str, r)) for r in query(url, f'SELECT * FROM "{table}"'))
    return found


@attrs.frozen
class Step:
    """One migration as the tool runs it: its up script and (or not) its down script."""

    up: str
    down: str | None = None


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


def check(
    folder: Path,
    url: str,
    reference: str,
    steps: Sequence[Step],
    *,
    names: Sequence[str],
    args: Sequence[str] = (),
    reverts: bool = False,
) -> None:
    """``migsync apply`` of ``folder`` makes what the plain driver makes of ``steps``; so does
    ``migsync revert --all`` (with ``reverts``) of the downs, newest first."""
    applied = run("apply", "--migrations", str(folder), "--db", url, *args)
    assert applied.returncode == 0, applied.stderr
    assert [row["name"] for row in status_json(url)] == list(names)
    plain(reference, [step.up for step in steps])
    made = dump(url)
    assert made == dump(reference)
    assert any(made.values()), "the migrations made nothing: the comparison would prove nothing"
    again = run("apply", "--migrations", str(folder), "--db", url, *args)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    if not reverts:
        return
    reverted = run("revert", "--db", url, "--all")
    assert reverted.returncode == 0, reverted.stderr
    plain(reference, [step.down for step in reversed(steps) if step.down is not None])
    assert dump(url) == dump(reference)


def dialect(url: str) -> str:
    return "sqlite" if is_sqlite(url) else "postgresql"


# -- golang-migrate ------------------------------------------------------------------------------


def test_golang_migrate_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # `migrate create -ext sql -dir db/migrations -seq create_users_table`, then titles with
    # dots, an empty title, a version alone, and the BEGIN/COMMIT wrapper golang-migrate's
    # Postgres tutorial advises.
    steps = {
        "000001_create_users_table": Step(
            "CREATE TABLE IF NOT EXISTS users(\n   user_id serial PRIMARY KEY,\n"
            "   username VARCHAR (50) UNIQUE NOT NULL,\n   email VARCHAR (300) UNIQUE NOT NULL\n);\n",
            "DROP TABLE IF EXISTS users;\n",
        ),
        "000002_1.7.0_schema": Step(
            "BEGIN;\nCREATE TABLE roles (name VARCHAR(20) PRIMARY KEY);\n"
            "INSERT INTO roles (name) VALUES ('admin'), ('user');\nCOMMIT;\n",
            "DROP TABLE roles;\n",
        ),
        "000003_": Step("CREATE INDEX users_email ON users (email);\n", "DROP INDEX users_email;\n"),
        "000004": Step("INSERT INTO users (user_id, username, email) VALUES (1, 'ada', 'ada@example.com');\n",
                       "DELETE FROM users WHERE user_id = 1;\n"),
        "000005_seed.v2.": Step("INSERT INTO roles (name) VALUES ('guest');\n",
                                "DELETE FROM roles WHERE name = 'guest';\n"),
    }  # fmt: skip
    files = {}
    for stem, step in steps.items():
        files[f"{stem}.up.sql"] = step.up
        assert step.down is not None
        files[f"{stem}.down.sql"] = step.down
    folder = write(tmp_path / "db" / "migrations", files)
    names = ["000001_create_users_table", "000002_1.7.0_schema", "000003", "000004", "000005_seed.v2"]
    check(folder, any_url, reference_url, list(steps.values()), names=names, reverts=True)


# -- dbmate ----------------------------------------------------------------------------------------


def test_dbmate_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # `dbmate new create_users_table`, and a section that must run outside a transaction (the
    # README's ALTER TYPE ... ADD VALUE on Postgres; an index on SQLite).
    if dialect(any_url) == "postgresql":
        colours = Step("CREATE TYPE colors AS ENUM ('red', 'green');\n", "DROP TYPE colors;\n")
        outside = Step(
            "ALTER TYPE colors ADD VALUE 'orange' AFTER 'red';\n",
            "-- Postgres cannot drop an enum value\n",
        )
    else:
        colours = Step("CREATE TABLE colors (name TEXT);\n", "DROP TABLE colors;\n")
        outside = Step("CREATE INDEX colors_name ON colors (name);\n", "DROP INDEX colors_name;\n")
    users = Step(
        "create table users (\n  id integer,\n  name varchar(255),\n  email varchar(255) not null\n);\n",
        "drop table users;\n",
    )
    files = {
        "20151127184807_create_users_table.sql": f"-- migrate:up\n{users.up}\n-- migrate:down\n{users.down}",
        "20151127190000_colors.sql": f"-- migrate:up\n{colours.up}\n-- migrate:down\n{colours.down}",
        "20151127200000_orange.sql": (
            f"-- migrate:up transaction:false\n{outside.up}\n"
            f"-- migrate:down transaction:false\n{outside.down}"
        ),
    }
    folder = write(tmp_path / "db" / "migrations", files)
    names = ["20151127184807_create_users_table", "20151127190000_colors", "20151127200000_orange"]
    check(folder, any_url, reference_url, [users, colours, outside], names=names, reverts=True)


# -- sqlx -----------------------------------------------------------------------------------------


def test_sqlx_simple_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # `sqlx migrate add users`: <timestamp>_<description>.sql, up only, no markers; a description
    # with dots; sqlx's own opt-out of the transaction.
    concurrently = "CONCURRENTLY " if dialect(any_url) == "postgresql" else ""
    steps = {
        "20220101000000_users.sql": Step(
            "-- Add migration script here\nCREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL);\n"
        ),
        "20220102000000_posts.v1.2.sql": Step(
            "CREATE TABLE posts (id BIGINT PRIMARY KEY, user_id BIGINT REFERENCES users (id));\n"
            "INSERT INTO users VALUES (1, 'ada');\nINSERT INTO posts VALUES (10, 1);\n"
        ),
        "20220103000000_index.sql": Step(
            f"-- no-transaction\nCREATE INDEX {concurrently}posts_user ON posts (user_id);\n"
        ),
    }
    folder = write(tmp_path / "migrations", {name: step.up for name, step in steps.items()})
    names = ["20220101000000_users", "20220102000000_posts.v1.2", "20220103000000_index"]
    check(folder, any_url, reference_url, list(steps.values()), names=names)
    [index] = [m for m in status_json(any_url) if m["name"] == "20220103000000_index"]
    assert index["state"] == "applied"


def test_sqlx_reversible_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # `sqlx migrate add -r users`: <timestamp>_<description>.up.sql and .down.sql.
    steps = {
        "20220101000000_users": Step("CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT);\n",
                                     "DROP TABLE users;\n"),
        "20220102000000_user.email": Step("ALTER TABLE users ADD COLUMN email TEXT;\n",
                                          "ALTER TABLE users DROP COLUMN email;\n"),
    }  # fmt: skip
    files = {}
    for stem, step in steps.items():
        files[f"{stem}.up.sql"] = f"-- Add up migration script here\n{step.up}"
        files[f"{stem}.down.sql"] = f"-- Add down migration script here\n{step.down}"
    folder = write(tmp_path / "migrations", files)
    check(folder, any_url, reference_url, list(steps.values()), names=list(steps), reverts=True)


# -- goose ----------------------------------------------------------------------------------------


def test_goose_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # `goose create add_posts sql`: the annotations, a StatementBegin/StatementEnd body with ';'
    # inside it, and NO TRANSACTION.
    post = Step(
        "CREATE TABLE post (\n    id int NOT NULL,\n    title text,\n    body text,\n"
        "    PRIMARY KEY(id)\n);\n",
        "DROP TABLE post;\n",
    )
    if dialect(any_url) == "postgresql":
        body = Step(
            "CREATE FUNCTION post_touch() RETURNS trigger AS $$\nBEGIN\n"
            "    NEW.body := coalesce(NEW.body, '');\n"
            "    RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n"
            "CREATE TRIGGER post_touch BEFORE INSERT ON post FOR EACH ROW EXECUTE FUNCTION post_touch();\n",
            "DROP TRIGGER post_touch ON post;\nDROP FUNCTION post_touch();\n",
        )
        index = Step(
            "CREATE INDEX CONCURRENTLY post_title ON post (title);\n", "DROP INDEX CONCURRENTLY post_title;\n"
        )
    else:
        body = Step(
            "CREATE TRIGGER post_touch AFTER INSERT ON post\nBEGIN\n"
            "    UPDATE post SET body = coalesce(body, '') WHERE id = new.id;\nEND;\n",
            "DROP TRIGGER post_touch;\n",
        )
        index = Step("CREATE INDEX post_title ON post (title);\n", "DROP INDEX post_title;\n")
    seed = Step("INSERT INTO post (id, title) VALUES (1, 'hello');\n", "DELETE FROM post WHERE id = 1;\n")
    files = {
        "00001_create_post.sql": (
            "-- +goose Up\n-- +goose StatementBegin\nSELECT 'up SQL query';\n-- +goose StatementEnd\n"
            f"{post.up}\n"
            f"-- +goose Down\n{post.down}"
        ),
        "00002_touch.sql": (
            f"-- +goose Up\n-- +goose StatementBegin\n{body.up}-- +goose StatementEnd\n\n"
            f"-- +goose Down\n-- +goose StatementBegin\n{body.down}-- +goose StatementEnd\n"
        ),
        "00003_post_title.sql": (
            f"-- +goose NO TRANSACTION\n-- +goose Up\n{index.up}\n-- +goose Down\n{index.down}"
        ),
        "20240105120000_seed.sql": f"-- +goose up\n{seed.up}-- +goose down\n{seed.down}",
    }
    folder = write(tmp_path / "migrations", files)
    names = ["00001_create_post", "00002_touch", "00003_post_title", "20240105120000_seed"]
    check(folder, any_url, reference_url, [post, body, index, seed], names=names, reverts=True)


# -- Flyway ---------------------------------------------------------------------------------------


def test_flyway_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # Flyway's getting-started V1__/V2__ files, dotted and underscored versions (1_1 is 1.1,
    # 10 comes after 2), undo (U) files, and a script Flyway runs outside a transaction itself.
    person = Step("create table PERSON (\n    ID int not null,\n    NAME varchar(100) not null\n);\n")
    email = Step("alter table PERSON add column EMAIL varchar(100);\n")
    concurrently = "CONCURRENTLY " if dialect(any_url) == "postgresql" else ""
    index = Step(f"create index {concurrently}person_name on PERSON (NAME);\n")
    people = Step(
        "insert into PERSON (ID, NAME) values (1, 'Axel');\n"
        "insert into PERSON (ID, NAME) values (2, 'Mr. Foo');\n",
        "delete from PERSON where ID in (1, 2);\n",
    )
    more = Step(
        "insert into PERSON (ID, NAME) values (3, 'Ms. Bar');\n", "delete from PERSON where ID = 3;\n"
    )
    files = {
        "V1__Create_person_table.sql": person.up,
        "V1_1__Add_email.sql": email.up,
        "V1.2__Index_names.sql": index.up,
        "V2__Add_people.sql": people.up,
        "U2__Remove_people.sql": people.down or "",
        "V10__Add_more_people.sql": more.up,
        "U10__.sql": more.down or "",
    }
    folder = write(tmp_path / "sql", files)
    names = [
        "V1__Create_person_table",
        "V1_1__Add_email",
        "V1.2__Index_names",
        "V2__Add_people",
        "V10__Add_more_people",
    ]
    check(folder, any_url, reference_url, [person, email, index, people, more], names=names)
    assert [m["version"] for m in status_json(any_url)] == ["1", "1.1", "1.2", "2", "10"]
    refused = run("revert", "--db", any_url, "--all")
    assert refused.returncode == 2
    assert "cannot revert V1.2__Index_names, V1_1__Add_email, V1__Create_person_table" in refused.stderr
    undone = run("revert", "--db", any_url, "Add_people")  # the description names it, as the version does
    assert undone.returncode == 0, undone.stderr
    assert "reverted 2 migrations (V10__Add_more_people .. V2__Add_people)" in undone.stdout
    plain(reference_url, [more.down or "", people.down or ""])
    assert dump(any_url) == dump(reference_url)


def test_flyway_repeatable_migrations(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # R__ files: after the pending versioned ones, in the order of their descriptions, and again
    # whenever their checksum changes (Flyway's own words).
    replace = (
        "CREATE OR REPLACE VIEW"
        if dialect(any_url) == "postgresql"
        else "DROP VIEW IF EXISTS {0};\nCREATE VIEW"
    )

    def view(name: str, select: str) -> str:
        head = replace.format(name)
        return f"{head} {name} AS {select};\n"

    person = Step("create table PERSON (ID int not null, NAME varchar(100) not null);\n")
    people = Step("insert into PERSON (ID, NAME) values (1, 'Axel'), (2, 'Mr. Foo');\n")
    counts = Step(view("person_count", "select count(*) as N from PERSON"))
    names = Step(view("person_names", "select NAME from PERSON"))
    folder = write(
        tmp_path / "sql",
        {
            "V1__Create_person_table.sql": person.up,
            "V2__Add_people.sql": people.up,
            "R__Person_names.sql": names.up,
            "R__Counts.sql": counts.up,
        },
    )
    order = ["V1__Create_person_table", "V2__Add_people", "R__Counts", "R__Person_names"]
    check(folder, any_url, reference_url, [person, people, counts, names], names=order)
    assert [m["version"] for m in status_json(any_url)] == ["1", "2", "2.0.1", "2.0.2"]
    # A new versioned migration and a changed repeatable one: the versioned one runs first.
    email = Step("alter table PERSON add column EMAIL varchar(100);\n")
    names_v2 = Step(view("person_names", "select NAME, EMAIL from PERSON"))
    write(folder, {"V3__Add_email.sql": email.up, "R__Person_names.sql": names_v2.up})
    applied = run("apply", "--migrations", str(folder), "--db", any_url)
    assert applied.returncode == 0, applied.stderr
    assert "applied 2 migrations (V3__Add_email .. R__Person_names)" in applied.stdout
    plain(reference_url, [email.up, names_v2.up])
    assert dump(any_url) == dump(reference_url)
    assert [m["version"] for m in status_json(any_url)] == ["1", "2", "3", "3.0.1", "3.0.2"]
    # Publishing them is refused for now, naming them.
    key = tmp_path / "signing.key"
    assert run("keygen", "--out", str(key)).returncode == 0
    store = f"sqlite:///{tmp_path / 'server.db'}"
    refused = run("publish", "--migrations", str(folder), "--store", store, "--signing-key", str(key))
    assert refused.returncode == 2
    assert "R__Counts, R__Person_names: repeatable migrations cannot be published yet" in refused.stderr


# -- Prisma ---------------------------------------------------------------------------------------


def test_prisma_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # `prisma migrate dev`: a folder per migration with migration.sql, and migration_lock.toml.
    if dialect(any_url) == "postgresql":
        init = Step(
            '-- CreateTable\nCREATE TABLE "User" (\n    "id" SERIAL NOT NULL,\n    "email" TEXT NOT NULL,\n'
            '    "name" TEXT,\n\n    CONSTRAINT "User_pkey" PRIMARY KEY ("id")\n);\n\n'
            '-- CreateIndex\nCREATE UNIQUE INDEX "User_email_key" ON "User"("email");\n'
        )
        posts = Step(
            '-- CreateTable\nCREATE TABLE "Post" (\n    "id" SERIAL NOT NULL,\n    "title" TEXT NOT NULL,\n'
            '    "authorId" INTEGER NOT NULL,\n\n    CONSTRAINT "Post_pkey" PRIMARY KEY ("id")\n);\n\n'
            '-- AddForeignKey\nALTER TABLE "Post" ADD CONSTRAINT "Post_authorId_fkey" '
            'FOREIGN KEY ("authorId") REFERENCES "User"("id") ON DELETE RESTRICT ON UPDATE CASCADE;\n'
        )
        provider = "postgresql"
    else:
        init = Step(
            '-- CreateTable\nCREATE TABLE "User" (\n    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,\n'
            '    "email" TEXT NOT NULL,\n    "name" TEXT\n);\n\n'
            '-- CreateIndex\nCREATE UNIQUE INDEX "User_email_key" ON "User"("email");\n'
        )
        posts = Step(
            '-- CreateTable\nCREATE TABLE "Post" (\n    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,\n'
            '    "title" TEXT NOT NULL,\n    "authorId" INTEGER NOT NULL,\n'
            '    CONSTRAINT "Post_authorId_fkey" FOREIGN KEY ("authorId") REFERENCES "User" ("id") '
            "ON DELETE RESTRICT ON UPDATE CASCADE\n);\n"
        )
        provider = "sqlite"
    seed = Step('INSERT INTO "User" ("email", "name") VALUES (\'ada@example.com\', \'Ada\');\n')
    files = {
        "migration_lock.toml": f'# Please do not edit this file manually\nprovider = "{provider}"\n',
        "20240105120000_init/migration.sql": init.up,
        "20240106093000_posts/migration.sql": posts.up,
        "20240107000000_seed/migration.sql": seed.up,
    }
    folder = write(tmp_path / "prisma" / "migrations", files)
    names = ["20240105120000_init", "20240106093000_posts", "20240107000000_seed"]
    check(folder, any_url, reference_url, [init, posts, seed], names=names)


# -- ory/pop --------------------------------------------------------------------------------------


def test_pop_folder(tmp_path: Path, any_url: str, reference_url: str) -> None:
    # ory/kratos' layout: 20-digit versions, a file per dialect (.sqlite3., .postgres., .cockroach.,
    # .mysql.), generic files, a dialect file beside a generic one (it wins), .autocommit.
    drop = "DROP TABLE networks;\n"
    networks = {
        "sqlite3": Step(
            "CREATE TABLE networks (id CHAR(36) PRIMARY KEY, created_at DATETIME NOT NULL);\n", drop
        ),
        "postgres": Step(
            "CREATE TABLE networks (id UUID PRIMARY KEY, created_at timestamp NOT NULL);\n", drop
        ),
        "cockroach": Step("CREATE TABLE networks (id UUID NOT NULL PRIMARY KEY);\n", drop),
        "mysql": Step("CREATE TABLE networks (id CHAR(36) NOT NULL PRIMARY KEY);\n", drop),
    }
    identities = Step(
        "CREATE TABLE identities (id CHAR(36) NOT NULL PRIMARY KEY, traits TEXT NOT NULL);\n",
        "DROP TABLE identities;\n",
    )
    traits = Step(
        "CREATE INDEX identities_traits ON identities (traits, id);\n", "DROP INDEX identities_traits;\n"
    )
    traits_sqlite = Step(
        "CREATE INDEX identities_traits ON identities (traits);\n", "DROP INDEX identities_traits;\n"
    )
    unique = Step("CREATE UNIQUE INDEX identities_id ON identities (id);\n", "DROP INDEX identities_id;\n")
    files = {}
    for name, step in networks.items():
        files[f"20150100000001000000_networks.{name}.up.sql"] = step.up
        files[f"20150100000001000000_networks.{name}.down.sql"] = step.down or ""
    for stem, step in (
        ("20191100000001000000_identities", identities),
        ("20191100000001000001_identities", traits),
        ("20191100000001000001_identities.sqlite3", traits_sqlite),
        ("20241029153900000001_identities.autocommit", unique),
    ):
        files[f"{stem}.up.sql"] = step.up
        files[f"{stem}.down.sql"] = step.down or ""
    folder = write(tmp_path / "persistence" / "sql" / "migrations" / "sql", files)
    if is_sqlite(any_url):
        steps = [networks["sqlite3"], identities, traits_sqlite, unique]
    else:
        steps = [networks["postgres"], identities, traits, unique]
    names = [
        "20150100000001000000_networks",
        "20191100000001000000_identities",
        "20191100000001000001_identities",
        "20241029153900000001_identities",
    ]
    check(folder, any_url, reference_url, steps, names=names, reverts=True)


# -- the command's options and refusals -------------------------------------------------------------


def test_a_refused_folder_exits_2_naming_the_file_and_runs_nothing(tmp_path: Path, db_url: str) -> None:
    folder = write(
        tmp_path / "m",
        {"0001_a.sql": "-- migrate:up\nCREATE TABLE a (x);\n", "0002_b.sql": "CREATE TABLE b (x);\n"},
    )
    refused = run("apply", "--migrations", str(folder), "--db", db_url)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: {folder / '0002_b.sql'}: this file reads as sqlx")
    assert "pass --format NAME" in refused.stderr and "Traceback" not in refused.stderr
    assert not Path(sqlite_path(db_url)).exists()
    unknown = run("apply", "--migrations", str(folder), "--db", db_url, "--format", "liquibase")
    assert unknown.returncode == 2
    assert "error: unknown migration format 'liquibase' (known: paired (pop), native" in unknown.stderr
    assert not Path(sqlite_path(db_url)).exists()
    # --format native: the file without markers is then what native says of it; still nothing runs.
    native = run("apply", "--migrations", str(folder), "--db", db_url, "--format", "dbmate")
    assert native.returncode == 2 and "0002_b.sql: no '-- migrate:up' section" in native.stderr
    assert query(db_url, "SELECT count(*) FROM client_migration") == [(0,)]
    assert "a" not in tables(db_url)


def test_format_from_the_environment(tmp_path: Path, db_url: str) -> None:
    folder = write(tmp_path / "m", {"0001_x.postgres.up.sql": "CREATE TABLE x (a INTEGER);\n"})
    # As pop reads it, a Postgres-only script: a no-op on SQLite.
    assert run("apply", "--migrations", str(folder), "--db", db_url).returncode == 0
    assert query(db_url, "SELECT count(*) FROM sqlite_master WHERE name = 'x'") == [(0,)]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    # As golang-migrate reads it, the title "x.postgres".
    titled = run(
        "apply", "--migrations", str(folder), "--db", other, env={"MIGSYNC_FORMAT": "golang-migrate"}
    )
    assert titled.returncode == 0, titled.stderr
    assert [m["name"] for m in status_json(other)] == ["0001_x.postgres"]
    assert query(other, "SELECT count(*) FROM sqlite_master WHERE name = 'x'") == [(1,)]


def test_order_name_applies_files_that_share_a_number(tmp_path: Path, any_url: str) -> None:
    # A folder a shell loop (`for f in *.sql`) applied: numbers shared, order by name.
    folder = write(
        tmp_path / "m",
        {
            "001_create_a.sql": "CREATE TABLE a (x INTEGER);\n",
            "001_fill_a.sql": "INSERT INTO a VALUES (1);\n",
            "002_create_b.sql": "CREATE TABLE b AS SELECT x FROM a;\n",
        },
    )
    refused = run("apply", "--migrations", str(folder), "--db", any_url)
    assert refused.returncode == 2 and "pass --order name" in refused.stderr
    applied = run("apply", "--migrations", str(folder), "--db", any_url, "--order", "name")
    assert applied.returncode == 0, applied.stderr
    rows = status_json(any_url)
    assert [(m["version"], m["name"]) for m in rows] == [("1", "001_create_a"), ("1.1", "001_fill_a"),
                                                        ("2", "002_create_b")]  # fmt: skip
    assert query(any_url, "SELECT x FROM b") == [(1,)]
    again = run("apply", "--migrations", str(folder), "--db", any_url, env={"MIGSYNC_ORDER": "name"})
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


def test_ignore_unknown_warns_naming_each_file(tmp_path: Path, db_url: str) -> None:
    folder = write(
        tmp_path / "m",
        {
            "00001_create.sql": "-- +goose Up\nCREATE TABLE a (x INTEGER);\n-- +goose Down\nDROP TABLE a;\n",
            "00002_backfill.go": "package migrations\n",
            "helpers.go": "package migrations\n",
        },
    )
    refused = run("apply", "--migrations", str(folder), "--db", db_url)
    assert refused.returncode == 2
    assert f"error: {folder / '00002_backfill.go'}: a Go migration" in refused.stderr
    assert "--ignore-unknown" in refused.stderr
    applied = run("apply", "--migrations", str(folder), "--db", db_url, "--ignore-unknown")
    assert applied.returncode == 0, applied.stderr
    assert (
        applied.stderr
        == f"warning: {folder / '00002_backfill.go'}: a Go migration: skipped (--ignore-unknown)\n"
    )
    assert "applied 1 migration (00001_create)" in applied.stdout


def test_publish_reads_the_folder_the_same_way(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    key = tmp_path / "signing.key"
    assert run("keygen", "--out", str(key)).returncode == 0
    goose = "-- +goose Up\nCREATE TABLE {0} (x INTEGER);\n-- +goose Down\nDROP TABLE {0};\n"
    folder = write(
        tmp_path / "m",
        {"00001_a.sql": goose.format("a"), "00002_b.sql": goose.format("b"), "00003_c.go": "package m\n"},
    )
    args = ["publish", "--migrations", str(folder), "--store", store, "--signing-key", str(key)]
    refused = run(*args)
    assert refused.returncode == 2 and "00003_c.go: a Go migration" in refused.stderr
    published = run(*args, "--format", "goose", "--ignore-unknown")
    assert published.returncode == 0, published.stderr
    assert "added: 00001_a, 00002_b" in published.stdout
    assert "warning: " in published.stderr and "00003_c.go" in published.stderr
