"""The ``migsync`` command.

Start-up matters (it runs on every client, often), so this module imports
only click at the top; everything else is imported by the command that
needs it, and ``rich`` only when there is a terminal or a table to draw.

Exit codes: 0 success; 1 a migration failed, is dead, is dirty or is waiting to be
retried; 2 bad input (usage, configuration, migration files, database
refused the request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from migsync.core.client import Client
    from migsync.core.ledger import MigrationState
    from migsync.core.processor import PassResult

T = TypeVar("T")

EXIT_BAD_INPUT = 2

migrations_option = click.option(
    "--migrations",
    "directory",
    required=True,
    type=click.Path(),
    metavar="DIR",
    help="Directory of migration files.",
)
db_option = click.option(
    "--db",
    "db_url",
    required=True,
    envvar="MIGSYNC_DB",
    metavar="URL",
    help="Client database URL, e.g. sqlite:///app.db [env: MIGSYNC_DB]",
)
sink_option = click.option(
    "--sink",
    "sinks",
    multiple=True,
    metavar="NAME[:k=v,...]",
    help="Event sink to send events to (repeatable); default: logging, shown with -v. See 'migsync plugins'.",
)
max_attempts_option = click.option(
    "--max-attempts",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Failures after which a queued migration is dead.",
)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``, turning migsync errors into one line and exit code 2."""
    from migsync.core.errors import MigsyncError

    try:
        return asyncio.run(coro)
    except MigsyncError as exc:
        if logging.getLogger("migsync").isEnabledFor(logging.DEBUG):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _client(
    ctx: click.Context, url: str, sinks: Sequence[str], *, create: bool = False, **options: Any
) -> Client:
    """A client for ``url``; only ``apply`` may create a database that does not exist yet."""
    from migsync.core.client import Client

    return Client.connect(
        url,
        plugins=_plugins(ctx),
        sinks=list(sinks) or None,
        backend_options={"create": create},
        **options,
    )


def _plugins(ctx: click.Context) -> Any:
    obj = ctx.ensure_object(dict)
    if "plugins" not in obj:
        from migsync.core.errors import MigsyncError
        from migsync.core.plugins import make_plugins

        try:
            obj["plugins"] = make_plugins()
        except MigsyncError as exc:  # a broken plugin in strict mode
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
    return obj["plugins"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Show events (-v) and debug output with tracebacks (-vv).")
@click.version_option(package_name="migsync")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Ship schema migrations to client databases and keep them correct."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose == 0:
        # The command reports failures itself; the logging sink speaks from -v on.
        logging.getLogger("migsync.events").setLevel(logging.CRITICAL)
    ctx.ensure_object(dict)


# -- apply ---------------------------------------------------------------------------


@main.command()
@migrations_option
@db_option
@sink_option
@max_attempts_option
@click.option(
    "--wait/--no-wait",
    default=False,
    help="On failure, keep retrying with backoff until applied or dead.",
)
@click.option("--retry-now", is_flag=True, help="Ignore the backoff of a failed migration.")
@click.pass_context
def apply(
    ctx: click.Context,
    directory: str,
    db_url: str,
    sinks: tuple[str, ...],
    max_attempts: int,
    wait: bool,
    retry_now: bool,
) -> None:
    """Apply every pending migration in DIR to the database, in version order.

    Loads and validates DIR (nothing runs if any file is invalid), records
    the migrations in the database, queues the pending ones and processes
    the queue. Exits 1 if a migration failed, is dead or is waiting to retry.
    """
    sys.exit(_run(_apply(ctx, directory, db_url, sinks, max_attempts, wait, retry_now)))


async def _apply(
    ctx: click.Context,
    directory: str,
    db_url: str,
    sinks: Sequence[str],
    max_attempts: int,
    wait: bool,
    retry_now: bool,
) -> int:
    from migsync.core.sources import scan_directory
    from migsync.report import Progress, report_failure, report_pass

    # Parsed (and validated) inside record_source, before anything is written,
    # and only when these files differ from the ones this database recorded last.
    source = scan_directory(directory, _formats(ctx))
    started = time.perf_counter()
    async with _client(ctx, db_url, sinks, create=True, max_attempts=max_attempts) as client:
        await client.ledger.record_source(source)
        queued = await client.ledger.queue_pending()
        with Progress(client, len(queued), "applying"):
            result = await client.process(ignore_backoff=retry_now)
            while wait and (due := _retry_due(result)) is not None:
                if result.failure is not None:
                    report_failure(result)
                await client.clock.sleep(max(0.0, due - client.clock.now()))
                result = await client.process()
    return report_pass(result, time.perf_counter() - started, "applied")


def _retry_due(result: PassResult) -> float | None:
    """When the change blocking the queue may be tried again (None: it may not, or nothing blocks)."""
    if result.failure is not None and not result.failure.dead:
        return result.failure.next_attempt_at
    return result.waiting_until


def _formats(ctx: click.Context) -> list[Any]:
    from migsync.core.sources import plugin_formats

    return plugin_formats(_plugins(ctx))


# -- process, queue, revert ---------------------------------------------------------------


@main.command()
@db_option
@sink_option
@click.option("--retry-now", is_flag=True, help="Ignore the backoff of a failed change.")
@click.pass_context
def process(ctx: click.Context, db_url: str, sinks: tuple[str, ...], retry_now: bool) -> None:
    """Work what is already queued (applies and reverts), in order."""

    async def run() -> int:
        from migsync.report import report_pass

        started = time.perf_counter()
        async with _client(ctx, db_url, sinks) as client:
            result = await client.process(ignore_backoff=retry_now)
        return report_pass(result, time.perf_counter() - started, "processed")

    sys.exit(_run(run()))


@main.command()
@db_option
@max_attempts_option
@click.argument("name")
@click.pass_context
def queue(ctx: click.Context, db_url: str, max_attempts: int, name: str) -> None:
    """Queue migration NAME (and every earlier pending one) for apply.

    NAME is the full name (0003_add_email), the name without its version
    (add_email) or the version (3). A dead migration is revived: its
    attempts start again. Run 'migsync process' (or apply) to work the queue.
    """

    async def run() -> None:
        async with _client(ctx, db_url, (), max_attempts=max_attempts) as client:
            names = await client.ledger.queue(name)
        click.echo(f"queued: {', '.join(names)}" if names else "nothing to queue: already queued")

    _run(run())


@main.command()
@db_option
@sink_option
@max_attempts_option
@click.argument("name", required=False)
@click.option("--to", "to_version", type=int, metavar="VERSION", help="Revert everything above VERSION.")
@click.option("--all", "everything", is_flag=True, help="Revert every applied migration.")
@click.option("--queue-only", is_flag=True, help="Queue the reverts without processing them.")
@click.pass_context
def revert(
    ctx: click.Context,
    db_url: str,
    sinks: tuple[str, ...],
    max_attempts: int,
    name: str | None,
    to_version: int | None,
    everything: bool,
    queue_only: bool,
) -> None:
    """Revert NAME and every migration applied after it, newest first.

    Or --to VERSION (keep VERSION, revert what is above it) or --all.
    """
    if sum((name is not None, to_version is not None, everything)) != 1:
        raise click.UsageError("give exactly one of NAME, --to VERSION or --all")

    async def run() -> int:
        from migsync.report import Progress, report_pass

        started = time.perf_counter()
        async with _client(ctx, db_url, sinks, max_attempts=max_attempts) as client:
            requested = await client.ledger.revert(name, to=to_version, everything=everything)
            names = requested.reverting
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

    sys.exit(_run(run()))


@main.command()
@db_option
@click.argument("name")
@click.option("--applied", "outcome", flag_value="applied", help="It took effect: record it as done.")
@click.option("--not-applied", "outcome", flag_value="not-applied", help="It did not: run it again.")
@click.pass_context
def repair(ctx: click.Context, db_url: str, name: str, outcome: str | None) -> None:
    """Resolve a dirty migration after checking the database by hand.

    A migration that runs outside a transaction (transaction:false,
    .autocommit) and stops half-way leaves the database dirty: nothing runs
    until a person has looked. If its changes took effect, say --applied;
    if they did not (or you undid them), say --not-applied and it runs again.
    """
    if outcome is None:
        raise click.UsageError("say what you found: --applied or --not-applied")

    async def run() -> None:
        async with _client(ctx, db_url, ()) as client:
            state = await client.ledger.repair(name, applied=outcome == "applied")
        click.echo(f"repaired: {state.name} is now {state.state}")

    _run(run())


# -- status ------------------------------------------------------------------------------


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.pass_context
def status(ctx: click.Context, db_url: str, as_json: bool) -> None:
    """Show every migration the database knows and its state."""

    async def run() -> list[MigrationState]:
        async with _client(ctx, db_url, ()) as client:
            return await client.status()

    states = _run(run())
    if as_json:
        click.echo(json.dumps({"migrations": [s.to_json() for s in states]}, indent=2))
        return
    from migsync.report import print_status

    print_status(states)


# -- server: publish, clients ----------------------------------------------------------------


store_option = click.option(
    "--store",
    "store_url",
    required=True,
    envvar="MIGSYNC_STORE",
    metavar="URL",
    help="Server store URL, e.g. sqlite:///server.db or postgresql://host/db [env: MIGSYNC_STORE]",
)


@main.command()
@migrations_option
@store_option
@click.option(
    "--signing-key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="KEY",
    help="Ed25519 private key to sign with (see 'migsync keygen').",
)
@click.option("--force", is_flag=True, help="Replace versions already published with other content.")
@click.pass_context
def publish(ctx: click.Context, directory: str, store_url: str, key_path: str, force: bool) -> None:
    """Sign the migrations in DIR and publish them to the server store.

    Versions already published with the same content are left as they are.
    A version published with other content is refused (exit 2, nothing
    written) unless --force: then it is replaced, and clients that applied
    the old content are told of the checksum mismatch.
    """

    async def run() -> None:
        from migsync.core.signing import load_private_key
        from migsync.core.sources import load_directory
        from migsync.server import Store

        migrations = load_directory(directory, _formats(ctx))
        key = load_private_key(key_path)
        if not migrations:
            click.echo(f"nothing to publish: {directory} holds no migrations")
            return
        async with Store.open(store_url) as store:
            result = await store.publish(migrations, key, force=force)
        for label, names in (
            ("added", result.added),
            ("unchanged", result.unchanged),
            ("re-signed", result.resigned),
            ("replaced (--force; clients that applied the old content will be told)", result.replaced),
        ):
            if names:
                click.echo(f"{label}: {', '.join(names)}")
        click.echo(
            f"published {len(migrations)} migration{'s' if len(migrations) != 1 else ''}: "
            f"{len(result.added)} added, {len(result.unchanged)} unchanged, "
            f"{len(result.resigned)} re-signed, {len(result.replaced)} replaced"
        )

    _run(run())


@main.group()
def clients() -> None:
    """Register the clients that may talk to the server, and list them."""


@clients.command("add")
@click.argument("name")
@store_option
@click.option("--json", "as_json", is_flag=True, help='Print {"client_id": ..., "token": ...}.')
def clients_add(name: str, store_url: str, as_json: bool) -> None:
    """Register client NAME and print its token (shown this once; the store keeps only its hash)."""

    async def run() -> tuple[int, str]:
        from migsync.server import Store

        async with Store.open(store_url) as store:
            return await store.add_client(name)

    client_id, token = _run(run())
    if as_json:
        click.echo(json.dumps({"client_id": client_id, "token": token}))
        return
    click.echo(f"client {client_id} ({name.strip()}) added; its token (shown only now, stored hashed):")
    click.echo(token)


@clients.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def clients_list(store_url: str, as_json: bool) -> None:
    """List every registered client."""

    async def run() -> list[Any]:
        from migsync.server import Store

        async with Store.open(store_url, create=False) as store:
            return await store.clients()

    records = _run(run())
    if as_json:
        click.echo(json.dumps({"clients": [r.to_json() for r in records]}, indent=2))
        return
    if not records:
        click.echo("no clients")
        return
    header = ("id", "name", "created", "last seen", "reported version")
    rows = [
        tuple(
            str(v) if v is not None else "-"
            for v in (j["client_id"], j["name"], j["created_at"], j["last_seen_at"], j["reported_version"])
        )
        for j in (r.to_json() for r in records)
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@main.command()
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on."
)
@click.option(
    "--admin-token",
    required=True,
    envvar="MIGSYNC_ADMIN_TOKEN",
    metavar="TOKEN",
    help="Token of the admin endpoints (/api/migrations, /api/clients) [env: MIGSYNC_ADMIN_TOKEN]",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="Log level of the server (uvicorn), access log included.",
)
def serve(store_url: str, host: str, port: int, admin_token: str, log_level: str) -> None:
    """Serve the store's HTTP API to clients (uvicorn).

    The store must exist (see 'publish' and 'clients add'). Clients poll
    GET /api/migrations/pending and report to POST /api/migrations/status
    with their own token; the admin token reads /api/migrations and
    /api/clients. Stops cleanly on SIGINT or SIGTERM.
    """

    async def check() -> None:
        from migsync.server import Store

        async with Store.open(store_url, create=False):
            pass

    _run(check())  # a missing or unreadable store is one line and exit 2, before uvicorn starts
    import uvicorn

    from migsync.core.errors import ConfigError
    from migsync.server.app import create_app

    try:
        app = create_app(store_url, admin_token=admin_token)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(EXIT_BAD_INPUT)


# -- plugins, demo --------------------------------------------------------------------------


@main.command()
@click.option(
    "--out",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="KEY",
    help="Where to write the private key; the public key goes to KEY.pub.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing key pair.")
def keygen(path: str, force: bool) -> None:
    """Create an Ed25519 key pair for signing published migrations.

    Keep KEY (mode 0600) on the publishing side only; give KEY.pub to every
    client that must trust what is signed with it.
    """
    from migsync.core.errors import MigsyncError
    from migsync.core.signing import write_keypair

    try:
        public = write_keypair(path, overwrite=force)
    except MigsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"private key: {path} (keep it secret)\npublic key:  {public.source}")
    click.echo(f"fingerprint: {public.fingerprint}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every plugin, where it comes from and what it registers."""
    infos = _plugins(ctx).describe()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "origin": i.origin,
                        "registers": list(i.registers),
                        "error": i.error,
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return
    for info in infos:
        click.echo(f"{info.name}  [{info.origin}]")
        if info.error:
            click.echo(f"    FAILED: {info.error}")
        for item in info.registers:
            click.echo(f"    {item}")


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False),
    default="demo-output",
    show_default=True,
    help="Where the demo writes its database and files.",
)
def demo(workdir: str) -> None:
    """Show the main job end to end on a SQLite file (no server needed)."""
    from migsync.demo import run_demo

    sys.exit(_run(run_demo(workdir)))
