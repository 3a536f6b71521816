"""Event records, the dispatcher's isolation, and the built-in sinks."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from migsync.core.errors import ConfigError
from migsync.core.events import BaseEventSink, Event, EventDispatcher, MigrationApplied, MigrationDead
from migsync.plugins.sinks import EventBus, JsonLinesSink, LoggingSink


def applied(name: str = "0001_a") -> MigrationApplied:
    return MigrationApplied(name=name, version=1, duration=0.5, timestamp=1.0)


def test_event_to_dict_and_describe() -> None:
    event = applied()
    assert event.to_dict() == {
        "kind": "migration_applied",
        "timestamp": 1.0,
        "name": "0001_a",
        "version": "1",  # a version is text in JSON: it may be 20 digits, or dotted
        "duration": 0.5,
    }
    assert event.describe() == "migration_applied name='0001_a' version=1 duration=0.5000"


async def test_bus_subscribe_filter_unsubscribe_and_async_callbacks() -> None:
    bus = EventBus()
    seen: list[str] = []

    async def async_callback(event: Event) -> None:
        seen.append(f"async:{event.kind}")

    stop = bus.subscribe(lambda e: seen.append(f"sync:{e.kind}"), "migration_applied")
    bus.subscribe(async_callback)
    bus.subscribe(lambda e: 1 / 0)  # a failing subscriber does not stop the others
    await bus.emit(applied())
    await bus.emit(MigrationDead(name="x", version=2, operation="apply", error="e", attempts=3))
    stop()
    await bus.emit(applied())
    assert seen == [
        "sync:migration_applied",
        "async:migration_applied",
        "async:migration_dead",
        "async:migration_applied",
    ]


async def test_jsonl_sink_appends_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonLinesSink({"path": str(path)})
    await sink.emit(applied("a"))
    await sink.emit(applied("b"))
    await sink.aclose()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["kind"], x["name"]) for x in lines] == [("migration_applied", "a"), ("migration_applied", "b")]
    with pytest.raises(ConfigError, match="needs a path"):
        JsonLinesSink({})
    with pytest.raises(ConfigError, match="unknown options \\['colour'\\]"):
        JsonLinesSink({"path": str(path), "colour": "red"})
    with pytest.raises(ConfigError, match="does not exist"):
        JsonLinesSink({"path": str(tmp_path / "no" / "x.jsonl")})


async def test_logging_sink_levels(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingSink({"logger": "test.events"})
    with caplog.at_level(logging.DEBUG, logger="test.events"):
        await sink.emit(applied())
        await sink.emit(MigrationDead(name="x", version=2, operation="apply", error="e", attempts=3))
    assert [(r.levelno, r.getMessage().split()[0]) for r in caplog.records] == [
        (logging.INFO, "migration_applied"),
        (logging.ERROR, "migration_dead"),
    ]


class Slow(BaseEventSink):
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.got: list[str] = []

    async def emit(self, event: Event) -> None:
        await self.release.wait()
        self.got.append(getattr(event, "name", ""))


async def test_dispatcher_never_blocks_and_bounds_a_slow_sink() -> None:
    slow = Slow()
    dispatcher = EventDispatcher([slow], timeout=5.0, queue_size=2)
    for i in range(5):
        dispatcher.emit(applied(str(i)))  # returns at once even though the sink is stuck
    await asyncio.sleep(0)
    assert dispatcher.dropped >= 2
    slow.release.set()
    await dispatcher.aclose()
    assert slow.got[0] == "0" and len(slow.got) == 5 - dispatcher.dropped


async def test_dispatcher_times_out_a_stuck_sink(caplog: pytest.LogCaptureFixture) -> None:
    class Stuck(BaseEventSink):
        async def emit(self, event: Event) -> None:
            await asyncio.sleep(60)

    dispatcher = EventDispatcher([Stuck()], timeout=0.05)
    with caplog.at_level(logging.WARNING, logger="migsync.events"):
        dispatcher.emit(applied())
        await dispatcher.aclose(timeout=60)  # returns once the 0.05 s timeout let the worker go
    assert any("took over 0.1s" in r.getMessage() or "took over" in r.getMessage() for r in caplog.records)


def test_public_api_resolves() -> None:
    import migsync

    for name in migsync.__all__:
        assert getattr(migsync, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = migsync.nope
