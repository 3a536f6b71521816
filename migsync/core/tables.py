"""The names of migsync's bookkeeping tables, plain or in a namespace of their own.

Apart from :mod:`migsync.core.schema` (their layout), so that what only needs the
names (trigger capture, which the layout's upgrade in turn builds on) does not
import the layout.
"""

from __future__ import annotations

import re

import attrs

from migsync.core.errors import ConfigError

MIGRATIONS = "client_migration"
STATUS = "client_migration_status"
QUEUE = "migration_changes"
META = "migsync_meta"
REPORTS = "migsync_report_outbox"
CHANGES = "entity_changes"
ACTIONS = "migsync_actions"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


@attrs.frozen
class Tables:
    """The bookkeeping tables' names as they appear in SQL, qualified by a schema or not.

    Backends that keep the tables in a namespace of their own (a Postgres
    schema) pass it here; all of migsync's SQL is built from these names, so
    a migration's own unqualified statements still go where its author meant.
    """

    namespace: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.namespace is not None and not _IDENTIFIER.fullmatch(self.namespace):
            raise ConfigError(
                f"schema name {self.namespace!r} is not a plain SQL identifier (letters, digits, _)"
            )

    def _name(self, table: str) -> str:
        return table if self.namespace is None else f'"{self.namespace}".{table}'

    @property
    def meta(self) -> str:
        return self._name(META)

    @property
    def migrations(self) -> str:
        return self._name(MIGRATIONS)

    @property
    def status(self) -> str:
        return self._name(STATUS)

    @property
    def queue(self) -> str:
        return self._name(QUEUE)

    @property
    def reports(self) -> str:
        return self._name(REPORTS)

    @property
    def changes(self) -> str:
        return self._name(CHANGES)

    @property
    def actions(self) -> str:
        return self._name(ACTIONS)


DEFAULT_TABLES = Tables()
