"""Human-readable output shared by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Sequence

from migsync.core.ledger import MigrationState


def print_status(states: Sequence[MigrationState]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not states:
        console.print("no migrations recorded in this database yet")
        return
    colors = {
        "applied": "green",
        "pending": "yellow",
        "failed": "red",
        "dead": "bold red",
        "dirty": "bold red",
    }
    table = Table(box=None, header_style="bold")
    for column in ("version", "name", "state", "applied at", "attempts"):
        table.add_column(column, no_wrap=True)
    for s in states:
        state = s.state if s.queued is None or s.state != "applied" else f"{s.state} (revert queued)"
        table.add_row(
            str(s.version),
            s.name,
            f"[{colors[s.state]}]{state}[/]",
            s.to_json()["applied_at"] or "",
            str(s.attempts or ""),
        )
    console.print(table)
    for s in states:
        if s.error and s.state in ("failed", "dead", "dirty"):
            console.print(f"[{colors[s.state]}]{s.name}[/]: {s.error}", highlight=False)
        if s.state == "dirty":
            console.print(
                f"[bold red]{s.name} is dirty[/]: it runs outside a transaction and did not finish. "
                "Check by hand whether it took effect, then run "
                f"'migsync repair --db URL {s.name} --applied' or '--not-applied'.",
                highlight=False,
            )
    counts = {k: sum(1 for s in states if s.state == k) for k in colors}
    console.print(", ".join(f"{n} {k}" for k, n in counts.items() if n))
