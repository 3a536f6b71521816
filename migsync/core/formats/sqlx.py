"""sqlx's migrations: ``<version>_<description>.sql`` (up only) and reversible pairs.

* simple: ``<version>_<description>.sql``, the whole file is the up script;
  it has no down script, so it cannot be reverted;
* reversible: ``<version>_<description>.up.sql`` and ``.down.sql``.

The description may hold dots. A file whose first line starts with
``-- no-transaction`` runs outside a transaction (sqlx's own opt-out); that
line is sqlx's mark, so such a file is sqlx's whatever else its name fits.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat
from migsync.core.formats.golang_migrate import match_pair
from migsync.core.formats.native import migration_name

_SIMPLE = re.compile(r"^(?P<version>\d+)_(?P<desc>.*)(?<!\.up)(?<!\.down)\.sql$")
_NO_TX = b"-- no-transaction"


class SqlxFormat(SourceFormat):
    name = "sqlx"
    group = "sqlx"
    pattern_help = "<version>_<description>.sql, or <version>_<description>.up.sql and .down.sql"
    mark = "'-- no-transaction' as its first line"

    def match(self, filename: str) -> FileName | None:
        if filename.endswith((".up.sql", ".down.sql")):
            file = match_pair(filename)
            # sqlx needs the '_' (a version alone is not a sqlx name).
            return file if file is not None and "_" in filename else None
        m = _SIMPLE.match(filename)
        if not m:
            return None
        return FileName(m["version"], migration_name(m["version"], m["desc"]), "up")

    def sniff(self, file: FileName, data: bytes) -> bool | None:
        return True if _no_transaction(data) else None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        assert file.direction is not None
        autocommit = text.startswith(_NO_TX.decode())  # the loader has taken a BOM off
        return [Section(file.direction, text, autocommit=autocommit, path=path)]

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        # As 'sqlx migrate add' writes them: reversible (-r) unless the folder's are simple.
        stem = f"{new.version}_{new.name}"
        if new.down is False:
            return {f"{stem}.sql": "-- Add migration script here\n"}
        return {
            f"{stem}.up.sql": "-- Add up migration script here\n",
            f"{stem}.down.sql": "-- Add down migration script here\n",
        }


def _no_transaction(data: bytes) -> bool:
    return data.removeprefix(codecs.BOM_UTF8).startswith(_NO_TX)
