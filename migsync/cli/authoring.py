"""``migsync new`` and ``migsync validate``: writing migrations and checking them before they ship.

Like every command module, this imports only click at the top; the work is
in :mod:`migsync.core.authoring` and :mod:`migsync.core.validation`.

Exit codes of ``validate``: 0 clean, 1 the database disagrees with the
folder, 2 bad files (or bad input).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from migsync.cli.support import (
    EXIT_BAD_INPUT,
    connect,
    formats_of,
    migrations_option,
    run_coro,
    source_options,
)

if TYPE_CHECKING:
    from migsync.cli.support import SourceOptions
    from migsync.core.inspection import Comparison, History

#: ``validate``: the database disagrees with the folder.
EXIT_DISAGREES = 1


@click.command()
@click.argument("name")
@migrations_option
@click.option(
    "--format",
    "source_format",
    metavar="NAME",
    help="Write in this format (an empty folder: dbmate's, 'native'); default: the folder's own.",
)
@click.pass_context
def new(ctx: click.Context, name: str, directory: str, source_format: str | None) -> None:
    """Create the next migration NAME in DIR, in the folder's own convention.

    The format is the folder's (detected; --format to say it), the version
    the next timestamp (YYYYMMDDHHMMSS, UTC) or the next number, as the
    folder numbers its migrations; both directions where the format has them.
    An empty folder gets dbmate's format with a timestamp. Prints the paths.
    """
    from migsync.core.authoring import new_migration
    from migsync.core.errors import MigsyncError

    try:
        paths = new_migration(directory, name, formats_of(ctx), format=source_format)
    except MigsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    for path in paths:
        click.echo(str(path))


@click.command()
@migrations_option
@source_options
@click.option(
    "--db",
    "db_url",
    envvar="MIGSYNC_DB",
    metavar="URL",
    help="Also check the folder against this database, read-only [env: MIGSYNC_DB]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.pass_context
def validate(
    ctx: click.Context, directory: str, source: SourceOptions, db_url: str | None, as_json: bool
) -> None:
    """Check DIR's files, and with --db that the database agrees with them.

    Lists every problem: file names, the folder's format, versions and
    duplicates, files that do not parse, scripts that cannot run; with
    --db, applied migrations whose files changed, applied ones missing from
    DIR and unapplied ones older than an applied one. Writes nothing. Exits
    0 when clean, 1 when the database disagrees, 2 on bad files.
    """
    from migsync.core.validation import check_database, check_folder

    checked = check_folder(
        directory,
        formats_of(ctx),
        format=source.format,
        order=source.order,
        ignore_unknown=source.ignore_unknown,
    )
    database: list[Any] = []
    looked: tuple[History, Comparison] | None = None
    if db_url is not None and not checked.problems:
        looked = run_coro(_compare(ctx, db_url, checked.migrations))
        database = check_database(looked[1])
        if looked[0].unreadable:
            from migsync.core.validation import Problem

            database.insert(0, Problem("database", looked[0].note() or looked[0].unreadable))
    problems = [*checked.problems, *database]
    code = EXIT_BAD_INPUT if checked.problems else EXIT_DISAGREES if database else 0
    if as_json:
        shown: dict[str, Any] = {
            "ok": not problems,
            "directory": directory,
            "format": checked.format,
            "migrations": len(checked.migrations),
            "problems": [p.to_json() for p in problems],
            "warnings": checked.warnings,
            "requires": _requirements(checked.migrations) if not checked.problems else {},
            "database": None,
        }
        if looked is not None:
            shown["database"] = {**looked[0].to_json(), **looked[1].to_json()}
        click.echo(json.dumps(shown, indent=2))
        sys.exit(code)
    for warning in checked.warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        click.echo(f"{directory}: {len(problems)} problem{'s' * (len(problems) != 1)}", err=True)
    else:
        against = " and the database agrees" if looked is not None else ""
        count = len(checked.migrations)
        for name, needs in _requirements(checked.migrations).items():
            click.echo(f"{name} requires {needs}")
        click.echo(f"{directory}: {count} migration{'s' * (count != 1)} ({checked.format}), valid{against}")
    sys.exit(code)


def _requirements(migrations: list[Any]) -> dict[str, str]:
    """Migration name -> what its ``-- migsync:requires`` lines say (those that say anything)."""
    from migsync.core.requires import describe

    return {m.name: describe(m.requirements()) for m in migrations if m.requirements()}


async def _compare(ctx: click.Context, db_url: str, migrations: list[Any]) -> tuple[History, Comparison]:
    from migsync.core.errors import DatabaseMissing
    from migsync.core.inspection import History, compare, read_history, stored_migrations

    try:
        async with connect(ctx, db_url, (), read_only=True) as client:
            history = await read_history(client.backend)
            repeatable = [m.name for m in migrations if m.repeatable]
            stored = await stored_migrations(client.backend, repeatable) if history.layout else {}
    except DatabaseMissing:
        history, stored = History(None), {}  # nothing applied: nothing to disagree with
    return history, compare(history.states, migrations, stored)


AUTHORING_COMMANDS = (new, validate)
