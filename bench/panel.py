"""The admin panel's pages for a large fleet: time per page, against the JSON API on the same data.

A store (SQLite in a temp dir, or ``--store URL``) gets M published migrations and N
clients, each with a status row per migration (a tenth failing, a few dead) and a
request history (a revert and a re-apply per tenth of them). The app runs in this
process (``httpx.ASGITransport``: no sockets, so what is timed is the app: store
reads, views and rendering). Each page is fetched ``--repeat`` times, best time kept,
next to ``GET /api/clients`` (the fleet view as JSON, the same store reads without
the HTML): the ratio is what the HTML costs on top.

    python bench/panel.py [-n 100 1000] [-m 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

from migsync.core.migration import Migration, Script
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.protocol.wire import ActionResult, StatusReport
from migsync.server import Store
from migsync.server.app import create_app

ADMIN = "bench-admin"


async def fill(store: Store, clients: int, migrations: int, key_path: Path) -> None:
    published = [
        Migration(v, f"{v:04d}_m{v}", {"*": Script(f"CREATE TABLE t{v} (x INTEGER)")}, {})
        for v in range(1, migrations + 1)
    ]
    await store.publish(published, load_private_key(key_path))
    for i in range(clients):
        client_id, _ = await store.add_client(f"client-{i:05d}")
        failing = i % 10 == 0
        reports = [
            StatusReport(m.version, not (failing and m.version == migrations), None, 1, m.checksum)
            for m in published
        ]
        if failing:
            last = reports[-1]
            dead = i % 20 == 0
            reports[-1] = StatusReport(last.version, False, "no such table: t0", 3, last.checksum, dead)
        await store.report(client_id, reports)
        if failing:
            for action in ("revert", "reapply"):
                [made] = await store.request_action(action, migrations, [client_id], "bench")
                await store.record_answers(client_id, [ActionResult(made.id, "done", None)])


async def timed(http: httpx.AsyncClient, path: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        response = await http.get(path, headers={"Authorization": f"Bearer {ADMIN}"})
        best = min(best, time.perf_counter() - start)
        assert response.status_code == 200, (path, response.status_code)
    return best


async def run(clients: int, migrations: int, repeat: int, store_url: str | None) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'server.db'}"
        write_keypair(Path(tmp) / "key")
        async with Store.open(url) as store:
            await fill(store, clients, migrations, Path(tmp) / "key")
        app = create_app(url, admin_token=ADMIN, cache_seconds=0)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                login = await http.get("/admin/login")
                csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
                assert csrf is not None
                form = {"name": "bench", "token": ADMIN, "csrf": csrf.group(1)}
                assert (await http.post("/admin/login", data=form)).status_code == 303
                api = await timed(http, "/api/clients", repeat)
                rows = []
                for label, path in (
                    ("fleet", "/admin/"),
                    ("fleet failing", "/admin/?failing=1"),
                    ("migrations", "/admin/migrations"),
                    ("one client", "/admin/clients/1"),
                    ("actions", "/admin/actions"),
                ):
                    seconds = await timed(http, path, repeat)
                    rows.append(
                        f"{clients:>6} {migrations:>4}  {label:<14} {seconds * 1000:>9.1f} "
                        f"{api * 1000:>12.1f} {seconds / api:>7.2f}x"
                    )
                return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[100, 1000], help="clients")
    parser.add_argument("-m", type=int, default=20, help="published migrations")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store", default=None, help="a store URL to fill (default: SQLite in a temp dir)")
    args = parser.parse_args()
    print(f"migsync bench/panel.py  in-process ASGI, best of {args.repeat}  python {sys.version.split()[0]}")
    print(f"{'N':>6} {'M':>4}  {'page':<14} {'page ms':>9} {'JSON API ms':>12} {'ratio':>8}")
    for n in args.n:
        for row in asyncio.run(run(n, args.m, args.repeat, args.store)):
            print(row)
    print("target: the fleet page of 1000 clients in well under a second (an admin's click)")


if __name__ == "__main__":
    main()
