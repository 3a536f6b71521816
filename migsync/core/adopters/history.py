"""What every adopter shares: the tool record, the history it reads, finding it, matching it.

A tool's reader turns its table into a :class:`ForeignHistory`: the versions
it applied (each one must be a migration of the folder), perhaps "everything
up to" a version (golang-migrate's one row, Flyway's baseline), and the
checksums it recorded with the function that computes one from a file's
bytes, so that a file changed since it was applied is caught.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from migsync.core.backend import Backend, Row
from migsync.core.errors import ChecksumMismatch, ConfigError, MigrationError
from migsync.core.migration import ANY_DIALECT, Migration
from migsync.core.sources import SourceSnapshot
from migsync.core.version import Version, VersionError

Fetch = Callable[..., Awaitable[list[Row]]]


@attrs.frozen
class ForeignHistory:
    """The applied state another tool's history table records."""

    tool: str
    table: str
    #: versions the tool applied; each must be a migration of the folder
    applied: frozenset[Version] = frozenset()
    #: every migration up to and including this version is applied (golang-migrate, Flyway's baseline)
    up_to: Version | None = None
    #: the checksum the tool recorded per applied version ...
    checksums: Mapping[Version, object] = attrs.field(factory=dict)
    #: ... and how it computes one from the bytes of a migration's up file
    checksum_of: Callable[[bytes], object] | None = None
    #: repeatable migrations (Flyway's ``R__x.sql``) by file name, with their latest run's checksum
    repeatables: Mapping[str, object] = attrs.field(factory=dict)


@attrs.frozen
class Tool:
    """A migration tool whose history table ``migsync adopt`` reads."""

    name: str
    table: str
    #: columns the table must have to be this tool's ...
    columns: frozenset[str]
    #: ... and must not have (golang-migrate's and dbmate's tables share a name)
    without: frozenset[str] = frozenset()
    read: Callable[[Fetch], Awaitable[ForeignHistory]] = attrs.field(kw_only=True)

    def fits(self, found: Iterable[str]) -> bool:
        names = {c.lower() for c in found}
        return self.columns <= names and not (self.without & names)


def tool_named(tools: Sequence[Tool], name: str) -> Tool:
    for tool in tools:
        if tool.name == name:
            return tool
    raise ConfigError(f"unknown tool {name!r} (known: {', '.join(t.name for t in tools)})")


async def columns_of(backend: Backend, table: str) -> list[str]:
    """The columns of ``table`` as a bare name would find it; none when there is no such table."""
    if backend.dialect == "sqlite":
        rows = await backend.fetch("SELECT name FROM pragma_table_info($1, 'main')", (table,))
    elif backend.dialect == "postgresql":
        rows = await backend.fetch(
            "SELECT attname AS name FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
    else:
        raise ConfigError(
            f"adopt reads other tools' history on SQLite and Postgres, not on {backend.dialect}"
        )
    return [str(r["name"]) for r in rows]


async def detect(backend: Backend, tools: Sequence[Tool], chosen: str | None = None) -> Tool:
    """The tool whose history this database has: ``chosen`` (checked), or the only one found."""
    if chosen is not None:
        tool = tool_named(tools, chosen)
        found = await columns_of(backend, tool.table)
        if not found:
            raise MigrationError(
                f"this database has no {tool.table} table, where {tool.name} keeps its history"
            )
        if not tool.fits(found):
            others = [t.name for t in tools if t is not tool and t.table == tool.table and t.fits(found)]
            hint = f": it is {others[0]}'s, pass --from {others[0]}" if others else ""
            raise MigrationError(
                f"table {tool.table} has columns {', '.join(sorted(found))}, not {tool.name}'s "
                f"({', '.join(sorted(tool.columns))}){hint}"
            )
        return tool
    present: list[Tool] = []
    for tool in tools:
        if tool.fits(await columns_of(backend, tool.table)):
            present.append(tool)
    if len(present) == 1:
        return present[0]
    if not present:
        listed = ", ".join(f"{t.name} ({t.table})" for t in tools)
        raise MigrationError(
            f"found no other tool's history table in this database (looked for {listed}); "
            "if another tool keeps its history elsewhere, pass --from TOOL, or use "
            "'migsync baseline --version V'"
        )
    listed = ", ".join(f"{t.name} ({t.table})" for t in present)
    raise MigrationError(
        f"found the history tables of several tools: {listed}; pass --from TOOL to say which"
    )


def parse_version(tool: str, table: str, value: object) -> Version:
    """A version as the tool stored it (an int, or a text of digits); a clear refusal if it is not one."""
    try:
        return Version.parse(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except VersionError:
        raise MigrationError(f"{tool}'s {table} holds {value!r}, which is not a migration version") from None


def adoption(
    history: ForeignHistory, snapshot: SourceSnapshot, *, ignore_checksums: bool = False
) -> list[Migration]:
    """The folder's migrations that ``history`` records as applied, in order; a refusal, naming
    them, of versions the folder lacks, of gaps and (unless ``ignore_checksums``) of files
    changed since they were applied."""
    migrations = snapshot.migrations()
    versioned = {m.version: m for m in migrations if not m.repeatable}
    where = f"{history.tool}'s {history.table}"
    unknown = sorted(v for v in history.applied if v not in versioned)
    if unknown:
        listed = ", ".join(v.text for v in unknown)
        raise MigrationError(
            f"{where} records version{'s' * (len(unknown) > 1)} {listed} as applied, but "
            f"{snapshot.directory} has no migration with {'those versions' if len(unknown) > 1 else 'it'}: "
            "the folder must hold every applied migration; nothing was recorded"
        )
    applied = set(history.applied)
    if history.up_to is not None:
        applied |= {v for v in versioned if v <= history.up_to}
    newest = max(applied, default=None)
    gaps = [m.name for v, m in versioned.items() if v not in applied and newest is not None and v < newest]
    if gaps:
        raise MigrationError(
            f"{where} has version {newest} applied but not the earlier {', '.join(gaps)}; migsync "
            f"applies in version order only: apply {'them' if len(gaps) > 1 else 'it'} with "
            f"{history.tool} first (or take {'them' if len(gaps) > 1 else 'it'} out of the folder "
            "if never meant to run), then adopt again; nothing was recorded"
        )
    data = {str(Path(path)): content for _, _, path, content in snapshot.files}
    if history.checksum_of is not None and not ignore_checksums:
        changed = [
            versioned[v].name
            for v, recorded in sorted(history.checksums.items())
            if v in applied and _checksum(versioned[v], data, history.checksum_of) not in (None, recorded)
        ]
        if changed:
            raise ChecksumMismatch(
                f"{', '.join(changed)} changed since {history.tool} applied "
                f"{'them' if len(changed) > 1 else 'it'} (the checksum in {history.table} differs from "
                "the file's): restore the file as it was applied, or pass --ignore-checksums if the "
                "change does not alter the schema; nothing was recorded"
            )
    repeatables = [
        m
        for m in migrations
        if m.repeatable
        and history.checksum_of is not None
        and f"{m.name}.sql" in history.repeatables
        and _checksum(m, data, history.checksum_of) == history.repeatables[f"{m.name}.sql"]
    ]
    return [versioned[v] for v in sorted(applied)] + repeatables


def _checksum(
    migration: Migration, data: Mapping[str, bytes], checksum_of: Callable[[bytes], object]
) -> object:
    """The tool's checksum of the migration's up file, or None if the file is not known."""
    origin = migration.origins.get(f"up:{ANY_DIALECT}")
    if origin is None or str(Path(origin[0])) not in data:
        return None
    return checksum_of(data[str(Path(origin[0]))])
