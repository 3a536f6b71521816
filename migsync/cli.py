"""The ``migsync`` command: the client side (apply, status, revert, ...).

The server commands live in :mod:`migsync.cli_server`, the shared options and
the error boundary in :mod:`migsync.cli_support`.

Start-up matters (it runs on every client, often), so this module imports
only click at the top; everything else is imported by the command that
needs it, and ``rich`` only when there is a terminal or a table to draw.

Exit codes: 0 success; 1 a migration failed, is dead, is dirty or is waiting to be
retried; 2 bad input (usage, configuration, migration files, database
refused the request).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from migsync.cli_actions import actions
from migsync.cli_adopt import ADOPT_COMMANDS
from migsync.cli_authoring import AUTHORING_COMMANDS
from migsync.cli_changes import changes
from migsync.cli_client import client
from migsync.cli_server import SERVER_COMMANDS
from migsync.cli_support import (
    EXIT_BAD_INPUT,
    MigsyncGroup,
    connect,
    db_option,
    echo_json,
    json_option,
    max_attempts_option,
    migrations_option,
    plugins_of,
    read_source,
    run_coro,
    sink_option,
    source_options,
    version_value,
)

#: The built-in plugin that registers the sqlite backend (``migsync plugins --json`` shows
#: the SQLite library's version with it).
BUILTIN_BACKENDS = "migsync.backends"

if TYPE_CHECKING:
    from migsync.cli_support import SourceOptions
    from migsync.core.processor import PassResult
    from migsync.core.version import Version


@click.group(cls=MigsyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Show events (-v) and debug output with tracebacks (-vv).")
@click.option(
    "--env-file",
    envvar="MIGSYNC_ENV_FILE",
    metavar="FILE",
    help="Read variables the environment does not set from FILE (default: ./.env if there is one) "
    "[env: MIGSYNC_ENV_FILE]",
)
@click.option(
    "--config",
    metavar="FILE",
    help="Option defaults for every command from FILE (default: ./migsync.toml if there is one) "
    "[env: MIGSYNC_CONFIG]",
)
@click.version_option(package_name="migsync")
@click.pass_context
def main(ctx: click.Context, verbose: int, env_file: str | None, config: str | None) -> None:
    """Ship schema migrations to client databases and keep them correct."""
    _load_env_file(env_file)
    # Read after the .env file, which may name it.
    _load_config_file(ctx, config or os.environ.get("MIGSYNC_CONFIG") or None)
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose == 0:
        # The command reports failures itself; the logging sink speaks from -v on.
        logging.getLogger("migsync.events").setLevel(logging.CRITICAL)
    ctx.ensure_object(dict)


def _load_env_file(path: str | None) -> None:
    """The ``.env`` file's variables, before the command's options read the environment."""
    if path is None and not os.path.exists(".env"):
        return  # the common case costs one stat, not an import
    from migsync.core.errors import ConfigError
    from migsync.dotenv import load

    try:
        load(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _load_config_file(ctx: click.Context, explicit: str | None) -> None:
    """``migsync.toml``'s defaults for every command, as click's default map."""
    if explicit is None and not os.path.exists("migsync.toml"):
        return  # the common case costs one stat, not an import
    from migsync.config import default_map, find_file
    from migsync.core.errors import ConfigError

    try:
        path = find_file(explicit)
        if path is not None:
            ctx.default_map = default_map(path, main)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


# -- apply ---------------------------------------------------------------------------


@main.command()
@migrations_option
@source_options
@db_option
@sink_option
@max_attempts_option
@click.option(
    "--wait/--no-wait",
    default=False,
    help="On failure, keep retrying with backoff until applied or dead.",
)
@click.option("--retry-now", is_flag=True, help="Ignore the backoff of a failed migration.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the statements that would run, per migration; run none and write nothing.",
)
@click.option(
    "--atomic",
    is_flag=True,
    help="Every pending migration in one transaction: all are applied, or none is "
    "(SQLite, Postgres; not with transaction:false migrations).",
)
@json_option
@click.pass_context
def apply(
    ctx: click.Context,
    directory: str,
    source: SourceOptions,
    db_url: str,
    sinks: tuple[str, ...],
    max_attempts: int,
    wait: bool,
    retry_now: bool,
    dry_run: bool,
    atomic: bool,
    as_json: bool,
) -> None:
    """Apply every pending migration in DIR to the database, in order.

    Loads and validates DIR (nothing runs if any file is invalid), records
    the migrations in the database, queues the pending ones and processes
    the queue. DIR may be laid out for golang-migrate, dbmate, sqlx, goose,
    Flyway, Prisma or ory/pop: its format is found from the files (--format
    to say it). Exits 1 if a migration failed, is dead or is waiting to retry.
    With --dry-run, prints what would run and opens the database read-only.
    With --atomic, one failure leaves the database as it was before the command.
    """
    if dry_run:
        from migsync.cli_inspection import dry_run as show_plan

        sys.exit(show_plan(ctx, directory, source, db_url))
    sys.exit(
        run_coro(
            _apply(ctx, directory, source, db_url, sinks, max_attempts, wait, retry_now, as_json, atomic)
        )
    )


async def _apply(
    ctx: click.Context,
    directory: str,
    source_options: SourceOptions,
    db_url: str,
    sinks: Sequence[str],
    max_attempts: int,
    wait: bool,
    retry_now: bool,
    as_json: bool,
    atomic: bool = False,
) -> int:
    from migsync.report import Progress, print_pass_json, report_failure, report_pass

    # Parsed (and validated) inside record_source, before anything is written,
    # and only when these files differ from the ones this database recorded last.
    source = read_source(ctx, directory, source_options)
    started = time.perf_counter()
    async with connect(ctx, db_url, sinks, create=True, max_attempts=max_attempts) as client:
        await client.ledger.record_source(source)
        queued = await client.ledger.queue_pending()
        with Progress(client, len(queued), "applying"):
            result = await client.process(ignore_backoff=retry_now, atomic=atomic)
            while wait and (due := _retry_due(result)) is not None:
                if result.failure is not None and not as_json:
                    report_failure(result)
                await client.clock.sleep(max(0.0, due - client.clock.now()))
                result = await client.process(atomic=atomic)
    if as_json:
        return print_pass_json(result, time.perf_counter() - started)
    return report_pass(result, time.perf_counter() - started, "applied")


def _retry_due(result: PassResult) -> float | None:
    """When the change blocking the queue may be tried again (None: it may not, or nothing blocks)."""
    if result.failure is not None and not result.failure.dead:
        return result.failure.next_attempt_at
    return result.waiting_until


# -- process, queue, revert ---------------------------------------------------------------


@main.command()
@db_option
@sink_option
@click.option("--retry-now", is_flag=True, help="Ignore the backoff of a failed change.")
@json_option
@click.pass_context
def process(ctx: click.Context, db_url: str, sinks: tuple[str, ...], retry_now: bool, as_json: bool) -> None:
    """Work what is already queued (applies and reverts), in order."""

    async def run() -> int:
        from migsync.report import print_pass_json, report_pass

        started = time.perf_counter()
        async with connect(ctx, db_url, sinks) as client:
            result = await client.process(ignore_backoff=retry_now)
        if as_json:
            return print_pass_json(result, time.perf_counter() - started)
        return report_pass(result, time.perf_counter() - started, "processed")

    sys.exit(run_coro(run()))


@main.command()
@db_option
@max_attempts_option
@click.argument("name")
@json_option
@click.pass_context
def queue(ctx: click.Context, db_url: str, max_attempts: int, name: str, as_json: bool) -> None:
    """Queue migration NAME (and every earlier pending one) for apply.

    NAME is the full name (0003_add_email), the name without its version
    (add_email) or the version (3). A dead migration is revived: its
    attempts start again. Run 'migsync process' (or apply) to work the queue.
    """

    async def run() -> None:
        async with connect(ctx, db_url, (), max_attempts=max_attempts) as client:
            names = await client.ledger.queue(name)
        if as_json:
            echo_json({"queued": names})
        else:
            click.echo(f"queued: {', '.join(names)}" if names else "nothing to queue: already queued")

    run_coro(run())


@main.command()
@db_option
@sink_option
@max_attempts_option
@click.argument("name", required=False)
@click.option(
    "--to", "to_version", callback=version_value, metavar="VERSION", help="Revert everything above VERSION."
)
@click.option("--all", "everything", is_flag=True, help="Revert every applied migration.")
@click.option("--queue-only", is_flag=True, help="Queue the reverts without processing them.")
@json_option
@click.pass_context
def revert(
    ctx: click.Context,
    db_url: str,
    sinks: tuple[str, ...],
    max_attempts: int,
    name: str | None,
    to_version: Version | None,
    everything: bool,
    queue_only: bool,
    as_json: bool,
) -> None:
    """Revert NAME and every migration applied after it, newest first.

    Or --to VERSION (keep VERSION, revert what is above it) or --all.
    """
    if sum((name is not None, to_version is not None, everything)) != 1:
        raise click.UsageError("give exactly one of NAME, --to VERSION or --all")

    async def run() -> int:
        from migsync.report import Progress, print_pass_json, report_pass

        started = time.perf_counter()
        async with connect(ctx, db_url, sinks, max_attempts=max_attempts) as client:
            requested = await client.ledger.revert(name, to=to_version, everything=everything)
            names = requested.reverting
            if as_json:
                from migsync.core.processor import PassResult

                result = PassResult() if queue_only or not names else await client.process()
                return print_pass_json(
                    result,
                    time.perf_counter() - started,
                    queued=names if queue_only else [],
                    cancelled=requested.cancelled,
                )
            if requested.cancelled:
                click.echo(f"cancelled queued applies: {', '.join(requested.cancelled)}")
            if not names:
                if not requested.cancelled:
                    click.echo("nothing to revert")
                return 0
            if queue_only:
                click.echo(f"queued for revert: {', '.join(names)}")
                return 0
            with Progress(client, len(names), "reverting"):
                result = await client.process()
        return report_pass(result, time.perf_counter() - started, "reverted")

    sys.exit(run_coro(run()))


@main.command()
@db_option
@click.argument("name")
@click.option("--applied", "outcome", flag_value="applied", help="It took effect: record it as done.")
@click.option("--not-applied", "outcome", flag_value="not-applied", help="It did not: run it again.")
@json_option
@click.pass_context
def repair(ctx: click.Context, db_url: str, name: str, outcome: str | None, as_json: bool) -> None:
    """Resolve a dirty migration after checking the database by hand.

    A migration that runs outside a transaction (transaction:false,
    .autocommit) and stops half-way leaves the database dirty: nothing runs
    until a person has looked. If its changes took effect, say --applied;
    if they did not (or you undid them), say --not-applied and it runs again.
    """
    if outcome is None:
        raise click.UsageError("say what you found: --applied or --not-applied")

    async def run() -> None:
        async with connect(ctx, db_url, ()) as client:
            state = await client.ledger.repair(name, applied=outcome == "applied")
        if as_json:
            echo_json({"name": state.name, "state": state.state})
        else:
            click.echo(f"repaired: {state.name} is now {state.state}")

    run_coro(run())


# -- status ------------------------------------------------------------------------------


@main.command()
@db_option
@click.option(
    "--migrations",
    "directory",
    type=click.Path(),
    metavar="DIR",
    help="Also list DIR's migrations not applied yet (pending), applied ones whose file changed "
    "(changed) and applied ones no longer in DIR (missing).",
)
@source_options
@click.option(
    "--exit-code",
    is_flag=True,
    help="Exit 1 when anything is pending (or changed), 0 otherwise: for CI and start-up checks.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.pass_context
def status(
    ctx: click.Context,
    db_url: str,
    directory: str | None,
    source: SourceOptions,
    exit_code: bool,
    as_json: bool,
) -> None:
    """Show every migration the database knows and its state.

    Never writes: a database without migsync's tables is reported as such
    (everything pending), and one whose tables are of an older layout is
    read as it is ('migsync apply' upgrades them).
    """
    from migsync.cli_inspection import show_status

    sys.exit(show_status(ctx, db_url, directory, source, exit_code, as_json))


# -- capture -------------------------------------------------------------------------------------


@main.command()
@db_option
@click.option("--table", metavar="NAME", help="The table: NAME, or SCHEMA.NAME on Postgres.")
@click.option("--remove", is_flag=True, help="Stop capturing the table: drop its triggers.")
@click.option("--list", "listing", is_flag=True, help="Print the captured tables, one a line.")
@click.pass_context
def capture(ctx: click.Context, db_url: str, table: str | None, remove: bool, listing: bool) -> None:
    """Record every insert, update and delete of a table as entity changes, by triggers.

    Installs (again: replaces) AFTER row triggers on --table that write each
    change into the client's entity_changes table in the writer's own
    transaction. The table needs a primary key. On SQLite, run it again after
    a migration adds a column to the table, or the new column is not captured.
    """
    if table is None and (remove or not listing):
        raise click.UsageError("give --table NAME (or --list)")

    async def run() -> list[str] | None:
        from migsync.core import capture as capturing

        async with connect(ctx, db_url, ()) as client:
            if table is not None and remove:
                removed = await capturing.remove(client.backend, table)
                click.echo(f"stopped capturing {table}" if removed else f"{table} was not captured")
            elif table is not None:
                info = await capturing.install(client.backend, table)
                click.echo(
                    f"capturing {info.table} (key: {', '.join(info.key)}; {len(info.columns)} columns)"
                )
            return await capturing.captured(client.backend) if listing else None

    tables = run_coro(run())
    if tables is not None:
        for name in tables:
            click.echo(name)
        if not tables:
            click.echo("no captured tables", err=True)


# -- plugins, demo --------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every plugin, where it comes from and what it registers, with each one's description."""
    import sqlite3

    from migsync.core.errors import MigsyncError

    try:
        # Builds every registry: a plugin that breaks a contract is found here, if not before.
        infos = plugins_of(ctx).describe()
    except MigsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        entries: list[dict[str, object]] = [
            {
                "name": i.name,
                "origin": i.origin,
                "registers": list(i.registers),
                "descriptions": dict(zip(i.registers, i.descriptions, strict=True)),
                "refused": list(i.refused),
                "error": i.error,
            }
            for i in infos
        ]
        # Still a list, so scripts that read it keep working: the SQLite library goes with the
        # built-in plugin whose sqlite backend links it.
        for entry in entries:
            if entry["name"] == BUILTIN_BACKENDS:
                entry["sqlite_version"] = sqlite3.sqlite_version
        click.echo(json.dumps(entries, indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  [{info.origin}]")
        if info.error:
            click.echo(f"    FAILED: {info.error}")
        width = max((len(item) for item in info.registers), default=0)
        for item, description in zip(info.registers, info.descriptions, strict=True):
            click.echo(f"    {item:<{width}}  {description}".rstrip())
        for refusal in info.refused:
            click.echo(f"    REFUSED: {refusal}")
    click.echo(f"SQLite library {sqlite3.sqlite_version} (Python's sqlite3 module)")


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False),
    default="demo-output",
    show_default=True,
    help="Where the demo writes its databases and files (deleted first).",
)
@click.option(
    "--part",
    type=click.Choice(["local", "fleet", "all"]),
    default="all",
    show_default=True,
    help="local: one client on its own; fleet: a server and three clients; all: both.",
)
def demo(workdir: str, part: str) -> None:
    """Show one client alone, then a server and its fleet, end to end.

    Everything runs in this process on SQLite files; the server listens on
    a free loopback port for the length of the demo.
    """
    from migsync.demo import run_demo

    sys.exit(run_coro(run_demo(workdir, part)))


for _command in (client, changes, actions, *ADOPT_COMMANDS, *AUTHORING_COMMANDS, *SERVER_COMMANDS):
    main.add_command(_command)
