"""Load a directory of migration files into ``Migration`` records.

Every file is offered to the registered formats (:mod:`migsync.core.formats`)
in priority order; the first that matches its name owns it. Files whose
suffix no format is responsible for (``README.md``, ``.gitkeep``) and hidden
files are ignored; a ``.sql`` file that fits no format is an error.

Validation is complete before anything is returned: a source with any error
yields no migrations at all, so nothing is applied from it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from migsync.core import files, script_check
from migsync.core.errors import SourceError
from migsync.core.formats import FileName, NativeFormat, PairedFormat, Section, SourceFormat
from migsync.core.migration import ANY_DIALECT, Migration, Script, first_line_offset
from migsync.core.version import Version

if TYPE_CHECKING:
    from migsync.core.plugins import Plugins

# Bump when parsing rules change, so that old digests no longer match.
_DIGEST_SALT = b"migsync-source-2\0"


def builtin_formats() -> list[SourceFormat]:
    return [PairedFormat(), NativeFormat()]


def plugin_formats(plugins: Plugins) -> list[SourceFormat]:
    """Every format the plugins registered (built-ins included), in priority order."""
    specs = sorted(plugins.source_formats, key=lambda spec: spec.priority)
    return [spec.load()() for spec in specs]


def load_directory(directory: str | Path, formats: Sequence[SourceFormat] | None = None) -> list[Migration]:
    """The migrations in ``directory``, sorted by version.

    Raises :class:`SourceError` naming the file (and line) of the first
    problem: a name that fits no format, two migrations with one version,
    a native file without an up section, text that is not UTF-8.
    """
    return scan_directory(directory, formats).migrations()


@attrs.frozen
class SourceSnapshot:
    """The migration files of a directory as read at one moment, parsed on demand.

    ``digest`` covers the files' names and bytes and the formats that read
    them: two snapshots with one digest hold the same migrations, so a client
    that recorded this digest already can skip parsing and recording.
    """

    directory: Path
    files: tuple[tuple[SourceFormat, FileName, str, bytes], ...]
    digest: str
    _parsed: list[list[Migration]] = attrs.field(factory=list, eq=False, repr=False, alias="_parsed")

    def migrations(self) -> list[Migration]:
        if not self._parsed:
            self._parsed.append(
                _assemble(
                    (file, path, fmt.parse(file, decode(data, path), path))
                    for fmt, file, path, data in ((f, n, Path(p), d) for f, n, p, d in self.files)
                )
            )
        return self._parsed[0]


def scan_directory(directory: str | Path, formats: Sequence[SourceFormat] | None = None) -> SourceSnapshot:
    """Read the migration files of ``directory`` (names checked, contents not yet parsed)."""
    root = Path(directory)
    formats = list(formats) if formats is not None else builtin_formats()
    # Case-insensitive: "001_x.SQL" must be reported, not silently skipped.
    suffixes = tuple({suffix.lower() for fmt in formats for suffix in fmt.suffixes})
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceError("migrations directory does not exist or is not a directory", root) from None
    except OSError as exc:
        raise SourceError(f"cannot read directory: {files.reason(exc)}", root) from exc
    digest = hashlib.sha256(_DIGEST_SALT + ",".join(type(f).__qualname__ for f in formats).encode())
    found = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        owner = _claim(formats, name)
        if owner is None and not name.lower().endswith(suffixes):
            continue  # README.md, .gitkeep: never looked at, so not even a symlink loop is an error
        # Plain strings, not Path objects, on this loop: it runs per file on every start.
        path = entry.path
        try:
            if entry.is_dir():
                continue
        except OSError as exc:  # a symlink loop: is_dir() cannot tell
            raise SourceError(f"cannot read file: {files.reason(exc)}", path) from exc
        if owner is None:
            expected = " or ".join(f.pattern_help for f in formats if f.pattern_help)
            raise SourceError(f"file name fits no migration format (expected {expected})", path)
        data = read_bytes(path)
        digest.update(b"\0%d\0%s\0" % (len(data), name.encode()))
        digest.update(data)
        found.append((owner[0], owner[1], path, data))
    return SourceSnapshot(root, tuple(found), digest.hexdigest())


def _claim(formats: Sequence[SourceFormat], filename: str) -> tuple[SourceFormat, FileName] | None:
    for fmt in formats:
        file = fmt.match(filename)
        if file is not None:
            return fmt, file
    return None


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


@attrs.define
class _Entry:
    name: str
    path: Path
    whole: bool  # a file that holds the whole migration (native): it shares it with no other
    slots: dict[tuple[str, str], Section] = attrs.Factory(dict)


def _assemble(files: Iterable[tuple[FileName, Path, list[Section]]]) -> list[Migration]:
    by_version: dict[Version, _Entry] = {}
    for file, file_path, sections in files:
        whole = file.direction is None
        entry = by_version.get(file.version)
        if entry is None:
            entry = _Entry(file.name, file_path, whole)
            by_version[file.version] = entry
        elif entry.name != file.name or entry.whole or whole:
            raise SourceError(
                f"version {file.version} is used twice: by {entry.path} and by this file",
                file_path,
            )
        slots = entry.slots
        for section in sections:
            key = (section.direction, section.dialect)
            other = slots.get(key)
            if other is not None:
                which = "generic" if section.dialect == ANY_DIALECT else section.dialect
                raise SourceError(
                    f"version {file.version} has two {section.direction} scripts for {which}: "
                    f"{other.path or 'another file'} and this file",
                    file_path,
                )
            slots[key] = section
    migrations = []
    for version, entry in sorted(by_version.items()):
        if not any(direction == "up" for direction, _ in entry.slots):
            raise SourceError(f"migration {entry.name} has a down script but no up script", entry.path)
        scripts: dict[str, dict[str, Script]] = {"up": {}, "down": {}}
        origins: dict[str, tuple[str, int]] = {}
        for (direction, dialect), section in entry.slots.items():
            script = Script(section.sql, section.autocommit)
            first_line = section.line + first_line_offset(section.sql)
            _check_script(script, dialect, section.path or entry.path, first_line)
            scripts[direction][dialect] = script
            if section.path is not None:
                origins[f"{direction}:{dialect}"] = (str(section.path), first_line)
        migrations.append(
            Migration(
                version, entry.name, scripts["up"], scripts["down"], source=str(entry.path), origins=origins
            )
        )
    return migrations


def _check_script(script: Script, dialect: str, path: Path, first_line: int) -> None:
    """Refuse a transactional script that holds transaction control (:mod:`migsync.core.script_check`)."""
    if script.autocommit:
        return
    found = script_check.problems(script.sql, dialect)
    if found:
        raise SourceError(script_check.explain(found), path, first_line + found[0].line - 1)
