"""``-- migsync:requires app>=2.3``: the application versions a migration needs.

A migration may say, in a comment line of its up script (any dialect's), which versions of
the application embedding the client database can run it::

    -- migsync:requires app>=2.3
    -- migsync:requires app<3
    ALTER TABLE orders ADD COLUMN note TEXT;

Lines add up (all must hold); one line may also list several, separated by commas
(``app>=2.3, app<3``). Operators: ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=``; versions are
dot-separated whole numbers (``2``, ``2.3``, ``2.10.1``; ``2.3`` is ``2.3.0``), and a client's
app version may carry a suffix after ``-`` or ``+`` (``2.3.1-beta``), which is ignored.

The directive is part of the script's text, so it is covered by the checksum and the
signature like the rest, and needs no field of its own in the published content. The server
offers such a migration only to clients whose app version (``Migsync-App-Version``, see
:mod:`migsync.protocol.wire`) satisfies it; a client that never said its version is held.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from migsync.core.errors import SourceError

DIRECTIVE = "migsync:requires"

_LINE = re.compile(r"^[ \t]*--[ \t]*migsync:requires\b(?P<rest>[^\n]*)$", re.MULTILINE)
_TERM = re.compile(r"^app[ \t]*(?P<op>>=|<=|==|!=|>|<)[ \t]*(?P<version>\d+(?:\.\d+)*)$")
_APP = re.compile(r"^(?P<version>\d+(?:\.\d+)*)(?:[-+][0-9A-Za-z.\-+]*)?$")

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


def _parts(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def app_version(text: str) -> tuple[int, ...] | None:
    """A client's app version as numbers, or None if it is not one (``2.3``, ``2.3.1-beta``)."""
    match = _APP.match(text.strip())
    return None if match is None else _parts(match.group("version"))


@attrs.frozen
class Requirement:
    """One term, ``app>=2.3``."""

    op: str
    version: str

    def holds(self, app: tuple[int, ...]) -> bool:
        return _OPS[self.op](app, _parts(self.version))

    def __str__(self) -> str:
        return f"app{self.op}{self.version}"


def parse(sql: str, where: str | None = None, first_line: int = 1) -> tuple[Requirement, ...]:
    """The requirements the ``-- migsync:requires`` lines of ``sql`` state (none: empty).

    A line that says something else is a :class:`SourceError` naming ``where`` and its line
    (``sql`` starting on line ``first_line`` of ``where``)."""
    found: list[Requirement] = []
    if DIRECTIVE not in sql:
        return ()
    for match in _LINE.finditer(sql):
        line = sql.count("\n", 0, match.start()) + first_line
        terms = [t.strip() for t in match.group("rest").split(",")]
        if not any(terms):
            raise SourceError("'-- migsync:requires' names no requirement (e.g. app>=2.3)", where, line)
        for term in terms:
            parsed = _TERM.match(term)
            if parsed is None:
                raise SourceError(
                    f"'-- migsync:requires {term}': write app OP VERSION, OP one of >=, >, <=, <, ==, != "
                    "and VERSION dot-separated numbers (app>=2.3)",
                    where,
                    line,
                )
            found.append(Requirement(parsed.group("op"), parsed.group("version")))
    return tuple(dict.fromkeys(found))


def of_scripts(scripts: Iterable[tuple[str, str | None, int]]) -> tuple[Requirement, ...]:
    """The requirements of every ``(sql, where, first line)`` given, together."""
    found: list[Requirement] = []
    for sql, where, first_line in scripts:
        found.extend(parse(sql, where, first_line))
    return tuple(dict.fromkeys(found))


def of_content(content: Mapping[str, Any]) -> tuple[Requirement, ...]:
    """The requirements of a migration's published content (its ``to_json``): its up scripts'."""
    up = content.get("up", {})
    return of_scripts((str(s.get("sql", "")), str(content.get("name", "?")), 1) for s in up.values())


def describe(requirements: Iterable[Requirement]) -> str:
    return ", ".join(str(r) for r in requirements)


def satisfied(requirements: Iterable[Requirement], app: str | None) -> bool:
    """Whether a client whose app version is ``app`` (None: it never said) may run it."""
    items = tuple(requirements)
    if not items:
        return True
    parsed = None if app is None else app_version(app)
    return parsed is not None and all(r.holds(parsed) for r in items)
