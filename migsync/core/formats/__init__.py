"""Migration file formats: migsync's own and those of the tools teams come from.

Each is a source-format plugin, registered here through the same hook as a
third party's (:func:`migsync_register_source_formats`):

==================  ==========  =====================================================
format (aliases)    group       files
==================  ==========  =====================================================
paired (pop)        migsync     ``<v>_<name>[.<dialect>][.autocommit].up.sql``/``.down.sql``
native (dbmate)     migsync     ``<v>_<name>.sql`` with ``-- migrate:up``/``down`` markers
golang-migrate      (itself)    ``<v>_<title>.up.sql``/``.down.sql``, title with dots or empty
sqlx                (itself)    ``<v>_<desc>.sql`` (up only), ``<v>_<desc>.up.sql``/``.down.sql``
goose               (itself)    ``<v>_<desc>.sql`` with ``-- +goose Up``/``Down``
flyway              (itself)    ``V<v>__<desc>.sql``, ``U<v>__<desc>.sql``, ``R__<desc>.sql``
prisma              (itself)    ``<timestamp>_<name>/migration.sql``
==================  ==========  =====================================================

Formats of one group may share a folder. Which format a folder is in is
decided by :mod:`migsync.core.sources`.
"""

from __future__ import annotations

from collections.abc import Callable

from migsync.core.formats.base import FileName, NewMigration, Section, SourceFormat
from migsync.core.formats.flyway import FlywayFormat
from migsync.core.formats.golang_migrate import GolangMigrateFormat
from migsync.core.formats.goose import GooseFormat
from migsync.core.formats.native import NativeFormat
from migsync.core.formats.paired import PairedFormat
from migsync.core.formats.prisma import PrismaFormat
from migsync.core.formats.sqlx import SqlxFormat
from migsync.core.hookspecs import hookimpl
from migsync.core.specs import SourceFormatSpec

__all__ = [
    "BUILTIN",
    "FileName",
    "FlywayFormat",
    "GolangMigrateFormat",
    "GooseFormat",
    "NativeFormat",
    "NewMigration",
    "PairedFormat",
    "PrismaFormat",
    "Section",
    "SourceFormat",
    "SqlxFormat",
]

#: The built-in formats' specs, in priority order.
BUILTIN: tuple[SourceFormatSpec, ...] = (
    SourceFormatSpec(
        "paired",
        PairedFormat,
        "ory/pop pairs: <version>_<name>[.<dialect>][.autocommit].up.sql/.down.sql",
        priority=10,
    ),
    SourceFormatSpec(
        "native",
        NativeFormat,
        "dbmate: <version>_<name>.sql with '-- migrate:up' / '-- migrate:down' sections",
        priority=20,
    ),
    SourceFormatSpec(
        "golang-migrate",
        GolangMigrateFormat,
        "golang-migrate: <version>_<title>.up.sql/.down.sql, titles with dots",
        priority=30,
    ),
    SourceFormatSpec(
        "sqlx", SqlxFormat, "sqlx: <version>_<description>.sql, or .up.sql/.down.sql", priority=40
    ),
    SourceFormatSpec(
        "goose", GooseFormat, "goose: <version>_<description>.sql with '-- +goose Up'", priority=50
    ),
    SourceFormatSpec(
        "flyway", FlywayFormat, "Flyway: V<version>__<desc>.sql, U... undo, R__<desc>.sql", priority=60
    ),
    SourceFormatSpec("prisma", PrismaFormat, "Prisma: <timestamp>_<name>/migration.sql", priority=70),
)


@hookimpl
def migsync_register_source_formats(register: Callable[[SourceFormatSpec], None]) -> None:
    for spec in BUILTIN:
        register(spec)
