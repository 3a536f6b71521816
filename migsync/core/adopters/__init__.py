"""Reading the migration history another tool left in a database, to adopt it.

``migsync adopt`` takes over a database that golang-migrate, dbmate, sqlx,
goose, Flyway or ory/pop migrated: it reads that tool's history table (one
module per tool here), refuses a dirty or failed state with the tool's own
way out, matches the applied versions with the folder's migrations
(:func:`adoption`) and records exactly those as applied
(:func:`migsync.core.baseline.mark_applied`). The other tool's table is only
read, never changed.

Each tool's table is found where the tool itself looks for it: on Postgres
by its bare name, through the connection's ``search_path``; on SQLite in
``main``.
"""

from __future__ import annotations

from migsync.core.adopters import dbmate, flyway, golang_migrate, goose, pop, sqlx
from migsync.core.adopters.history import ForeignHistory, Tool, adoption, detect, tool_named

#: Every tool whose history ``migsync adopt`` reads, in the order ``--from`` lists them.
TOOLS: tuple[Tool, ...] = (
    golang_migrate.TOOL,
    dbmate.TOOL,
    sqlx.TOOL,
    goose.TOOL,
    flyway.TOOL,
    pop.TOOL,
)

__all__ = ["TOOLS", "ForeignHistory", "Tool", "adoption", "detect", "tool_named"]
