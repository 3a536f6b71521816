"""One sync of a client with its server: verify on receipt, store, apply, report through the outbox.

The logic runs against the in-memory server (a test double of the server only);
the client database is always a real SQLite file. ``test_sync_http.py`` runs
the same flow against the real HTTP API.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import query

from migsync.client.outbox import ReportOutbox
from migsync.client.sync import Syncer
from migsync.core.client import Client
from migsync.core.migration import Migration, Script
from migsync.core.sync_events import MigrationRefused
from migsync.protocol.signing import TrustedKey, load_private_key, sign, write_keypair
from migsync.protocol.wire import OfferedMigration, ReportAck, StatusReport
from migsync.testing import FakeClock
from migsync.transports.memory import MemoryServer, MemoryTransport


def migration(version: int, name: str, up: str, down: str = "") -> Migration:
    return Migration(version, name, {"*": Script(up)}, {"*": Script(down)} if down else {})


V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY)", "DROP TABLE users")
V2 = migration(2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY)", "DROP TABLE orders")
V3 = migration(3, "0003_items", "CREATE TABLE items (id INTEGER PRIMARY KEY)", "DROP TABLE items")
BROKEN = migration(2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY) oops")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, TrustedKey]:
    public = write_keypair(tmp_path / "key")
    return load_private_key(tmp_path / "key"), public


@pytest.fixture
def server() -> MemoryServer:
    return MemoryServer()


class Harness:
    def __init__(self, url: str, server: MemoryServer, trusted: TrustedKey, client_id: str = "c1") -> None:
        self.url, self.server, self.trusted, self.client_id = url, server, trusted, client_id
        self.clock = FakeClock()

    async def sync(self, **options: bool):  # type: ignore[no-untyped-def]
        async with Client.connect(
            self.url, sinks=[], backend_options={"create": True}, clock=self.clock
        ) as client:
            refused: list[MigrationRefused] = []
            client.bus.subscribe(refused.append, "migration_refused")
            transport = MemoryTransport(self.server, client_id=self.client_id)
            result = await Syncer(client, transport, [self.trusted]).sync(**options)
            await client.events.aclose()
            return result, await client.status(), refused


@pytest.fixture
def harness(tmp_path: Path, server: MemoryServer, keys: tuple[Ed25519PrivateKey, TrustedKey]) -> Harness:
    return Harness(f"sqlite:///{tmp_path / 'client.db'}", server, keys[1])


def tables(db: Path) -> set[str]:
    return {r[0] for r in query(f"sqlite:///{db}", "SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_a_sync_stores_applies_and_reports(harness: Harness, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    harness.server.publish_signed([V1, V2], keys[0])
    result, states, _ = await harness.sync()
    assert result.ok and result.offered == 2 and result.stored == ("0001_users", "0002_orders")
    assert [s.state for s in states] == ["applied", "applied"]
    assert {"users", "orders"} <= tables(tmp_path / "client.db")
    assert result.delivered == 2 and result.undelivered == 0
    status = harness.server.status["c1"]
    assert status[1] == StatusReport(1, True, None, 1, V1.checksum)
    assert status[2] == StatusReport(2, True, None, 1, V2.checksum)
    # The signature is kept with the migration it vouches for.
    rows = query(
        f"sqlite:///{tmp_path / 'client.db'}",
        "SELECT version, signature FROM client_migration ORDER BY version",
    )
    assert [r[1] for r in rows] == [sign(keys[0], V1), sign(keys[0], V2)]


async def test_an_unchanged_server_is_asked_with_its_etag_and_nothing_is_resent(  # type: ignore[no-untyped-def]
    harness: Harness, keys
) -> None:
    harness.server.publish_signed([V1], keys[0])
    await harness.sync()
    second, _, _ = await harness.sync()  # the report changed the server's answer once
    third, _, _ = await harness.sync()
    assert second.offered == 0
    assert third.offered is None and third.ok  # 304: not modified
    assert len(harness.server.received["c1"]) == 1  # one delivery, never repeated


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda o, bad: OfferedMigration(
                o.version, o.name, bad.canonical_content(), bad.checksum, o.signature
            ),
            id="changed-sql-and-checksum",
        ),
        pytest.param(
            lambda o, bad: OfferedMigration(
                o.version, o.name, bad.canonical_content(), o.checksum, o.signature
            ),
            id="changed-sql-only",
        ),
        pytest.param(
            lambda o, bad: OfferedMigration(o.version, o.name, o.content, o.checksum, None), id="unsigned"
        ),
        pytest.param(
            lambda o, bad: OfferedMigration(o.version, o.name, o.content, o.checksum, "bm90IGEgc2lnbmF0dXJl"),
            id="bad-signature",
        ),
        pytest.param(
            lambda o, bad: OfferedMigration(o.version, o.name, o.content, o.checksum, "%%%"), id="not-base64"
        ),
        pytest.param(
            lambda o, bad: OfferedMigration(o.version, "0002_other", o.content, o.checksum, o.signature),
            id="renamed",
        ),
        pytest.param(
            lambda o, bad: OfferedMigration(
                o.version, o.name, json.dumps(json.loads(o.content), indent=1), o.checksum, o.signature
            ),
            id="not-canonical",
        ),
    ],
)
async def test_a_tampered_migration_is_refused_reported_and_nothing_of_it_runs(  # type: ignore[no-untyped-def]
    harness: Harness, keys, tmp_path: Path, tamper
) -> None:
    harness.server.publish_signed([V1, V2, V3], keys[0])
    evil = migration(2, "0002_orders", "CREATE TABLE orders (id INTEGER); CREATE TABLE pwned (x INTEGER)")
    harness.server.published[2] = tamper(harness.server.published[2], evil)
    result, states, refused = await harness.sync()
    assert not result.ok
    assert [(r.version, r.kind) for r in result.refused] == [(2, "signature"), (3, "waiting")]
    # Only what came before the refused migration was stored and ran.
    assert [(s.name, s.state) for s in states] == [("0001_users", "applied")]
    assert not {"orders", "pwned", "items"} & tables(tmp_path / "client.db")
    assert [e.version for e in refused] == [2, 3]
    # The server hears of the refusal, with the reason.
    report = harness.server.status["c1"][2]
    assert not report.applied and report.error is not None and report.error.startswith("refused: ")
    assert 3 not in harness.server.status["c1"]


async def test_a_key_the_client_does_not_trust_is_refused(harness: Harness, tmp_path: Path) -> None:
    write_keypair(tmp_path / "other")
    harness.server.publish_signed([V1], load_private_key(tmp_path / "other"))
    result, states, _ = await harness.sync()
    assert [r.kind for r in result.refused] == ["signature"]
    assert "under any trusted key" in result.refused[0].reason
    assert states == []


async def test_a_migration_changed_after_it_was_applied_is_refused_as_drift(  # type: ignore[no-untyped-def]
    harness: Harness, keys
) -> None:
    harness.server.publish_signed([V1], keys[0])
    await harness.sync()
    changed = migration(1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    harness.server.publish_signed([changed, V2], keys[0])  # as after 'publish --force'
    result, states, _ = await harness.sync()
    assert [(r.version, r.kind) for r in result.refused] == [(1, "drift")]
    assert not result.ok
    # The applied migration is untouched; the next one still applies.
    assert [(s.name, s.state, s.checksum) for s in states] == [
        ("0001_users", "applied", V1.checksum),
        ("0002_orders", "applied", V2.checksum),
    ]
    # The server keeps what the client really applied: its checksum tells the drift.
    assert harness.server.status["c1"][1].checksum == V1.checksum


async def test_a_migration_published_below_an_applied_one_is_refused(harness: Harness, keys) -> None:  # type: ignore[no-untyped-def]
    harness.server.publish_signed([V2], keys[0])
    await harness.sync()
    harness.server.publish_signed([V1], keys[0])
    result, states, _ = await harness.sync()
    assert [(r.version, r.kind) for r in result.refused] == [(1, "order")]
    assert [s.name for s in states] == ["0002_orders"]
    assert harness.server.status["c1"][1].error.startswith("refused: published after")  # type: ignore[union-attr]


async def test_offline_the_client_keeps_working_and_reports_once_when_back(  # type: ignore[no-untyped-def]
    harness: Harness, keys
) -> None:
    harness.server.publish_signed([V1, BROKEN], keys[0])
    first, _, _ = await harness.sync()
    assert first.run.failure is not None  # 0002 failed once; the server heard it
    harness.server.down = True
    harness.clock.advance(3600)
    offline, states, _ = await harness.sync()
    assert offline.offline is not None and "down" in offline.offline and not offline.ok
    # It retried what it had: a second failure, made offline and kept in the outbox.
    assert states[1].attempts == 2
    assert offline.delivered == 0 and offline.undelivered == 1
    deliveries = len(harness.server.received["c1"])
    harness.server.down = False
    back, _, _ = await harness.sync()
    assert back.delivered == 1 and back.undelivered == 0
    assert harness.server.status["c1"][2].attempts == 2
    assert len(harness.server.received["c1"]) == deliveries + 1
    again, _, _ = await harness.sync()
    assert again.delivered == 0 and len(harness.server.received["c1"]) == deliveries + 1


async def test_a_fixed_migration_published_again_recovers_a_dead_one(harness: Harness, keys) -> None:  # type: ignore[no-untyped-def]
    harness.server.publish_signed([V1, BROKEN], keys[0])
    for _ in range(3):
        result, states, _ = await harness.sync(ignore_backoff=True)
    assert states[1].state == "dead"
    assert harness.server.status["c1"][2].attempts == 3
    harness.server.publish_signed([V2], keys[0])  # the fixed content, same version
    result, states, _ = await harness.sync()
    assert result.ok and result.stored == ("0002_orders",)
    assert [s.state for s in states] == ["applied", "applied"]
    assert harness.server.status["c1"][2] == StatusReport(2, True, None, 1, V2.checksum)


async def test_migrations_applied_from_a_local_folder_are_not_reported(  # type: ignore[no-untyped-def]
    harness: Harness, keys
) -> None:
    local = migration(1, "0001_local", "CREATE TABLE local_only (x INTEGER)")
    async with Client.connect(harness.url, sinks=[], backend_options={"create": True}) as client:
        assert (await client.apply([local])).ok
    harness.server.publish_signed([V2], keys[0])
    result, states, _ = await harness.sync()
    assert result.ok
    assert [s.name for s in states] == ["0001_local", "0002_orders"]
    assert set(harness.server.status["c1"]) == {2}


async def test_a_local_revert_is_undone_by_the_next_sync(harness: Harness, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # As with 'migsync apply': what the server publishes is what the client must have.
    harness.server.publish_signed([V1, V2], keys[0])
    await harness.sync()
    async with Client.connect(harness.url, sinks=[]) as client:
        await client.ledger.revert("0002_orders")
        assert (await client.process()).ok
    assert "orders" not in tables(tmp_path / "client.db")
    result, states, _ = await harness.sync()
    assert result.ok and [s.state for s in states] == ["applied", "applied"]
    assert "orders" in tables(tmp_path / "client.db")
    assert harness.server.status["c1"][2].applied


class LosingAcks:
    """A transport whose server records the reports but whose answer is lost on the way back."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.where = inner.where
        self.fetch = inner.fetch

    async def report(self, reports: list[StatusReport]) -> ReportAck:
        await self.inner.report(reports)
        from migsync.core.errors import ServerUnavailable

        raise ServerUnavailable("the connection dropped before the answer arrived")


async def test_a_report_whose_answer_was_lost_is_sent_again_and_counted_once(  # type: ignore[no-untyped-def]
    harness: Harness, keys
) -> None:
    harness.server.publish_signed([V1], keys[0])
    async with Client.connect(harness.url, sinks=[], backend_options={"create": True}) as client:
        transport = MemoryTransport(harness.server, client_id="c1")
        syncer = Syncer(client, transport, [harness.trusted])
        syncer.transport = LosingAcks(transport)  # type: ignore[assignment]
        lost = await syncer.sync()
        assert lost.report_error is not None and lost.undelivered == 1
        syncer.transport = transport
        outbox = ReportOutbox(client.backend, client.clock)
        delivery = await outbox.deliver(transport)
        assert delivery.delivered == 1
        assert delivery.ack is not None and delivery.ack.unchanged == (1,) and delivery.ack.recorded == ()
        assert await outbox.count_undelivered() == 0
    assert len(harness.server.received["c1"]) == 2  # sent twice
    assert harness.server.status["c1"] == {1: StatusReport(1, True, None, 1, V1.checksum)}  # recorded once


async def test_a_newer_word_staged_during_a_delivery_stays_undelivered(harness: Harness, keys) -> None:  # type: ignore[no-untyped-def]
    async with Client.connect(harness.url, sinks=[], backend_options={"create": True}) as client:
        outbox = ReportOutbox(client.backend, client.clock)
        harness.server.publish_signed([V1], keys[0])
        first = StatusReport(1, False, "boom", 1, V1.checksum)
        newer = StatusReport(1, True, None, 2, V1.checksum)
        assert await outbox.stage([first]) == 1

        class StagesMeanwhile:
            where = "memory"

            async def report(self, reports: list[StatusReport]) -> ReportAck:
                assert reports == [first]
                await outbox.stage([newer])  # the processor moved on while the request was out
                return ReportAck(recorded=(1,))

        assert (await outbox.deliver(StagesMeanwhile())).delivered == 1  # type: ignore[arg-type]
        assert [r for r, _ in await outbox.undelivered()] == [newer]
        assert await outbox.stage([newer]) == 0  # equal to what is staged: nothing new


async def test_two_clients_keep_their_own_status(tmp_path: Path, server: MemoryServer, keys) -> None:  # type: ignore[no-untyped-def]
    server.publish_signed([V1, V2], keys[0])
    a = Harness(f"sqlite:///{tmp_path / 'a.db'}", server, keys[1], "a")
    b = Harness(f"sqlite:///{tmp_path / 'b.db'}", server, keys[1], "b")
    await a.sync()
    assert set(server.status) == {"a"}
    result, _, _ = await b.sync()
    assert result.stored == ("0001_users", "0002_orders")
    assert server.status["a"] == server.status["b"]
    assert [o.version for o in server.pending("a")] == []


async def test_a_syncer_needs_a_trusted_key(harness: Harness) -> None:
    from migsync.core.errors import MigsyncError

    async with Client.connect(harness.url, sinks=[], backend_options={"create": True}) as client:
        with pytest.raises(MigsyncError, match="no trusted public key"):
            Syncer(client, MemoryTransport(harness.server, client_id="c1"), [])


async def test_a_database_of_layout_1_gets_the_outbox(tmp_path: Path) -> None:
    from migsync.core.schema import SCHEMA_VERSION

    url = f"sqlite:///{tmp_path / 'old.db'}"
    async with Client.connect(url, sinks=[], backend_options={"create": True}) as client:
        assert (await client.apply([V1])).ok
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as conn:  # as a release before the outbox left it
        conn.execute("DROP TABLE migsync_report_outbox")
        conn.execute("UPDATE migsync_meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    async with Client.connect(url, sinks=[]) as client:
        assert [s.state for s in await client.status()] == ["applied"]
    assert "migsync_report_outbox" in tables(tmp_path / "old.db")
    assert query(url, "SELECT value FROM migsync_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
