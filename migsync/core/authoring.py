"""``migsync new``: the next migration file(s), in the folder's own convention.

The folder is read as the loader reads it (:func:`migsync.core.sources.scan_directory`,
contents unparsed); the newest migration decides:

* the format: the one that read the newest file (or ``format=``), which
  writes the files (:meth:`SourceFormat.new_files
  <migsync.core.formats.base.SourceFormat.new_files>`);
* the numbering: a 14-digit version that is a date (``20240105120000``)
  means timestamps, the next one being now in UTC, ``YYYYMMDDHHMMSS`` (from
  the :class:`~migsync.core.clock.Clock`, so tests can fix it); any other
  means a sequence, the next number in the same zero-padded width
  (``0007`` -> ``0008``; Flyway's ``1_2`` -> ``1_3``);
* whether down scripts get files of their own (Flyway's ``U`` files, sqlx's
  ``.down.sql``): only if the folder has some.

An empty (or missing) folder gets dbmate's format, the native one, with a
timestamp. Nothing is written if any file of the new version exists, or if
the new version would not be newer than every migration there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from migsync.core.clock import Clock, SystemClock
from migsync.core.detect import find_format
from migsync.core.errors import ConfigError, SourceError
from migsync.core.formats import FileName, NewMigration, SourceFormat
from migsync.core.sources import builtin_formats, scan_directory
from migsync.core.version import Version

#: The format of a folder that has no migrations yet: dbmate's.
DEFAULT_FORMAT = "native"
TIMESTAMP = "%Y%m%d%H%M%S"
_LEADING_DIGITS = re.compile(r"\d+")
_FLYWAY_VERSION = re.compile(r"[VU](?P<version>\d+(?:[._]\d+)*)")


def slug(name: str) -> str:
    """A migration's description from what a person typed: spaces become ``_``; a path is refused."""
    text = "_".join(name.split())
    if not text:
        raise ConfigError("the migration needs a name, e.g. 'migsync new add_users --migrations DIR'")
    if "/" in text or "\\" in text or text in (".", ".."):
        raise ConfigError(f"migration name {name!r} is a path; give a plain name such as add_users")
    return text


def new_migration(
    directory: str | Path,
    name: str,
    formats: Sequence[SourceFormat] | None = None,
    *,
    format: str | None = None,
    clock: Clock | None = None,
) -> list[Path]:
    """Write the next migration called ``name`` into ``directory``; the paths written."""
    root = Path(directory)
    formats = list(formats) if formats is not None else builtin_formats()
    description = slug(name)
    readings = _readings(root, formats, format)
    fmt, newest, down = _convention(readings, formats, format)
    version = _next_version(newest, fmt, (clock or SystemClock()).now())
    files = fmt.new_files(NewMigration(version, description, down))
    if files is None:
        raise ConfigError(f"format {fmt.name!r} cannot write new migrations; write the file by hand")
    new = Version.parse(version)
    taken = [(file, path) for _, file, path in readings if not file.repeatable and file.version == new]
    if taken:
        raise SourceError(f"a migration of version {version} exists already ({taken[0][1]})", root)
    latest = max((file.version for _, file, _ in readings if not file.repeatable), default=None)
    if latest is not None and new < latest:
        raise SourceError(
            f"the new version {version} is older than the newest migration's ({latest}): the "
            "clock is behind the folder's timestamps; fix the clock or name the file by hand",
            root,
        )
    paths = [root / relative for relative in files]
    for path in paths:
        if path.exists():
            raise SourceError("exists already; nothing was written", path)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for path, text in zip(paths, files.values(), strict=True):
            path.parent.mkdir(exist_ok=True)
            with path.open("x", encoding="utf-8", newline="\n") as out:
                out.write(text)
            written.append(path)
    except FileExistsError as exc:  # made meanwhile by someone else: take back our half
        for path in written:
            path.unlink(missing_ok=True)
        raise SourceError("exists already; nothing was written", exc.filename) from None
    return paths


def _readings(
    root: Path, formats: Sequence[SourceFormat], format: str | None
) -> list[tuple[SourceFormat, FileName, str]]:
    if not root.exists():
        return []
    # Migrations in other languages are someone else's business here ('validate' reports them).
    snapshot = scan_directory(root, formats, format=format, order="name", ignore_unknown=True)
    return [(fmt, file, path) for fmt, file, path, _ in snapshot.files]


def _convention(
    readings: Sequence[tuple[SourceFormat, FileName, str]],
    formats: Sequence[SourceFormat],
    format: str | None,
) -> tuple[SourceFormat, tuple[SourceFormat, FileName] | None, bool | None]:
    """The format to write in, the newest migration (None: there is none) and the down habit."""
    versioned = [(fmt, file) for fmt, file, _ in readings if not file.repeatable]
    if not versioned:
        chosen = find_format(formats, format or DEFAULT_FORMAT)
        return chosen, None, (None if not readings else False)
    newest = max(versioned, key=lambda pair: (pair[1].version, pair[1].name))
    fmt = find_format(formats, format) if format is not None else newest[0]
    down = any(file.direction == "down" for _, file in versioned)
    return fmt, newest, down


def _next_version(newest: tuple[SourceFormat, FileName] | None, fmt: SourceFormat, now: float) -> str:
    stamp = time.strftime(TIMESTAMP, time.gmtime(now))
    if newest is None:
        return stamp
    spelt = _spelling(*newest)
    if _is_timestamp(spelt):
        return stamp
    # The last part goes up by one in its own width; separators stay: 0007, 1_2, 1.2.9.
    parts = re.split(r"([._])", spelt)
    parts[-1] = str(int(parts[-1]) + 1).rjust(len(parts[-1]), "0")
    return "".join(parts)


def _spelling(fmt: SourceFormat, file: FileName) -> str:
    """The newest migration's version as its file name spells it (``0007``, ``1_2``)."""
    found = _FLYWAY_VERSION.match(file.name) if fmt.name == "flyway" else None
    if found is not None:
        return found["version"]
    digits = _LEADING_DIGITS.match(file.name)
    return digits.group() if digits is not None else file.version.text


def _is_timestamp(spelt: str) -> bool:
    if len(spelt) != 14 or not spelt.isdigit():
        return False
    try:
        time.strptime(spelt, TIMESTAMP)
    except ValueError:
        return False
    return True


__all__ = ["DEFAULT_FORMAT", "new_migration", "slug"]
