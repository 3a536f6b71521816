"""Processor events and their delivery to sinks.

Events are small attrs records with a ``kind``. The processor hands them to
an :class:`EventDispatcher` only after the transaction they describe has
committed. The dispatcher gives each sink its own bounded queue and worker
task, so a slow sink delays nobody but itself and a failing one is logged
and skipped: the processor never waits on a sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs

from migsync.core.contracts import to_implement
from migsync.core.errors import ConfigError
from migsync.core.version import Version, as_version

log = logging.getLogger("migsync.events")


def _now() -> float:
    return time.time()


@attrs.frozen(kw_only=True)
class Event:
    """Base of all events. ``kind`` names the event in sinks and logs."""

    kind: ClassVar[str] = "event"
    timestamp: float = attrs.field(factory=_now)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (a version as its text, ``"1.2.10"``)."""
        return {"kind": self.kind, **attrs.asdict(self, value_serializer=_plain)}

    def describe(self) -> str:
        """One line for logs: the kind, then the fields that say what happened."""
        shown = attrs.asdict(self, recurse=False).items()
        fields = " ".join(f"{k}={_brief(v)}" for k, v in shown if k not in _NOT_DESCRIBED)
        return f"{self.kind} {fields}"


_NOT_DESCRIBED = frozenset({"timestamp", "next_attempt_at"})


def _plain(instance: object, field: object, value: Any) -> Any:
    return value.text if isinstance(value, Version) else value


def _brief(value: object) -> str:
    if isinstance(value, Version):
        return value.text
    if isinstance(value, tuple) and len(value) > 3:  # a log line names a few, then counts
        return f"{','.join(map(str, value[:2]))},...,{value[-1]}({len(value)})"
    if isinstance(value, float):
        return f"{value:.4f}"
    return repr(value)


@attrs.frozen(kw_only=True)
class MigrationEvent(Event):
    name: str
    version: Version = attrs.field(converter=as_version)


@attrs.frozen(kw_only=True)
class MigrationQueued(MigrationEvent):
    kind: ClassVar[str] = "migration_queued"
    operation: str


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(names)


@attrs.frozen(kw_only=True)
class MigrationsQueued(Event):
    """Several migrations queued by one request, in one event (not one each): ``names`` in
    the order they will run, ``first`` and ``last`` their versions in that order."""

    kind: ClassVar[str] = "migrations_queued"
    operation: str
    names: tuple[str, ...] = attrs.field(converter=_names)
    first: Version = attrs.field(converter=as_version)
    last: Version = attrs.field(converter=as_version)

    @property
    def count(self) -> int:
        return len(self.names)


@attrs.frozen(kw_only=True)
class MigrationApplied(MigrationEvent):
    kind: ClassVar[str] = "migration_applied"
    duration: float


@attrs.frozen(kw_only=True)
class MigrationReverted(MigrationEvent):
    kind: ClassVar[str] = "migration_reverted"
    duration: float


@attrs.frozen(kw_only=True)
class MigrationFailed(MigrationEvent):
    kind: ClassVar[str] = "migration_failed"
    operation: str
    error: str
    attempts: int
    max_attempts: int
    next_attempt_at: float


@attrs.frozen(kw_only=True)
class MigrationDead(MigrationEvent):
    kind: ClassVar[str] = "migration_dead"
    operation: str
    error: str
    attempts: int


@attrs.frozen(kw_only=True)
class MigrationDirty(MigrationEvent):
    """A migration that runs outside a transaction stopped half-way: a person must repair it."""

    kind: ClassVar[str] = "migration_dirty"
    operation: str
    error: str
    attempts: int


@attrs.frozen(kw_only=True)
class MigrationRepaired(MigrationEvent):
    kind: ClassVar[str] = "migration_repaired"
    applied: bool


@attrs.frozen(kw_only=True)
class MigrationWaiting(Event):
    """A migration's script has waited ``waited`` seconds on a lock other sessions hold
    (Postgres); repeated while the wait lasts. ``blocked_by`` describes each holder."""

    kind: ClassVar[str] = "migration_waiting"
    label: str
    waited: float
    blocked_by: list[str]
    pids: list[int]


@attrs.frozen(kw_only=True)
class PassCompleted(Event):
    """One processor pass over a queue has finished."""

    kind: ClassVar[str] = "pass_completed"
    queue: str
    processed: int
    failed: int
    remaining: int
    blocked_by: str | None = None


@runtime_checkable
class EventSink(Protocol):
    """What a sink must have, checked when it loads. Optional: ``async aclose()``, called once
    at shutdown, and ``name``, for log messages (the class name otherwise)."""

    async def emit(self, event: Event) -> None:
        """Deliver one event; a sink that raises or is slow is logged and skipped."""


class BaseEventSink:
    """Base for sinks: override ``emit``; ``aclose`` is called once at shutdown."""

    name: ClassVar[str] = ""

    @to_implement
    async def emit(self, event: Event) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class EventDispatcher:
    """Fans events out to sinks without ever blocking the caller.

    ``timeout`` bounds each ``sink.emit`` call; ``queue_size`` bounds what a
    sink may fall behind by, after which its events are dropped (and counted
    in ``dropped``) rather than kept in memory without limit. A sink that falls
    behind is warned about once per burst: when it starts dropping, and with
    the count once it takes events again (or at ``aclose``).
    """

    def __init__(self, sinks: Iterable[EventSink] = (), *, timeout: float = 5.0, queue_size: int = 1000):
        self.sinks = list(sinks)
        self.timeout = timeout
        self.queue_size = queue_size
        self.dropped = 0
        self._dropping: dict[int, int] = {}  # sink index: events dropped in the current burst
        self._queues: dict[int, asyncio.Queue[Event | None]] = {}
        self._workers: list[asyncio.Task[None]] = []

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        if not self.sinks:
            return
        if not self._workers:
            self._start()
        for index, sink in enumerate(self.sinks):
            try:
                self._queues[index].put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1
                burst = self._dropping.get(index, 0)
                if not burst:
                    log.warning(
                        "event sink %s is behind; dropping events (from %s) until it catches up",
                        _sink_name(sink),
                        event.kind,
                    )
                self._dropping[index] = burst + 1
            else:
                if self._dropping:
                    self._end_burst(index, sink)

    def _end_burst(self, index: int, sink: EventSink) -> None:
        dropped = self._dropping.pop(index, 0)
        if dropped:
            log.warning("event sink %s was behind: %d event(s) dropped", _sink_name(sink), dropped)

    def _start(self) -> None:
        for index, sink in enumerate(self.sinks):
            queue: asyncio.Queue[Event | None] = asyncio.Queue(self.queue_size)
            self._queues[index] = queue
            self._workers.append(asyncio.create_task(self._work(sink, queue)))

    async def _work(self, sink: EventSink, queue: asyncio.Queue[Event | None]) -> None:
        while True:
            event = await queue.get()
            if event is None:
                return
            try:
                await asyncio.wait_for(sink.emit(event), self.timeout)
            except TimeoutError:
                log.warning(
                    "event sink %s took over %.1fs on %s; skipped",
                    _sink_name(sink),
                    self.timeout,
                    event.kind,
                )
            except Exception:
                log.exception("event sink %s failed on %s", _sink_name(sink), event.kind)

    async def aclose(self, timeout: float | None = None) -> None:
        """Deliver what is queued (waiting at most ``timeout``), then close every sink."""
        for index, sink in enumerate(self.sinks):
            self._end_burst(index, sink)
        for queue in self._queues.values():
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout or self.timeout * 2)
            for task in pending:
                task.cancel()
            self._workers.clear()
            self._queues.clear()
        for sink in self.sinks:
            close = getattr(sink, "aclose", None)
            if close is None:
                continue
            try:
                await asyncio.wait_for(close(), self.timeout)
            except Exception:
                log.exception("event sink %s failed to close", _sink_name(sink))


def _sink_name(sink: object) -> str:
    return getattr(sink, "name", "") or type(sink).__name__


#: what :meth:`EventBus.subscribe` takes: a function or a coroutine function of an event
Subscriber = Callable[[Event], Awaitable[None] | None]


class EventBus(BaseEventSink):
    """An in-process bus: application code subscribes to events by kind.

    ``unsubscribe = bus.subscribe(callback, "migration_applied")``; the
    callback may be a plain function or a coroutine function. A subscriber
    that raises is logged and the others still get the event.
    """

    name = "bus"

    def __init__(self, options: Mapping[str, str] | None = None):
        if options:
            raise ConfigError(f"bus sink takes no options, got {sorted(options)}")
        self._subscribers: list[tuple[Subscriber, frozenset[str] | None]] = []
        self._log = logging.getLogger("migsync.bus")

    def subscribe(self, callback: Subscriber, *kinds: str) -> Callable[[], None]:
        entry = (callback, frozenset(kinds) if kinds else None)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    async def emit(self, event: Event) -> None:
        for callback, kinds in list(self._subscribers):
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._log.exception("bus subscriber %r failed on %s", callback, event.kind)
