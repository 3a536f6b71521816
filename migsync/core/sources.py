"""Load a directory of migration files into ``Migration`` records.

Every file is offered to the registered formats (:mod:`migsync.core.formats`).
Which format a folder is in is decided from all of its files at once:

1. Each file is claimed by the formats whose name pattern it fits. A format
   that finds its own mark in a file (dbmate's ``-- migrate:up``, goose's
   ``-- +goose Up``, sqlx's ``-- no-transaction``, a dialect infix in a
   paired name) takes it from the formats that merely fit its name; a format
   that needs a mark the file lacks lets it go (a ``.sql`` file without
   ``-- migrate:up`` is not native, it is sqlx's whole-file migration).
2. Formats come in groups whose files may share a folder (native and paired:
   migsync's own, as before; every other built-in is a group by itself). The
   folder is read by the first group, in priority order, that reads every
   file. When two groups read every file but some file differently, or no
   group reads them all, the folder is refused with the reason:
   ``--format NAME`` (``format=``) then says which format to use.

Files whose suffix no format is responsible for (``README.md``, ``.gitkeep``)
and hidden files are ignored; a ``.sql`` file that fits no format is an error,
and so is a file that looks like a migration in another language
(``0003_backfill.go``, ``.py``, ``.rb``, pop's ``.fizz``), unless
``ignore_unknown`` turns it into a warning (:attr:`SourceSnapshot.ignored`).

Migrations apply in version order, or with ``order="name"`` in the order of
their names (as dbmate and Prisma run them): files that share a number then
get versions ``N``, ``N.1``, ``N.2``, ... in name order.

Validation is complete before anything is returned: a source with any error
yields no migrations at all, so nothing is applied from it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

from migsync.core import files, script_check
from migsync.core.errors import ConfigError, SourceError
from migsync.core.formats import BUILTIN, FileName, Section, SourceFormat
from migsync.core.migration import ANY_DIALECT, Migration, Script, description_of, first_line_offset
from migsync.core.version import Version

if TYPE_CHECKING:
    from migsync.core.plugins import Plugins

Order = Literal["version", "name"]
ORDERS: tuple[Order, ...] = ("version", "name")

# Bump when parsing rules change, so that old digests no longer match.
_DIGEST_SALT = b"migsync-source-3\0"

#: Migrations in other languages: a version (or Flyway's prefix), then a code file's suffix.
_OTHER_LANGUAGE = re.compile(
    r"^(?:\d+|[VUR]\d*(?:[._]\d+)*__).*\.(?P<ext>go|py|rb|js|mjs|cjs|ts|java|kt|scala|fizz|sh|php|cs|rs|exs?)$",
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
                _assemble(
                    (
                        (file, path, fmt.parse(file, decode(data, path), path))
                        for fmt, file, path, data in ((f, n, Path(p), d) for f, n, p, d in self.files)
                    ),
                    self.order,
                )
            )
        return self._parsed[0]


@attrs.frozen
class _Candidate:
    """A file some format claims: its name in the folder, its path, the claims and its bytes."""

    name: str
    path: str
    claims: dict[SourceFormat, FileName]
    data: bytes


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
            f"{what}{more}: migsync runs SQL migration files only; rewrite it as SQL in this "
            "folder's format, or pass --ignore-unknown to skip such files with a warning",
            path,
        )
    ignored = tuple(f"{path}: {what}: skipped (--ignore-unknown)" for path, what in unknown)
    readings = _read_as(chosen, candidates) if chosen is not None else _detect(formats, candidates)
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


def find_format(formats: Sequence[SourceFormat], name: str) -> SourceFormat:
    """The format called ``name`` (or one of its aliases), or a ConfigError listing them."""
    wanted = name.strip().lower()
    for fmt in formats:
        if wanted == fmt.name.lower() or wanted in (a.lower() for a in fmt.aliases):
            return fmt
    known = ", ".join(_label(f) for f in formats)
    raise ConfigError(f"unknown migration format {name!r} (known: {known})")


def _label(fmt: SourceFormat) -> str:
    return f"{fmt.name} ({', '.join(fmt.aliases)})" if fmt.aliases else fmt.name


def _read_folder(
    root: Path, formats: Sequence[SourceFormat]
) -> tuple[list[_Candidate], list[tuple[str, str]]]:
    """The files some format claims, and the migrations in other languages (path, what)."""
    # Case-insensitive: "001_x.SQL" must be reported, not silently skipped.
    suffixes = tuple({suffix.lower() for fmt in formats for suffix in fmt.suffixes})
    flat = [f for f in formats if not f.nested]
    nested = [f for f in formats if f.nested]
    candidates: list[_Candidate] = []
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
        candidates.append(_Candidate(name, path, claims, read_bytes(path)))
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


def _read_sub_folder(folder: os.DirEntry[str], formats: Sequence[SourceFormat]) -> list[_Candidate]:
    found = []
    for entry in _entries(Path(folder.path)):
        if entry.name.startswith("."):
            continue
        name = f"{folder.name}/{entry.name}"
        claims = _claims(formats, name, entry.path)
        if claims:
            found.append(_Candidate(name, entry.path, claims, read_bytes(entry.path)))
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


def _read_as(
    fmt: SourceFormat, candidates: Sequence[_Candidate]
) -> list[tuple[SourceFormat, FileName, _Candidate]]:
    """Every file read in ``fmt`` (``--format``): a file it does not claim is an error."""
    readings = []
    for candidate in candidates:
        file = candidate.claims.get(fmt)
        if file is not None:
            readings.append((fmt, file, candidate))
        elif "/" not in candidate.name or fmt.nested:
            others = ", ".join(f.name for f in candidate.claims)
            raise SourceError(
                f"not a {fmt.name} migration file (expected {fmt.pattern_help}); it fits {others}",
                candidate.path,
            )
    return readings


@attrs.frozen
class _Readers:
    """Who may read a file: ``can`` (its marks decide), ``marked`` (found their mark in it),
    ``refused`` (claim its name but need a mark it lacks)."""

    can: list[SourceFormat]
    marked: set[SourceFormat]
    refused: list[SourceFormat]


def _readers(candidate: _Candidate) -> _Readers:
    sniffed = {fmt: fmt.sniff(file, candidate.data) for fmt, file in candidate.claims.items()}
    marked = {fmt for fmt, said in sniffed.items() if said is True}
    can = [fmt for fmt in candidate.claims if fmt in marked] or [
        fmt for fmt in candidate.claims if sniffed[fmt] is None
    ]
    refused = [fmt for fmt, said in sniffed.items() if said is False]
    # No format will have it: the first claimant reads it, and says what is wrong with it.
    return _Readers(can or [next(iter(candidate.claims))], marked, refused)


def _detect(
    formats: Sequence[SourceFormat], candidates: Sequence[_Candidate]
) -> list[tuple[SourceFormat, FileName, _Candidate]]:
    """Read every file in the first group of formats that reads them all (module docstring)."""
    groups: dict[str, list[SourceFormat]] = {}
    for fmt in formats:
        groups.setdefault(fmt.group, []).append(fmt)
    readers = [_readers(c) for c in candidates]
    viable: list[list[tuple[SourceFormat, FileName, _Candidate]]] = []
    for members in groups.values():
        reading = []
        for candidate, who in zip(candidates, readers, strict=True):
            reader = next((f for f in members if f in who.can), None)
            if reader is None:
                break
            reading.append((reader, candidate.claims[reader], candidate))
        else:
            viable.append(reading)
    if not viable:
        raise _mixed(formats, candidates, readers)
    first = viable[0]
    for other in viable[1:]:
        for (fmt_a, file_a, candidate), (fmt_b, file_b, _) in zip(first, other, strict=True):
            if file_a != file_b:
                raise SourceError(
                    f"reads one way as {fmt_a.name} ({file_a.name}, {_describe(file_a)}) and another "
                    f"as {fmt_b.name} ({file_b.name}, {_describe(file_b)}); pass --format NAME to say "
                    "which",
                    candidate.path,
                )
    return first


def _describe(file: FileName) -> str:
    what = f"version {file.version}"
    if file.direction is not None:
        what += f", {file.direction}"
    if file.dialect != ANY_DIALECT:
        what += f", {file.dialect} only"
    return what


def _mixed(
    formats: Sequence[SourceFormat], candidates: Sequence[_Candidate], readers: Sequence[_Readers]
) -> SourceError:
    """Why no one group reads every file: a file the likeliest group reads, one it does not."""
    groups = list(dict.fromkeys(f.group for f in formats))

    def weight(group: str) -> tuple[int, int]:
        # The files that carry a format's own marks say most about what the folder is meant to be.
        marked = sum(1 for who in readers if any(f.group == group for f in who.marked))
        return marked, sum(1 for who in readers if any(f.group == group for f in who.can))

    best = max(groups, key=weight)
    pairs = list(zip(candidates, readers, strict=True))
    bad, bad_who = next(p for p in pairs if not any(f.group == best for f in p[1].can))
    good, good_who = next(p for p in pairs if any(f.group == best for f in p[1].can))

    def how(who: _Readers) -> str:
        return " or ".join(
            f"{f.name} (it has {f.mark})" if f in who.marked and f.mark else f.name for f in who.can
        )

    lacks = "".join(
        f" (not as {f.name}: it has no {f.mark})" for f in bad_who.refused if f.group == best and f.mark
    )
    names = ", ".join(_label(f) for f in formats)
    return SourceError(
        f"this file reads as {how(bad_who)}{lacks}, but {good.name} reads as {how(good_who)}: "
        "the folder mixes formats, so no one format reads every file; make the files agree "
        f"(give this one what it lacks), or pass --format NAME to read the folder one way "
        f"(formats: {names})",
        bad.path,
    )


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


# -- from sections to migrations ---------------------------------------------------------------


@attrs.define
class _Entry:
    name: str
    path: Path
    version: Version
    whole: bool  # a file that holds the whole migration (native): it shares it with no other
    named: bool  # a file that names it has been seen (not only a companion, Flyway's undo)
    slots: dict[tuple[str, str], Section] = attrs.Factory(dict)


_TWICE_HINT = (
    "give each migration a version of its own, or pass --order name if your tool applies the files "
    "in the order of their names"
)


def _assemble(
    files: Iterable[tuple[FileName, Path, list[Section]]], order: Order = "version"
) -> list[Migration]:
    entries: dict[object, _Entry] = {}
    companions: list[tuple[FileName, Path, list[Section]]] = []
    repeatables: dict[str, _Entry] = {}
    for file, file_path, sections in files:
        if file.repeatable:
            repeatables[file.name] = _Entry(file.name, file_path, file.version, True, True)
            _fill(repeatables[file.name], file, file_path, sections)
            continue
        if file.companion:
            companions.append((file, file_path, sections))
            continue
        key: object = file.version if order == "version" else file.name
        entry = entries.get(key)
        whole = file.direction is None
        if entry is None:
            entries[key] = _Entry(file.name, file_path, file.version, whole, True)
        elif entry.name != file.name or entry.whole or whole:
            raise SourceError(
                f"version {file.version} is used twice: by {entry.path} and by this file; {_TWICE_HINT}",
                file_path,
            )
        _fill(entries[key], file, file_path, sections)
    for file, file_path, sections in companions:
        owners = [e for e in entries.values() if e.version == file.version]
        if not owners:
            entries[(file.version, file.name)] = owner = _Entry(
                file.name, file_path, file.version, False, False
            )
        elif len(owners) > 1:
            raise SourceError(
                f"version {file.version} belongs to {len(owners)} migrations here "
                f"({', '.join(e.name for e in owners)}), so it is not clear which one this file undoes",
                file_path,
            )
        else:
            owner = owners[0]
        _fill(owner, file, file_path, sections)
    ordered = [_migration(version, entry) for version, entry in _in_order(list(entries.values()), order)]
    return ordered + _repeatable(ordered, list(repeatables.values()))


def _repeatable(versioned: list[Migration], entries: list[_Entry]) -> list[Migration]:
    """The repeatable migrations, after the versioned ones, in the order of their descriptions.

    Each is placed just after the newest versioned migration (``V.0.1``, ``V.0.2``, ...), as
    the ledger places it again with what the database knows (:meth:`Ledger.record
    <migsync.core.ledger.Ledger.record>`). It reverts as a no-op: reverting marks it pending,
    and the next apply runs it again after the versioned ones.
    """
    newest = versioned[-1].version if versioned else Version((0,))
    placed = []
    for rank, entry in enumerate(sorted(entries, key=lambda e: description_of(e.name)), start=1):
        entry.slots.setdefault(("down", ANY_DIALECT), Section("down", ""))
        migration = _migration(repeatable_version(newest, rank), entry)
        placed.append(attrs.evolve(migration, repeatable=True))
    return placed


def repeatable_version(newest: Version, rank: int) -> Version:
    """Where the ``rank``-th repeatable migration goes: after ``newest``, before any later version."""
    return Version((*newest.parts, 0, rank))


def _fill(entry: _Entry, file: FileName, file_path: Path, sections: list[Section]) -> None:
    for section in sections:
        key = (section.direction, section.dialect)
        other = entry.slots.get(key)
        if other is not None:
            which = "generic" if section.dialect == ANY_DIALECT else section.dialect
            raise SourceError(
                f"version {file.version} has two {section.direction} scripts for {which}: "
                f"{other.path or 'another file'} and this file",
                file_path,
            )
        entry.slots[key] = section


def _in_order(entries: list[_Entry], order: Order) -> list[tuple[Version, _Entry]]:
    """Each migration with its version, in the order they apply."""
    if order == "version":
        return sorted(((e.version, e) for e in entries), key=lambda pair: pair[0])
    ordered: list[tuple[Version, _Entry]] = []
    previous: _Entry | None = None
    share = 0
    for entry in sorted(entries, key=lambda e: e.name):
        if previous is not None and entry.version == previous.version:
            share += 1
            version = Version((*entry.version.parts, share))
        elif previous is not None and entry.version < previous.version:
            raise SourceError(
                f"with --order name this migration comes after {previous.name}, whose number "
                f"{previous.version} is higher than its own {entry.version}: give it a number that "
                "sorts the same way as its name (pad the numbers with zeros), or use the default "
                "version order",
                entry.path,
            )
        else:
            share = 0
            version = entry.version
        ordered.append((version, entry))
        previous = entry
    return ordered


def _migration(version: Version, entry: _Entry) -> Migration:
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
    return Migration(
        version, entry.name, scripts["up"], scripts["down"], source=str(entry.path), origins=origins
    )


def _check_script(script: Script, dialect: str, path: Path, first_line: int) -> None:
    """Refuse a transactional script that holds transaction control (:mod:`migsync.core.script_check`)."""
    if script.autocommit:
        return
    found = script_check.problems(script.sql, dialect)
    if found:
        raise SourceError(script_check.explain(found), path, first_line + found[0].line - 1)
