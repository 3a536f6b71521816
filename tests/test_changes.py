"""Entity changes: recorded in the application's transaction, pushed by the same processor after the schema.

Client databases are real (SQLite files and Postgres); the server is the in-memory one,
a test double of the server only (``test_changes_http.py`` pushes to the real API).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import aquery

from migsync.client.push import EntityChangeHandler, _Ahead, change_of
from migsync.client.sync import Syncer
from migsync.core.client import Client
from migsync.core.clock import RetryPolicy
from migsync.core.errors import ConfigError, ServerUnavailable
from migsync.core.events import Event
from migsync.core.migration import Migration, Script
from migsync.protocol.signing import TrustedKey, load_private_key, write_keypair
from migsync.protocol.wire import ChangesAck, EntityChange
from migsync.testing import FakeClock
from migsync.transports.memory import MemoryServer, MemoryTransport


def migration(version: int, name: str, up: str) -> Migration:
    return Migration(version, name, {"*": Script(up)})


TODO = migration(1, "0001_todo", "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT)")
DONE = migration(2, "0002_done", "ALTER TABLE todo ADD COLUMN done BOOLEAN")
BROKEN = migration(2, "0002_done", "ALTER TABLE nowhere ADD COLUMN done BOOLEAN")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, TrustedKey]:
    public = write_keypair(tmp_path / "key")
    return load_private_key(tmp_path / "key"), public


class Setup:
    def __init__(self, url: str, keys: tuple[Ed25519PrivateKey, TrustedKey]) -> None:
        self.url = url
        self.key, self.trusted = keys
        self.server = MemoryServer()
        self.clock = FakeClock()
        self.events: list[Event] = []

    def client(self) -> Client:
        client = Client.connect(
            self.url,
            sinks=[],
            backend_options={"create": True},
            clock=self.clock,
            retry=RetryPolicy(base=2.0, factor=2.0, jitter=0.0),
        )
        client.bus.subscribe(self.events.append)
        return client

    def syncer(self, client: Client, **options: Any) -> Syncer:
        return Syncer(client, MemoryTransport(self.server, client_id="c1"), [self.trusted], **options)

    def pushed(self) -> list[tuple[str, str, str, int | None]]:
        return [
            (c.entity, c.entity_id, c.operation, c.schema_version) for c in self.server.inbox.get("c1", [])
        ]


@pytest.fixture
async def setup(any_url: str, keys: tuple[Ed25519PrivateKey, TrustedKey]) -> AsyncIterator[Setup]:
    yield Setup(any_url, keys)


async def test_changes_are_recorded_in_the_applications_transaction(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    async with setup.client() as client:
        await setup.syncer(client).sync()
        async with client.changes() as rec:
            await rec.execute("INSERT INTO todo (id, title) VALUES ($1, $2)", (7, "milk"))
            await rec.insert("todo", 7, {"id": 7, "title": "milk"})
        with pytest.raises(RuntimeError):
            async with client.changes() as rec:
                await rec.execute("INSERT INTO todo (id, title) VALUES ($1, $2)", (8, "bread"))
                await rec.insert("todo", 8, {"id": 8, "title": "bread"})
                raise RuntimeError("the application changed its mind")
        with pytest.raises(ConfigError, match="not JSON"):
            async with client.changes() as rec:
                await rec.insert("todo", 9, {"when": object()})
    rows = await aquery(
        setup.url, "SELECT entity, entity_id, operation, data, schema_version FROM entity_changes"
    )
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("todo", "7", "insert", "011")]  # a version key
    assert await aquery(setup.url, "SELECT id FROM todo") == [(7,)]


async def test_changes_wait_for_the_schema_and_flow_right_after_it_applies(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    async with setup.client() as client:
        await setup.syncer(client).sync()
        async with client.changes() as rec:
            await rec.insert("todo", 1, {"id": 1})
        setup.server.publish_signed([BROKEN], setup.key)  # version 2 fails on this client
        failing = await setup.syncer(client).sync()
        assert failing.run.failure is not None
        assert failing.changes is not None and failing.changes.gated is not None
        assert "1 migration change(s) not done" in failing.changes.gated
        assert setup.pushed() == []  # nothing pushed against a schema that is not there
        assert failing.changes.remaining == 1
        setup.server.publish_signed([DONE], setup.key)  # the fix
        fixed = await setup.syncer(client).sync()
        assert fixed.ok and fixed.pushed == 1
    assert setup.pushed() == [("todo", "1", "insert", 1)]


async def test_changes_go_in_order_in_batches(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    sizes: list[int] = []

    class Counting(MemoryTransport):
        async def push_changes(self, changes: Any) -> ChangesAck:
            sizes.append(len(changes))
            return await super().push_changes(changes)

    async with setup.client() as client:
        await setup.syncer(client).sync()
        for n in range(25):
            async with client.changes() as rec:
                await rec.update("todo", n % 3, {"id": n % 3, "n": n})
        syncer = setup.syncer(client, batch_size=10)
        syncer.transport = Counting(setup.server, client_id="c1")
        result = await syncer.sync()
    assert result.ok and result.pushed == 25
    assert sizes == [10, 10, 5]
    assert [c.data["n"] for c in setup.server.inbox["c1"]] == list(range(25))
    assert await aquery(setup.url, "SELECT COUNT(*) FROM entity_changes WHERE processed = FALSE") == [(0,)]


async def test_changes_written_while_a_batch_is_pushed_are_pushed_once_in_order(setup: Setup) -> None:
    """The next batch is read while one is pushed: what is written meanwhile (new changes, a
    change taken out of the queue) is what the next batches carry, whichever came first."""
    setup.server.publish_signed([TODO], setup.key)
    sizes: list[int] = []

    class Busy(MemoryTransport):
        async def push_changes(self, changes: Any) -> ChangesAck:
            sizes.append(len(changes))
            if len(sizes) == 1:  # another writer, on its own connection
                async with setup.client() as other:
                    for n in range(25, 32):
                        async with other.changes() as rec:
                            await rec.update("todo", n % 3, {"id": n % 3, "n": n})
                await aquery(setup.url, "UPDATE entity_changes SET processed = TRUE WHERE seq = 16")
            return await super().push_changes(changes)

    async with setup.client() as client:
        await setup.syncer(client).sync()
        for n in range(25):
            async with client.changes() as rec:
                await rec.update("todo", n % 3, {"id": n % 3, "n": n})
        syncer = setup.syncer(client, batch_size=10)
        syncer.transport = Busy(setup.server, client_id="c1")
        result = await syncer.sync()
    assert result.ok
    sent = [c.data["n"] for c in setup.server.inbox["c1"]]
    assert sent == [n for n in range(32) if n != 15], "each once, in order, none taken out"
    assert sum(sizes) == 31 and max(sizes) == 10


async def test_a_batch_read_ahead_is_not_sent_once_the_queue_changed(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    async with setup.client() as client:
        await setup.syncer(client).sync()
        for n in range(6):
            async with client.changes() as rec:
                await rec.update("todo", 1, {"id": 1, "n": n})
        syncer = setup.syncer(client, batch_size=4)
        handler = syncer.changes_processor.handler
        assert isinstance(handler, EntityChangeHandler)
        # As if read while an earlier batch was pushed; then a change of it leaves the queue.
        rows = await client.backend.fetch(handler._sql_batch, (1,))
        handler._ahead = _Ahead(rows, [change_of(row) for row in rows])
        await aquery(setup.url, "UPDATE entity_changes SET processed = TRUE WHERE seq = 3")
        result = await syncer.sync()
    assert result.ok
    assert [c.data["n"] for c in setup.server.inbox["c1"]] == [0, 1, 3, 4, 5]


class LosesAnswers(MemoryTransport):
    """The server stores the batch, but its answer never arrives."""

    async def push_changes(self, changes: Any) -> ChangesAck:
        await super().push_changes(changes)
        raise ServerUnavailable("the connection dropped before the answer arrived")


async def test_a_batch_whose_answer_was_lost_is_sent_again_and_stored_once(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    async with setup.client() as client:
        syncer = setup.syncer(client)
        await syncer.sync()
        async with client.changes() as rec:
            await rec.insert("todo", 1, {"id": 1})
            await rec.insert("todo", 2, {"id": 2})
        syncer.transport = LosesAnswers(setup.server, client_id="c1")
        lost = await syncer.sync()
        assert lost.changes is not None and lost.changes.waiting_until is not None
        # Postponed, not failed: the server being away does not count against the change.
        assert await aquery(setup.url, "SELECT attempts FROM entity_changes ORDER BY seq") == [(0,), (0,)]
        syncer.transport = MemoryTransport(setup.server, client_id="c1")
        again = await syncer.sync(ignore_backoff=True)
    assert again.ok and again.pushed == 2
    assert setup.pushed() == [("todo", "1", "insert", 1), ("todo", "2", "insert", 1)]


async def test_a_change_refused_for_its_schema_version_is_dead_with_the_reason(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    async with setup.client() as client:
        await setup.syncer(client).sync()
        # A migration applied from a local folder: version 5 is nothing the server published.
        assert (await client.apply([migration(5, "0005_local", "CREATE TABLE local_only (x INTEGER)")])).ok
        async with client.changes() as rec:
            await rec.insert("todo", 1, {"id": 1})
            await rec.insert("todo", 2, {"id": 2})
        result = await setup.syncer(client).sync()
    assert not result.ok
    assert result.changes is not None and result.changes.failure is not None
    assert result.changes.failure.dead
    rows = await aquery(
        setup.url, "SELECT processed, attempts, max_attempts, error FROM entity_changes ORDER BY seq"
    )
    (processed, attempts, max_attempts, error), second = rows
    assert not processed and attempts == max_attempts
    assert error == "refused by the server: schema version 5 was never published by this server"
    assert not second[0]  # kept, waiting behind the dead one: nothing is lost
    assert [e.kind for e in setup.events if e.kind.startswith("change")] == ["change_dead"]


async def test_old_changes_keep_the_schema_version_they_were_written_under(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    async with setup.client() as client:
        await setup.syncer(client, push_changes=False).sync()
        async with client.changes() as rec:
            await rec.insert("todo", 1, {"id": 1, "title": "milk"})
        setup.server.publish_signed([DONE], setup.key)
        result = await setup.syncer(client).sync()  # applies version 2, then pushes
        async with client.changes() as rec:
            await rec.update("todo", 1, {"id": 1, "title": "milk", "done": True})
        await setup.syncer(client).sync()
    assert result.ok
    assert setup.pushed() == [("todo", "1", "insert", 1), ("todo", "1", "update", 2)]


async def test_offline_nothing_is_pushed_and_nothing_counts(setup: Setup) -> None:
    setup.server.publish_signed([TODO], setup.key)
    async with setup.client() as client:
        await setup.syncer(client).sync()
        async with client.changes() as rec:
            await rec.delete("todo", 3)
        setup.server.down = True
        offline = await setup.syncer(client).sync()
        assert offline.offline is not None and offline.changes is None
        setup.server.down = False
        back = await setup.syncer(client).sync()
    assert back.ok and back.pushed == 1
    [change] = setup.server.inbox["c1"]
    assert isinstance(change, EntityChange) and change.data is None and change.operation == "delete"
