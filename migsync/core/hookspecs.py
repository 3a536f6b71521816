"""The plugin contract: every hook migsync calls, in one module.

All hooks are *registration* hooks. They are synchronous, do no I/O, and
receive a ``register`` callback to which they hand small frozen records
(:mod:`migsync.core.specs`). Runtime work happens later, in the ``async``
methods of the classes those records point to.

A plugin is any module or object with functions marked ``@hookimpl``::

    from migsync import hookimpl, EventSinkSpec

    @hookimpl
    def migsync_register_event_sinks(register):
        register(EventSinkSpec("stdout", "my_pkg.sinks:StdoutSink"))

Installed packages are found through the ``migsync`` entry-point group::

    [project.entry-points.migsync]
    my_plugin = "my_pkg.plugin"

Names are unique across all plugins: registering a name that another plugin
already registered is an error naming both. A URL scheme claimed by a
built-in may be claimed again by a third-party plugin, which then wins.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from migsync.core.specs import (
    BackendSpec,
    ChangeApplierSpec,
    EventSinkSpec,
    SourceFormatSpec,
    SQLiteCollationSpec,
    SQLiteFunctionSpec,
    TransportSpec,
)

hookspec = pluggy.HookspecMarker("migsync")
hookimpl = pluggy.HookimplMarker("migsync")

#: Hooks whose implementations may be ``async def``. None yet: every hook
#: is a registration hook, and the manager refuses a coroutine for those.
ASYNC_NOTIFICATION_HOOKS: frozenset[str] = frozenset()


# -- storage -------------------------------------------------------------------


@hookspec
def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Register storage backends for client databases.

    Call ``register(BackendSpec(name, schemes, factory))`` once per backend.
    ``factory(url, **options)`` must return an unopened object that follows
    :class:`migsync.core.backend.Backend` (subclass
    :class:`migsync.core.backend.BaseBackend`), or it is refused when it
    loads. ``schemes`` are the URL schemes it serves, such as ``("sqlite",)``.

    Example::

        @hookimpl
        def migsync_register_backends(register):
            register(BackendSpec("duck", ("duckdb",), "my_pkg.duck:DuckBackend"))
    """


@hookspec
def migsync_register_sqlite_functions(
    register: Callable[[SQLiteFunctionSpec | SQLiteCollationSpec], None],
) -> None:
    """Register SQL functions and collations on every SQLite connection migsync opens.

    Call ``register(SQLiteFunctionSpec(name, narg, function, deterministic=...))``
    for a function and ``register(SQLiteCollationSpec(name, function))`` for a
    collation. The SQLite backend installs them on its connection when it
    opens it, before anything runs, so a migration can call ``name(...)`` or
    say ``COLLATE name``. This holds for ``migsync apply`` (installed plugins)
    and for ``Client.connect(url, plugins=...)``. ``narg`` is the number of
    arguments (-1: any); ``function`` is the callable or
    ``"package.module:attribute"``; ``deterministic=True`` is needed to use
    the function in an index, a ``CHECK`` or a generated column. A function
    that raises fails the statement with an error naming the function and
    its exception; so does a collation. Postgres has no counterpart: there a
    migration creates its functions with ``CREATE FUNCTION``.

    Example::

        @hookimpl
        def migsync_register_sqlite_functions(register):
            register(SQLiteFunctionSpec("normalize", 1, "my_pkg.text:normalize", deterministic=True))
            register(SQLiteCollationSpec("unicase", "my_pkg.text:unicase"))
    """


# -- transports -----------------------------------------------------------------


@hookspec
def migsync_register_transports(register: Callable[[TransportSpec], None]) -> None:
    """Register transports that carry migrations and reports between server and client.

    Call ``register(TransportSpec(name, schemes, factory))``. A transport
    never touches a database; it fetches migrations for a client since a
    cursor, sends status reports and pushes entity changes.
    ``factory(url, *, client_id, token, timeout, retries)`` returns an object
    that keeps :class:`migsync.transports.base.Transport`: ``fetch``,
    ``report``, ``report_actions``, ``push_changes`` and ``aclose``, all
    ``async def``, ``async with``, and ``where`` (subclass
    :class:`migsync.transports.base.BaseTransport`). A transport that lacks
    one is refused when it loads (:mod:`migsync.core.contracts`).

    Example::

        @hookimpl
        def migsync_register_transports(register):
            register(TransportSpec("s3", ("s3",), "my_pkg.s3:S3Transport"))
    """


# -- events ----------------------------------------------------------------------


@hookspec
def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
    """Register event sinks, the receivers of processor events.

    Call ``register(EventSinkSpec(name, factory))``. ``factory(options)``
    receives a ``dict[str, str]`` of options from the deployment's
    configuration (``--sink NAME:key=value``) and returns an object with
    ``async def emit(self, event)`` (subclass
    :class:`migsync.core.events.BaseEventSink`; :class:`migsync.core.events.EventSink`
    is the contract, checked when the sink loads). Sinks are isolated: one
    that is slow or raises never stalls the processor.

    Example::

        @hookimpl
        def migsync_register_event_sinks(register):
            register(EventSinkSpec("statsd", "my_pkg.statsd:StatsdSink"))
    """


# -- migration sources -------------------------------------------------------------


@hookspec
def migsync_register_source_formats(register: Callable[[SourceFormatSpec], None]) -> None:
    """Register migration file formats for the directory loader.

    Call ``register(SourceFormatSpec(name, factory, priority=...))``.
    ``factory()`` returns a :class:`migsync.core.formats.SourceFormat`: it
    claims file names (``match``), may say whether a claimed file's content
    is its own (``sniff``), and turns a claimed file's text into sections
    (``parse``). Lower ``priority`` is asked first. The built-in formats
    (native, paired, golang-migrate, sqlx, goose, flyway, prisma) register
    through this hook too.

    Example::

        @hookimpl
        def migsync_register_source_formats(register):
            register(SourceFormatSpec("liquibase", "my_pkg.liquibase:LiquibaseSqlFormat", priority=50))
    """


# -- the server: entity changes ------------------------------------------------------


@hookspec
def migsync_register_change_appliers(register: Callable[[ChangeApplierSpec], None]) -> None:
    """Register change appliers: what the server does with the entity changes clients push.

    Call ``register(ChangeApplierSpec(name, factory))``. ``factory(options)``
    receives a ``dict[str, str]`` of options from the deployment's
    configuration (``migsync serve --apply-changes NAME:key=value``) and
    returns an object with ``async def apply(self, change, connection,
    dialect)``: ``change`` is a :class:`migsync.server.records.ReceivedChange`,
    ``connection`` the store's SQLAlchemy ``AsyncConnection`` inside the
    transaction that stores the change, ``dialect`` ``"sqlite"`` or
    ``"postgresql"``. Each change is applied in a savepoint of its own: an
    applier that raises undoes only what the appliers did for that change,
    and its error is kept with the change in the inbox (the change is
    accepted all the same). ``default=True`` appliers run when a deployment
    names none. Keep the registering module free of heavy imports: name the
    factory as ``"package.module:attribute"``.

    Example::

        @hookimpl
        def migsync_register_change_appliers(register):
            register(ChangeApplierSpec("audit", "my_pkg.audit:AuditApplier"))
    """
