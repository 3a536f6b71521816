"""sqlx: ``_sqlx_migrations(version, description, installed_on, success, checksum, execution_time)``.

One row per applied migration (a revert deletes it). ``success = false``
marks one that failed part-way where it could not roll back; sqlx itself
refuses to go on until the row is dealt with. ``checksum`` is the SHA-384 of
the up file's text, which sqlx compares with the file on every run.
"""

from __future__ import annotations

import hashlib

from migsync.core.adopters.history import Fetch, ForeignHistory, Tool, parse_version
from migsync.core.errors import MigrationError

NAME, TABLE = "sqlx", "_sqlx_migrations"


def checksum(data: bytes) -> bytes:
    """sqlx's checksum of a migration file: SHA-384 of its text."""
    return hashlib.sha384(data).digest()


async def read(fetch: Fetch) -> ForeignHistory:
    rows = await fetch(f"SELECT version, description, success, checksum FROM {TABLE} ORDER BY version")
    failed = [r for r in rows if not r["success"]]
    if failed:
        row = failed[0]
        raise MigrationError(
            f"{NAME} recorded migration {row['version']} ({row['description']}) as failed "
            f"(success = false in {TABLE}): it stopped part-way. Fix the database by hand, then delete "
            "that row (as sqlx says) or finish it with sqlx, and adopt again; nothing was recorded"
        )
    versions = {parse_version(NAME, TABLE, r["version"]): bytes(r["checksum"]) for r in rows}
    return ForeignHistory(NAME, TABLE, applied=frozenset(versions), checksums=versions, checksum_of=checksum)


TOOL = Tool(NAME, TABLE, frozenset({"version", "success", "checksum"}), read=read)
