"""Capture a table's writes into the entity changes table, by triggers.

:func:`install` puts AFTER INSERT, UPDATE and DELETE row triggers on one of the
application's tables. Each written row adds one row to ``entity_changes``
inside the writer's own transaction, so a rolled-back write records nothing:

``entity``          the table's name (on Postgres qualified by its schema unless ``public``)
``entity_id``       the primary key as text; a composite key as a compact JSON array, ``[1,"a"]``
``operation``       ``insert``, ``update`` or ``delete``
``data``            the row after the write as a JSON object; NULL for a delete
``schema_version``  the newest migration applied on this client at the time of the write

An update that changes the primary key is recorded as a delete of the old key
and an insert of the new one. A table without a primary key is refused on both
backends: a SQLite rowid may change on VACUUM and Postgres has no stable row
address, so neither would name the same row on the server.

SQLite triggers list the table's columns (``json_object('id', NEW.id, ...)``),
so a migration that adds a column must be followed by :func:`refresh`; a
Postgres trigger sends ``to_json(NEW)`` and sees every column as it is.
Each captured table is recorded in ``migsync_meta`` under ``capture:<entity>``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from migsync.core import tables as names
from migsync.core.errors import ConfigError

if TYPE_CHECKING:  # the backend contract's schema upgrade builds on this module: types only
    from migsync.core.backend import Backend, Params, Row

log = logging.getLogger("migsync.capture")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_KEY_PREFIX = "capture:"
#: Postgres: the trigger's name on each captured table, and the generic function's.
TRIGGER = "migsync_capture"
FUNCTION = "migsync_capture"
_OWN_TABLES = frozenset(
    name.lower()
    for name in (
        names.META,
        names.MIGRATIONS,
        names.STATUS,
        names.QUEUE,
        names.REPORTS,
        names.CHANGES,
    )
)


class _Reader(Protocol):
    """A backend or a connection: both answer ``fetch``."""

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]: ...


@attrs.frozen
class CaptureInfo:
    """A captured table: the entity its changes are recorded as, its key and its columns."""

    table: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    triggers: tuple[str, ...]


@attrs.frozen
class _Target:
    """A table found in the catalog, as the database spells it."""

    schema: str | None  # Postgres only
    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def entity(self) -> str:
        return self.name if self.schema in (None, "public") else f"{self.schema}.{self.name}"

    @property
    def sql(self) -> str:
        return quote(self.name) if self.schema is None else f"{quote(self.schema)}.{quote(self.name)}"


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier (any character allowed)."""
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parse(dialect: str, table: str) -> tuple[str | None, str]:
    """``(schema, name)`` of ``table``; refuses what is not ``name`` or ``schema.name``."""
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ConfigError(
            f"table {table!r} is not a plain SQL identifier (letters, digits, _) or schema.table"
        )
    if len(parts) == 2 and dialect == "sqlite":
        raise ConfigError(f"table {table!r}: on SQLite give the table's name without a schema")
    name = parts[-1]
    if name.lower() in _OWN_TABLES or name.lower().startswith(("migsync_", "sqlite_")):
        raise ConfigError(
            f"table {table!r} is one of migsync's (or the database's) own: it cannot be captured"
        )
    return (parts[0] if len(parts) == 2 else None), name


# -- SQLite: three (four) triggers per table, the column list written out --------------------------


class _SQLite:
    dialect = "sqlite"

    def __init__(self, tables: names.Tables):
        self.tables = tables

    async def resolve(self, db: _Reader, schema_name: str | None, name: str) -> _Target | None:
        del schema_name
        found = await db.fetch(
            "SELECT name, type FROM sqlite_master "
            "WHERE type IN ('table', 'view') AND name = $1 COLLATE NOCASE",
            (name,),
        )
        if not found:
            return None
        if found[0]["type"] != "table":
            raise ConfigError(f"{found[0]['name']} is a view, not a table: capture its tables")
        actual = str(found[0]["name"])
        # xinfo: generated columns too (hidden 2, 3), but not a virtual table's hidden ones (1).
        columns = await db.fetch(
            "SELECT name, pk FROM pragma_table_xinfo($1) WHERE hidden <> 1 ORDER BY cid", (actual,)
        )
        key = tuple(str(c["name"]) for c in sorted((c for c in columns if c["pk"]), key=lambda c: c["pk"]))
        return _Target(None, actual, key, tuple(str(c["name"]) for c in columns))

    def trigger_names(self, name: str) -> dict[str, str]:
        return {event: f"migsync_capture_{name}_{event}" for event in ("insert", "update", "rekey", "delete")}

    def _value(self, ref: str) -> str:
        # json_object refuses BLOBs (and would fail the application's write): hex, as Postgres shows bytea.
        return f"CASE WHEN typeof({ref}) = 'blob' THEN '\\x' || lower(hex({ref})) ELSE {ref} END"

    def _key(self, row: str, key: Sequence[str]) -> str:
        if len(key) == 1:
            return f"CAST({row}.{quote(key[0])} AS TEXT)"
        return "json_array(" + ", ".join(self._value(f"{row}.{quote(k)}") for k in key) + ")"

    def _insert(self, target: _Target, row: str, operation: str, with_data: bool) -> str:
        data = "NULL"
        if with_data:
            pairs = ", ".join(f"{_literal(c)}, {self._value('NEW.' + quote(c))}" for c in target.columns)
            data = f"json_object({pairs})"
        return (
            f"INSERT INTO {self.tables.changes} (entity, entity_id, operation, data, schema_version) "
            f"VALUES ({_literal(target.entity)}, {self._key(row, target.key)}, '{operation}', {data}, "
            f"(SELECT MAX(version) FROM {self.tables.status} WHERE applied = TRUE));"
        )

    def create(self, target: _Target) -> dict[str, str]:
        """Each trigger's name and its CREATE TRIGGER, as ``sqlite_master.sql`` keeps it."""
        names = self.trigger_names(target.name)
        same_key = " AND ".join(f"OLD.{quote(k)} IS NEW.{quote(k)}" for k in target.key)
        bodies = {
            "insert": ("INSERT", "", [self._insert(target, "NEW", "insert", True)]),
            "update": ("UPDATE", f" WHEN {same_key}", [self._insert(target, "NEW", "update", True)]),
            "rekey": (
                "UPDATE",
                f" WHEN NOT ({same_key})",
                [self._insert(target, "OLD", "delete", False), self._insert(target, "NEW", "insert", True)],
            ),
            "delete": ("DELETE", "", [self._insert(target, "OLD", "delete", False)]),
        }
        return {
            names[event]: f"CREATE TRIGGER {quote(names[event])} AFTER {op} ON {quote(target.name)} "
            f"FOR EACH ROW{when} BEGIN {' '.join(body)} END"
            for event, (op, when, body) in bodies.items()
        }

    def drop(self, name: str, target: _Target | None) -> list[str]:
        del target  # trigger names are the database's, not the table's
        return [f"DROP TRIGGER IF EXISTS {quote(t)}" for t in self.trigger_names(name).values()]

    async def current(self, db: _Reader, target: _Target) -> bool:
        rows = await db.fetch(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = $1", (target.name,)
        )
        installed = {
            str(r["name"]).lower(): r["sql"]
            for r in rows
            if str(r["name"]).lower().startswith("migsync_capture_")
        }
        return installed == {name.lower(): sql for name, sql in self.create(target).items()}

    def install(self, target: _Target) -> list[str]:
        return [*self.drop(target.name, target), *self.create(target).values()]


# -- Postgres: one generic function, one trigger per table -----------------------------------------


class _Postgres:
    dialect = "postgresql"

    def __init__(self, tables: names.Tables):
        self.tables = tables
        namespace = tables.namespace
        self.function = FUNCTION if namespace is None else f"{quote(namespace)}.{FUNCTION}"
        self.function_schema = namespace

    async def resolve(self, db: _Reader, schema_name: str | None, name: str) -> _Target | None:
        regclass = quote(name) if schema_name is None else f"{quote(schema_name)}.{quote(name)}"
        found = await db.fetch(
            "SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            (regclass,),
        )
        if not found:
            return None
        if found[0]["kind"] not in ("r", "p"):
            raise ConfigError(f"{regclass} is not a table (a view, sequence or index?)")
        qualified = f"{quote(found[0]['schema'])}.{quote(found[0]['name'])}"
        columns = await db.fetch(
            "SELECT attname AS name FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (qualified,),
        )
        key = await db.fetch(
            "SELECT a.attname AS name FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY k.n",
            (qualified,),
        )
        return _Target(
            str(found[0]["schema"]),
            str(found[0]["name"]),
            tuple(str(k["name"]) for k in key),
            tuple(str(c["name"]) for c in columns),
        )

    def body(self) -> str:
        """The trigger function: TG_ARGV[0] is the entity, the rest are the key's columns."""

        def key_of(row: str) -> str:
            return (
                f"CASE WHEN TG_NARGS = 2 THEN {row} ->> TG_ARGV[1] ELSE (SELECT '[' || "
                f"string_agg(({row} -> k.col)::text, ',' ORDER BY k.n) || ']' "
                "FROM unnest(TG_ARGV[1:]) WITH ORDINALITY AS k(col, n)) END"
            )

        def record(key: str, operation: str, data: str) -> str:
            return (
                f"INSERT INTO {self.tables.changes} (entity, entity_id, operation, data, schema_version) "
                f"VALUES (TG_ARGV[0], {key}, {operation}, {data}, applied_version);"
            )

        return f"""
DECLARE
    new_row json;
    old_row json;
    new_key text;
    old_key text;
    applied_version text;
BEGIN
    SELECT MAX(s.version) INTO applied_version FROM {self.tables.status} s WHERE s.applied = TRUE;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_json(NEW);
        new_key := {key_of("new_row")};
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_json(OLD);
        old_key := {key_of("old_row")};
    END IF;
    IF TG_OP = 'DELETE' THEN
        {record("old_key", "'delete'", "NULL")}
    ELSIF TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key THEN
        {record("old_key", "'delete'", "NULL")}
        {record("new_key", "'insert'", "new_row::text")}
    ELSE
        {record("new_key", "lower(TG_OP)", "new_row::text")}
    END IF;
    RETURN NULL;
END
"""

    def create(self, target: _Target) -> dict[str, str]:
        args = ", ".join(_literal(a) for a in (target.entity, *target.key))
        return {
            TRIGGER: f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {target.sql} "
            f"FOR EACH ROW EXECUTE FUNCTION {self.function}({args})"
        }

    def drop(self, name: str, target: _Target | None) -> list[str]:
        del name
        return [] if target is None else [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {target.sql}"]

    async def current(self, db: _Reader, target: _Target) -> bool:
        rows = await db.fetch(
            "SELECT t.tgargs AS args, p.prosrc AS body, p.proname AS function, n.nspname AS schema "
            "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE t.tgrelid = to_regclass($1) AND t.tgname = $2",
            (target.sql, TRIGGER),
        )
        if not rows:
            return False
        args = bytes(rows[0]["args"]).split(b"\x00")[:-1]
        return (
            [a.decode() for a in args] == [target.entity, *target.key]
            and rows[0]["body"] == self.body()
            and rows[0]["function"] == FUNCTION
            and (self.function_schema is None or rows[0]["schema"] == self.function_schema)
        )

    def function_sql(self) -> str:
        return (
            f"CREATE OR REPLACE FUNCTION {self.function}() RETURNS trigger LANGUAGE plpgsql "
            f"SET search_path = pg_catalog, pg_temp AS $migsync${self.body()}$migsync$"
        )

    def install(self, target: _Target) -> list[str]:
        return [self.function_sql(), *self.drop(target.name, target), *self.create(target).values()]


def capture_function_sql(tables: names.Tables) -> tuple[str, str]:
    """Postgres: the statement that (re)creates the capture function, and the schema it lives in,
    each as a SQL string literal (for a bookkeeping upgrade that replaces an installed one)."""
    capture = _Postgres(tables)
    where = "current_schema()" if capture.function_schema is None else _literal(capture.function_schema)
    return _literal(capture.function_sql()), where


def _dialect(backend: Backend) -> _SQLite | _Postgres:
    if backend.dialect == "sqlite":
        return _SQLite(backend.tables)
    if backend.dialect == "postgresql":
        return _Postgres(backend.tables)
    raise ConfigError(f"capture by triggers works on sqlite and postgresql, not {backend.dialect!r}")


def _match_key(dialect: str) -> str:
    # SQLite's table names, and so its entities, ignore case.
    return "key = $1 COLLATE NOCASE" if dialect == "sqlite" else "key = $1"


async def _records(db: _Reader, tables: names.Tables) -> dict[str, dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT key, value FROM {tables.meta} WHERE key LIKE $1 ORDER BY key", (_KEY_PREFIX + "%",)
    )
    return {str(r["key"])[len(_KEY_PREFIX) :]: json.loads(r["value"]) for r in rows}


async def _install(
    backend: Backend, dialect: _SQLite | _Postgres, schema_name: str | None, name: str
) -> CaptureInfo:
    async with backend.transaction() as tx:
        target = await dialect.resolve(tx, schema_name, name)
        shown = name if schema_name is None else f"{schema_name}.{name}"
        if target is None:
            raise ConfigError(f"no table {shown!r} in this database (names are case-sensitive on Postgres)")
        if not target.key:
            raise ConfigError(
                f"table {target.entity!r} has no primary key: its changes could not name their row "
                "on the server; give it one, then capture it"
            )
        # As a script: no placeholder translation may touch the identifiers (a column may be named $1).
        await tx.run_script("".join(f"{statement};\n" for statement in dialect.install(target)))
        key = _KEY_PREFIX + target.entity
        record = json.dumps({"key": list(target.key), "columns": list(target.columns)})
        await tx.execute_batch(
            [
                (f"DELETE FROM {backend.tables.meta} WHERE {_match_key(dialect.dialect)}", (key,)),
                (f"INSERT INTO {backend.tables.meta} (key, value) VALUES ($1, $2)", (key, record)),
            ]
        )
    return CaptureInfo(target.entity, target.key, target.columns, tuple(dialect.create(target)))


async def install(backend: Backend, table: str) -> CaptureInfo:
    """Capture every insert, update and delete of ``table`` (installing again replaces the triggers).

    ``table`` is ``name`` or, on Postgres, ``schema.name``; identifiers are
    taken as written (quoted), so on Postgres they are case-sensitive.
    Raises :class:`ConfigError` for a name that is not a plain identifier, one
    of migsync's own tables, a missing table or one without a primary key.
    """
    dialect = _dialect(backend)
    schema_name, name = _parse(backend.dialect, table)
    await backend.ensure_schema()
    return await _install(backend, dialect, schema_name, name)


async def remove(backend: Backend, table: str) -> bool:
    """Stop capturing ``table``: drop its triggers and forget it. False if it was not captured."""
    dialect = _dialect(backend)
    schema_name, name = _parse(backend.dialect, table)
    async with backend.transaction() as tx:
        target = await dialect.resolve(tx, schema_name, name)
        entity = target.entity if target is not None else (name if schema_name in (None, "public") else table)
        key = _KEY_PREFIX + entity
        known = await tx.fetch(
            f"SELECT key FROM {backend.tables.meta} WHERE {_match_key(backend.dialect)}", (key,)
        )
        statements = dialect.drop(target.name if target else name, target)
        if statements:
            await tx.run_script("".join(f"{statement};\n" for statement in statements))
        await tx.execute(f"DELETE FROM {backend.tables.meta} WHERE {_match_key(backend.dialect)}", (key,))
    return bool(known)


async def captured(backend: Backend) -> list[str]:
    """The captured tables' entity names, in order."""
    return list(await _records(backend, backend.tables))


def _split_entity(dialect: str, entity: str) -> tuple[str | None, str]:
    schema_name, _, name = entity.rpartition(".")
    if schema_name:
        return schema_name, name
    # An unqualified Postgres entity is a table in ``public`` (whatever today's search_path says).
    return ("public" if dialect == "postgresql" else None), name


async def refresh(backend: Backend) -> list[str]:
    """Re-install the triggers of every captured table whose triggers are out of date.

    Reads only, when nothing changed: each table's triggers are compared with
    what :func:`install` would create now (SQLite: the column list; both: the
    key, and whether a rebuilt table lost its triggers). A captured table that
    no longer exists is forgotten, with a warning. Returns the re-installed tables.
    """
    dialect = _dialect(backend)
    done = []
    for entity in await _records(backend, backend.tables):
        schema_name, name = _split_entity(backend.dialect, entity)
        target = await dialect.resolve(backend, schema_name, name)
        if target is None:
            log.warning("captured table %s no longer exists: its capture is removed", entity)
            await remove(backend, entity)
            continue
        if target.key and await dialect.current(backend, target):
            continue
        try:
            await _install(backend, dialect, schema_name, name)
        except ConfigError as exc:
            # Its primary key was dropped: the old triggers stay (they name the old key) until fixed.
            log.warning("cannot refresh the capture of %s: %s", entity, exc)
            continue
        done.append(entity)
    return done


__all__ = ["FUNCTION", "TRIGGER", "CaptureInfo", "captured", "install", "quote", "refresh", "remove"]
