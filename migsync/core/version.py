"""Migration versions: whole numbers of any length, and Flyway's dotted ones.

A version is one or more non-negative whole numbers: ``7``, the 14-digit
timestamps of dbmate and goose, the 20-digit ones of ory/pop
(``20150100000001000000``), Flyway's ``1.2.10`` (``V1_2_10__x.sql``). Versions
compare part by part, numerically: ``2 < 10 < 20150100000001000000`` and
``1.2.9 < 1.2.10``. Trailing zero parts do not count (``1.0`` is ``1``, as
Flyway has it), so two files that differ only so are one version, twice.

A version never becomes a machine integer, so nothing overflows: databases
store its :attr:`~Version.key`, a text whose plain text order is the version
order (each part as its digit count, two digits, then its digits; parts
joined by ``.``, which sorts before any digit), and the wire carries its
:attr:`~Version.text`, since a JSON number above 2**53 is rounded in
JavaScript.
"""

from __future__ import annotations

import functools
import re

import attrs

#: A part of more digits than this is refused (and cannot be a version anyone means).
MAX_DIGITS = 99

_TEXT = re.compile(r"[0-9]+(?:[._][0-9]+)*")
_KEY_PART = re.compile(r"([0-9]{2})([0-9]+)")


#: Versions parsed from text, by text: a folder of N files asks for each version several times
#: (every format that claims a name parses it) on every start, and a Version is immutable.
_PARSED: dict[str, Version] = {}
_PARSED_MAX = 100_000
#: Versions read back from stored keys, by key: the processor reads one per change it runs.
_FROM_KEY: dict[str, Version] = {}


class VersionError(ValueError):
    """Text that is not a version."""


def _parts_of(other: object) -> tuple[int, ...] | None:
    if isinstance(other, Version):
        return other.parts
    if isinstance(other, int) and not isinstance(other, bool) and other >= 0:
        return (other,)
    return None


def _normalised(parts: tuple[int, ...]) -> tuple[int, ...]:
    end = len(parts)
    while end > 1 and parts[end - 1] == 0:
        end -= 1
    return parts[:end]


@functools.total_ordering
@attrs.frozen(eq=False, order=False)
class Version:
    """A migration's version (see the module docstring). Build one with :meth:`parse`.

    A one-part version equals (and hashes as, and orders with) the int it is, as versions
    were ints before they could be dotted: ``Version.parse("0042") == 42``.
    """

    parts: tuple[int, ...] = attrs.field(converter=_normalised)

    def __eq__(self, other: object) -> bool:
        other_parts = _parts_of(other)
        return NotImplemented if other_parts is None else self.parts == other_parts

    def __lt__(self, other: object) -> bool:
        other_parts = _parts_of(other)
        return NotImplemented if other_parts is None else self.parts < other_parts

    def __hash__(self) -> int:
        return hash(self.parts[0]) if len(self.parts) == 1 else hash(self.parts)

    def __attrs_post_init__(self) -> None:
        if not self.parts or any(p < 0 for p in self.parts):
            raise VersionError(f"a version is one or more whole numbers, not {self.parts!r}")
        if any(len(str(p)) > MAX_DIGITS for p in self.parts):
            raise VersionError(f"a version part has more than {MAX_DIGITS} digits")

    @classmethod
    def parse(cls, text: str | int | Version) -> Version:
        """``"0042"``, ``"1.2.10"``, Flyway's ``"1_2_10"``, an int, or a Version as it is."""
        if isinstance(text, Version):
            return text
        cached = _PARSED.get(text) if isinstance(text, str) else None  # only valid text is kept
        if cached is not None and type(cached) is cls:
            return cached
        if isinstance(text, int) and not isinstance(text, bool):
            return cls((text,))
        if not isinstance(text, str) or not _TEXT.fullmatch(text):
            raise VersionError(f"{text!r} is not a version (digits, parts separated by '.' or '_')")
        version = cls(tuple(int(part) for part in re.split(r"[._]", text)))
        if len(_PARSED) < _PARSED_MAX:
            _PARSED[text] = version
        return version

    @classmethod
    def from_key(cls, key: str) -> Version:
        """The version a stored :attr:`key` stands for."""
        cached = _FROM_KEY.get(key)
        if cached is not None and type(cached) is cls:
            return cached
        parts = []
        for piece in key.split("."):
            found = _KEY_PART.fullmatch(piece)
            if found is None or int(found[1]) != len(found[2]) or found[2] != str(int(found[2])):
                raise VersionError(f"{key!r} is not a stored version key")
            parts.append(int(found[2]))
        version = cls(tuple(parts))
        if len(_FROM_KEY) < _PARSED_MAX:
            _FROM_KEY[key] = version
        return version

    @property
    def text(self) -> str:
        """How people and the wire spell it: ``"42"``, ``"1.2.10"`` (no leading zeros)."""
        return ".".join(str(p) for p in self.parts)

    @property
    def key(self) -> str:
        """A text whose order is the version order: ``"0242"``, ``"011.012.0210"``."""
        return ".".join(f"{len(str(p)):02d}{p}" for p in self.parts)

    @property
    def dotted(self) -> bool:
        return len(self.parts) > 1

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

    def to_json(self) -> str:
        return self.text


def as_version(value: str | int | Version) -> Version:
    """:meth:`Version.parse`, as a plain function (an attrs converter)."""
    return Version.parse(value)
