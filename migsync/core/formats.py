"""Migration file formats: the native one and golang-migrate's paired files.

A format claims file names (``match``) and turns a claimed file's text
into :class:`Section` records (``parse``); the directory loader
(:mod:`migsync.core.sources`) groups sections into migrations.

Native (``<version>_<name>.sql``)::

    -- migrate:up
    CREATE TABLE users (id INTEGER PRIMARY KEY);
    -- migrate:up dialect=postgres
    CREATE TABLE users (id BIGSERIAL PRIMARY KEY);
    -- migrate:down
    DROP TABLE users;

A marker may carry options: ``dialect=NAME`` and ``transaction:false``
(dbmate's spelling; ``autocommit`` is accepted too) for a section that must
run outside a transaction.

Paired (golang-migrate)::

    <version>_<name>[.<dialect>][.autocommit].up.sql
    <version>_<name>[.<dialect>][.autocommit].down.sql
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import attrs

from migsync.core import dialects
from migsync.core.errors import SourceError
from migsync.core.hookspecs import hookimpl
from migsync.core.migration import ANY_DIALECT, Direction
from migsync.core.specs import SourceFormatSpec
from migsync.core.splitter import split
from migsync.core.version import Version, as_version


@attrs.frozen
class FileName:
    """What a format read from a file name."""

    version: Version = attrs.field(converter=as_version)
    name: str  # the migration's name: "<version>_<description>" as written
    direction: Direction | None = None  # None: the file holds both directions
    dialect: str = ANY_DIALECT
    autocommit: bool = False


@attrs.frozen
class Section:
    """One direction's SQL for one dialect, with where it came from."""

    direction: Direction
    sql: str
    dialect: str = ANY_DIALECT
    autocommit: bool = False
    path: Path | None = None
    line: int = 1


class SourceFormat:
    """Base class for migration file formats (see the module docstring)."""

    name: ClassVar[str] = ""
    #: File suffixes this format is responsible for. A file with one of these
    #: suffixes that no format matches is an error, not silently ignored.
    suffixes: ClassVar[tuple[str, ...]] = (".sql",)
    #: What a valid file name looks like, for error messages.
    pattern_help: ClassVar[str] = ""

    def match(self, filename: str) -> FileName | None:
        raise NotImplementedError

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        raise NotImplementedError


_NATIVE_NAME = re.compile(r"^(?P<version>\d+)_(?P<desc>[^.]+)\.sql$")
_OPTION = re.compile(r"(\w+)(?:[=:](\S+))?")
_MARKER = re.compile(r"^--[ \t]*migrate:(?P<direction>\w+)(?P<options>[^\n]*)$", re.MULTILINE)


class NativeFormat(SourceFormat):
    name = "native"
    pattern_help = "<version>_<name>.sql"

    def match(self, filename: str) -> FileName | None:
        m = _NATIVE_NAME.match(filename)
        if not m:
            return None
        return FileName(m["version"], f"{m['version']}_{m['desc']}")

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
                raise SourceError(
                    f"second '{direction}' section for {which} (the first is at line {previous})",
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


_PAIRED_NAME = re.compile(
    r"^(?P<version>\d+)_(?P<desc>[^.]+)(?P<infixes>(?:\.[^.]+)*)\.(?P<direction>up|down)\.sql$"
)


class PairedFormat(SourceFormat):
    """golang-migrate's ``.up.sql`` / ``.down.sql`` pairs with optional infixes."""

    name = "paired"
    pattern_help = "<version>_<name>[.<dialect>][.autocommit].up.sql (and .down.sql)"

    def match(self, filename: str) -> FileName | None:
        m = _PAIRED_NAME.match(filename)
        if not m:
            return None
        dialect = ANY_DIALECT
        autocommit = False
        # Anything unknown, repeated or contradictory (two dialects) makes the name
        # not ours; the loader then reports a name that fits no format.
        for infix in m["infixes"].split(".")[1:]:
            if infix.lower() == "autocommit" and not autocommit:
                autocommit = True
                continue
            found = dialects.lookup(infix)
            if found is None or dialect != ANY_DIALECT:
                return None
            dialect = found
        direction: Direction = "up" if m["direction"] == "up" else "down"
        return FileName(m["version"], f"{m['version']}_{m['desc']}", direction, dialect, autocommit)

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        assert file.direction is not None
        return [Section(file.direction, text, file.dialect, file.autocommit, path, 1)]


@hookimpl
def migsync_register_source_formats(register: Callable[[SourceFormatSpec], None]) -> None:
    register(
        SourceFormatSpec(
            "paired",
            PairedFormat,
            "golang-migrate pairs: <version>_<name>[.<dialect>][.autocommit].up.sql/.down.sql",
            priority=10,
        )
    )
    register(
        SourceFormatSpec(
            "native",
            NativeFormat,
            "<version>_<name>.sql with '-- migrate:up' / '-- migrate:down' sections",
            priority=20,
        )
    )
