"""``migsync client sync`` and ``migsync client run`` against a real server on a loopback port.

The server is the real HTTP API served by uvicorn (in a thread, so a test can stop it
and start it again on the same port); every client is a real ``migsync`` process
with a real SQLite database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbtools import BOOKKEEPING_TABLES, MIGSYNC, ClockFile, migsync_env, query, run, start, wait_for
from servers import ServerThread

from migsync.server.app import create_app

ADMIN = "admin-secret"

USERS = "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n-- migrate:down\nDROP TABLE users;\n"
ORDERS = "-- migrate:up\nCREATE TABLE orders (id INTEGER PRIMARY KEY);\n"
BROKEN_ORDERS = "-- migrate:up\nCREATE TABLE orders (id INTEGER PRIMARY KEY) oops;\n"


class Deployment:
    """A store with signed migrations, registered clients, and its API served on loopback."""

    def __init__(self, tmp_path: Path, store: str) -> None:
        self.tmp = tmp_path
        self.store = store
        self.key = tmp_path / "key"
        self.pub = tmp_path / "key.pub"
        self.migrations = tmp_path / "migrations"
        self.migrations.mkdir()
        assert run("keygen", "--out", str(self.key)).returncode == 0
        self.server = ServerThread(lambda: create_app(store, admin_token=ADMIN, cache_seconds=0))

    def publish(self, files: dict[str, str], *, force: bool = False) -> None:
        for name, text in files.items():
            (self.migrations / name).write_text(text)
        args = ["publish", "--migrations", str(self.migrations), "--store", self.store]
        result = run(*args, "--signing-key", str(self.key), *(["--force"] if force else []))
        assert result.returncode == 0, result.stderr

    def add_client(self, name: str) -> tuple[str, str]:
        added = run("clients", "add", name, "--store", self.store, "--json")
        assert added.returncode == 0, added.stderr
        body = json.loads(added.stdout)
        return str(body["client_id"]), body["token"]

    def client_args(self, name: str, client_id: str, token: str) -> list[str]:
        return [
            "--db",
            self.db(name),
            "--server",
            self.server.url,
            "--client-id",
            client_id,
            "--token",
            token,
            "--trust-key",
            str(self.pub),
            "--timeout",
            "2",
            "--retries",
            "1",
        ]

    def db(self, name: str) -> str:
        return f"sqlite:///{self.tmp / f'{name}.db'}"

    def fleet(self) -> dict[str, dict[str, Any]]:
        result = run("fleet", "--store", self.store, "--json")
        assert result.returncode == 0, result.stderr
        return {c["name"]: c for c in json.loads(result.stdout)["clients"]}


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'server.db'}"
    else:
        store = str(request.getfixturevalue("pg_url"))
    d = Deployment(tmp_path, store)
    d.publish({"0001_users.sql": USERS})
    d.server.start()
    try:
        yield d
    finally:
        d.server.stop()


def user_tables(url: str) -> set[str]:
    rows = query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r[0] for r in rows} - BOOKKEEPING_TABLES


def test_clients_sync_apply_and_report_and_the_fleet_shows_each(deployment: Deployment) -> None:
    shop = deployment.add_client("shop")
    kiosk = deployment.add_client("kiosk")
    synced = run("client", "sync", *deployment.client_args("shop", *shop))
    assert synced.returncode == 0, synced.stderr
    assert "1 offered, 1 stored" in synced.stdout and "applied 1 migration (0001_users)" in synced.stdout
    assert user_tables(deployment.db("shop")) == {"users"}
    fleet = deployment.fleet()
    assert fleet["shop"]["applied"] == ["1"] and fleet["kiosk"]["applied"] == []

    deployment.publish({"0002_orders.sql": ORDERS})
    for name, (client_id, token) in (("shop", shop), ("kiosk", kiosk)):
        result = run("client", "sync", *deployment.client_args(name, client_id, token), "--json")
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["ok"] and body["delivered"] >= 1 and body["undelivered"] == 0
    fleet = deployment.fleet()
    assert fleet["shop"]["applied"] == ["1", "2"] and fleet["kiosk"]["applied"] == ["1", "2"]
    assert fleet["shop"]["last_seen"] is not None

    again = run("client", "sync", *deployment.client_args("shop", *shop), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["delivered"] == 0


def test_a_failing_migration_is_reported_and_a_fixed_one_recovers(deployment: Deployment) -> None:
    shop = deployment.add_client("shop")
    deployment.publish({"0002_orders.sql": BROKEN_ORDERS})
    failed = run("client", "sync", *deployment.client_args("shop", *shop))
    assert failed.returncode == 1
    assert "failed: apply 0002_orders" in failed.stderr
    failure = deployment.fleet()["shop"]["failed"]
    assert [f["version"] for f in failure] == ["2"] and "oops" in failure[0]["error"]

    deployment.publish({"0002_orders.sql": ORDERS}, force=True)
    fixed = run("client", "sync", *deployment.client_args("shop", *shop))
    assert fixed.returncode == 0, fixed.stderr
    fleet = deployment.fleet()["shop"]
    assert fleet["applied"] == ["1", "2"] and fleet["failed"] == []


def test_server_down_then_back_delivers_the_outbox_once(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, f"sqlite:///{tmp_path / 'server.db'}")
    deployment.publish({"0001_users.sql": USERS, "0002_orders.sql": BROKEN_ORDERS})
    shop = deployment.add_client("shop")
    deployment.server.start()
    args = deployment.client_args("shop", *shop)
    # The client's time stands still, so 0002's backoff never runs out between the syncs
    # below, however slow the machine: only --retry-now makes it run again.
    clock = ClockFile(tmp_path / "now")
    assert (
        run("client", "sync", *args, env=clock.env).returncode == 1
    )  # 0002 failed once; the server heard it
    deployment.server.stop()

    # Offline: what the client has still runs (a second attempt), and its report waits.
    offline = run("client", "sync", *args, "--retry-now", "--json", env=clock.env)
    assert offline.returncode == 1
    body = json.loads(offline.stdout)
    assert body["offline"] is not None and "127.0.0.1" in body["offline"]
    assert body["failed"]["attempts"] == 2
    assert body["delivered"] == 0 and body["undelivered"] == 1

    deployment.server.start()
    try:
        back = run("client", "sync", *args, "--json", env=clock.env)
        assert json.loads(back.stdout)["delivered"] == 1
        assert deployment.fleet()["shop"]["failed"][0]["attempts"] == 2
        again = run("client", "sync", *args, "--json", env=clock.env)
        assert json.loads(again.stdout)["delivered"] == 0
        assert deployment.fleet()["shop"]["applied"] == ["1"]
    finally:
        deployment.server.stop()


def test_a_bad_token_is_exit_2_naming_the_refusal(deployment: Deployment) -> None:
    client_id, _ = deployment.add_client("shop")
    result = run("client", "sync", *deployment.client_args("shop", client_id, "not-the-token"))
    assert result.returncode == 2
    assert "refused: 401 unknown token" in result.stderr


def test_an_untrusted_key_refuses_everything_and_exits_1(deployment: Deployment, tmp_path: Path) -> None:
    shop = deployment.add_client("shop")
    assert run("keygen", "--out", str(tmp_path / "other")).returncode == 0
    args = deployment.client_args("shop", *shop)
    args[args.index("--trust-key") + 1] = str(tmp_path / "other.pub")
    result = run("client", "sync", *args)
    assert result.returncode == 1
    assert "refused (signature): 0001_users" in result.stderr
    assert user_tables(deployment.db("shop")) == set()
    assert deployment.fleet()["shop"]["failed"][0]["error"].startswith("refused: ")


def test_configuration_from_a_file_and_the_environment(deployment: Deployment, tmp_path: Path) -> None:
    client_id, token = deployment.add_client("shop")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "server.pub").write_bytes(deployment.pub.read_bytes())
    (tmp_path / "migsync.toml").write_text(
        "[client]\n"
        f'db = "{deployment.db("shop")}"\n'
        f'server = "{deployment.server.url}"\n'
        f'client_id = "{client_id}"\n'
        'trust_key = "keys/server.pub"\n'
        'token = "overridden by the environment"\n'
    )
    env = {**migsync_env(), "MIGSYNC_TOKEN": token}
    result = subprocess.run(
        [MIGSYNC, "client", "sync"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert user_tables(deployment.db("shop")) == {"users"}
    # A flag wins over the environment.
    result = subprocess.run(
        [MIGSYNC, "client", "sync", "--token", "wrong"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "401" in result.stderr


def test_a_bad_configuration_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "migsync.toml").write_text('[client]\ndb = "sqlite:///x.db"\nsrever = "http://x"\n')
    result = run("client", "sync", cwd=tmp_path)
    assert result.returncode == 2
    assert "migsync.toml: unknown key srever in [client]" in result.stderr
    (tmp_path / "other.toml").write_text("[client\n")
    result = run("client", "sync", "--config", str(tmp_path / "other.toml"))
    assert result.returncode == 2 and "is not valid TOML" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_client_run_follows_new_migrations_and_stops_cleanly_on_sigterm(deployment: Deployment) -> None:
    shop = deployment.add_client("shop")
    proc = start("client", "run", *deployment.client_args("shop", *shop), "--interval", "0.2")
    try:
        wait_for("the first sync", lambda: deployment.fleet()["shop"]["applied"] == ["1"], timeout=30)
        deployment.publish({"0002_orders.sql": ORDERS})
        wait_for("the new migration", lambda: deployment.fleet()["shop"]["applied"] == ["1", "2"], timeout=30)
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert "applied 1 migration (0002_orders)" in out
    assert user_tables(deployment.db("shop")) == {"users", "orders"}


def test_sigterm_during_a_long_pass_stops_after_the_current_migration(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, f"sqlite:///{tmp_path / 'server.db'}")
    many = {f"{n:04d}_t{n}.sql": f"-- migrate:up\nCREATE TABLE t{n} (id INTEGER);\n" for n in range(1, 401)}
    deployment.publish(many)
    shop = deployment.add_client("shop")
    deployment.server.start()
    try:
        proc = start("client", "run", *deployment.client_args("shop", *shop), "--interval", "60")
        url = deployment.db("shop")

        def some_applied() -> bool:
            try:
                return bool(query(url, "SELECT COUNT(*) FROM client_migration_status")[0][0])
            except Exception:  # the database is still being created
                return False

        wait_for("the pass to start", some_applied, timeout=30, interval=0.005)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        applied = query(url, "SELECT COUNT(*) FROM client_migration_status WHERE applied")[0][0]
        assert 0 < applied < 400  # it stopped in the middle, between two migrations
        assert len(user_tables(url)) == applied  # each applied migration whole, none half-way
        wait_for("its report", lambda: len(deployment.fleet()["shop"]["applied"]) == applied, timeout=10)
    finally:
        deployment.server.stop()


def test_client_sync_imports_no_server_code(tmp_path: Path) -> None:
    # A client syncs often: it pays for httpx and cryptography, never for the server's stack.
    deployment = Deployment(tmp_path, f"sqlite:///{tmp_path / 'server.db'}")
    deployment.publish({"0001_users.sql": USERS})
    shop = deployment.add_client("shop")
    probe = (
        "import sys\n"
        "from migsync.cli import main\n"
        "try:\n"
        "    main(['client', 'sync', *sys.argv[1:]])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    deployment.server.start()
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe, *deployment.client_args("shop", *shop)],
            capture_output=True, text=True, env=migsync_env(), timeout=60, check=False,
        )  # fmt: skip
    finally:
        deployment.server.stop()
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert {"httpx", "migsync.client.sync"} <= imported
    for heavy in ("sqlalchemy", "starlette", "uvicorn", "asyncpg", "migsync.server", "migsync.testing"):
        assert heavy not in imported, f"'migsync client sync' imported {heavy}"


def test_client_run_outlives_a_malformed_answer_and_says_so(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    answers: list[int] = []

    async def garbage(_request: object) -> PlainTextResponse:
        answers.append(1)
        return PlainTextResponse("<html>a proxy's error page</html>")

    server = ServerThread(lambda: Starlette(routes=[Route("/api/migrations/pending", garbage)]))
    assert run("keygen", "--out", str(tmp_path / "key")).returncode == 0
    server.start()
    try:
        args = ["--db", f"sqlite:///{tmp_path / 'c.db'}", "--server", server.url, "--client-id", "1"]
        args += ["--token", "t", "--trust-key", str(tmp_path / "key.pub"), "--interval", "0.1"]
        proc = start("client", "run", *args)
        wait_for("three polls", lambda: len(answers) >= 3, timeout=30)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        server.stop()
    assert proc.returncode == 0, err
    assert err.count("sync failed: ") >= 2 and "answered without a Migsync-Protocol header" in err
