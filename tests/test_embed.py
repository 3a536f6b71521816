"""The calls an application makes at start-up: ``migsync.apply`` and ``migsync.sync`` (and their async twins).

Real databases (SQLite files, a Postgres database of the test's own) and a real
server on a loopback port; the results are checked against the databases themselves.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import query, run, status_json, tables
from servers import ServerThread

import migsync
from migsync.core.errors import ServerRefused, SourceError
from migsync.server.app import create_app

NOTES = (
    "-- migrate:up\nCREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n"
    "-- migrate:down\nDROP TABLE notes;\n"
)
TAGS = "-- migrate:up\nCREATE TABLE tags (id INTEGER PRIMARY KEY);\n-- migrate:down\nDROP TABLE tags;\n"
BROKEN = "-- migrate:up\nCREATE TABLE broken (id INTEGER PRIMARY KEY) oops;\n"


def test_apply_migrates_a_new_database_and_says_what_it_applied(any_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations", {"0001_notes.sql": NOTES, "0002_tags.sql": TAGS})

    result = migsync.apply(any_url, folder)

    assert result.applied == ("0001_notes", "0002_tags") and result.remaining == 0
    assert {"notes", "tags"} <= tables(any_url, bookkeeping=False)
    assert [s["state"] for s in status_json(any_url)] == ["applied", "applied"]
    # Current: a second call at the next start-up applies nothing.
    assert migsync.apply(any_url, str(folder)).applied == ()


def test_a_failing_migration_raises_migration_failed_and_the_ones_before_it_stay(
    any_url: str, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_notes.sql": NOTES, "0002_broken.sql": BROKEN})

    with pytest.raises(migsync.MigrationFailed) as caught:
        migsync.apply(any_url, folder, max_attempts=1)

    failure = caught.value
    assert (
        failure.name == "0002_broken"
        and failure.label == "apply 0002_broken"
        and failure.dead
        and "oops" in failure.error.lower()
    )
    assert str(failure).startswith("apply 0002_broken dead (attempt 1 of 1): ")
    assert [o.label for o in failure.result.processed if o.ok] == ["apply 0001_notes"]
    assert "notes" in tables(any_url, bookkeeping=False) and "broken" not in tables(
        any_url, bookkeeping=False
    )
    assert isinstance(failure, migsync.MigrationError)


def test_a_folder_that_cannot_be_read_raises_source_error_and_creates_nothing(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_notes.sql": NOTES, "0002_tags.go": "package x\n"})
    db = tmp_path / "app.db"

    with pytest.raises(SourceError, match=r"0002_tags\.go"):
        migsync.apply(f"sqlite:///{db}", folder)

    assert not db.exists()
    # The CLI's --ignore-unknown, as a keyword.
    assert migsync.apply(f"sqlite:///{db}", folder, ignore_unknown=True).applied == ("0001_notes",)


def test_other_layouts_are_read_as_the_cli_reads_them(db_url: str, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m",
        {
            "V1__notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY);\n",
            "V1_1__tags.sql": "CREATE TABLE tags (id INTEGER PRIMARY KEY);\n",
        },
    )
    assert migsync.apply(db_url, folder, format="flyway").applied == ("V1__notes", "V1_1__tags")


async def test_apply_async_runs_in_the_applications_own_loop(db_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_notes.sql": NOTES})

    result = await migsync.apply_async(db_url, folder)

    assert result.applied == ("0001_notes",)


async def test_the_blocking_call_inside_a_running_loop_says_to_await_the_async_one(
    db_url: str, tmp_path: Path
) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_notes.sql": NOTES})
    with pytest.raises(RuntimeError, match="await the"):
        migsync.apply(db_url, folder)
    assert not Path(db_url.removeprefix("sqlite:///")).exists()


def test_a_desktop_app_migrates_at_launch_as_docs_embedding_shows(tmp_path: Path) -> None:
    """The example of docs/embedding.md, run as the application's own process."""
    folder = write_migrations(tmp_path / "migrations", {"0001_notes.sql": NOTES})
    app = tmp_path / "notes_app.py"
    app.write_text(
        textwrap.dedent(
            """
            import sqlite3
            import sys
            from pathlib import Path

            import migsync

            HERE = Path(__file__).parent
            DB = HERE / "notes.db"

            def main() -> int:
                try:
                    result = migsync.apply(f"sqlite:///{DB}", HERE / "migrations")
                except migsync.MigrationFailed as exc:
                    print(f"cannot start: {exc}", file=sys.stderr)
                    return 1
                if result.applied:
                    print("migrated:", ", ".join(result.applied))
                with sqlite3.connect(DB) as conn:
                    conn.execute("INSERT INTO notes (body) VALUES ('hello')")
                    print("notes:", conn.execute("SELECT count(*) FROM notes").fetchone()[0])
                return 0

            sys.exit(main())
            """
        )
    )
    from dbtools import migsync_env

    first = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, env=migsync_env())
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["migrated: 0001_notes", "notes: 1"]
    again = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, env=migsync_env())
    assert again.stdout.splitlines() == ["notes: 2"]

    (folder / "0002_broken.sql").write_text(BROKEN)
    broken = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, env=migsync_env())
    assert broken.returncode == 1
    # The event went to Python's logging (the app's to configure); the app's own line comes last.
    assert broken.stderr.splitlines()[-1].startswith(
        "cannot start: apply 0002_broken failed (attempt 1 of 3)"
    )


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.store = f"sqlite:///{tmp_path / 'server.db'}"
        self.key = tmp_path / "key"
        self.migrations = write_migrations(tmp_path / "published", {"0001_notes.sql": NOTES})
        assert run("keygen", "--out", str(self.key)).returncode == 0
        published = run(
            "publish",
            "--migrations",
            str(self.migrations),
            "--store",
            self.store,
            "--signing-key",
            str(self.key),
        )
        assert published.returncode == 0, published.stderr
        added = run("clients", "add", "desk", "--store", self.store, "--json")
        assert added.returncode == 0, added.stderr
        body = json.loads(added.stdout)
        self.client_id, self.token = str(body["client_id"]), str(body["token"])
        self.http = ServerThread(lambda: create_app(self.store, admin_token="admin", cache_seconds=0))


def test_sync_fetches_applies_and_reports_to_a_real_server(tmp_path: Path) -> None:
    server = Server(tmp_path)
    db = f"sqlite:///{tmp_path / 'desk.db'}"
    server.http.start()
    try:
        result = migsync.sync(
            db,
            server.http.url,
            client_id=server.client_id,
            token=server.token,
            trust_keys=[f"{server.key}.pub"],
        )
        assert result.ok and result.offline is None and result.delivered >= 1
        assert [o.label for o in result.run.processed if o.ok] == ["apply 0001_notes"]
        assert query(db, "SELECT count(*) FROM notes") == [(0,)]
        fleet = run("fleet", "--store", server.store, "--json")
        assert json.loads(fleet.stdout)["clients"][0]["applied"] == ["1"]

        with pytest.raises(ServerRefused):
            migsync.sync(
                db,
                server.http.url,
                client_id=server.client_id,
                token="wrong",
                trust_keys=[f"{server.key}.pub"],
            )
    finally:
        server.http.stop()

    # The server gone: the application starts anyway, offline, with what it has.
    offline = asyncio.run(
        migsync.sync_async(
            db,
            server.http.url,
            client_id=server.client_id,
            token=server.token,
            trust_keys=[f"{server.key}.pub"],
            timeout=1,
            retries=0,
        )
    )
    assert offline.offline is not None and offline.run.ok and not offline.ok
