"""Rollouts in the store (migsync.server.rollout_store) on SQLite and Postgres: who is offered
what, ETags that move with a rollout, stages that start by themselves after their soak, a
rollout that pauses (and asks for reverts) on failures, operators, labels, clients appearing
mid-rollout, app-version requirements, status events and their retention."""

from __future__ import annotations

from pathlib import Path

import pytest
from clocks import SteppedClock
from dbtools import aquery

from migsync.core.errors import ConfigError
from migsync.core.migration import Migration, Script
from migsync.core.version import Version
from migsync.protocol.signing import load_private_key
from migsync.protocol.wire import StatusReport
from migsync.server import Store
from migsync.server.rollout_store import EVALUATE_EVERY
from migsync.server.rollouts import Policy, RolloutError, parse_stages


def migration(version: int, up: str = "SELECT 1") -> Migration:
    return Migration(version, f"{version:04d}_m{version}", {"*": Script(up)}, {"*": Script("SELECT 1")})


V1, V2 = migration(1), migration(2)


def applied(m: Migration) -> StatusReport:
    return StatusReport(m.version, True, None, 1, m.checksum)


def failed(m: Migration) -> StatusReport:
    return StatusReport(m.version, False, "boom", 1, m.checksum)


async def offered(store: Store, client_id: int) -> list[str]:
    _, items = await store.pending(client_id)
    return [i.version.text for i in items]


async def fleet_of(store: Store, canaries: int, others: int) -> tuple[list[int], list[int]]:
    canary = [(await store.add_client(f"canary{i}", {"group": "canary"}))[0] for i in range(canaries)]
    rest = [(await store.add_client(f"plain{i}"))[0] for i in range(others)]
    return canary, rest


async def test_only_started_stages_are_offered_and_a_stage_starts_after_its_soak(
    any_store: str, key_path: Path
) -> None:
    clock = SteppedClock()
    async with Store.open(any_store, clock=clock) as store:
        canary, rest = await fleet_of(store, 2, 5)
        await store.publish([V1], load_private_key(key_path))  # published to all: no rollout
        result = await store.publish(
            [V1, V2],
            load_private_key(key_path),
            rollout=(parse_stages("canary,all"), Policy(soak=60), "alice"),
        )
        assert result.rollout_id is not None
        for c in canary:
            assert await offered(store, c) == ["1", "2"]
        for c in rest:
            assert await offered(store, c) == ["1"]  # 2 is held back; 1 was not part of the rollout
        etag_before = (await store.pending(rest[0]))[0].etag
        for c in canary:
            await store.report(c, [applied(V1), applied(V2)])
        status = await store.rollout_status(result.rollout_id)
        assert status.rollout.state.stage == 0  # soak not over
        assert [c.to_json() for c in status.counts] == [
            {"members": 2, "applied": 2, "failed": 0, "pending": 0},
            {"members": 5, "applied": 0, "failed": 0, "pending": 5},
        ]
        clock.advance(60)
        status = await store.rollout_status(result.rollout_id)
        assert (status.rollout.state.state, status.rollout.state.stage) == ("running", 1)
        state, items = await store.pending(rest[0])
        assert [i.version.text for i in items] == ["1", "2"]
        assert state.etag != etag_before  # the poll fetches again
        assert [(a.who, a.what) for a in status.audit] == [
            ("alice", "started: 2 in stages canary, all"),
            ("migsync", "started all: canary passed"),
        ]


async def test_a_report_moves_the_rollout_without_anyone_reading_it(any_store: str, key_path: Path) -> None:
    clock = SteppedClock()
    async with Store.open(any_store, clock=clock) as store:
        canary, rest = await fleet_of(store, 1, 2)
        result = await store.publish(
            [V1], load_private_key(key_path), rollout=(parse_stages("canary,all"), Policy(soak=0), "ops")
        )
        assert await offered(store, rest[0]) == []
        await store.report(canary[0], [applied(V1)])
        assert await offered(store, rest[0]) == ["1"]
        await store.report(rest[0], [applied(V1)])
        # reports of success evaluate it at most every EVALUATE_EVERY seconds: this one did not
        [rollout] = await store.rollouts()
        assert rollout.state.state == "running"
        clock.advance(EVALUATE_EVERY)
        await store.report(rest[1], [applied(V1)])
        [rollout] = await store.rollouts()
        assert rollout.id == result.rollout_id and rollout.state.state == "completed"


async def test_a_failure_is_evaluated_at_once(any_store: str, key_path: Path) -> None:
    async with Store.open(any_store, clock=SteppedClock()) as store:
        canary, _ = await fleet_of(store, 3, 1)
        result = await store.publish(
            [V1], load_private_key(key_path), rollout=(parse_stages("canary,all"), Policy(), "ops")
        )
        await store.report(canary[0], [applied(V1)])  # evaluated: nothing to do (soak)
        await store.report(canary[1], [failed(V1)])  # within EVALUATE_EVERY, but a failure
        [rollout] = await store.rollouts()
        assert rollout.id == result.rollout_id and rollout.state.state == "paused"


async def test_a_failing_canary_pauses_the_rollout_and_revert_is_asked(
    any_store: str, key_path: Path
) -> None:
    clock = SteppedClock()
    async with Store.open(any_store, clock=clock) as store:
        canary, rest = await fleet_of(store, 3, 4)
        plan = (parse_stages("canary,all"), Policy(soak=600, on_failure="revert"), "ops")
        result = await store.publish([V1], load_private_key(key_path), rollout=plan)
        assert result.rollout_id is not None
        await store.report(canary[0], [applied(V1)])
        await store.report(canary[1], [failed(V1)])
        status = await store.rollout_status(result.rollout_id)
        assert status.rollout.state.state == "paused"
        assert "1 of 2 clients that reported failed" in (status.rollout.state.reason or "")
        clock.advance(3600)  # a paused rollout starts no stage, however long it waits
        await store.report(canary[2], [applied(V1)])
        status = await store.rollout_status(result.rollout_id)
        assert (status.rollout.state.state, status.rollout.state.stage) == ("paused", 0)
        for c in rest:
            assert await offered(store, c) == []
        # the canary that applied it is asked to revert it; the one that failed is not
        requests = await store.actions()
        assert {(r.client_id, r.action, r.version.text) for r in requests} == {(canary[0], "revert", "1")}
        assert requests[0].requested_by == f"rollout {result.rollout_id}"
        # resuming accepts the failure seen; the next stage starts after its soak
        await store.rollout_operate(result.rollout_id, "resume", "bob")
        clock.advance(600)
        status = await store.rollout_status(result.rollout_id)
        assert (status.rollout.state.state, status.rollout.state.stage) == ("running", 1)
        assert any(a.who == "bob" and a.what == "resumed (by bob)" for a in status.audit)


async def test_operators_pause_advance_abort(any_store: str, key_path: Path) -> None:
    clock = SteppedClock()
    async with Store.open(any_store, clock=clock) as store:
        canary, rest = await fleet_of(store, 1, 3)
        await store.publish([V1], load_private_key(key_path))
        rollout = await store.start_rollout([V1.version], parse_stages("canary,all"), Policy(), "ops")
        paused = await store.rollout_operate(rollout.id, "pause", "ann")
        assert paused.state.state == "paused"
        with pytest.raises(RolloutError, match="paused already"):
            await store.rollout_operate(rollout.id, "pause", "ann")
        etag = (await store.pending(rest[0]))[0].etag
        advanced = await store.rollout_operate(rollout.id, "advance", "ann")
        assert (advanced.state.state, advanced.state.stage) == ("running", 1)
        assert (await store.pending(rest[0]))[0].etag != etag
        assert await offered(store, rest[0]) == ["1"]
        await store.report(rest[0], [applied(V1)])
        aborted = await store.rollout_operate(rollout.id, "abort", "ann")
        assert aborted.state.state == "aborted"
        assert await offered(store, rest[1]) == []  # nobody new gets it
        assert await offered(store, canary[0]) == []
        with pytest.raises(RolloutError, match="aborted"):
            await store.rollout_operate(rollout.id, "resume", "ann")
        with pytest.raises(ConfigError, match="no rollout 99"):
            await store.rollout_operate(99, "pause", "ann")
        # a new rollout of the version supersedes the aborted one
        again = await store.start_rollout([V1.version], parse_stages("all"), Policy(soak=0), "ann")
        assert again.state.state in ("running", "completed")
        assert await offered(store, rest[1]) == ["1"]


async def test_a_rollout_holds_later_versions_too(any_store: str, key_path: Path) -> None:
    async with Store.open(any_store, clock=SteppedClock()) as store:
        _, rest = await fleet_of(store, 1, 1)
        key = load_private_key(key_path)
        await store.publish([V1], key, rollout=(parse_stages("canary,all"), Policy(), "ops"))
        await store.publish([V1, V2], key)  # 2 for everyone, but it comes after 1
        assert await offered(store, rest[0]) == []


async def test_labels_and_clients_appearing_mid_rollout(any_store: str, key_path: Path) -> None:
    async with Store.open(any_store, clock=SteppedClock()) as store:
        _, rest = await fleet_of(store, 1, 2)
        await store.publish(
            [V1], load_private_key(key_path), rollout=(parse_stages("canary,all"), Policy(), "o")
        )
        etag = (await store.pending(rest[0]))[0].etag
        record = await store.label_client("plain0", {"group": "canary", "region": "eu"})
        assert record.labels == {"group": "canary", "region": "eu"}
        assert (await store.pending(rest[0]))[0].etag != etag
        assert await offered(store, rest[0]) == ["1"]
        late, _ = await store.add_client("late", {"group": "canary"})
        assert await offered(store, late) == ["1"]
        record = await store.label_client("plain0", {"group": None})
        assert record.labels == {"region": "eu"}
        assert await offered(store, rest[0]) == []
        with pytest.raises(ConfigError, match="no client named"):
            await store.label_client("nobody", {"a": "b"})
        [entry] = [e for e in await store.fleet() if e.client.client_id == rest[0]]
        assert entry.to_json()["labels"] == {"region": "eu"}


async def test_app_version_requirements(any_store: str, key_path: Path) -> None:
    needs = migration(1, "-- migsync:requires app>=2.3, app<3\nCREATE TABLE t (x INTEGER)")
    async with Store.open(any_store, clock=SteppedClock()) as store:
        old, _ = await store.add_client("old")
        new, _ = await store.add_client("new")
        silent, _ = await store.add_client("silent")
        await store.publish([needs, V2], load_private_key(key_path))
        await store.set_app_version(old, "2.2")
        etag = (await store.pending(new))[0].etag
        await store.set_app_version(new, "2.4.1-beta")
        assert (await store.pending(new))[0].etag != etag
        assert await offered(store, old) == []  # 1 is held, and 2 after it
        assert await offered(store, new) == ["1", "2"]
        assert await offered(store, silent) == []
        held = {e.client.name: e.to_json()["held_by_app"] for e in await store.fleet()}
        assert held == {
            "old": [{"version": "1", "requires": "app>=2.3, app<3"}],
            "new": [],
            "silent": [{"version": "1", "requires": "app>=2.3, app<3"}],
        }


async def test_status_events_are_kept_for_the_retention(any_store: str, key_path: Path) -> None:
    clock = SteppedClock()
    async with Store.open(any_store, clock=clock) as store:
        client, _ = await store.add_client("c")
        await store.publish([V1], load_private_key(key_path))
        await store.report(client, [failed(V1)])
        await store.report(client, [failed(V1)])  # unchanged: no event
        clock.advance(10)
        await store.report(client, [applied(V1)])
        rows = await aquery(_raw(any_store), "SELECT state, at FROM store_status_events ORDER BY id")
        assert [(s, a - clock.current) for s, a in rows] == [("failed", -10.0), ("applied", 0.0)]
        await store.set_event_retention(5)
        clock.advance(6)
        await store.report(client, [StatusReport(V1.version, False, None, 1, V1.checksum)])  # reverted
        rows = await aquery(_raw(any_store), "SELECT state FROM store_status_events ORDER BY id")
        assert rows == [("pending",)]
        with pytest.raises(ConfigError, match="above 0"):
            await store.set_event_retention(0)


async def test_history_shows_counts_over_time(any_store: str, key_path: Path) -> None:
    clock = SteppedClock()
    async with Store.open(any_store, clock=clock) as store:
        canary, _ = await fleet_of(store, 2, 2)
        result = await store.publish(
            [V1], load_private_key(key_path), rollout=(parse_stages("canary,all"), Policy(soak=100), "o")
        )
        assert result.rollout_id is not None
        clock.advance(50)
        await store.report(canary[0], [applied(V1)])
        clock.advance(50)
        await store.report(canary[1], [applied(V1)])
        status = await store.rollout_status(result.rollout_id, points=4)
        assert [[c.applied for c in counts] for _, counts in status.history] == [
            [0, 0],
            [1, 0],
            [1, 0],
            [2, 0],
        ]
        assert status.to_json()["history"][-1]["stages"][0] == {
            "members": 2,
            "applied": 2,
            "failed": 0,
            "pending": 0,
        }


async def test_bad_rollouts_are_refused_and_write_nothing(any_store: str, key_path: Path) -> None:
    async with Store.open(any_store, clock=SteppedClock()) as store:
        key = load_private_key(key_path)
        with pytest.raises(ConfigError, match="version 7 is not published"):
            await store.start_rollout([Version.parse(7)], parse_stages("all"), Policy(), "o")
        await store.publish([V1], key)
        with pytest.raises(ConfigError, match="nothing to roll out"):
            await store.publish([V1], key, rollout=(parse_stages("all"), Policy(), "o"))
        assert await store.rollouts() == []


def _raw(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "")
