"""What a migration script may contain, given how it runs.

A transactional script runs inside the transaction migsync opened for it,
together with the migration's bookkeeping: the history row and the queue's
processed flag commit with it, or nothing does. A statement that ends that
transaction (``COMMIT``, ``ROLLBACK``, ``END``), opens another (``BEGIN``),
or nests savepoints of its own would break the promise, and so would a
statement the database refuses inside a transaction (``VACUUM``, ``CREATE
INDEX CONCURRENTLY``, SQLite's ``PRAGMA journal_mode``).

One shape is common and harmless: golang-migrate tells Postgres users to
wrap a file in ``BEGIN; ... COMMIT;``. A transactional script whose first
statement is ``BEGIN``/``START TRANSACTION`` and whose last is ``COMMIT``/
``END``, with no other transaction control, is such a wrapper: its body runs
inside migsync's transaction, which means what the wrapper meant, now atomic
with the bookkeeping too. :func:`runnable` blanks the two statements out
(spaces, newlines kept, so every line number and error position stays
true).

Anything else is refused before any of it runs: by the loader, naming file
and line (:func:`problems`), and again by the processor for a migration that
came another way (a server's bundle, an older publisher). A script that must
manage its own transactions is marked to run outside one (``-- migrate:up
transaction:false``, or the ``.autocommit`` infix): then it runs as written.

``PRAGMA foreign_keys`` is let through on SQLite: migsync already turns
foreign-key enforcement off around each migration (SQLite's own table
rebuild procedure) and checks the keys before commit; inside a transaction
SQLite ignores the pragma, as it always has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from migsync.core import dialects
from migsync.core.splitter import Statement, split

_HINT = (
    "a migration runs in one transaction with its bookkeeping; remove it, or mark the script to run "
    "outside a transaction ('-- migrate:up transaction:false', or the '.autocommit' infix of a "
    ".up.sql/.down.sql file; in goose's files '-- +goose NO TRANSACTION', in sqlx's a first line "
    "'-- no-transaction')"
)

# Comments and space before a statement's first word (non-nested comments are enough to find it).
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_WORDS = re.compile(r"[A-Za-z_]+")
#: A quick look before splitting: scripts without any of these words need no check.
_SUSPECT_WORDS = frozenset({
    "begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release", "prepare", "vacuum",
    "pragma", "attach", "detach", "concurrently", "database", "tablespace", "system",
})  # fmt: skip
_SUSPECT = re.compile(rf"\b(?:{'|'.join(sorted(_SUSPECT_WORDS))})\b", re.IGNORECASE)
#: The ASCII words of a lower-cased script, as ``\b`` delimits them. A non-ASCII letter also ends
#: one here ("ébegin" is a suspect, not for the regex); the regex's case folding also takes
#: "start" and "commit" spelled with a long s or a dotless i, which no database reads as keywords
#: (theirs are ASCII).
_ASCII_WORDS = re.compile(r"[a-z0-9_]+")
#: Above this length the regex (which stops at the first suspect) is used: no list of every word.
_WORD_LIST_MAX = 1 << 16


def _suspect(sql: str) -> bool:
    """Whether ``sql`` has one of the words that call for a closer look.

    A set lookup of its words: asked of every script as it is recorded and again as it
    runs, where the case-insensitive regex took three to eight times as long (20 to 30 µs
    for a two-statement script, on this project's loaded 2-core machine).
    """
    if len(sql) > _WORD_LIST_MAX:
        return _SUSPECT.search(sql) is not None
    return not _SUSPECT_WORDS.isdisjoint(_ASCII_WORDS.findall(sql.lower()))


#: Words after BEGIN / COMMIT that keep the statement a plain wrapper.
_BEGIN_PLAIN = {"work", "transaction", "deferred", "immediate", "exclusive"}
_COMMIT_PLAIN = {"work", "transaction"}


@attrs.frozen
class Problem:
    """Why a statement may not run inside migsync's transaction; ``line`` is the script's line.

    ``control``: the statement is transaction control (it would end or nest migsync's
    transaction); otherwise the database refuses it inside a transaction and says so itself.
    """

    line: int
    message: str
    control: bool = True


@attrs.frozen
class _Kind:
    control: str | None  # "begin", "commit", "rollback", "savepoint": transaction control
    plain: bool = True  # a BEGIN / COMMIT with no options: may be half of a wrapper
    outside: str | None = None  # why the statement cannot run in a transaction at all


def _words(statement: Statement, count: int = 4) -> list[str]:
    start = _LEADING.match(statement.sql).end()  # type: ignore[union-attr]
    found = []
    for word in _WORDS.finditer(statement.sql, start):
        found.append(word.group().lower())
        if len(found) == count:
            break
    return found


def _classify(statement: Statement, dialect: str) -> _Kind | None:
    words = _words(statement, 6)
    if not words:
        return None
    first, rest = words[0], words[1:]
    postgres = dialect != "sqlite"
    if first == "begin" or (first == "start" and rest[:1] == ["transaction"]):
        plain = set(rest) <= _BEGIN_PLAIN if first == "begin" else rest == ["transaction"]
        return _Kind("begin", plain=plain)
    if first in ("commit", "end") or (first == "abort" and postgres):
        if rest[:1] == ["prepared"]:
            return _Kind(None, outside="COMMIT PREPARED cannot run inside a transaction")
        return _Kind("rollback" if first == "abort" else "commit", plain=set(rest) <= _COMMIT_PLAIN)
    if first == "rollback":
        if rest[:1] == ["prepared"]:
            return _Kind(None, outside="ROLLBACK PREPARED cannot run inside a transaction")
        return _Kind("savepoint" if "to" in rest else "rollback", plain=False)
    if first in ("savepoint", "release"):
        return _Kind("savepoint", plain=False)
    if first == "prepare" and rest[:1] == ["transaction"] and postgres:
        return _Kind("commit", plain=False)
    return _outside(first, rest, dialect)


def _outside(first: str, rest: list[str], dialect: str) -> _Kind | None:
    if first == "vacuum":
        return _Kind(None, outside="VACUUM cannot run inside a transaction")
    if dialect == "sqlite":
        if first in ("attach", "detach"):
            return _Kind(None, outside=f"{first.upper()} cannot run inside a transaction")
        if first == "pragma" and "journal_mode" in rest[:2]:
            return _Kind(None, outside="PRAGMA journal_mode cannot change inside a transaction")
        return None
    if first in ("create", "drop") and rest[:1] in (["database"], ["tablespace"]):
        return _Kind(None, outside=f"{first.upper()} {rest[0].upper()} cannot run inside a transaction")
    if first == "alter" and rest[:1] == ["system"]:
        return _Kind(None, outside="ALTER SYSTEM cannot run inside a transaction")
    if "concurrently" in rest and first in ("create", "drop", "reindex"):
        return _Kind(None, outside=f"{first.upper()} ... CONCURRENTLY cannot run inside a transaction")
    return None


def _scan(sql: str, dialect: str) -> tuple[list[Statement], list[tuple[Statement, _Kind]]]:
    statements = split(sql, dialect)
    kinds = [(s, kind) for s in statements if (kind := _classify(s, dialect)) is not None]
    return statements, kinds


def _describe(statement: Statement) -> str:
    return " ".join(statement.sql[_LEADING.match(statement.sql).end() :].split()[:3])  # type: ignore[union-attr]


def _wrapper(statements: list[Statement], controls: list[tuple[Statement, _Kind]]) -> bool:
    """Whether the transaction control is only a plain BEGIN first and a plain COMMIT last."""
    if len(controls) != 2:
        return False
    (first, begin), (last, commit) = controls
    return (
        first is statements[0]
        and last is statements[-1]
        and begin.control == "begin"
        and begin.plain
        and commit.control == "commit"
        and commit.plain
    )


def _problems(sql: str, dialect: str) -> tuple[list[Problem], list[Statement]]:
    """What is wrong with ``sql`` as a transactional script, and the wrapper statements to blank."""
    if not _suspect(sql):
        return [], []
    statements, kinds = _scan(sql, dialect)
    controls = [(s, k) for s, k in kinds if k.control is not None]
    wrapper = [s for s, _ in controls] if _wrapper(statements, controls) else []
    found = []
    for statement, kind in kinds:
        if kind.outside is not None:
            found.append(Problem(statement.line, kind.outside, control=False))
        elif not wrapper:
            found.append(Problem(statement.line, f"{_describe(statement)!r} is transaction control"))
    return found, wrapper


def problems(sql: str, dialect: str) -> list[Problem]:
    """Why ``sql`` may not run as a transactional script on ``dialect`` (empty: it may).

    ``dialect`` ``"*"`` (a generic script): a statement the database would refuse in a
    transaction on either built-in dialect is reported (it fails, or is a syntax error, on
    both), but transaction control only where both dialects read it so: SQLite reads
    ``CREATE TRIGGER ... BEGIN ... END;`` and Postgres reads ``$$`` and ``BEGIN ATOMIC``
    bodies, and a generic script may be meant for either.
    """
    if not _suspect(sql):  # the common case, asked once for every view
        return []
    if dialect != "*":
        return _problems(sql, dialects.lookup(dialect) or dialect)[0]
    views = [_problems(sql, d)[0] for d in ("sqlite", "postgresql")]
    both = set.intersection(*({p.line for p in view if p.control} for view in views))
    found = {(p.line, p.message): p for view in views for p in view if not p.control or p.line in both}
    return sorted(found.values(), key=lambda p: p.line)


def transaction_needs(sql: str, dialect: str = "*") -> str:
    """Whether ``sql``'s statements may run in a transaction: ``"inside"`` (all of them),
    ``"outside"`` (none: a script of ``CREATE INDEX CONCURRENTLY`` alone) or ``"mixed"``.

    Transaction control is not looked at (:func:`problems` does). A generic script
    (``"*"``) needs to run outside when it does so as SQLite or as Postgres reads it.
    """
    views = ("sqlite", "postgresql") if dialect == "*" else (dialects.lookup(dialect) or dialect,)
    counts = []
    for view in views:
        statements, kinds = _scan(sql, view) if _suspect(sql) else ([], [])
        counts.append((len(statements), sum(1 for _, kind in kinds if kind.outside is not None)))
    if all(outside == 0 for _, outside in counts):
        return "inside"
    if any(outside == total for total, outside in counts):
        return "outside"
    return "mixed"


def explain(found: Sequence[Problem]) -> str:
    """One message for what :func:`problems` found: the first, how many more, and what to do."""
    first = found[0].message
    more = found[1:]
    if more:
        lines = ", ".join(str(p.line) for p in more[:5]) + (", ..." if len(more) > 5 else "")
        first += f" (and {len(more)} more such statement{'s' if len(more) > 1 else ''}: line {lines})"
    return f"{first}; {_HINT}"


class ScriptRefused(Exception):
    """A transactional script holds statements that may not run in migsync's transaction.

    ``line`` is the script's line of the first of them.
    """

    def __init__(self, found: Sequence[Problem]):
        self.problems = list(found)
        self.line = found[0].line
        super().__init__(explain(found))


def runnable(sql: str, dialect: str, *, autocommit: bool) -> str:
    """The SQL to run for a script: a transactional one's BEGIN/COMMIT wrapper blanked out.

    Raises :class:`ScriptRefused` when a transactional script holds other
    transaction control. A statement the database refuses inside a transaction
    is left for the database to refuse (an ordinary failure, in its words). A
    script that runs outside a transaction is returned as written.
    """
    if autocommit:
        return sql
    found, wrapper = _problems(sql, dialects.lookup(dialect) or dialect)
    control = [p for p in found if p.control]
    if control:
        raise ScriptRefused(control)
    for statement in wrapper:
        sql = _blank(sql, statement.start, min(statement.terminator + 1, len(sql)))
    return sql


def _blank(sql: str, start: int, end: int) -> str:
    """``sql`` with ``[start:end]`` turned into spaces, its newlines kept."""
    return sql[:start] + re.sub(r"[^\n]", " ", sql[start:end]) + sql[end:]
