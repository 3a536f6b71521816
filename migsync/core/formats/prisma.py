"""Prisma Migrate's folders: ``migrations/<timestamp>_<name>/migration.sql``.

Each migration is a folder named by ``prisma migrate dev`` (``20240105120000_init``)
holding ``migration.sql``, its up script; Prisma has no down scripts.
``migration_lock.toml`` beside the folders is not a migration and is ignored. The
migration's name is its folder's name; its version, the timestamp.
"""

from __future__ import annotations

import re
from pathlib import Path

from migsync.core.errors import SourceError
from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat

_FOLDER = re.compile(r"^(?P<folder>(?P<version>\d+)(?:_[^/]*)?)/migration\.sql$")


class PrismaFormat(SourceFormat):
    name = "prisma"
    group = "prisma"
    nested = True
    pattern_help = "<timestamp>_<name>/migration.sql"

    def match(self, filename: str) -> FileName | None:
        m = _FOLDER.match(filename)
        if m:
            return FileName(m["version"], m["folder"], "up")
        _, slash, file = filename.partition("/")
        if slash and file == "migration.sql":
            raise SourceError(
                "a Prisma migration folder's name starts with its timestamp "
                "(as 'prisma migrate dev' names it: 20240105120000_init); migsync orders "
                "migrations by it",
                filename,
            )
        return None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        return [Section("up", text, path=path)]

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        # What 'prisma migrate dev --create-only' writes for a migration without schema changes.
        return {f"{new.version}_{new.name}/migration.sql": "-- This is an empty migration.\n"}
