"""The admin's requests to a client (re-apply, revert), carried out by the client through its queue.

The logic runs against the in-memory server (a test double of the server only); the client
database is a real SQLite file, or a real Postgres database where the backend matters.
``test_actions_http.py`` runs the same flow against the real HTTP API and store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import aquery, query, run

from migsync.client.sync import Syncer, SyncResult
from migsync.core.client import Client
from migsync.core.errors import MalformedAnswer
from migsync.core.schema import SCHEMA_VERSION
from migsync.protocol.signing import TrustedKey, load_private_key, write_keypair
from migsync.protocol.wire import ActionResult, ActionsAck, actions_from_json
from migsync.testing import FakeClock
from migsync.testing.backend_suite import migration
from migsync.transports.memory import MemoryServer, MemoryTransport

V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY)", "DROP TABLE users")
V2 = migration(2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY)", "DROP TABLE orders")
V3 = migration(3, "0003_items", "CREATE TABLE items (id INTEGER PRIMARY KEY)", "DROP TABLE items")
#: fails while the client has a table ``blocker`` (a cause a person can remove on site)
V2_BLOCKED = migration(
    2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY); CREATE TABLE blocker (x INTEGER)"
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, TrustedKey]:
    public = write_keypair(tmp_path / "key")
    return load_private_key(tmp_path / "key"), public


class Harness:
    def __init__(self, url: str, trusted: TrustedKey, request_key: Path) -> None:
        self.url = url
        self.server = MemoryServer()
        self.trusted = trusted
        #: the server signs its requests with a key of their own, which the client trusts for them
        self.requester = write_keypair(request_key)
        self.server.request_key = load_private_key(request_key)
        self.clock = FakeClock()

    async def sync(self, max_attempts: int = 3) -> tuple[SyncResult, dict[str, str]]:
        """One sync; the result and each migration's state (``held`` when held)."""
        async with Client.connect(
            self.url, sinks=[], backend_options={"create": True}, clock=self.clock, max_attempts=max_attempts
        ) as client:
            transport = MemoryTransport(self.server, client_id="c1")
            result = await Syncer(client, transport, [self.trusted], request_keys=[self.requester]).sync(
                ignore_backoff=True
            )
            states = {s.name: "held" if s.held else s.state for s in await client.status()}
            return result, states

    def answers(self) -> dict[int, tuple[str, str | None]]:
        return {i: (a.state, a.detail) for i, a in self.server.answers.items()}


@pytest.fixture
def harness(tmp_path: Path, keys: tuple[Ed25519PrivateKey, TrustedKey]) -> Harness:
    h = Harness(f"sqlite:///{tmp_path / 'client.db'}", keys[1], tmp_path / "request-key")
    h.server.publish_signed([V1, V2, V3], keys[0])
    return h


def tables(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_a_revert_reverts_from_its_version_on_and_holds_the_client(harness: Harness) -> None:
    await harness.sync()
    assert {"users", "orders", "items"} <= tables(harness.url)
    request = harness.server.request("c1", "revert", 2, "alice")

    result, states = await harness.sync()

    assert result.actions_received == 1 and result.actions_answered == 1
    assert states == {"0001_users": "applied", "0002_orders": "held", "0003_items": "held"}
    assert "orders" not in tables(harness.url) and "items" not in tables(harness.url)
    assert harness.answers() == {request.id: ("done", "reverted; held at version 2")}
    # The server reported them not applied; the hold keeps the next syncs from applying them again.
    assert not harness.server.status["c1"][2].applied and not harness.server.status["c1"][3].applied
    for _ in range(2):
        again, states = await harness.sync()
        assert again.ok and again.actions_received == 0
        assert states["0002_orders"] == "held" and "orders" not in tables(harness.url)


async def test_a_hold_covers_what_is_published_after_it(
    harness: Harness, keys: tuple[Ed25519PrivateKey, TrustedKey]
) -> None:
    await harness.sync()
    harness.server.request("c1", "revert", 3)
    await harness.sync()
    harness.server.publish_signed([migration(4, "0004_more", "CREATE TABLE more (x INTEGER)")], keys[0])
    _, states = await harness.sync()
    assert states == {
        "0001_users": "applied",
        "0002_orders": "applied",
        "0003_items": "held",
        "0004_more": "held",
    }
    assert "more" not in tables(harness.url)


async def test_a_reapply_lifts_the_hold_and_the_client_catches_up(harness: Harness) -> None:
    await harness.sync()
    harness.server.request("c1", "revert", 2)
    await harness.sync()
    request = harness.server.request("c1", "reapply", 2, "bob")

    result, states = await harness.sync()

    assert result.ok
    assert set(states.values()) == {"applied"}
    assert {"orders", "items"} <= tables(harness.url)
    assert harness.answers()[request.id] == ("done", "0002_orders applied")
    assert harness.server.status["c1"][3].applied


async def test_a_reapply_revives_a_dead_migration(harness: Harness, keys: Any) -> None:
    harness.server.publish_signed([V2_BLOCKED], keys[0])
    query(harness.url, "CREATE TABLE blocker (x INTEGER)")
    for _ in range(2):
        _, states = await harness.sync(max_attempts=2)
    assert states["0002_orders"] == "dead"
    report = harness.server.status["c1"][2]
    assert report.dead and not report.applied and report.attempts == 2
    _, states = await harness.sync(max_attempts=2)
    assert states["0002_orders"] == "dead", "a dead migration stays dead without a request"

    query(harness.url, "DROP TABLE blocker")  # the cause is fixed on site
    request = harness.server.request("c1", "reapply", 2)
    result, states = await harness.sync(max_attempts=2)
    assert result.ok and result.actions_answered == 1

    assert states == {"0001_users": "applied", "0002_orders": "applied", "0003_items": "applied"}
    assert harness.answers()[request.id][0] == "done"
    assert not harness.server.status["c1"][2].dead and harness.server.status["c1"][2].applied


async def test_a_reapply_that_fails_again_is_answered_failed_once_dead(harness: Harness, keys: Any) -> None:
    harness.server.publish_signed([V2_BLOCKED], keys[0])
    query(harness.url, "CREATE TABLE blocker (x INTEGER)")
    await harness.sync(max_attempts=1)
    request = harness.server.request("c1", "reapply", 2)
    await harness.sync(max_attempts=1)
    state, detail = harness.answers()[request.id]
    assert state == "failed"
    assert detail is not None and detail.startswith("0002_orders failed again:") and "blocker" in detail


async def test_each_request_is_carried_out_once_however_often_it_arrives(harness: Harness) -> None:
    await harness.sync()
    request = harness.server.request("c1", "revert", 3)
    await harness.sync()
    # The server lost the answer: it offers the request again.
    del harness.server.answers[request.id]
    harness.server.request("c1", "reapply", 3)  # (so that a second revert would show)
    harness.server.actions["c1"].reverse()
    result, states = await harness.sync()
    assert result.actions_received == 1, "only the reapply is new"
    assert states["0003_items"] == "applied"
    assert harness.answers()[request.id] == ("done", "reverted; held at version 3"), "answered again"
    rows = query(harness.url, "SELECT id, state FROM migsync_actions ORDER BY id")
    assert rows == [(1, "done"), (2, "done")]


async def test_answers_wait_while_the_server_is_down(harness: Harness) -> None:
    await harness.sync()
    request = harness.server.request("c1", "revert", 3)
    async with Client.connect(harness.url, sinks=[], clock=harness.clock) as client:
        transport = MemoryTransport(harness.server, client_id="c1")
        syncer = Syncer(client, transport, [harness.trusted], request_keys=[harness.requester])
        offer = await transport.fetch()
        await syncer.actions.receive(offer.actions)
        harness.server.down = True
        result = await syncer.sync()
        assert result.offline is not None
        # Carried out offline: the request arrived before the server went away.
        assert "items" not in tables(harness.url)
        assert [r.id for r, _ in await syncer.actions.undelivered()] == [request.id]
        harness.server.down = False
        result = await syncer.sync()
        assert result.actions_answered == 1
        assert await syncer.actions.undelivered() == []
    assert harness.answers()[request.id][0] == "done"


async def test_a_request_for_a_version_the_client_lacks_fails_with_the_reason(harness: Harness) -> None:
    await harness.sync()
    request = harness.server.request("c1", "reapply", 99)
    result, _ = await harness.sync()
    assert result.actions_answered == 1
    state, detail = harness.answers()[request.id]
    assert state == "failed" and detail is not None and "version 99 is not known here" in detail


async def test_a_reapply_of_an_applied_migration_is_done_at_once(harness: Harness) -> None:
    await harness.sync()
    request = harness.server.request("c1", "reapply", 2)
    await harness.sync()
    assert harness.answers()[request.id] == ("done", "0002_orders is applied already")


async def test_a_revert_of_nothing_applied_holds_all_the_same(harness: Harness) -> None:
    request = harness.server.request("c1", "revert", 1)  # before its first sync
    result, states = await harness.sync()
    assert set(states.values()) == {"held"}
    assert tables(harness.url).isdisjoint({"users", "orders", "items"})
    assert harness.answers()[request.id] == ("done", "nothing from version 1 on is applied here; held at 1")
    assert result.ok


async def test_a_local_queue_of_a_held_migration_lifts_the_hold(harness: Harness) -> None:
    await harness.sync()
    harness.server.request("c1", "revert", 2)
    await harness.sync()
    async with Client.connect(harness.url, sinks=[]) as client:
        assert await client.ledger.held_from() == 2
        await client.ledger.queue("0002_orders")
        assert await client.ledger.held_from() is None
    _, states = await harness.sync()
    assert set(states.values()) == {"applied"}


async def test_a_dirty_database_fails_the_request_with_the_reason(harness: Harness) -> None:
    await harness.sync()
    query(harness.url, "UPDATE client_migration_status SET dirty = TRUE WHERE version = '013'")
    request = harness.server.request("c1", "revert", 2)
    await harness.sync()
    state, detail = harness.answers()[request.id]
    assert state == "failed" and detail is not None and "0003_items" in detail and "repair" in detail
    assert "orders" in tables(harness.url), "nothing was reverted"


async def test_the_client_keeps_each_request_with_who_asked(harness: Harness) -> None:
    harness.server.request("c1", "revert", 3, "alice at the office")
    await harness.sync()
    async with Client.connect(harness.url, sinks=[]) as client:
        syncer = Syncer(
            client,
            MemoryTransport(harness.server, client_id="c1"),
            [harness.trusted],
            request_keys=[harness.requester],
        )
        [kept] = await syncer.actions.requests()
    assert kept["action"] == "revert" and kept["version"] == "3"
    assert kept["requested_by"] == "alice at the office" and kept["state"] == "done"
    # Nothing was applied: done at once (one answer), and delivered.
    assert kept["revision"] == kept["delivered_revision"] == 1


async def test_a_revert_on_postgres_runs_through_its_queue(
    pg_url: str, keys: tuple[Ed25519PrivateKey, TrustedKey], tmp_path: Path
) -> None:
    h = Harness(pg_url, keys[1], tmp_path / "request-key")
    h.server.publish_signed([V1, V2], keys[0])
    await h.sync()
    request = h.server.request("c1", "revert", 2)
    _, states = await h.sync()
    assert states == {"0001_users": "applied", "0002_orders": "held"}
    assert h.answers()[request.id][0] == "done"
    rows = await aquery(pg_url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'orders'")
    assert rows == [(0,)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"migrations": [], "actions": {}}, "actions is not a list"),
        ({"migrations": [], "actions": [1]}, r"actions\[0\] is not an object"),
        (
            {"migrations": [], "actions": [{"id": -1, "action": "revert", "version": 1}]},
            "id must be a non-negative integer",
        ),
        (
            {"migrations": [], "actions": [{"id": 1, "action": "drop", "version": 1}]},
            "action is not one of reapply, revert",
        ),
        (
            {"migrations": [], "actions": [{"id": 1, "action": "revert", "version": 1, "requested_by": 3}]},
            "requested_by is not a string",
        ),
        (
            {
                "migrations": [],
                "actions": [
                    {"id": 1, "action": "revert", "version": 1, "requested_by": "a", "requested_at": "x"}
                ],
            },
            "requested_at is not a number",
        ),
    ],
)
def test_a_malformed_request_list_is_a_clear_error(body: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedAnswer, match=message):
        actions_from_json(body, "GET /x")


def test_an_answer_without_actions_has_none() -> None:
    assert actions_from_json({"migrations": []}, "GET /x") == ()


class _Deaf(MemoryTransport):
    """Takes no answer (as a drop folder): neither records nor calls one unknown."""

    async def report_actions(self, results: Sequence[ActionResult]) -> ActionsAck:
        return ActionsAck()


async def test_an_answer_the_server_does_not_take_stays_for_the_next_sync(harness: Harness) -> None:
    await harness.sync()
    request = harness.server.request("c1", "revert", 3)
    async with Client.connect(harness.url, sinks=[], clock=harness.clock) as client:
        deaf = Syncer(
            client, _Deaf(harness.server, client_id="c1"), [harness.trusted], request_keys=[harness.requester]
        )
        result = await deaf.sync()
        assert result.actions_received == 1 and result.actions_answered == 0
        assert [r.state for r, _ in await deaf.actions.undelivered()] == ["done"]
        assert harness.answers() == {}
        result = await Syncer(
            client,
            MemoryTransport(harness.server, client_id="c1"),
            [harness.trusted],
            request_keys=[harness.requester],
        ).sync()
    assert result.actions_answered == 1
    assert harness.answers()[request.id] == ("done", "reverted; held at version 3")


async def test_a_version_3_client_database_is_upgraded_in_place(
    any_url: str, keys: tuple[Ed25519PrivateKey, TrustedKey], tmp_path: Path
) -> None:
    h = Harness(any_url, keys[1], tmp_path / "request-key")
    h.server.publish_signed([V1, V2], keys[0])
    await h.sync()
    for statement in (
        "DROP TABLE migsync_actions",
        "ALTER TABLE migsync_report_outbox DROP COLUMN dead",
        "UPDATE migsync_meta SET value = '3' WHERE key = 'schema_version'",
    ):
        await aquery(any_url, statement)
    request = h.server.request("c1", "revert", 2)
    result, states = await h.sync()
    assert result.ok and states == {"0001_users": "applied", "0002_orders": "held"}
    assert h.answers()[request.id][0] == "done"
    assert await aquery(any_url, "SELECT value FROM migsync_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert await aquery(any_url, "SELECT version, dead FROM migsync_report_outbox ORDER BY version") == [
        ("011", False),
        ("012", False),
    ]


async def test_status_shows_the_hold_and_how_to_lift_it(harness: Harness) -> None:
    await harness.sync()
    harness.server.request("c1", "revert", 2)
    await harness.sync()
    shown = run("status", "--db", harness.url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(re.search(r"^\s*2\s+0002_orders\s+pending \(held\)", line) for line in lines), shown.stdout
    assert "held from 0002_orders on: the server asked this client to revert it" in shown.stdout
    assert "'migsync queue --db URL 0002_orders' lifts the hold here" in " ".join(shown.stdout.split())
    as_json = run("status", "--db", harness.url, "--json")
    held = {m["name"]: m["held"] for m in json.loads(as_json.stdout)["migrations"]}
    assert held == {"0001_users": False, "0002_orders": True, "0003_items": True}


async def test_a_reapply_runs_a_failed_migration_now_without_waiting_for_its_backoff(
    harness: Harness, keys: Any
) -> None:
    harness.server.publish_signed([V2_BLOCKED], keys[0])
    query(harness.url, "CREATE TABLE blocker (x INTEGER)")
    await harness.sync(max_attempts=5)
    async with Client.connect(harness.url, sinks=[]) as client:
        [failed] = [s for s in await client.status() if s.version == 2]
        assert failed.state == "failed" and failed.next_attempt_at is not None
    query(harness.url, "DROP TABLE blocker")
    harness.server.request("c1", "reapply", 2)
    async with Client.connect(harness.url, sinks=[], max_attempts=5, clock=harness.clock) as client:
        # No ignore_backoff, and the clock has not moved: only the request makes it run now.
        result = await Syncer(
            client,
            MemoryTransport(harness.server, client_id="c1"),
            [harness.trusted],
            request_keys=[harness.requester],
        ).sync()
        assert result.ok, result.to_json()
        assert {s.name: s.state for s in await client.status()}["0002_orders"] == "applied"


async def test_a_long_error_is_cut_in_the_answer_so_the_server_takes_it(harness: Harness, keys: Any) -> None:
    long_name = "x" * 30000
    harness.server.publish_signed([migration(2, "0002_orders", f"SELECT * FROM {long_name}")], keys[0])
    await harness.sync(max_attempts=1)
    request = harness.server.request("c1", "reapply", 2)
    await harness.sync(max_attempts=1)
    state, detail = harness.answers()[request.id]
    assert state == "failed" and detail is not None
    assert len(detail) == 16 * 1024 and detail.endswith("...") and long_name[:100] in detail
