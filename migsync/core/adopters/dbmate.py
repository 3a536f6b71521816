"""dbmate: ``schema_migrations(version varchar primary key)``, one row per applied migration.

Rails and a few others keep the same table; it reads the same. A
``schema_migrations`` table with a ``dirty`` column is golang-migrate's.
"""

from __future__ import annotations

from migsync.core.adopters.history import Fetch, ForeignHistory, Tool, parse_version

NAME, TABLE = "dbmate", "schema_migrations"


async def read(fetch: Fetch) -> ForeignHistory:
    rows = await fetch(f"SELECT version FROM {TABLE}")
    return ForeignHistory(
        NAME, TABLE, applied=frozenset(parse_version(NAME, TABLE, r["version"]) for r in rows)
    )


TOOL = Tool(NAME, TABLE, frozenset({"version"}), without=frozenset({"dirty"}), read=read)
