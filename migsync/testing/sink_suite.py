"""A conformance suite for event sinks, built-in and third-party.

Subclass :class:`EventSinkSuite` in a test module and say which sink to build
(its name and options, as ``--sink NAME:key=value`` gives them); every test
then runs against a sink made through the plugin registry, as migsync makes
one::

    import pytest
    from migsync import make_plugins
    from migsync.testing.sink_suite import EventSinkSuite

    import my_plugin

    class TestStdoutSink(EventSinkSuite):
        @pytest.fixture
        def sink_name(self):
            return "stdout"

        @pytest.fixture
        def plugins(self):
            return make_plugins(autoload=False, extra=[my_plugin])

Optional fixtures: ``sink_options`` (default ``{}``) and ``plugins`` (default
``make_plugins()``). What the suite holds a sink to, beyond
:class:`migsync.core.events.EventSink`: it is built from a ``dict[str, str]``
of options, keeps every member of the protocol (``async def emit``), takes
every kind of event the processor and a sync emit without raising, does so
through :class:`~migsync.core.events.EventDispatcher` (its own queue and
task), and closes (``aclose``, when it has one) once, after any number of
events or none.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from migsync.core import contracts
from migsync.core.events import (
    Event,
    EventDispatcher,
    EventSink,
    MigrationApplied,
    MigrationDead,
    MigrationDirty,
    MigrationFailed,
    MigrationQueued,
    MigrationRepaired,
    MigrationReverted,
    MigrationsQueued,
    MigrationWaiting,
    PassCompleted,
)
from migsync.core.plugins import Plugins, make_plugins
from migsync.core.sync_events import ChangeDead, ChangeFailed, ChangesPushed, MigrationRefused, SyncCompleted

#: One event of every kind migsync emits.
EVERY_KIND: tuple[Event, ...] = (
    MigrationQueued(name="0001_users", version=1, operation="apply"),
    MigrationsQueued(operation="apply", names=["0001_users", "0002_orders"], first=1, last="1.2.10"),
    MigrationApplied(name="0001_users", version=1, duration=0.01),
    MigrationReverted(name="0001_users", version=1, duration=0.01),
    MigrationFailed(
        name="0002_orders", version="1.2.10", operation="apply", error="boom", attempts=1,
        max_attempts=3, next_attempt_at=1_700_000_060.0,
    ),
    MigrationDead(name="0002_orders", version=2, operation="apply", error="boom", attempts=3),
    MigrationDirty(name="0003_index", version=3, operation="apply", error="half-way", attempts=1),
    MigrationRepaired(name="0003_index", version=3, applied=False),
    MigrationWaiting(label="0003_index", waited=5.0, blocked_by=["pid 42: VACUUM"], pids=[42]),
    PassCompleted(queue="migrations", processed=2, failed=1, remaining=0),
    ChangesPushed(count=2, first_seq=1, last_seq=2),
    ChangeFailed(
        change_id="c1", entity="todo", entity_id="1", error="no such table: todo", attempts=1,
        max_attempts=3, next_attempt_at=1_700_000_060.0,
    ),
    ChangeDead(change_id="c1", entity="todo", entity_id="1", error="no such table: todo", attempts=3),
    MigrationRefused(name="0004_evil", version=4, reason="bad signature"),
    SyncCompleted(
        server="http://127.0.0.1:8080", offline=None, stored=1, refused=0, delivered=1, undelivered=0
    ),
)  # fmt: skip


class EventSinkSuite:
    """The contract of :class:`migsync.core.events.EventSink`, as tests."""

    @pytest.fixture
    def sink_name(self) -> str:
        raise NotImplementedError("an EventSinkSuite subclass must define the sink_name fixture")

    @pytest.fixture
    def sink_options(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins()

    @pytest.fixture
    def sink(self, plugins: Plugins, sink_name: str, sink_options: dict[str, str]) -> EventSink:
        # Through plugins.build, as migsync builds it: a sink that breaks the contract fails here.
        built: EventSink = plugins.build(
            plugins.event_sinks, plugins.event_sinks.get(sink_name), dict(sink_options)
        )
        return built

    async def test_is_an_event_sink(self, sink: EventSink) -> None:
        assert isinstance(sink, EventSink)
        assert contracts.problems("event sink", sink) == []
        await _close(sink)

    async def test_emit_takes_every_kind_of_event(self, sink: EventSink) -> None:
        try:
            for event in EVERY_KIND:
                await sink.emit(event)
        finally:
            await _close(sink)

    async def test_emit_through_the_dispatcher_logs_no_failure(
        self, sink: EventSink, caplog: pytest.LogCaptureFixture
    ) -> None:
        dispatcher = EventDispatcher([sink], timeout=5.0)
        with caplog.at_level(logging.WARNING, logger="migsync.events"):
            for event in EVERY_KIND:
                dispatcher.emit(event)
            await dispatcher.aclose()  # delivers what is queued, then closes the sink
        failures = [
            r.getMessage()
            for r in caplog.records
            if r.name == "migsync.events" and r.levelno >= logging.WARNING
        ]
        assert not [m for m in failures if m.startswith("event sink")], failures
        assert dispatcher.dropped == 0

    async def test_closes_without_having_emitted(self, sink: EventSink) -> None:
        await _close(sink)


async def _close(sink: Any) -> None:
    close = getattr(sink, "aclose", None)
    if close is not None:
        await close()


__all__ = ["EVERY_KIND", "EventSinkSuite"]
