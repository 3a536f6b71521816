"""SQL dialect names and their aliases.

Migration files may name a dialect the way their authors' tools do
(``sqlite3``, ``postgres``, ``cockroach``); everything inside migsync uses
the canonical name.
"""

from __future__ import annotations

from migsync.core.errors import ConfigError

#: alias -> canonical name
ALIASES: dict[str, str] = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "pg": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "cockroach": "cockroachdb",
    "cockroachdb": "cockroachdb",
}

CANONICAL: frozenset[str] = frozenset(ALIASES.values())


def canonical(name: str) -> str:
    """The canonical dialect for ``name``; a clear error for an unknown one."""
    try:
        return ALIASES[name.lower()]
    except KeyError:
        valid = ", ".join(sorted(ALIASES))
        raise ConfigError(f"unknown SQL dialect {name!r}; known: {valid}") from None


def lookup(name: str) -> str | None:
    """The canonical dialect for ``name``, or None if it is not a dialect name."""
    return ALIASES.get(name.lower())
