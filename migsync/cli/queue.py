"""``migsync apply``, ``process``, ``queue``, ``revert`` and ``repair``: the commands that work the queue.

Imported when one of them runs (:mod:`migsync.cli.lazy`); ``apply`` runs on
every client start, so this module imports only click and the shared options
at the top, and the engine when the command runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from migsync.cli.support import (
    connect,
    db_option,
    echo_json,
    json_option,
    max_attempts_option,
    migrations_option,
    read_source,
    run_coro,
    sink_option,
    source_options,
    version_value,
)

if TYPE_CHECKING:
    from migsync.cli.support import SourceOptions
    from migsync.core.processor import PassResult
    from migsync.core.version import Version


# -- apply ---------------------------------------------------------------------------


@click.command()
@migrations_option
@source_options
@db_option
@sink_option
@max_attempts_option
@click.option(
    "--wait/--no-wait",
    default=False,
    help="On failure, keep retrying with backoff until applied or dead.",
)
@click.option("--retry-now", is_flag=True, help="Ignore the backoff of a failed migration.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the statements that would run, per migration; run none and write nothing.",
)
@click.option(
    "--atomic",
    is_flag=True,
    help="Every pending migration in one transaction: all are applied, or none is "
    "(SQLite, Postgres; not with transaction:false migrations).",
)
@json_option
@click.pass_context
def apply(
    ctx: click.Context,
    directory: str,
    source: SourceOptions,
    db_url: str,
    sinks: tuple[str, ...],
    max_attempts: int,
    wait: bool,
    retry_now: bool,
    dry_run: bool,
    atomic: bool,
    as_json: bool,
) -> None:
    """Apply every pending migration in DIR to the database, in order.

    Loads and validates DIR (nothing runs if any file is invalid), records
    the migrations in the database, queues the pending ones and processes
    the queue. DIR may be laid out for golang-migrate, dbmate, sqlx, goose,
    Flyway, Prisma or ory/pop: its format is found from the files (--format
    to say it). Exits 1 if a migration failed, is dead or is waiting to retry.
    With --dry-run, prints what would run and opens the database read-only.
    With --atomic, one failure leaves the database as it was before the command.
    """
    if dry_run:
        from migsync.cli.inspection import dry_run as show_plan

        sys.exit(show_plan(ctx, directory, source, db_url))
    sys.exit(
        run_coro(
            _apply(ctx, directory, source, db_url, sinks, max_attempts, wait, retry_now, as_json, atomic)
        )
    )


async def _apply(
    ctx: click.Context,
    directory: str,
    source_options: SourceOptions,
    db_url: str,
    sinks: Sequence[str],
    max_attempts: int,
    wait: bool,
    retry_now: bool,
    as_json: bool,
    atomic: bool = False,
) -> int:
    from migsync.output.report import Progress, print_pass_json, report_failure, report_pass

    # Parsed (and validated) inside record_source, before anything is written,
    # and only when these files differ from the ones this database recorded last.
    source = read_source(ctx, directory, source_options)
    started = time.perf_counter()
    async with connect(ctx, db_url, sinks, create=True, max_attempts=max_attempts) as client:
        await client.ledger.record_source(source)
        queued = await client.ledger.queue_pending()
        with Progress(client, len(queued), "applying"):
            result = await client.process(ignore_backoff=retry_now, atomic=atomic)
            while wait and (due := _retry_due(result)) is not None:
                if result.failure is not None and not as_json:
                    report_failure(result)
                await client.clock.sleep(max(0.0, due - client.clock.now()))
                result = await client.process(atomic=atomic)
    if as_json:
        return print_pass_json(result, time.perf_counter() - started)
    return report_pass(result, time.perf_counter() - started, "applied")


def _retry_due(result: PassResult) -> float | None:
    """When the change blocking the queue may be tried again (None: it may not, or nothing blocks)."""
    if result.failure is not None and not result.failure.dead:
        return result.failure.next_attempt_at
    return result.waiting_until


# -- process, queue, revert ---------------------------------------------------------------


@click.command()
@db_option
@sink_option
@click.option("--retry-now", is_flag=True, help="Ignore the backoff of a failed change.")
@json_option
@click.pass_context
def process(ctx: click.Context, db_url: str, sinks: tuple[str, ...], retry_now: bool, as_json: bool) -> None:
    """Work what is already queued (applies and reverts), in order."""

    async def run() -> int:
        from migsync.output.report import print_pass_json, report_pass

        started = time.perf_counter()
        async with connect(ctx, db_url, sinks) as client:
            result = await client.process(ignore_backoff=retry_now)
        if as_json:
            return print_pass_json(result, time.perf_counter() - started)
        return report_pass(result, time.perf_counter() - started, "processed")

    sys.exit(run_coro(run()))


@click.command()
@db_option
@max_attempts_option
@click.argument("name")
@json_option
@click.pass_context
def queue(ctx: click.Context, db_url: str, max_attempts: int, name: str, as_json: bool) -> None:
    """Queue migration NAME (and every earlier pending one) for apply.

    NAME is the full name (0003_add_email), the name without its version
    (add_email) or the version (3). A dead migration is revived: its
    attempts start again. Run 'migsync process' (or apply) to work the queue.
    """

    async def run() -> None:
        async with connect(ctx, db_url, (), max_attempts=max_attempts) as client:
            names = await client.ledger.queue(name)
        if as_json:
            echo_json({"queued": names})
        else:
            click.echo(f"queued: {', '.join(names)}" if names else "nothing to queue: already queued")

    run_coro(run())


@click.command()
@db_option
@sink_option
@max_attempts_option
@click.argument("name", required=False)
@click.option(
    "--to", "to_version", callback=version_value, metavar="VERSION", help="Revert everything above VERSION."
)
@click.option("--all", "everything", is_flag=True, help="Revert every applied migration.")
@click.option("--queue-only", is_flag=True, help="Queue the reverts without processing them.")
@json_option
@click.pass_context
def revert(
    ctx: click.Context,
    db_url: str,
    sinks: tuple[str, ...],
    max_attempts: int,
    name: str | None,
    to_version: Version | None,
    everything: bool,
    queue_only: bool,
    as_json: bool,
) -> None:
    """Revert NAME and every migration applied after it, newest first.

    Or --to VERSION (keep VERSION, revert what is above it) or --all.
    """
    if sum((name is not None, to_version is not None, everything)) != 1:
        raise click.UsageError("give exactly one of NAME, --to VERSION or --all")

    async def run() -> int:
        from migsync.output.report import Progress, print_pass_json, report_pass

        started = time.perf_counter()
        async with connect(ctx, db_url, sinks, max_attempts=max_attempts) as client:
            requested = await client.ledger.revert(name, to=to_version, everything=everything)
            names = requested.reverting
            if as_json:
                from migsync.core.processor import PassResult

                result = PassResult() if queue_only or not names else await client.process()
                return print_pass_json(
                    result,
                    time.perf_counter() - started,
                    queued=names if queue_only else [],
                    cancelled=requested.cancelled,
                )
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

    sys.exit(run_coro(run()))


@click.command()
@db_option
@click.argument("name")
@click.option("--applied", "outcome", flag_value="applied", help="It took effect: record it as done.")
@click.option("--not-applied", "outcome", flag_value="not-applied", help="It did not: run it again.")
@json_option
@click.pass_context
def repair(ctx: click.Context, db_url: str, name: str, outcome: str | None, as_json: bool) -> None:
    """Resolve a dirty migration after checking the database by hand.

    A migration that runs outside a transaction (transaction:false,
    .autocommit) and stops half-way leaves the database dirty: nothing runs
    until a person has looked. If its changes took effect, say --applied;
    if they did not (or you undid them), say --not-applied and it runs again.
    """
    if outcome is None:
        raise click.UsageError("say what you found: --applied or --not-applied")

    async def run() -> None:
        async with connect(ctx, db_url, ()) as client:
            state = await client.ledger.repair(name, applied=outcome == "applied")
        if as_json:
            echo_json({"name": state.name, "state": state.state})
        else:
            click.echo(f"repaired: {state.name} is now {state.state}")

    run_coro(run())
