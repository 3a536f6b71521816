"""``migsync changes``: look at the entity changes a client has not pushed yet, and unblock a dead one.

A dead change (refused by the server, or failed ``max_attempts`` times)
blocks the ones after it, by design: order matters. A person decides what
to do with it: ``retry`` it from a fresh start once the cause is fixed, or
``discard`` it (marked processed, with the reason, kept in the table).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from migsync.cli.support import EXIT_BAD_INPUT, connect, db_option, run_coro


@click.group()
def changes() -> None:
    """List the entity changes not pushed yet; retry or discard a dead one."""


@changes.command("list")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Changes to show.")
@click.pass_context
def list_changes(ctx: click.Context, db_url: str, as_json: bool, limit: int) -> None:
    """Show how many changes wait, and the first ones in push order with their state."""

    async def run() -> tuple[dict[str, int], list[dict[str, Any]]]:
        async with connect(ctx, db_url, ()) as client:
            t = client.backend.tables.changes
            counts = (
                await client.backend.fetch(
                    "SELECT COUNT(*) AS open, "
                    "COALESCE(SUM(CASE WHEN attempts >= max_attempts THEN 1 ELSE 0 END), 0) AS dead, "
                    "COALESCE(SUM(CASE WHEN attempts < max_attempts AND error IS NOT NULL "
                    f"THEN 1 ELSE 0 END), 0) AS failed FROM {t} WHERE processed = FALSE"
                )
            )[0]
            rows = await client.backend.fetch(
                "SELECT seq, id, entity, entity_id, operation, schema_version, attempts, max_attempts, error "
                f"FROM {t} WHERE processed = FALSE ORDER BY seq LIMIT {int(limit)}"
            )
        return {k: int(v) for k, v in counts.items()}, [_shown(r) for r in rows]

    counts, rows = run_coro(run())
    for row in rows:
        dead, error = row["attempts"] >= row["max_attempts"], row["error"]
        row["state"] = "dead" if dead else "failed" if error else "pending"
    if as_json:
        click.echo(json.dumps({"counts": counts, "changes": rows}, indent=2))
        return
    click.echo(f"{counts['open']} not pushed: {counts['dead']} dead, {counts['failed']} failed")
    for row in rows:
        line = f"{row['seq']:>8}  {row['state']:<7}  {row['operation']} {row['entity']} {row['entity_id']}"
        click.echo(line + (f"  ({row['error']})" if row["error"] else "") + f"  id {row['id']}")


def _change_ids(ids: tuple[str, ...], all_dead: bool) -> None:
    if bool(ids) == all_dead:
        click.echo("error: give change ids or --all-dead (see 'migsync changes list')", err=True)
        sys.exit(EXIT_BAD_INPUT)


@changes.command()
@db_option
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all-dead", is_flag=True, help="Every dead change.")
@click.pass_context
def retry(ctx: click.Context, db_url: str, ids: tuple[str, ...], all_dead: bool) -> None:
    """Give dead or failed changes a fresh start: their attempts count from zero, now."""
    _change_ids(ids, all_dead)
    where = (
        "attempts >= max_attempts"
        if all_dead
        else f"id IN ({', '.join(f'${n + 1}' for n in range(len(ids)))})"
    )
    count = run_coro(
        _update(ctx, db_url, f"attempts = 0, error = NULL, next_attempt_at = 0 WHERE {where}", ids)
    )
    click.echo(f"{count} change{'s' * (count != 1)} will be pushed again at the next sync")


@changes.command()
@db_option
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all-dead", is_flag=True, help="Every dead change.")
@click.option("--reason", default="discarded by hand", show_default=True, help="Kept in the change's error.")
@click.pass_context
def discard(ctx: click.Context, db_url: str, ids: tuple[str, ...], all_dead: bool, reason: str) -> None:
    """Give up on changes: marked processed (never pushed), the reason kept in their error."""
    _change_ids(ids, all_dead)
    n = len(ids)
    where = "attempts >= max_attempts" if all_dead else f"id IN ({', '.join(f'${i + 3}' for i in range(n))})"
    sql = f"processed = TRUE, processed_at = $1, error = $2 WHERE {where}"
    count = run_coro(_update(ctx, db_url, sql, ids, lead=True, reason=reason))
    click.echo(f"{count} change{'s' * (count != 1)} discarded")


async def _update(
    ctx: click.Context,
    db_url: str,
    assignments: str,
    ids: tuple[str, ...],
    *,
    lead: bool = False,
    reason: str = "",
) -> int:
    async with connect(ctx, db_url, ()) as client:
        params: tuple[Any, ...] = (client.clock.now(), reason, *ids) if lead else ids
        if lead and not ids:
            params = (client.clock.now(), reason)
        async with client.backend.transaction() as tx:
            return await tx.execute(
                f"UPDATE {client.backend.tables.changes} SET {assignments} AND processed = FALSE", params
            )


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A stored change for people: its schema version as text, not the stored key."""
    from migsync.core.version import Version

    key = row["schema_version"]
    return {**row, "schema_version": None if key is None else Version.from_key(key).text}
