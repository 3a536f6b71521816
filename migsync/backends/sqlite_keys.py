"""Foreign keys while a SQLite migration runs: SQLite's own procedure, and a check before commit.

SQLite changes a table's schema by building a new table, copying the rows,
dropping the old table and renaming the new one
(sqlite.org/lang_altertable.html, "Making Other Kinds Of Table Schema
Changes"). With foreign-key enforcement on, the ``DROP TABLE`` fires every
``ON DELETE CASCADE`` that points at the old table and empties its children.
The procedure therefore turns enforcement off first. That has to happen
*before* the transaction begins: inside one, ``PRAGMA foreign_keys`` is a
no-op, so a script's own ``PRAGMA foreign_keys=OFF`` cannot do it.

So migsync, for a migration's transaction (mode ``check``, the default):

1. turns enforcement off on the connection, then begins (consecutive
   migrations of one pass share that: it stays off between their transactions);
2. before the script's first statement that could break a key (anything but
   ``CREATE`` and ``PRAGMA foreign_keys``), notes the violations the
   database already has;
3. before the commit, runs ``PRAGMA foreign_key_check`` and fails the
   migration (rolled back, the attempt counted) if it left a violation that
   was not there before, naming the table, rowid, column and parent;
4. turns enforcement back on once the transactions have ended, however they
   ended, before anything that is not a migration's transaction runs.

Other tools (golang-migrate, popx, sqlx) run SQLite migrations with foreign
keys off and check nothing afterwards. Mode ``on`` keeps enforcement on while
a migration runs, for those who want cascades to fire as they would in the
application.
"""

from __future__ import annotations

import re
import sqlite3

from migsync.core.errors import ConfigError, ConstraintViolation
from migsync.core.splitter import Statement

MODES = ("check", "on")

#: Statements that cannot leave a foreign-key violation behind.
_HARMLESS = re.compile(
    r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:create|pragma\s+foreign_keys)\b",
    re.IGNORECASE | re.DOTALL,
)

_Violation = tuple[str, int | None, str, int]


def parse_mode(value: str) -> str:
    mode = value.lower()
    if mode not in MODES:
        raise ConfigError(f"sqlite migration_foreign_keys={value!r}; valid: {', '.join(MODES)}")
    return mode


class ForeignKeyGuard:
    """The foreign-key handling of one migration transaction on one connection."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._before: set[_Violation] | None = None

    @staticmethod
    def turn_off(conn: sqlite3.Connection) -> None:
        """Turn enforcement off, before the transaction begins (a no-op inside one)."""
        conn.execute("PRAGMA foreign_keys = OFF")

    @staticmethod
    def turn_on(conn: sqlite3.Connection) -> None:
        """Enforcement back on (after the transaction has ended)."""
        conn.execute("PRAGMA foreign_keys = ON")

    def before(self, statements: list[Statement]) -> None:
        """Note the violations already there, before the first statement that could add one."""
        if self._before is None and any(_HARMLESS.match(s.sql) is None for s in statements):
            self._before = set(self._violations())

    def verify(self) -> None:
        """Raise ConstraintViolation for violations the migration left (call before COMMIT)."""
        if self._before is None:
            return
        found = [v for v in self._violations() if v not in self._before]
        if found:
            raise ConstraintViolation(self._describe(found))

    def _violations(self) -> list[_Violation]:
        return [(r[0], r[1], r[2], r[3]) for r in self._conn.execute("PRAGMA foreign_key_check")]

    def _describe(self, found: list[_Violation]) -> str:
        table, rowid, parent, fkid = found[0]
        columns = self._columns(table, fkid)
        first = f"{table} rowid {rowid}" + (f" ({columns})" if columns else "")
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        return (
            f"foreign key violation left by the migration: {first} references {parent}, "
            f"which has no matching row{more}; foreign-key enforcement is off while a SQLite "
            "migration runs (SQLite's table-rebuild procedure needs it) and the keys are checked "
            "with PRAGMA foreign_key_check before the commit; the migration was rolled back"
        )

    def _columns(self, table: str, fkid: int) -> str:
        quoted = table.replace('"', '""')
        rows = self._conn.execute(f'PRAGMA foreign_key_list("{quoted}")').fetchall()
        # foreign_key_list: id, seq, table, from, to, on_update, on_delete, match
        pairs = [(r[3], r[4]) for r in rows if r[0] == fkid]
        return ", ".join(f"{src} -> {target or 'its primary key'}" for src, target in pairs)
