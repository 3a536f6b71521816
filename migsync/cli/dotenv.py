"""``.env`` files, read as dbmate reads them: variables for the commands that the shell does not set.

A line is ``KEY=value``, optionally prefixed by ``export``; ``#`` starts a
comment on its own line or after an unquoted value (after whitespace). Values
may be quoted: single quotes keep the text as written, double quotes know
``\\n``, ``\\t``, ``\\"`` and ``\\\\``. A variable already set in the
environment wins over the file, so a deployment can always override it.

The file is read before the command's options are parsed, so its
``MIGSYNC_DB`` or ``DATABASE_URL`` is the default for ``--db`` like any other
environment variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

from migsync.core.errors import ConfigError
from migsync.core.files import read_regular, reason

DEFAULT_FILE = ".env"

_LINE = re.compile(r"(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(?P<value>.*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def parse(text: str, source: str = DEFAULT_FILE) -> dict[str, str]:
    """The variables in ``text``; a line that is none of the forms above is an error naming it."""
    variables: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ConfigError(f"{source}:{number}: not a KEY=value line: {raw.strip()[:80]!r}")
        variables[match["key"]] = _value(match["value"], source, number)
    return variables


def _value(text: str, source: str, number: int) -> str:
    if text[:1] in ("'", '"'):
        quote = text[0]
        end = _closing(text, quote)
        if end is None:
            raise ConfigError(f"{source}:{number}: the value's {quote} quote is never closed")
        rest = text[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(f"{source}:{number}: text after the quoted value: {rest[:40]!r}")
        inner = text[1:end]
        if quote == "'":
            return inner
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], "\\" + m[1]), inner)
    # Unquoted: a comment starts at " #" (a '#' inside a URL's fragment or password stays).
    comment = re.search(r"\s#", text)
    return (text[: comment.start()] if comment else text).strip()


def _closing(text: str, quote: str) -> int | None:
    index = 1
    while index < len(text):
        if text[index] == "\\" and quote == '"':
            index += 2
            continue
        if text[index] == quote:
            return index
        index += 1
    return None


def load(path: str | None, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the variables of the file at ``path`` (default ``./.env`` if there is one) that
    ``environ`` does not have; return the ones set. A file named explicitly must exist."""
    environ = os.environ if environ is None else environ
    if path is None:
        if not Path(DEFAULT_FILE).is_file():
            return {}
        path = DEFAULT_FILE
    elif not os.path.lexists(path):
        raise ConfigError(f"environment file {path} does not exist")
    try:
        data = read_regular(Path(path), limit=1 << 20)
    except OSError as exc:
        raise ConfigError(f"cannot read environment file {path}: {reason(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"environment file {path} is not UTF-8 (byte {exc.start})") from None
    added = {key: value for key, value in parse(text, path).items() if key not in environ}
    environ.update(added)
    return added
