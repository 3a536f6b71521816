"""``migsync capture``, ``plugins`` and ``demo``: imported when one of them runs."""

from __future__ import annotations

import json
import sys

import click

from migsync.cli.support import EXIT_BAD_INPUT, connect, db_option, plugins_of, run_coro

#: The built-in plugin that registers the sqlite backend (``migsync plugins --json`` shows
#: the SQLite library's version with it).
BUILTIN_BACKENDS = "migsync.backends"


# -- capture -------------------------------------------------------------------------------------


@click.command()
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


@click.command()
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


@click.command()
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
