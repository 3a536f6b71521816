"""goose's SQL migrations: ``<version>_<description>.sql`` with ``-- +goose`` annotations.

::

    -- +goose Up
    CREATE TABLE post (id int NOT NULL, title text, PRIMARY KEY (id));
    -- +goose StatementBegin
    CREATE FUNCTION touch() RETURNS trigger AS $$
    BEGIN NEW.updated := now(); RETURN NEW; END;
    $$ LANGUAGE plpgsql;
    -- +goose StatementEnd

    -- +goose Down
    DROP FUNCTION touch();
    DROP TABLE post;

Read as goose reads it: only comments and blank lines before ``-- +goose Up``;
at most one ``Up`` and one ``Down``, in that order; ``StatementBegin`` /
``StatementEnd`` in pairs inside a direction; every statement outside such a
block ends with a ``;`` at the end of a line; ``-- +goose NO TRANSACTION``
anywhere makes both directions run outside a transaction. Annotation words
are case-insensitive. ``-- +goose ENVSUB ON`` (environment variables
substituted into the SQL) is refused: the SQL would then depend on the
machine that reads it, and its checksum with it.

The sections keep the annotation lines, which are SQL comments: a
``StatementBegin`` block is one statement for goose, and migsync's splitter
keeps the same bodies whole (dollar quotes, ``BEGIN ... END`` of a trigger).
"""

from __future__ import annotations

import re
from pathlib import Path

from migsync.core.errors import SourceError
from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat
from migsync.core.formats.native import migration_name
from migsync.core.migration import Direction

_NAME = re.compile(r"^(?P<version>\d+)_(?P<desc>.*)(?<!\.up)(?<!\.down)\.sql$")
_ANNOTATION_BYTES = re.compile(rb"^[ \t]*--[^\n]*\+goose", re.MULTILINE)
_WORDS = {
    "up": "Up",
    "down": "Down",
    "statementbegin": "StatementBegin",
    "statementend": "StatementEnd",
    "no transaction": "NO TRANSACTION",
    "envsub on": "ENVSUB ON",
    "envsub off": "ENVSUB OFF",
}


class GooseFormat(SourceFormat):
    name = "goose"
    group = "goose"
    pattern_help = "<version>_<description>.sql with '-- +goose Up' annotations"
    mark = "'-- +goose' annotations"

    def match(self, filename: str) -> FileName | None:
        m = _NAME.match(filename)
        if not m:
            return None
        return FileName(m["version"], migration_name(m["version"], m["desc"]))

    def sniff(self, file: FileName, data: bytes) -> bool | None:
        return _ANNOTATION_BYTES.search(data) is not None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        return _Parser(path).parse(text)

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        # 'goose create NAME sql' writes these placeholder queries; they run harmlessly.
        text = (
            "-- +goose Up\n-- +goose StatementBegin\nSELECT 'up SQL query';\n-- +goose StatementEnd\n\n"
            "-- +goose Down\n-- +goose StatementBegin\nSELECT 'down SQL query';\n-- +goose StatementEnd\n"
        )
        return {f"{new.version}_{new.name}.sql": text}


class _Parser:
    def __init__(self, path: Path):
        self.path = path
        self.direction: Direction | None = None
        self.block_line: int | None = None  # where the open StatementBegin is
        self.pending: int | None = None  # the line of a statement not yet ended by ';'
        self.starts: dict[str, int] = {}  # direction -> offset of its first line
        self.bounds: list[tuple[Direction, int, int, int]] = []
        self.no_transaction = False

    def fail(self, message: str, line: int) -> SourceError:
        return SourceError(message, self.path, line)

    def parse(self, text: str) -> list[Section]:
        offset = 0
        lines = text.splitlines(keepends=True)
        for number, raw in enumerate(lines, start=1):
            line = raw.rstrip("\r\n")
            stripped = line.strip()
            if stripped.startswith("--") and "+goose" in line:
                self.annotation(line, number, offset, offset + len(raw))
            elif self.direction is None:
                if stripped and not stripped.startswith("--"):
                    raise self.fail("SQL before '-- +goose Up' (goose needs the annotation first)", number)
            elif (
                self.block_line is None
                and stripped
                and not (self.pending is None and stripped.startswith("--"))
            ):
                if self.pending is None:
                    self.pending = number
                if _ends_statement(line):
                    self.pending = None
            offset += len(raw)
        if self.direction is None:
            raise self.fail("no '-- +goose Up' annotation (goose needs one)", 1)
        self.close(len(lines) + 1, len(text))
        return [
            Section(direction, text[start:end], autocommit=self.no_transaction, path=self.path, line=line)
            for direction, line, start, end in self.bounds
        ]

    def annotation(self, line: str, number: int, start: int, end: int) -> None:
        if line[:1] in (" ", "\t"):
            raise self.fail("a '+goose' annotation must start at the beginning of its line", number)
        word = " ".join(line.replace("--", " ").replace("+goose", " ", 1).split())
        if "+goose" in word or word.lower() not in _WORDS:
            known = ", ".join(_WORDS.values())
            raise self.fail(f"unknown goose annotation {word!r} (known: {known})", number)
        kind = _WORDS[word.lower()]
        if kind in ("Up", "Down"):
            self.switch(kind, number, start, end)
        elif kind == "StatementBegin":
            if self.direction is None:
                raise self.fail("'-- +goose StatementBegin' before '-- +goose Up'", number)
            if self.block_line is not None:
                raise self.fail(
                    f"second '-- +goose StatementBegin' (the first is at line {self.block_line})", number
                )
            # A statement begun before the block becomes part of the block's one statement.
            self.pending = None
            self.block_line = number
        elif kind == "StatementEnd":
            if self.block_line is None:
                raise self.fail("'-- +goose StatementEnd' without a StatementBegin", number)
            self.block_line = None
        elif kind == "NO TRANSACTION":
            self.no_transaction = True
        elif kind == "ENVSUB ON":
            raise self.fail(
                "'-- +goose ENVSUB ON' is not supported: migsync does not substitute environment "
                "variables into SQL (the SQL, and its checksum, would depend on the machine); "
                "write the values into the file",
                number,
            )

    def switch(self, kind: str, number: int, start: int, end: int) -> None:
        direction: Direction = "up" if kind == "Up" else "down"
        if direction in self.starts:
            raise self.fail(f"second '-- +goose {kind}' annotation", number)
        if direction == "down" and self.direction is None:
            raise self.fail("'-- +goose Down' before '-- +goose Up' (goose needs Up first)", number)
        self.close(number, start)
        self.direction = direction
        self.starts[direction] = end
        self.bounds.append((direction, number + 1, end, -1))

    def close(self, number: int, end: int) -> None:
        if self.block_line is not None:
            raise self.fail("'-- +goose StatementBegin' without a StatementEnd", self.block_line)
        if self.pending is not None:
            raise self.fail(self.unended(), self.pending)
        if self.bounds:
            direction, line, start, _ = self.bounds[-1]
            self.bounds[-1] = (direction, line, start, end)

    def unended(self) -> str:
        return (
            "statement not ended by a ';' at the end of a line (goose needs one; wrap a body "
            "with ';' inside in '-- +goose StatementBegin' and '-- +goose StatementEnd')"
        )


def _ends_statement(line: str) -> bool:
    """goose's rule: the last word before a ``--`` comment ends with ``;``."""
    last = ""
    for word in line.split():
        if word.startswith("--"):
            break
        last = word
    return last.endswith(";")
