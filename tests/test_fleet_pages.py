"""The fleet a page at a time (``Store.fleet_page``, ``GET /api/clients``), clients registered in
bulk (``Store.add_clients``, ``POST /api/clients``) and a request for every client as one
statement: real SQLite and Postgres stores, a real server on loopback."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_migrations
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import ServerThread
from sqlalchemy import event

from migsync import load_directory
from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.server import StatusReport, Store
from migsync.server.app import create_app
from migsync.server.engine import PoolOptions
from migsync.server.fleet import STATES, FleetFilter, decode_cursor, encode_cursor, state_of
from migsync.server.records import FleetEntry

ADMIN = "admin-token"
OTHER = "e" * 64


async def published(store: Store, tmp_path: Path, count: int) -> dict[int, str]:
    folder = write_migrations(
        tmp_path / "migrations",
        {
            f"{v:04d}_t{v}.sql": f"-- migrate:up\nCREATE TABLE t{v} (x INTEGER);\n"
            for v in range(1, count + 1)
        },
    )
    await store.publish(load_directory(folder), Ed25519PrivateKey.generate())
    return {int(m.version.text): m.checksum for m in await store.migrations()}


async def varied_fleet(store: Store, sums: dict[int, str], n: int, seed: int = 7) -> list[int]:
    """``n`` clients in every state: applied all, some, none, failing, dead, drifted; some seen."""
    rng = random.Random(seed)
    added = await store.add_clients([f"shop-{i:05d}{'-Berlin' if i % 5 == 0 else ''}" for i in range(n)])
    ids = [client_id for client_id, _, _ in added]
    for client_id in ids:
        kind = rng.randrange(6)
        reports: list[StatusReport] = []
        if kind == 1:
            reports = [StatusReport(v, True, None, 1, sums[v]) for v in sums]
        elif kind == 2:
            reports = [StatusReport(1, True, None, 1, sums[1])]
        elif kind == 3:
            reports = [StatusReport(1, True, None, 1, sums[1]), StatusReport(2, False, "boom", 2, sums[2])]
        elif kind == 4:
            reports = [StatusReport(1, True, None, 1, OTHER)]
        elif kind == 5:
            reports = [StatusReport(v, True, None, 1, sums[v]) for v in sums]
            reports[-1] = StatusReport(len(sums), False, "dead", 5, sums[len(sums)], dead=True)
        if reports:
            await store.report(client_id, reports)
        if rng.random() < 0.5:
            await store.touch(client_id, 1_000.0 + rng.randrange(100))
    return ids


def matches(entry: FleetEntry, which: FleetFilter, now: float) -> bool:
    """``which`` decided in Python, from the old full read of the fleet."""
    client = entry.client
    return (
        (which.state is None or state_of(entry) == which.state)
        and (not which.failing or bool(entry.failed))
        and (which.applied is None or which.applied in entry.applied)
        and (which.lacking is None or which.lacking in entry.pending)
        and (which.stale is None or client.last_seen_at is None or client.last_seen_at < now - which.stale)
        and (which.name is None or which.name.lower() in client.name.lower())
    )


async def walk(store: Store, which: FleetFilter, limit: int) -> list[FleetEntry]:
    seen: list[FleetEntry] = []
    cursor = None
    while True:
        page = await store.fleet_page(which, limit=limit, cursor=cursor, counts=False)
        seen += page.entries
        cursor = page.next_cursor
        if cursor is None:
            return seen


@pytest.fixture
async def store(any_store: str) -> AsyncIterator[Store]:
    async with Store.open(any_store) as opened:
        yield opened


async def test_filters_and_counts_agree_with_the_full_read(store: Store, tmp_path: Path) -> None:
    sums = await published(store, tmp_path, 3)
    await varied_fleet(store, sums, 240)
    everything = await store.fleet()
    now = 1_050.0
    filters = [
        FleetFilter(),
        *(FleetFilter(state=s) for s in STATES),
        FleetFilter(failing=True),
        FleetFilter(applied=Version.parse("1")),
        FleetFilter(applied=Version.parse("3")),
        FleetFilter(lacking=Version.parse("2")),
        FleetFilter(lacking=Version.parse("9")),  # not published: nobody lacks it
        FleetFilter(stale=0),
        FleetFilter(stale=20),
        FleetFilter(name="berlin"),
        FleetFilter(name="%"),  # a LIKE wildcard is text like any other
        FleetFilter(state="pending", name="BERLIN", stale=20),
        FleetFilter(state="ok", applied=Version.parse("3")),
    ]
    assert {state_of(e) for e in everything} == set(STATES), "the fleet has every state"
    for which in filters:
        expected = [e for e in everything if matches(e, which, now)]
        page = await store.fleet_page(which, limit=1000, now=now)
        assert [e.client.client_id for e in page.entries] == [e.client.client_id for e in expected], which
        assert page.entries == tuple(expected), "a page's entries are the full read's"
        assert page.total == len(expected), which
        without_state = attrs_evolve(which, state=None)
        assert page.counts == {
            s: sum(1 for e in everything if matches(e, without_state, now) and state_of(e) == s)
            for s in STATES
        }, which
        assert page.next_cursor is None


def attrs_evolve(which: FleetFilter, **changes: Any) -> FleetFilter:
    import attrs

    return attrs.evolve(which, **changes)


async def test_a_walk_sees_every_client_once_while_others_register(store: Store, tmp_path: Path) -> None:
    sums = await published(store, tmp_path, 2)
    before = await varied_fleet(store, sums, 90)
    seen: list[int] = []
    late = itertools.count()

    async def register_meanwhile() -> None:
        # On connections of their own, while the walk reads: 60 clients, alone and in batches.
        for _ in range(20):
            await store.add_client(f"busy-{next(late)}")
            await store.add_clients([f"busy-{next(late)}", f"busy-{next(late)}"])

    async def walk_all() -> None:
        cursor = None
        while True:
            page = await store.fleet_page(limit=7, cursor=cursor)
            seen.extend(e.client.client_id for e in page.entries)
            # And clients registered between pages, one by one and in a batch.
            await store.add_client(f"late-{next(late)}")
            await store.add_clients([f"late-{next(late)}", f"late-{next(late)}"])
            cursor = page.next_cursor
            if cursor is None:
                return

    await asyncio.gather(register_meanwhile(), walk_all())
    assert len(seen) == len(set(seen)), "no client twice"
    assert seen == sorted(seen)
    assert set(before) <= set(seen), "every client that was there when the walk began"
    assert len(seen) < len(await store.clients()), "the walk ended although clients kept coming"
    # A filtered walk, in pages of 3, is the filter's whole answer.
    which = FleetFilter(state="pending")
    expected = [e for e in await store.fleet() if state_of(e) == "pending"]
    assert [e.client.client_id for e in await walk(store, which, 3)] == [e.client.client_id for e in expected]


async def test_bad_cursors_and_limits_are_refused(store: Store) -> None:
    assert decode_cursor(encode_cursor(42)) == 42
    for bad in ("", "nope", encode_cursor(1)[:-1] + "!", "YzE6LTE"):  # "c1:-1"
        with pytest.raises(ConfigError, match="is not one this server gave out"):
            await store.fleet_page(cursor=bad)
    for limit in (0, 1001):
        with pytest.raises(ConfigError, match="limit must be from 1 to 1000"):
            await store.fleet_page(limit=limit)
    with pytest.raises(ConfigError, match="unknown state 'fine'"):
        FleetFilter(state="fine")


async def test_bulk_add_is_all_or_nothing(store: Store) -> None:
    added = await store.add_clients(["a", " b ", "c"], [None, {"region": "eu"}, None])
    assert [(n, len(t)) for _, n, t in added] == [("a", 43), ("b", 43), ("c", 43)]
    for client_id, _, token in added:
        client = await store.authenticate(token)
        assert client is not None and client.client_id == client_id
    with pytest.raises(ConfigError, match="client 'x' is given twice"):
        await store.add_clients(["x", "y", "x"])
    with pytest.raises(ConfigError, match=r"list line 2: a client named 'b' exists already"):
        await store.add_clients(["new", "b"], sources=["list line 1", "list line 2"])
    with pytest.raises(ConfigError, match="must not be empty"):
        await store.add_clients(["fine", "  "])
    assert [c.name for c in await store.clients()] == ["a", "b", "c"], "nothing of a refused batch"
    many = await store.add_clients([f"bulk-{i}" for i in range(2500)])  # three batches
    assert [n for _, n, _ in many] == [f"bulk-{i}" for i in range(2500)]
    assert len({i for i, _, _ in many}) == 2500
    assert len(await store.clients()) == 2503


class Statements:
    """Every statement the store's engine sends, counted (executemany counts once)."""

    def __init__(self, store: Store) -> None:
        self.seen: list[str] = []
        self._engine = store._engine.sync_engine

    def __enter__(self) -> Statements:
        event.listen(self._engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.seen.append(" ".join(statement.split()[:3]).upper())  # e.g. INSERT INTO STORE_ACTIONS


async def test_a_request_for_every_client_is_a_few_statements(store: Store, tmp_path: Path) -> None:
    sums = await published(store, tmp_path, 2)
    ids = [i for i, _, _ in await store.add_clients([f"c{i}" for i in range(3000)])]
    applied_2 = set(ids[::3])
    for client_id in ids:
        done = [StatusReport(1, True, None, 1, sums[1])]
        if client_id in applied_2:
            done.append(StatusReport(2, True, None, 1, sums[2]))
        else:
            done.append(StatusReport(2, False, "boom", 1, sums[2]))
        await store.report(client_id, done)
    # An earlier request to a few clients, still pending: the new one supersedes it.
    early = await store.request_action("reapply", Version.parse(2), ids[1:4], "ada")
    before = {c.client_id: c for c in await store.clients()}

    with Statements(store) as revert_all:
        records = await store.request_action("revert", Version.parse(2), None, "ada")
    assert sorted(r.client_id for r in records) == sorted(applied_2)
    assert all(r.state == "pending" and r.action == "revert" and r.version == 2 for r in records)
    assert {r.client_name for r in records} == {f"c{ids.index(i)}" for i in applied_2}
    with Statements(store) as reapply_all:
        again = await store.request_action("reapply", Version.parse(2), None, "bob")
    assert sorted(r.client_id for r in again) == sorted(set(ids) - applied_2)
    # However many clients: a fixed number of statements (no insert and update per client; the
    # clients' rows locked in order, and the change counter that tells other server processes).
    assert len(revert_all.seen) == len(reapply_all.seen) <= 10, revert_all.seen
    assert revert_all.seen.count("INSERT INTO STORE_ACTIONS") == 1, revert_all.seen

    actions = await store.actions()
    superseded = {a.id: a for a in actions if a.state == "superseded"}
    replaced_by = {r.client_id: r.id for r in (*records, *again)}
    assert sorted(superseded) == sorted(r.id for r in early)
    for record in superseded.values():
        assert record.detail == f"replaced by request {replaced_by[record.client_id]}"
    assert sum(1 for a in actions if a.state == "pending") == 3000, "one pending request per client"
    after = {c.client_id: c for c in await store.clients()}
    # Each client's ETag moved: status_serial is the pending answer's other half.
    states = {c: await store.pending_actions(c) for c in ids[:6]}
    assert all(len(v) == 1 for v in states.values())
    assert before.keys() == after.keys()


async def test_the_api_pages_filters_and_registers(any_store: str, tmp_path: Path) -> None:
    async with Store.open(any_store) as opened:
        sums = await published(opened, tmp_path, 2)
        await varied_fleet(opened, sums, 30)
        everything = await opened.fleet()
    server = ServerThread(lambda: create_app(any_store, admin_token=ADMIN, panel=False, appliers=[]))
    server.start()
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=server.url, headers=admin, timeout=30) as http:
            first = (await http.get("/api/clients", params={"limit": 4})).json()
            assert [c["client_id"] for c in first["clients"]] == [e.client.client_id for e in everything[:4]]
            assert first["total"] == 30 and sum(first["counts"].values()) == 30
            walked, cursor = [], None
            while True:
                params: dict[str, Any] = {"limit": 4, "state": "failing"}
                if cursor:
                    params["cursor"] = cursor
                body = (await http.get("/api/clients", params=params)).json()
                walked += [c["client_id"] for c in body["clients"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert walked == [e.client.client_id for e in everything if state_of(e) == "failing"]
            assert body["total"] == len(walked)
            uncounted = (await http.get("/api/clients", params={"limit": 4, "counts": "0"})).json()
            assert uncounted["clients"] == first["clients"]
            assert uncounted["total"] == 0 and set(uncounted["counts"].values()) == {0}
            for bad, error in (
                ({"state": "fine"}, "state must be one of ok, failing, pending, drift"),
                ({"cursor": "x"}, "is not one this server gave out"),
                ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
                ({"applied": "v1"}, "applied must be a version"),
                ({"pages": "2"}, "unknown query parameter 'pages'"),
            ):
                refused = await http.get("/api/clients", params=bad)
                assert refused.status_code == 422 and error in refused.json()["error"], refused.text

            made = await http.post(
                "/api/clients", json={"clients": [{"name": "api-1"}, {"name": "api-2", "labels": {"k": "v"}}]}
            )
            assert made.status_code == 201, made.text
            tokens = made.json()["clients"]
            assert [c["name"] for c in tokens] == ["api-1", "api-2"]
            for bad_body, error in (
                ({"clients": [{"name": "api-3"}, {"name": "api-1"}]}, "clients[1]: a client named 'api-1'"),
                ({"clients": [{"name": "z"}, {"name": "z"}]}, "clients[1]: client 'z' is listed twice"),
                ({"clients": [{"name": "y", "colour": "red"}]}, "colour"),
                ({"clients": [{"name": "y", "labels": {"k": 1}}]}, "labels must be an object of text"),
            ):
                refused = await http.post("/api/clients", json=bad_body)
                assert refused.status_code == 422 and error in refused.json()["error"], refused.text
            names = [
                c["name"] for c in (await http.get("/api/clients", params={"q": "api-"})).json()["clients"]
            ]
            assert names == ["api-1", "api-2"], "nothing of a refused batch"
        async with Store.open(any_store, create=False) as opened:
            client = await opened.authenticate(tokens[1]["token"])
            assert client is not None and client.client_id == tokens[1]["client_id"]
    finally:
        server.stop()


async def test_the_pool_of_a_postgres_store_is_sized_as_asked(pg_url: str) -> None:
    async with Store.open(pg_url, pool=PoolOptions(size=3, overflow=2, timeout=5)) as store:
        pool = store._engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 2, 5)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="pool size must be >= 1"):
        PoolOptions(size=0)
