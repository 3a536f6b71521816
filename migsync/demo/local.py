"""Part 1 of ``migsync demo`` (steps 1-4): one client on its own, migrations from a folder, no server."""

from __future__ import annotations

from pathlib import Path

import click

from migsync.core.client import Client
from migsync.core.clock import RetryPolicy
from migsync.core.events import Event
from migsync.core.sources import load_directory
from migsync.core.version import Version
from migsync.demo.steps import BROKEN, FIXED, FOURTH, command_to_type, copy_bundled, step
from migsync.output.report import print_status


def _show(event: Event) -> None:
    click.echo(f"   event: {event.describe()}")


async def run_local(root: Path) -> int:
    """Steps 1-4: one client database, migrations from a folder."""
    migrations = copy_bundled(root / "migrations")
    db_url = f"sqlite:///{root / 'client.db'}"
    click.echo(f"demo folder: {root}/  database: {db_url}")

    client = Client.connect(
        db_url,
        sinks=["logging", f"jsonl:path={root / 'events.jsonl'}"],
        retry=RetryPolicy(base=0.2, factor=2, jitter=0.2),
        max_attempts=3,
    )
    async with client:
        client.bus.subscribe(_show)

        step(f"1. apply {len(list(migrations.iterdir()))} migration files from {migrations}")
        result = await client.apply(load_directory(migrations))
        click.echo(f"   applied {sum(o.ok for o in result.processed)} migrations")
        print_status(await client.status())

        step("2. a broken migration: it fails, retries with backoff, then is dead")
        (migrations / FOURTH).write_text(BROKEN, encoding="utf-8")
        result = await client.apply(load_directory(migrations))
        while result.failure is not None and not result.failure.dead:
            wait = (result.failure.next_attempt_at or 0) - client.clock.now()
            click.echo(f"   attempt {result.failure.attempts} failed; retrying in {max(wait, 0):.2f}s")
            await client.clock.sleep(max(wait, 0))
            result = await client.process()
        print_status(await client.status())

        step("3. fix the file: new content revives the dead migration, and it applies")
        (migrations / FOURTH).write_text(FIXED, encoding="utf-8")
        result = await client.apply(load_directory(migrations))
        print_status(await client.status())

        step("4. revert everything above version 2, newest first")
        await client.ledger.revert(to=Version.parse(2))
        result = await client.process()
        print_status(await client.status())

    click.echo(f"\nevents were also written to {root / 'events.jsonl'}")
    click.echo(f"try: {command_to_type()} status --db {db_url}")
    return 0 if result.ok else 1
