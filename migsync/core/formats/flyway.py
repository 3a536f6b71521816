"""Flyway's SQL migrations: ``V<version>__<description>.sql``, ``U...`` undo, ``R__...`` repeatable.

* ``V1__create_users.sql``, ``V1_2__add_email.sql`` (version 1.2),
  ``V1.2.3__x.sql``: a versioned migration; the name is the file name without
  ``.sql`` (``V1_2__add_email``);
* ``U1_2__drop_email.sql``: the undo of version 1.2, its down script (Flyway
  Teams' undo), whatever its description;
* ``R__refresh_views.sql``: a repeatable migration, applied after the versioned
  ones and again whenever it changes (see :meth:`migsync.core.ledger.Ledger.record`).

As Flyway does, a migration whose statements must all run outside a
transaction (``CREATE INDEX CONCURRENTLY``, ``VACUUM``) runs without one, and
one that mixes such statements with others is refused (Flyway refuses it
unless ``mixed`` is on). Flyway replaces placeholders (``${name}``) in the
SQL; migsync does not, so a script with one is refused, naming the line.
"""

from __future__ import annotations

import re
from pathlib import Path

from migsync.core.errors import SourceError
from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat

_VERSIONED = re.compile(r"^(?P<prefix>[VU])(?P<version>\d+(?:[._]\d+)*)(?:__(?P<desc>.*))?\.sql$")
_REPEATABLE = re.compile(r"^R__(?P<desc>.*)\.sql$")
_PLACEHOLDER = re.compile(r"\$\{[^}\n]*\}")


class FlywayFormat(SourceFormat):
    name = "flyway"
    group = "flyway"
    pattern_help = "V<version>__<description>.sql, U<version>__<description>.sql or R__<description>.sql"

    def match(self, filename: str) -> FileName | None:
        stem = filename.removesuffix(".sql")
        m = _VERSIONED.match(filename)
        if m:
            undo = m["prefix"] == "U"
            return FileName(m["version"], stem, "down" if undo else "up", companion=undo)
        m = _REPEATABLE.match(filename)
        if m:
            return FileName(0, stem, "up", repeatable=True)
        return None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        assert file.direction is not None
        placeholder = _PLACEHOLDER.search(text)
        if placeholder is not None:
            raise SourceError(
                f"Flyway placeholder {placeholder.group()!r}: migsync does not replace placeholders; "
                "write the value into the script",
                path,
                text.count("\n", 0, placeholder.start()) + 1,
            )
        from migsync.core import script_check  # here: reading names (every start) needs none of it

        needs = script_check.transaction_needs(text)
        if needs == "mixed":
            raise SourceError(
                "mixes statements that cannot run inside a transaction (such as CREATE INDEX "
                "CONCURRENTLY) with statements that can; Flyway refuses this too (unless 'mixed' is "
                "on): put the former in a migration of their own",
                path,
            )
        return [Section(file.direction, text, autocommit=needs == "outside", path=path)]

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        # An undo file only where the folder has them: undo is a Flyway Teams feature.
        files = {f"V{new.version}__{new.name}.sql": ""}
        if new.down:
            files[f"U{new.version}__{new.name}.sql"] = ""
        return files
