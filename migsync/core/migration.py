"""The ``Migration`` record and its checksum.

A migration is identified by its ``version`` (the sortable prefix of its
file name, a :class:`~migsync.core.version.Version`: digits of any length, or
Flyway's dotted parts) and carries, per direction, one :class:`Script` per
dialect. The key :data:`ANY_DIALECT` holds the generic script used by every
dialect that has no script of its own. A dialect with no script at all runs
nothing: the migration is a no-op there, but still recorded as applied.

A down script that is present but empty is recorded as such (``"down":
{"*": {"sql": ""}}``), apart from no down script at all (``"down": {}``):
the first reverts as a deliberate no-op, the second cannot be reverted
(see :meth:`Migration.irreversible`).

The checksum is the sha256 of the migration's canonical content (a JSON
document with sorted keys, line endings normalised to ``\\n`` and outer
whitespace stripped), so it does not depend on the file layout the
migration came from: a native file and the equivalent golang-migrate pair
have the same checksum.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from migsync.core import dialects
from migsync.core.version import Version, as_version

ANY_DIALECT = "*"

Direction = Literal["up", "down"]


_FLYWAY_NAME = re.compile(r"[VUR][0-9]*(?:[._][0-9]+)*__(?P<description>.*)")


def description_of(name: str) -> str:
    """A migration's name without its version: ``create_users`` of ``0001_create_users`` and of
    Flyway's ``V1_2__create_users``; a name that is a version alone (``0157``) is its own."""
    flyway = _FLYWAY_NAME.fullmatch(name)
    if flyway is not None and flyway["description"]:
        return flyway["description"]
    prefix, _, rest = name.partition("_")
    return rest if prefix.isdigit() and rest else name


def normalise_sql(sql: str) -> str:
    return sql.replace("\r\n", "\n").replace("\r", "\n").strip()


def first_line_offset(sql: str) -> int:
    """How many lines :func:`normalise_sql` strips from the start of ``sql``."""
    text = sql.replace("\r\n", "\n").replace("\r", "\n")
    return text[: len(text) - len(text.lstrip())].count("\n")


def origins_lookup(
    origins: Mapping[str, tuple[str, int]], direction: str, dialect: str
) -> tuple[str, int] | None:
    """The origin of the script a dialect runs: its own, else the generic one's."""
    return origins.get(f"{direction}:{dialect}") or origins.get(f"{direction}:{ANY_DIALECT}")


@attrs.frozen
class Script:
    """The SQL of one direction for one dialect.

    ``autocommit`` scripts must run outside a transaction (``CREATE INDEX
    CONCURRENTLY``, ``VACUUM``): each statement commits on its own.
    """

    sql: str = attrs.field(converter=normalise_sql)
    autocommit: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"sql": self.sql, "autocommit": self.autocommit}


EMPTY = Script("")


def _freeze(scripts: Mapping[str, Script]) -> Mapping[str, Script]:
    return dict(sorted(scripts.items()))


@attrs.frozen
class Migration:
    """One migration, as loaded from a source or read back from a database.

    ``version`` takes a :class:`Version`, its text (``"20150100000001000000"``,
    ``"1.2.10"``) or an int.
    """

    version: Version = attrs.field(converter=as_version)
    name: str
    up: Mapping[str, Script] = attrs.field(converter=_freeze, factory=dict)
    down: Mapping[str, Script] = attrs.field(converter=_freeze, factory=dict)
    #: A repeatable migration (Flyway's ``R__x.sql``): applied after the versioned ones and
    #: again whenever its scripts change; its version is where the ledger placed it, just
    #: after the newest versioned migration (see :mod:`migsync.core.ledger`).
    repeatable: bool = attrs.field(default=False, kw_only=True)
    source: str | None = attrs.field(default=None, eq=False)
    #: Where each script came from, ``"up:sqlite"`` -> (file, line its SQL starts on).
    #: For error messages only: not part of the content or the checksum.
    origins: Mapping[str, tuple[str, int]] = attrs.field(factory=dict, eq=False)
    checksum: str = attrs.field(init=False, eq=False)
    #: The canonical content, made once: the checksum covers it and the ledger stores it.
    _content: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        content = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "_content", content)
        object.__setattr__(self, "checksum", hashlib.sha256(content.encode()).hexdigest())

    @property
    def description(self) -> str:
        """The name without its version prefix (``create_users``), see :func:`description_of`."""
        return description_of(self.name)

    def origin(self, direction: Direction, dialect: str) -> tuple[str, int] | None:
        """The file and first line of the script :meth:`script` returns, if known."""
        return origins_lookup(self.origins, direction, dialect)

    def script(self, direction: Direction, dialect: str) -> Script:
        """The script to run for ``dialect``: its own, else the generic one, else a no-op."""
        scripts = self.up if direction == "up" else self.down
        dialect = dialects.lookup(dialect) or dialect
        for key in (dialect, ANY_DIALECT):
            if key in scripts:
                return scripts[key]
        return EMPTY

    def has_script(self, direction: Direction, dialect: str) -> bool:
        """Whether ``dialect`` has a script of its own or a generic one (an empty one counts)."""
        scripts = self.up if direction == "up" else self.down
        return (dialects.lookup(dialect) or dialect) in scripts or ANY_DIALECT in scripts

    def irreversible(self, dialect: str) -> bool:
        """Whether reverting it on ``dialect`` would leave its up script's work in place.

        True when ``dialect`` runs a non-empty up script but has no down script.
        An empty down script (``-- migrate:down`` with nothing under it, an empty
        ``.down.sql``) is a deliberate no-op and reverts; so does a migration that
        runs nothing on ``dialect`` at all.
        """
        return bool(self.script("up", dialect).sql) and not self.has_script("down", dialect)

    def requirements(self) -> tuple[Any, ...]:
        """What its ``-- migsync:requires`` lines say of the app versions that can run it
        (:class:`migsync.core.requires.Requirement`); a malformed one is a :class:`SourceError`."""
        from migsync.core import requires

        scripts = []
        for dialect, script in self.up.items():
            file, line = self.origins.get(f"up:{dialect}") or (self.source or self.name, 1)
            scripts.append((script.sql, file, line))
        return requires.of_scripts(scripts)

    def dialects(self) -> set[str]:
        return (set(self.up) | set(self.down)) - {ANY_DIALECT}

    def canonical_content(self) -> str:
        """The JSON document the checksum covers (sorted keys, no spaces)."""
        return self._content

    def to_json(self) -> dict[str, Any]:
        content: dict[str, Any] = {
            # A one-part version stays a JSON number, as it always was, so the checksum of
            # every migration recorded before versions could be dotted is unchanged. (The
            # content is hashed and signed as text: a big number in it loses nothing.)
            "version": self.version.text if self.version.dotted else self.version.parts[0],
            "name": self.name,
            "up": {d: s.to_json() for d, s in self.up.items()},
            "down": {d: s.to_json() for d, s in self.down.items()},
        }
        if self.repeatable:  # only then: every other checksum stays as it was
            content["repeatable"] = True
        return content

    def same_scripts(self, other: Migration) -> bool:
        """Whether ``other`` has this one's name and scripts, whatever the versions."""
        return (self.name, self.up, self.down, self.repeatable) == (
            other.name,
            other.up,
            other.down,
            other.repeatable,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | None = None) -> Migration:
        def scripts(raw: Mapping[str, Any]) -> dict[str, Script]:
            return {d: Script(s["sql"], bool(s.get("autocommit", False))) for d, s in raw.items()}

        return cls(
            version=Version.parse(data["version"]),
            name=str(data["name"]),
            up=scripts(data.get("up", {})),
            down=scripts(data.get("down", {})),
            repeatable=bool(data.get("repeatable", False)),
            source=source,
        )


def irreversible_content(content: Mapping[str, Any], dialect: str) -> bool:
    """:meth:`Migration.irreversible` of a migration's stored content (its canonical JSON, parsed),
    without building the migration: reverting a thousand asks it a thousand times."""
    dialect = dialects.lookup(dialect) or dialect
    up, down = content.get("up", {}), content.get("down", {})
    script = up[dialect] if dialect in up else up.get(ANY_DIALECT)
    has_down = dialect in down or ANY_DIALECT in down
    return script is not None and bool(normalise_sql(script["sql"])) and not has_down
