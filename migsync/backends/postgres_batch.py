"""A migration's transaction in one message to Postgres: the script and its bookkeeping.

Inside a ``Begin(schema_change=True)`` transaction the Postgres backend does
not send a migration's ``BEGIN``, its script, its status row and the
statement that marks its change done one by one: it keeps them
(:class:`Pending`) and sends them, with the ``COMMIT``, as one simple-query
message at the ``Commit``. A migration then costs one round trip instead of
six.

What one round trip has to keep:

* **The write lock.** The message's ``BEGIN`` tries migsync's write lock
  without waiting (:func:`try_lock`); the message fails right there when
  another process holds it (``LOCK_BUSY``), before anything else ran, and the
  backend begins again the waiting way. A lock timeout of the script's own
  cannot be mistaken for it.

* **The claim.** A statement with ``expect`` (the processor's done
  statement, whose row count is its claim) is wrapped so that the message
  fails when the count differs::

      WITH claimed AS (UPDATE ... RETURNING 1)
      SELECT CASE WHEN count(*) = 1 THEN 0 ELSE ('migsync_claim_lost:' || count(*))::int END
      FROM claimed

  and the error is raised as :class:`~migsync.core.errors.ClaimLost`.
* **One transaction.** ``BEGIN`` sets ``migsync.tx`` with ``SET LOCAL``; a
  statement right after the script fails the message unless it is still
  set, that is unless the script's transaction is still the one migsync
  opened (:class:`~migsync.core.errors.TransactionLost`).
* **Errors located.** A syntax error's position is the message's: the
  length of the ``BEGIN`` part before the script (:attr:`Pending.script_offset`)
  is taken off; an error without a position is the script's, as when it is
  sent alone.
* **Where the script allows it.** The bookkeeping is appended only if
  migsync's lexer finds the script ending outside any string, comment or
  body (a statement appended after it is read as a statement of its own);
  otherwise the script is sent alone first.

Parameters of the bookkeeping statements are written into the message as
literals (a simple query takes none): numbers, booleans, NULL and ``E''``
strings.
"""

from __future__ import annotations

import math
import re
from typing import Any

import attrs

from migsync.core.splitter import split
from migsync.core.work import Execute, Script

#: The setting that says the transaction is still the one migsync began.
TX_SETTING = "migsync.tx"
CLAIM_LOST = "migsync_claim_lost"
TX_LOST = "migsync_transaction_lost"
#: The write lock was taken by someone else: the message failed right after its ``BEGIN``.
LOCK_BUSY = "migsync_write_lock_busy"
#: Between the parts of a message (a newline first: a script's last line may be a -- comment).
_SEPARATOR = "\n;\n"

_PLACEHOLDER = re.compile(r"\$(\d+)")
_PROBE = "SELECT 1"


def literal(value: Any) -> str:
    """``value`` as a Postgres literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "'NaN'::float8"
        if math.isinf(value):
            return "'Infinity'::float8" if value > 0 else "'-Infinity'::float8"
        return f"{value!r}::float8"
    if isinstance(value, str):
        # E'' reads the same whatever standard_conforming_strings says.
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    raise TypeError(f"no literal for {type(value).__name__} in a batched statement")


def inline(sql: str, params: tuple[Any, ...] | list[Any]) -> str:
    """``sql`` with its ``$n`` placeholders replaced by ``params`` as literals."""
    if not params:
        return sql
    literals = [literal(p) for p in params]
    return _PLACEHOLDER.sub(lambda m: literals[int(m.group(1)) - 1], sql)


def guarded(sql: str, expect: int) -> str:
    """``sql`` (an UPDATE, INSERT or DELETE) failing the message unless it changes ``expect`` rows."""
    return (
        f"WITH claimed AS ({sql} RETURNING 1) SELECT CASE WHEN count(*) = {int(expect)} THEN 0 "
        f"ELSE ('{CLAIM_LOST}:' || count(*))::int END FROM claimed"
    )


#: Fails the message unless the transaction is still the one migsync began (see ``TX_SETTING``).
TX_GUARD = (
    f"SELECT CASE WHEN current_setting('{TX_SETTING}', true) = 'on' THEN 0 "
    f"ELSE ('{TX_LOST}:' || COALESCE(current_setting('{TX_SETTING}', true), ''))::int END"
)


def try_lock(key: int) -> str:
    """Take the advisory transaction lock ``key`` if it is free; else fail the message (``LOCK_BUSY``)."""
    # The ELSE reads the lock's result, not constants only: Postgres folds a constant
    # expression when it plans the query, and would fail it even when the lock was free.
    return (
        f"SELECT CASE WHEN taken THEN 0 ELSE ('{LOCK_BUSY}:' || taken)::int END "
        f"FROM (SELECT pg_try_advisory_xact_lock({int(key)}) AS taken) AS lock"
    )


def ends_clean(script: str) -> bool:
    """Whether a statement appended after ``script`` (on a new line) is read as one of its own."""
    last = split(f"{script}\n;\n{_PROBE}", "postgresql")
    return bool(last) and last[-1].sql == _PROBE


@attrs.define
class Pending:
    """The requests of a migration's transaction not sent yet.

    ``begin``: the statements that begin the transaction (``BEGIN``, the write lock tried
    without waiting, the migration's settings), sent first in the message; None once sent.
    """

    begin: str | None = None
    script: Script | None = None
    statements: list[str] = attrs.Factory(list)

    def add_script(self, script: Script) -> bool:
        """Keep the script to send with what follows; False if it must go alone, now."""
        if self.script is not None or self.statements or not ends_clean(script.sql):
            return False
        self.script = script
        return True

    def add(self, request: Execute) -> Any:
        sql = inline(request.sql, tuple(request.params))
        self.statements.append(guarded(sql, request.expect) if request.expect is not None else sql)
        return request.expect if request.expect is not None else -1

    def __bool__(self) -> bool:
        return self.begin is not None or self.script is not None or bool(self.statements)

    @property
    def script_offset(self) -> int:
        """Where the script starts in :meth:`message` (an error's position is the message's)."""
        return 0 if self.begin is None else len(self.begin) + len(_SEPARATOR)

    def message(self, commit: bool) -> str:
        parts = [] if self.begin is None else [self.begin]
        if self.script is not None:
            parts += [self.script.sql, TX_GUARD]
        parts += self.statements
        if commit:
            parts.append("COMMIT")
        return _SEPARATOR.join(parts)
