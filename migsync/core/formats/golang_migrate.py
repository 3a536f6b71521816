"""golang-migrate's pairs: ``<version>_<title>.up.sql`` and ``<version>_<title>.down.sql``.

The title is anything, dots included (``0002_1.7.0_schema.up.sql``), or
nothing (``0157_.up.sql``, and ``0157.up.sql``). golang-migrate knows no
dialects: ``0003_to.postgres.up.sql`` is the title ``to.postgres``, where the
paired format reads a Postgres-only script; the loader refuses a folder that
could be read both ways unless ``--format`` says which.

golang-migrate sends a file to the database as it is; migsync runs it in one
transaction with its bookkeeping (a ``BEGIN; ... COMMIT;`` wrapper is
honoured, see :mod:`migsync.core.script_check`).
"""

from __future__ import annotations

import re
from pathlib import Path

from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat
from migsync.core.formats.native import migration_name
from migsync.core.migration import Direction

PAIR = re.compile(r"^(?P<version>\d+)(?:_(?P<title>.*))?\.(?P<direction>up|down)\.sql$")


def match_pair(filename: str) -> FileName | None:
    """``<version>[_<title>].(up|down).sql`` with the title as written (dots and all)."""
    m = PAIR.match(filename)
    if not m:
        return None
    direction: Direction = "up" if m["direction"] == "up" else "down"
    return FileName(m["version"], migration_name(m["version"], m["title"]), direction)


def pair_files(new: NewMigration) -> dict[str, str]:
    """An empty ``.up.sql`` and ``.down.sql``, as ``migrate create`` writes them."""
    return {f"{new.version}_{new.name}.up.sql": "", f"{new.version}_{new.name}.down.sql": ""}


class GolangMigrateFormat(SourceFormat):
    name = "golang-migrate"
    aliases = ("migrate",)
    group = "golang-migrate"
    pattern_help = "<version>_<title>.up.sql (and .down.sql), the title with dots or empty"

    def match(self, filename: str) -> FileName | None:
        return match_pair(filename)

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        assert file.direction is not None
        return [Section(file.direction, text, path=path)]

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        return pair_files(new)
