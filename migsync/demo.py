"""``migsync demo``: the main job end to end, on SQLite files, in this one process.

Part 1, one client on its own (no server):

1. apply the bundled migrations (three files in both supported formats);
2. a broken migration fails, is retried with backoff, and ends up dead;
3. the fix is written, the dead migration is revived and applies;
4. a revert runs newest first.

Part 2, a server and its fleet, is :mod:`migsync.demo_fleet` (steps 5-10).
It imports the server's stack (SQLAlchemy, Starlette, uvicorn, httpx), so it
is imported only when it runs.

Part 1's events go to the log and to ``events.jsonl`` in the demo folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

import click

from migsync.core.client import Client
from migsync.core.clock import RetryPolicy
from migsync.core.events import Event
from migsync.core.sources import load_directory
from migsync.core.version import Version
from migsync.report import print_status

PARTS = ("local", "fleet", "all")

BROKEN = """-- migrate:up
ALTER TABLE customer ADD COLUMN email TEXT;  -- typo: the table is 'customers'
-- migrate:down
ALTER TABLE customers DROP COLUMN email;
"""
FIXED = BROKEN.replace("ALTER TABLE customer ADD", "ALTER TABLE customers ADD").replace(
    "  -- typo: the table is 'customers'", ""
)
#: The file name of BROKEN and FIXED.
FOURTH = "0004_add_customer_email.sql"


def command_to_type() -> str:
    """How the person who ran the demo runs migsync again: ``migsync`` if that is on their
    PATH, else the path of this very script (``.venv/bin/migsync`` after ``make demo``)."""
    script = os.path.abspath(sys.argv[0])
    found = shutil.which("migsync")
    if found is not None and os.path.exists(script) and os.path.samefile(found, script):
        return "migsync"
    if os.path.basename(script) == "migsync" and os.path.exists(script):
        return os.path.relpath(script)
    return "migsync"


def step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


def part(text: str) -> None:
    click.secho(f"\n#### {text}", bold=True)


def copy_bundled(folder: Path) -> Path:
    """The bundled migrations, copied into ``folder`` (created)."""
    folder.mkdir(parents=True)
    bundled = resources.files("migsync") / "demo_migrations"
    for item in bundled.iterdir():
        if item.name.endswith(".sql"):
            (folder / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def _show(event: Event) -> None:
    click.echo(f"   event: {event.describe()}")


async def run_demo(workdir: str, which: str = "all") -> int:
    """Part 1 (``local``), part 2 (``fleet``) or both, in ``workdir`` (deleted first)."""
    if which not in PARTS:
        raise ValueError(f"part {which!r} is not one of {', '.join(PARTS)}")
    root = Path(workdir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    codes = []
    if which in ("local", "all"):
        part("part 1: one client on its own, no server")
        codes.append(await run_local(root))
    if which in ("fleet", "all"):
        from migsync.demo_fleet import run_fleet

        part("part 2: a server and its fleet, on a loopback port of this process")
        codes.append(await run_fleet(root / "fleet"))
    return max(codes)


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
