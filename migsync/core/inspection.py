"""Looking at a client database without changing it, and comparing it with a migrations folder.

``migsync status``, ``apply --dry-run`` and ``validate --db`` open the
database with ``Client.connect(url, read_only=True)``, which creates nothing,
and read it here:

* :func:`read_history` reads the migration history if migsync's bookkeeping
  tables are there (``layout`` None when they are not: nothing is recorded,
  everything is pending). Tables of an older layout are read as they are
  (versions that were integers become versions); ``migsync apply`` upgrades
  them, never a command that only looks.
* :func:`compare` sets the history beside a folder's migrations: what is
  ``pending`` (in the folder, not applied), ``changed`` (applied with other
  content than the file has now), ``missing`` (applied, no longer in the
  folder) and which pending ones are ``out_of_order`` (older than an applied
  one, which ``apply`` refuses).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from migsync.core.backend import Backend, Params, Row
from migsync.core.errors import BackendError
from migsync.core.history_sql import history_sql
from migsync.core.ledger import HOLD_KEY, MigrationState, _read_status
from migsync.core.migration import Migration
from migsync.core.schema import SCHEMA_VERSION
from migsync.core.version import Version, VersionError


@attrs.frozen
class History:
    """What a client database has recorded, as read without writing."""

    #: The bookkeeping tables' layout (``migsync_meta.schema_version``); None: no tables yet.
    layout: int | None
    states: list[MigrationState] = attrs.Factory(list)
    #: Why the states could not be read (tables of another layout), else None.
    unreadable: str | None = None

    @property
    def outdated(self) -> bool:
        """The tables are of an older layout: the next ``migsync apply`` upgrades them."""
        return self.layout is not None and self.layout < SCHEMA_VERSION

    def note(self) -> str | None:
        """What a person should know about the tables themselves, or None."""
        if self.layout is None:
            return "no migsync tables yet: nothing is recorded, every migration is pending"
        if self.outdated:
            said = (
                f"migsync's tables are of layout {self.layout}; this migsync uses layout "
                f"{SCHEMA_VERSION}, and 'migsync apply' will upgrade them (status never does)"
            )
            return f"{said}; they cannot be read as they are: {self.unreadable}" if self.unreadable else said
        if self.unreadable:
            return f"migsync's tables (layout {self.layout}) cannot be read: {self.unreadable}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "current_layout": SCHEMA_VERSION, "note": self.note()}


async def read_history(backend: Backend) -> History:
    """The history of an open ``backend``, read with plain queries only (see the module docstring)."""
    sql = history_sql(backend.tables)
    try:
        rows = await backend.fetch(f"SELECT value FROM {sql.t.meta} WHERE key = 'schema_version'")
    except BackendError:
        return History(None)  # no bookkeeping tables
    if not rows:
        return History(None)
    layout = int(rows[0]["value"])
    fetch = backend.fetch if layout >= SCHEMA_VERSION else _keyed(backend.fetch)
    try:
        states = await _read_status(fetch, sql)
    except (BackendError, VersionError, KeyError, ValueError) as exc:
        if layout >= SCHEMA_VERSION and not isinstance(exc, BackendError):
            raise
        return History(layout, unreadable=str(exc))
    return History(layout, states)


def _keyed(fetch: Callable[..., Awaitable[list[Row]]]) -> Callable[..., Awaitable[list[Row]]]:
    """``fetch`` for tables of a layout before 5, whose version columns held integers."""

    async def keyed(query: str, params: Params = ()) -> list[Row]:
        rows = await fetch(query, params)
        hold = f"'{HOLD_KEY}'" in query  # the hold's version was written as the integer's text
        for row in rows:
            if isinstance(row.get("version"), int):
                row["version"] = Version((row["version"],)).key
            if hold and str(row.get("value", "")).isdigit():
                row["value"] = Version.parse(row["value"]).key
        return rows

    return keyed


async def stored_migrations(backend: Backend, names: Sequence[str]) -> dict[str, Migration]:
    """The recorded content of the migrations called ``names`` (those the folder lacks)."""
    import json

    t = history_sql(backend.tables).t
    found: dict[str, Migration] = {}
    for name in names:
        rows = await backend.fetch(f"SELECT content FROM {t.migrations} WHERE name = $1", (name,))
        if rows:
            found[name] = Migration.from_json(json.loads(rows[0]["content"]))
    return found


@attrs.frozen
class Changed:
    """An applied migration whose file now says something else."""

    state: MigrationState
    migration: Migration

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.state.version.text,
            "name": self.state.name,
            "file_name": self.migration.name,
            "file": self.migration.source,
            "applied_checksum": self.state.checksum,
            "file_checksum": self.migration.checksum,
        }


@attrs.frozen
class Comparison:
    """A database's history beside a folder's migrations (see the module docstring)."""

    pending: list[Migration]
    changed: list[Changed]
    missing: list[MigrationState]
    #: The pending migrations older than the newest applied one: ``apply`` refuses them.
    out_of_order: list[Migration]

    @property
    def clean(self) -> bool:
        """Nothing the database and the folder disagree on (pending work is not disagreement)."""
        return not self.changed and not self.missing and not self.out_of_order

    def to_json(self) -> dict[str, Any]:
        late = {m.name for m in self.out_of_order}
        return {
            "pending": [
                {
                    "version": None if m.repeatable else m.version.text,
                    "name": m.name,
                    "file": m.source,
                    "out_of_order": m.name in late,
                }
                for m in self.pending
            ],
            "changed": [c.to_json() for c in self.changed],
            "missing": [{"version": s.version.text, "name": s.name, "state": s.state} for s in self.missing],
        }


def compare(
    states: Sequence[MigrationState],
    migrations: Sequence[Migration],
    stored: dict[str, Migration] | None = None,
) -> Comparison:
    """Set ``states`` (a database's) beside ``migrations`` (a folder's): see :class:`Comparison`.

    Versioned migrations are matched by version, repeatable ones (Flyway's ``R__``, whose
    recorded version moves) by name. A repeatable one whose scripts differ from the
    ``stored`` ones (:func:`stored_migrations`) is pending: it runs again.
    """
    stored = stored or {}
    repeatable = {m.name for m in migrations if m.repeatable}
    by_version = {s.version: s for s in states if s.name not in repeatable}
    by_name = {s.name: s for s in states}
    newest_applied = max((s.version for s in by_version.values() if s.state == "applied"), default=None)
    pending: list[Migration] = []
    changed: list[Changed] = []
    late: list[Migration] = []
    seen: set[str] = set()
    for migration in migrations:
        state = by_name.get(migration.name) if migration.repeatable else by_version.get(migration.version)
        if state is not None:
            seen.add(state.name)
        applied = state is not None and state.state == "applied"
        if migration.repeatable:
            recorded = stored.get(migration.name)
            if not applied or recorded is None or not recorded.same_scripts(migration):
                pending.append(migration)
            continue
        if not applied:
            pending.append(migration)
            if newest_applied is not None and migration.version < newest_applied:
                late.append(migration)
        elif state is not None and (state.checksum != migration.checksum or state.name != migration.name):
            changed.append(Changed(state, migration))
    missing = [s for s in states if s.state == "applied" and s.name not in seen]
    return Comparison(pending, changed, missing, late)


__all__ = ["Changed", "Comparison", "History", "compare", "read_history", "stored_migrations"]
