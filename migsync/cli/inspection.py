"""``migsync status`` and ``migsync apply --dry-run``: commands that look and never write.

Both open the database read-only (``Client.connect(url, read_only=True)``):
no database file, no bookkeeping table and no layout upgrade is ever made
here. Imported by those commands only, when they run.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from migsync.cli.support import connect, db_option, read_source, run_coro, source_options

if TYPE_CHECKING:
    from migsync.cli.support import SourceOptions
    from migsync.core.inspection import Comparison, History
    from migsync.core.plan import Plan

#: ``status --exit-code``: something is pending (or changed).
EXIT_PENDING = 1


# -- status ------------------------------------------------------------------------------


@click.command()
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
    sys.exit(show_status(ctx, db_url, directory, source, exit_code, as_json))


async def _look(
    ctx: click.Context, db_url: str, directory: str | None, source: SourceOptions
) -> tuple[History, str | None, Comparison | None, str]:
    from migsync.core.errors import DatabaseMissing
    from migsync.core.inspection import compare, read_history, stored_migrations

    # The folder first: a folder that does not read is refused before the database is opened.
    snapshot = read_source(ctx, directory, source) if directory is not None else None
    migrations = snapshot.migrations() if snapshot is not None else []
    try:
        async with connect(ctx, db_url, (), read_only=True) as client:
            history = await read_history(client.backend)
            sqlite_version = await client.sqlite_version()
            repeatable = [m.name for m in migrations if m.repeatable]
            stored = await stored_migrations(client.backend, repeatable) if history.layout else {}
    except DatabaseMissing as exc:
        raise DatabaseMissing(f"{exc} (status creates nothing; 'migsync apply' creates it)") from exc
    comparison = compare(history.states, migrations, stored) if snapshot is not None else None
    return history, sqlite_version, comparison, snapshot.format if snapshot is not None else ""


def show_status(
    ctx: click.Context,
    db_url: str,
    directory: str | None,
    source: SourceOptions,
    exit_code: bool,
    as_json: bool,
) -> int:
    """Print the status; the exit code (with ``exit_code``: 1 when anything is pending or changed)."""
    history, sqlite_version, comparison, fmt = run_coro(_look(ctx, db_url, directory, source))
    states = history.states
    if as_json:
        shown: dict[str, Any] = {
            "migrations": [s.to_json() for s in states],
            "sqlite_version": sqlite_version,
            **history.to_json(),
        }
        if comparison is not None:
            shown.update(directory=directory, format=fmt, **comparison.to_json())
        click.echo(json.dumps(shown, indent=2))
    else:
        from migsync.output.report import print_status

        note = history.note()
        if history.layout is None or (history.unreadable and not states):
            if sqlite_version is not None:
                click.echo(f"database: SQLite {sqlite_version}")
            click.echo(note)
        else:
            print_status(states, sqlite_version=sqlite_version)
            if note:
                click.echo(note)
        if comparison is not None:
            _print_comparison(comparison, directory or "", fmt)
    if not exit_code:
        return 0
    if comparison is not None:
        return EXIT_PENDING if comparison.pending or comparison.changed else 0
    return EXIT_PENDING if any(s.state != "applied" for s in states) else 0


def _print_comparison(comparison: Comparison, directory: str, fmt: str) -> None:
    counts = (
        f"{len(comparison.pending)} pending, {len(comparison.changed)} changed, "
        f"{len(comparison.missing)} missing"
    )
    click.echo(f"{directory} ({fmt or 'no migrations'}): {counts}")
    late = {m.name for m in comparison.out_of_order}
    for migration in comparison.pending:
        order = " (out of order: older than an applied migration; apply refuses it)"
        click.echo(f"  pending  {migration.name}{order if migration.name in late else ''}")
    for changed in comparison.changed:
        click.echo(
            f"  changed  {changed.state.name}: applied with checksum {changed.state.checksum[:12]}, "
            f"{changed.migration.source or 'the file'} now has {changed.migration.checksum[:12]}"
        )
    for state in comparison.missing:
        click.echo(f"  missing  {state.name}: applied, but no file in {directory}")


# -- apply --dry-run -------------------------------------------------------------------------


def dry_run(ctx: click.Context, directory: str, source: SourceOptions, db_url: str) -> int:
    """``apply --dry-run``: print what would run, per migration; run and write nothing."""
    from migsync.core.plan import plan_apply

    snapshot = read_source(ctx, directory, source)

    async def run() -> tuple[Plan, str]:
        client = connect(ctx, db_url, (), read_only=True)
        migrations = snapshot.migrations()
        return await plan_apply(client.backend, migrations), client.backend.dialect

    plan, dialect = run_coro(run())
    _print_plan(plan, dialect)
    return 0


def _print_plan(plan: Plan, dialect: str) -> None:
    click.echo(f"-- dry run on {dialect}: nothing is run or written")
    if plan.creates_database:
        click.echo("-- the database does not exist yet: apply would create it")
    note = plan.history.note()
    if note and plan.history.layout is not None:
        click.echo(f"-- {note}")
    for step in plan.steps:
        migration = step.migration
        where = "outside a transaction" if step.outside_transaction else "in one transaction"
        count = len(step.statements)
        version = "repeatable" if migration.repeatable else f"version {migration.version}"
        click.echo(f"\n-- {migration.name} ({version}): {count} statement{'s' * (count != 1)}, {where}")
        if step.origin is not None:
            click.echo(f"-- from {step.origin[0]}:{step.origin[1]}")
        if step.note:
            click.echo(f"-- note: {step.note}")
        for statement in step.statements:
            click.echo(f"{statement.sql};")
    if plan.stops:
        click.echo(f"\n-- apply would stop here: {plan.stops}")
    total = len(plan.steps)
    verdict = f"{total} migration{'s' * (total != 1)} would be applied" if total else "nothing to do"
    click.echo(f"\n-- {verdict} (dry run: none was)")
