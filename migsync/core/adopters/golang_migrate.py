"""golang-migrate: ``schema_migrations(version bigint, dirty boolean)``, one row, the current version.

golang-migrate applies the files in version order and keeps only the version
it reached: every migration up to it is applied. ``dirty`` means the last
one failed half-way, and golang-migrate itself runs nothing until a person
says, with ``migrate force``, which version the database really is at. An
empty table (after ``migrate down`` to the start) means nothing is applied.
"""

from __future__ import annotations

from migsync.core.adopters.history import Fetch, ForeignHistory, Tool, parse_version
from migsync.core.errors import MigrationError

NAME, TABLE = "golang-migrate", "schema_migrations"


async def read(fetch: Fetch) -> ForeignHistory:
    rows = await fetch(f"SELECT version, dirty FROM {TABLE}")
    if len(rows) > 1:
        raise MigrationError(
            f"{NAME}'s {TABLE} has {len(rows)} rows; golang-migrate keeps one (the current version): "
            "it is not golang-migrate's table as it leaves it, or was edited by hand"
        )
    if not rows:
        return ForeignHistory(NAME, TABLE)
    version, dirty = int(rows[0]["version"]), bool(rows[0]["dirty"])
    if dirty:
        shown = "no version" if version < 0 else f"version {version}"
        raise MigrationError(
            f"{NAME} left {shown} dirty: a migration failed half-way. Check the database, fix it, "
            "and run `migrate force V` with the version it really is at; then adopt again. "
            "Nothing was recorded"
        )
    if version < 0:  # golang-migrate's "nil version": nothing applied
        return ForeignHistory(NAME, TABLE)
    current = parse_version(NAME, TABLE, version)
    return ForeignHistory(NAME, TABLE, applied=frozenset({current}), up_to=current)


TOOL = Tool(NAME, TABLE, frozenset({"version", "dirty"}), read=read)
