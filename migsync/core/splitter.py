"""Split a SQL script into statements, for drivers that run one at a time.

A small lexer finds every ``;`` that is not inside a token: quoted strings
(``'...'``, Postgres' ``E'...'`` with backslash escapes), quoted identifiers
(``"..."``, backticks, SQLite's ``[...]``), ``--`` line comments, ``/* */``
block comments (nested in Postgres) and dollar-quoted bodies (``$$...$$``,
``$tag$...$tag$``). MySQL differs: backslash escapes in every string, ``#``
line comments, no dollar quotes and no nested comments.

Where a ``;`` inside a statement's *body* does not end it, the dialect's own
rule decides:

* SQLite: each candidate ``;`` is confirmed by SQLite's own tokenizer
  (``sqlite3.complete_statement``), which knows ``CREATE TRIGGER ... BEGIN
  ... END;`` bodies.
* Postgres: inside ``CREATE [OR REPLACE] FUNCTION|PROCEDURE``, a SQL-standard
  ``BEGIN ATOMIC ... END`` body keeps its ``;`` (psql's own rule: ``BEGIN``
  and, within it, ``CASE`` open a level, ``END`` closes one).

The work is linear in the script's length: plain text between tokens is
skipped by one regular-expression search, and line numbers are counted
forward from the previous statement, never from the start.

On Postgres a transactional script needs no splitting to run (the driver
sends it whole inside the open transaction); the splitter serves scripts
that run statement by statement, error locations, and the check of what a
script may contain (:mod:`migsync.core.script_check`).

Statements that hold only comments and whitespace are dropped: they would
be no-ops, and some drivers reject an empty query.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

import attrs

from migsync.core import dialects


@attrs.frozen
class Statement:
    """One statement of a script and the 1-based line it starts on.

    ``start`` and ``end`` are the offsets of ``sql`` in the script
    (``script[start:end] == sql``); ``terminator`` is the offset of the ``;``
    that ends it, or the script's length when none does.
    """

    sql: str
    line: int
    start: int = attrs.field(default=0, eq=False)
    end: int = attrs.field(default=0, eq=False)
    terminator: int = attrs.field(default=0, eq=False)


# Postgres identifiers: ASCII letters, digits, '_' and any non-ASCII character.
# Spelled as negated ASCII sets: a '\u0080-\uffff' range costs ~8 ms to compile,
# paid by every `migsync` start.
_DOLLAR_TAG = re.compile(
    r"\$([^\x00-\x40\x5b-\x5e\x60\x7b-\x7f][^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]*)?\$"
)
_IDENT_CHAR = re.compile(r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]")
_SPACE = re.compile(r"\s*")
_SPACE_OR_SEMICOLON = re.compile(r"[\s;]*")


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
    #: ``[...]`` quotes an identifier (SQLite).
    brackets: bool = False
    #: ``BEGIN ATOMIC ... END`` bodies of SQL functions keep their ``;`` (Postgres).
    atomic_bodies: bool = False
    #: the characters that may start a token, or end a statement
    special: re.Pattern[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        chars = ";'\"`/-" + ("$" if self.dollar_quotes else "") + ("#" if self.hash_comments else "")
        chars += "[" if self.brackets else ""
        object.__setattr__(self, "special", re.compile("[" + re.escape(chars) + "]"))


_POSTGRES = _Rules(nested_comments=True, dollar_quotes=True, escape_strings=True, atomic_bodies=True)
_SQLITE = _Rules(brackets=True)
_RULES: dict[str, _Rules] = {
    "postgresql": _POSTGRES,
    "cockroachdb": _POSTGRES,
    "mysql": _Rules(backslash_strings=True, hash_comments=True),
    "sqlite": _SQLITE,
}
#: For a dialect migsync has no rules for: Postgres' quoting without nested comments.
_GENERIC = _Rules(dollar_quotes=True, escape_strings=True)


def _rules(dialect: str) -> _Rules:
    return _RULES.get(dialects.lookup(dialect) or dialect, _GENERIC)


def split(sql: str, dialect: str) -> list[Statement]:
    """The statements of ``sql`` in order, each without its trailing ``;``.

    ``dialect`` may be an alias (``sqlite3``, ``postgres``).
    """
    rules = _rules(dialect)
    statements: list[Statement] = []
    lines = _LineCounter(sql)
    start = 0
    atomic = _AtomicBody(sql, rules) if rules.atomic_bodies else None
    for end in _semicolons(sql, rules):
        if rules is _SQLITE and not sqlite3.complete_statement(sql[start : end + 1]):
            continue  # inside a trigger body (or a token SQLite reads otherwise)
        if atomic is not None and atomic.inside(start, end):
            continue
        _emit(statements, sql, start, end, rules, lines)
        start = end + 1
    _emit(statements, sql, start, len(sql), rules, lines)
    return statements


def is_blank(sql: str, dialect: str = "postgresql") -> bool:
    """True when ``sql`` holds nothing but comments, whitespace and semicolons."""
    return _first_code(sql, 0, len(sql), _rules(dialect)) is None


class _LineCounter:
    """Line numbers of increasing offsets, counted forward from the last one asked."""

    def __init__(self, sql: str):
        self._sql = sql
        self._offset = 0
        self._line = 1

    def at(self, offset: int) -> int:
        self._line += self._sql.count("\n", self._offset, offset)
        self._offset = offset
        return self._line


def _semicolons(sql: str, rules: _Rules) -> Iterator[int]:
    """The offsets of every ``;`` outside strings, comments and quoted bodies."""
    special = rules.special
    i = 0
    while (found := special.search(sql, i)) is not None:
        i = found.start()
        if sql[i] == ";":
            yield i
            i += 1
        else:
            i = _skip_token(sql, i, rules)


def _emit(out: list[Statement], sql: str, start: int, end: int, rules: _Rules, lines: _LineCounter) -> None:
    first = _first_code(sql, start, end, rules)
    if first is None:
        return
    text_start = _SPACE.match(sql, start, end).end()  # type: ignore[union-attr]
    text_end = end
    while text_end > text_start and sql[text_end - 1].isspace():
        text_end -= 1
    out.append(Statement(sql[text_start:text_end], lines.at(first), text_start, text_end, end))


def _first_code(sql: str, start: int, end: int, rules: _Rules) -> int | None:
    """Index of the first character in ``sql[start:end]`` that is not comment, space or ``;``."""
    i = start
    while True:
        i = _SPACE_OR_SEMICOLON.match(sql, i, end).end()  # type: ignore[union-attr]
        if i >= end:
            return None
        if not _is_comment_start(sql, i, rules):
            return i
        i = _skip_token(sql, i, rules)


def _is_comment_start(sql: str, i: int, rules: _Rules) -> bool:
    c = sql[i]
    return (
        (c == "-" and sql.startswith("--", i))
        or (c == "/" and sql.startswith("/*", i))
        or (c == "#" and rules.hash_comments)
    )


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
    if c == "[" and rules.brackets:
        close = sql.find("]", i + 1)
        return len(sql) if close < 0 else close + 1
    if c == "$" and rules.dollar_quotes and not _is_ident_before(sql, i):
        match = _DOLLAR_TAG.match(sql, i)
        if match:
            tag = match.group(0)
            close = sql.find(tag, match.end())
            return len(sql) if close < 0 else close + len(tag)
    return i + 1


def _is_ident_before(sql: str, i: int) -> bool:
    return i > 0 and _IDENT_CHAR.match(sql[i - 1]) is not None


_QUOTE_OR_BACKSLASH = {q: re.compile(r"[\\" + q + "]") for q in ("'", '"', "`")}


def _skip_quoted(sql: str, i: int, quote: str, backslash_escapes: bool) -> int:
    n = len(sql)
    j = i + 1
    stop = _QUOTE_OR_BACKSLASH[quote]
    while True:
        if backslash_escapes:
            found = stop.search(sql, j)
            j = found.start() if found else n
            if j < n and sql[j] == "\\":
                j += 2
                continue
        else:
            j = sql.find(quote, j)
            if j < 0:
                j = n
        if j >= n:
            return n
        if j + 1 < n and sql[j + 1] == quote:  # doubled quote is an escaped quote
            j += 2
            continue
        return j + 1


_COMMENT_MARK = re.compile(r"/\*|\*/")


def _skip_block_comment(sql: str, i: int, nested: bool) -> int:
    if not nested:
        close = sql.find("*/", i + 2)
        return len(sql) if close < 0 else close + 2
    depth = 0
    j = i
    while (found := _COMMENT_MARK.search(sql, j)) is not None:
        j = found.end()
        depth += 1 if found.group() == "/*" else -1
        if depth == 0:
            return j
    return len(sql)


_ROUTINE = re.compile(r"create\s+(?:or\s+replace\s+)?(?:function|procedure)\b", re.IGNORECASE)
_BLOCK_WORD = re.compile(r"[()]|(?<![\w$])(?:begin|case|end)(?![\w$])", re.IGNORECASE)


class _AtomicBody:
    """Postgres: whether a ``;`` falls inside a ``BEGIN ATOMIC ... END`` body.

    psql's rule, kept as psql keeps it: in a statement that starts ``CREATE
    [OR REPLACE] FUNCTION|PROCEDURE``, outside parentheses, ``BEGIN`` opens a
    level, ``CASE`` opens one when already inside, ``END`` closes one. The
    state runs forward through the statement, so each character is read once.
    """

    def __init__(self, sql: str, rules: _Rules):
        self._sql = sql
        self._rules = rules
        self._statement = -1  # the start of the statement the state belongs to
        self._routine = False
        self._scanned = 0
        self._depth = 0
        self._parens = 0

    def inside(self, start: int, end: int) -> bool:
        if start != self._statement:
            self._statement, self._scanned, self._depth, self._parens = start, start, 0, 0
            first = _first_code(self._sql, start, end, self._rules)
            self._routine = first is not None and _ROUTINE.match(self._sql, first) is not None
        if not self._routine:
            return False
        for code_start, code_end in _code_spans(self._sql, self._scanned, end, self._rules):
            for word in _BLOCK_WORD.finditer(self._sql, code_start, code_end):
                self._count(word.group().lower())
        self._scanned = end + 1
        return self._depth > 0

    def _count(self, word: str) -> None:
        if word == "(":
            self._parens += 1
        elif word == ")":
            self._parens = max(self._parens - 1, 0)
        elif self._parens:
            return
        elif word == "begin" or (word == "case" and self._depth):
            self._depth += 1
        elif word == "end" and self._depth:
            self._depth -= 1


def _code_spans(sql: str, start: int, end: int, rules: _Rules) -> Iterator[tuple[int, int]]:
    """The stretches of ``sql[start:end]`` outside strings, comments and quoted bodies."""
    i = start
    while i < end:
        found = rules.special.search(sql, i, end)
        if found is None:
            yield i, end
            return
        token = found.start()
        if token > i:
            yield i, token
        i = _skip_token(sql, token, rules) if sql[token] != ";" else token + 1
