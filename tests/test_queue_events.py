"""Events that scale with the queue: one event for a queue of N, and a sink that falls
behind warned about once per burst, with the count (issue 18)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from conftest import write_migrations

from migsync import Client, load_directory
from migsync.core.events import (
    BaseEventSink,
    Event,
    EventDispatcher,
    MigrationApplied,
    MigrationQueued,
    MigrationsQueued,
)
from migsync.core.plugins import make_plugins


class Recorder(BaseEventSink):
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.events.append(event)


def folder(directory: Path, n: int) -> Path:
    return write_migrations(
        directory,
        {
            f"{i:04d}_t{i}.sql": (
                f"-- migrate:up\nCREATE TABLE t{i} (id INTEGER);\n-- migrate:down\nDROP TABLE t{i};\n"
            )
            for i in range(1, n + 1)
        },
    )


async def test_a_queue_of_many_is_one_event_and_of_one_the_single_event(tmp_path: Path) -> None:
    recorder = Recorder()
    async with Client.connect(
        f"sqlite:///{tmp_path}/db.sqlite", plugins=make_plugins(autoload=False), sinks=[]
    ) as client:
        client.events.add(recorder)
        await client.ledger.record(load_directory(folder(tmp_path / "m", 4)))
        assert await client.ledger.queue("0001_t1") == ["0001_t1"]
        await client.ledger.queue_pending()
        assert (await client.process()).ok
        await client.ledger.revert(everything=True)
    queued = [e for e in recorder.events if isinstance(e, MigrationQueued | MigrationsQueued)]
    assert [e.kind for e in queued] == ["migration_queued", "migrations_queued", "migrations_queued"]
    single, rest, reverts = queued
    assert isinstance(single, MigrationQueued) and single.name == "0001_t1" and single.operation == "apply"
    assert isinstance(rest, MigrationsQueued) and isinstance(reverts, MigrationsQueued)
    assert rest.names == ("0002_t2", "0003_t3", "0004_t4") and (rest.first, rest.last) == (2, 4)
    assert rest.count == 3 and rest.operation == "apply"
    assert reverts.names == ("0004_t4", "0003_t3", "0002_t2", "0001_t1") and (
        reverts.first,
        reverts.last,
    ) == (4, 1)
    assert json.loads(json.dumps(reverts.to_dict()))["names"] == ["0004_t4", "0003_t3", "0002_t2", "0001_t1"]
    assert reverts.to_dict()["first"] == "4" and reverts.to_dict()["last"] == "1"
    assert "names=0004_t4,0003_t3,...,0001_t1(4)" in reverts.describe()


class Blocked(BaseEventSink):
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.got = 0

    async def emit(self, event: Event) -> None:
        await self.release.wait()
        self.got += 1


def applied(i: int) -> MigrationApplied:
    return MigrationApplied(name=f"{i:04d}_x", version=i, duration=0.0)


def behind(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "migsync.events"]


async def test_a_sink_that_falls_behind_is_warned_about_once_per_burst_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="migsync.events")
    sink = Blocked()
    dispatcher = EventDispatcher([sink], queue_size=3)
    for i in range(50):
        dispatcher.emit(applied(i))
    await asyncio.sleep(0)  # the worker takes the first event and waits in the sink
    dropped = dispatcher.dropped
    assert dropped >= 46
    assert behind(caplog) == [
        "event sink Blocked is behind; dropping events (from migration_applied) until it catches up"
    ]
    sink.release.set()
    while sink.got < 50 - dropped:  # the sink catches up with what was kept
        await asyncio.sleep(0)
    dispatcher.emit(applied(51))  # taken again: the burst is over, and its count said
    assert behind(caplog)[1:] == [f"event sink Blocked was behind: {dropped} event(s) dropped"]
    # A second burst is warned about again; aclose says its count.
    sink.release.clear()
    for i in range(10):
        dispatcher.emit(applied(100 + i))
    assert len(behind(caplog)) == 3
    sink.release.set()
    await dispatcher.aclose()
    second = dispatcher.dropped - dropped
    assert second > 0 and behind(caplog)[3:] == [f"event sink Blocked was behind: {second} event(s) dropped"]
