"""``migsync validate``: every problem with a migrations folder, as one list.

The loader stops at the first problem (so that nothing runs from a folder
with any); validation goes on where it can, so that a person fixes them all
in one round:

1. the folder is read as the loader reads it: names, format detection,
   migrations in other languages (each one listed; with ``ignore_unknown``,
   warnings); a folder that cannot be read at all is one problem;
2. every file is parsed on its own, each refusal listed;
3. the files become migrations (versions, duplicates, order, transaction
   control in scripts): the loader names the first refusal, the file it names
   is set aside and the rest tried again, so each refusal is listed;
4. every script is split and checked for each built-in dialect as the
   processor would check it before running it.

With a database (:func:`check_database`), applied migrations must match the
files (checksums), none may be missing from the folder, and no unapplied one
may be older than an applied one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from migsync.core import script_check
from migsync.core.assembly import assemble
from migsync.core.errors import ConfigError, SourceError
from migsync.core.formats import FileName, Section, SourceFormat
from migsync.core.inspection import Comparison
from migsync.core.migration import ANY_DIALECT, Migration
from migsync.core.sources import Order, SourceSnapshot, decode, scan_directory
from migsync.core.splitter import split

#: A file read by its format: its name, its path, its sections.
Parsed = tuple[FileName, Path, list[Section]]

#: The dialects a generic script is checked for.
CHECKED_DIALECTS = ("sqlite", "postgresql")


@attrs.frozen
class Problem:
    """One thing wrong: in a file (``kind`` "file") or between the database and the folder."""

    kind: Literal["file", "database"]
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "file": self.file, "line": self.line}

    @classmethod
    def of(cls, exc: SourceError | ConfigError) -> Problem:
        if isinstance(exc, SourceError):
            return cls("file", exc.reason, str(exc.path) if exc.path is not None else None, exc.line)
        return cls("file", str(exc))


@attrs.frozen
class FolderCheck:
    problems: list[Problem]
    warnings: list[str]
    format: str = ""
    migrations: list[Migration] = attrs.Factory(list)


def check_folder(
    directory: str | Path,
    formats: Sequence[SourceFormat] | None = None,
    *,
    format: str | None = None,
    order: Order = "version",
    ignore_unknown: bool = False,
) -> FolderCheck:
    """Every problem with the folder's files (see the module docstring)."""
    try:
        snapshot = scan_directory(directory, formats, format=format, order=order, ignore_unknown=True)
    except (SourceError, ConfigError) as exc:
        return FolderCheck([Problem.of(exc)], [])
    warnings = list(snapshot.ignored) if ignore_unknown else []
    problems = [] if ignore_unknown else [_unknown(text) for text in snapshot.ignored]
    unparsed, parsed = _parse_each(snapshot)
    problems += unparsed
    if problems:
        return FolderCheck(problems, warnings, snapshot.format)
    problems, migrations = _assemble_all(parsed, snapshot.order)
    if problems:
        return FolderCheck(problems, warnings, snapshot.format)
    problems += [p for migration in migrations for p in _check_scripts(migration)]
    problems += [p for migration in migrations for p in _check_requirements(migration)]
    return FolderCheck(problems, warnings, snapshot.format, migrations)


def _check_requirements(migration: Migration) -> list[Problem]:
    """A malformed ``-- migsync:requires`` line (see :mod:`migsync.core.requires`)."""
    try:
        migration.requirements()
    except SourceError as exc:
        return [Problem.of(exc)]
    return []


def _unknown(ignored: str) -> Problem:
    # scan_directory says "<path>: <what>: skipped (--ignore-unknown)".
    path, _, what = ignored.removesuffix(": skipped (--ignore-unknown)").partition(": ")
    return Problem(
        "file",
        f"{what}: migsync runs SQL migration files only; rewrite it as SQL, or pass "
        "--ignore-unknown to skip such files",
        path,
    )


def _parse_each(snapshot: SourceSnapshot) -> tuple[list[Problem], list[Parsed]]:
    problems, parsed = [], []
    for fmt, file, raw_path, data in snapshot.files:
        path = Path(raw_path)
        try:
            parsed.append((file, path, fmt.parse(file, decode(data, path), path)))
        except SourceError as exc:
            problems.append(Problem.of(exc))
    return problems, parsed


def _assemble_all(parsed: list[Parsed], order: Order) -> tuple[list[Problem], list[Migration]]:
    """The migrations, or every problem assembling them: the loader names the first; the file it
    names is set aside and the rest assembled again, until no file is left to blame."""
    problems: list[Problem] = []
    remaining = parsed
    while True:
        try:
            migrations = assemble(remaining, order)
        except SourceError as exc:
            problems.append(Problem.of(exc))
            kept = [item for item in remaining if exc.path is None or item[1] != exc.path]
            if len(kept) == len(remaining):
                return problems, []
            remaining = kept
            continue
        return problems, [] if problems else migrations


def _check_scripts(migration: Migration) -> list[Problem]:
    problems = []
    for direction in ("up", "down"):
        scripts = migration.up if direction == "up" else migration.down
        for dialect, script in scripts.items():
            origin = migration.origin(direction, dialect)
            for checked in CHECKED_DIALECTS if dialect == ANY_DIALECT else (dialect,):
                split(script.sql, checked)
                try:
                    script_check.runnable(script.sql, checked, autocommit=script.autocommit)
                except script_check.ScriptRefused as exc:
                    file, first = origin if origin is not None else (migration.name, 1)
                    problem = Problem(
                        "file", f"{direction} script on {checked}: {exc}", file, first + exc.line - 1
                    )
                    if problem not in problems:
                        problems.append(problem)
    return problems


def check_database(comparison: Comparison) -> list[Problem]:
    """Where a database's history and the folder disagree (``validate --db``)."""
    problems = []
    for changed in comparison.changed:
        state, migration = changed.state, changed.migration
        problems.append(
            Problem(
                "database",
                f"{state.name} was applied with checksum {state.checksum[:12]}, but the file now has "
                f"{migration.checksum[:12]}: an applied migration must not change; write a new one, "
                "or revert this one first",
                migration.source,
            )
        )
    for state in comparison.missing:
        problems.append(
            Problem(
                "database",
                f"{state.name} (version {state.version}) is applied, but no file in the folder has it",
            )
        )
    for migration in comparison.out_of_order:
        problems.append(
            Problem(
                "database",
                f"{migration.name} is not applied and is older than an applied migration (out of "
                "order): apply refuses it; give it a version after the newest applied one",
                migration.source,
            )
        )
    return problems


__all__ = ["FolderCheck", "Problem", "check_database", "check_folder"]
