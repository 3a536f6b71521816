"""goose: ``goose_db_version(id, version_id, is_applied, tstamp)``, a log of applies and reverts.

goose writes a row ``(0, true)`` when it creates the table (version 0 is its
own, no migration), then one row per apply; older goose versions log a revert
as a row with ``is_applied = false``, newer ones delete the version's rows.
The latest row (highest ``id``) of each version says whether it is applied.
"""

from __future__ import annotations

from migsync.core.adopters.history import Fetch, ForeignHistory, Tool, parse_version

NAME, TABLE = "goose", "goose_db_version"


async def read(fetch: Fetch) -> ForeignHistory:
    latest: dict[int, bool] = {}
    for row in await fetch(f"SELECT version_id, is_applied FROM {TABLE} ORDER BY id"):
        latest[int(row["version_id"])] = bool(row["is_applied"])
    applied = frozenset(parse_version(NAME, TABLE, v) for v, on in latest.items() if on and v != 0)
    return ForeignHistory(NAME, TABLE, applied=applied)


TOOL = Tool(NAME, TABLE, frozenset({"version_id", "is_applied"}), read=read)
