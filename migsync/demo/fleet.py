"""Part 2 of ``migsync demo``: a server and its fleet, all in this process.

5. a key pair signs the bundled migrations (and the list of them, the manifest)
   into a server store (SQLite), three clients are registered, and the HTTP
   API is served on a loopback port, with a second key pair, the request key,
   to sign the admin's requests to clients;
6. both shops sync over HTTP: fetch, verify, apply, report. The third client,
   ship-atlantic, never reaches the server: the migrations are exported to a
   drop folder, it syncs from there, and its reports reach the fleet view only
   when ``import-reports`` reads them back;
7. a broken migration is rolled out in stages, canary (shop-berlin, labelled
   ``group=canary``) then all: shop-berlin fails on it, the rollout pauses
   itself, shop-paris is never offered it, and the fleet view shows both;
8. the fix is rolled out over it (``force``: nobody applied the old content):
   shop-berlin applies it, the canary stage passes, the rollout moves on to
   all, and shop-paris gets the fixed one directly;
9. a migration signed with a key nobody trusts is refused by both clients
   (with the manifest that key signed); signed again with the real key, it applies;
10. the admin asks shop-paris to revert a migration, then to re-apply it:
    each signed request is carried out by its next sync;
11. ship-atlantic catches up from a fresh export, its reports are imported, and
    the fleet view: all three clients on the latest version, nothing failing.

The server is uvicorn serving :func:`migsync.server.app.create_app`, as a task
on the same event loop as the clients. This module imports SQLAlchemy,
Starlette, uvicorn, httpx and cryptography: :mod:`migsync.demo` imports it
only when part 2 runs, and ``migsync apply`` never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import click
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from migsync.client.sync import Syncer, SyncResult
from migsync.core.client import Client
from migsync.core.clock import RetryPolicy
from migsync.core.errors import MigsyncError
from migsync.core.sources import load_directory
from migsync.core.version import Version
from migsync.demo.steps import BROKEN, FIXED, FOURTH, command_to_type, copy_bundled, step
from migsync.output.report_server import print_fleet, print_rollout_stages, rollout_line
from migsync.protocol.signing import TrustedKey, load_private_key, write_keypair
from migsync.server import PublishResult, Store
from migsync.server.app import create_app
from migsync.server.export import ExportResult, export
from migsync.server.import_reports import ImportResult, import_reports
from migsync.server.rollouts import Policy, parse_stages
from migsync.transports.base import Transport
from migsync.transports.filedrop import FileDropTransport
from migsync.transports.http import HttpTransport

SHOPS = ("shop-berlin", "shop-paris")
#: The offline client: migrations and reports travel through a drop folder.
SHIP = "ship-atlantic"
FIFTH = "0005_add_customer_city.sql"
CITY = """-- migrate:up
ALTER TABLE customers ADD COLUMN city TEXT;
-- migrate:down
ALTER TABLE customers DROP COLUMN city;
"""
#: The staged rollouts of steps 7 and 8: the canary first, then everyone. No soak time: the demo
#: moves on as soon as the canary stage passes (a real one would watch it for a while).
STAGES = parse_stages("canary,all")
ROLLOUT = (STAGES, Policy(soak=0), "demo admin")
#: Short and without jitter: the demo is quick and prints the same every time.
_RETRY = RetryPolicy(base=0.05, factor=2, cap=0.5, jitter=0)


@attrs.frozen
class _Shop:
    name: str
    client: Client
    syncer: Syncer


async def run_fleet(root: Path) -> int:
    """Steps 5-10 in ``root`` (created): server store, keys and client databases."""
    migrations = copy_bundled(root / "migrations")
    (root / "keys").mkdir()
    store_url = f"sqlite:///{root / 'server.db'}"
    async with contextlib.AsyncExitStack() as stack:
        step("5. a server: sign and publish the bundled migrations, register three clients, serve")
        trusted = write_keypair(root / "keys" / "server")
        key = load_private_key(root / "keys" / "server")
        # The admin's requests are signed by a key of their own, which the server holds online.
        requester = write_keypair(root / "keys" / "requests")
        request_key = load_private_key(root / "keys" / "requests")
        store = await stack.enter_async_context(Store.open(store_url))
        _published(await store.publish(load_directory(migrations), key), trusted.fingerprint)
        labels = {"shop-berlin": {"group": "canary"}}
        registered = {name: await store.add_client(name, labels.get(name)) for name in (*SHOPS, SHIP)}
        click.echo(
            "   registered "
            + ", ".join(
                f"{n} (id {i}{', offline' if n == SHIP else ''}{', group=canary' if n in labels else ''})"
                for n, (i, _) in registered.items()
            )
        )
        url = await stack.enter_async_context(_serving(store_url, request_key))
        click.echo(
            f"   serving {url} (store {store_url}); clients trust key {trusted.fingerprint}, "
            f"and {requester.fingerprint} for the admin's requests"
        )
        keys = (trusted, requester)
        berlin, paris = [
            await stack.enter_async_context(_shop(root, name, _http(url, *registered[name]), keys))
            for name in SHOPS
        ]
        drop = root / "drop"
        # The ship never sees the server, so the token registration gave it is never used.
        ship_transport = FileDropTransport(drop.resolve().as_uri(), client_id=str(registered[SHIP][0]))
        ship = await stack.enter_async_context(_shop(root, SHIP, ship_transport, keys))
        names = {str(i): name for name, (i, _) in registered.items()}

        step(f"6. first sync: the shops over HTTP, {SHIP} through a drop folder and import-reports")
        for shop in (berlin, paris):
            await _sync(shop)
        _exported(await export(store, drop, request_key), drop)
        await _sync(ship)
        click.echo(f"   the fleet view before import-reports: the server does not know what {SHIP} did")
        print_fleet(await store.fleet())
        imported = _imported(await import_reports(store, drop / "reports"), names)
        ship_now = next(e for e in await store.fleet() if e.client.name == SHIP)
        click.echo(f"   the fleet view now: {SHIP} on version {max(ship_now.applied, default='-')}")

        step("7. a broken migration is rolled out in stages (canary, then all); shop-berlin fails on it")
        (migrations / FOURTH).write_text(BROKEN, encoding="utf-8")
        broken = await store.publish(load_directory(migrations), key, rollout=ROLLOUT)
        _published(broken, trusted.fingerprint)
        await _sync(berlin)
        await _sync(paris)  # outside the canary stage: not offered the broken migration
        await _rollout(store, broken)
        print_fleet(await store.fleet())

        step("8. the fix is rolled out over it (force: nobody applied the old content)")
        (migrations / FOURTH).write_text(FIXED, encoding="utf-8")
        fixed = await store.publish(load_directory(migrations), key, force=True, rollout=ROLLOUT)
        _published(fixed, trusted.fingerprint)
        await _sync(berlin)
        await _rollout(store, fixed)  # the canary stage passed: the rollout moves on to all
        await _sync(paris)
        await _rollout(store, fixed)

        step("9. a migration signed with a key the clients do not trust; then with the real key")
        (migrations / FIFTH).write_text(CITY, encoding="utf-8")
        rogue = write_keypair(root / "keys" / "rogue")
        fifth = [m for m in load_directory(migrations) if m.version == Version.parse(5)]
        _published(await store.publish(fifth, load_private_key(root / "keys" / "rogue")), rogue.fingerprint)
        for shop in (berlin, paris):
            await _sync(shop)
        _published(await store.publish(load_directory(migrations), key), trusted.fingerprint)
        last = [await _sync(shop) for shop in (berlin, paris)]

        step("10. the admin asks shop-paris to revert 0005, then to re-apply it (the panel's buttons)")
        paris_id = registered["shop-paris"][0]
        for action in ("revert", "reapply"):
            [made] = await store.request_action(action, Version.parse(5), [paris_id], "demo admin")
            click.echo(f"   request {made.id}: {action} version 5 on shop-paris, by {made.requested_by}")
            await _sync(paris)
            [answered] = await store.actions(paris_id, limit=1)
            click.echo(f"   request {answered.id}: {answered.state} ({answered.detail})")

        step(f"11. {SHIP} catches up through the drop folder; the fleet view")
        _exported(await export(store, drop, request_key), drop)
        last.append(await _sync(ship))
        imported &= _imported(await import_reports(store, drop / "reports"), names)
        fleet = await store.fleet()
        print_fleet(fleet)
    newest = max(m.version for m in load_directory(migrations))
    clean = all(
        max(e.applied, default=None) == newest and not (e.failed or e.drift or e.pending) for e in fleet
    )
    click.echo(f"\ntry: {command_to_type()} fleet --store {store_url}")
    return 0 if clean and imported and all(r.ok for r in last) else 1


def _published(result: PublishResult, signer: str) -> None:
    done = {"added": result.added, "replaced": result.replaced, "re-signed": result.resigned}
    listed = "; ".join(f"{what} {_span(names)}" for what, names in done.items() if names)
    click.echo(f"   published, signed by {signer}: {listed or 'nothing new'}")


async def _rollout(store: Store, published: PublishResult) -> None:
    """The rollout ``published`` started, as the admin watching it sees it (reading it evaluates it)."""
    assert published.rollout_id is not None
    status = await store.rollout_status(published.rollout_id)
    click.echo(f"   {rollout_line(status.rollout)}")
    print_rollout_stages(status)


def _exported(result: ExportResult, drop: Path) -> None:
    written = f"wrote {_span(result.written)}" if result.written else "wrote nothing new"
    unchanged = f", {len(result.unchanged)} unchanged" if result.unchanged else ""
    click.echo(f"   exported to {drop}: {written}{unchanged}")


def _imported(result: ImportResult, names: dict[str, str]) -> bool:
    """Print what import-reports did, in a line or two; whether nothing was refused."""
    versions = sorted({v for f in result.imported for v in (*f.recorded, *f.unchanged)})
    by = sorted({names.get(f.path.parent.name, f.path.parent.name) for f in result.imported})
    files = f"{len(result.imported)} report file{'' if len(result.imported) == 1 else 's'}"
    click.echo(
        f"   import-reports: {files} of {', '.join(by) or 'nobody'}, "
        f"versions {', '.join(map(str, versions)) or '-'} recorded"
    )
    for refused in result.refused:
        click.echo(f"   import-reports: REFUSED {refused.path}: {refused.reason}")
    return not result.refused


def _span(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"


async def _sync(shop: _Shop) -> SyncResult:
    """One sync of ``shop``, told in a line or two."""
    result = await shop.syncer.sync()
    said = []
    if result.offline is not None:
        said.append(f"offline ({result.offline})")
    elif result.offered is not None:
        said.append(f"{result.offered} offered, {len(result.stored)} verified and stored")
    if result.actions_received:
        said.append(f"{result.actions_received} request from the admin")
    for operation, done in (("apply", "applied"), ("revert", "reverted")):
        names = [
            o.label.split(" ", 1)[1] for o in result.run.processed if o.ok and o.label.startswith(operation)
        ]
        if names:
            said.append(f"{done} {_span(names)}")
    if result.delivered:
        said.append(f"reported {result.delivered}")
    click.echo(f"   {shop.name}: {', '.join(said) or 'nothing new'}")
    if result.manifest_error is not None:
        click.echo(f"   {shop.name}: REFUSED the server's manifest: {result.manifest_error}")
    if (bad := result.run.failure or result.run.blocked) is not None:
        click.echo(
            f"   {shop.name}: FAILED {bad.label} (attempt {bad.attempts} of {bad.max_attempts}): {bad.error}"
        )
    for refusal in (r for r in result.refused if r.kind == "unsent"):
        click.echo(f"   {shop.name}: {refusal.name} not sent yet (the rollout holds it back)")
    for refusal in (r for r in result.refused if r.kind not in ("manifest", "unsent")):  # manifest: above
        click.echo(
            f"   {shop.name}: REFUSED {refusal.name} ({refusal.kind}), not stored, not run: {refusal.reason}"
        )
    return result


def _http(url: str, client_id: int, token: str) -> HttpTransport:
    return HttpTransport(url, client_id=str(client_id), token=token, retries=1, backoff=_RETRY)


@contextlib.asynccontextmanager
async def _shop(
    root: Path, name: str, transport: Transport, keys: tuple[TrustedKey, TrustedKey]
) -> AsyncIterator[_Shop]:
    """Client ``name``: its own SQLite file, syncing through ``transport``, trusting the server's
    signing key (migrations, manifest) and its request key."""
    client = Client.connect(
        f"sqlite:///{root / name}.db",
        backend_options={"create": True},
        sinks=["logging", f"jsonl:path={root / name}.events.jsonl"],
        retry=_RETRY,
        max_attempts=3,
    )
    async with client, transport:
        yield _Shop(name, client, Syncer(client, transport, [keys[0]], request_keys=[keys[1]]))


@contextlib.asynccontextmanager
async def _serving(store_url: str, request_key: Ed25519PrivateKey) -> AsyncIterator[str]:
    """The HTTP API on a free loopback port, served by uvicorn on this event loop; yields its URL."""
    app = create_app(
        store_url, admin_token=secrets.token_urlsafe(16), cache_seconds=0, request_key=request_key
    )
    # A socket bound here and handed to uvicorn: no other process can take the port in between.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            log_config=None,
            access_log=False,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    await task  # raises what stopped it, if anything did
                    raise MigsyncError("the demo's server did not start (see the log above)")
                await asyncio.sleep(0.01)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task
