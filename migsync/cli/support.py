"""What the ``migsync`` commands share: options, the error boundary, plugins.

Imports only click at the top, like the commands themselves: ``migsync
--version`` and ``--help`` load this module, and neither needs asyncio or attrs.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar, cast

import click

from migsync.cli.lazy import LazyGroup

if TYPE_CHECKING:
    from migsync.core.client import Client
    from migsync.core.sources import SourceSnapshot

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


class SourceOptions(NamedTuple):
    """How to read a migrations folder: ``--format``, ``--order``, ``--ignore-unknown``."""

    format: str | None = None
    order: Literal["version", "name"] = "version"
    ignore_unknown: bool = False


_SOURCE_OPTIONS = (
    click.option(
        "--format",
        "source_format",
        envvar="MIGSYNC_FORMAT",
        metavar="NAME",
        help="Read DIR in this format: golang-migrate, native (dbmate), sqlx, goose, flyway, prisma, "
        "paired (pop), or a plugin's; default: found from the files [env: MIGSYNC_FORMAT]",
    ),
    click.option(
        "--order",
        type=click.Choice(["version", "name"]),
        default="version",
        show_default=True,
        envvar="MIGSYNC_ORDER",
        help="Apply in version order, or in the order of the file names, as dbmate and Prisma "
        "do (files may then share a number) [env: MIGSYNC_ORDER]",
    ),
    click.option(
        "--ignore-unknown",
        is_flag=True,
        help="Skip migrations in other languages (0003_x.go, .py, .rb, ...) with a warning "
        "instead of refusing DIR.",
    ),
)


def source_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a command that reads a migrations folder, passed as ``source=SourceOptions``."""

    @functools.wraps(command)
    def with_source(
        *args: Any, source_format: str | None, order: str, ignore_unknown: bool, **kwargs: Any
    ) -> Any:
        chosen = SourceOptions(source_format, cast('Literal["version", "name"]', order), ignore_unknown)
        return command(*args, source=chosen, **kwargs)

    for option in reversed(_SOURCE_OPTIONS):
        with_source = option(with_source)
    return with_source


def read_source(ctx: click.Context, directory: str, source: SourceOptions) -> SourceSnapshot:
    """The folder's files, read with the plugins' formats as ``source`` says; warnings to stderr."""
    from migsync.core.sources import scan_directory

    snapshot = scan_directory(
        directory,
        formats_of(ctx),
        format=source.format,
        order=source.order,
        ignore_unknown=source.ignore_unknown,
    )
    for warning in snapshot.ignored:
        click.echo(f"warning: {warning}", err=True)
    return snapshot


class MigsyncGroup(LazyGroup):
    """The ``migsync`` command group: click's own errors in migsync's style, commands imported
    when they run (:mod:`migsync.cli.lazy`).

    Every error migsync prints starts ``error:``; click's usage errors
    (``Error: No such option``) are made to match, after the same usage lines.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:  # a caller that handles click's exceptions itself
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            show_click_error(exc)
            sys.exit(exc.exit_code)
        finally:
            if args is None:  # the command line of this process (not a caller's list): it ends now
                _skip_the_last_collections()
        # Only click's Exit (--help, --version) returns; a command ends by returning None or sys.exit.
        sys.exit(code if isinstance(code, int) else 0)


def _skip_the_last_collections() -> None:
    """Spare the interpreter's shutdown its garbage collections over every object of the run.

    Python collects garbage several times while it shuts down, each time walking every object
    the imports made (modules, functions, classes): for a no-op ``migsync apply`` that took more
    CPU than the whole processor pass (docs/performance.md). Frozen objects are not walked. The
    command has closed what it opened by now (databases, sinks; logging flushes at exit on its
    own), and memory goes back with the process; a finalizer left in a reference cycle may then
    not run, which Python never promises at exit anyway.
    """
    import gc

    gc.freeze()


def show_click_error(exc: click.ClickException) -> None:
    """``exc`` as click shows it, but ``error: ...`` like every other migsync error."""
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        click.echo(exc.ctx.get_usage(), err=True)
        option = exc.ctx.help_option_names[0] if exc.ctx.help_option_names else "--help"
        click.echo(f"Try '{exc.ctx.command_path} {option}' for help.\n", err=True)
    click.echo(f"error: {exc.format_message()}", err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def echo_json(value: Any) -> None:
    """``value`` (attrs classes, tuples, versions, paths) as one indented JSON object on stdout."""
    import json

    import attrs

    def plain(item: Any) -> Any:
        if callable(getattr(item, "to_json", None)):  # a Version is text; records say what they show
            return plain(item.to_json())
        if attrs.has(type(item)):
            return {field.name: plain(getattr(item, field.name)) for field in attrs.fields(type(item))}
        if isinstance(item, dict):
            return {str(key): plain(v) for key, v in item.items()}
        if isinstance(item, list | tuple | set | frozenset):
            return [plain(v) for v in item]
        if item is None or isinstance(item, bool | int | float | str):
            return item
        return str(item)  # a Path

    click.echo(json.dumps(plain(value), indent=2))


db_option = click.option(
    "--db",
    "db_url",
    required=True,
    envvar=["MIGSYNC_DB", "DATABASE_URL"],
    metavar="URL",
    help="Client database URL, e.g. sqlite:///app.db [env: MIGSYNC_DB, else DATABASE_URL]",
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


class _Box(Generic[T]):
    """A result whose repr costs nothing: Python 3.11's ``asyncio.run`` formats the repr of its
    finished task, result included (``signal.getsignal`` on its SIGINT handler), and the result
    of ``status`` holds a record per migration."""

    __slots__ = ("value",)

    def __init__(self, value: T):
        self.value = value


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``, turning migsync errors into one line and exit code 2."""
    import asyncio
    import logging

    from migsync.core.errors import MigsyncError

    async def boxed() -> _Box[T]:
        return _Box(await coro)

    try:
        return asyncio.run(boxed()).value
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

    if os.environ.get("MIGSYNC_TEST_CLOCK"):  # a testing aid: see migsync.testing.fileclock
        from migsync.testing.fileclock import from_environment

        options.setdefault("clock", from_environment())
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
