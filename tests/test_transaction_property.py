"""Property: whatever the transaction control, failures and table rebuilds, history equals schema.

Hypothesis writes migration sets: tables with rows, children that cascade from a parent,
SQLite table rebuilds (SQLite's own procedure, ``PRAGMA foreign_keys=OFF`` and all), row
inserts; some wrapped in ``BEGIN; ... COMMIT;``, some failing half-way, some with transaction
control in the middle. migsync applies each set to a real database. Then:

* a set with transaction control in the middle is refused whole, before anything runs;
* otherwise every migration before the first failing one is applied, the failing one is
  failed with one attempt, the rest wait; the tables are exactly those the applied ones made;
* no row is lost: every table holds the rows its applied migrations put there.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import attrs
import pytest
from conftest import write_migrations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migsync import Client, RetryPolicy, load_directory
from migsync.core.errors import SourceError
from migsync.testing import FakeClock


@attrs.frozen
class Step:
    kind: str  # "create", "rebuild", "insert"
    target: int  # create: the new table's number; rebuild, insert: an existing table's
    rows: int = 0
    parent: int | None = None  # the table that this one's rows reference, cascading
    wrapped: bool = False
    fails: bool = False
    control: bool = False  # a COMMIT in the middle: the loader must refuse the set


@st.composite
def migration_sets(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    made: list[int] = []
    parents: dict[int, int | None] = {}  # each table's parent, for rebuilds
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["create", "create", "rebuild", "insert"]) if made else st.just("create"))
        flags = {
            "wrapped": draw(st.booleans()),
            "fails": draw(st.integers(0, 7)) == 0,
            "control": draw(st.integers(0, 9)) == 0,
        }
        if kind == "create":
            parent = draw(st.sampled_from([None, *made]))
            step = Step("create", len(made), draw(st.integers(0, 4)), parent, **flags)
            parents[len(made)] = parent
            made.append(len(made))
        else:
            target = draw(st.sampled_from(made))
            step = Step(kind, target, draw(st.integers(1, 3)), parents[target], **flags)
        steps.append(step)
    return steps


def body(step: Step, dialect: str) -> list[str]:
    t = f"t{step.target}"
    if step.kind == "create":
        ref = (
            f", parent_id INTEGER REFERENCES t{step.parent}(id) ON DELETE CASCADE"
            if step.parent is not None
            else ""
        )
        sql = [f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT{ref})"]
        for i in range(1, step.rows + 1):
            parent_id = ", 1" if step.parent is not None else ""
            columns = "id, v, parent_id" if step.parent is not None else "id, v"
            sql.append(f"INSERT INTO {t} ({columns}) VALUES ({i}, 'r{i}'{parent_id})")
        return sql
    if step.kind == "insert":
        return [f"INSERT INTO {t} (id, v) SELECT coalesce(max(id), 0) + 1, 'more' FROM {t}"] * step.rows
    if dialect == "postgresql":
        return [f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS extra{step.rows} TEXT DEFAULT 'x'"]
    # SQLite's procedure: new table, copy, drop the old one (its children must survive), rename.
    ref, columns, values = "", "id, v", "id, coalesce(v, '')"
    if step.parent is not None:
        ref = f", parent_id INTEGER REFERENCES t{step.parent}(id) ON DELETE CASCADE"
        columns, values = f"{columns}, parent_id", f"{values}, parent_id"
    return [
        "PRAGMA foreign_keys=OFF",
        f"CREATE TABLE {t}_new (id INTEGER PRIMARY KEY, v TEXT NOT NULL DEFAULT ''{ref})",
        f"INSERT INTO {t}_new ({columns}) SELECT {values} FROM {t}",
        f"DROP TABLE {t}",
        f"ALTER TABLE {t}_new RENAME TO {t}",
        "PRAGMA foreign_keys=ON",
    ]


def script(step: Step, dialect: str) -> str:
    statements = body(step, dialect)
    if step.control:
        statements.insert(len(statements) // 2 + 1, "COMMIT")
    if step.fails:
        statements.append("INSERT INTO no_such_table VALUES (1)")
    if step.wrapped:
        statements = ["BEGIN", *statements, "COMMIT"]
    return "".join(f"{s};\n" for s in statements)


def expected(steps: list[Step]) -> tuple[int, dict[str, int]]:
    """How many migrations apply, and the rows of each table they leave."""
    rows: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.fails:
            return index, rows
        t = f"t{step.target}"
        if step.kind == "create":
            # A child of an empty parent references a row that is not there: a violation the
            # migration made, so it fails (SQLite checks the keys; Postgres enforces them).
            if step.parent is not None and step.rows and rows[f"t{step.parent}"] == 0:
                return index, rows
            rows[t] = step.rows
        elif step.kind == "insert":
            rows[t] += step.rows
    return len(steps), rows


async def apply_and_observe(steps: list[Step], url: str, directory: Path, dialect: str) -> None:
    files = {f"{i + 1:04d}_m{i + 1}.up.sql": script(step, dialect) for i, step in enumerate(steps)}
    write_migrations(directory, files)
    async with Client.connect(url, clock=FakeClock(), retry=RetryPolicy(base=60, jitter=0)) as client:
        if any(step.control for step in steps):
            with pytest.raises(SourceError, match="is transaction control"):
                load_directory(directory)
            assert await user_tables(client, dialect) == {}
            return
        await client.apply(load_directory(directory))
        applied, rows = expected(steps)
        states = [(s.state, s.attempts) for s in await client.status()]
        want = [("applied", 1)] * applied
        if applied < len(steps):
            want += [("failed", 1)] + [("pending", 0)] * (len(steps) - applied - 1)
        assert states == want
        assert await user_tables(client, dialect) == rows


async def user_tables(client: Client, dialect: str) -> dict[str, int]:
    if dialect == "sqlite":
        names = "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 't%'"
    else:
        names = "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 't%'"
    found = {}
    for row in await client.backend.fetch(names):
        counted = await client.backend.fetch(f"SELECT count(*) AS n FROM {row['name']}")
        found[row["name"]] = int(counted[0]["n"])
    return found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=migration_sets())
def test_property_sqlite_history_equals_schema_and_no_row_is_lost(steps: list[Step]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="migsync-prop-"))
    try:
        asyncio.run(apply_and_observe(steps, f"sqlite:///{folder / 'app.db'}", folder / "m", "sqlite"))
    finally:
        shutil.rmtree(folder)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=migration_sets())
def test_property_postgres_history_equals_schema_and_no_row_is_lost(steps: list[Step], pg_url: str) -> None:
    async def reset() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await conn.close()

    folder = Path(tempfile.mkdtemp(prefix="migsync-prop-"))
    try:
        asyncio.run(reset())
        asyncio.run(apply_and_observe(steps, pg_url, folder / "m", "postgresql"))
    finally:
        shutil.rmtree(folder)
