"""``migsync rollout start|list|status|pause|resume|advance|abort|retention``: staged rollouts
of published versions (see docs/rollouts.md and :mod:`migsync.server.rollouts`).

The options shared with ``migsync publish --stages`` are here too (:func:`rollout_options`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeVar

import click

from migsync.cli.rollout_options import policy_of, rollout_options, who
from migsync.cli.stores import on_store, store_option

if TYPE_CHECKING:
    from migsync.server.rollout_store import Rollout, RolloutStatus

T = TypeVar("T")


@click.group()
def rollout() -> None:
    """Take published versions to the fleet in stages, watched (docs/rollouts.md)."""


@rollout.command("start")
@click.argument("versions", nargs=-1, required=True)
@store_option
@click.option(
    "--stages",
    required=True,
    metavar="LIST",
    help="Comma-separated stages: N% (by a stable hash of the client id), NAME (clients labelled "
    "group=NAME), key=value (clients so labelled), all.",
)
@rollout_options
@click.option("--json", "as_json", is_flag=True, help="Print the rollout as JSON.")
def start(
    versions: tuple[str, ...],
    store_url: str,
    stages: str,
    success_threshold: str,
    error_threshold: str,
    soak: str,
    on_failure: str,
    by: str | None,
    as_json: bool,
) -> None:
    """Start a rollout of published VERSIONS (an open rollout of one of them is superseded)."""
    from migsync.core.version import Version
    from migsync.server import rollouts

    try:
        parsed = rollouts.parse_stages(stages)
        wanted = [Version.parse(v) for v in versions]
    except (rollouts.RolloutError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    policy = policy_of(success_threshold, error_threshold, soak, on_failure)
    record = on_store(store_url, lambda s: s.start_rollout(wanted, parsed, policy, who(by)))
    _show(record, as_json)


@rollout.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help='Print {"rollouts": [...]}.')
def list_command(store_url: str, as_json: bool) -> None:
    """List every rollout, newest first."""
    records = on_store(store_url, lambda s: s.rollouts())
    if as_json:
        click.echo(json.dumps({"rollouts": [r.to_json() for r in records]}, indent=2))
        return
    if not records:
        click.echo("no rollouts")
        return
    for record in records:
        _line(record)


@rollout.command("status")
@click.argument("rollout_id", type=int)
@store_option
@click.option(
    "--points", default=12, show_default=True, type=click.IntRange(1, 500), help="Times in the history."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the rollout, its stage counts, history and audit."
)
def status(rollout_id: int, store_url: str, points: int, as_json: bool) -> None:
    """Show rollout ROLLOUT_ID: its state, each stage's counts now and over time, its audit.

    Reading it evaluates it first: a stage whose soak time is over starts now."""
    result = on_store(store_url, lambda s: s.rollout_status(rollout_id, points))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_status(result)


def _operation(name: str, doc: str) -> None:
    @rollout.command(name, help=doc)
    @click.argument("rollout_id", type=int)
    @store_option
    @click.option(
        "--by",
        "by",
        default=None,
        metavar="NAME",
        help="Who does it, recorded in the audit [default: login name].",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the rollout as JSON.")
    def command(rollout_id: int, store_url: str, by: str | None, as_json: bool) -> None:
        record = on_store(store_url, lambda s: s.rollout_operate(rollout_id, name, who(by)))
        _show(record, as_json)


_operation("pause", "Pause rollout ROLLOUT_ID: no further stage starts (started ones keep it).")
_operation(
    "resume",
    "Resume paused rollout ROLLOUT_ID; the failures seen so far are accepted, new ones pause it again.",
)
_operation("advance", "Start the next stage of rollout ROLLOUT_ID now (after the last: complete it).")
_operation("abort", "Abort rollout ROLLOUT_ID: its versions are offered to no client that lacks them.")


@rollout.command("retention")
@click.argument("duration")
@store_option
def retention(duration: str, store_url: str) -> None:
    """Keep clients' status events (the rollouts' history) for DURATION (default 90d)."""
    from migsync.server import rollouts

    try:
        seconds = rollouts.parse_duration(duration)
    except rollouts.RolloutError as exc:
        raise click.BadParameter(str(exc)) from None
    on_store(store_url, lambda s: s.set_event_retention(seconds))
    click.echo(f"status events are kept for {duration}")


def _show(record: Rollout, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record.to_json(), indent=2))
        return
    _line(record)


def _line(record: Rollout) -> None:
    from migsync.output.report_server import rollout_line

    click.echo(rollout_line(record))


def _print_status(result: RolloutStatus) -> None:
    from migsync.output.report_server import print_rollout_stages

    _line(result.rollout)
    j = result.to_json()
    click.echo(
        f"success threshold {j['success_threshold']:.0%}, error threshold {j['error_threshold']:.0%}, "
        f"soak {j['soak_seconds']:g} s, on failure {j['on_failure']}; started by {j['created_by']}"
    )
    print_rollout_stages(result)
    click.echo("history (applied/failed/pending per stage):")
    for point in j["history"]:
        cells = "  ".join(f"{s['applied']}/{s['failed']}/{s['pending']}" for s in point["stages"])
        click.echo(f"  {point['at']}  {cells}")
    click.echo("audit:")
    for entry in j["audit"]:
        click.echo(f"  {entry['at']}  {entry['who']}: {entry['what']}")
