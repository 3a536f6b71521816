"""``Client``: one client database with its ledger, processor and event sinks.

This is the embedding API::

    from migsync import Client, load_directory

    async with Client.connect("sqlite:///app.db") as client:
        client.bus.subscribe(print, "migration_applied")
        result = await client.apply(load_directory("migrations"))

``apply`` records the migrations, queues what is pending and runs one
processor pass; ``start()`` keeps passes running in the background.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from migsync.core.backend import TRANSACTIONAL_DDL, Backend, LockWait
from migsync.core.clock import Clock, RetryPolicy, SystemClock
from migsync.core.errors import ConfigError
from migsync.core.events import EventBus, EventDispatcher, EventSink, MigrationWaiting
from migsync.core.handler import MigrationHandler
from migsync.core.ledger import Ledger, MigrationState
from migsync.core.migration import Migration
from migsync.core.plugins import Plugins, make_plugins
from migsync.core.processor import ChangesProcessor, PassResult
from migsync.core.sources import SourceSnapshot

if TYPE_CHECKING:
    from migsync.core.changes import ChangeRecorder


def parse_sink(text: str) -> tuple[str, dict[str, str]]:
    """``"jsonl:path=events.jsonl,x=1"`` -> ``("jsonl", {"path": ..., "x": "1"})``."""
    name, _, raw = text.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, raw.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"sink option {item!r} in {text!r} is not key=value")
        options[key.strip()] = value.strip()
    if not name.strip():
        raise ConfigError(f"sink {text!r} has no name")
    return name.strip(), options


def build_sinks(plugins: Plugins, configs: Sequence[str] | None) -> list[EventSink]:
    """Sinks from ``NAME[:key=value,...]`` strings; the default sinks when ``configs`` is None."""
    if configs is None:
        return [plugins.build(plugins.event_sinks, spec, {}) for spec in plugins.event_sinks if spec.default]
    sinks = []
    for config in configs:
        name, options = parse_sink(config)
        sinks.append(plugins.build(plugins.event_sinks, plugins.event_sinks.get(name), options))
    return sinks


def _give_sqlite_functions(backend: Backend, name: str, plugins: Plugins) -> None:
    """Hand a SQLite backend the functions and collations plugins registered, to install on open."""
    specs = plugins.sqlite_specs()
    if not specs:
        return
    if not hasattr(backend, "sqlite_functions"):
        # Failing here beats a migration failing later on "no such function", perhaps half-way.
        listed = ", ".join(spec.name for spec in specs)
        raise ConfigError(
            f"plugins registered SQLite functions or collations ({listed}), but backend {name!r} "
            "cannot install them: it has no 'sqlite_functions' attribute (see 'SQLite functions and "
            "collations' in docs/plugins.md)"
        )
    backend.sqlite_functions = specs


def _takes(factory: object, option: str) -> bool:
    """Whether a backend factory accepts keyword ``option`` (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return any(p.name == option or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class Client:
    def __init__(
        self,
        backend: Backend,
        *,
        sinks: Sequence[EventSink] = (),
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        max_attempts: int = 3,
        sink_timeout: float = 5.0,
        lock_timeout: float = 60.0,
        read_only: bool = False,
    ):
        self.backend = backend
        #: Opened for looking only: ``async with`` leaves the bookkeeping tables as they are.
        self.read_only = read_only
        self.clock = clock or SystemClock()
        self.events = EventDispatcher(sinks, timeout=sink_timeout)
        self.ledger = Ledger(backend, clock=self.clock, events=self.events, max_attempts=max_attempts)
        self.processor = ChangesProcessor(
            backend,
            MigrationHandler(
                backend.dialect,
                self.clock,
                backend.tables,
                transactional_ddl=TRANSACTIONAL_DDL in backend.capabilities,
            ),
            events=self.events,
            clock=self.clock,
            retry=retry,
            lock_timeout=lock_timeout,
        )
        if hasattr(backend, "wait_listener"):  # a backend that can say who blocks a migration
            backend.wait_listener = self._lock_wait

    def _lock_wait(self, wait: LockWait) -> None:
        self.events.emit(
            MigrationWaiting(
                label=wait.label,
                waited=wait.waited,
                blocked_by=[blocker.describe() for blocker in wait.blockers],
                pids=[blocker.pid for blocker in wait.blockers],
            )
        )

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        plugins: Plugins | None = None,
        sinks: Sequence[str] | None = None,
        backend_options: dict[str, object] | None = None,
        read_only: bool = False,
        **options: object,
    ) -> Client:
        """A client for the database at ``url``, its backend chosen by URL scheme.

        ``sinks`` are ``NAME[:key=value,...]`` strings (default: the plugins'
        default sinks). Open it with ``async with``.

        ``read_only``: for looking only (``migsync status``, ``apply --dry-run``).
        Opening creates nothing: not the database, not the bookkeeping tables, no
        layout upgrade; read them with :mod:`migsync.core.inspection`. A backend
        whose factory takes ``read_only`` (the built-ins) also opens the database
        so that it refuses writes (SQLite ``mode=ro``, a Postgres read-only session).
        """
        plugins = plugins or make_plugins()
        spec = plugins.backend_for_url(url)
        factory = spec.load()
        backend_options = dict(backend_options or {})
        if read_only:
            backend_options["create"] = False
            if _takes(factory, "read_only"):
                backend_options["read_only"] = True
        try:
            backend = plugins.build(plugins.backends, spec, url, **backend_options)
        except TypeError as exc:
            raise ConfigError(
                f"backend {spec.name!r} does not take the options {sorted(backend_options or {})}: {exc}"
            ) from exc
        if backend.dialect == "sqlite":
            _give_sqlite_functions(backend, spec.name, plugins)
        sinks_built = build_sinks(plugins, sinks)
        return cls(backend, sinks=sinks_built, read_only=read_only, **options)  # type: ignore[arg-type]

    async def __aenter__(self) -> Self:
        await self.backend.open()
        if self.read_only:
            return self
        try:
            await self.backend.ensure_schema()
        except BaseException:
            await self.backend.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.processor.stop()
            await self.events.aclose()
        finally:
            await self.backend.close()

    @property
    def bus(self) -> EventBus:
        """The in-process event bus (attached on first use)."""
        for sink in self.events.sinks:
            if isinstance(sink, EventBus):
                return sink
        bus = EventBus()
        self.events.add(bus)
        return bus

    async def apply(
        self,
        migrations: Sequence[Migration] | SourceSnapshot,
        *,
        ignore_backoff: bool = False,
        atomic: bool = False,
    ) -> PassResult:
        """Record ``migrations``, queue the pending ones and run one processor pass.

        ``migrations`` is a list (:func:`~migsync.core.sources.load_directory`) or a
        snapshot (:func:`~migsync.core.sources.scan_directory`), which is parsed
        only if this database has not recorded the same files before. ``atomic``:
        see :meth:`process`.
        """
        if isinstance(migrations, SourceSnapshot):
            await self.ledger.record_source(migrations)
        else:
            await self.ledger.record(migrations)
        await self.ledger.queue_pending()
        return await self.process(ignore_backoff=ignore_backoff, atomic=atomic)

    async def process(self, *, ignore_backoff: bool = False, atomic: bool = False) -> PassResult:
        """Run one processor pass over what is already queued.

        ``atomic``: every queued change in one transaction, all or nothing, with the
        same history rows (a backend with transactional DDL only; a migration that
        cannot run in a transaction is refused with ``MigrationError`` before anything runs).
        """
        result = await self.processor.run_pass(ignore_backoff=ignore_backoff, atomic=atomic)
        if any(outcome.ok for outcome in result.processed):
            await self.after_migrations()
        return result

    async def after_migrations(self) -> None:
        """What must follow migrations that ran: capture triggers follow their tables' new columns."""
        from migsync.core.capture import refresh

        await refresh(self.backend)

    def changes(self) -> contextlib.AbstractAsyncContextManager[ChangeRecorder]:
        """A transaction in which to write the application's data and record each change::

            async with client.changes() as rec:
                await rec.execute("UPDATE todo SET done = TRUE WHERE id = $1", (7,))
                await rec.update("todo", 7, {"id": 7, "done": True})

        The changes are pushed to the server by :meth:`migsync.client.sync.Syncer.sync`.
        """
        # Imported here: ``migsync apply`` has no entity changes to record, nor their wire records.
        from migsync.core.changes import recording

        return recording(self.backend)

    async def status(self) -> list[MigrationState]:
        return await self.ledger.status()

    async def sqlite_version(self) -> str | None:
        """The version of the SQLite library serving this database; None if it is not SQLite."""
        if self.backend.dialect != "sqlite":
            return None
        # Asked of the database, not of the sqlite3 module: a plugin's backend may link another SQLite.
        rows = await self.backend.fetch("SELECT sqlite_version() AS version")
        return str(rows[0]["version"])

    def start(self, interval: float = 5.0) -> None:
        """Keep processing in the background every ``interval`` seconds."""
        self.processor.start(interval)

    async def stop(self) -> None:
        await self.processor.stop()
