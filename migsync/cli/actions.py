"""``migsync actions``: ask clients to re-apply or revert a migration, and see what they answered.

The same requests as the admin panel's buttons (and ``POST /api/actions``),
made on the store directly: each is recorded with who asked and when, and a
client picks it up on its next sync (see :mod:`migsync.client.actions`).
A server process that caches its clients' states hears of a request made
here within its ``--cache-seconds``.
"""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING

import click

from migsync.cli.stores import on_store, store_option
from migsync.cli.support import version_value

if TYPE_CHECKING:
    from collections.abc import Sequence

    from migsync.core.version import Version
    from migsync.server import Store
    from migsync.server.records import ActionRecord, ClientRecord


@click.group()
def actions() -> None:
    """Ask clients to re-apply or revert a migration; list the requests and their answers."""


@actions.command("request")
@click.argument("action", type=click.Choice(["reapply", "revert"]))
@click.argument("version", callback=version_value)
@store_option
@click.option(
    "--client",
    "client_names",
    multiple=True,
    metavar="NAME",
    help="A client to ask (repeatable), by name or id.",
)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every client it makes sense for: reapply, those that reported VERSION not applied "
    "(failed, dead or reverted); revert, those that applied it.",
)
@click.option(
    "--by",
    "requested_by",
    default=None,
    metavar="NAME",
    help="Who asks, recorded with the request [default: the login name].",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"actions": [...]} instead of lines.')
def request(
    action: str,
    version: Version,
    store_url: str,
    client_names: tuple[str, ...],
    every: bool,
    requested_by: str | None,
    as_json: bool,
) -> None:
    """Ask clients to ACTION (reapply or revert) migration VERSION.

    revert: the client reverts VERSION and every later migration it applied,
    newest first, and holds there: it applies none of them again until it is
    asked to reapply. reapply: the client lifts its hold and queues VERSION
    again (a dead migration's attempts start afresh). A newer request to a
    client replaces one it has not picked up yet. The request is recorded in
    the store; the server signs it for each client as it serves it (serve
    --request-key), as export --request-key does for a drop folder: a client
    carries out signed requests only.
    """
    if every == bool(client_names):
        raise click.UsageError("give --client NAME (one or more) or --all")
    who = requested_by if requested_by is not None else f"{getpass.getuser()} (cli)"

    async def ask(store: Store) -> list[ActionRecord]:
        ids = None if every else _client_ids(await store.clients(), client_names)
        return await store.request_action(action, version, ids, who)

    records = on_store(store_url, ask)
    if as_json:
        click.echo(json.dumps({"actions": [r.to_json() for r in records]}, indent=2))
        return
    for r in records:
        click.echo(
            f"request {r.id}: {r.action} version {r.version} on {r.client_name} (client {r.client_id})"
        )
    plural = "" if len(records) == 1 else "s"
    click.echo(f"{len(records)} request{plural} recorded; clients pick them up on their next sync")


def _client_ids(clients: Sequence[ClientRecord], names: tuple[str, ...]) -> list[int]:
    """The ids of the clients ``names`` names (each a name or an id)."""
    from migsync.core.errors import ConfigError

    by_name = {c.name: c.client_id for c in clients}
    by_id = {str(c.client_id): c.client_id for c in clients}
    ids = []
    for name in names:
        found = by_name.get(name.strip(), by_id.get(name.strip()))
        if found is None:
            raise ConfigError(f"no client named {name!r} (see 'migsync clients list')")
        ids.append(found)
    return ids


@actions.command("list")
@store_option
@click.option(
    "--client", "client_name", default=None, metavar="NAME", help="Only this client's, by name or id."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Requests to show.")
@click.option("--json", "as_json", is_flag=True, help='Print {"actions": [...]} instead of a table.')
def list_actions(store_url: str, client_name: str | None, limit: int, as_json: bool) -> None:
    """List the requests made of clients, newest first, with the clients' answers."""

    async def read(store: Store) -> list[ActionRecord]:
        client_id = None
        if client_name is not None:
            [client_id] = _client_ids(await store.clients(), (client_name,))
        return await store.actions(client_id, limit)

    records = on_store(store_url, read)
    if as_json:
        click.echo(json.dumps({"actions": [r.to_json() for r in records]}, indent=2))
        return
    if not records:
        click.echo("no requests")
        return
    from migsync.core.clock import iso
    from migsync.output.report_server import cell
    from migsync.output.table import print_table

    header = ("id", "requested", "by", "client", "action", "version", "state", "detail")
    rows = [
        (
            str(r.id),
            iso(r.requested_at) or "-",
            cell(r.requested_by),
            cell(r.client_name),
            r.action,
            str(r.version),
            r.state,
            cell(r.detail.splitlines()[0], 60) if r.detail else "-",
        )
        for r in records
    ]
    print_table(header, rows)
