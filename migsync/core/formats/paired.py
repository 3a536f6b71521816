"""The paired format, ory/pop's: ``.up.sql`` / ``.down.sql`` files with dialect infixes.

::

    <version>_<name>[.<dialect>][.autocommit].up.sql
    <version>_<name>[.<dialect>][.autocommit].down.sql

The name has no dots; what lies between it and ``.up.sql`` are infixes: one
dialect (``sqlite3``, ``postgres``, ``cockroach``, ``mysql`` and their
aliases) and ``autocommit``, in either order. An empty infix
(``x..up.sql``) is nothing. golang-migrate's and sqlx's pairs without dots in
the name read the same in this format; a name with an infix is unmistakably
this format's (:meth:`PairedFormat.sniff`).
"""

from __future__ import annotations

import re
from pathlib import Path

from migsync.core import dialects
from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat
from migsync.core.formats.golang_migrate import pair_files
from migsync.core.formats.native import migration_name
from migsync.core.migration import ANY_DIALECT, Direction

_NAME = re.compile(
    r"^(?P<version>\d+)(?:_(?P<desc>[^.]*))?(?P<infixes>(?:\.[^.]*)*?)\.(?P<direction>up|down)\.sql$"
)


class PairedFormat(SourceFormat):
    """Paired ``.up.sql`` / ``.down.sql`` files with optional dialect and autocommit infixes."""

    name = "paired"
    aliases = ("pop",)
    pattern_help = "<version>_<name>[.<dialect>][.autocommit].up.sql (and .down.sql)"
    mark = "a dialect or autocommit infix in its name"

    def match(self, filename: str) -> FileName | None:
        m = _NAME.match(filename)
        if not m:
            return None
        dialect = ANY_DIALECT
        autocommit = False
        # Anything unknown, repeated or contradictory (two dialects) makes the name
        # not ours: it may be another format's (a golang-migrate title with dots).
        for infix in m["infixes"].split(".")[1:]:
            if not infix:
                continue
            if infix.lower() == "autocommit" and not autocommit:
                autocommit = True
                continue
            found = dialects.lookup(infix)
            if found is None or dialect != ANY_DIALECT:
                return None
            dialect = found
        direction: Direction = "up" if m["direction"] == "up" else "down"
        name = migration_name(m["version"], m["desc"])
        return FileName(m["version"], name, direction, dialect, autocommit)

    def sniff(self, file: FileName, data: bytes) -> bool | None:
        # A dialect or autocommit infix is this format's mark; a plain pair says nothing.
        return True if file.dialect != ANY_DIALECT or file.autocommit else None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        assert file.direction is not None
        return [Section(file.direction, text, file.dialect, file.autocommit, path, 1)]

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        return pair_files(new)
