"""The native format, dbmate's: one file per migration with ``-- migrate:up`` / ``-- migrate:down``.

``<version>_<name>.sql`` (or ``<version>.sql``)::

    -- migrate:up
    CREATE TABLE users (id INTEGER PRIMARY KEY);
    -- migrate:up dialect=postgres
    CREATE TABLE users (id BIGSERIAL PRIMARY KEY);
    -- migrate:down
    DROP TABLE users;

A marker may carry options: ``dialect=NAME`` (migsync's) and
``transaction:false`` (dbmate's; ``autocommit`` is accepted too) for a
section that must run outside a transaction. A file without markers is not
native: the loader offers it to the formats that read a whole file as one
script (sqlx's ``<version>_<name>.sql``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from migsync.core import dialects
from migsync.core.errors import SourceError
from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat
from migsync.core.migration import ANY_DIALECT
from migsync.core.splitter import split

#: ``.up.sql`` and ``.down.sql`` names are always the paired formats' (they were before).
NAME = re.compile(r"^(?P<version>\d+)(?:_(?P<desc>.*))?(?<!\.up)(?<!\.down)\.sql$")
_OPTION = re.compile(r"(\w+)(?:[=:](\S+))?")
_MARKER = re.compile(r"^--[ \t]*migrate:(?P<direction>\w+)(?P<options>[^\n]*)$", re.MULTILINE)
_MARKER_BYTES = re.compile(rb"^--[ \t]*migrate:", re.MULTILINE)


def migration_name(version: str, description: str | None) -> str:
    """``<version>_<description>`` as written; the version alone when there is no description.

    Trailing dots are not part of it: ``7_x..up.sql`` is ``7_x``, and ``7_.sql`` is ``7``.
    """
    description = (description or "").rstrip(".")
    return f"{version}_{description}" if description else version


class NativeFormat(SourceFormat):
    name = "native"
    aliases = ("dbmate",)
    pattern_help = "<version>_<name>.sql with '-- migrate:up' markers"
    mark = "'-- migrate:up' markers"

    def match(self, filename: str) -> FileName | None:
        m = NAME.match(filename)
        if not m:
            return None
        return FileName(m["version"], migration_name(m["version"], m["desc"]))

    def sniff(self, file: FileName, data: bytes) -> bool | None:
        return _MARKER_BYTES.search(data) is not None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        markers = list(_MARKER.finditer(text))
        line_of: Callable[[int], int] = lambda pos: text.count("\n", 0, pos) + 1  # noqa: E731
        if not markers:
            raise SourceError("no '-- migrate:up' section", path)
        leading = split(text[: markers[0].start()], "postgresql")
        if leading:
            raise SourceError("SQL before the first '-- migrate:up' marker", path, leading[0].line)
        sections: list[Section] = []
        seen: dict[tuple[str, str], int] = {}
        for index, marker in enumerate(markers):
            line = line_of(marker.start())
            direction = marker["direction"]
            if direction not in ("up", "down"):
                raise SourceError(
                    f"unknown marker 'migrate:{direction}' (expected migrate:up or migrate:down)",
                    path,
                    line,
                )
            dialect, autocommit = _marker_options(marker["options"], path, line)
            previous = seen.get((direction, dialect))
            if previous is not None:
                which = "generic" if dialect == ANY_DIALECT else dialect
                hint = (
                    "; several up/down pairs in one file (newer dbmate's) are not supported: "
                    "put each pair in a file of its own"
                    if dialect == ANY_DIALECT
                    else ""
                )
                raise SourceError(
                    f"second '{direction}' section for {which} (the first is at line {previous}){hint}",
                    path,
                    line,
                )
            seen[(direction, dialect)] = line
            end = markers[index + 1].start() if index + 1 < len(markers) else len(text)
            # The body starts on the line after the marker (the section's ``line``).
            start = marker.end() + 1 if text.startswith("\n", marker.end()) else marker.end()
            body = text[start:end]
            sections.append(
                Section(direction, body, dialect, autocommit, path, line + 1)  # type: ignore[arg-type]
            )
        if not any(s.direction == "up" for s in sections):
            raise SourceError("no '-- migrate:up' section", path)
        return sections

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        # dbmate's own template, byte for byte.
        return {f"{new.version}_{new.name}.sql": "-- migrate:up\n\n\n-- migrate:down\n\n"}


def _marker_options(raw: str, path: Path, line: int) -> tuple[str, bool]:
    dialect = ANY_DIALECT
    autocommit = False
    for option in raw.split():
        parsed = _OPTION.fullmatch(option)
        key, value = (parsed[1].lower(), parsed[2] or "") if parsed else ("", "")
        if key == "dialect" and value:
            found = dialects.lookup(value)
            if found is None:
                known = ", ".join(sorted(dialects.ALIASES))
                raise SourceError(f"unknown dialect {value!r} (known: {known})", path, line)
            dialect = found
        elif key == "transaction" and value.lower() in ("false", "off", "no"):
            autocommit = True
        elif key == "transaction" and value.lower() in ("true", "on", "yes"):
            autocommit = False
        elif key == "autocommit" and not value:
            autocommit = True
        else:
            raise SourceError(
                f"unknown marker option {option!r} (expected dialect=NAME or transaction:false)",
                path,
                line,
            )
    return dialect, autocommit
