"""Make sure the Postgres the tests use answers; start the local cluster if it does not.

Uses ``MIGSYNC_TEST_PG_DSN`` if set, else ``postgresql://postgres@127.0.0.1:5432/postgres``.
If nothing answers and a local cluster is installed (``pg_ctlcluster``), start it
and wait for it. Otherwise fail with a message saying what to do. Run by
``make test`` before pytest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def answers(dsn: str) -> str | None:
    """None if Postgres answers at ``dsn``, else why not."""
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    await conn.close()
    return None


def start_local_cluster() -> bool:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return False
    for version in sorted(os.listdir("/etc/postgresql")):
        print(f"ensure_postgres: starting local cluster {version}/main", file=sys.stderr)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
        )
    return True


def main() -> int:
    dsn = os.environ.get("MIGSYNC_TEST_PG_DSN", DEFAULT_DSN)
    why = asyncio.run(answers(dsn))
    if why is None:
        return 0
    print(f"ensure_postgres: no answer at {dsn}: {why}", file=sys.stderr)
    if start_local_cluster():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            why = asyncio.run(answers(dsn))
            if why is None:
                print("ensure_postgres: Postgres is up", file=sys.stderr)
                return 0
            time.sleep(0.5)
    print(
        f"ensure_postgres: Postgres does not answer at {dsn} ({why}).\n"
        "  Start a server (e.g. 'pg_ctlcluster --skip-systemctl-redirect 15 main start'),\n"
        "  or point MIGSYNC_TEST_PG_DSN at one (a role that may CREATE DATABASE).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
