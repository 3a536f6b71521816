"""From the sections the formats read to migrations: grouped, ordered, checked.

A migration is the sections of one file (native, goose, sqlx's simple files,
Prisma's ``migration.sql``) or of the files that share its name (paired,
golang-migrate, sqlx's reversible pairs); Flyway's undo file joins the migration
of its version. Migrations apply in version order, or with ``order="name"`` in
the order of their names: files that share a number then get versions ``N``,
``N.1``, ``N.2``, ... Repeatable migrations come last (:func:`repeatable_version`).
Every transactional script is checked for transaction control
(:mod:`migsync.core.script_check`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import attrs

from migsync.core.errors import SourceError
from migsync.core.formats import FileName, Section
from migsync.core.migration import ANY_DIALECT, Migration, Script, description_of, first_line_offset
from migsync.core.version import Version

Order = Literal["version", "name"]
ORDERS: tuple[Order, ...] = ("version", "name")


@attrs.define
class _Entry:
    name: str
    path: Path
    version: Version
    whole: bool  # a file that holds the whole migration (native): it shares it with no other
    named: bool  # a file that names it has been seen (not only a companion, Flyway's undo)
    slots: dict[tuple[str, str], Section] = attrs.Factory(dict)


_TWICE_HINT = (
    "give each migration a version of its own, or pass --order name if your tool applies the files "
    "in the order of their names"
)


def assemble(
    files: Iterable[tuple[FileName, Path, list[Section]]], order: Order = "version"
) -> list[Migration]:
    entries: dict[object, _Entry] = {}
    companions: list[tuple[FileName, Path, list[Section]]] = []
    repeatables: dict[str, _Entry] = {}
    for file, file_path, sections in files:
        if file.repeatable:
            repeatables[file.name] = _Entry(file.name, file_path, file.version, True, True)
            _fill(repeatables[file.name], file, file_path, sections)
            continue
        if file.companion:
            companions.append((file, file_path, sections))
            continue
        key: object = file.version if order == "version" else file.name
        entry = entries.get(key)
        whole = file.direction is None
        if entry is None:
            entries[key] = _Entry(file.name, file_path, file.version, whole, True)
        elif entry.name != file.name or entry.whole or whole:
            raise SourceError(
                f"version {file.version} is used twice: by {entry.path} and by this file; {_TWICE_HINT}",
                file_path,
            )
        _fill(entries[key], file, file_path, sections)
    for file, file_path, sections in companions:
        owners = [e for e in entries.values() if e.version == file.version]
        if not owners:
            entries[(file.version, file.name)] = owner = _Entry(
                file.name, file_path, file.version, False, False
            )
        elif len(owners) > 1:
            raise SourceError(
                f"version {file.version} belongs to {len(owners)} migrations here "
                f"({', '.join(e.name for e in owners)}), so it is not clear which one this file undoes",
                file_path,
            )
        else:
            owner = owners[0]
        _fill(owner, file, file_path, sections)
    ordered = [_migration(version, entry) for version, entry in _in_order(list(entries.values()), order)]
    return ordered + _repeatable(ordered, list(repeatables.values()))


def _repeatable(versioned: list[Migration], entries: list[_Entry]) -> list[Migration]:
    """The repeatable migrations, after the versioned ones, in the order of their descriptions.

    Each is placed just after the newest versioned migration (``V.0.1``, ``V.0.2``, ...), as
    the ledger places it again with what the database knows (:meth:`Ledger.record
    <migsync.core.ledger.Ledger.record>`). It reverts as a no-op: reverting marks it pending,
    and the next apply runs it again after the versioned ones.
    """
    newest = versioned[-1].version if versioned else Version((0,))
    placed = []
    for rank, entry in enumerate(sorted(entries, key=lambda e: description_of(e.name)), start=1):
        entry.slots.setdefault(("down", ANY_DIALECT), Section("down", ""))
        migration = _migration(repeatable_version(newest, rank), entry)
        placed.append(attrs.evolve(migration, repeatable=True))
    return placed


def repeatable_version(newest: Version, rank: int) -> Version:
    """Where the ``rank``-th repeatable migration goes: after ``newest``, before any later version."""
    return Version((*newest.parts, 0, rank))


def _fill(entry: _Entry, file: FileName, file_path: Path, sections: list[Section]) -> None:
    for section in sections:
        key = (section.direction, section.dialect)
        other = entry.slots.get(key)
        if other is not None:
            which = "generic" if section.dialect == ANY_DIALECT else section.dialect
            raise SourceError(
                f"version {file.version} has two {section.direction} scripts for {which}: "
                f"{other.path or 'another file'} and this file",
                file_path,
            )
        entry.slots[key] = section


def _in_order(entries: list[_Entry], order: Order) -> list[tuple[Version, _Entry]]:
    """Each migration with its version, in the order they apply."""
    if order == "version":
        return sorted(((e.version, e) for e in entries), key=lambda pair: pair[0])
    ordered: list[tuple[Version, _Entry]] = []
    previous: _Entry | None = None
    share = 0
    for entry in sorted(entries, key=lambda e: e.name):
        if previous is not None and entry.version == previous.version:
            share += 1
            version = Version((*entry.version.parts, share))
        elif previous is not None and entry.version < previous.version:
            raise SourceError(
                f"with --order name this migration comes after {previous.name}, whose number "
                f"{previous.version} is higher than its own {entry.version}: give it a number that "
                "sorts the same way as its name (pad the numbers with zeros), or use the default "
                "version order",
                entry.path,
            )
        else:
            share = 0
            version = entry.version
        ordered.append((version, entry))
        previous = entry
    return ordered


def _migration(version: Version, entry: _Entry) -> Migration:
    if not any(direction == "up" for direction, _ in entry.slots):
        raise SourceError(f"migration {entry.name} has a down script but no up script", entry.path)
    scripts: dict[str, dict[str, Script]] = {"up": {}, "down": {}}
    origins: dict[str, tuple[str, int]] = {}
    for (direction, dialect), section in entry.slots.items():
        script = Script(section.sql, section.autocommit)
        first_line = section.line + first_line_offset(section.sql)
        _check_script(script, dialect, section.path or entry.path, first_line)
        scripts[direction][dialect] = script
        if section.path is not None:
            origins[f"{direction}:{dialect}"] = (str(section.path), first_line)
    return Migration(
        version, entry.name, scripts["up"], scripts["down"], source=str(entry.path), origins=origins
    )


def _check_script(script: Script, dialect: str, path: Path, first_line: int) -> None:
    """Refuse a transactional script that holds transaction control (:mod:`migsync.core.script_check`)."""
    if script.autocommit:
        return
    # Imported here: a no-op ``migsync apply`` parses nothing (the folder's digest is known).
    from migsync.core import script_check

    found = script_check.problems(script.sql, dialect)
    if found:
        raise SourceError(script_check.explain(found), path, first_line + found[0].line - 1)
