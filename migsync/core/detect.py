"""Which format a migrations directory is in, decided from all of its files at once.

1. Each file is claimed by the formats whose name pattern it fits. A format
   that finds its own mark in a file (:meth:`SourceFormat.sniff
   <migsync.core.formats.base.SourceFormat.sniff>`: dbmate's ``-- migrate:up``,
   goose's ``-- +goose Up``, sqlx's ``-- no-transaction``, a dialect infix in a
   paired name) takes it from the formats that merely fit its name; a format
   that needs a mark the file lacks lets it go.
2. Formats come in groups whose files may share a directory (native and
   paired; every other built-in is a group by itself). The directory is read
   by the first group, in priority order, that reads every file. When two
   groups read every file but some file differently, or no group reads them
   all, the directory is refused with the reason: ``--format NAME`` then says
   which format to use (:func:`read_as`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from migsync.core.errors import ConfigError, SourceError
from migsync.core.formats import FileName, SourceFormat
from migsync.core.migration import ANY_DIALECT


class Candidate(NamedTuple):
    """A file some format claims: its name in the folder, its path, the claims and its bytes.

    A named tuple, not an attrs class: one is made per file on every start.
    """

    name: str
    path: str
    claims: dict[SourceFormat, FileName]
    data: bytes


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


def read_as(
    fmt: SourceFormat, candidates: Sequence[Candidate]
) -> list[tuple[SourceFormat, FileName, Candidate]]:
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


class _Readers(NamedTuple):
    """Who may read a file: ``can`` (its marks decide), ``marked`` (found their mark in it),
    ``refused`` (claim its name but need a mark it lacks)."""

    can: list[SourceFormat]
    marked: list[SourceFormat]
    refused: list[SourceFormat]


def _readers(candidate: Candidate) -> _Readers:
    # One pass over the claims, in their order: this runs per file on every start.
    marked: list[SourceFormat] = []
    silent: list[SourceFormat] = []
    refused: list[SourceFormat] = []
    data = candidate.data
    for fmt, file in candidate.claims.items():
        said = fmt.sniff(file, data)
        if said is True:
            marked.append(fmt)
        elif said is None:
            silent.append(fmt)
        elif said is False:
            refused.append(fmt)
    # No format will have it: the first claimant reads it, and says what is wrong with it.
    return _Readers(marked or silent or [next(iter(candidate.claims))], marked, refused)


def detect(
    formats: Sequence[SourceFormat], candidates: Sequence[Candidate]
) -> list[tuple[SourceFormat, FileName, Candidate]]:
    """Read every file in the first group of formats that reads them all (module docstring)."""
    groups: dict[str, list[SourceFormat]] = {}
    for fmt in formats:
        groups.setdefault(fmt.group, []).append(fmt)
    readers = [_readers(c) for c in candidates]
    viable: list[list[tuple[SourceFormat, FileName, Candidate]]] = []
    for members in groups.values():
        reading = []
        for candidate, (can, _, _) in zip(candidates, readers, strict=True):
            # The first member that may read it (usually the first one asked, of one or two).
            for reader in members:
                if reader in can:
                    reading.append((reader, candidate.claims[reader], candidate))
                    break
            else:
                break
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
    formats: Sequence[SourceFormat], candidates: Sequence[Candidate], readers: Sequence[_Readers]
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
