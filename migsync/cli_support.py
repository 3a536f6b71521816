"""What the ``migsync`` commands share: options, the error boundary, plugins.

Imports only click at the top, like the commands themselves.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from migsync.core.client import Client

T = TypeVar("T")

EXIT_BAD_INPUT = 2

migrations_option = click.option(
    "--migrations",
    "directory",
    required=True,
    type=click.Path(),
    metavar="DIR",
    help="Directory of migration files.",
)
db_option = click.option(
    "--db",
    "db_url",
    required=True,
    envvar="MIGSYNC_DB",
    metavar="URL",
    help="Client database URL, e.g. sqlite:///app.db [env: MIGSYNC_DB]",
)
sink_option = click.option(
    "--sink",
    "sinks",
    multiple=True,
    metavar="NAME[:k=v,...]",
    help="Event sink to send events to (repeatable); default: logging, shown with -v. See 'migsync plugins'.",
)
max_attempts_option = click.option(
    "--max-attempts",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Failures after which a queued migration is dead.",
)


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``, turning migsync errors into one line and exit code 2."""
    from migsync.core.errors import MigsyncError

    try:
        return asyncio.run(coro)
    except MigsyncError as exc:
        if logging.getLogger("migsync").isEnabledFor(logging.DEBUG):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def connect(
    ctx: click.Context, url: str, sinks: Sequence[str], *, create: bool = False, **options: Any
) -> Client:
    """A client for ``url``; only ``apply`` may create a database that does not exist yet."""
    from migsync.core.client import Client

    return Client.connect(
        url,
        plugins=plugins_of(ctx),
        sinks=list(sinks) or None,
        backend_options={"create": create},
        **options,
    )


def plugins_of(ctx: click.Context) -> Any:
    obj = ctx.ensure_object(dict)
    if "plugins" not in obj:
        from migsync.core.errors import MigsyncError
        from migsync.core.plugins import make_plugins

        try:
            obj["plugins"] = make_plugins()
        except MigsyncError as exc:  # a broken plugin in strict mode
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
    return obj["plugins"]


def formats_of(ctx: click.Context) -> list[Any]:
    from migsync.core.sources import plugin_formats

    return plugin_formats(plugins_of(ctx))


def version_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """An option's migration version (``42``, ``20150100000001000000``, ``1.2.10``): a click callback."""
    from migsync.core.version import Version, VersionError

    if value is None:
        return None
    try:
        return Version.parse(value)
    except VersionError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
