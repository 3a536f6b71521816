"""The admin panel behind several real ``migsync serve`` processes on one Postgres store.

A login is a cookie signed with the panel's secret: processes given the same
``--panel-secret`` accept each other's logins and form tokens, so a load
balancer needs no sticky sessions; a process with another secret refuses them.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
from dbtools import client_headers, run, start, stop, wait_for
from servers import free_port, serve_process

ADMIN = "admin-secret-token"
SHARED = "a-shared-panel-secret-of-at-least-32-bytes"
OTHER = "another-panel-secret-also-of-32-bytes-or-more"


def serving(store: str, *args: str, env: dict[str, str] | None = None) -> AbstractContextManager[str]:
    """``migsync serve ARGS`` on a free loopback port until the block ends: its base URL."""
    return serve_process(store, *args, admin=ADMIN, env=env)


def form_csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def published_store(url: str, tmp_path: Path, key_path: Path) -> str:
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "0001_a.sql").write_text("-- migrate:up\nCREATE TABLE a (x INTEGER);\n")
    result = run("publish", "--migrations", str(migrations), "--store", url, "--signing-key", str(key_path))
    assert result.returncode == 0, result.stderr
    return url


def test_a_login_on_one_process_works_on_another_with_the_same_secret_only(
    pg_url: str, tmp_path: Path, key_path: Path
) -> None:
    store = published_store(pg_url, tmp_path, key_path)
    secret_file = tmp_path / "panel.secret"
    secret_file.write_text(SHARED + "\n")
    # One process reads the secret from a file, the other from the environment: the same key.
    with (
        serving(store, "--panel-secret-file", str(secret_file)) as a,
        serving(store, env={"MIGSYNC_PANEL_SECRET": SHARED}) as b,
        serving(store, "--panel-secret", OTHER) as c,
        httpx.Client(timeout=10) as browser,  # one cookie jar: the browser behind a load balancer
    ):
        # The login form comes from A, its answer goes to B (as round-robin sends them).
        login_page = browser.get(f"{a}/admin/login")
        login = {"name": "ada", "token": ADMIN, "csrf": form_csrf(login_page.text)}
        logged_in = browser.post(f"{b}/admin/login", data=login)
        assert logged_in.status_code == 303, logged_in.text
        assert logged_in.headers["location"].endswith("/admin/")
        assert "migsync_panel" in browser.cookies

        # The session B issued is good on A, pages and forms alike.
        fleet = browser.get(f"{a}/admin/")
        assert fleet.status_code == 200 and "ada" in fleet.text
        csrf = form_csrf(browser.get(f"{b}/admin/migrations").text)
        request = browser.post(f"{a}/admin/migrations/1/actions", data={"csrf": csrf, "action": "reapply"})
        # Past the session and CSRF checks: refused only because this server has no --request-key.
        assert request.status_code == 409, request.text
        assert "Nothing was requested" in request.text

        # C signs with another secret: the session is no login there, the form token no token.
        to_login = browser.get(f"{c}/admin/")
        assert to_login.status_code == 303 and to_login.headers["location"].startswith("/admin/login")
        refused = browser.post(f"{c}/admin/migrations/1/actions", data={"csrf": csrf, "action": "reapply"})
        assert refused.status_code == 303 and "/admin/login" in refused.headers["location"]
        with httpx.Client(timeout=10) as another_browser:  # not logged in: it gets the form
            login_page = another_browser.get(f"{a}/admin/login")
            login = {"name": "bob", "token": ADMIN, "csrf": form_csrf(login_page.text)}
            assert another_browser.post(f"{c}/admin/login", data=login).status_code == 403


def test_serve_refuses_a_short_or_doubly_given_panel_secret(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'nope.db'}"  # refused before the store is opened
    short = run("serve", "--store", store, "--admin-token", ADMIN, "--panel-secret", "x" * 31)
    assert short.returncode == 2
    assert short.stderr.startswith("error: --panel-secret is 31 bytes: it must be at least 32")
    from_env = run("serve", "--store", store, "--admin-token", ADMIN, env={"MIGSYNC_PANEL_SECRET": "short"})
    assert from_env.returncode == 2 and "--panel-secret is 5 bytes" in from_env.stderr
    secret_file = tmp_path / "panel.secret"
    secret_file.write_text("too short\n")
    in_file = run("serve", "--store", store, "--admin-token", ADMIN, "--panel-secret-file", str(secret_file))
    assert in_file.returncode == 2
    assert f"error: the panel secret in {secret_file} is 9 bytes" in in_file.stderr
    missing = run(
        "serve", "--store", store, "--admin-token", ADMIN, "--panel-secret-file", str(tmp_path / "none")
    )
    assert missing.returncode == 2 and "cannot read the panel secret file" in missing.stderr
    both = run(
        "serve",
        "--store",
        store,
        "--admin-token",
        ADMIN,
        "--panel-secret",
        SHARED,
        "--panel-secret-file",
        str(secret_file),
    )
    assert both.returncode == 2
    assert "give --panel-secret or --panel-secret-file, not both" in both.stderr


def test_the_panel_secret_comes_from_the_configuration_file(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'nope.db'}"
    folder = tmp_path / "conf"
    folder.mkdir()
    config = folder / "migsync.toml"
    config.write_text(f'[serve]\nstore = "{store}"\npanel_secret_file = "panel.secret"\n')
    (folder / "panel.secret").write_text("short\n")  # relative to the file's folder, not the working one
    result = run("serve", "--admin-token", ADMIN, cwd=tmp_path, env={"MIGSYNC_CONFIG": str(config)})
    assert result.returncode == 2
    assert f"error: the panel secret in {folder / 'panel.secret'} is 5 bytes" in result.stderr
    config.write_text(f'[serve]\nstore = "{store}"\npanel_secret = "short"\n')
    result = run("serve", "--admin-token", ADMIN, cwd=tmp_path, env={"MIGSYNC_CONFIG": str(config)})
    assert result.returncode == 2 and "error: --panel-secret is 5 bytes" in result.stderr


def worker_pids(parent: int) -> set[int]:
    """The uvicorn worker processes of ``migsync serve`` ``parent`` (its spawned children)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == parent and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


def test_workers_share_logins_and_clients_alternate_between_them(
    pg_url: str, tmp_path: Path, key_path: Path
) -> None:
    store = published_store(pg_url, tmp_path, key_path)
    refused = run("serve", "--store", store, "--admin-token", ADMIN, "--workers", "2")
    assert refused.returncode == 2 and "--workers needs --panel-secret" in refused.stderr
    port = free_port()
    proc = start(
        "serve", "--store", store, "--port", str(port), "--admin-token", ADMIN, "--workers", "2",
        "--pool-size", "2", "--max-overflow", "1", env={"MIGSYNC_PANEL_SECRET": SHARED},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN}"}

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()
        try:
            return httpx.get(f"{base}/api/clients", headers=admin, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for("migsync serve --workers 2", up, timeout=60)
        wait_for("two workers", lambda: len(worker_pids(proc.pid)) == 2, timeout=30)
        # Clients registered through the API; each request on a connection of its own, so the
        # kernel hands them to either worker.
        made = httpx.post(
            f"{base}/api/clients", headers=admin, json={"clients": [{"name": "a"}, {"name": "b"}]}
        )
        assert made.status_code == 201, made.text
        tokens = [c["token"] for c in made.json()["clients"]]
        for round_ in range(10):
            for token in tokens:
                headers = client_headers(token)
                pending = httpx.get(f"{base}/api/migrations/pending", headers=headers)
                assert pending.status_code == 200, pending.text
                assert [m["version"] for m in pending.json()["migrations"]] == (["1"] if round_ == 0 else [])
                migration = pending.json()["migrations"][0] if round_ == 0 else None
                if migration is not None:
                    report = {
                        "reports": [
                            {"version": "1", "applied": True, "error": None, "attempts": 1,
                             "checksum": migration["checksum"]}
                        ]
                    }  # fmt: skip
                    done = httpx.post(f"{base}/api/migrations/status", headers=headers, json=report)
                    assert done.status_code == 200, done.text
        fleet = httpx.get(f"{base}/api/clients", headers=admin).json()
        assert fleet["counts"] == {"ok": 2, "failing": 0, "pending": 0, "drift": 0}
        # A login made on one connection (one worker or the other) holds on every later one.
        with httpx.Client(timeout=10) as browser:
            login_page = browser.get(f"{base}/admin/login")
            login = {"name": "ada", "token": ADMIN, "csrf": form_csrf(login_page.text)}
            assert browser.post(f"{base}/admin/login", data=login).status_code == 303
            cookies = browser.cookies
        for _ in range(10):
            with httpx.Client(timeout=10, cookies=cookies) as fresh:  # a new connection each time
                page = fresh.get(f"{base}/admin/")
                assert page.status_code == 200 and "ada" in page.text
    finally:
        stdout, stderr = stop(proc)
    assert f"migsync: API at {base}/api/ (2 worker processes)" in stdout
    served = {
        line.split("[")[1].split("]")[0] for line in stderr.splitlines() if "Started server process" in line
    }
    assert len(served) == 2, stderr
