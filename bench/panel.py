"""The admin panel's pages for a large fleet: time per page, against the JSON API on the same data.

A store (SQLite in a temp dir, or ``--store URL``, which must be empty) gets M published
migrations and N clients, written with direct bulk inserts (registering and reporting 10,000
clients one by one would take longer than everything timed here): each client has a status row
per migration (a tenth failing on the next-to-last, a twentieth of those dead), some were not seen
for days, a twentieth carry ``region=eu``, they run one of three app versions, and a tenth have a
request history (a revert and a re-apply). The last migration (which needs app >= 2.4) is in a rollout (stages
1%,10%,50%,100%, a day's soak) started six hours ago, now in its 50% stage, with the status events
of the clients that reported on it spread over those hours: what its charts draw.

The app runs in this process (``httpx.ASGITransport``: no sockets, so what is timed is the app:
store reads, views and rendering). Each page is fetched ``--repeat`` times, best time kept, next
to ``GET /api/clients`` (the fleet's first page as JSON, with its counts): the ratio is what
the page costs against it.

    python bench/panel.py [-n 1000 10000] [-m 20] [--repeat 5] [--screenshots docs/images]

``--screenshots DIR``: also serve the largest fleet on a loopback port and take the rollouts
page and the clients page with Debian's chromium (Playwright), as DIR/panel-*-10k.png.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, text, update

from migsync.core.migration import Migration, Script
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.server import Store, fleet_summary
from migsync.server import rollouts as r
from migsync.server import tables as t
from migsync.server.app import create_app

ADMIN = "bench-admin"
HOUR = 3600.0
DAY = 24 * HOUR
STAGES = "1%,10%,50%,100%"
APPS = ("2.3.1", "2.4.0", "2.4.1")
CHUNK = 2000


class _At:
    """A store clock that says a fixed time (the rollout starts six hours before now)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at


def _chunks(rows: list[dict[str, object]]) -> list[list[dict[str, object]]]:
    return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]


async def fill(url: str, clients: int, migrations: int, key_path: Path, now: float) -> None:
    """The fleet described above, in store ``url`` (created)."""
    published = [
        Migration(v, f"{v:04d}_m{v}", {"*": Script(f"CREATE TABLE t{v} (x INTEGER)")}, {})
        for v in range(1, migrations)
    ]
    # The rollout's migration needs a newer app than a third of the fleet runs: held back there.
    needs = f"-- migsync:requires app>=2.4\nCREATE TABLE t{migrations} (x INTEGER)"
    published.append(Migration(migrations, f"{migrations:04d}_m{migrations}", {"*": Script(needs)}, {}))
    start = now - 6 * HOUR
    key = load_private_key(key_path)
    async with Store.open(url, clock=_At(start)) as store:
        await store.publish(published[:-1], key)
        result = await store.publish(
            published[-1:], key, rollout=(r.parse_stages(STAGES), r.Policy(soak=DAY), "release-bot")
        )
        assert result.rollout_id is not None
        stages = r.parse_stages(STAGES)
        client_rows, status_rows, event_rows, action_rows = [], [], [], []
        last = published[-1]
        for i in range(1, clients + 1):
            labels = {"region": "eu"} if i % 20 == 0 else None
            seen = None if i % 97 == 0 else now - (3 * DAY if i % 50 == 0 else (i % 600) * 7.0)
            client_rows.append(
                {
                    "id": i,
                    "name": f"client-{i:05d}",
                    "token_hash": hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
                    "created_at": now - 30 * DAY,
                    "last_seen_at": seen,
                    "reported_version": None,
                    "status_serial": 1,
                    "labels": json.dumps(labels) if labels else None,
                    "app_version": APPS[i % 3],
                }
            )
            failing = i % 10 == 0
            for m in published[:-1]:
                bad = failing and m.version == published[-2].version
                status_rows.append(
                    {
                        "client_id": i,
                        "version": m.version,
                        "applied": not bad,
                        "error": "no such table: t0" if bad else None,
                        "attempts": 3 if bad else 1,
                        "checksum": m.checksum,
                        "updated_at": now - DAY,
                        "dead": bad and i % 20 == 0,
                    }
                )
            if failing:
                for n, action in enumerate(("revert", "reapply")):
                    action_rows.append(
                        {
                            "client_id": i,
                            "action": action,
                            "version": published[-2].version,
                            "requested_by": "bench",
                            "requested_at": now - DAY + n,
                            "state": "done",
                            "detail": None,
                            "updated_at": now - DAY + n + 1,
                        }
                    )
            # The rollout: stages 1 and 2 all reported (a few failed), stage 3 a bit over half.
            stage = r.stage_of(stages, i, labels or {})
            if stage is None or stage > 2:
                continue
            share = [(0.0, 0.5), (0.6, 2.0), (2.2, 6.0)][stage]
            fraction = (i * 7919 % 1000) / 1000
            if stage == 2 and fraction > 0.55:
                continue  # not reported yet
            spread = min(fraction / 0.55, 1.0) if stage == 2 else fraction
            at = start + HOUR * (share[0] + (share[1] - share[0]) * spread)
            broke = i % 53 == 0
            status_rows.append(
                {
                    "client_id": i,
                    "version": last.version,
                    "applied": not broke,
                    "error": "lock timeout" if broke else None,
                    "attempts": 1,
                    "checksum": last.checksum,
                    "updated_at": at,
                    "dead": False,
                }
            )
            event_rows.append(
                {"client_id": i, "version": last.version, "state": "failed" if broke else "applied", "at": at}
            )
        async with store._engine.begin() as conn:  # a bench's bulk fill: past the store's API
            for table, rows in (
                (t.store_clients, client_rows),
                (t.store_client_status, status_rows),
                (t.store_status_events, event_rows),
                (t.store_actions, action_rows),
            ):
                for chunk in _chunks(rows):
                    await conn.execute(insert(table), chunk)
            # Status rows written past the store's API: each client's fleet summary from them.
            await conn.execute(text(fleet_summary.REFRESH_ALL_SQL))
            c = t.store_rollouts.c
            # Published before there were clients, its empty stages passed at once: it is put
            # where a rollout of these clients would be now, with the audit to match.
            await conn.execute(
                update(t.store_rollouts)
                .where(c.id == result.rollout_id)
                .values(
                    state=r.RUNNING,
                    reason=None,
                    stage=2,
                    stage_started_at=start + 2.2 * HOUR,
                    updated_at=start + 2.2 * HOUR,
                )
            )
            await conn.execute(
                delete(t.store_rollout_audit).where(
                    t.store_rollout_audit.c.rollout_id == result.rollout_id,
                    t.store_rollout_audit.c.what.not_like("started:%"),
                )
            )
            audit = [
                {"rollout_id": result.rollout_id, "at": start + h * HOUR, "who": who, "what": what}
                for h, who, what in (
                    (0.6, "migsync", "started 10%: 1% passed"),
                    (2.2, "ana", "advanced to stage 3 (by ana)"),
                )
            ]
            await conn.execute(insert(t.store_rollout_audit), audit)
            if url.startswith("postgresql"):  # the ids were given: move the sequences past them
                for table in ("store_clients", "store_actions", "store_status_events"):
                    sequence = f"pg_get_serial_sequence('{table}', 'id')"
                    await conn.exec_driver_sql(f"SELECT setval({sequence}, (SELECT max(id) FROM {table}))")


async def timed(
    http: httpx.AsyncClient, path: str, repeat: int, headers: dict[str, str] | None = None
) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        response = await http.get(path, headers=headers)
        best = min(best, time.perf_counter() - start)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return best


PAGES = (
    ("rollouts (home)", "/admin/"),
    ("one rollout", "/admin/rollouts/1"),
    ("clients page 1", "/admin/clients"),
    ("clients search", "/admin/clients?q=client-0421"),
    ("clients failing", "/admin/clients?failing=1"),
    ("clients label", "/admin/clients?label=region%3Deu&sort=seen"),
    ("clients held", "/admin/clients?held=1"),
    ("one client", "/admin/clients/10"),
    ("migrations", "/admin/migrations"),
    ("actions", "/admin/actions"),
)


async def _log_in(http: httpx.AsyncClient) -> None:
    login = await http.get("/admin/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert csrf is not None
    form = {"name": "bench", "token": ADMIN, "csrf": csrf.group(1)}
    assert (await http.post("/admin/login", data=form)).status_code == 303


async def run(
    clients: int, migrations: int, repeat: int, store_url: str | None, shots: Path | None
) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'server.db'}"
        write_keypair(Path(tmp) / "key")
        write_keypair(Path(tmp) / "request.key")
        request_key = load_private_key(Path(tmp) / "request.key")
        now = time.time()
        began = time.perf_counter()
        await fill(url, clients, migrations, Path(tmp) / "key", now)
        print(f"  (filled {clients} clients in {time.perf_counter() - began:.1f} s)", file=sys.stderr)
        app = create_app(url, admin_token=ADMIN, cache_seconds=0, request_key=request_key)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                await _log_in(http)
                api = await timed(http, "/api/clients", repeat, {"Authorization": f"Bearer {ADMIN}"})
                rows = []
                for label, path in PAGES:
                    seconds = await timed(http, path, repeat)
                    rows.append(
                        f"{clients:>6} {migrations:>4}  {label:<16} {seconds * 1000:>9.1f} "
                        f"{api * 1000:>12.1f} {seconds / api:>7.2f}x"
                    )
        if shots is not None:
            await screenshots(
                url, request_key, shots, f"{clients // 1000}k" if clients >= 1000 else str(clients)
            )
        return rows


async def screenshots(url: str, request_key: Ed25519PrivateKey, folder: Path, tag: str) -> None:
    """The rollouts page and the clients page of the fleet in ``url``, served on loopback and
    taken with Debian's chromium."""
    import uvicorn
    from playwright.async_api import async_playwright

    app = create_app(url, admin_token=ADMIN, cache_seconds=0, request_key=request_key)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}/admin"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{base}/login")
            await page.fill("#name", "Ana Admin")
            await page.fill("#token", ADMIN)
            await page.click("button[type=submit]")
            await page.wait_for_selector("figure.chart")
            await page.screenshot(path=folder / f"panel-rollouts-{tag}.png", full_page=True)
            await page.goto(f"{base}/clients?failing=1&size=25")
            await page.wait_for_selector("table.clients")
            await page.screenshot(path=folder / f"panel-clients-{tag}.png")
            await browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    for name in ("rollouts", "clients"):
        print(f"  wrote {folder / f'panel-{name}-{tag}.png'}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[1000, 10000], help="clients")
    parser.add_argument("-m", type=int, default=20, help="published migrations")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--store", default=None, help="an empty store URL to fill (default: SQLite in a temp dir)"
    )
    parser.add_argument("--screenshots", type=Path, default=None, help="take the 10k pages' screenshots here")
    args = parser.parse_args()
    print(f"migsync bench/panel.py  in-process ASGI, best of {args.repeat}  python {sys.version.split()[0]}")
    print(f"{'N':>6} {'M':>4}  {'page':<16} {'page ms':>9} {'JSON API ms':>12} {'ratio':>8}")
    for n in args.n:
        shots = args.screenshots if n == max(args.n) else None
        for row in asyncio.run(run(n, args.m, args.repeat, args.store, shots)):
            print(row)
    print("target: every panel page under 300 ms at 10,000 clients")


if __name__ == "__main__":
    main()
