"""Flyway: ``flyway_schema_history``, a log of every migration run, one row each, by ``installed_rank``.

Read in ``installed_rank`` order, as Flyway reads it:

* ``success = false``: a migration failed (where the database could not roll
  it back); Flyway refuses to migrate until ``flyway repair`` removes the row;
* ``type = 'BASELINE'``: everything up to its version counts as applied
  (Flyway never runs a migration at or below its baseline);
* ``type = 'SCHEMA'``: Flyway created the schemas, no migration;
* ``type = 'DELETE'`` (written by ``flyway repair`` for a missing migration)
  and ``UNDO_*`` (an undo ran): that version is no longer applied;
* a row with no version is a repeatable migration's run; its latest
  checksum tells whether the file changed since (then it runs again, as
  Flyway would run it);
* any other type (``SQL``, ``JDBC``, ...): that version is applied; a
  ``JDBC`` (Java) migration has no file in the folder, so it is refused as
  such.

Flyway's checksum is a CRC-32 over the file's lines without their line
breaks (a byte order mark dropped), as a signed 32-bit number.
"""

from __future__ import annotations

import codecs
import re
import zlib

from migsync.core.adopters.history import Fetch, ForeignHistory, Tool, parse_version
from migsync.core.errors import MigrationError
from migsync.core.version import Version

NAME, TABLE = "flyway", "flyway_schema_history"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def checksum(data: bytes) -> int:
    """Flyway's checksum of a migration file (what its ``checksum`` column holds)."""
    text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":  # a reader's lines: the break after the last one ends no line
        lines.pop()
    crc = 0
    for line in lines:
        crc = zlib.crc32(line.encode("utf-8"), crc)
    return crc - (1 << 32) if crc >= 1 << 31 else crc


async def read(fetch: Fetch) -> ForeignHistory:
    rows = await fetch(
        f"SELECT installed_rank, version, description, type, script, checksum, success "
        f"FROM {TABLE} ORDER BY installed_rank"
    )
    applied: dict[Version, object] = {}
    repeatables: dict[str, object] = {}
    baseline: Version | None = None
    for row in rows:
        kind, script = str(row["type"]).upper(), str(row["script"])
        if kind == "SCHEMA":
            continue
        if not row["success"]:
            what = f"version {row['version']}" if row["version"] is not None else "repeatable migration"
            raise MigrationError(
                f"{NAME} recorded {what} ({script}) as failed (success = false in {TABLE}, rank "
                f"{row['installed_rank']}): fix the database by hand and run `flyway repair`, then "
                "adopt again; nothing was recorded"
            )
        file_name = script.replace("\\", "/").rsplit("/", 1)[-1]
        if row["version"] is None:
            if kind == "DELETE":
                repeatables.pop(file_name, None)
            else:
                repeatables[file_name] = row["checksum"]
            continue
        version = parse_version(NAME, TABLE, row["version"])
        if kind == "BASELINE":
            baseline = version if baseline is None else max(baseline, version)
        elif kind == "DELETE" or kind.startswith("UNDO"):
            applied.pop(version, None)
        else:
            applied[version] = row["checksum"]
    return ForeignHistory(
        NAME,
        TABLE,
        applied=frozenset(applied),
        up_to=baseline,
        checksums={v: c for v, c in applied.items() if c is not None},
        checksum_of=checksum,
        repeatables=repeatables,
    )


TOOL = Tool(NAME, TABLE, frozenset({"installed_rank", "version", "type", "script", "success"}), read=read)
