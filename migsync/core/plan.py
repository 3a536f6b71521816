"""What ``migsync apply`` would do, worked out without doing it: ``apply --dry-run``.

:func:`plan_apply` reads the database's history (read-only, see
:mod:`migsync.core.inspection`), sets the folder beside it and lists, in the
order ``apply`` would run them, the migrations that would run and each one's
statements: the script for the database's dialect, its transaction wrapper
blanked out as the handler does (:func:`migsync.core.script_check.runnable`),
split as the backend splits it (:func:`migsync.core.splitter.split`).

It refuses what ``apply`` would refuse (an applied migration whose file
changed, a new one older than an applied one) with the same errors, and says
where ``apply`` would stop: at a dirty database, a dead migration, a hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from migsync.core import script_check
from migsync.core.backend import TRANSACTIONAL_DDL, Backend
from migsync.core.errors import ChecksumMismatch, DatabaseMissing, MigrationError
from migsync.core.handler import dirty_message
from migsync.core.inspection import History, compare, read_history, stored_migrations
from migsync.core.migration import Migration
from migsync.core.splitter import Statement, split


@attrs.frozen
class Step:
    """One migration ``apply`` would run, with the statements it would send."""

    migration: Migration
    statements: list[Statement]
    outside_transaction: bool
    #: The file and line its up script starts at, when it came from a file.
    origin: tuple[str, int] | None = None
    #: Why it might not go as planned (it failed before; the database would refuse its script).
    note: str | None = None


@attrs.frozen
class Plan:
    steps: list[Step]
    history: History
    #: Where ``apply`` would stop before the end of the list, and why (a dirty or dead migration).
    stops: str | None = None
    #: The database does not exist yet: ``apply`` would create it.
    creates_database: bool = False


async def plan_apply(backend: Backend, migrations: Sequence[Migration]) -> Plan:
    """The plan for applying ``migrations`` to ``backend``, which the caller opens read-only.

    A SQLite file that does not exist is a database with nothing recorded (``apply``
    would create it); ``backend`` is then left closed.
    """
    try:
        await backend.open()
    except DatabaseMissing:
        return _plan(backend, migrations, History(None), {}, creates=True)
    try:
        history = await read_history(backend)
        if history.unreadable:
            raise MigrationError(history.note() or history.unreadable)
        names = {m.name for m in migrations}
        elsewhere = [s.name for s in history.states if s.state != "applied" and s.name not in names]
        repeatable = [m.name for m in migrations if m.repeatable]
        stored = await stored_migrations(backend, [*elsewhere, *repeatable]) if history.layout else {}
    finally:
        await backend.close()
    return _plan(backend, migrations, history, stored)


def _plan(
    backend: Backend,
    migrations: Sequence[Migration],
    history: History,
    stored: dict[str, Migration],
    *,
    creates: bool = False,
) -> Plan:
    comparison = compare(history.states, migrations, stored)
    for changed in comparison.changed:
        state, migration = changed.state, changed.migration
        raise ChecksumMismatch(
            f"migration {state.name} was applied with checksum {state.checksum[:12]}, but "
            f"{migration.source or 'its source'} now has {migration.checksum[:12]}; apply would "
            "refuse the folder: an applied migration must not change"
        )
    if comparison.out_of_order:
        late = comparison.out_of_order[0]
        raise MigrationError(
            f"migration {late.name} is older than the newest applied one; apply would refuse it: "
            "migrations apply in version order, so give it a version after the newest applied one"
        )
    states = {s.name: s for s in history.states}
    dirty = next((s for s in history.states if s.state == "dirty"), None)
    if dirty is not None:
        return Plan([], history, stops=dirty_message(dirty.name), creates_database=creates)
    # What apply would run: the folder's pending ones and those recorded (by a sync) but not
    # applied, versioned ones by version, then the repeatable ones, as the ledger places them.
    folder_pending = {m.name for m in comparison.pending}
    recorded = [stored[s.name] for s in history.states if s.name in stored and s.name not in folder_pending]
    todo = sorted(
        [*comparison.pending, *(m for m in recorded if not m.repeatable)],
        key=lambda m: (m.repeatable, m.version, m.name),
    )
    steps: list[Step] = []
    stops = None
    for migration in todo:
        now = states.get(migration.name)
        if now is not None and now.state == "dead":
            stops = (
                f"{now.name} is dead (it failed {now.attempts} times): apply stops there; "
                f"'migsync queue --db URL {now.name}' revives it"
            )
            break
        if now is not None and now.held:
            stops = f"{now.name} is held (the server asked this client to revert it): apply stops there"
            break
        note = None
        if now is not None and now.state == "failed":
            note = f"it failed before ({now.error}); it runs when its backoff ends, or with --retry-now"
        steps.append(_step(backend, migration, note))
    return Plan(steps, history, stops=stops, creates_database=creates)


def _step(backend: Backend, migration: Migration, note: str | None) -> Step:
    dialect = backend.dialect
    script = migration.script("up", dialect)
    outside = script.autocommit or TRANSACTIONAL_DDL not in backend.capabilities
    try:
        sql = script_check.runnable(script.sql, dialect, autocommit=outside)
    except script_check.ScriptRefused as exc:
        note = f"it would fail: {exc}"
        sql = script.sql
    return Step(migration, split(sql, dialect), outside, migration.origin("up", dialect), note)


__all__ = ["Plan", "Step", "plan_apply"]
