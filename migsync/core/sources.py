"""Load a directory of migration files into ``Migration`` records.

Every file is offered to the registered formats (:mod:`migsync.core.formats`)
in priority order; the first that matches its name owns it. Files whose
suffix no format is responsible for (``README.md``, ``.gitkeep``) and hidden
files are ignored; a ``.sql`` file that fits no format is an error.

Validation is complete before anything is returned: a source with any error
yields no migrations at all, so nothing is applied from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from migsync.core.errors import SourceError
from migsync.core.formats import FileName, NativeFormat, PairedFormat, Section, SourceFormat
from migsync.core.migration import ANY_DIALECT, Migration, Script


def builtin_formats() -> list[SourceFormat]:
    return [PairedFormat(), NativeFormat()]


def load_directory(
    directory: str | Path, formats: Sequence[SourceFormat] | None = None
) -> list[Migration]:
    """The migrations in ``directory``, sorted by version.

    Raises :class:`SourceError` naming the file (and line) of the first
    problem: a name that fits no format, two migrations with one version,
    a native file without an up section, text that is not UTF-8.
    """
    root = Path(directory)
    if not root.is_dir():
        raise SourceError("migrations directory does not exist or is not a directory", root)
    formats = list(formats) if formats is not None else builtin_formats()
    suffixes = {suffix for fmt in formats for suffix in fmt.suffixes}
    claimed: list[tuple[SourceFormat, FileName, Path]] = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        owner = _claim(formats, path.name)
        if owner is None:
            if any(path.name.endswith(suffix) for suffix in suffixes):
                expected = " or ".join(f.pattern_help for f in formats if f.pattern_help)
                raise SourceError(f"file name fits no migration format (expected {expected})", path)
            continue
        claimed.append((owner[0], owner[1], path))
    return _assemble(
        (file, fmt.parse(file, read_text(path), path)) for fmt, file, path in claimed
    )


def _claim(formats: Sequence[SourceFormat], filename: str) -> tuple[SourceFormat, FileName] | None:
    for fmt in formats:
        file = fmt.match(filename)
        if file is not None:
            return fmt, file
    return None


def read_text(path: Path) -> str:
    """The file's text as UTF-8 (a BOM is allowed), or a SourceError saying where it is not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror}", path) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8",
            path,
            line,
        ) from exc


def _assemble(files: Iterable[tuple[FileName, list[Section]]]) -> list[Migration]:
    by_version: dict[int, tuple[str, Path | None, dict[tuple[str, str], Section]]] = {}
    for file, sections in files:
        first_path = sections[0].path if sections else None
        entry = by_version.get(file.version)
        if entry is None:
            entry = (file.name, first_path, {})
            by_version[file.version] = entry
        elif entry[0] != file.name:
            raise SourceError(
                f"version {file.version} is used twice: by {entry[1]} and by this file",
                first_path,
            )
        slots = entry[2]
        for section in sections:
            key = (section.direction, section.dialect)
            other = slots.get(key)
            if other is not None:
                which = "generic" if section.dialect == ANY_DIALECT else section.dialect
                raise SourceError(
                    f"version {file.version} has two {section.direction} scripts for {which}: "
                    f"{other.path} and this file",
                    section.path,
                )
            slots[key] = section
    migrations = []
    for version in sorted(by_version):
        name, path, slots = by_version[version]
        if not any(direction == "up" for direction, _ in slots):
            raise SourceError(f"migration {name} has a down script but no up script", path)
        up = {d: Script(s.sql, s.autocommit) for (direction, d), s in slots.items() if direction == "up"}
        down = {
            d: Script(s.sql, s.autocommit) for (direction, d), s in slots.items() if direction == "down"
        }
        migrations.append(Migration(version, name, up, down, source=str(path) if path else None))
    return migrations
