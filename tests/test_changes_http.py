"""Entity changes pushed over HTTP to the real API (uvicorn on a loopback port), SQLite and Postgres stores,
and through a drop folder; read back with ``migsync inbox``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from dbtools import run
from servers import ServerThread

from migsync.client.sync import Syncer
from migsync.core.client import Client
from migsync.protocol.signing import load_private_key, load_public_keys, write_keypair
from migsync.protocol.wire import ChangesAck, EntityChange
from migsync.server import Store
from migsync.server.app import create_app
from migsync.server.export import export
from migsync.server.import_reports import import_reports
from migsync.testing.backend_suite import migration
from migsync.transports.filedrop import FileDropTransport
from migsync.transports.http import HttpTransport

ADMIN = "changes-admin"
TODO = migration(1, "0001_todo", "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)", "DROP TABLE todo")


class Server:
    def __init__(self, store_url: str, tmp_path: Path) -> None:
        self.store_url = store_url
        write_keypair(tmp_path / "key")
        self.key = load_private_key(tmp_path / "key")
        self.trusted = load_public_keys([tmp_path / "key.pub"])
        self.http = ServerThread(lambda: create_app(store_url, admin_token=ADMIN, cache_seconds=0))

    def inbox(self) -> list[dict[str, object]]:
        result = run("inbox", "--store", self.store_url, "--json")
        assert result.returncode == 0, result.stderr
        changes: list[dict[str, object]] = json.loads(result.stdout)["changes"]
        return changes


async def _publish(s: Server) -> None:
    async with Store.open(s.store_url) as store:
        await store.publish([TODO], s.key)


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'server.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Server(str(url), tmp_path)
    asyncio.run(_publish(s))  # a sync fixture: no loop runs yet
    s.http.start()
    try:
        yield s
    finally:
        s.http.stop()


@contextlib.asynccontextmanager
async def _shop(
    server: Server, tmp_path: Path, transport: type[HttpTransport] = HttpTransport
) -> AsyncIterator[tuple[Client, HttpTransport]]:
    """Client "shop", registered on ``server``: its database (made in ``tmp_path``) and its
    ``transport`` to the server."""
    async with Store.open(server.store_url) as store:
        client_id, token = await store.add_client("shop")
    async with (
        Client.connect(
            f"sqlite:///{tmp_path / 'shop.db'}", sinks=[], backend_options={"create": True}
        ) as client,
        transport(server.http.url, client_id=str(client_id), token=token) as http,
    ):
        yield client, http


async def test_changes_reach_the_inbox_in_order_once(server: Server, tmp_path: Path) -> None:
    async with _shop(server, tmp_path) as (client, transport):
        client_id = int(str(transport.client_id))
        async with client.changes() as rec:
            await rec.insert("todo", 1, {"id": 1, "title": "before the schema"})
        syncer = Syncer(client, transport, server.trusted)
        first = await syncer.sync()
        assert first.ok and first.pushed == 1
        async with client.changes() as rec:
            await rec.execute("INSERT INTO todo (id, title) VALUES ($1, $2)", (2, "milk"))
            await rec.insert("todo", 2, {"id": 2, "title": "milk"})
            await rec.delete("todo", 1)
        second = await syncer.sync()
        assert second.ok and second.pushed == 2
        # Sent again as after a lost answer: the server stores each change once.
        rows = await client.backend.fetch("SELECT * FROM entity_changes ORDER BY seq")
        from migsync.client.push import change_of

        again = await transport.push_changes([change_of(r) for r in rows])
        assert again.accepted == () and len(again.duplicate) == 3
    inbox = server.inbox()
    assert [
        (c["client_id"], c["entity"], c["entity_id"], c["operation"], c["schema_version"]) for c in inbox
    ] == [
        (client_id, "todo", "1", "insert", None),
        (client_id, "todo", "2", "insert", "1"),
        (client_id, "todo", "1", "delete", "1"),
    ]
    assert inbox[1]["data"] == {"id": 2, "title": "milk"}


async def test_batches_encoded_ahead_reach_the_inbox_in_order_once(server: Server, tmp_path: Path) -> None:
    """Small batches: each next one is read and encoded while the server stores the one before."""
    sizes: list[int] = []
    ahead: list[str | None] = []

    class Counting(HttpTransport):
        async def _push_changes(
            self, changes: Sequence[EntityChange], after: str | None
        ) -> ChangesAck | None:
            answer = await super()._push_changes(changes, after)
            if answer is not None:  # stored (else sent again)
                sizes.append(len(changes))
                ahead.append(after)
            return answer

    async with _shop(server, tmp_path, Counting) as (client, transport):
        assert (await Syncer(client, transport, server.trusted).sync()).ok
        for n in range(23):
            async with client.changes() as rec:
                await rec.insert("todo", n, {"id": n, "title": f"item {n}"})
        result = await Syncer(client, transport, server.trusted, batch_size=5, send_changes_ahead=True).sync()
        assert result.ok and result.pushed == 23
        left = await client.backend.fetch("SELECT COUNT(*) AS n FROM entity_changes WHERE processed = FALSE")
        assert left[0]["n"] == 0
    assert sizes == [5, 5, 5, 5, 3]
    # The first batch tells the client the server keeps its batches in order; from the next
    # one on, each is sent while the one before is stored, naming that one's last change.
    assert ahead[0] is None and ahead[2:] != [None, None, None]
    assert [c["entity_id"] for c in server.inbox()] == [str(n) for n in range(23)]
    assert server.inbox()[22]["data"] == {"id": 22, "title": "item 22"}


async def test_a_bad_schema_version_is_refused_over_http_and_the_change_is_dead(
    server: Server, tmp_path: Path
) -> None:
    async with _shop(server, tmp_path) as (client, transport):
        syncer = Syncer(client, transport, server.trusted)
        await syncer.sync()
        assert (await client.apply([migration(9, "0009_local", "CREATE TABLE mine (x INTEGER)")])).ok
        async with client.changes() as rec:
            await rec.insert("mine", 1, {"x": 1})
        result = await syncer.sync()
        assert result.changes is not None and result.changes.failure is not None
        assert result.changes.failure.dead
        assert "schema version 9" in (result.changes.failure.error or "")
    assert server.inbox() == []


async def test_changes_travel_through_a_drop_folder(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'server.db'}"
    write_keypair(tmp_path / "key")
    drop = tmp_path / "drop"
    async with Store.open(store_url) as store:
        await store.publish([TODO], load_private_key(tmp_path / "key"))
        client_id, _ = await store.add_client("ship")
        await export(store, drop)
        async with Client.connect(
            f"sqlite:///{tmp_path / 'ship.db'}", sinks=[], backend_options={"create": True}
        ) as client:
            syncer = Syncer(
                client,
                FileDropTransport(f"file://{drop}", client_id=str(client_id)),
                load_public_keys([tmp_path / "key.pub"]),
            )
            await syncer.sync()
            async with client.changes() as rec:
                await rec.insert("todo", 5, {"id": 5})
            assert (await syncer.sync()).pushed == 1
        imported = await import_reports(store, drop)
        assert not imported.refused
        [change] = await store.inbox()
    assert (change.entity, change.entity_id, change.schema_version) == ("todo", "5", 1)


# -- the data as the JSON text the client stored ------------------------------------------------

#: Data texts as a client's queue may hold them (its recorder writes ``json.dumps``, SQLite's
#: capture triggers ``json_object``, Postgres's ``to_jsonb``; anything else writing the table
#: may write any JSON): each must reach the server's inbox as the same bytes as when the client
#: parsed the text and encoded it again.
ODD_DATA = [
    '{"s": "\u00e9\u2603\U0001f600 raw"}',
    '{"s": "\\u00e9\\ud83d\\ude00 escaped", "lone": "\\ud800", "low": "\\udc00x"}',
    '{"s": "a\\nb\\t\\"q\\" \\\\ \\u0000 \\/ \\b\\f\\r"}',
    '{"big": 123456789012345678901234567890, "neg": -98765432109876543210, "max": 9223372036854775807}',
    '{"f": 1.0e+308, "g": 5e-324, "h": -0.0, "i": 0.1000000000000000055511151231257827, "j": 1E5, "k": -0}',
    '{"tiny": 1e-400, "e": 2.5E-3, "z": 0.0}',
    '{"n": {"a": [1, {"b": [[], {}, [null, true, false]]}], "c": null}, "t": true}',
    '  {"spaced" :  1 ,"b":[ 1 , 2 ] ,\n\t"c" : "x" }  ',
    '{"dup": 1, "dup": 2}',
    '{"z": 1, "a": 2}',
    "{}",
    '{"deep": ' + "[" * 100 + "]" * 100 + "}",
    None,
]


@contextlib.asynccontextmanager
async def _raw_and_parsed(
    server: Server, tmp_path: Path
) -> AsyncIterator[tuple[Client, HttpTransport, HttpTransport, int, int]]:
    """A client database synced once, and the transports of two clients registered for the same
    data: ``raw`` (the stored texts as they are) and ``parsed`` (the old parse-and-encode path),
    with their ids."""
    async with Store.open(server.store_url) as store:
        new_id, new_token = await store.add_client("raw")
        old_id, old_token = await store.add_client("parsed")
    async with (
        Client.connect(
            f"sqlite:///{tmp_path / 'shop.db'}", sinks=[], backend_options={"create": True}
        ) as client,
        HttpTransport(server.http.url, client_id=str(new_id), token=new_token) as raw,
        HttpTransport(server.http.url, client_id=str(old_id), token=old_token) as parsed,
    ):
        assert (await Syncer(client, raw, server.trusted).sync()).ok
        yield client, raw, parsed, new_id, old_id


async def _queue(client: Client, texts: Sequence[str | None]) -> list[dict[str, object]]:
    """The client's queue holding one change per text (its data that text, as stored)."""
    async with client.changes() as rec:
        for n, text in enumerate(texts):
            await rec.record("todo", n, "update" if text is not None else "delete", None)
            if text is not None:
                await rec.execute("UPDATE entity_changes SET data = $1 WHERE entity_id = $2", (text, str(n)))
    return [dict(r) for r in await client.backend.fetch("SELECT * FROM entity_changes ORDER BY seq")]


async def _stored_data(server: Server, client_id: int) -> list[object]:
    """The inbox's ``data`` column of ``client_id``'s changes, as stored (the text, unparsed)."""
    from sqlalchemy import text

    async with Store.open(server.store_url) as store, store._read("test") as conn:
        rows = await conn.execute(
            text("SELECT data FROM store_inbox WHERE client_id = :c ORDER BY id"), {"c": client_id}
        )
        return [r[0] for r in rows]


async def test_the_data_text_reaches_the_inbox_as_the_same_bytes_as_parsed(
    server: Server, tmp_path: Path
) -> None:
    from migsync.client.push import change_of

    async with _raw_and_parsed(server, tmp_path) as (client, raw, parsed, new_id, old_id):
        rows = await _queue(client, ODD_DATA)
        encoded = raw.encode_change_rows(rows)
        # The raw texts are in the body as they are.
        assert ODD_DATA[0].encode() in encoded.bodies[0] and ODD_DATA[7].encode() in encoded.bodies[0]
        new = await raw.push_changes(encoded)
        old = await parsed.push_changes([change_of(r) for r in rows])  # what the client sent before
        assert len(new.accepted) == len(old.accepted) == len(ODD_DATA)
        assert new.accepted == old.accepted and new.refused is None
        # Sent again (a lost answer): stored once.
        again = await raw.push_changes(raw.encode_change_rows(rows))
        assert again.accepted == () and again.duplicate == new.accepted
    stored_new, stored_old = await _stored_data(server, new_id), await _stored_data(server, old_id)
    assert len(stored_new) == len(ODD_DATA)
    assert stored_new == stored_old
    inbox = {c["client_id"]: [] for c in server.inbox()}  # type: dict[object, list[object]]
    for c in server.inbox():
        inbox[c["client_id"]].append(c["data"])
    assert inbox[new_id] == inbox[old_id]
    assert inbox[new_id][0] == {"s": "\u00e9\u2603\U0001f600 raw"}
    assert inbox[new_id][3]["big"] == 123456789012345678901234567890  # type: ignore[index]
    assert inbox[new_id][8] == {"dup": 2}


def test_data_the_client_recorded_makes_the_same_body_as_before() -> None:
    """The recorder's text (``json.dumps``, sorted keys) spliced in is the body the client made by
    parsing it and encoding it again, byte for byte."""
    from migsync.client.push import change_of
    from migsync.core.version import Version
    from migsync.transports.http import _changes_bodies

    values = [
        {"id": 1, "title": "milk \u00e9\U0001f600", "done": False, "qty": 1.5, "n": None},
        {"nested": {"a": [1, 2.25e-300, "x\ny"], "b": {}}, "big": 2**80, "neg": -0.0},
        {"s": "\ud800 lone"},
    ]
    rows = [
        {
            "seq": n,
            "id": f"{n:032x}",
            "entity": "todo\u00e9",
            "entity_id": str(n),
            "operation": "insert",
            "data": json.dumps(value, sort_keys=True, allow_nan=False),
            "schema_version": None if n == 0 else Version.parse("1.2").key,
            "timestamp": 1_700_000_000.125 + n,
        }
        for n, value in enumerate(values * 400)  # 1200: two bodies
    ]
    encoded = HttpTransport.encode_change_rows(rows)
    assert len(encoded.bodies) == 2
    assert encoded.bodies == _changes_bodies([change_of(r) for r in rows])
    assert encoded[1] == change_of(rows[1]) and len(encoded) == 1200


#: A bad change among good ones (index 2 of 5): the server refuses the whole batch with the
#: message it gave when the client parsed the text and encoded it again.
BAD_DATA = [
    "NaN",
    '{"x": NaN}',
    '{"x": Infinity}',
    '{"x": [1, -Infinity]}',
    '{"x": 1e400}',
    '{"x": {"y": [-1.5e999]}}',
    '{"x": 1' + "0" * 400 + ".0}",
    "[1, 2]",
    "5",
    '"text"',
    "true",
]


@pytest.mark.parametrize("bad", BAD_DATA)
async def test_a_bad_data_text_anywhere_refuses_the_batch_with_the_same_message(
    server: Server, tmp_path: Path, bad: str
) -> None:
    from migsync.client.push import change_of
    from migsync.core.errors import ServerRefused

    async with _raw_and_parsed(server, tmp_path) as (client, raw, parsed, _new, _old):
        rows = await _queue(client, ['{"a": 1}', '{"a": 2}', bad, '{"a": 4}', '{"a": 5}'])
        with pytest.raises(ServerRefused) as new:
            await raw.push_changes(raw.encode_change_rows(rows))
        with pytest.raises(ServerRefused) as old:
            await parsed.push_changes([change_of(r) for r in rows])
    assert str(new.value) == str(old.value)
    assert " 400 " in str(new.value) or "changes[2].data" in str(new.value)
    assert server.inbox() == []


@pytest.mark.parametrize("bad", ['{"x": Inf}', '{"x": ', "", "{'x': 1}", '{"x": 1} {"y": 2}'])
async def test_a_data_text_that_is_not_json_fails_as_before_and_nothing_is_stored(
    server: Server, tmp_path: Path, bad: str
) -> None:
    """SQLite's ``json_object`` writes an infinity as ``Inf``: the server refuses the body, and the
    client raises what parsing the text raised before (when it parsed each text first)."""
    from migsync.client.push import change_of

    async with _shop(server, tmp_path) as (client, transport):
        assert (await Syncer(client, transport, server.trusted).sync()).ok
        rows = await _queue(client, ['{"a": 1}', bad, '{"a": 3}'])
        with pytest.raises(json.JSONDecodeError) as before:
            [change_of(r) for r in rows]
        with pytest.raises(json.JSONDecodeError) as now:
            await transport.push_changes(transport.encode_change_rows(rows))
        assert str(now.value) == str(before.value)
        # The processor keeps the change failed, with that error, and stores nothing.
        result = await Syncer(client, transport, server.trusted).sync()
        assert result.changes is not None and result.changes.failure is not None
        assert str(before.value) in (result.changes.failure.error or "")
    assert server.inbox() == []


# -- two batches in flight: the server keeps a client's batches in its order ----------------------


async def test_a_batch_sent_after_one_not_stored_is_refused_whole_then_taken_in_order(
    server: Server, tmp_path: Path
) -> None:
    from migsync.protocol.wire import CHANGES_AFTER_HEADER, CHANGES_ORDERED_HEADER

    async with Store.open(server.store_url) as store:
        client_id, token = await store.add_client("shop")
    async with (
        Client.connect(
            f"sqlite:///{tmp_path / 'shop.db'}", sinks=[], backend_options={"create": True}
        ) as client,
        HttpTransport(server.http.url, client_id=str(client_id), token=token) as transport,
    ):
        assert (await Syncer(client, transport, server.trusted).sync()).ok
        rows = await _queue(client, [json.dumps({"id": n}) for n in range(6)])
        first, second = transport.encode_change_rows(rows[:3]), transport.encode_change_rows(rows[3:])
        last_of_first = str(rows[2]["id"])
        # The second batch arrives first: nothing of it is stored, the answer says why.
        assert await transport.push_changes_after(second, last_of_first) is None
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Migsync-Protocol": "2",
            CHANGES_AFTER_HEADER: last_of_first,
        }
        import httpx

        async with httpx.AsyncClient() as raw:
            answer = await raw.post(
                f"{server.http.url}/api/changes", content=second.bodies[0], headers=headers
            )
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"] == (
            f"the batch before this one (up to change {last_of_first!r}) is not stored yet: "
            "send this one again once it is"
        )
        assert answer.headers[CHANGES_ORDERED_HEADER] == "1"
        assert server.inbox() == []
        # Then the first, and the second again: stored in the client's order.
        ack = await transport.push_changes(first)
        assert transport.orders_changes  # the answer said the server keeps the order
        assert len(ack.accepted) == 3
        ack = await transport.push_changes_after(second, last_of_first)
        assert ack is not None and len(ack.accepted) == 3
        # Sent again (a lost answer), "after" or not: stored once.
        again = await transport.push_changes_after(second, last_of_first)
        assert again is not None and again.accepted == () and len(again.duplicate) == 3
        assert (await transport.push_changes(first)).duplicate == tuple(str(r["id"]) for r in rows[:3])
    assert [c["data"] for c in server.inbox()] == [{"id": n} for n in range(6)]


async def test_a_batch_sent_ahead_that_overtakes_the_one_before_is_stored_after_it(
    server: Server, tmp_path: Path
) -> None:
    """The request of batch 2 is held until batch 3, sent ahead of batch 2's answer, has been
    answered: the server must not store 3 before 2 (it answers "not yet"), and the client sends
    3 again once 2 is stored. The inbox keeps the client's order."""
    overtaken = asyncio.Event()
    calls: list[tuple[int, str | None, bool]] = []

    class Overtaking(HttpTransport):
        async def _push_changes(
            self, changes: Sequence[EntityChange], after: str | None
        ) -> ChangesAck | None:
            number = len(calls)
            calls.append((len(changes), after, False))
            if number == 1:  # batch 2: held back until batch 3 has overtaken it
                await overtaken.wait()
            answer = await super()._push_changes(changes, after)
            calls[number] = (len(changes), after, answer is not None)
            if after is not None and not overtaken.is_set():
                overtaken.set()
            return answer

    async with _shop(server, tmp_path, Overtaking) as (client, transport):
        assert (await Syncer(client, transport, server.trusted).sync()).ok
        for n in range(12):
            async with client.changes() as rec:
                await rec.update("todo", n % 3, {"id": n % 3, "title": f"version {n}"})
        result = await Syncer(client, transport, server.trusted, batch_size=3, send_changes_ahead=True).sync()
        assert result.ok and result.pushed == 12
    inbox = server.inbox()
    assert [c["data"] for c in inbox] == [{"id": n % 3, "title": f"version {n}"} for n in range(12)]
    # batch 1 (tells the client the server keeps order), batch 2 (held), batch 3 sent ahead
    # and refused "not yet", ..., batch 3 again.
    assert calls[0] == (3, None, True)
    assert calls[2][1] is not None and calls[2][2] is False, calls
    assert (3, None, True) in calls[3:], calls


@pytest.mark.parametrize("ahead", [True, False], ids=["by-default", "off"])
async def test_batches_are_sent_ahead_by_default_and_one_at_a_time_when_off(
    server: Server, tmp_path: Path, ahead: bool
) -> None:
    afters: list[str | None] = []

    class Recording(HttpTransport):
        async def _push_changes(
            self, changes: Sequence[EntityChange], after: str | None
        ) -> ChangesAck | None:
            afters.append(after)
            return await super()._push_changes(changes, after)

    async with _shop(server, tmp_path, Recording) as (client, transport):
        assert (await Syncer(client, transport, server.trusted).sync()).ok
        for n in range(9):
            async with client.changes() as rec:
                await rec.insert("todo", n, {"id": n})
        options = {} if ahead else {"send_changes_ahead": False}
        result = await Syncer(client, transport, server.trusted, batch_size=2, **options).sync()
        assert result.ok and result.pushed == 9
        assert transport.orders_changes
    if ahead:
        # The first batch learns that the server keeps the order; each one after it is sent
        # at once, naming the last change of the batch before.
        assert afters[0] is None and len(afters) >= 5
        assert any(after is not None for after in afters[1:]), afters
    else:
        assert afters == [None] * 5
    assert [c["data"] for c in server.inbox()] == [{"id": n} for n in range(9)]
