"""The ``migsync`` command group: global options, ``.env`` and ``migsync.toml``.

Every command lives in a module of its own group of commands (``apply`` and
the queue in :mod:`migsync.cli.queue`, ``status`` in
:mod:`migsync.cli.inspection`, the server's in :mod:`migsync.cli.server`,
...), imported only when that command runs (:data:`COMMANDS`,
:mod:`migsync.cli.lazy`); the shared options and the error boundary are in
:mod:`migsync.cli.support`.

Start-up matters (it runs on every client, often), so this module imports
only click at the top; everything else is imported by the command that
needs it, and ``rich`` only when there is a terminal to draw on.

Exit codes: 0 success; 1 a migration failed, is dead, is dirty or is waiting to be
retried; 2 bad input (usage, configuration, migration files, database
refused the request).
"""

from __future__ import annotations

import os
import sys

import click

from migsync import __version__
from migsync.cli.lazy import LazyCommand
from migsync.cli.support import EXIT_BAD_INPUT, MigsyncGroup

#: Every command, where it lives and its short help: ``migsync --help`` lists them from here,
#: and a command's module is imported only when it runs (tests/test_cli_startup.py keeps the
#: short helps true to the commands).
COMMANDS: dict[str, LazyCommand] = {
    "actions": LazyCommand(
        "migsync.cli.actions:actions",
        "Ask clients to re-apply or revert a migration; list the requests and their answers.",
    ),
    "adopt": LazyCommand(
        "migsync.cli.adopt:adopt",
        "Take over a database another tool migrated: record what it applied, run nothing.",
    ),
    "apply": LazyCommand(
        "migsync.cli.queue:apply", "Apply every pending migration in DIR to the database, in order."
    ),
    "baseline": LazyCommand(
        "migsync.cli.adopt:baseline",
        "Record DIR's migrations up to version V as applied, without running them.",
    ),
    "capture": LazyCommand(
        "migsync.cli.tools:capture",
        "Record every insert, update and delete of a table as entity changes, by triggers.",
    ),
    "changes": LazyCommand(
        "migsync.cli.changes:changes",
        "List the entity changes not pushed yet; retry or discard a dead one.",
    ),
    "client": LazyCommand(
        "migsync.cli.client:client", "Keep this client's database in step with its server."
    ),
    "clients": LazyCommand(
        "migsync.cli.server:clients", "Register the clients that may talk to the server, and list them."
    ),
    "demo": LazyCommand(
        "migsync.cli.tools:demo", "Show one client alone, then a server and its fleet, end to end."
    ),
    "export": LazyCommand(
        "migsync.cli.server:export_command", "Write the published migrations to drop folder DIR."
    ),
    "fleet": LazyCommand(
        "migsync.cli.fleet:fleet", "Show every client's status: applied, pending, failed, last seen."
    ),
    "import-reports": LazyCommand(
        "migsync.cli.server:import_reports_command",
        "Record the status reports, answers to requests and entity changes offline clients left in DIR.",
    ),
    "inbox": LazyCommand(
        "migsync.cli.server:inbox", "List the entity changes clients pushed, in the order received."
    ),
    "keygen": LazyCommand(
        "migsync.cli.server:keygen",
        "Create an Ed25519 key pair for signing published migrations, or requests.",
    ),
    "new": LazyCommand(
        "migsync.cli.authoring:new", "Create the next migration NAME in DIR, in the folder's own convention."
    ),
    "plugins": LazyCommand(
        "migsync.cli.tools:plugins",
        "List every plugin, where it comes from and what it registers, with each one's description.",
    ),
    "process": LazyCommand(
        "migsync.cli.queue:process", "Work what is already queued (applies and reverts), in order."
    ),
    "publish": LazyCommand(
        "migsync.cli.server:publish", "Sign the migrations in DIR and publish them to the server store."
    ),
    "queue": LazyCommand(
        "migsync.cli.queue:queue", "Queue migration NAME (and every earlier pending one) for apply."
    ),
    "repair": LazyCommand(
        "migsync.cli.queue:repair", "Resolve a dirty migration after checking the database by hand."
    ),
    "revert": LazyCommand(
        "migsync.cli.queue:revert", "Revert NAME and every migration applied after it, newest first."
    ),
    "rollout": LazyCommand(
        "migsync.cli.rollout:rollout",
        "Take published versions to the fleet in stages, watched (docs/rollouts.md).",
    ),
    "serve": LazyCommand("migsync.cli.server:serve", "Serve the store's HTTP API to clients (uvicorn)."),
    "status": LazyCommand(
        "migsync.cli.inspection:status", "Show every migration the database knows and its state."
    ),
    "validate": LazyCommand(
        "migsync.cli.authoring:validate",
        "Check DIR's files, and with --db that the database agrees with them.",
    ),
}


@click.group(
    cls=MigsyncGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("-v", "--verbose", count=True, help="Show events (-v) and debug output with tracebacks (-vv).")
@click.option(
    "--env-file",
    envvar="MIGSYNC_ENV_FILE",
    metavar="FILE",
    help="Read variables the environment does not set from FILE (default: ./.env if there is one) "
    "[env: MIGSYNC_ENV_FILE]",
)
@click.option(
    "--config",
    metavar="FILE",
    help="Option defaults for every command from FILE (default: ./migsync.toml if there is one) "
    "[env: MIGSYNC_CONFIG]",
)
# The version from migsync/__init__.py, not importlib.metadata (~10 ms on every --version).
@click.version_option(__version__)
@click.pass_context
def main(ctx: click.Context, verbose: int, env_file: str | None, config: str | None) -> None:
    """Ship schema migrations to client databases and keep them correct."""
    _load_env_file(env_file)
    # Read after the .env file, which may name it.
    _load_config_file(ctx, config or os.environ.get("MIGSYNC_CONFIG") or None)
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose == 0:
        # The command reports failures itself; the logging sink speaks from -v on.
        logging.getLogger("migsync.events").setLevel(logging.CRITICAL)
    ctx.ensure_object(dict)


def _load_env_file(path: str | None) -> None:
    """The ``.env`` file's variables, before the command's options read the environment."""
    if path is None and not os.path.exists(".env"):
        return  # the common case costs one stat, not an import
    from migsync.cli.dotenv import load
    from migsync.core.errors import ConfigError

    try:
        load(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _load_config_file(ctx: click.Context, explicit: str | None) -> None:
    """``migsync.toml``'s defaults for every command, as click's default map."""
    if explicit is None and not os.path.exists("migsync.toml"):
        return  # the common case costs one stat, not an import
    from migsync.cli.config import default_map, find_file
    from migsync.core.errors import ConfigError

    try:
        path = find_file(explicit)
        if path is not None:
            ctx.default_map = default_map(path, main)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
