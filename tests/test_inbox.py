"""The server's side of entity changes: the inbox (Store.receive_changes), the change appliers
(the built-in ``tables`` one against SQL injection too), ``POST /api/changes``, changes files in
a drop folder (``migsync import-reports``) and ``migsync inbox``; on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from dbtools import aquery, client_headers, drop_client_file, imported_name, is_sqlite, run, start, stop
from dbtools import table_migration as migration
from servers import free_port
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.errors import ConfigError
from migsync.core.plugins import make_plugins
from migsync.protocol.signing import load_private_key
from migsync.protocol.wire import ChangeRefusal, ChangesAck, EntityChange
from migsync.server import Store
from migsync.server.app import create_app
from migsync.server.appliers import TablesApplier, build_appliers, parse_applier
from migsync.server.import_reports import import_reports
from migsync.server.records import ReceivedChange
from migsync.server.validation import MAX_CHANGES, InvalidChanges, entity_changes
from migsync.transports import dropfiles as files

ADMIN = "admin-secret-token"


V1, V2, V7 = migration(1), migration(2), migration(7)


def change(
    change_id: str,
    entity: str = "todo",
    entity_id: str = "1",
    operation: str = "insert",
    data: Any = None,
    schema_version: int | None = 1,
    timestamp: float = 1_700_000_000.5,
) -> EntityChange:
    return EntityChange(change_id, entity, entity_id, operation, data, schema_version, timestamp)


async def prepare(url: str, key_path: Path, *clients: str) -> dict[str, int]:
    """Publish V1 and V2 to the store at ``url`` and register ``clients``: their ids."""
    async with Store.open(url) as store:
        await store.publish([V1, V2], load_private_key(key_path))
        return {name: (await store.add_client(name))[0] for name in clients}


def summary(changes: Sequence[ReceivedChange]) -> list[tuple[Any, ...]]:
    return [(c.client_id, c.change_id, c.entity, c.entity_id, c.operation, c.data) for c in changes]


# -- the inbox -----------------------------------------------------------------------------------


async def test_received_changes_are_listed_in_the_order_received(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a", "b")
    a, b = ids["a"], ids["b"]
    async with Store.open(any_store) as store:
        first = [
            change("a-1", data={"id": 1, "title": "milk"}),
            change("a-2", operation="update", data={"title": "oat milk", "tags": ["x", {"y": None}]}),
            change("a-3", operation="delete", schema_version=None),
        ]
        ack = await store.receive_changes(a, first)
        assert ack == ChangesAck(("a-1", "a-2", "a-3"), (), None)
        assert await store.receive_changes(b, [change("b-1", entity="note", schema_version=2)]) == ChangesAck(
            ("b-1",)
        )
        assert (await store.receive_changes(a, [change("a-4", entity_id="2")])).accepted == ("a-4",)
        received = await store.inbox()
        assert summary(received) == [
            (a, "a-1", "todo", "1", "insert", {"id": 1, "title": "milk"}),
            (a, "a-2", "todo", "1", "update", {"title": "oat milk", "tags": ["x", {"y": None}]}),
            (a, "a-3", "todo", "1", "delete", None),
            (b, "b-1", "note", "1", "insert", None),
            (a, "a-4", "todo", "2", "insert", None),
        ]
        assert [c.schema_version for c in received] == [1, 1, None, 2, 1]
        assert all(c.client_timestamp == 1_700_000_000.5 and c.apply_error is None for c in received)
        assert all(c.received_at > 1_700_000_000 for c in received)
        assert summary(await store.inbox(limit=2)) == summary(received[3:])
        assert await store.inbox(limit=0) == []
        with pytest.raises(ConfigError, match="limit must be >= 0"):
            await store.inbox(limit=-1)
        (client_a,) = [c for c in await store.clients() if c.client_id == a]
        assert client_a.last_seen_at is not None, "receiving changes marks the client seen"
        with pytest.raises(ConfigError, match="no client has id 999"):
            await store.receive_changes(999, [change("z")])
    assert len(await aquery(any_store, "SELECT * FROM store_inbox")) == 5


async def test_a_batch_sent_twice_is_stored_once(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a", "b")
    batch = [change(f"c{i}", entity_id=str(i), data={"n": i}) for i in range(5)]
    async with Store.open(any_store) as store:
        assert (await store.receive_changes(ids["a"], batch)).accepted == ("c0", "c1", "c2", "c3", "c4")
        # the answer was lost: the client sends the batch again, with one more change
        again = await store.receive_changes(ids["a"], [*batch, change("c5")])
        assert again == ChangesAck(("c5",), ("c0", "c1", "c2", "c3", "c4"), None)
        # the same id twice in one batch is stored once; another client's ids are its own
        twice = await store.receive_changes(ids["a"], [change("d"), change("d", data={"other": 1})])
        assert twice == ChangesAck(("d",), ("d",))
        assert (await store.receive_changes(ids["b"], batch[:2])).accepted == ("c0", "c1")
        received = await store.inbox()
    assert [(c.client_id, c.change_id) for c in received] == [
        *((ids["a"], f"c{i}") for i in range(6)),
        (ids["a"], "d"),
        (ids["b"], "c0"),
        (ids["b"], "c1"),
    ]
    assert received[6].data is None, "the first of two changes with one id is the one stored"


async def test_an_unpublished_schema_version_is_refused_and_the_batch_stops_there(
    any_store: str, key_path: Path
) -> None:
    ids = await prepare(any_store, key_path, "a")
    async with Store.open(any_store) as store:
        await store.receive_changes(ids["a"], [change("old")])
        batch = [change("old"), change("new"), change("future", schema_version=7), change("after")]
        ack = await store.receive_changes(ids["a"], batch)
        assert ack == ChangesAck(
            ("new",),
            ("old",),
            ChangeRefusal("future", "schema version 7 was never published by this server"),
        )
        assert [c.change_id for c in await store.inbox()] == ["old", "new"]
        # the client sends the rest again after version 7 is published
        await store.publish([V7], load_private_key(key_path))
        ack = await store.receive_changes(ids["a"], batch[2:])
        assert ack == ChangesAck(("future", "after"), (), None)
        assert [c.change_id for c in await store.inbox()] == ["old", "new", "future", "after"]
        assert (await store.inbox())[2].schema_version == 7


# -- change appliers ---------------------------------------------------------------------------


TODO_SQLITE = "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT, done BOOLEAN, weight REAL)"
TODO_PG = "CREATE TABLE todo (id BIGINT PRIMARY KEY, title TEXT, done BOOLEAN, weight DOUBLE PRECISION)"


async def todos(url: str) -> list[tuple[Any, ...]]:
    rows = await aquery(url, "SELECT id, title, done, weight FROM todo ORDER BY id")
    return [(int(i), t, None if d is None else bool(d), w) for i, t, d, w in rows]


async def errors(store: Store) -> dict[str, str | None]:
    return {c.change_id: c.apply_error for c in await store.inbox()}


async def test_the_tables_applier_writes_same_named_tables(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, TODO_SQLITE if is_sqlite(any_store) else TODO_PG)
    await aquery(any_store, "CREATE TABLE note (slug TEXT PRIMARY KEY, body TEXT)")
    await aquery(any_store, "CREATE TABLE pair (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b))")
    applier = TablesApplier({"cache_seconds": "0"})
    async with Store.open(any_store, appliers=[applier]) as store:
        ack = await store.receive_changes(
            ids["a"],
            [
                change("1", data={"title": "milk", "done": False, "color": "red"}),  # no such column
                change("2", entity_id="2", data={"id": 2, "title": "eggs", "done": 1, "weight": 6}),
                change("3", operation="update", data={"done": True, "weight": "1.5", "id": 99}),
                change("4", entity_id="3", data={"title": "bread", "done": "false"}),
                change("5", operation="delete", entity_id="2", data=None),
                change("6", entity="ghost", data={"x": 1}),  # no table: skipped
                change("7", entity="note", entity_id="hello", data={"body": "world"}),
                change("8", entity="note", entity_id="hello", operation="update", data={"body": "there"}),
                change("9", entity="pair", entity_id="?", data={"a": 1, "b": "x", "v": "one"}),
                change(
                    "10", entity="pair", entity_id="?", operation="update", data={"a": 1, "b": "x", "v": "2"}
                ),
                change("11", operation="delete", entity_id="42"),  # already gone: nothing to do
                # a composite key as capture writes it: a JSON array, in key order
                change("12", entity="pair", entity_id='[2,"y"]', data={"a": 2, "b": "y", "v": "two"}),
                change("13", entity="pair", entity_id='[2,"y"]', operation="delete"),
            ],
        )
        assert len(ack.accepted) == 13 and ack.refused is None
        assert set((await errors(store)).values()) == {None}
    assert await todos(any_store) == [(1, "milk", True, 1.5), (3, "bread", False, None)]
    assert await aquery(any_store, "SELECT slug, body FROM note") == [("hello", "there")]
    assert await aquery(any_store, "SELECT a, b, v FROM pair") == [(1, "x", "2")]


async def test_the_tables_applier_keeps_what_it_cannot_do_as_the_change_error(
    any_store: str, key_path: Path
) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, TODO_SQLITE if is_sqlite(any_store) else TODO_PG)
    async with Store.open(any_store, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        await store.receive_changes(
            ids["a"],
            [
                change("ok", data={"title": "milk"}),
                change("clash", data={"title": "again"}),  # the same key: the INSERT fails
                change("missing", entity_id="5", operation="update", data={"title": "x"}),
                change("bad-key", entity_id="one", operation="delete"),
                change("bad-value", entity_id="6", data={"weight": "heavy"}),
                change("after", entity_id="7", data={"title": "still applied"}),
            ],
        )
        found = await errors(store)
    assert found["ok"] is None and found["after"] is None
    assert found["clash"] is not None and found["clash"].startswith("tables: IntegrityError: ")
    assert found["missing"] == "tables: LookupError: no row of todo has key '5' to update"
    assert found["bad-key"] is not None and found["bad-key"].startswith("tables: ValueError: column id (")
    assert 'cannot take "one"' in found["bad-key"]
    assert found["bad-value"] is not None and "column weight" in found["bad-value"]
    assert '"heavy"' in found["bad-value"]
    assert await todos(any_store) == [(1, "milk", None, None), (7, "still applied", None, None)]


async def store_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted(map(tuple, await aquery(url, f"SELECT * FROM {table}")), key=repr)
        for table in ("todo", "store_meta", "store_migrations", "store_client_status")
    } | {"clients": await aquery(url, "SELECT id, name, token_hash, status_serial FROM store_clients")}


async def test_the_tables_applier_refuses_unsafe_names_and_the_stores_tables(
    any_store: str, key_path: Path
) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, TODO_SQLITE if is_sqlite(any_store) else TODO_PG)
    await aquery(any_store, "INSERT INTO todo (id, title) VALUES (1, 'milk'), (2, 'eggs')")
    await aquery(any_store, "CREATE TABLE victim (id INTEGER PRIMARY KEY)")
    before = await store_snapshot(any_store)
    attacks = [
        change("semicolon", entity="todo; DROP TABLE victim; --", operation="delete"),
        change("quote", entity='todo" WHERE 1=1; DROP TABLE victim; --', operation="delete"),
        change("space", entity="todo ", operation="delete"),
        change("schema", entity="public.todo", operation="delete"),
        change("store", entity="store_clients", entity_id="1", operation="delete"),
        change("store-upper", entity="STORE_CLIENTS", entity_id="1", operation="delete"),
        change("store-meta", entity="store_meta", operation="update", data={"value": "99"}),
        change("sqlite-master", entity="sqlite_master", operation="insert", data={"name": "x"}),
        # column names: none is a column, so nothing is set (and nothing is run)
        change(
            "columns",
            operation="update",
            data={
                "title\" = 'pwned', \"done": 1,
                "title = 'pwned' --": 1,
                "id) VALUES (99); DROP TABLE victim; --": 5,
                "TITLE": "case matters",
            },
        ),
        # a key that is not a number is bound as a value (or refused), never spliced in
        change("key", operation="delete", entity_id="1 OR 1=1"),
        change("key-quote", operation="delete", entity_id="1'; DROP TABLE victim; --"),
    ]
    async with Store.open(any_store, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        ack = await store.receive_changes(ids["a"], attacks)
        assert ack.accepted == tuple(c.id for c in attacks), "unsafe changes are accepted, just not applied"
        found = await errors(store)
    for name in ("semicolon", "quote", "space", "schema"):
        assert found[name] is not None and "is not a plain identifier: no table is touched" in found[name], (
            name
        )
    for name in ("store", "store-upper", "store-meta", "sqlite-master"):
        assert found[name] is not None and "names a table of the store or the database" in found[name], name
    assert found["columns"] is None
    assert found["key"] is not None and "column id" in found["key"]
    assert found["key-quote"] is not None and "column id" in found["key-quote"]
    after = await store_snapshot(any_store)
    assert after == before
    assert await aquery(any_store, "SELECT count(*) FROM victim") == [(0,)]


async def test_a_text_key_is_bound_not_spliced(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, "CREATE TABLE note (slug TEXT PRIMARY KEY, body TEXT)")
    await aquery(any_store, "INSERT INTO note VALUES ('a', 'x'), ('b', 'y')")
    async with Store.open(any_store, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        await store.receive_changes(
            ids["a"],
            [
                change("1", entity="note", entity_id="a' OR '1'='1", operation="delete"),
                change("2", entity="note", entity_id="x", data={"body": "'); DROP TABLE note; --"}),
            ],
        )
        assert set((await errors(store)).values()) == {None}
    assert await aquery(any_store, "SELECT slug, body FROM note ORDER BY slug") == [
        ("a", "x"),
        ("b", "y"),
        ("x", "'); DROP TABLE note; --"),
    ]


class Recorder:
    """Writes each change's id to table ``seen``, then fails on the changes of entity ``bad``."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def apply(self, change: ReceivedChange, connection: AsyncConnection, dialect: str) -> None:
        self.calls.append((change.change_id, dialect))
        await connection.execute(text("INSERT INTO seen (change_id) VALUES (:id)"), {"id": change.change_id})
        if change.entity == "bad":
            raise RuntimeError(f"cannot take {change.change_id}")


class Breaker:
    """Makes the database refuse (a real SQL error inside the savepoint)."""

    name = "breaker"

    async def apply(self, change: ReceivedChange, connection: AsyncConnection, dialect: str) -> None:
        if change.entity == "worse":
            await connection.execute(text("INSERT INTO no_such_table VALUES (1)"))


async def test_an_applier_that_fails_keeps_its_error_and_the_change(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, "CREATE TABLE seen (change_id TEXT)")
    recorder = Recorder()
    async with Store.open(any_store, appliers=[recorder, Breaker()]) as store:
        ack = await store.receive_changes(
            ids["a"], [change("1"), change("2", entity="bad"), change("3", entity="worse"), change("4")]
        )
        assert ack == ChangesAck(("1", "2", "3", "4"))
        found = await errors(store)
        # a duplicate is not applied again
        assert (await store.receive_changes(ids["a"], [change("1")])).duplicate == ("1",)
    dialect = "sqlite" if is_sqlite(any_store) else "postgresql"
    assert recorder.calls == [("1", dialect), ("2", dialect), ("3", dialect), ("4", dialect)]
    assert found["1"] is None and found["4"] is None
    assert found["2"] == "recorder: RuntimeError: cannot take 2"
    assert found["3"] is not None and found["3"].startswith("breaker: ")
    assert "no_such_table" in found["3"]
    # what the appliers did for a failed change is undone; the rest is kept
    assert sorted(await aquery(any_store, "SELECT change_id FROM seen")) == [("1",), ("4",)]


def test_applier_options_and_the_plugin_registry() -> None:
    assert parse_applier("tables:cache_seconds=0, x = 1") == ("tables", {"cache_seconds": "0", "x": "1"})
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_applier("tables:oops")
    with pytest.raises(ConfigError, match="has no name"):
        parse_applier(":a=1")
    plugins = make_plugins(autoload=False)
    (default,) = build_appliers(plugins, None)
    assert isinstance(default, TablesApplier) and default.cache_seconds == 5
    assert build_appliers(plugins, []) == []
    (configured,) = build_appliers(plugins, ["tables:cache_seconds=0.5"])
    assert isinstance(configured, TablesApplier) and configured.cache_seconds == 0.5
    with pytest.raises(ConfigError, match="unknown change applier 'nope'; valid: tables"):
        build_appliers(plugins, ["nope"])
    with pytest.raises(ConfigError, match="unknown options"):
        TablesApplier({"bogus": "1"})
    with pytest.raises(ConfigError, match="cache_seconds"):
        TablesApplier({"cache_seconds": "-1"})


async def test_the_tables_applier_caches_what_a_table_looks_like(tmp_path: Path, key_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    ids = await prepare(url, key_path, "a")
    async with Store.open(url, appliers=[TablesApplier({"cache_seconds": "3600"})]) as store:
        await store.receive_changes(ids["a"], [change("1", entity="late", data={"id": 1})])
        await aquery(url, "CREATE TABLE late (id INTEGER PRIMARY KEY)")
        await store.receive_changes(ids["a"], [change("2", entity="late", entity_id="2")])
    assert await aquery(url, "SELECT count(*) FROM late") == [(0,)], "the table was not there an hour ago"
    async with Store.open(url, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        await store.receive_changes(ids["a"], [change("3", entity="late", entity_id="3")])
    assert await aquery(url, "SELECT id FROM late") == [(3,)]


class Quoter:
    """Fails with a message that quotes the client's text raw (NUL, an unpaired surrogate)."""

    name = "quoter"

    async def apply(self, change: ReceivedChange, connection: AsyncConnection, dialect: str) -> None:
        raise ValueError(f"cannot take {change.data['text']}")


async def test_text_no_database_stores_raw_is_kept_escaped(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a")
    odd = {"text": "nul\x00 and \ud800 and é"}
    async with Store.open(any_store, appliers=[Quoter()]) as store:
        assert (await store.receive_changes(ids["a"], [change("1", data=odd)])).accepted == ("1",)
        (received,) = await store.inbox()
    assert received.data == odd, "the data comes back exactly as sent"
    assert received.apply_error == "quoter: ValueError: cannot take nul\\x00 and \\ud800 and é"


# -- validation ----------------------------------------------------------------------------------


def wire(**overrides: Any) -> dict[str, Any]:
    item = change("c1").to_json()
    item.update(overrides)
    return item


def test_entity_changes_are_checked_field_by_field() -> None:
    parsed = entity_changes(
        {"changes": [wire(), wire(id="c2", data={"a": [1]}, schema_version=None, timestamp=3)]}
    )
    assert parsed == [change("c1"), change("c2", data={"a": [1]}, schema_version=None, timestamp=3.0)]
    assert isinstance(parsed[1].timestamp, float)
    cases: list[tuple[Any, str]] = [
        ([], 'the body must be an object with one key, "changes"'),
        ({"changes": [], "x": 1}, 'the body must be an object with one key, "changes"'),
        ({"changes": {}}, "changes must be a list, not an object"),
        ({"changes": ["x"]}, "changes[0] must be an object, not a string"),
        ({"changes": [{"id": "a"}]}, "changes[0]: missing 'entity', 'entity_id', 'operation'"),
        ({"changes": [wire(extra=1)]}, "changes[0]: unknown field 'extra'"),
        ({"changes": [wire(id="")]}, 'changes[0].id must be a non-empty string, not ""'),
        ({"changes": [wire(id=5)]}, "changes[0].id must be a non-empty string, not a number"),
        ({"changes": [wire(id="x" * 201)]}, "changes[0].id is 201 characters long; at most 200"),
        ({"changes": [wire(entity=None)]}, "changes[0].entity must be a non-empty string, not null"),
        ({"changes": [wire(entity_id="y" * 201)]}, "changes[0].entity_id is 201 characters long"),
        ({"changes": [wire(), wire()]}, 'changes[1]: id "c1" is sent twice (see changes[0])'),
        ({"changes": [wire(operation="upsert")]}, 'changes[0].operation must be one of "insert", "update"'),
        ({"changes": [wire(data=[1])]}, "changes[0].data must be an object or null, not a list"),
        ({"changes": [wire(data="x")]}, "changes[0].data must be an object or null, not a string"),
        ({"changes": [wire(schema_version=-1)]}, "changes[0].schema_version must be null or a version"),
        ({"changes": [wire(schema_version="1.")]}, "changes[0].schema_version must be null or a version"),
        (
            {"changes": [wire(schema_version="9" * 100)]},
            "changes[0].schema_version must be null or a version",
        ),
        (
            {"changes": [wire(schema_version=True)]},
            "changes[0].schema_version must be null or a version",
        ),
        ({"changes": [wire(id="a\x00b")]}, "changes[0].id holds a NUL character or an unpaired surrogate"),
        ({"changes": [wire(entity="\ud800")]}, "changes[0].entity holds a NUL character or an unpaired"),
        ({"changes": [wire(timestamp="now")]}, "changes[0].timestamp must be a number"),
        ({"changes": [wire(timestamp=False)]}, "changes[0].timestamp must be a number"),
        ({"changes": [wire(timestamp=float("inf"))]}, "changes[0].timestamp must be a number"),
        ({"changes": [wire(id=f"c{i}") for i in range(MAX_CHANGES + 1)]}, "holds 1001 changes; at most 1000"),
    ]
    for body, message in cases:
        with pytest.raises(InvalidChanges) as raised:
            entity_changes(body)
        assert message in str(raised.value), (body, str(raised.value))
    assert len(entity_changes({"changes": [wire(id=f"c{i}") for i in range(1001)]}, max_changes=None)) == 1001


# -- POST /api/changes -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def api_on(url: str, **options: Any) -> AsyncIterator[tuple[Store, httpx.AsyncClient]]:
    """The app on ``url`` with its lifespan running, the store behind it, and a client on it."""
    options.setdefault("cache_seconds", 0)
    app = create_app(url, admin_token=ADMIN, **options)
    async with Store.open(url) as store, app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            yield store, http


async def test_post_changes(any_store: str, key_path: Path) -> None:
    await prepare(any_store, key_path)
    async with api_on(any_store, appliers=[]) as (store, http):
        _, token = await store.add_client("a")
        me = client_headers(token)
        body = {"changes": [wire(id="c1"), wire(id="c2", schema_version=2, data={"title": "x"})]}
        response = await http.post("/api/changes", headers=me, json=body)
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": ["c1", "c2"], "duplicate": [], "refused": None}
        response = await http.post(
            "/api/changes", headers=me, json={"changes": [*body["changes"], wire(id="c3", schema_version=9)]}
        )
        assert response.json() == {
            "accepted": [],
            "duplicate": ["c1", "c2"],
            "refused": {"id": "c3", "reason": "schema version 9 was never published by this server"},
        }
        assert summary(await store.inbox()) == [
            (1, "c1", "todo", "1", "insert", None),
            (1, "c2", "todo", "1", "insert", {"title": "x"}),
        ]
        (client,) = await store.clients()
        assert client.last_seen_at is not None

        assert (await http.post("/api/changes", json=body)).status_code == 401
        unknown = await http.post("/api/changes", headers={"Authorization": "Bearer nope"}, json=body)
        assert unknown.status_code == 401 and unknown.json() == {"error": "unknown token"}
        admin = await http.post("/api/changes", headers={"Authorization": f"Bearer {ADMIN}"}, json=body)
        assert admin.status_code == 403 and "use the client's own token" in admin.json()["error"]
        assert (await http.get("/api/changes", headers=me)).status_code == 405

        bad = {"changes": [wire(id="c4", operation="merge")]}
        refused = await http.post("/api/changes", headers=me, json=bad)
        assert refused.status_code == 422
        assert refused.json()["error"].startswith('changes[0].operation must be one of "insert"')
        too_many = await http.post(
            "/api/changes", headers=me, json={"changes": [wire(id=f"x{i}") for i in range(1001)]}
        )
        assert too_many.status_code == 422 and "at most 1000 per request" in too_many.json()["error"]
        not_json = await http.post("/api/changes", headers=me | {"Content-Type": "text/plain"}, content=b"{}")
        assert not_json.status_code == 415
        broken = await http.post(
            "/api/changes", headers=me | {"Content-Type": "application/json"}, content=b"{"
        )
        assert broken.status_code == 400 and broken.json()["error"].startswith("malformed JSON")
        assert len(await store.inbox()) == 2, "nothing of a refused request is stored"


async def test_post_changes_body_limit_and_default_appliers(tmp_path: Path, key_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    await prepare(url, key_path)
    await aquery(url, "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)")
    # no appliers named: the plugins' default ones (tables) apply the changes
    async with api_on(url, max_changes_body=2000) as (store, http):
        _, token = await store.add_client("a")
        me = client_headers(token)
        ok = await http.post(
            "/api/changes", headers=me, json={"changes": [wire(id="1", data={"title": "t"})]}
        )
        assert ok.status_code == 200, ok.text
        big = {"changes": [wire(id="2", data={"title": "x" * 3000})]}
        too_big = await http.post("/api/changes", headers=me, json=big)
        assert too_big.status_code == 413
    assert await aquery(url, "SELECT id, title FROM todo") == [(1, "t")]


# -- changes files in a drop folder -------------------------------------------------------------


def drop_changes(
    folder: Path, client: str, items: Sequence[EntityChange], at: int, *, client_id: str | None = None
) -> Path:
    """Write a changes file as a client does: ``<folder>/<client>/<at (ms)>-<digest>.json``."""
    return drop_client_file(
        folder, client, files.dump(files.changes_document(client_id or client, items)), at
    )


async def test_import_reports_imports_changes_files_in_order(tmp_path: Path, key_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    ids = await prepare(url, key_path, "ship", "kiosk")
    ship, kiosk = str(ids["ship"]), str(ids["kiosk"])
    changes = tmp_path / "drop" / files.CHANGES_DIR
    first = drop_changes(
        changes, ship, [change("s1"), change("s2", operation="update", data={"t": 1})], at=1000
    )
    second = drop_changes(
        changes, ship, [change("s2"), change("s3"), change("s4", schema_version=7), change("s5")], at=2000
    )
    third = drop_changes(changes, ship, [change("s6")], at=3000)
    other = drop_changes(changes, kiosk, [change("k1")], at=1500)
    stranger = drop_changes(changes, kiosk, [change("x")], at=1600, client_id=ship)
    unknown = drop_changes(changes, "77", [change("u")], at=1000)
    async with Store.open(url, create=False) as store:
        result = await import_reports(store, tmp_path / "drop")
        assert [c.change_id for c in await store.inbox()] == ["s1", "s2", "s3", "k1"], "client by client"
    assert [(i.path, i.accepted, i.duplicate) for i in result.changes_imported] == [
        (first, ("s1", "s2"), ()),
        (other, ("k1",), ()),
    ]
    refused = {r.path: r.reason for r in result.changes_refused}
    assert refused == {
        stranger: f"it holds changes of client {ship!r}, not of {kiosk!r} (its folder)",
        unknown: "no registered client has id '77' (see 'migsync clients list')",
        second: (
            "change 's4' is refused: schema version 7 was never published by this server; "
            "the 2 changes before it are stored, the rest of the file is not"
        ),
        third: f"not read: an older changes file of this client, {second.name}, is not imported "
        "(changes are taken in order)",
    }
    assert result.imported == () and result.refused == (), "the drop folder has no reports"
    assert imported_name(first).exists() and not first.exists() and imported_name(other).exists()
    assert second.exists() and third.exists() and stranger.exists()

    async with Store.open(url, create=False) as store:
        await store.publish([V7], load_private_key(key_path))
        again = await import_reports(store, None, changes=changes)
        assert [c.change_id for c in await store.inbox()] == ["s1", "s2", "s3", "k1", "s4", "s5", "s6"]
    assert [(i.path, i.accepted, i.duplicate) for i in again.changes_imported] == [
        (second, ("s4", "s5"), ("s2", "s3")),
        (third, ("s6",), ()),
    ]
    assert again.changes_already_imported == 2
    assert {r.path for r in again.changes_refused} == {stranger, unknown}


async def test_changes_files_are_read_safely(tmp_path: Path, key_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    ids = await prepare(url, key_path, "ship")
    ship = str(ids["ship"])
    changes = tmp_path / "changes"
    (changes / ship).mkdir(parents=True)
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps(files.changes_document(ship, [change("stolen")])))
    link = changes / ship / "0000000001000-00000000000000aa.json"
    link.symlink_to(outside)
    malformed = changes / ship / "0000000000500-00000000000000bb.json"
    document = files.changes_document(ship, [change("m")])
    document["changes"][0]["operation"] = "drop"
    malformed.write_text(json.dumps(document))
    misnamed = changes / ship / "notes.txt"
    misnamed.write_text("hello")
    async with Store.open(url, create=False) as store:
        result = await import_reports(store, None, changes=changes)
        assert await store.inbox() == []
    refused = {r.path: r.reason for r in result.changes_refused}
    assert refused[malformed].startswith('changes[0].operation must be one of "insert"')
    assert refused[link].startswith("not read: an older changes file of this client")
    assert refused[misnamed] == "not a changes file: changes files are named <milliseconds>-<digest>.json"
    malformed.unlink()
    async with Store.open(url, create=False) as store:
        result = await import_reports(store, None, changes=changes)
        assert await store.inbox() == []
    assert "leads outside" in {r.path: r.reason for r in result.changes_refused}[link]
    with pytest.raises(ConfigError, match="is not a folder of client changes"):
        async with Store.open(url, create=False) as store:
            await import_reports(store, None, changes=tmp_path / "nowhere")


def test_import_reports_command_with_changes(tmp_path: Path, key_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    ids = asyncio.run(prepare(url, key_path, "ship"))
    ship = str(ids["ship"])
    asyncio.run(aquery(url, "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)"))
    drop = tmp_path / "drop"
    good = drop_changes(
        drop / files.CHANGES_DIR, ship, [change("1", data={"title": "from the ship"})], at=1000
    )
    bad = drop_changes(drop / files.CHANGES_DIR, ship, [change("2", schema_version=5)], at=2000)
    result = run("import-reports", "--store", url, "--from", str(drop))
    assert result.returncode == 1, result.stderr
    assert f"imported changes {good}: 1 accepted, 0 stored before" in result.stdout
    assert (
        f"refused {bad}: change '2' is refused: schema version 5 was never published by this server; "
        "the 0 changes before it are stored, the rest of the file is not"
    ) in result.stderr
    assert "imported 1 changes file, refused 1, 0 imported before" in result.stdout
    # the default appliers ran: the store's own todo table has the row
    assert asyncio.run(aquery(url, "SELECT id, title FROM todo")) == [(1, "from the ship")]

    bad.unlink()
    again = run(
        "import-reports", "--store", url, "--changes", str(drop / files.CHANGES_DIR), "--no-apply-changes"
    )
    assert again.returncode == 0, again.stderr
    assert "imported 0 changes files, refused 0, 1 imported before" in again.stdout
    assert "imported 0 files" not in again.stdout, "no reports folder was named"
    neither = run("import-reports", "--store", url)
    assert neither.returncode == 2 and "--from DIR, --changes DIR, or both" in neither.stderr
    both = run(
        "import-reports",
        "--store",
        url,
        "--from",
        str(drop),
        "--apply-changes",
        "tables",
        "--no-apply-changes",
    )
    assert both.returncode == 2 and "exclude each other" in both.stderr
    unknown = run("import-reports", "--store", url, "--from", str(drop), "--apply-changes", "nope")
    assert unknown.returncode == 2 and "unknown change applier 'nope'; valid: tables" in unknown.stderr


# -- migsync inbox ---------------------------------------------------------------------------------


def test_inbox_command(tmp_path: Path, key_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    empty = run("inbox", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert empty.returncode == 2 and "does not exist" in empty.stderr
    ids = asyncio.run(prepare(url, key_path, "ship", "kiosk"))

    async def send() -> None:
        async with Store.open(url) as store:
            await store.receive_changes(
                ids["kiosk"], [change("k1", entity="note", entity_id="n\x1b[2J", data={"a": 1})]
            )
            await store.receive_changes(
                ids["ship"],
                [
                    change("s1", data={"title": "milk", "done": False}, schema_version=2),
                    change("s2", operation="delete", data=None, schema_version=None),
                ],
            )

    nothing = run("inbox", "--store", url)
    assert nothing.returncode == 0 and nothing.stdout == "no changes received\n"
    asyncio.run(send())
    listed = run("inbox", "--store", url, "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert list(document) == ["changes"]
    essential = ("client_id", "entity", "entity_id", "operation", "data", "schema_version")
    assert [{k: c[k] for k in essential} for c in document["changes"]] == [
        {
            "client_id": ids["kiosk"],
            "entity": "note",
            "entity_id": "n\x1b[2J",
            "operation": "insert",
            "data": {"a": 1},
            "schema_version": "1",
        },
        {
            "client_id": ids["ship"],
            "entity": "todo",
            "entity_id": "1",
            "operation": "insert",
            "data": {"title": "milk", "done": False},
            "schema_version": "2",
        },
        {
            "client_id": ids["ship"],
            "entity": "todo",
            "entity_id": "1",
            "operation": "delete",
            "data": None,
            "schema_version": None,
        },
    ]
    first = document["changes"][0]
    assert first["change_id"] == "k1" and first["apply_error"] is None
    assert first["client_timestamp"] == 1_700_000_000.5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["received_at"])

    latest = json.loads(run("inbox", "--store", url, "--json", "--limit", "1").stdout)
    assert [c["operation"] for c in latest["changes"]] == ["delete"]

    table = run("inbox", "--store", url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "received",
        "client",
        "entity",
        "entity",
        "id",
        "operation",
        "schema",
        "data",
        "error",
    ]
    assert len(lines) == 4
    assert "\x1b" not in table.stdout and "n\\u001b[2J" in lines[1], "a client's text cannot move the cursor"
    assert f"{ids['ship']} (ship)" in lines[2] and '{"title":"milk","done":false}' in lines[2]
    assert lines[3].split()[-4:] == ["delete", "-", "null", "-"]


# -- migsync serve --------------------------------------------------------------------------------


def test_serve_refuses_bad_applier_options(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    unknown = run("serve", "--store", store, "--admin-token", ADMIN, "--apply-changes", "nope:x=1")
    assert unknown.returncode == 2 and "unknown change applier 'nope'; valid: tables" in unknown.stderr
    bad = run("serve", "--store", store, "--admin-token", ADMIN, "--apply-changes", "tables:cache_seconds=x")
    assert bad.returncode == 2 and "cache_seconds='x' is not a number" in bad.stderr
    both = run(
        "serve", "--store", store, "--admin-token", ADMIN, "--no-apply-changes", "--apply-changes", "tables"
    )
    assert both.returncode == 2 and "exclude each other" in both.stderr
    assert not (tmp_path / "server.db").exists()


def test_serve_with_no_apply_changes_only_stores_them(tmp_path: Path, key_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    asyncio.run(prepare(url, key_path))
    asyncio.run(aquery(url, "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)"))
    token = json.loads(run("clients", "add", "a", "--store", url, "--json").stdout)["token"]
    port = free_port()
    proc = start("serve", "--store", url, "--port", str(port), "--admin-token", ADMIN, "--no-apply-changes")
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    response = http.post(
                        "/api/changes",
                        headers=client_headers(token),
                        json={"changes": [wire(id="1", data={"title": "milk"})]},
                    )
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "migsync serve did not answer within 30s"
                    time.sleep(0.1)
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": ["1"], "duplicate": [], "refused": None}
    finally:
        stop(proc)
    assert asyncio.run(aquery(url, "SELECT change_id, entity FROM store_inbox")) == [("1", "todo")]
    assert asyncio.run(aquery(url, "SELECT count(*) FROM todo")) == [(0,)], "--no-apply-changes: not applied"


def test_the_inbox_writes_each_data_as_json_dumps_does() -> None:
    """One C encoder per batch (a speed-up): the same text as ``json.dumps`` for every value,
    the circular reference still refused, and the next batch not disturbed by it."""
    from migsync.server.inbox import _json_texts

    values: list[Any] = [
        None,
        {"s": "\u00e9\U0001f600\ud800\n\x00", "big": 2**100, "neg": -0.0, "f": 1.5e-300, "i": float("inf")},
        {"n": {"a": [1, {"b": [[], {}]}], "t": True, "z": False}, "dup": None},
        [1, "x"],
        "text",
        7,
    ]
    assert _json_texts(values) == [json.dumps(v) for v in values]
    loop: dict[str, Any] = {"a": [1]}
    loop["a"].append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        _json_texts([{"ok": 1}, loop])
    with pytest.raises(TypeError, match="not JSON serializable"):
        _json_texts([{"x": object()}])
    assert _json_texts([loop["a"][:1], {"a": [1]}]) == ["[1]", '{"a": [1]}']


async def test_a_batch_that_overtakes_the_one_before_in_this_process_waits_for_it(
    any_store: str, key_path: Path
) -> None:
    """Batch 2 is sent before batch 1 is stored (``Migsync-Changes-After``) and reaches the
    store first. Batch 1 is in flight in this process, so batch 2 waits for it instead of
    being refused, and both are stored in the client's order."""
    from clocks import eventually

    from migsync.protocol.wire import CHANGES_AFTER_HEADER

    await prepare(any_store, key_path)
    app = create_app(any_store, admin_token=ADMIN, cache_seconds=0, appliers=[])
    turns = app._api._batches  # type: ignore[attr-defined]
    async with Store.open(any_store) as store, app.router.lifespan_context(app):
        client_id, token = await store.add_client("a")
        me = client_headers(token)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            first = json.dumps({"changes": [wire(id=f"c{n}") for n in (1, 2, 3)]}).encode()
            second = json.dumps({"changes": [wire(id=f"c{n}") for n in (4, 5, 6)]}).encode()
            reading, release = asyncio.Event(), asyncio.Event()

            async def slow_body() -> AsyncIterator[bytes]:
                yield first[:10]
                reading.set()  # the server reads batch 1's body: it is in flight
                await release.wait()
                yield first[10:]

            one = asyncio.create_task(http.post("/api/changes", headers=me, content=slow_body()))
            await reading.wait()
            two = asyncio.create_task(
                http.post("/api/changes", headers={**me, CHANGES_AFTER_HEADER: "c3"}, content=second)
            )
            # Batch 2 found c3 missing and waits for batch 1, instead of a 409.
            await eventually("batch 2 to wait for batch 1", lambda: turns.waiting.get(client_id) == 1)
            assert not two.done()
            release.set()
            answers = await asyncio.gather(one, two)
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            assert answers[1].json()["accepted"] == ["c4", "c5", "c6"]
            assert [c.change_id for c in await store.inbox()] == ["c1", "c2", "c3", "c4", "c5", "c6"]
            assert turns.waiting == {} and turns._flying == {}
            # With nothing of its client in flight here, a batch that overtook is refused at once.
            third = json.dumps({"changes": [wire(id="c8")]}).encode()
            headers = {**me, CHANGES_AFTER_HEADER: "c7"}
            refused = await http.post("/api/changes", headers=headers, content=third)
            assert refused.status_code == 409 and "not stored yet" in refused.json()["error"]


async def test_a_batch_waits_only_for_batches_before_it_and_not_for_ever() -> None:
    from migsync.server.batch_turns import BatchTurns

    turns = BatchTurns(wait=0.01)
    with turns.arrived(7) as none_before:
        assert none_before == []
        assert not await turns.after(7, none_before)  # nothing in flight before: no wait
        with turns.arrived(7) as before:
            assert len(before) == 1
            # The batch before is still in flight (it is this block's outer one): given up on.
            assert not await turns.after(7, before)
            assert turns.waiting == {}
    assert turns._flying == {}
    # Done by the time it is asked (it committed just after the store said it had not): no
    # wait, and the caller tries once more.
    assert await turns.after(7, before)
