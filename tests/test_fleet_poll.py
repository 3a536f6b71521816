"""The poll path for a fleet: server processes that read only what changed, one poll per change.

A process reads the clients whose ``change_seq`` moved since the change it saw last (never the
whole fleet), keeps a bounded number of clients in memory, answers a report with the client's
new ETag (so the next poll is a 304), and writes seen marks in one ordered statement that two
processes can run at once without a deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from clocks import SteppedClock, eventually
from dbtools import aquery, client_headers, downgrade_store
from servers import ServerThread, serve_process
from sqlalchemy import event, inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.sql.base import Executable
from test_server_api import ADMIN, V1, V2, api_on, applied
from test_server_api import sqlite_store as sqlite_store

from migsync.client.sync import Syncer
from migsync.core.client import Client
from migsync.core.errors import ConfigError
from migsync.protocol.signing import load_private_key, load_public_keys, write_keypair
from migsync.protocol.wire import HELD_ETAG_HEADER, StatusReport
from migsync.server import Store, rollout_store, serials, status
from migsync.server import tables as t
from migsync.server.client_cache import DEFAULT_CACHE_CLIENTS, ClientCache
from migsync.server.engine import store_url
from migsync.server.prepared import Prepared
from migsync.server.records import ClientRecord, ClientState
from migsync.server.tables import SCHEMA_VERSION
from migsync.transports.http import HttpTransport

# -- change stamps ---------------------------------------------------------------------------------


async def test_a_process_reads_only_the_clients_changed_since_its_last_change(
    any_store: str, key_path: Path
) -> None:
    async with Store.open(any_store) as store:
        await store.publish([V1, V2], load_private_key(key_path))
        ids = [(await store.add_client(f"c{i}"))[0] for i in range(30)]
        seen = await store.change_horizon()
        nothing = await store.changes_since(seen, 100)
        assert nothing.states == []
        await store.report(ids[7], [StatusReport(1, True, None, 1, V1.checksum)])
        await store.report(ids[3], [StatusReport(1, True, None, 1, V1.checksum)])
        # A report equal to what is recorded changes nothing, and is no change.
        await store.report(ids[7], [StatusReport(1, True, None, 1, V1.checksum)])
        changes = await store.changes_since(seen, 100)
        assert changes.states is not None
        assert [state.client.client_id for _, state in changes.states] == [ids[7], ids[3]]
        assert (await store.changes_since(changes.seen, 100)).states == []
        # A request to every client is one change of each.
        await store.request_action("revert", V1.version, None, "alice")
        after = await store.changes_since(changes.seen, 100)
        assert after.states is not None and {s.client.client_id for _, s in after.states} == {ids[7], ids[3]}
        assert (await store.changes_since(after.seen, 100)).states == []
        # More changes than the reader holds: it is told to start afresh, not handed the fleet,
        # and where it stands then is past them.
        too_many = await store.changes_since(seen, 1)
        assert too_many.states is None
        assert (await store.changes_since(too_many.seen, 100)).states == []


async def test_a_change_committed_after_a_later_one_was_read_is_read_next_time(
    pg_url: str, key_path: Path
) -> None:
    """Postgres stamps a change with its transaction's id: a transaction that began first, and so
    has the lower id, can commit after a reader saw a higher one. It is read all the same."""
    async with Store.open(pg_url) as store:
        await store.publish([V1], load_private_key(key_path))
        early, late = [(await store.add_client(name))[0] for name in ("early", "late")]
        seen = await store.change_horizon()
        engine = create_async_engine(store_url(pg_url))
        try:
            async with engine.connect() as slow, slow.begin():
                await slow.execute(text("SELECT pg_current_xact_id()"))  # it began first
                await store.report(late, [StatusReport(1, True, None, 1, V1.checksum)])
                read = await store.changes_since(seen, 100)
                assert read.states is not None and [s.client.client_id for _, s in read.states] == [late]
                await slow.execute(
                    update(t.store_clients)
                    .where(t.store_clients.c.id == early)
                    .values(status_serial=t.store_clients.c.status_serial + 1)
                )
                await serials.stamp_change(slow, [early])
        finally:
            await engine.dispose()
        stamps = dict(await aquery(pg_url, "SELECT name, change_seq FROM store_clients"))
        assert stamps["early"] < stamps["late"]  # committed last, numbered first
        after = await store.changes_since(read.seen, 100)
        assert after.states is not None and [s.client.client_id for _, s in after.states] == [early]
        assert (await store.changes_since(after.seen, 100)).states == []


async def test_reports_of_two_clients_commit_without_waiting_for_each_other(
    pg_url: str, key_path: Path
) -> None:
    """No row of the store is shared by two reports: one held open does not hold up another
    (a change counter in one row did: every report of every process queued on it; and so did
    a status event past retention, which every report deletes)."""
    async with Store.open(pg_url) as store:
        await store.publish([V1], load_private_key(key_path))
        one, two = [(await store.add_client(name))[0] for name in ("one", "two")]
        await aquery(
            pg_url,
            "INSERT INTO store_status_events (client_id, version, state, at) "
            f"VALUES ({one}, '{V1.version.key}', 'applied', 0)",  # 1970: long past retention
        )
        seen = await store.change_horizon()
        engine = create_async_engine(store_url(pg_url))
        try:
            async with engine.connect() as slow, slow.begin():
                reports = [StatusReport(1, True, None, 1, V1.checksum)]
                held = await status.report(slow, one, reports)
                assert held.recorded
                await rollout_store.after_report(slow, one, reports, held.recorded, store.now())
                # A bound for a loaded machine; waiting on the held report would take it all.
                other = await asyncio.wait_for(
                    store.report(two, [StatusReport(1, True, None, 1, V1.checksum)]), 30
                )
                assert other.recorded
        finally:
            await engine.dispose()
        changes = await store.changes_since(seen, 100)
        assert changes.states is not None and {s.client.client_id for _, s in changes.states} == {one, two}
        assert await aquery(pg_url, "SELECT count(*) FROM store_status_events WHERE at = 0") == [(0,)]


async def test_reports_wake_no_long_poll_but_requests_and_publishes_do(pg_url: str, key_path: Path) -> None:
    """A report moves its own client's ETag only, and that client is not waiting: it notifies
    nobody (a notifying commit waits on a lock of the whole cluster)."""
    async with Store.open(pg_url) as store:
        await store.publish([V1], load_private_key(key_path))
        client_id, _ = await store.add_client("a")
        heard: list[str] = []
        listener = await asyncpg.connect(pg_url)
        try:
            await listener.add_listener(serials.CHANNEL, lambda *args: heard.append(args[2]))

            async def notified() -> int:
                # The listener's server sends what it was told before it answers a query.
                await listener.fetchval("SELECT 1")
                await asyncio.sleep(0)
                count = len(heard)
                heard.clear()
                return count

            await store.report(client_id, [StatusReport(1, True, None, 1, V1.checksum)])
            await store.report(client_id, [StatusReport(1, True, None, 2, V1.checksum)])
            assert await notified() == 0
            await store.request_action("revert", V1.version, None, "alice")
            assert await notified() == 1
            await store.label_client("a", {"group": "canary"})
            assert await notified() == 1
            await store.publish([V1, V2], load_private_key(key_path))
            assert await notified() == 1
        finally:
            await listener.close()


def test_the_poll_and_report_statements_are_compiled_once() -> None:
    """SQLAlchemy compiles a statement once only if each of its parts has a cache key: one
    without (the change stamp had none) is compiled again at every report, in the server's CPU."""
    built = {
        k: v.statement if isinstance(v, Prepared) else v
        for k, v in vars(status).items()
        if k.isupper() and isinstance(v, Executable | Prepared)
    }
    assert {"_REPORTED_CHANGE", "_CHANGED_PG", "_CHANGED", "_STATE_BY_DIGEST"} <= set(built)
    assert [name for name, s in built.items() if s._generate_cache_key() is None] == []


async def test_a_schema_5_store_gets_the_change_counter(any_store: str) -> None:
    async with Store.open(any_store) as store:
        client_id, _ = await store.add_client("a")
    await downgrade_store(any_store, 5)
    async with Store.open(any_store, create=False) as store:
        await store.report(client_id, [])
        assert (await store.generation())[1] == 0
    assert await aquery(any_store, "SELECT value FROM store_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    engine = create_async_engine(store_url(any_store))
    try:
        async with engine.connect() as conn:
            columns, indexes = await conn.run_sync(
                lambda sync: (
                    {c["name"] for c in inspect(sync).get_columns("store_clients")},
                    {i["name"]: i["column_names"] for i in inspect(sync).get_indexes("store_clients")},
                )
            )
    finally:
        await engine.dispose()
    assert "change_seq" in columns
    assert indexes["store_clients_change_seq"] == ["change_seq"]


async def test_a_layout_9_postgres_store_sets_its_counter_stamps_back(pg_url: str) -> None:
    """Layout 9 stamped with a counter, whose numbers may be above every transaction id: left
    as they were, a reader would take them for changes beyond where it stands, at every read."""
    async with Store.open(pg_url) as store:
        await store.add_client("a")
    await downgrade_store(pg_url, 9)
    await aquery(pg_url, "UPDATE store_clients SET change_seq = 9000000000000")
    await aquery(pg_url, "INSERT INTO store_meta (key, value) VALUES ('change_seq', '9000000000000')")
    async with Store.open(pg_url, create=False) as store:
        assert (await store.changes_since(await store.change_horizon(), 100)).states == []
    assert await aquery(pg_url, "SELECT change_seq FROM store_clients") == [(0,)]
    assert await aquery(pg_url, "SELECT value FROM store_meta WHERE key = 'change_seq'") == []


# -- one poll per change -------------------------------------------------------------------------


async def test_a_reports_answer_carries_the_etag_of_the_next_poll(any_store: str, key_path: Path) -> None:
    async with api_on(any_store, key_path) as api:
        await api.publish(V1, V2)
        me = await api.client("a")
        etag = (await api.pending(me)).headers["etag"]
        answer = await api.http.post(
            "/api/migrations/status",
            headers=me | {HELD_ETAG_HEADER: etag},
            json={"reports": [applied(V1)]},
        )
        assert answer.status_code == 200, answer.text
        new = answer.json()["etag"]
        assert new != etag
        assert (await api.pending(me, new)).status_code == 304
        # The answer it stands for: the one held, less what was reported.
        full = await api.pending(me)
        assert full.headers["etag"] == new
        assert [m["version"] for m in full.json()["migrations"]] == ["2"]
        # The same report again changes nothing: the ETag stays.
        again = await api.http.post(
            "/api/migrations/status", headers=me | {HELD_ETAG_HEADER: new}, json={"reports": [applied(V1)]}
        )
        assert again.json()["etag"] == new
        # Without the header, or with an ETag that is not the client's any more: no etag.
        plain = await api.report(me, {**applied(V2), "applied": False, "error": "x"})
        assert "etag" not in plain.json()
        stale = await api.http.post(
            "/api/migrations/status", headers=me | {HELD_ETAG_HEADER: new}, json={"reports": [applied(V2)]}
        )
        assert stale.status_code == 200 and "etag" not in stale.json()


async def test_a_publish_between_the_poll_and_the_report_is_not_hidden(
    any_store: str, key_path: Path
) -> None:
    async with api_on(any_store, key_path) as api:
        await api.publish(V1)
        me = await api.client("a")
        etag = (await api.pending(me)).headers["etag"]
        await api.publish(V2)  # the client has not seen it
        answer = await api.http.post(
            "/api/migrations/status", headers=me | {HELD_ETAG_HEADER: etag}, json={"reports": [applied(V1)]}
        )
        assert "etag" not in answer.json()
        assert [m["version"] for m in (await api.pending(me, etag)).json()["migrations"]] == ["2"]


async def test_an_answer_to_a_request_carries_the_etag_of_the_next_poll(
    any_store: str, key_path: Path
) -> None:
    async with api_on(any_store, key_path) as api:
        await api.publish(V1)
        me = await api.client("a")
        await api.report(me, applied(V1))
        await api.store.request_action("revert", V1.version, None, "alice")
        offer = await api.pending(me)
        [action] = offer.json()["actions"]
        answer = await api.http.post(
            "/api/actions/results",
            headers=me | {HELD_ETAG_HEADER: offer.headers["etag"]},
            json={"results": [{"id": action["id"], "state": "queued", "detail": None}]},
        )
        assert answer.status_code == 200, answer.text
        assert (await api.pending(me, answer.json()["etag"])).status_code == 304
        assert (await api.pending(me)).json()["actions"] == []


@contextlib.asynccontextmanager
async def _http_server(store_url: str, **options: Any) -> AsyncIterator[ServerThread]:
    from migsync.server.app import create_app

    request_key = options.pop("request_key")
    server = ServerThread(
        lambda: create_app(store_url, admin_token=ADMIN, request_key=request_key, **options)
    )
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_client_keeps_the_etag_its_report_was_answered_with(
    any_store: str, key_path: Path, tmp_path: Path
) -> None:
    """After a sync that applies what it fetched, the next sync's fetch is a 304: one full
    answer per change, not two."""
    write_keypair(tmp_path / "request.key")
    async with Store.open(any_store) as store:
        await store.publish([V1, V2], load_private_key(key_path))
        client_id, token = await store.add_client("a")
    trusted = load_public_keys([key_path.with_name(key_path.name + ".pub")])
    options = {"request_key": load_private_key(tmp_path / "request.key"), "cache_seconds": 60}
    async with _http_server(any_store, **options) as server:
        results = []
        db = f"sqlite:///{tmp_path / 'client.db'}"
        for _ in range(2):
            async with (
                Client.connect(db, sinks=[], backend_options={"create": True}) as client,
                HttpTransport(server.url, client_id=str(client_id), token=token) as transport,
            ):
                results.append(await Syncer(client, transport, trusted).sync())
    first, second = results
    assert first.ok and first.offered == 2 and first.delivered == 2
    assert second.ok and second.offered is None, "the second fetch was answered 304"


# -- a bounded cache -----------------------------------------------------------------------------


async def test_the_cache_holds_at_most_cache_clients_and_a_miss_costs_one_read(
    sqlite_store: str, key_path: Path
) -> None:
    async with api_on(sqlite_store, key_path, cache_seconds=60, cache_clients=2) as api:
        await api.publish(V1)
        tokens = [await api.client(name) for name in ("a", "b", "c")]
        etags = [(await api.pending(me)).headers["etag"] for me in tokens]
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        event.listen(Engine, "before_cursor_execute", count)
        try:
            # b and c were polled last: held, answered from memory.
            assert (await api.pending(tokens[1], etags[1])).status_code == 304
            assert (await api.pending(tokens[2], etags[2])).status_code == 304
            assert statements == []
            # a was dropped to keep two: one indexed read brings it back (and drops b).
            assert (await api.pending(tokens[0], etags[0])).status_code == 304
            reads = [s for s in statements if s != "BEGIN"]
            assert len(reads) == 1 and "token_hash" in reads[0]
            assert (await api.pending(tokens[0], etags[0])).status_code == 304
            assert (await api.pending(tokens[1], etags[1])).status_code == 304
            assert len([s for s in statements if s != "BEGIN"]) == 2
        finally:
            event.remove(Engine, "before_cursor_execute", count)


async def test_a_poll_answered_from_memory_is_the_304_the_full_path_gives(
    sqlite_store: str, key_path: Path
) -> None:
    """A poll whose ETag holds is answered before Starlette's stack (``_Api.not_modified``): the
    same answer as the endpoint's (``?wait=0`` takes the endpoint), and every refusal still the
    endpoint's, in its order."""
    async with api_on(sqlite_store, key_path, cache_seconds=60, failed_auth_limit="3/minute") as api:
        await api.publish(V1)
        me = await api.client("a")
        etag = (await api.pending(me)).headers["etag"]
        fast = await api.pending(me, etag)
        full = await api.http.get("/api/migrations/pending?wait=0", headers=me | {"If-None-Match": etag})
        assert fast.status_code == full.status_code == 304
        assert fast.headers.raw == full.headers.raw and fast.content == full.content == b""
        assert (await api.pending(me, f'W/"x", {etag}')).status_code == 304  # a list, weak: as the endpoint
        assert (await api.pending(me, '"other"')).status_code == 200
        old = me | {"Migsync-Protocol": "1"}
        assert (await api.pending(old, etag)).status_code == 426
        admin = {"Authorization": f"Bearer {ADMIN}", "Migsync-Protocol": "2"}
        assert (await api.pending(admin, etag)).status_code == 403
        # A new app version moves the ETag (what is offered may differ): not a 304.
        moved = await api.pending(me | {"Migsync-App-Version": "2.0"}, etag)
        assert moved.status_code == 200 and moved.headers["etag"] != etag
        etag = moved.headers["etag"]
        assert (await api.pending(me, etag)).status_code == 304
        # An address that sent too many wrong tokens is refused, whatever it sends next.
        for _ in range(3):
            assert (await api.pending(me | {"Authorization": "Bearer wrong"}, etag)).status_code == 401
        assert (await api.pending(me, etag)).status_code == 429


def _state(client_id: int, status_serial: int, seen_at: float = 0.0) -> ClientState:
    return ClientState(ClientRecord(client_id, f"c{client_id}", 0.0, seen_at), 1, status_serial)


def test_the_client_cache_drops_the_least_recently_used_and_keeps_the_newer_state() -> None:
    cache = ClientCache(2)
    cache.put("a", _state(1, 0))
    cache.put("b", _state(2, 0))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", _state(3, 0))
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") is not None
    # An older read of a client arriving late does not undo a newer one: the newer is the one
    # with the higher status serial (a change stamp, a transaction id on Postgres, cannot say).
    cache.put("a", _state(1, 2))
    cache.put("a", _state(1, 1, seen_at=9.0))
    assert cache.get("a") == _state(1, 2)
    cache.changed(1, [("a", _state(1, 1, seen_at=9.0))])
    assert cache.get("a") == _state(1, 2)
    # Changes read from the store update the clients held, and only those.
    cache.changed(3, [("a", _state(1, 3)), ("z", _state(9, 1))])
    assert cache.get("z") is None
    held = cache.get("a")
    assert held is not None and (held.status_serial, held.publish_serial) == (3, 3)
    assert DEFAULT_CACHE_CLIENTS == 200_000  # serve --cache-clients's default says so too
    with pytest.raises(ValueError, match="at least 1"):
        ClientCache(0)


# -- seen marks from several processes --------------------------------------------------------------


async def test_seen_marks_from_two_processes_at_once_neither_deadlock_nor_get_lost(pg_url: str) -> None:
    async with Store.open(pg_url) as setup:
        ids = [(await setup.add_client(f"c{i}"))[0] for i in range(40)]
    async with Store.open(pg_url) as one, Store.open(pg_url) as two:
        for round_ in range(15):
            when = 1000.0 + round_
            # Overlapping sets, handed over in opposite orders: per-row updates in this order
            # deadlocked; one statement locking in id order only waits.
            forward = {i: when for i in ids}
            backward = {i: when + 0.5 for i in reversed(ids)}
            await asyncio.gather(*(store.touch_many(m) for store, m in [(one, forward), (two, backward)] * 3))
            rows = await aquery(pg_url, "SELECT last_seen_at FROM store_clients")
            assert {r[0] for r in rows} == {when + 0.5}, round_


# -- two real server processes on one Postgres store -----------------------------------------------


def _serving(store: str, *args: str) -> contextlib.AbstractContextManager[str]:
    return serve_process(store, *args, admin=ADMIN)


async def test_a_report_through_one_process_is_seen_by_another_through_the_change_counter(
    pg_url: str, key_path: Path
) -> None:
    async with Store.open(pg_url) as store:
        await store.publish([V1, V2], load_private_key(key_path))
        _, token = await store.add_client("a")
        for i in range(20):  # a fleet around it, which neither process reads
            await store.add_client(f"other-{i}")
    me = client_headers(token)
    # --cache-seconds 0: each poll asks the store what changed (a test needs no waiting).
    with (
        _serving(pg_url, "--cache-seconds", "0", "--no-panel") as a,
        _serving(pg_url, "--cache-seconds", "0", "--cache-clients", "5", "--no-panel") as b,
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            offer = await http.get(f"{b}/api/migrations/pending", headers=me)
            assert offer.status_code == 200
            etag = offer.headers["etag"]
            assert (
                await http.get(f"{b}/api/migrations/pending", headers=me | {"If-None-Match": etag})
            ).status_code == 304
            # The report goes to A (round-robin), and its answer carries the new ETag ...
            answer = await http.post(
                f"{a}/api/migrations/status",
                headers=me | {HELD_ETAG_HEADER: etag},
                json={"reports": [applied(V1)]},
            )
            new = answer.json()["etag"]
            # ... which B, holding the client's old state, learns from the change counter: the old
            # ETag gets the new answer, the new one a 304.
            stale = await http.get(f"{b}/api/migrations/pending", headers=me | {"If-None-Match": etag})
            assert stale.status_code == 200 and stale.headers["etag"] == new
            assert [m["version"] for m in stale.json()["migrations"]] == ["2"]
            fresh = await http.get(f"{b}/api/migrations/pending", headers=me | {"If-None-Match": new})
            assert fresh.status_code == 304
            # And a report through B is seen by A.
            answer = await http.post(
                f"{b}/api/migrations/status",
                headers=me | {HELD_ETAG_HEADER: new},
                json={"reports": [applied(V2)]},
            )
            newest = answer.json()["etag"]
            seen = await http.get(f"{a}/api/migrations/pending", headers=me | {"If-None-Match": new})
            assert seen.status_code == 200 and seen.headers["etag"] == newest
            assert seen.json()["migrations"] == []


# -- long polls ------------------------------------------------------------------------------------


async def _long_poll(http: httpx.AsyncClient, me: dict[str, str], etag: str, wait: int) -> httpx.Response:
    return await http.get(f"/api/migrations/pending?wait={wait}", headers=me | {"If-None-Match": etag})


async def _waiting(clock: SteppedClock, polls: int = 1) -> None:
    """Until ``polls`` long polls sleep on the app's clock (the seen marks' flusher is off)."""
    await eventually("the long poll to wait", lambda: len(clock._sleepers) >= polls)


async def test_a_long_poll_answers_304_when_its_wait_ends(sqlite_store: str, key_path: Path) -> None:
    clock = SteppedClock()
    async with api_on(sqlite_store, key_path, seen_flush=0, clock=clock) as api:
        await api.publish(V1)
        me = await api.client("a")
        etag = (await api.pending(me)).headers["etag"]
        poll = asyncio.create_task(
            api.http.get("/api/migrations/pending?wait=30", headers=me | {"If-None-Match": etag})
        )
        await _waiting(clock)
        clock.advance(29)
        await asyncio.sleep(0)  # a turn of the loop: nothing is due yet
        assert not poll.done()
        clock.advance(1)
        answer = await poll
        assert answer.status_code == 304 and answer.headers["etag"] == etag
        # An ETag that is not current, or "*", is answered at once.
        assert (await api.http.get("/api/migrations/pending?wait=30", headers=me)).status_code == 200
        star = await api.http.get("/api/migrations/pending?wait=30", headers=me | {"If-None-Match": "*"})
        assert star.status_code == 304
        too_long = await api.http.get("/api/migrations/pending?wait=61", headers=me)
        assert too_long.status_code == 422 and "wait must be a whole number from 0 to 60" in too_long.text


async def test_a_long_poll_is_woken_by_a_request_made_through_its_process(
    sqlite_store: str, key_path: Path
) -> None:
    clock = SteppedClock()
    async with api_on(sqlite_store, key_path, seen_flush=0, clock=clock, cache_seconds=60) as api:
        await api.publish(V1)
        me = await api.client("a")
        await api.report(me, applied(V1))
        etag = (await api.pending(me)).headers["etag"]
        poll = asyncio.create_task(
            api.http.get("/api/migrations/pending?wait=60", headers=me | {"If-None-Match": etag})
        )
        await _waiting(clock)
        made = await api.http.post(
            "/api/actions",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"action": "revert", "version": "1", "clients": None, "requested_by": "alice"},
        )
        assert made.status_code == 201, made.text
        answer = await asyncio.wait_for(poll, 30)  # a bound for a loaded machine; the clock stands still
        assert answer.status_code == 200 and answer.headers["etag"] != etag
        assert [a["action"] for a in answer.json()["actions"]] == ["revert"]


async def test_a_long_poll_hears_of_a_publish_by_another_process_through_postgres(
    pg_url: str, key_path: Path
) -> None:
    clock = SteppedClock()
    # A cache of 60 s on a clock that stands still: only the store's notification can wake it.
    async with api_on(pg_url, key_path, seen_flush=0, clock=clock, cache_seconds=60) as api:
        await api.publish(V1)
        me = await api.client("a")
        etag = (await api.pending(me)).headers["etag"]
        await api.report(me, applied(V1))
        etag = (await api.pending(me)).headers["etag"]
        poll = asyncio.create_task(
            api.http.get("/api/migrations/pending?wait=60", headers=me | {"If-None-Match": etag})
        )
        await _waiting(clock)
        async with Store.open(pg_url) as other:  # migsync publish, elsewhere
            await other.publish([V2], load_private_key(key_path))
        answer = await asyncio.wait_for(poll, 30)
        assert answer.status_code == 200, answer.text
        assert [m["version"] for m in answer.json()["migrations"]] == ["2"]


async def test_the_http_transport_long_polls(pg_url: str, key_path: Path, tmp_path: Path) -> None:
    write_keypair(tmp_path / "request.key")
    async with Store.open(pg_url) as store:
        await store.publish([V1], load_private_key(key_path))
        client_id, token = await store.add_client("a")
    options = {"request_key": load_private_key(tmp_path / "request.key"), "cache_seconds": 60}
    asked: list[httpx.URL] = []

    async def record(request: httpx.Request) -> None:
        asked.append(request.url)

    async with (
        _http_server(pg_url, **options) as server,
        httpx.AsyncClient(event_hooks={"request": [record]}) as http,
        HttpTransport(
            server.url, client_id=str(client_id), token=token, long_poll=60, http=http
        ) as transport,
    ):
        first = await transport.fetch()
        assert first.migrations is not None and first.etag
        assert "wait" not in asked[-1].params  # without an ETag there is nothing to wait on
        waiting = asyncio.create_task(transport.fetch(first.etag))
        await eventually("the long poll to be sent", lambda: len(asked) == 2)
        assert asked[-1].params["wait"] == "60"
        async with Store.open(pg_url) as other:
            await other.publish([V1, V2], load_private_key(key_path))
        offer = await asyncio.wait_for(waiting, 30)  # held until the publish (or at once, if after it)
        assert offer.migrations is not None
        assert [m.version.text for m in offer.migrations] == ["1", "2"]
    with pytest.raises(ConfigError, match="long_poll must be from 0 to 60"):
        HttpTransport("http://x", token="t", long_poll=61)
