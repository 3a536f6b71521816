"""Human-readable output of the CLI and the demo: pass reports, progress, status tables."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from migsync.core.client import Client
from migsync.core.clock import iso
from migsync.core.ledger import MigrationState
from migsync.core.processor import Outcome, PassResult
from migsync.output.table import on_a_terminal, table_text

EXIT_FAILED = 1


def make_console() -> Any:
    """A rich console for stdout that a pipe, a CI log and ``NO_COLOR`` get right.

    Not on a terminal, rich would cut every table to 80 columns (``202401011200…``):
    there the width is unbounded and the table as wide as its cells. ``NO_COLOR``
    (no-color.org) turns off every style, bold too, not only colours.
    """
    from rich.console import Console

    width = None if sys.stdout.isatty() else 1_000_000
    return Console(width=width, color_system=None if os.environ.get("NO_COLOR") else "auto")


_STATE_COLORS = {
    "applied": "green",
    "pending": "yellow",
    "failed": "red",
    "dead": "bold red",
    "dirty": "bold red",
}
_STATUS_COLUMNS = ("version", "name", "state", "applied at", "attempts")


def _state_label(s: MigrationState) -> str:
    if s.held:
        return f"{s.state} (held)"
    return s.state if s.queued is None or s.state != "applied" else f"{s.state} (revert queued)"


def print_status(states: Sequence[MigrationState], *, sqlite_version: str | None = None) -> None:
    """The status table and what needs a person's attention; plain text when not on a terminal.

    rich costs ~100 ms to import and draw 1000 rows; in a pipe (CI, scripts, ``| grep``) it
    would print no styles anyway, so there the same text is written without it.
    """
    if on_a_terminal():
        _print_status_rich(states, sqlite_version)
        return
    if sqlite_version is not None:
        click.echo(f"database: SQLite {sqlite_version}")
    if not states:
        click.echo("no migrations recorded in this database yet")
        return
    rows = [
        (str(s.version), s.name, _state_label(s), s.to_json()["applied_at"] or "", str(s.attempts or ""))
        for s in states
    ]
    click.echo(table_text(_STATUS_COLUMNS, rows, edges=True))
    for line in _attention(states):
        click.echo(line)
    counts = {k: sum(1 for s in states if s.state == k) for k in _STATE_COLORS}
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items() if n))


def _attention(states: Sequence[MigrationState], escape: Callable[[str], str] = str) -> list[str]:
    """The lines under the table about errors, dirty migrations and a hold (rich markup with
    ``escape`` given, plain text otherwise)."""
    styled = escape is not str

    def style(color: str, text: str) -> str:
        return f"[{color}]{text}[/]" if styled else text

    lines = []
    for s in states:
        if s.error and s.state in ("failed", "dead", "dirty"):
            # escape: "[in: ...]" in an error would otherwise be read as rich markup and vanish
            lines.append(f"{style(_STATE_COLORS[s.state], escape(s.name))}: {escape(s.error)}")
        if s.state == "dirty":
            lines.append(
                f"{style('bold red', f'{escape(s.name)} is dirty')}: it runs outside a transaction and did "
                "not finish. Check by hand whether it took effect, then run "
                f"'migsync repair --db URL {escape(s.name)} --applied' or '--not-applied'."
            )
    held = [s for s in states if s.held]
    if held:
        lines.append(
            f"{style('yellow', f'held from {escape(held[0].name)} on')}: the server asked this client to "
            "revert it; nothing from there on is applied until the server asks for a re-apply "
            f"(or 'migsync queue --db URL {escape(held[0].name)}' lifts the hold here)."
        )
    return lines


def _print_status_rich(states: Sequence[MigrationState], sqlite_version: str | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = make_console()
    if sqlite_version is not None:
        console.print(f"database: SQLite {sqlite_version}", highlight=False)
    if not states:
        console.print("no migrations recorded in this database yet")
        return
    table = Table(box=None, header_style="bold")
    for column in _STATUS_COLUMNS:
        # On a narrow terminal the name folds onto more lines; the other columns stay whole.
        table.add_column(
            column, no_wrap=column != "name", overflow="fold" if column == "name" else "ellipsis"
        )
    for s in states:
        table.add_row(
            str(s.version),
            escape(s.name),
            f"[{_STATE_COLORS[s.state]}]{_state_label(s)}[/]",
            s.to_json()["applied_at"] or "",
            str(s.attempts or ""),
        )
    console.print(table)
    for line in _attention(states, escape):
        console.print(line, highlight=False)
    counts = {k: sum(1 for s in states if s.state == k) for k in _STATE_COLORS}
    console.print(", ".join(f"{n} {k}" for k, n in counts.items() if n))


class Progress:
    """A progress bar on a terminal, fed by the event bus; nothing otherwise."""

    def __init__(self, client: Client, total: int, verb: str):
        self.client, self.total, self.verb = client, total, verb
        self._stop: Callable[[], None] | None = None
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.total < 2 or not sys.stderr.isatty():
            return self
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        task = self._bar.add_task(self.verb, total=self.total)
        self._bar.start()
        self._stop = self.client.bus.subscribe(
            lambda event: self._bar.advance(task), "migration_applied", "migration_reverted"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop()
        if self._bar is not None:
            self._bar.stop()


def report_pass(result: PassResult, elapsed: float, verb: str | None) -> int:
    """Print what a pass did and why it stopped; its exit code. ``verb`` None: a line per kind
    of change (``applied ...``, ``reverted ...``), for a pass that may hold both."""
    done = [o for o in result.processed if o.ok]
    groups = {verb: done} if verb is not None else {}
    if verb is None:
        for operation, said in (("apply", "applied"), ("revert", "reverted")):
            mine = [o for o in done if o.label.split(" ", 1)[0] == operation]
            if mine:
                groups[said] = mine
    for said, items in groups.items():
        if items:
            names = [o.label.split(" ", 1)[1] for o in items]
            span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
            click.echo(
                f"{said} {len(items)} migration{'s' * (len(items) != 1)} ({span}) in {elapsed * 1000:.0f} ms"
            )
    if result.failure is not None:
        report_failure(result)
        return EXIT_FAILED
    if result.blocked is not None and result.blocked.dirty:
        click.echo(f"dirty: {result.blocked.error}", err=True)
        return EXIT_FAILED
    if result.blocked is not None:
        b = result.blocked
        click.echo(
            f"dead: {b.label} failed {b.attempts} times and blocks everything after it: {b.error}\n"
            f"  fix the cause, then retry it with: migsync queue --db URL {b.label.split(' ', 1)[1]}",
            err=True,
        )
        return EXIT_FAILED
    if result.waiting_until is not None:
        when = iso(result.waiting_until)
        click.echo(
            f"waiting: the next queued change retries after {when} (use --retry-now or --wait)",
            err=True,
        )
        return EXIT_FAILED
    if not done:
        click.echo("nothing to do: the database is up to date")
    return 0


def report_failure(result: PassResult) -> None:
    f = result.failure
    assert f is not None
    if f.dirty:
        click.echo(f"dirty: {f.label} stopped half-way: {f.error}", err=True)
    elif f.dead:
        click.echo(
            f"dead: {f.label} failed {f.attempts} of {f.max_attempts} attempts: {f.error}\n"
            f"  fix the cause, then retry it with: migsync queue --db URL {f.label.split(' ', 1)[1]}",
            err=True,
        )
    else:
        when = iso(f.next_attempt_at or 0)
        click.echo(
            f"failed: {f.label} (attempt {f.attempts} of {f.max_attempts}): {f.error}\n"
            f"  next attempt after {when}; later migrations wait for it",
            err=True,
        )


def pass_json(result: PassResult, elapsed: float, **more: Any) -> dict[str, Any]:
    """A pass as the ``--json`` of apply, process and revert print it (``more``: the command's own keys)."""

    def names(operation: str) -> list[str]:
        return [o.label.split(" ", 1)[1] for o in result.processed if o.ok and o.label.startswith(operation)]

    def outcome(o: Outcome | None) -> dict[str, Any] | None:
        if o is None:
            return None
        operation, _, name = o.label.partition(" ")
        return {
            "name": name,
            "operation": operation,
            "error": o.error,
            "attempts": o.attempts,
            "max_attempts": o.max_attempts,
            "dead": o.dead,
            "dirty": o.dirty,
            "next_attempt_at": iso(o.next_attempt_at),
        }

    return {
        "ok": pass_exit_code(result) == 0,
        **more,
        "applied": names("apply "),
        "reverted": names("revert "),
        "failed": outcome(result.failure),
        "blocked": outcome(result.blocked),
        "waiting_until": iso(result.waiting_until),
        "remaining": result.remaining,
        "elapsed_ms": round(elapsed * 1000),
    }


def pass_exit_code(result: PassResult) -> int:
    """1 when the pass stopped short (a failure, a dead or dirty change, a backoff to wait out)."""
    stopped = result.failure is not None or result.blocked is not None or result.waiting_until is not None
    return EXIT_FAILED if stopped else 0


def print_pass_json(result: PassResult, elapsed: float, **more: Any) -> int:
    click.echo(json.dumps(pass_json(result, elapsed, **more), indent=2))
    return pass_exit_code(result)
