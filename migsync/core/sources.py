"""Load a directory of migration files into ``Migration`` records.

Every file is offered to the registered formats (:mod:`migsync.core.formats`);
which format the directory is in is decided from all of its files at once
(:mod:`migsync.core.detect`), or by ``format=`` (``--format NAME``). The
sections the format reads become migrations in :mod:`migsync.core.assembly`,
in version order or, with ``order="name"``, in the order of their names.

Files whose suffix no format is responsible for (``README.md``, ``.gitkeep``)
and hidden files are ignored; a ``.sql`` file that fits no format is an error,
and so is a file that looks like a migration in another language
(``0003_backfill.go``, ``.py``, ``.rb``, pop's ``.fizz``), unless
``ignore_unknown`` turns it into a warning (:attr:`SourceSnapshot.ignored`).

Validation is complete before anything is returned: a source with any error
yields no migrations at all, so nothing is applied from it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from migsync.core import files
from migsync.core.assembly import ORDERS, Order, assemble, repeatable_version
from migsync.core.detect import Candidate, detect, find_format, read_as
from migsync.core.errors import ConfigError, SourceError
from migsync.core.formats import BUILTIN, FileName, SourceFormat
from migsync.core.migration import Migration

if TYPE_CHECKING:
    from migsync.core.plugins import Plugins

__all__ = [
    "ORDERS",
    "Order",
    "SourceSnapshot",
    "builtin_formats",
    "decode",
    "find_format",
    "load_directory",
    "plugin_formats",
    "read_bytes",
    "read_text",
    "repeatable_version",
    "scan_directory",
]

# Bump when parsing rules change, so that old digests no longer match.
_DIGEST_SALT = b"migsync-source-3\0"

#: Migrations in other languages: ``<version>_`` (or Flyway's prefix), then a code file's suffix.
_OTHER_LANGUAGE = re.compile(
    r"^(?:\d+_|[VUR]\d*(?:[._]\d+)*__).*\.(?P<ext>go|py|rb|js|mjs|cjs|ts|java|kt|scala|fizz|sh|php|cs|rs|exs?)$",
    re.IGNORECASE,
)
_LANGUAGES = {
    "go": "a Go migration",
    "py": "a Python migration",
    "rb": "a Ruby migration",
    "fizz": "a fizz migration (pop's own language)",
    "java": "a Java migration",
}


def builtin_formats() -> list[SourceFormat]:
    """An instance of every built-in format, in priority order."""
    return [spec.load()() for spec in BUILTIN]


def plugin_formats(plugins: Plugins) -> list[SourceFormat]:
    """Every format the plugins registered (built-ins included), in priority order."""
    specs = sorted(plugins.source_formats, key=lambda spec: spec.priority)
    return [spec.load()() for spec in specs]


def load_directory(
    directory: str | Path,
    formats: Sequence[SourceFormat] | None = None,
    *,
    format: str | None = None,
    order: Order = "version",
    ignore_unknown: bool = False,
) -> list[Migration]:
    """The migrations in ``directory``, in the order they apply (see the module docstring).

    Raises :class:`SourceError` naming the file (and line) of the first
    problem: a name that fits no format, two migrations with one version,
    a native file without an up section, text that is not UTF-8, a folder
    that reads two ways.
    """
    return scan_directory(
        directory, formats, format=format, order=order, ignore_unknown=ignore_unknown
    ).migrations()


@attrs.frozen
class SourceSnapshot:
    """The migration files of a directory as read at one moment, parsed on demand.

    ``digest`` covers the files' names and bytes, the formats that read them
    and the options: two snapshots with one digest hold the same migrations,
    so a client that recorded this digest already can skip parsing and
    recording. ``format`` names the format(s) the folder is read in;
    ``ignored``, the files skipped with ``ignore_unknown``, each with why.
    """

    directory: Path
    files: tuple[tuple[SourceFormat, FileName, str, bytes], ...]
    digest: str
    format: str = ""
    order: Order = "version"
    ignored: tuple[str, ...] = ()
    _parsed: list[list[Migration]] = attrs.field(factory=list, eq=False, repr=False, alias="_parsed")

    def migrations(self) -> list[Migration]:
        if not self._parsed:
            self._parsed.append(
                assemble(
                    (
                        (file, path, fmt.parse(file, decode(data, path), path))
                        for fmt, file, path, data in ((f, n, Path(p), d) for f, n, p, d in self.files)
                    ),
                    self.order,
                )
            )
        return self._parsed[0]


def scan_directory(
    directory: str | Path,
    formats: Sequence[SourceFormat] | None = None,
    *,
    format: str | None = None,
    order: Order = "version",
    ignore_unknown: bool = False,
) -> SourceSnapshot:
    """Read the migration files of ``directory``: names checked, format decided, contents not parsed."""
    root = Path(directory)
    formats = list(formats) if formats is not None else builtin_formats()
    if order not in ORDERS:
        raise ConfigError(f"unknown order {order!r} (known: {', '.join(ORDERS)})")
    chosen = find_format(formats, format) if format is not None else None
    candidates, unknown = _read_folder(root, formats)
    if unknown and not ignore_unknown:
        path, what = unknown[0]
        more = (
            f" (and {len(unknown) - 1} more such file{'s' * (len(unknown) > 2)})" if len(unknown) > 1 else ""
        )
        raise SourceError(
            f"{what}{more}: migsync runs SQL migration files only; rewrite what it does as SQL in "
            "this folder's format, or pass --ignore-unknown to skip such files with a warning",
            path,
        )
    ignored = tuple(f"{path}: {what}: skipped (--ignore-unknown)" for path, what in unknown)
    readings = read_as(chosen, candidates) if chosen is not None else detect(formats, candidates)
    digest = hashlib.sha256(_DIGEST_SALT + ",".join(type(f).__qualname__ for f in formats).encode())
    digest.update(f"\0{format or ''}\0{order}".encode())
    for _, _, candidate in readings:
        digest.update(b"\0%d\0%s\0" % (len(candidate.data), candidate.name.encode()))
        digest.update(candidate.data)
    used = sorted({fmt for fmt, _, _ in readings}, key=formats.index)
    return SourceSnapshot(
        root,
        tuple((fmt, file, c.path, c.data) for fmt, file, c in readings),
        digest.hexdigest(),
        "+".join(f.name for f in used),
        order,
        ignored,
    )


def _read_folder(
    root: Path, formats: Sequence[SourceFormat]
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """The files some format claims, and the migrations in other languages (path, what)."""
    # Case-insensitive: "001_x.SQL" must be reported, not silently skipped.
    suffixes = tuple({suffix.lower() for fmt in formats for suffix in fmt.suffixes})
    flat = [f for f in formats if not f.nested]
    nested = [f for f in formats if f.nested]
    candidates: list[Candidate] = []
    unknown: list[tuple[str, str]] = []
    for entry in _entries(root):
        name = entry.name
        if name.startswith("."):
            continue
        claims = _claims(flat, name, entry.path)
        if not claims:
            if nested and _is_dir(entry):
                candidates += _read_sub_folder(entry, nested)
                continue
            what = _other_language(name)
            if what is not None:
                unknown.append((entry.path, what))
                continue
            if not name.lower().endswith(suffixes):
                continue  # README.md, .gitkeep: never looked at, so not even a symlink loop is an error
        # Plain strings, not Path objects, on this loop: it runs per file on every start.
        path = entry.path
        try:
            if entry.is_dir():
                continue
        except OSError as exc:  # a symlink loop: is_dir() cannot tell
            raise SourceError(f"cannot read file: {files.reason(exc)}", path) from exc
        if not claims:
            expected = " or ".join(f.pattern_help for f in formats if f.pattern_help)
            raise SourceError(f"file name fits no migration format (expected {expected})", path)
        candidates.append(Candidate(name, path, claims, read_bytes(path)))
    return candidates, unknown


def _entries(root: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceError("migrations directory does not exist or is not a directory", root) from None
    except OSError as exc:
        raise SourceError(f"cannot read directory: {files.reason(exc)}", root) from exc


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop or the like: not a folder of migrations
        return False


def _read_sub_folder(folder: os.DirEntry[str], formats: Sequence[SourceFormat]) -> list[Candidate]:
    found = []
    for entry in _entries(Path(folder.path)):
        if entry.name.startswith("."):
            continue
        name = f"{folder.name}/{entry.name}"
        claims = _claims(formats, name, entry.path)
        if claims:
            found.append(Candidate(name, entry.path, claims, read_bytes(entry.path)))
    return found


def _claims(formats: Sequence[SourceFormat], name: str, path: str) -> dict[SourceFormat, FileName]:
    claims = {}
    for fmt in formats:
        try:
            file = fmt.match(name)
        except SourceError as exc:  # a name that is unmistakably the format's, but wrong
            raise SourceError(exc.reason, path, exc.line) from None
        if file is not None:
            claims[fmt] = file
    return claims


def _other_language(name: str) -> str | None:
    """What a file is when it looks like a migration in another language, else None."""
    if name.endswith("_test.go"):  # goose skips Go test files
        return None
    if re.fullmatch(r"[VUR][^/]*\.sql\.conf", name):
        return "a Flyway script configuration file (.sql.conf), which migsync does not read"
    m = _OTHER_LANGUAGE.match(name)
    if m is None:
        return None
    ext = m["ext"].lower()
    return _LANGUAGES.get(ext, f"a migration in another language (.{ext})")


def read_text(path: Path) -> str:
    """The file's text as UTF-8 (a BOM is allowed), or a SourceError saying where it is not."""
    return decode(read_bytes(path), path)


def read_bytes(path: Path | str) -> bytes:
    """The file's bytes; a FIFO, a device, a symlink loop is a SourceError, never a hang."""
    try:
        return files.read_regular(path)
    except OSError as exc:
        raise SourceError(f"cannot read file: {files.reason(exc)}", path) from exc


def decode(data: bytes, path: Path) -> str:
    """``data`` as UTF-8 text (a BOM is allowed) without NUL bytes, or a SourceError saying
    where it is not."""
    # Not the "utf-8-sig" codec: its error offsets do not count the BOM.
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise SourceError(
            f"not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); save the file as UTF-8",
            path,
            line,
        ) from exc
    # Valid UTF-8 may hold NUL: a binary file, or UTF-16 without a BOM. A driver would cut
    # the SQL short at it (SQLite) or refuse it mid-apply (Postgres): refuse it here.
    offset = data.find(b"\0", bom)
    if offset >= 0:
        line = data.count(b"\n", 0, offset) + 1
        raise SourceError(
            f"NUL byte at line {line} (offset {offset}): migration files are text; save the file as UTF-8",
            path,
            line,
        )
    return text
