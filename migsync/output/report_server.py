"""Human-readable output of the server commands and the demo: plain tables, the fleet view."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from migsync.core.clock import iso
from migsync.core.version import Version
from migsync.output.table import on_a_terminal, print_table
from migsync.server.records import Failure, FleetEntry

if TYPE_CHECKING:
    from migsync.server.rollout_store import Rollout, RolloutStatus


def print_fleet(entries: Sequence[FleetEntry]) -> None:
    """One row per client: latest version, applied, pending, drift, last seen, failures."""
    if not entries:
        click.echo("no clients")
        return
    # failed is last: it is the only column of free text, so the others stay lined up before it
    header = ("id", "name", "latest", "applied", "pending", "drift", "last seen", "failed")
    rows = [
        (
            str(e.client.client_id),
            e.client.name,
            str(max(e.applied)) if e.applied else "-",
            str(len(e.applied)),
            _versions(e.pending) + ("" if e.held_from is None else f" (held from {e.held_from})"),
            _versions([d.version for d in e.drift]),
            iso(e.client.last_seen_at) or "never",
            "; ".join(_failure(f) for f in e.failed) or "-",
        )
        for e in entries
    ]
    print_table(header, rows)


def rollout_line(record: Rollout) -> str:
    """``rollout 3: 4 paused (...), stage 1 of 2 (canary); stages canary, all``."""
    j = record.to_json()
    reason = f" ({j['reason']})" if j["reason"] else ""
    return (
        f"rollout {j['id']}: {', '.join(j['versions'])} {j['state']}{reason}, "
        f"stage {j['stage']} of {len(j['stages'])} ({j['stage_name']}); stages {', '.join(j['stages'])}"
    )


def print_rollout_stages(result: RolloutStatus) -> None:
    """A rollout's stages with their counts now: one row per stage."""
    rows = [
        (
            s["name"],
            "yes" if s["started"] else "no",
            str(s["members"]),
            str(s["applied"]),
            str(s["failed"]),
            str(s["pending"]),
        )
        for s in result.to_json()["stage_counts"]
    ]
    print_table(("stage", "started", "clients", "applied", "failed", "pending"), rows)


_MAX_ERROR = 100
_MAX_RANGES = 5


def _versions(versions: Sequence[Version]) -> str:
    """``1-3, 7``: runs of consecutive versions as ranges, the first few of them, or ``-``."""
    ranges: list[list[Version]] = []
    for v in sorted(versions):
        if ranges and _next(ranges[-1][1], v):
            ranges[-1][1] = v
        else:
            ranges.append([v, v])
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:_MAX_RANGES]]
    if len(ranges) > _MAX_RANGES:
        shown.append(f"... ({len(versions)} in all)")
    return ", ".join(shown) or "-"


def _next(a: Version, b: Version) -> bool:
    """Whether ``b`` follows ``a`` directly (whole numbers only: dotted ones have no next)."""
    return not a.dotted and not b.dotted and b.parts[0] == a.parts[0] + 1


def _failure(failure: Failure) -> str:
    """``VERSION: first line of the error``, cut to a readable length."""
    line = next((s.strip() for s in (failure.error or "").splitlines() if s.strip()), "")
    # A client sends its errors: no escape sequence of theirs reaches the admin's terminal.
    line = "".join(c if c.isprintable() else "?" for c in line)
    if len(line) > _MAX_ERROR and on_a_terminal():
        line = line[: _MAX_ERROR - 3].rstrip() + "..."
    return f"{failure.version}{' (dead)' if failure.dead else ''}: {line or 'failed'}"


def cell(text: str, width: int = 30) -> str:
    """``text`` fit for one table cell: what came from a client cannot move the cursor, and
    on a terminal it is cut to ``width``."""
    shown = text if text.isprintable() else json.dumps(text)[1:-1]
    return shown if len(shown) <= width or not on_a_terminal() else shown[: width - 3] + "..."
