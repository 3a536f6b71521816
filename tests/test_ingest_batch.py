"""The batch path of entity changes: a pushed body decoded into columns (no object per change),
stored with one COPY on Postgres (one multi-row INSERT on SQLite), and applied set-based by the
``tables`` applier (a COPY per run of inserts on Postgres); on SQLite and Postgres stores.

What must hold whatever the path: a batch sent again stores and applies nothing twice, the
order sent is the order stored and applied, and a bad change anywhere refuses the whole batch
with the message the change-by-change check gives."""

from __future__ import annotations

import datetime
import decimal
import uuid
from pathlib import Path
from typing import Any

import pytest
from dbtools import aquery, client_headers, is_sqlite
from test_inbox import api_on, change, errors, prepare, wire

from migsync.protocol.wire import ChangesAck, EntityChange
from migsync.server import Store
from migsync.server.appliers import TablesApplier
from migsync.server.change_batch import ChangeBatch
from migsync.server.validation import InvalidChanges, entity_change_batch, entity_changes

TODO_SQLITE = "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT, done BOOLEAN, qty INTEGER)"
TODO_PG = "CREATE TABLE todo (id BIGINT PRIMARY KEY, title TEXT, done BOOLEAN, qty INTEGER)"


def insert(i: int, *, title: str | None = None, change_id: str | None = None) -> EntityChange:
    data = {"id": i, "title": title or f"item {i}", "done": i % 2 == 0, "qty": i % 7}
    return change(change_id or f"c{i}", entity_id=str(i), data=data)


async def todos(url: str) -> list[tuple[int, str | None, bool | None, int | None]]:
    rows = await aquery(url, "SELECT id, title, done, qty FROM todo ORDER BY id")
    return [(int(i), t, None if d is None else bool(d), q) for i, t, d, q in rows]


# -- decoding -------------------------------------------------------------------------------------


BAD: list[tuple[dict[str, Any], str]] = [
    ({"operation": "merge"}, '.operation must be one of "insert", "update"'),
    ({"timestamp": "now"}, ".timestamp must be a number"),
    ({"data": [1]}, ".data must be an object or null, not a list"),
    ({"schema_version": "1."}, ".schema_version must be null or a version"),
    ({"entity_id": "a\x00b"}, ".entity_id holds a NUL character or an unpaired surrogate"),
    ({"extra": 1}, ": unknown field 'extra'"),
]


@pytest.mark.parametrize("at", [0, 517, 999])
@pytest.mark.parametrize(("bad", "says"), BAD)
def test_a_bad_change_anywhere_refuses_the_batch_naming_it(at: int, bad: dict[str, Any], says: str) -> None:
    items = [wire(id=f"c{i}", entity_id=str(i)) for i in range(1000)]
    items[at].update(bad)
    with pytest.raises(InvalidChanges) as batch:
        entity_change_batch({"changes": items})
    with pytest.raises(InvalidChanges) as records:
        entity_changes({"changes": items})
    assert str(batch.value) == str(records.value)
    assert str(batch.value).startswith(f"changes[{at}]{says}"), str(batch.value)


def test_an_id_sent_twice_anywhere_names_both() -> None:
    items = [wire(id=f"c{i}") for i in range(1000)]
    items[998]["id"] = "c3"
    with pytest.raises(InvalidChanges, match=r'^changes\[998\]: id "c3" is sent twice \(see changes\[3\]\)$'):
        entity_change_batch({"changes": items})


def test_the_columns_hold_what_the_records_hold() -> None:
    items = [
        wire(id="a", data={"x": [1, {"y": None}]}, schema_version="1.2"),
        wire(id="b", operation="delete", data=None, schema_version=None, timestamp=3),  # the slow path
        wire(id="c", entity="note", entity_id="k", operation="update", schema_version="0042"),
    ]
    batch = entity_change_batch({"changes": items})
    assert batch.changes() == entity_changes({"changes": items})
    assert batch == ChangeBatch.of(batch.changes())
    assert batch.ids == ["a", "b", "c"] and batch.timestamps == [1_700_000_000.5, 3.0, 1_700_000_000.5]
    fast = entity_change_batch({"changes": [items[0], items[2]]})
    assert fast.schema_versions == [batch.schema_versions[0], batch.schema_versions[2]]
    assert entity_change_batch({"changes": []}) == ChangeBatch()


async def test_a_refused_body_stores_nothing(any_store: str, key_path: Path) -> None:
    await prepare(any_store, key_path)
    async with api_on(any_store, appliers=[]) as (store, http):
        _, token = await store.add_client("a")
        items = [wire(id=f"c{i}", entity_id=str(i)) for i in range(1000)]
        items[999]["operation"] = "merge"
        refused = await http.post("/api/changes", headers=client_headers(token), json={"changes": items})
        assert refused.status_code == 422
        assert refused.json()["error"].startswith('changes[999].operation must be one of "insert"')
        assert await store.inbox() == []


# -- storing and applying ------------------------------------------------------------------------


async def test_a_batch_sent_again_stores_and_applies_nothing_twice(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, TODO_SQLITE if is_sqlite(any_store) else TODO_PG)
    first = [insert(i) for i in range(300)]
    async with Store.open(any_store, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        assert (await store.receive_changes(ids["a"], ChangeBatch.of(first))).accepted == tuple(
            c.id for c in first
        )
        # the answer was lost: the same batch again, then again with 100 new changes after 100 old
        again = await store.receive_changes(ids["a"], ChangeBatch.of(first))
        assert again == ChangesAck((), tuple(c.id for c in first))
        more = [insert(i) for i in range(300, 400)]
        mixed = await store.receive_changes(ids["a"], ChangeBatch.of([*first[200:], *more]))
        assert mixed == ChangesAck(tuple(c.id for c in more), tuple(c.id for c in first[200:]))
        received = await store.inbox()
        assert set((await errors(store)).values()) == {None}
    assert [c.change_id for c in received] == [f"c{i}" for i in range(400)], "once each, in the order sent"
    assert received[7].data == first[7].data
    assert await todos(any_store) == [(i, f"item {i}", i % 2 == 0, i % 7) for i in range(400)]


async def test_changes_to_one_row_apply_in_the_order_sent(any_store: str, key_path: Path) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, TODO_SQLITE if is_sqlite(any_store) else TODO_PG)
    batch = [
        insert(1),
        insert(2),
        change("u1", entity_id="1", operation="update", data={"title": "first"}),
        insert(3),
        change("d1", entity_id="1", operation="delete"),
        insert(4),
        insert(1, title="again", change_id="i1"),  # the row deleted above, inserted again
        change("d2", entity_id="2", operation="delete"),
        change("u1b", entity_id="1", operation="update", data={"done": True}),
        # inserts of other columns than the run before: a run of their own, still in order
        change("5", entity_id="5", data={"title": "no qty"}),
        change("u5", entity_id="5", operation="update", data={"qty": 9}),
        insert(6),
    ]
    async with Store.open(any_store, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        ack = await store.receive_changes(ids["a"], ChangeBatch.of(batch))
        assert ack.accepted == tuple(c.id for c in batch)
        assert set((await errors(store)).values()) == {None}
    assert await todos(any_store) == [
        (1, "again", True, 1),
        (3, "item 3", False, 3),
        (4, "item 4", True, 4),
        (5, "no qty", None, 9),
        (6, "item 6", True, 6),
    ]


async def test_a_failing_insert_in_a_run_keeps_its_error_and_the_others_apply(
    any_store: str, key_path: Path
) -> None:
    ids = await prepare(any_store, key_path, "a")
    await aquery(any_store, TODO_SQLITE if is_sqlite(any_store) else TODO_PG)
    await aquery(any_store, "INSERT INTO todo (id, title) VALUES (50, 'there before')")
    batch = [insert(i) for i in range(100)]  # one run of inserts: one COPY on Postgres, which fails
    async with Store.open(any_store, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        assert len((await store.receive_changes(ids["a"], ChangeBatch.of(batch))).accepted) == 100
        found = await errors(store)
    assert [k for k, v in found.items() if v is not None] == ["c50"]
    assert (found["c50"] or "").startswith("tables: IntegrityError: ")
    rows = await todos(any_store)
    assert len(rows) == 100 and rows[50] == (50, "there before", None, None)


async def test_copy_converts_values_as_the_insert_does(pg_url: str, key_path: Path) -> None:
    """On Postgres a run of inserts is a COPY for columns of plain types, an INSERT for others
    (JSON here): the rows are the same as one INSERT per change would make."""
    ids = await prepare(pg_url, key_path, "a")
    await aquery(
        pg_url,
        "CREATE TABLE kinds (id INTEGER PRIMARY KEY, n NUMERIC(10, 2), at TIMESTAMP, day DATE, "
        "flag BOOLEAN, note TEXT, u UUID, ratio REAL)",
    )
    await aquery(pg_url, "CREATE TABLE docs (id INTEGER PRIMARY KEY, body JSONB)")
    await aquery(pg_url, "CREATE TABLE tags (id INTEGER PRIMARY KEY)")  # rows of one column
    data = {
        "n": "1.50",
        "at": "2024-01-02T03:04:05",
        "day": "2024-01-02",
        "flag": "true",
        "note": 5,
        "u": "12345678-1234-5678-1234-567812345678",
        "ratio": 2,
    }
    batch = [
        change("k1", entity="kinds", entity_id="1", data=data),
        change("k2", entity="kinds", entity_id="2", data={**data, "flag": 0, "note": "x"}),
        change("j1", entity="docs", entity_id="1", data={"body": {"a": [1]}}),
        change("j2", entity="docs", entity_id="2", data={"body": {"b": None}}),
        change("t1", entity="tags", entity_id="1"),
        change("t2", entity="tags", entity_id="2", data={"id": "2"}),
    ]
    async with Store.open(pg_url, appliers=[TablesApplier({"cache_seconds": "0"})]) as store:
        await store.receive_changes(ids["a"], ChangeBatch.of(batch))
        assert set((await errors(store)).values()) == {None}
    want = (
        decimal.Decimal("1.50"),
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.date(2024, 1, 2),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        2.0,
    )
    rows = await aquery(pg_url, "SELECT id, flag, note, n, at, day, u, ratio FROM kinds ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, True, "5", *want), (2, False, "x", *want)]
    assert await aquery(pg_url, "SELECT id FROM tags ORDER BY id") == [(1,), (2,)]
    assert await aquery(pg_url, "SELECT id, body FROM docs ORDER BY id") == [
        (1, '{"a": [1]}'),
        (2, '{"b": null}'),
    ]
