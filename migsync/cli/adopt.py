"""``migsync baseline`` and ``migsync adopt``: take over a database that is already migrated.

``baseline`` records the folder's migrations up to a version as applied;
``adopt`` reads the history table another tool left and records the same
state. Neither runs a migration's script; both write nothing when they refuse
or with ``--dry-run``. The work is in :mod:`migsync.core.baseline` and
:mod:`migsync.core.adopters`, imported by the commands themselves: this module
is imported on every start of ``migsync``, so it imports only click.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from migsync.cli.support import (
    connect,
    db_option,
    migrations_option,
    read_source,
    run_coro,
    source_options,
    version_value,
)

if TYPE_CHECKING:
    from migsync.cli.support import SourceOptions
    from migsync.core.baseline import BaselineResult
    from migsync.core.version import Version

#: The tools ``adopt --from`` knows (:data:`migsync.core.adopters.TOOLS`, spelt out so that
#: start-up imports nothing of them; a test keeps the two the same).
TOOL_NAMES = ("golang-migrate", "dbmate", "sqlx", "goose", "flyway", "pop")

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would be recorded; write nothing.")


@click.command()
@migrations_option
@source_options
@db_option
@click.option(
    "--version",
    "version",
    required=True,
    callback=version_value,
    metavar="V",
    help="The newest migration the database already has.",
)
@dry_run_option
@json_option
@click.pass_context
def baseline(
    ctx: click.Context,
    directory: str,
    source: SourceOptions,
    db_url: str,
    version: Version,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Record DIR's migrations up to version V as applied, without running them.

    For a database whose schema already has those migrations (made by hand,
    or by a tool whose history 'migsync adopt' cannot read). Each is recorded
    with its checksum, as if migsync had applied it; the migrations after V
    stay pending and 'migsync apply' runs them. Running it again changes
    nothing. Refuses (exit 2, nothing written) a V that is not a migration in
    DIR, and a migration that migsync's history here has applied with other
    content, queued, or dirty.
    """

    async def run() -> BaselineResult:
        from migsync.core.baseline import mark_applied, up_to

        migrations = read_source(ctx, directory, source).migrations()
        chosen = up_to(migrations, version, directory)
        client = connect(ctx, db_url, ())
        async with client.backend:
            return await mark_applied(
                client.backend, chosen, clock=client.clock, dry_run=dry_run, folder=migrations
            )

    _report(run_coro(run()), as_json, {})


@click.command()
@migrations_option
@source_options
@db_option
@click.option(
    "--from",
    "tool",
    type=click.Choice(TOOL_NAMES),
    help="The tool whose history table to read; default: the one whose table is there.",
)
@click.option(
    "--ignore-checksums",
    is_flag=True,
    help="Adopt even where sqlx's or Flyway's recorded checksum differs from the file's.",
)
@dry_run_option
@json_option
@click.pass_context
def adopt(
    ctx: click.Context,
    directory: str,
    source: SourceOptions,
    db_url: str,
    tool: str | None,
    ignore_checksums: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Take over a database another tool migrated: record what it applied, run nothing.

    Reads the history table of golang-migrate (schema_migrations), dbmate
    (schema_migrations), sqlx (_sqlx_migrations), goose (goose_db_version),
    Flyway (flyway_schema_history) or ory/pop (schema_migration), found in
    the database or named by --from, and records exactly the migrations it
    applied as applied, with the checksums of DIR's files; the rest stay
    pending for 'migsync apply'. The other tool's table is only read.
    Refuses (exit 2, nothing written) a dirty or failed state, an applied
    version DIR has no file for, a file changed since it was applied
    (sqlx, Flyway), and migsync history here that disagrees.
    """

    async def run() -> tuple[BaselineResult, dict[str, Any]]:
        from migsync.core.adopters import TOOLS, adoption, detect
        from migsync.core.baseline import mark_applied

        snapshot = read_source(ctx, directory, source)
        folder = snapshot.migrations()  # a folder that does not load is refused before the database opens
        client = connect(ctx, db_url, ())
        async with client.backend:
            found = await detect(client.backend, TOOLS, tool)
            history = await found.read(client.backend.fetch)
            adopted = adoption(history, snapshot, ignore_checksums=ignore_checksums)
            result = await mark_applied(
                client.backend,
                adopted,
                clock=client.clock,
                exact=True,
                dry_run=dry_run,
                folder=folder,
            )
        return result, {"tool": found.name, "table": found.table}

    result, origin = run_coro(run())
    _report(result, as_json, origin)


def _report(result: BaselineResult, as_json: bool, origin: dict[str, Any]) -> None:
    pending = result.pending
    if as_json:
        shown = {**origin, **result.to_json()}
        click.echo(json.dumps(shown, indent=2))
        return
    marked = [*result.already, *result.recorded]
    count = f"{len(marked)} migration{'s' * (len(marked) != 1)}"
    source = f" from {origin['tool']} ({origin['table']})" if origin else ""
    upto = f" up to version {result.version}" if result.version is not None else ""
    if not marked:
        click.echo(f"nothing to record{source}: no migration is applied there")
    elif not result.recorded:
        click.echo(f"already recorded: {count}{upto}{source}; nothing written")
    else:
        verb = "would record" if result.dry_run else "recorded"
        click.echo(f"{verb} {count} as applied{upto}{source}, without running them")
        if result.already:
            click.echo(f"  ({len(result.already)} of them were already recorded)")
    if pending:
        names = ", ".join(m.name for m in pending[:5]) + (", ..." if len(pending) > 5 else "")
        click.echo(
            f"pending: {len(pending)} ({names}): 'migsync apply' runs {'it' if len(pending) == 1 else 'them'}"
        )
    if result.dry_run:
        click.echo("dry run: nothing was written")


#: Registered by :mod:`migsync.cli`.
ADOPT_COMMANDS = (baseline, adopt)
