"""Split a SQL script into statements, for drivers that run one at a time.

SQLite: the script is cut at each ``;`` where SQLite's own tokenizer
(``sqlite3.complete_statement``) says a statement is complete, so string
literals, comments and ``CREATE TRIGGER ... BEGIN ... END;`` bodies are
judged by SQLite itself, not by us.

Other dialects (Postgres first): a small lexer that knows quoted strings
(``'...'``, ``E'...'`` with backslash escapes), quoted identifiers
(``"..."``, MySQL's backticks), ``--`` line comments, nested ``/* */``
block comments and dollar-quoted bodies (``$$...$$``, ``$tag$...$tag$``).
MySQL differs: backslash escapes in every string, ``#`` line comments, no
dollar quotes and no nested comments.
On Postgres a transactional script needs no splitting at all (the driver
runs it whole inside the open transaction); the splitter serves scripts
that must run statement by statement outside a transaction.

Statements that hold only comments and whitespace are dropped: they would
be no-ops, and some drivers reject an empty query.
"""

from __future__ import annotations

import re
import sqlite3

import attrs

from migsync.core import dialects


@attrs.frozen
class Statement:
    """One statement of a script and the 1-based line it starts on."""

    sql: str
    line: int


# Postgres identifiers: ASCII letters, digits, '_' and any non-ASCII character.
# Spelled as negated ASCII sets: a '\u0080-\uffff' range costs ~8 ms to compile,
# paid by every `migsync` start.
_DOLLAR_TAG = re.compile(
    r"\$([^\x00-\x40\x5b-\x5e\x60\x7b-\x7f][^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]*)?\$"
)
_IDENT_CHAR = re.compile(r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]")


@attrs.frozen
class _Rules:
    """The lexical rules that decide where a ``;`` is inside a token."""

    nested_comments: bool = False
    dollar_quotes: bool = False
    #: ``E'...'`` strings take backslash escapes (Postgres).
    escape_strings: bool = False
    #: every ``'...'`` and ``"..."`` takes backslash escapes (MySQL's default mode).
    backslash_strings: bool = False
    #: ``#`` starts a line comment (MySQL).
    hash_comments: bool = False


_POSTGRES = _Rules(nested_comments=True, dollar_quotes=True, escape_strings=True)
_RULES: dict[str, _Rules] = {
    "postgresql": _POSTGRES,
    "cockroachdb": _POSTGRES,
    "mysql": _Rules(backslash_strings=True, hash_comments=True),
    "sqlite": _Rules(),
}
#: For a dialect migsync has no rules for: Postgres' quoting without nested comments.
_GENERIC = _Rules(dollar_quotes=True, escape_strings=True)


def _rules(dialect: str) -> _Rules:
    return _RULES.get(dialects.lookup(dialect) or dialect, _GENERIC)


def split(sql: str, dialect: str) -> list[Statement]:
    """The statements of ``sql`` in order, each without its trailing ``;``.

    ``dialect`` may be an alias (``sqlite3``, ``postgres``).
    """
    if dialects.lookup(dialect) == "sqlite":
        return _split_sqlite(sql)
    return _split_lexed(sql, _rules(dialect))


def is_blank(sql: str, dialect: str = "postgresql") -> bool:
    """True when ``sql`` holds nothing but comments, whitespace and semicolons."""
    return _first_code(sql, 0, len(sql), _rules(dialect)) is None


def _split_sqlite(sql: str) -> list[Statement]:
    rules = _RULES["sqlite"]
    statements: list[Statement] = []
    start = 0
    search = 0
    while True:
        end = sql.find(";", search)
        if end < 0:
            break
        search = end + 1
        if sqlite3.complete_statement(sql[start:search]):
            _emit(statements, sql, start, end, rules)
            start = search
    _emit(statements, sql, start, len(sql), rules)
    return statements


def _split_lexed(sql: str, rules: _Rules) -> list[Statement]:
    statements: list[Statement] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == ";":
            _emit(statements, sql, start, i, rules)
            start = i + 1
            i += 1
        else:
            i = _skip_token(sql, i, rules)
    _emit(statements, sql, start, n, rules)
    return statements


def _emit(out: list[Statement], sql: str, start: int, end: int, rules: _Rules) -> None:
    first = _first_code(sql, start, end, rules)
    if first is None:
        return
    text = sql[start:end].strip()
    out.append(Statement(text, sql.count("\n", 0, first) + 1))


def _first_code(sql: str, start: int, end: int, rules: _Rules) -> int | None:
    """Index of the first character in ``sql[start:end]`` that is not comment or space."""
    i = start
    while i < end:
        c = sql[i]
        if c.isspace() or c == ";":
            i += 1
        elif _is_comment_start(sql, i, rules):
            i = _skip_token(sql, i, rules)
        else:
            return i
    return None


def _is_comment_start(sql: str, i: int, rules: _Rules) -> bool:
    return sql.startswith("--", i) or sql.startswith("/*", i) or (rules.hash_comments and sql[i] == "#")


def _skip_token(sql: str, i: int, rules: _Rules) -> int:
    """Index just past the token (string, comment, dollar body, or one char) at ``i``."""
    c = sql[i]
    if (c == "-" and sql.startswith("--", i)) or (c == "#" and rules.hash_comments):
        newline = sql.find("\n", i)
        return len(sql) if newline < 0 else newline + 1
    if c == "/" and sql.startswith("/*", i):
        return _skip_block_comment(sql, i, rules.nested_comments)
    if c in ("'", '"', "`"):
        if rules.backslash_strings:
            backslash = c != "`"
        else:
            backslash = (
                rules.escape_strings
                and c == "'"
                and i > 0
                and sql[i - 1] in "eE"
                and not _is_ident_before(sql, i - 1)
            )
        return _skip_quoted(sql, i, c, backslash)
    if c == "$" and rules.dollar_quotes and not _is_ident_before(sql, i):
        match = _DOLLAR_TAG.match(sql, i)
        if match:
            tag = match.group(0)
            close = sql.find(tag, match.end())
            return len(sql) if close < 0 else close + len(tag)
    return i + 1


def _is_ident_before(sql: str, i: int) -> bool:
    return i > 0 and _IDENT_CHAR.match(sql[i - 1]) is not None


def _skip_quoted(sql: str, i: int, quote: str, backslash_escapes: bool) -> int:
    n = len(sql)
    j = i + 1
    while j < n:
        c = sql[j]
        if backslash_escapes and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:  # doubled quote is an escaped quote
                j += 2
                continue
            return j + 1
        j += 1
    return n


def _skip_block_comment(sql: str, i: int, nested: bool) -> int:
    depth = 0
    j = i
    n = len(sql)
    while j < n:
        if sql.startswith("/*", j):
            depth = depth + 1 if nested or depth == 0 else depth
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return n
