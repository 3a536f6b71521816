"""The server store (migsync.server) on SQLite and Postgres, and the commands that use it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import MIGSYNC, write_migrations
from dbtools import _STORE_DOWNGRADES as STORE_DOWNGRADES
from dbtools import aquery, downgrade_store, is_sqlite, migsync_env, query, run

from migsync.core.errors import ChecksumMismatch, ConfigError, ConnectError, SignatureError
from migsync.core.migration import Migration, Script
from migsync.core.version import Version
from migsync.protocol.signing import load_private_key, load_public_keys, verify, write_keypair
from migsync.protocol.wire import EntityChange
from migsync.server import Store
from migsync.server.engine import store_url
from migsync.server.tables import SCHEMA_VERSION, metadata

STORE_TABLES = ("store_meta", "store_migrations", "store_clients", "store_client_status", "store_inbox")


class Urls(NamedTuple):
    store: str  # what migsync is given
    raw: str  # the same database for dbtools.query


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Urls:
    """A fresh store database on each backend, in its explicit async-driver form."""
    if request.param == "sqlite":
        path = tmp_path / "server.db"
        return Urls(f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}")
    pg = str(request.getfixturevalue("pg_url"))
    return Urls(pg.replace("postgresql://", "postgresql+asyncpg://", 1), pg)


def migration(version: int, sql: str, name: str | None = None) -> Migration:
    return Migration(
        version, name or f"{version:04d}_m{version}", {"*": Script(sql)}, {"*": Script("SELECT 1")}
    )


V1 = migration(1, "CREATE TABLE a (x INTEGER)")
V2 = migration(2, "CREATE TABLE b (x INTEGER)")
V2_CHANGED = migration(2, "CREATE TABLE b (x INTEGER, y INTEGER)")
V3 = migration(3, "CREATE TABLE c (x INTEGER)")


def stored(urls: Urls) -> dict[Version, tuple[str, str | None]]:
    """version -> (checksum, replaced_checksum), read on a connection of the test's own."""
    rows = query(urls.raw, "SELECT version, checksum, replaced_checksum FROM store_migrations")
    return {Version.from_key(v): (c, r) for v, c, r in rows}


async def astored(urls: Urls) -> dict[int, tuple[str, str | None]]:
    return await asyncio.to_thread(stored, urls)


# -- the store's own schema ----------------------------------------------------------------------


def test_plain_urls_are_mapped_to_async_drivers() -> None:
    assert store_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert store_url("sqlite+aiosqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert store_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert store_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    assert store_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(ConfigError, match=r"unknown scheme 'mysql'.*sqlite://"):
        store_url("mysql://u:secret@h/db")
    with pytest.raises(ConfigError, match="not a URL"):
        store_url("server.db")


async def test_plain_urls_open_a_working_store(tmp_path: Path, pg_url: str, key_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'plain.db'}", pg_url):
        async with Store.open(url) as store:
            result = await store.publish([V1], load_private_key(key_path))
        assert result.added == (V1.name,), url


async def test_schema_is_created_once_and_versioned(urls: Urls) -> None:
    async with Store.open(urls.store):
        pass
    async with Store.open(urls.store):  # a second open finds it and changes nothing
        pass
    assert await aquery(urls.raw, "SELECT key, value FROM store_meta") == [
        ("schema_version", str(SCHEMA_VERSION))
    ]
    for table in STORE_TABLES:
        assert (await aquery(urls.raw, f"SELECT count(*) FROM {table}"))[0][0] == (
            1 if table == "store_meta" else 0
        )
    # No global "applied" flag on a published migration: status is per client.
    assert "applied" not in metadata.tables["store_migrations"].c
    assert [c.name for c in metadata.tables["store_client_status"].primary_key] == ["client_id", "version"]


async def test_a_newer_store_schema_is_refused(urls: Urls) -> None:
    async with Store.open(urls.store):
        pass
    await aquery(
        urls.raw, f"UPDATE store_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'"
    )
    with pytest.raises(ConnectError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this migsync"):
        async with Store.open(urls.store):
            pass
    assert await aquery(urls.raw, "SELECT value FROM store_meta") == [(str(SCHEMA_VERSION + 1),)]


async def test_a_version_2_store_gets_an_inbox(urls: Urls, key_path: Path) -> None:
    async with Store.open(urls.store) as store:
        await store.publish([V1], load_private_key(key_path))
        client_id, _ = await store.add_client("a")
    await downgrade_store(urls.raw, 2)
    async with Store.open(urls.store, create=False) as store:
        ack = await store.receive_changes(client_id, [EntityChange("c1", "todo", "1", "insert", {}, 1, 1.0)])
        assert ack.accepted == ("c1",)
        assert [c.change_id for c in await store.inbox()] == ["c1"]
        assert [m.version for m in await store.migrations()] == [1], "the upgrade keeps what was there"
    assert await aquery(urls.raw, "SELECT value FROM store_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert SCHEMA_VERSION == 10


async def test_without_create_a_missing_store_is_an_error(tmp_path: Path, pg_url: str) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(ConfigError, match=r"SQLite store .*missing\.db does not exist"):
        async with Store.open(f"sqlite:///{missing}", create=False):
            pass
    assert not missing.exists()
    with pytest.raises(ConfigError, match="is not a migsync store"):
        async with Store.open(pg_url, create=False):
            pass
    assert await aquery(pg_url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'store_%'") == [(0,)]


async def test_an_unreachable_store_is_a_connect_error() -> None:
    with pytest.raises(
        ConnectError, match=r"cannot open store postgresql\+asyncpg://postgres@127\.0\.0\.1:1/x"
    ):
        async with Store.open("postgresql://postgres@127.0.0.1:1/x"):
            pass


def test_status_is_kept_per_client_and_per_migration(urls: Urls) -> None:
    async def setup() -> None:
        async with Store.open(urls.store) as store:
            await store.add_client("one")
            await store.add_client("two")

    asyncio.run(setup())
    insert = "INSERT INTO store_client_status (client_id, version, applied, attempts, updated_at) VALUES "
    query(urls.raw, insert + "(1, '017', TRUE, 1, 0), (2, '017', FALSE, 3, 0)")
    rows = query(urls.raw, "SELECT client_id, version, applied FROM store_client_status ORDER BY client_id")
    assert [(c, v, bool(a)) for c, v, a in rows] == [(1, "017", True), (2, "017", False)]
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        query(urls.raw, insert + "(1, '017', FALSE, 2, 0)")


# -- publish -------------------------------------------------------------------------------------


async def test_publish_is_idempotent(urls: Urls, key_path: Path) -> None:
    key = load_private_key(key_path)
    async with Store.open(urls.store) as store:
        first = await store.publish([V2, V1], key)
        second = await store.publish([V1, V2], key)
        published = await store.migrations()
    assert (first.added, first.unchanged, first.replaced) == ((V1.name, V2.name), (), ())
    assert (second.added, second.unchanged, second.replaced, second.resigned) == (
        (),
        (V1.name, V2.name),
        (),
        (),
    )
    assert [p.migration for p in published] == [V1, V2]
    assert [p.checksum for p in published] == [V1.checksum, V2.checksum]
    assert await astored(urls) == {1: (V1.checksum, None), 2: (V2.checksum, None)}


async def test_changed_content_is_refused_and_nothing_is_written(urls: Urls, key_path: Path) -> None:
    key = load_private_key(key_path)
    async with Store.open(urls.store) as store:
        await store.publish([V1, V2], key)
        with pytest.raises(ChecksumMismatch) as refused:
            await store.publish([V1, V2_CHANGED, V3], key)
        published = await store.migrations()
    message = str(refused.value)
    assert V2.name in message and "version 2" in message and "--force" in message
    assert V1.name not in message
    assert V2.checksum[:12] in message and V2_CHANGED.checksum[:12] in message
    # All or nothing: the new version 3 was not added either.
    assert [p.migration for p in published] == [V1, V2]
    assert await astored(urls) == {1: (V1.checksum, None), 2: (V2.checksum, None)}


async def test_force_replaces_and_keeps_the_old_checksum(urls: Urls, key_path: Path) -> None:
    key = load_private_key(key_path)
    trusted = load_public_keys([f"{key_path}.pub"])
    async with Store.open(urls.store) as store:
        await store.publish([V1, V2], key)
        result = await store.publish([V1, V2_CHANGED, V3], key, force=True)
        published = {p.version: p for p in await store.migrations()}
    assert (result.added, result.unchanged, result.replaced) == ((V3.name,), (V1.name,), (V2.name,))
    assert await astored(urls) == {
        1: (V1.checksum, None),
        2: (V2_CHANGED.checksum, V2.checksum),
        3: (V3.checksum, None),
    }
    replaced = published[2]
    assert replaced.migration == V2_CHANGED
    assert replaced.replaced_checksum == V2.checksum
    assert replaced.replaced_at is not None
    verify(replaced.migration, replaced.signature, trusted)  # the new content is what is signed


async def test_published_signatures_verify_with_the_public_key(
    urls: Urls, key_path: Path, tmp_path: Path
) -> None:
    key = load_private_key(key_path)
    trusted = load_public_keys([f"{key_path}.pub"])
    stranger = write_keypair(tmp_path / "other.key")
    async with Store.open(urls.store) as store:
        await store.publish([V1, V2], key)
        published = await store.migrations()
    for item in published:
        assert verify(item.migration, item.signature, trusted).fingerprint == item.signed_by
        with pytest.raises(SignatureError, match="does not match"):
            verify(item.migration, item.signature, [stranger])
    # The signature covers the content: a swapped script does not verify.
    with pytest.raises(SignatureError, match=V2_CHANGED.name):
        verify(V2_CHANGED, published[1].signature, trusted)


async def test_publishing_with_a_new_key_resigns_unchanged_content(urls: Urls, tmp_path: Path) -> None:
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    write_keypair(old)
    write_keypair(new)
    async with Store.open(urls.store) as store:
        await store.publish([V1], load_private_key(old))
        result = await store.publish([V1], load_private_key(new))
        (item,) = await store.migrations()
    assert (result.resigned, result.unchanged, result.replaced) == ((V1.name,), (), ())
    verify(item.migration, item.signature, load_public_keys([f"{new}.pub"]))
    with pytest.raises(SignatureError):
        verify(item.migration, item.signature, load_public_keys([f"{old}.pub"]))
    assert await astored(urls) == {1: (V1.checksum, None)}


async def test_two_migrations_with_one_version_are_refused(urls: Urls, key_path: Path) -> None:
    async with Store.open(urls.store) as store:
        with pytest.raises(ConfigError, match="version 2 given twice"):
            await store.publish([V2, V2_CHANGED], load_private_key(key_path))
        assert await store.migrations() == []


# -- clients -------------------------------------------------------------------------------------


def _database_text(urls: Urls, tmp_path: Path) -> str:
    """Everything the store holds: every row of every table, and on SQLite every byte of its files."""
    dump = [repr(query(urls.raw, f"SELECT * FROM {table}")) for table in STORE_TABLES]
    if is_sqlite(urls.raw):
        dump += [p.read_bytes().decode("latin-1") for p in tmp_path.glob("server.db*")]
    return "\n".join(dump)


async def test_tokens_are_stored_hashed_and_authenticate(urls: Urls, tmp_path: Path) -> None:
    async with Store.open(urls.store) as store:
        one_id, one_token = await store.add_client("shop-berlin")
        two_id, two_token = await store.add_client("  shop-paris  ")
        assert one_id != two_id
        assert len(one_token) >= 40 and one_token != two_token
        one = await store.authenticate(one_token)
        two = await store.authenticate(two_token)
        wrong = [await store.authenticate(t) for t in ("", one_token[:-1], one_token + "x", "x" * 10_000)]
        listed = await store.clients()
    assert one is not None and (one.client_id, one.name) == (one_id, "shop-berlin")
    assert two is not None and (two.client_id, two.name) == (two_id, "shop-paris")
    assert wrong == [None, None, None, None]
    assert [(c.client_id, c.name, c.last_seen_at) for c in listed] == [
        (one_id, "shop-berlin", None),
        (two_id, "shop-paris", None),
    ]
    hashes = await aquery(urls.raw, "SELECT token_hash FROM store_clients ORDER BY id")
    assert hashes == [(hashlib.sha256(t.encode()).hexdigest(),) for t in (one_token, two_token)]
    everything = await asyncio.to_thread(_database_text, urls, tmp_path)
    assert "shop-paris" in everything  # the dump does see what the store wrote
    assert one_token not in everything and two_token not in everything


async def test_client_names_are_checked(urls: Urls) -> None:
    async with Store.open(urls.store) as store:
        await store.add_client("shop")
        with pytest.raises(ConfigError, match="a client named 'shop' exists already"):
            await store.add_client(" shop ")
        with pytest.raises(ConfigError, match="must not be empty"):
            await store.add_client("   ")
        with pytest.raises(ConfigError, match="control characters"):
            await store.add_client("a\nb")
        assert [c.name for c in await store.clients()] == ["shop"]


# -- the commands --------------------------------------------------------------------------------


def test_cli_publish(urls: Urls, tmp_path: Path) -> None:
    plain = urls.raw  # the command maps sqlite:// and postgresql:// itself
    key = tmp_path / "signing.key"
    assert run("keygen", "--out", str(key)).returncode == 0
    migrations = write_migrations(
        tmp_path / "m",
        {
            "0001_create_a.sql": "-- migrate:up\nCREATE TABLE a (x INTEGER);\n",
            "0002_create_b.up.sql": "CREATE TABLE b (x INTEGER);\n",
        },
    )
    publish = ("publish", "--migrations", str(migrations), "--signing-key", str(key))

    first = run(*publish, "--store", plain)
    assert first.returncode == 0, first.stderr
    assert "added: 0001_create_a, 0002_create_b" in first.stdout

    again = run(*publish, env={"MIGSYNC_STORE": plain})
    assert again.returncode == 0, again.stderr
    assert "unchanged: 0001_create_a, 0002_create_b" in again.stdout

    (migrations / "0002_create_b.up.sql").write_text("CREATE TABLE b (x INTEGER, y INTEGER);\n")
    refused = run(*publish, "--store", plain)
    assert refused.returncode == 2
    assert refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 0002_create_b (version 2")
    assert "--force" in lines[0]
    before = stored(urls)

    forced = run(*publish, "--store", plain, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (
        "replaced (--force; clients that applied the old content will be told): 0002_create_b"
        in forced.stdout
    )
    after = stored(urls)
    assert after[1] == before[1]
    assert after[2][1] == before[2][0] != after[2][0]

    bad_key = run(*publish, "--store", plain, "--signing-key", str(tmp_path / "nope.key"))
    assert bad_key.returncode == 2
    assert "cannot read signing key" in bad_key.stderr and "nope.key" in bad_key.stderr


def test_cli_clients_add_and_list(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    added = run("clients", "add", "shop-berlin", "--store", store, "--json")
    assert added.returncode == 0, added.stderr
    record: dict[str, Any] = json.loads(added.stdout)
    assert set(record) == {"client_id", "token"}
    assert isinstance(record["client_id"], int) and len(record["token"]) >= 40

    text = run("clients", "add", "shop-paris", env={"MIGSYNC_STORE": store})
    assert text.returncode == 0, text.stderr
    token = text.stdout.splitlines()[-1]
    assert "shown only now" in text.stdout and len(token) >= 40

    async def check() -> list[int | None]:
        async with Store.open(store) as opened:
            found = [await opened.authenticate(t) for t in (record["token"], token)]
        return [c.client_id if c else None for c in found]

    assert asyncio.run(check()) == [record["client_id"], record["client_id"] + 1]

    duplicate = run("clients", "add", "shop-berlin", "--store", store)
    assert duplicate.returncode == 2
    assert (
        duplicate.stderr.strip()
        == f"error: a client named 'shop-berlin' exists already (id {record['client_id']})"
    )

    listed = run("clients", "list", "--store", store, "--json")
    assert listed.returncode == 0, listed.stderr
    clients = json.loads(listed.stdout)["clients"]
    assert [(c["client_id"], c["name"], c["last_seen_at"]) for c in clients] == [
        (record["client_id"], "shop-berlin", None),
        (record["client_id"] + 1, "shop-paris", None),
    ]
    table = run("clients", "list", env={"MIGSYNC_STORE": store})
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["id", "name"]
    assert "shop-berlin" in table.stdout and "shop-paris" in table.stdout
    assert record["token"] not in listed.stdout + table.stdout and token not in listed.stdout + table.stdout


def test_cli_clients_list_needs_an_existing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = run("clients", "list", "--store", f"sqlite:///{missing}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: SQLite store {missing} does not exist"
    assert not missing.exists()
    no_store = subprocess.run(
        [MIGSYNC, "clients", "list"],
        capture_output=True,
        text=True,
        env={k: v for k, v in migsync_env().items() if k != "MIGSYNC_STORE"},
        timeout=60,
        check=False,
    )
    assert no_store.returncode == 2 and "--store" in no_store.stderr
    assert os.listdir(tmp_path) == []


async def test_a_layout_4_store_with_whole_number_versions_upgrades_in_place(
    urls: Urls, key_path: Path
) -> None:
    """A store as migsync's layout 4 wrote it (every version column BIGINT) keeps its data, keyed."""
    from sqlalchemy import BigInteger, MetaData
    from sqlalchemy.ext.asyncio import create_async_engine

    from migsync.server import tables

    old = MetaData()
    for table in tables.metadata.sorted_tables:
        copy = table.to_metadata(old)
        for column in copy.columns:
            if isinstance(column.type, tables.VersionKey):
                column.type = BigInteger()
    key = load_private_key(key_path)
    async with Store.open(urls.store) as store:  # only to publish and sign the content as migsync does
        await store.publish([V1, V2], key)
        published = {m.version.parts[0]: m for m in await store.migrations()}
    engine = create_async_engine(urls.store)
    async with engine.begin() as conn:
        await conn.run_sync(tables.metadata.drop_all)
        await conn.run_sync(old.create_all)
        for statement in STORE_DOWNGRADES[5]:  # what layout 5 added: layout 4 had none of it
            await conn.exec_driver_sql(statement)
        t = old.tables
        await conn.execute(t["store_meta"].insert(), [{"key": "schema_version", "value": "4"}])
        await conn.execute(
            t["store_migrations"].insert(),
            [
                {
                    "version": v,
                    "name": m.name,
                    "content": m.migration.canonical_content(),
                    "checksum": m.checksum,
                    "signature": m.signature,
                    "signed_by": m.signed_by,
                    "published_at": 1.0,
                }
                for v, m in published.items()
            ],
        )
        await conn.execute(
            t["store_clients"].insert(),
            [{"id": 1, "name": "a", "token_hash": "0" * 64, "created_at": 1.0, "reported_version": 2}],
        )
        for version, migration_ in ((1, V1), (2, V2)):
            await conn.execute(
                t["store_client_status"].insert().values(
                    client_id=1, version=version, applied=True, attempts=1, checksum=migration_.checksum,
                    updated_at=1.0, dead=False,
                )
            )  # fmt: skip
        await conn.execute(
            t["store_inbox"].insert().values(
                client_id=1, change_id="c1", entity="todo", entity_id="1", operation="insert", data="null",
                schema_version=2, client_timestamp=1.0, received_at=1.0,
            )
        )  # fmt: skip
        await conn.execute(
            t["store_actions"].insert().values(
                client_id=1, action="revert", version=2, requested_by="admin", requested_at=1.0,
                state="done", updated_at=1.0,
            )
        )  # fmt: skip
    await engine.dispose()
    async with Store.open(urls.store, create=False) as store:
        [entry] = await store.fleet()
        assert entry.applied == (1, 2) and entry.pending == () and entry.client.reported_version == 2
        [change] = await store.inbox()
        assert change.schema_version == 2
        [action] = await store.actions(1)
        assert action.version == 2
        assert [m.version for m in await store.migrations()] == [1, 2]
    assert await aquery(urls.raw, "SELECT version FROM store_client_status ORDER BY version") == [
        ("011",),
        ("012",),
    ]
    assert await aquery(urls.raw, "SELECT value FROM store_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
