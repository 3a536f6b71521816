"""ory/pop and popx: ``schema_migration(version varchar(14), or 48 in popx)``, one row per applied migration.

popx's versions have 20 digits (``20150100000001000000``): they are read as
text and never become machine integers.
"""

from __future__ import annotations

from migsync.core.adopters.history import Fetch, ForeignHistory, Tool, parse_version

NAME, TABLE = "pop", "schema_migration"


async def read(fetch: Fetch) -> ForeignHistory:
    rows = await fetch(f"SELECT version FROM {TABLE}")
    return ForeignHistory(
        NAME, TABLE, applied=frozenset(parse_version(NAME, TABLE, r["version"]) for r in rows)
    )


TOOL = Tool(NAME, TABLE, frozenset({"version"}), read=read)
