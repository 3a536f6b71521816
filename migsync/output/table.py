"""Plain-text tables: columns lined up for a terminal, a pipe or a CI log, without rich.

Every table migsync prints in a pipe comes from here (``status`` on a terminal is
drawn by rich, and :func:`table_text` with ``edges=True`` writes the same text
rich would). Widths are counted in terminal cells, so a name in CJK script does
not push its row out of line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click


def on_a_terminal() -> bool:
    """Whether stdout is a person's terminal (or ``FORCE_COLOR`` says to act as if it were)."""
    return sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))


def cells(text: str) -> int:
    """Terminal cells ``text`` takes: East Asian wide characters take two."""
    if text.isascii():
        return len(text)
    from unicodedata import east_asian_width

    return sum(2 if east_asian_width(char) in "WF" else 1 for char in text)


def table_text(header: Sequence[str], rows: Sequence[Sequence[str]], *, edges: bool = False) -> str:
    """Columns padded to their widest cell, two spaces apart.

    ``edges``: one space before the first column and after the last, as rich draws a
    ``Table(box=None)``; without, trailing spaces are trimmed.
    """
    table = [header, *rows]
    measure = len if all(cell.isascii() for row in table for cell in row) else cells
    widths = [max(measure(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell + " " * (width - measure(cell)) for cell, width in zip(row, widths, strict=True))
        for row in table
    ]
    return "\n".join(f" {line} " if edges else line.rstrip() for line in lines)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """:func:`table_text` to stdout."""
    click.echo(table_text(header, rows))
