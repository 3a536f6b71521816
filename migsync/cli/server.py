"""The server side of the ``migsync`` command: keygen, publish, clients, serve, export,
import-reports, inbox.

Each command imports what it needs (cryptography, SQLAlchemy, Starlette,
uvicorn) when it runs, so none of that is paid by ``migsync apply``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from migsync.cli.rollout_options import rollout_options
from migsync.cli.stores import on_store, store_option
from migsync.cli.support import (
    EXIT_BAD_INPUT,
    SourceOptions,
    echo_json,
    json_option,
    migrations_option,
    plugins_of,
    read_source,
    run_coro,
    source_options,
)

if TYPE_CHECKING:
    from migsync.server import Store
    from migsync.server.appliers import ChangeApplier
    from migsync.server.export import ExportResult
    from migsync.server.import_reports import ImportResult
    from migsync.server.records import ReceivedChange
    from migsync.server.workers import ServeConfig

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@click.command()
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
    """Create an Ed25519 key pair for signing published migrations, or requests.

    A server has two: the signing key, which signs migrations and the list of
    them (publish --signing-key; keep it offline, mode 0600, where you publish),
    and the request key, which signs the admin's requests to clients (serve
    --request-key, export --request-key; the server may hold it online). Give
    each KEY.pub to every client: --trust-key for the signing key,
    --trust-request-key for the request key.
    """
    from migsync.core.errors import MigsyncError
    from migsync.protocol.signing import write_keypair

    try:
        public = write_keypair(path, overwrite=force)
    except MigsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"private key: {path} (keep it secret)\npublic key:  {public.source}")
    click.echo(f"fingerprint: {public.fingerprint}")


def appliers_options(command: F) -> F:
    """``--apply-changes NAME[:k=v,...]`` (repeatable) and ``--no-apply-changes``."""
    command = click.option(
        "--no-apply-changes",
        is_flag=True,
        help="Only store the entity changes clients push; apply them nowhere.",
    )(command)
    return click.option(
        "--apply-changes",
        "apply_changes",
        multiple=True,
        metavar="NAME[:k=v,...]",
        help="Change applier to hand each received entity change to (repeatable, in this order); "
        "default: the default ones (tables). See 'migsync plugins'.",
    )(command)


def build_appliers(ctx: click.Context, names: tuple[str, ...], off: bool) -> list[ChangeApplier]:
    """The appliers the options name: none with --no-apply-changes, the defaults without either."""
    from migsync.core.errors import MigsyncError
    from migsync.server.appliers import build_appliers as build

    if off and names:
        click.echo("error: --apply-changes and --no-apply-changes exclude each other", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if off:
        return []
    try:
        return build(plugins_of(ctx), list(names) or None)
    except MigsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.command()
@migrations_option
@source_options
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
@click.option(
    "--stages",
    default=None,
    metavar="LIST",
    help="Roll the added or replaced versions out in stages instead of to every client at once: "
    "N% (by a stable hash of the client id), NAME (clients labelled group=NAME), key=value, all; "
    "e.g. 1%,10%,100% or canary,all (docs/rollouts.md).",
)
@rollout_options
@json_option
@click.pass_context
def publish(
    ctx: click.Context,
    directory: str,
    source: SourceOptions,
    store_url: str,
    key_path: str,
    force: bool,
    stages: str | None,
    success_threshold: str,
    error_threshold: str,
    soak: str,
    on_failure: str,
    by: str | None,
    as_json: bool,
) -> None:
    """Sign the migrations in DIR and publish them to the server store.

    Also signs the store's manifest, the list of every published version with
    its checksum under a serial that grows with each change, which clients
    check every answer against. Versions already published with the same
    content are left as they are.
    A version published with other content is refused (exit 2, nothing
    written) unless --force: then it is replaced, and clients that applied
    the old content are told of the checksum mismatch.

    With --stages the versions this publish adds or replaces go to the fleet
    as a rollout (see 'migsync rollout'): a client is offered them once its
    stage has started; the rollout's other options apply only then.
    """
    plan = None
    if stages is not None:
        from migsync.cli.rollout_options import policy_of, who
        from migsync.server.rollouts import RolloutError, parse_stages

        try:
            parsed = parse_stages(stages)
        except RolloutError as exc:
            raise click.BadParameter(str(exc), param_hint="--stages") from None
        plan = (parsed, policy_of(success_threshold, error_threshold, soak, on_failure), who(by))

    async def run() -> None:
        from migsync.protocol.signing import load_private_key
        from migsync.server import Store
        from migsync.server.records import PublishResult

        migrations = read_source(ctx, directory, source).migrations()
        repeatable = [m.name for m in migrations if m.repeatable]
        if repeatable:
            click.echo(
                f"error: {', '.join(repeatable)}: repeatable migrations cannot be published yet (the "
                "server keeps migrations by a version of their own, and a repeatable one has none); "
                "apply them with 'migsync apply', or make them versioned migrations",
                err=True,
            )
            sys.exit(EXIT_BAD_INPUT)
        for migration in migrations:
            migration.requirements()  # a malformed '-- migsync:requires' stops it here, by file and line
        key = load_private_key(key_path)
        if not migrations:
            if as_json:
                echo_json(PublishResult())
            else:
                click.echo(f"nothing to publish: {directory} holds no migrations")
            return
        async with Store.open(store_url) as store:
            result = await store.publish(migrations, key, force=force, rollout=plan)
        if as_json:
            echo_json(result)
            return
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
        if result.rollout_id is not None:
            click.echo(
                f"rollout {result.rollout_id} started in stages {stages}: see 'migsync rollout status "
                f"{result.rollout_id}'"
            )

    run_coro(run())


@click.group()
def clients() -> None:
    """Register the clients that may talk to the server, and list them."""


@clients.command("add")
@click.argument("name", required=False)
@store_option
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label (repeatable), e.g. group=canary or region=eu: rollout stages select clients by them.",
)
@click.option(
    "--from",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    metavar="FILE",
    help="Register every client FILE lists (CSV with a 'name' column, or JSON lines "
    '{"name": ...}; - reads standard input), all or nothing, and print name,client_id,token for each.',
)
@click.option(
    "--tokens-out",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="With --from: write the tokens to FILE (created with mode 0600) instead of standard output.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"client_id": ..., "token": ...}; with --from, one JSON object per line.',
)
def clients_add(
    name: str | None,
    store_url: str,
    labels: tuple[str, ...],
    from_file: str | None,
    tokens_out: str | None,
    as_json: bool,
) -> None:
    """Register client NAME and print its token (shown this once; the store keeps only its hash).

    With --from FILE, register many at once: a bad or duplicate row (or a name
    registered already) is one error naming the file and the line, and nothing
    is registered.
    """
    if (name is None) == (from_file is None):
        raise click.UsageError("give a client NAME or --from FILE (one of them)")
    if from_file is not None:
        if labels:
            raise click.UsageError("--label goes with a client NAME; with --from, give each row its labels")
        from migsync.cli.fleet import add_from_file

        add_from_file(store_url, from_file, tokens_out, as_json)
        return
    if tokens_out is not None:
        raise click.UsageError("--tokens-out goes with --from FILE")
    assert name is not None
    parsed = _labels(labels)
    client_id, token = on_store(store_url, lambda store: store.add_client(name, parsed), create=True)
    if as_json:
        click.echo(json.dumps({"client_id": client_id, "token": token}))
        return
    click.echo(f"client {client_id} ({name.strip()}) added; its token (shown only now, stored hashed):")
    click.echo(token)


@clients.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the client as JSON.")
def clients_label(name: str, labels: tuple[str, ...], store_url: str, as_json: bool) -> None:
    """Set labels of client NAME (KEY=VALUE), or remove one (KEY-).

    The client's next poll fetches what it is offered again: a new label may
    put it in another rollout stage."""
    changes: dict[str, str | None] = {}
    for text in labels:
        if text.endswith("-") and "=" not in text:
            changes[text[:-1]] = None
        else:
            changes.update(_labels((text,)))
    record = on_store(store_url, lambda store: store.label_client(name, changes))
    if as_json:
        click.echo(json.dumps(record.to_json(), indent=2))
        return
    shown = ", ".join(f"{k}={v}" for k, v in sorted(record.labels.items())) or "none"
    click.echo(f"client {record.client_id} ({record.name}) labels: {shown}")


def _labels(texts: tuple[str, ...]) -> dict[str, str]:
    from migsync.core.errors import ConfigError
    from migsync.server.rollouts import parse_labels

    try:
        return parse_labels(texts)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--label") from None


@clients.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def clients_list(store_url: str, as_json: bool) -> None:
    """List every registered client."""

    records = on_store(store_url, lambda store: store.clients())
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
    from migsync.output.table import print_table

    print_table(header, rows)


@click.command()
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
    help="Token of the admin endpoints (/api/migrations, /api/clients) and the panel (/admin) "
    "[env: MIGSYNC_ADMIN_TOKEN]",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="Log level of the server (uvicorn), access log included.",
)
@appliers_options
@click.option("--no-panel", is_flag=True, help="Do not serve the admin panel under /admin.")
@click.option(
    "--panel-secure-cookie",
    is_flag=True,
    help="Mark the panel's cookies Secure on every request (behind a TLS proxy not trusted for "
    "X-Forwarded-Proto).",
)
@click.option(
    "--panel-secret",
    envvar="MIGSYNC_PANEL_SECRET",
    metavar="SECRET",
    help="Key (at least 32 bytes) the panel signs its login cookies and form tokens with. Give every "
    "process that serves one store the same one; without it each process makes a random one, and "
    "logins work on that process only until it restarts [env: MIGSYNC_PANEL_SECRET]",
)
@click.option(
    "--panel-secret-file",
    envvar="MIGSYNC_PANEL_SECRET_FILE",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Read --panel-secret from FILE (its first line) [env: MIGSYNC_PANEL_SECRET_FILE]",
)
@click.option(
    "--failed-auth-limit",
    default="20/minute",
    show_default=True,
    metavar="RATE",
    help="Wrong tokens (API, panel login) one address may send before it gets 429: "
    "N/second, N/minute or N/hour.",
)
@click.option(
    "--request-key",
    "request_key_path",
    envvar="MIGSYNC_REQUEST_KEY",
    type=click.Path(dir_okay=False),
    metavar="KEY",
    help="Private key that signs the admin's requests to clients (see 'keygen'; not the key that "
    "signs migrations). Without it the API and the panel make no requests [env: MIGSYNC_REQUEST_KEY]",
)
@click.option(
    "--cache-seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="How long this process answers polls from memory before it reads what changed in the store "
    "(a publish, reports through other processes); 0: on every poll.",
)
@click.option(
    "--cache-clients",
    default=200_000,  # client_cache.DEFAULT_CACHE_CLIENTS, not imported here: the CLI starts lean
    show_default=True,
    type=click.IntRange(1),
    metavar="N",
    help="How many clients' states this process keeps in memory (about 0.6 KB each; the least "
    "recently polled are dropped first, and cost one store read when they poll again).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Server processes (uvicorn workers) on the one port; more than one needs --panel-secret.",
)
@click.option(
    "--pool-size",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Postgres connections each process keeps open.",
)
@click.option(
    "--max-overflow",
    default=10,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Postgres connections each process may open beyond --pool-size under load.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    store_url: str,
    host: str,
    port: int,
    admin_token: str,
    log_level: str,
    apply_changes: tuple[str, ...],
    no_apply_changes: bool,
    no_panel: bool,
    panel_secure_cookie: bool,
    panel_secret: str | None,
    panel_secret_file: str | None,
    failed_auth_limit: str,
    request_key_path: str | None,
    cache_seconds: float,
    cache_clients: int,
    workers: int,
    pool_size: int,
    max_overflow: int,
) -> None:
    """Serve the store's HTTP API to clients (uvicorn).

    The store must exist (see 'publish' and 'clients add'). Clients poll
    GET /api/migrations/pending, report to POST /api/migrations/status and
    push entity changes to POST /api/changes with their own token; the admin
    token reads /api/migrations and /api/clients and logs in to the admin
    panel at /admin. Received changes go to the inbox (see 'migsync inbox')
    and to the change appliers. The admin's requests to a client (revert,
    re-apply) are signed for it with --request-key as they are served. Stops
    cleanly on SIGINT or SIGTERM. --workers N runs N processes on one port
    (any number of serve processes may share a Postgres store; a SQLite store
    is for one process and a small fleet).
    """
    appliers = build_appliers(ctx, apply_changes, no_apply_changes)
    from migsync.core.errors import ConfigError
    from migsync.protocol.signing import load_private_key

    try:
        secret = None if no_panel else read_panel_secret(panel_secret, panel_secret_file)
        request_key = None if request_key_path is None else load_private_key(request_key_path, "request key")
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)

    async def check() -> None:
        from migsync.server import Store

        async with Store.open(store_url, create=False):
            pass

    run_coro(check())  # a missing or unreadable store is one line and exit 2, before uvicorn starts
    import uvicorn

    from migsync.server.app import create_app
    from migsync.server.panel import PanelOptions
    from migsync.server.serving import AnnouncingServer

    if workers > 1 and not no_panel and secret is None:
        click.echo(
            "error: --workers needs --panel-secret (or MIGSYNC_PANEL_SECRET, --panel-secret-file): a "
            "login on one worker must be good on the others (or serve with --no-panel)",
            err=True,
        )
        sys.exit(EXIT_BAD_INPUT)
    from migsync.server.engine import PoolOptions

    pool = PoolOptions(size=pool_size, overflow=max_overflow)
    if workers > 1:
        from migsync.server.workers import ServeConfig

        _serve_workers(
            ServeConfig(
                store_url,
                admin_token,
                appliers=[] if no_apply_changes else (list(apply_changes) or None),
                panel=not no_panel,
                panel_secure_cookie=panel_secure_cookie,
                panel_secret=None if secret is None else secret.decode("utf-8"),
                failed_auth_limit=failed_auth_limit,
                request_key_path=request_key_path,
                pool_size=pool_size,
                max_overflow=max_overflow,
                cache_seconds=cache_seconds,
                cache_clients=cache_clients,
            ),
            workers,
            host,
            port,
            log_level,
        )
        return
    panel = False if no_panel else PanelOptions(secure_cookie=panel_secure_cookie, secret=secret)
    if panel is not False and secret is None:
        click.echo(
            "warning: no --panel-secret: panel logins end when this process restarts and work on this "
            "process only (give every process of the store the same --panel-secret)",
            err=True,
        )
    try:
        app = create_app(
            store_url,
            admin_token=admin_token,
            appliers=appliers,
            panel=panel,
            failed_auth_limit=failed_auth_limit,
            request_key=request_key,
            cache_seconds=cache_seconds,
            cache_clients=cache_clients,
            pool=pool,
        )
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    server = AnnouncingServer(config, panel=panel is not False)
    server.run()
    if not server.started:
        sys.exit(EXIT_BAD_INPUT)


def _serve_workers(config: ServeConfig, workers: int, host: str, port: int, log_level: str) -> None:
    """Run ``workers`` uvicorn worker processes on one socket, each making its app from ``config``
    (handed to them in the environment: see :mod:`migsync.server.workers`)."""

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from migsync.server.serving import announce
    from migsync.server.workers import APP_FACTORY, environment

    os.environ.update(environment(config))
    settings = uvicorn.Config(
        APP_FACTORY, factory=True, host=host, port=port, log_level=log_level, lifespan="on", workers=workers
    )
    try:
        sock = settings.bind_socket()
    except SystemExit:  # uvicorn logged why (the port is taken, say)
        sys.exit(EXIT_BAD_INPUT)
    # The socket listens already: a client that connects before a worker is up waits in its backlog.
    announce([sock], panel=config.panel, workers=workers)
    Multiprocess(settings, sockets=[sock]).run()


#: The shortest panel secret accepted: an HMAC-SHA256 key should be as long as its output.
MIN_PANEL_SECRET_BYTES = 32


def read_panel_secret(secret: str | None, secret_file: str | None) -> bytes | None:
    """The panel's secret from --panel-secret or --panel-secret-file (None: neither was given).

    A file's first line is the secret, so that ``openssl rand -hex 32 > FILE`` makes one.
    """
    from migsync.core.errors import ConfigError
    from migsync.core.files import read_regular, reason

    if secret is not None and secret_file is not None:
        raise ConfigError("give --panel-secret or --panel-secret-file, not both")
    if secret_file is not None:
        try:
            lines = read_regular(secret_file, limit=64 * 1024).decode("utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the panel secret file {secret_file}: {reason(exc)}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"the panel secret file {secret_file} is not UTF-8 text") from None
        secret = lines[0].strip() if lines else ""
        where = f"the panel secret in {secret_file}"
    elif secret is not None:
        where = "--panel-secret"
    else:
        return None
    value = secret.encode("utf-8")
    if len(value) < MIN_PANEL_SECRET_BYTES:
        raise ConfigError(
            f"{where} is {len(value)} bytes: it must be at least {MIN_PANEL_SECRET_BYTES} "
            "(make one with: openssl rand -hex 32)"
        )
    return value


@click.command("export")
@store_option
@click.option(
    "--to",
    "folder",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The drop folder to write (made if missing; its parent must exist).",
)
@click.option(
    "--request-key",
    "key_path",
    envvar="MIGSYNC_REQUEST_KEY",
    type=click.Path(dir_okay=False),
    metavar="KEY",
    help="Sign the admin's requests to clients with this request key (see 'keygen'; not the key "
    "that signs migrations); without it they are not exported [env: MIGSYNC_REQUEST_KEY]",
)
@json_option
def export_command(store_url: str, folder: str, key_path: str | None, as_json: bool) -> None:
    """Write the published migrations to drop folder DIR.

    For clients that never reach the server: one signed bundle per migration
    in DIR/migrations/, a folder per registered client in DIR/reports/, the
    admin's requests each client has not answered in DIR/actions/ (signed
    with --request-key), then DIR/manifest.json listing every version and
    checksum, with the store's signed manifest. Only what changed is written, each file atomically: run it
    again after every publish or request. Clients sync with --server file://DIR.
    """

    async def run() -> ExportResult:
        from migsync.core.errors import ConfigError
        from migsync.protocol.signing import load_private_key
        from migsync.server import Store
        from migsync.server.export import export

        key = None if key_path is None else load_private_key(key_path, "request key")
        async with Store.open(store_url, create=False) as store:
            try:
                return await export(store, Path(folder), key)
            except OSError as exc:
                raise ConfigError(f"cannot write drop folder {folder}: {exc.strerror or exc}") from None

    result = run_coro(run())
    if as_json:
        echo_json(result)
        return
    if result.written:
        click.echo(f"wrote: {', '.join(result.written)}")
    if result.client_folders:
        click.echo(f"made reports folders for clients {', '.join(result.client_folders)}")
    if result.removed:
        click.echo(f"removed {len(result.removed)} stale temporary file{_s(result.removed)}")
    if result.actions_written:
        click.echo(f"wrote signed requests for clients {', '.join(result.actions_written)}")
    if result.actions_removed:
        click.echo(f"removed the requests of clients {', '.join(result.actions_removed)} (none pending)")
    if result.actions_unsigned:
        click.echo(
            f"warning: requests to clients {', '.join(result.actions_unsigned)} are not exported: "
            "give --request-key to sign them (a client carries out signed requests only)",
            err=True,
        )
    if result.manifest_unsigned and (result.written or result.unchanged):  # none published: no warning
        click.echo(
            "warning: the store has no signed manifest (its migrations were published by an older "
            "release): clients refuse this folder until 'migsync publish' runs again",
            err=True,
        )
    click.echo(
        f"wrote {len(result.written)} bundle{_s(result.written)}, {len(result.unchanged)} unchanged, "
        f"manifest {'written' if result.manifest_written else 'unchanged'}"
    )


@click.command("import-reports")
@store_option
@click.option(
    "--from",
    "folder",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The reports folder (a drop folder's reports/), or the drop folder (its reports/ and changes/).",
)
@click.option(
    "--changes",
    "changes_folder",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="A changes folder (a drop folder's changes/) to import entity changes from.",
)
@appliers_options
@json_option
@click.pass_context
def import_reports_command(
    ctx: click.Context,
    store_url: str,
    folder: str | None,
    changes_folder: str | None,
    apply_changes: tuple[str, ...],
    no_apply_changes: bool,
    as_json: bool,
) -> None:
    """Record the status reports, answers to requests and entity changes offline clients left in DIR.

    DIR holds a folder per client, named by its id, of report files; a drop
    folder holds such a folder of reports (reports/) and one of entity
    changes (changes/), and --changes names a changes folder on its own.
    Each file is imported oldest first, then renamed to NAME.imported, so
    running it again changes nothing. A file that cannot be imported (unknown
    client, bad format, unpublished version, too big, a symlink out of its
    folder) is left where it is and named on stderr; the rest is imported,
    except that a client's changes files after a refused one wait for it.
    Received changes go to the change appliers, as with 'serve'. Exits 1 if
    any file was refused or could not be renamed.
    """
    if folder is None and changes_folder is None:
        raise click.UsageError("name what to import: --from DIR, --changes DIR, or both")
    appliers = build_appliers(ctx, apply_changes, no_apply_changes)

    async def run() -> ImportResult:
        from migsync.core.errors import ConfigError
        from migsync.server import Store
        from migsync.server.import_reports import import_reports

        async with Store.open(store_url, create=False, appliers=appliers) as store:
            try:
                return await import_reports(
                    store,
                    None if folder is None else Path(folder),
                    changes=None if changes_folder is None else Path(changes_folder),
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot read folder {exc.filename or folder or changes_folder}: {exc.strerror or exc}"
                ) from None

    result = run_coro(run())
    if as_json:
        echo_json(result)
        files: list[Any] = [*result.imported, *result.answers_imported, *result.changes_imported]
        if result.refused or result.changes_refused or any(f.not_marked for f in files):
            sys.exit(1)
        return
    for item in result.imported:
        parts = [f"{len(item.recorded)} recorded", f"{len(item.unchanged)} unchanged"]
        if item.drift:
            parts.append(f"drift in {', '.join(str(d.version) for d in item.drift)}")
        if item.superseded:
            parts.append(f"{', '.join(map(str, item.superseded))} left out (a newer file reports them)")
        click.echo(f"imported {item.path}: {', '.join(parts)}")
    problems = 0
    for answers in result.answers_imported:
        line = f"imported answers {answers.path}: requests {', '.join(map(str, answers.recorded)) or 'none'}"
        if answers.superseded:
            line += f", {', '.join(map(str, answers.superseded))} left out (a newer file answers them)"
        click.echo(line)
        if answers.not_marked:
            problems += 1
            click.echo(f"warning: {answers.path}: recorded, but {answers.not_marked}", err=True)
    for item in result.imported:
        if item.not_marked:
            problems += 1
            click.echo(f"warning: {item.path}: recorded, but {item.not_marked}", err=True)
    for refused in result.refused:
        click.echo(f"refused {refused.path}: {refused.reason}", err=True)
    if folder is not None:
        click.echo(
            f"imported {len(result.imported)} file{_s(result.imported)}, refused {len(result.refused)}, "
            f"{result.already_imported} imported before"
        )
    for changes in result.changes_imported:
        click.echo(
            f"imported changes {changes.path}: {len(changes.accepted)} accepted, "
            f"{len(changes.duplicate)} stored before"
        )
        if changes.not_marked:
            problems += 1
            click.echo(f"warning: {changes.path}: stored, but {changes.not_marked}", err=True)
    for refused in result.changes_refused:
        click.echo(f"refused {refused.path}: {refused.reason}", err=True)
    looked = result.changes_imported or result.changes_refused or result.changes_already_imported
    if changes_folder is not None or looked:
        click.echo(
            f"imported {len(result.changes_imported)} changes file{_s(result.changes_imported)}, "
            f"refused {len(result.changes_refused)}, {result.changes_already_imported} imported before"
        )
    if result.refused or result.changes_refused or problems:
        sys.exit(1)


@click.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help='Print {"changes": [...]} instead of a table.')
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Only the latest N changes (still listed in the order received).",
)
def inbox(store_url: str, as_json: bool, limit: int | None) -> None:
    """List the entity changes clients pushed, in the order received.

    One row per change: when it was received, the client, the entity and its
    id, the operation, the schema version it was written under, and the
    error of a change applier that failed on it (--json has the data and
    the errors in full).
    """

    async def read(store: Store) -> tuple[list[ReceivedChange], dict[int, str]]:
        return await store.inbox(limit), {c.client_id: c.name for c in await store.clients()}

    changes, names = on_store(store_url, read)
    if as_json:
        click.echo(json.dumps({"changes": [c.to_json() for c in changes]}, indent=2))
        return
    if not changes:
        click.echo("no changes received")
        return
    from migsync.core.clock import iso
    from migsync.output.report_server import cell
    from migsync.output.table import print_table

    header = ("received", "client", "entity", "entity id", "operation", "schema", "data", "error")
    rows = [
        (
            iso(c.received_at) or "-",
            cell(f"{c.client_id} ({names.get(c.client_id, '?')})"),
            cell(c.entity),
            cell(c.entity_id),
            c.operation,
            "-" if c.schema_version is None else str(c.schema_version),
            cell(json.dumps(c.data, separators=(",", ":")), 40),
            cell(c.apply_error.splitlines()[0], 60) if c.apply_error else "-",
        )
        for c in changes
    ]
    print_table(header, rows)


def _s(items: tuple[object, ...]) -> str:
    return "" if len(items) == 1 else "s"


SERVER_COMMANDS = (keygen, publish, clients, serve, export_command, import_reports_command, inbox)
