"""The calls an application makes at start-up: migrate its own database, sync it with the server.

This is what ``alembic.command.upgrade`` is to an Alembic user: one call, no
CLI, no subprocess. ``apply`` and ``sync`` block (for a desktop app's
``main()``); ``apply_async`` and ``sync_async`` are the same for an app that
already runs an event loop. Each returns a result object and raises a typed
error, :class:`MigrationFailed` among them, when the database is not current::

    import migsync

    result = migsync.apply("sqlite:///app.db", "migrations")
    print(result.applied)       # ('20240101120000_create_notes', ...)

Everything the CLI's ``migsync apply`` does, this does: the folder is read
(and refused whole if a file is invalid) before the database is touched, the
database is created if it does not exist, each migration runs in its own
transaction through the changes-table processor.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs

from migsync.core.errors import MigrationError

if TYPE_CHECKING:
    from migsync.client.sync import SyncResult
    from migsync.core.plugins import Plugins
    from migsync.core.processor import Outcome, PassResult

T = TypeVar("T")


class MigrationFailed(MigrationError):
    """A migration failed, is dead or is dirty: the database is not current.

    ``result`` holds the whole pass (what did apply before it); ``name``
    (``0002_add_tags``), ``label`` (``apply 0002_add_tags``), ``error`` and
    ``dead`` describe the migration that stopped the queue.
    """

    def __init__(self, result: PassResult, outcome: Outcome):
        self.result = result
        self.label = outcome.label
        self.name = _name(outcome)
        self.error = outcome.error or "failed"
        self.dead = outcome.dead
        self.dirty = outcome.dirty
        state = "dirty" if outcome.dirty else "dead" if outcome.dead else "failed"
        attempts = f" (attempt {outcome.attempts} of {outcome.max_attempts})" if outcome.max_attempts else ""
        super().__init__(f"{outcome.label} {state}{attempts}: {self.error}")


@attrs.frozen
class ApplyResult:
    """What :func:`apply` did: the migrations it applied, in order."""

    applied: tuple[str, ...]
    #: Changes still queued after the pass (0 when the database is current).
    remaining: int
    #: The processor's pass, whole.
    run: PassResult = attrs.field(repr=False)


def apply(
    db_url: str,
    migrations: str | os.PathLike[str],
    *,
    format: str | None = None,
    order: Literal["version", "name"] = "version",
    ignore_unknown: bool = False,
    max_attempts: int = 3,
    sinks: Sequence[str] | None = None,
    plugins: Plugins | None = None,
) -> ApplyResult:
    """Apply every pending migration in ``migrations`` to ``db_url``, as ``migsync apply`` does.

    Raises :class:`~migsync.core.errors.SourceError` for a folder that cannot be
    read (nothing runs), :class:`MigrationFailed` when a migration fails (the
    ones before it stay applied, each in its own committed transaction),
    :class:`~migsync.core.errors.ConnectError` when the database cannot be opened.
    """
    return _run(
        apply_async(
            db_url,
            migrations,
            format=format,
            order=order,
            ignore_unknown=ignore_unknown,
            max_attempts=max_attempts,
            sinks=sinks,
            plugins=plugins,
        )
    )


async def apply_async(
    db_url: str,
    migrations: str | os.PathLike[str],
    *,
    format: str | None = None,
    order: Literal["version", "name"] = "version",
    ignore_unknown: bool = False,
    max_attempts: int = 3,
    sinks: Sequence[str] | None = None,
    plugins: Plugins | None = None,
) -> ApplyResult:
    """:func:`apply` for an application that already runs an event loop."""
    from migsync.core.client import Client
    from migsync.core.plugins import make_plugins
    from migsync.core.sources import plugin_formats, scan_directory

    plugins = plugins or make_plugins()
    source = scan_directory(
        os.fspath(migrations),
        plugin_formats(plugins),
        format=format,
        order=order,
        ignore_unknown=ignore_unknown,
    )
    client = Client.connect(
        db_url,
        plugins=plugins,
        sinks=sinks,
        backend_options={"create": True},
        max_attempts=max_attempts,
    )
    async with client:
        run = await client.apply(source)
    _raise_for(run)
    applied = tuple(_name(o) for o in run.processed if o.ok and o.label.startswith("apply "))
    return ApplyResult(applied=applied, remaining=run.remaining, run=run)


def sync(
    db_url: str,
    server_url: str,
    *,
    client_id: str,
    trust_keys: Iterable[str | os.PathLike[str]],
    trust_request_keys: Iterable[str | os.PathLike[str]] = (),
    token: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    max_attempts: int = 3,
    reports_dir: str | os.PathLike[str] | None = None,
    sinks: Sequence[str] | None = None,
    plugins: Plugins | None = None,
    app_version: str | None = None,
) -> SyncResult:
    """One ``migsync client sync``: fetch what the server offers, apply it, report back, push changes.

    A server that cannot be reached is not an error: the client works offline
    and ``result.offline`` says why. Raises :class:`MigrationFailed` when a
    migration failed (the report of it is still sent), and
    :class:`~migsync.core.errors.ServerRefused` when the server refuses this
    client (bad token, unknown id, another protocol). ``trust_keys`` are the
    public keys migrations and the server's manifest must be signed by;
    ``trust_request_keys`` those the admin's requests must be signed by
    (without one, every request is refused). ``app_version``: the application's own version,
    sent with each poll: a migration that says ``-- migsync:requires app>=2.3`` is offered only
    to an app that satisfies it (docs/rollouts.md).
    """
    return _run(
        sync_async(
            db_url,
            server_url,
            client_id=client_id,
            trust_keys=trust_keys,
            trust_request_keys=trust_request_keys,
            token=token,
            timeout=timeout,
            retries=retries,
            max_attempts=max_attempts,
            reports_dir=reports_dir,
            sinks=sinks,
            plugins=plugins,
            app_version=app_version,
        )
    )


async def sync_async(
    db_url: str,
    server_url: str,
    *,
    client_id: str,
    trust_keys: Iterable[str | os.PathLike[str]],
    trust_request_keys: Iterable[str | os.PathLike[str]] = (),
    token: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    max_attempts: int = 3,
    reports_dir: str | os.PathLike[str] | None = None,
    sinks: Sequence[str] | None = None,
    plugins: Plugins | None = None,
    app_version: str | None = None,
) -> SyncResult:
    """:func:`sync` for an application that already runs an event loop."""
    from migsync.client.sync import Syncer, build_transport
    from migsync.core.client import Client
    from migsync.core.plugins import make_plugins
    from migsync.protocol.signing import load_public_keys

    plugins = plugins or make_plugins()
    trusted = load_public_keys([os.fspath(key) for key in trust_keys])
    request_keys = load_public_keys([os.fspath(key) for key in trust_request_keys])
    transport = build_transport(
        plugins,
        server_url,
        client_id=client_id,
        token=token,
        timeout=timeout,
        retries=retries,
        reports_dir=None if reports_dir is None else os.fspath(reports_dir),
        app_version=app_version,
    )
    client = Client.connect(
        db_url, plugins=plugins, sinks=sinks, backend_options={"create": True}, max_attempts=max_attempts
    )
    async with transport, client:
        result = await Syncer(client, transport, trusted, request_keys=request_keys).sync()
    _raise_for(result.run)
    return result


def _name(outcome: Outcome) -> str:
    """``0002_add_tags`` of the change labelled ``apply 0002_add_tags`` (or ``revert ...``)."""
    return outcome.label.split(" ", 1)[-1]


def _raise_for(run: PassResult) -> None:
    stopped = run.failure or run.blocked
    if stopped is not None:
        raise MigrationFailed(run, stopped)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end; refuse politely inside a running loop instead of deadlocking."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("called from a running event loop: await the *_async variant instead")
