"""Built-in storage backends, registered through the same hook as third-party ones."""

from __future__ import annotations

from collections.abc import Callable

from migsync.core.hookspecs import hookimpl
from migsync.core.specs import BackendSpec


@hookimpl
def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            "sqlite",
            ("sqlite",),
            "migsync.backends.sqlite:SQLiteBackend",
            "SQLite files through aiosqlite (WAL, BEGIN IMMEDIATE)",
        )
    )
    register(
        BackendSpec(
            "postgresql",
            ("postgresql", "postgres"),
            "migsync.backends.postgres:PostgresBackend",
            "Postgres through asyncpg (advisory locks, bookkeeping in a chosen schema)",
        )
    )
