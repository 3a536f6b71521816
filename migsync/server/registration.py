"""Many clients registered at once: the rows of ``clients add --from FILE`` and of ``POST /api/clients``.

A file is CSV with a header row naming a ``name`` column, or JSON lines, one
object ``{"name": ...}`` per line (told apart by its first character: ``{``).
A row may carry ``labels`` (an object of text to text in JSON lines, or
``key=value;key=value`` in CSV); any other key is an error, since a misspelt
column would otherwise be dropped without a word. Every row is checked before
anything is registered: a bad row is one :class:`ConfigError` naming the file
and the line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from migsync.core.errors import ConfigError
from migsync.protocol.wire_schema import MAX_NEW_CLIENTS
from migsync.server.store import client_name

__all__ = ["MAX_API_CLIENTS", "NewClient", "from_body", "parse_file", "parse_text"]

#: The most clients one ``POST /api/clients`` registers.
MAX_API_CLIENTS = MAX_NEW_CLIENTS
_KEYS = {"name", "labels"}


@attrs.frozen
class NewClient:
    """A client to register: its name, its labels (None: none given) and where it was read."""

    name: str
    labels: dict[str, str] | None = None
    where: str = ""


def parse_file(path: str | Path) -> list[NewClient]:
    """The clients listed in ``path`` (``-``: standard input is the caller's to read)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not UTF-8 text") from None
    return parse_text(text, str(file))


def parse_text(text: str, source: str) -> list[NewClient]:
    """The clients listed in ``text`` (read from ``source``, which messages name)."""
    clients = list(_json_lines(text, source) if text.lstrip().startswith("{") else _csv(text, source))
    if not clients:
        raise ConfigError(f"{source} lists no clients")
    _once(clients)
    return clients


def from_body(items: Sequence[Any]) -> list[NewClient]:
    """The clients of ``POST /api/clients``'s ``clients`` list (its shape checked by the schema)."""
    clients = [_row(item, f"clients[{index}]") for index, item in enumerate(items)]
    _once(clients)
    return clients


def _json_lines(text: str, source: str) -> Iterator[NewClient]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where}: not a JSON object ({exc})") from None
        yield _row(item, where)


def _csv(text: str, source: str) -> Iterator[NewClient]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for row in reader:
        where = f"{source} line {reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            if "name" not in header:
                raise ConfigError(f"{where}: the header must name a 'name' column, not {', '.join(header)}")
            unknown = sorted(set(header) - _KEYS)
            if unknown:
                raise ConfigError(
                    f"{where}: unknown column {', '.join(unknown)}: the columns are name, labels"
                )
            continue
        if len(row) != len(header):
            raise ConfigError(f"{where}: {len(row)} fields, but the header has {len(header)}")
        item: dict[str, Any] = dict(zip(header, row, strict=True))
        if "labels" in item:
            item["labels"] = _csv_labels(item["labels"], where)
        yield _row(item, where)


def _csv_labels(text: str, where: str) -> dict[str, str] | None:
    if not text.strip():
        return None
    labels: dict[str, str] = {}
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: labels must be key=value;key=value, not {text!r}")
        labels[key.strip()] = value.strip()
    return labels


def _row(item: Any, where: str) -> NewClient:
    if not isinstance(item, dict):
        raise ConfigError(f'{where}: expected an object like {{"name": "shop-berlin"}}')
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {', '.join(map(repr, unknown))}: a client has name and labels"
        )
    name = item.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be text, not {json.dumps(name)}")
    try:
        cleaned = client_name(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    labels = item.get("labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise ConfigError(f"{where}: labels must be an object of text to text")
    return NewClient(cleaned, labels, where)


def _once(clients: list[NewClient]) -> None:
    seen: dict[str, NewClient] = {}
    for new in clients:
        if new.name in seen:
            raise ConfigError(
                f"{new.where}: client {new.name!r} is listed twice (first at {seen[new.name].where})"
            )
        seen[new.name] = new
