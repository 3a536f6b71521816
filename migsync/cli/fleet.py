"""``migsync fleet`` (the clients' status, a page at a time) and ``migsync clients add --from FILE``."""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import IO, TYPE_CHECKING

import click

from migsync.cli.server import store_option
from migsync.cli.support import EXIT_BAD_INPUT, run_coro

if TYPE_CHECKING:
    from migsync.server.fleet import FleetPage


@click.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Clients per page.",
)
@click.option("--cursor", metavar="CURSOR", help="Show the page after the one that gave this cursor.")
@click.option("--all", "every", is_flag=True, help="Show every page, one after the other.")
@click.option(
    "--state",
    type=click.Choice(["ok", "failing", "pending", "drift"]),
    help="Only clients in this state (failing wins over drift, drift over pending).",
)
@click.option("--applied", "applied", metavar="VERSION", help="Only clients that applied VERSION.")
@click.option("--lacking", metavar="VERSION", help="Only clients that lack published VERSION.")
@click.option("--failing", is_flag=True, help="Only clients a migration failed on.")
@click.option(
    "--stale", type=click.FloatRange(min=0), metavar="SECONDS", help="Only clients not seen for SECONDS."
)
@click.option("--name", "name", metavar="TEXT", help="Only clients whose name holds TEXT (any case).")
def fleet(
    store_url: str,
    as_json: bool,
    limit: int,
    cursor: str | None,
    every: bool,
    state: str | None,
    applied: str | None,
    lacking: str | None,
    failing: bool,
    stale: float | None,
    name: str | None,
) -> None:
    """Show every client's status: applied, pending, failed, last seen.

    One row per client: its latest applied version, how many it applied, the
    published versions it lacks, those it applied with other content (drift),
    when it last polled or reported, and what failed with the first line of
    the error (--json has the errors in full). A page holds --limit clients in
    id order; the cursor of the next one, and the counts per state, go to
    standard error (in --json: next_cursor, total, counts). --all walks every
    page. Exits 0 whatever the states.
    """
    from migsync.core.errors import ConfigError
    from migsync.core.version import Version, VersionError
    from migsync.server import Store
    from migsync.server.fleet import FleetFilter

    try:
        which = FleetFilter(
            state=state,
            applied=None if applied is None else Version.parse(applied),
            lacking=None if lacking is None else Version.parse(lacking),
            failing=failing,
            stale=stale,
            name=name,
        )
    except (ConfigError, VersionError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)

    async def read() -> list[FleetPage]:
        pages: list[FleetPage] = []
        async with Store.open(store_url, create=False) as store:
            after = cursor
            while True:
                page = await store.fleet_page(which, limit=limit, cursor=after, counts=not pages)
                pages.append(page)
                after = page.next_cursor
                if not every or after is None:
                    return pages

    pages = run_coro(read())
    first, last = pages[0], pages[-1]
    entries = [e for p in pages for e in p.entries]
    if as_json:
        body = {**first.to_json(), "clients": [e.to_json() for e in entries], "next_cursor": last.next_cursor}
        click.echo(json.dumps(body, indent=2))
        return
    if not entries:
        click.echo("no clients")
        return
    from migsync.output.report_server import print_fleet

    print_fleet(entries)
    counts = ", ".join(f"{n} {s}" for s, n in first.counts.items())
    click.echo(f"{len(entries)} of {first.total} clients ({counts})", err=True)
    if last.next_cursor is not None:
        click.echo(f"next page: --cursor {last.next_cursor}", err=True)


def add_from_file(store_url: str, path: str, tokens_out: str | None, as_json: bool) -> None:
    """``clients add --from FILE``: register every client FILE lists, all or nothing, and write
    each one's name, id and token (CSV, or JSON lines) to standard output or ``tokens_out``."""
    from migsync.core.errors import ConfigError
    from migsync.server import Store
    from migsync.server.registration import parse_file, parse_text

    try:
        rows = parse_text(sys.stdin.read(), "standard input") if path == "-" else parse_file(path)
        out = _private_file(tokens_out) if tokens_out is not None else None
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)

    async def register() -> list[tuple[int, str, str]]:
        async with Store.open(store_url, create=True) as store:
            return await store.add_clients(
                [r.name for r in rows], [r.labels for r in rows], sources=[r.where for r in rows]
            )

    try:
        added = run_coro(register())
    except SystemExit:
        if out is not None and tokens_out is not None:
            out.close()
            os.unlink(tokens_out)  # nothing was registered: leave no empty token file behind
        raise
    stream = out if out is not None else sys.stdout
    try:
        _write_tokens(stream, added, as_json)
    finally:
        if out is not None:
            out.close()
    if out is not None:
        click.echo(f"{len(added)} clients added; their tokens are in {tokens_out} (mode 0600)", err=True)


def _private_file(path: str) -> IO[str]:
    """``path`` opened for writing, made with mode 0600 (tokens are secrets); an existing file is
    an error rather than overwritten."""
    from migsync.core.errors import ConfigError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"--tokens-out {path} exists already; it is not overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot create --tokens-out {path}: {exc.strerror or exc}") from None
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


def _write_tokens(stream: IO[str], added: list[tuple[int, str, str]], as_json: bool) -> None:
    if as_json:
        for client_id, name, token in added:
            stream.write(json.dumps({"name": name, "client_id": client_id, "token": token}) + "\n")
        return
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(("name", "client_id", "token"))
    writer.writerows((name, client_id, token) for client_id, name, token in added)
