"""``migsync client sync`` and ``migsync client run``: a client database kept in step with its server.

Options come from the command line, ``MIGSYNC_*`` environment variables or
``migsync.toml`` (its ``[client]`` table, among others: see :mod:`migsync.cli.config`).
Like the other client commands, nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from migsync.cli.support import (
    EXIT_BAD_INPUT,
    connect,
    db_option,
    max_attempts_option,
    plugins_of,
    run_coro,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from migsync.client.sync import Syncer, SyncResult
    from migsync.core.client import Client

EXIT_FAILED = 1


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--config FILE`` of a client command: FILE's defaults for this command (see migsync.cli.config)."""
    from migsync.cli.config import default_map, find_file
    from migsync.core.errors import ConfigError

    try:
        path = find_file(value)
        if path is not None:
            root = ctx.find_root().command
            assert isinstance(root, click.Group)
            defaults: dict[str, Any] = default_map(path, root)
            for name in ctx.command_path.split()[1:]:
                defaults = defaults.get(name, {})
            ctx.default_map = {**(ctx.default_map or {}), **defaults}
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def client_options(command: Any) -> Any:
    """The options every client command shares (applied bottom-up, so listed in reverse)."""
    options = [
        click.option(
            "--config",
            callback=_load_config,
            is_eager=True,
            expose_value=False,
            envvar="MIGSYNC_CONFIG",
            metavar="FILE",
            help="Configuration file (default: ./migsync.toml if present) [env: MIGSYNC_CONFIG]",
        ),
        db_option,
        click.option(
            "--server",
            "server_url",
            required=True,
            envvar="MIGSYNC_SERVER",
            metavar="URL",
            help="The server: http(s)://HOST[:PORT][/PREFIX], or another transport's URL "
            "[env: MIGSYNC_SERVER]",
        ),
        click.option(
            "--client-id",
            required=True,
            envvar="MIGSYNC_CLIENT_ID",
            metavar="ID",
            help="This client's id on the server [env: MIGSYNC_CLIENT_ID]",
        ),
        click.option(
            "--token",
            envvar="MIGSYNC_TOKEN",
            metavar="TOKEN",
            help="This client's token (from 'migsync clients add') [env: MIGSYNC_TOKEN]",
        ),
        click.option(
            "--trust-key",
            "trust_keys",
            multiple=True,
            required=True,
            envvar="MIGSYNC_TRUST_KEY",
            type=click.Path(dir_okay=False),
            metavar="PUB",
            help="Public key whose signatures on migrations and on the server's manifest this client "
            "accepts (repeatable) [env: MIGSYNC_TRUST_KEY, space-separated]",
        ),
        click.option(
            "--trust-request-key",
            "trust_request_keys",
            multiple=True,
            envvar="MIGSYNC_TRUST_REQUEST_KEY",
            type=click.Path(dir_okay=False),
            metavar="PUB",
            help="Public key of the server's request key: the admin's requests (revert, re-apply) are "
            "carried out only when signed by it for this client; without one, every request is "
            "refused (repeatable) [env: MIGSYNC_TRUST_REQUEST_KEY, space-separated]",
        ),
        click.option(
            "--reports",
            "reports_dir",
            type=click.Path(file_okay=False),
            envvar="MIGSYNC_REPORTS",
            metavar="DIR",
            help="File drop only: write reports here, for a read-only drop folder [env: MIGSYNC_REPORTS]",
        ),
        click.option(
            "--timeout",
            default=10.0,
            show_default=True,
            type=click.FloatRange(min=0.1),
            help="Seconds for each attempt of a request, the whole answer included.",
        ),
        click.option(
            "--retries",
            default=3,
            show_default=True,
            type=click.IntRange(min=0),
            help="Retries of a request when the server is down or answers 5xx (with backoff).",
        ),
        max_attempts_option,
        click.option(
            "--app-version",
            envvar="MIGSYNC_APP_VERSION",
            metavar="VERSION",
            help="This application's version, sent with each poll: a migration that says "
            "'-- migsync:requires app>=2.3' is offered only to apps that satisfy it "
            "[env: MIGSYNC_APP_VERSION]",
        ),
        click.option(
            "--sink",
            "sinks",
            multiple=True,
            metavar="NAME[:k=v,...]",
            help="Event sink to send events to (repeatable); see 'migsync plugins'.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print each sync's result as one JSON object."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group()
def client() -> None:
    """Keep this client's database in step with its server."""


@client.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8081, show_default=True, type=click.IntRange(1, 65535), help="Port.")
@click.pass_context
def panel(ctx: click.Context, db_url: str, host: str, port: int) -> None:
    """Serve a read-only page of this client database, for support staff on site.

    Every migration with its state and its last error in full, the hold, the
    admin's requests and this client's answers, and what waits to be told to
    the server. It writes nothing and has no login: it listens on loopback
    unless --host says otherwise. Stops on SIGINT or SIGTERM.
    """

    async def check() -> None:
        async with connect(ctx, db_url, ()):
            pass

    run_coro(check())  # a missing database is one line and exit 2, before uvicorn starts
    import uvicorn

    from migsync.client.panel import create_client_panel

    if host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(
            f"warning: the panel has no login and listens on {host}: anyone who reaches it sees it", err=True
        )
    app = create_client_panel(db_url, plugins=plugins_of(ctx))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    click.echo(f"serving http://{host}:{port}/ (read-only); Ctrl-C stops it", err=True)
    server.run()
    if not server.started:
        sys.exit(EXIT_BAD_INPUT)


@client.command()
@client_options
@click.option("--retry-now", is_flag=True, help="Ignore the backoff of a failed migration.")
@click.pass_context
def sync(ctx: click.Context, /, retry_now: bool, **options: Any) -> None:
    """Sync once: fetch what the server has for this client, verify it, apply it, report back.

    Exits 0 when everything is applied and reported; 1 when a migration
    failed or was refused, the server's signed manifest was refused or
    lists a migration the answer lacks, an admin's request was refused (not
    signed for this client by a trusted request key), or the server could
    not be reached (the client
    then worked with what it had, and its reports wait in the outbox);
    2 on bad input or when the server refused this client (bad token).
    """
    sys.exit(run_coro(_sync_once(ctx, retry_now=retry_now, **options)))


@client.command()
@client_options
@click.option(
    "--interval",
    default=30.0,
    show_default=True,
    envvar="MIGSYNC_INTERVAL",
    type=click.FloatRange(min=0.1),
    help="Seconds between syncs [env: MIGSYNC_INTERVAL]",
)
@click.option(
    "--long-poll",
    "long_poll",
    type=click.IntRange(0, 60),
    envvar="MIGSYNC_LONG_POLL",
    metavar="SECONDS",
    help="Let the server hold each poll up to SECONDS and answer as soon as something changes (HTTP "
    "long poll): a publish reaches this client at once instead of at its next poll; 0: plain polls "
    "[env: MIGSYNC_LONG_POLL]",
)
@click.pass_context
def run(ctx: click.Context, /, interval: float, **options: Any) -> None:
    """Sync every --interval seconds until stopped.

    SIGINT or SIGTERM stop it cleanly: the migration in progress finishes,
    what was done is reported, and the command exits 0. A sync that fails
    is logged and tried again at the next interval; a server that refuses
    this client (bad token) ends it with exit 2.
    """
    sys.exit(run_coro(_run_forever(ctx, interval, **options)))


async def _sync_once(ctx: click.Context, *, retry_now: bool, as_json: bool, **options: Any) -> int:
    async with _session(ctx, **options) as (syncer, _client):
        started = time.perf_counter()
        result = await syncer.sync(ignore_backoff=retry_now)
        return _print(result, time.perf_counter() - started, as_json, quiet=False)


async def _run_forever(ctx: click.Context, interval: float, *, as_json: bool, **options: Any) -> int:
    from migsync.core.errors import MigsyncError, ServerRefused

    stop = asyncio.Event()
    async with _session(ctx, **options) as (syncer, client_):
        loop = asyncio.get_running_loop()

        def halt() -> None:
            stop.set()
            client_.processor.halt()  # after the migration in progress
            syncer.changes_processor.halt()  # after the batch in flight

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, halt)
        try:
            while not stop.is_set():
                started = time.perf_counter()
                wait = interval
                try:
                    result = await syncer.sync()
                except ServerRefused:
                    raise  # a bad token or client id: the next interval would be refused too
                except MigsyncError as exc:  # a malformed answer, a locked database: try again later
                    click.echo(f"sync failed: {exc}; next try in {interval:g}s", err=True)
                else:
                    _print(result, time.perf_counter() - started, as_json, quiet=True)
                    if result.run.waiting_until is not None:
                        wait = max(0.0, min(interval, result.run.waiting_until - client_.clock.now()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    click.echo("stopped", err=True)
    return 0


@contextlib.asynccontextmanager
async def _session(ctx: click.Context, **o: Any) -> AsyncIterator[tuple[Syncer, Client]]:
    """The syncer of the configured client and transport, both opened, and the client."""
    from migsync.client.sync import Syncer, build_transport
    from migsync.protocol.signing import load_public_keys

    trusted = load_public_keys(o["trust_keys"])
    request_keys = load_public_keys(o["trust_request_keys"])
    transport = build_transport(
        plugins_of(ctx),
        o["server_url"],
        client_id=o["client_id"],
        token=o["token"],
        timeout=o["timeout"],
        retries=o["retries"],
        reports_dir=o["reports_dir"],
        app_version=o["app_version"],
        long_poll=o.get("long_poll"),
    )
    client = connect(ctx, o["db_url"], o["sinks"], create=True, max_attempts=o["max_attempts"])
    async with transport, client:
        yield Syncer(client, transport, trusted, request_keys=request_keys), client


def _print(result: SyncResult, elapsed: float, as_json: bool, *, quiet: bool) -> int:
    from migsync.output.report import report_pass

    failed = not result.ok
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return EXIT_FAILED if failed else 0
    idle = not (
        result.stored
        or result.refused
        or result.refused_actions
        or result.manifest_error
        or result.run.processed
        or result.delivered
        or result.pushed
        or result.actions_received
        or result.actions_answered
    )
    if quiet and idle and result.ok:
        return 0
    if result.offline is not None:
        click.echo(f"offline: {result.offline}; working with what this client has", err=True)
    elif result.offered is not None:
        click.echo(f"{result.server}: {result.offered} offered, {len(result.stored)} stored")
    if result.manifest_error is not None:
        click.echo(f"refused: {result.manifest_error}", err=True)
    _print_refusals(result.refused)
    for request in result.refused_actions:
        click.echo(f"refused {request.reason}", err=True)
    if result.actions_received:
        click.echo(
            f"{result.actions_received} request{'s' * (result.actions_received != 1)} from the admin "
            "(see 'migsync status')"
        )
    code = 0 if quiet and idle else report_pass(result.run, elapsed, None)
    if result.delivered:
        click.echo(f"reported {result.delivered} status change{'s' * (result.delivered != 1)}")
    if result.actions_answered:
        click.echo(f"answered {result.actions_answered} request{'s' * (result.actions_answered != 1)}")
    _print_changes(result)
    if result.report_error is not None:
        click.echo(f"reports not delivered: {result.report_error}", err=True)
    if result.undelivered:
        click.echo(
            f"{result.undelivered} report{'s' * (result.undelivered != 1)} wait in the outbox", err=True
        )
    return EXIT_FAILED if failed or code else 0


def _print_changes(result: SyncResult) -> None:
    run = result.changes
    if result.pushed:
        click.echo(f"pushed {result.pushed} entity change{'s' * (result.pushed != 1)}")
    if run is None:
        return
    if run.gated is not None and run.remaining:
        click.echo(
            f"{run.remaining} entity change(s) wait: {run.gated.removeprefix('entity changes ')}", err=True
        )
    bad = run.failure or run.blocked
    if bad is not None:
        state = "dead" if bad.dead else "failed"
        click.echo(f"{state}: {bad.label}: {bad.error}", err=True)


def _print_refusals(refused: Sequence[Any]) -> None:
    for refusal in refused:
        if refusal.kind == "unsent":  # held back by the server or not copied yet: no refusal at all
            click.echo(f"not sent yet: {refusal.name}: {refusal.reason}", err=True)
        else:
            click.echo(f"refused ({refusal.kind}): {refusal.name}: {refusal.reason}", err=True)


__all__ = ["client"]
