"""Entity changes pushed over HTTP to the real API (uvicorn on a loopback port), SQLite and Postgres stores,
and through a drop folder; read back with ``migsync inbox``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
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


async def test_changes_reach_the_inbox_in_order_once(server: Server, tmp_path: Path) -> None:
    async with Store.open(server.store_url) as store:
        client_id, token = await store.add_client("shop")
    async with (
        Client.connect(
            f"sqlite:///{tmp_path / 'shop.db'}", sinks=[], backend_options={"create": True}
        ) as client,
        HttpTransport(server.http.url, client_id=str(client_id), token=token) as transport,
    ):
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
    async with Store.open(server.store_url) as store:
        client_id, token = await store.add_client("shop")
    sizes: list[int] = []

    class Counting(HttpTransport):
        async def push_changes(self, changes: Sequence[EntityChange]) -> ChangesAck:
            sizes.append(len(changes))
            return await super().push_changes(changes)

    async with (
        Client.connect(
            f"sqlite:///{tmp_path / 'shop.db'}", sinks=[], backend_options={"create": True}
        ) as client,
        Counting(server.http.url, client_id=str(client_id), token=token) as transport,
    ):
        assert (await Syncer(client, transport, server.trusted).sync()).ok
        for n in range(23):
            async with client.changes() as rec:
                await rec.insert("todo", n, {"id": n, "title": f"item {n}"})
        result = await Syncer(client, transport, server.trusted, batch_size=5).sync()
        assert result.ok and result.pushed == 23
        left = await client.backend.fetch("SELECT COUNT(*) AS n FROM entity_changes WHERE processed = FALSE")
        assert left[0]["n"] == 0
    assert sizes == [5, 5, 5, 5, 3]
    assert [c["entity_id"] for c in server.inbox()] == [str(n) for n in range(23)]
    assert server.inbox()[22]["data"] == {"id": 22, "title": "item 22"}


async def test_a_bad_schema_version_is_refused_over_http_and_the_change_is_dead(
    server: Server, tmp_path: Path
) -> None:
    async with Store.open(server.store_url) as store:
        client_id, token = await store.add_client("shop")
    async with (
        Client.connect(
            f"sqlite:///{tmp_path / 'shop.db'}", sinks=[], backend_options={"create": True}
        ) as client,
        HttpTransport(server.http.url, client_id=str(client_id), token=token) as transport,
    ):
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
