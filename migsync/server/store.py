"""The server store: published (signed) migrations, clients, and status per client.

::

    async with Store.open("sqlite:///server.db") as store:
        result = await store.publish(load_directory("migrations"), load_private_key("key"))
        client_id, token = await store.add_client("shop-berlin")

Publishing is all or nothing: every migration is signed before the
transaction starts, and a refusal (a published version with other content)
writes nothing. ``force=True`` replaces such content but keeps the checksum
it replaced in ``replaced_checksum``, and every client's status row keeps the
checksum that client applied, so a client that applied the old content is
told of the mismatch rather than silently changed.

Client tokens are shown once, by :meth:`Store.add_client`; the store keeps
only their sha256.

Entity changes that clients push land in the inbox (:meth:`Store.receive_changes`,
:mod:`migsync.server.inbox`), each handed to the store's change appliers
(``Store.open(url, appliers=...)``; none by default, see :mod:`migsync.server.appliers`).
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from sqlalchemy import Row, insert, inspect, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from migsync.core.errors import BackendError, ChecksumMismatch, ConfigError, ConnectError
from migsync.core.migration import Migration
from migsync.core.version import Version
from migsync.protocol.wire import (
    ActionRequest,
    ActionResult,
    ActionsAck,
    ChangesAck,
    EntityChange,
    SignedManifest,
)
from migsync.server import actions as requests
from migsync.server import engine as engines
from migsync.server import fleet as fleets
from migsync.server import fleet_summary, manifests, serials, status
from migsync.server import inbox as inboxes
from migsync.server import tables as t
from migsync.server.change_batch import ChangeBatch
from migsync.server.records import (
    ActionRecord,
    ClientRecord,
    ClientState,
    FleetEntry,
    PendingMigration,
    PublishedMigration,
    PublishResult,
    ReceivedChange,
    ReportResult,
    StatusReport,
    token_hash,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from migsync.core.clock import Clock
    from migsync.server.appliers import ChangeApplier
    from migsync.server.client_list import ClientFilter, ClientListing
    from migsync.server.rollout_store import Rollout, RolloutStatus
    from migsync.server.rollouts import Policy, Stage

#: Key of the Postgres advisory lock that serialises publishing and schema changes.
_LOCK_KEY = fleet_summary.PUBLISH_LOCK_KEY  # "migsync"; reports take it shared

#: How often a write that Postgres chose as a deadlock's (or a serialization failure's) victim is tried.
_WRITE_ATTEMPTS = 5
#: How often, at most, a report drops the status events past retention (seconds, on the store's clock).
_EXPIRE_EVERY = 1.0

_MAX_NAME = 200
#: Clients registered per INSERT by :meth:`Store.add_clients` (and names looked up per SELECT).
_BATCH = 1000
_MAX_TOKEN = 512


class Store:
    """The server's database. Open it with :meth:`open`; every method is one unit of work."""

    def __init__(
        self,
        engine: AsyncEngine,
        url: URL,
        appliers: Sequence[ChangeApplier] = (),
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        #: what rollouts measure soak times on and date their events by (tests pass a test clock)
        self.now = clock.now if clock is not None else time.time
        # The poll path's reads: one statement each, or statements that need no common snapshot
        # (Postgres reads each in a snapshot of its own anyway). Without a transaction they save
        # the BEGIN and ROLLBACK round trips. SQLite keeps its transactions (BEGIN is local).
        self._lone_reads = (
            engine if engines.is_sqlite(url) else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._url = url
        self.where = engines.display(url)
        #: what :meth:`receive_changes` hands each stored change to, in this order
        self.appliers: tuple[ChangeApplier, ...] = tuple(appliers)
        #: when a report last dropped the status events past retention (on :attr:`now`'s clock)
        self._expired_at = -math.inf

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        create: bool = True,
        appliers: Sequence[ChangeApplier] = (),
        clock: Clock | None = None,
        pool: engines.PoolOptions | None = None,
    ) -> AsyncIterator[Store]:
        """The store at ``url``, its tables created (``create``) or upgraded as needed.

        Without ``create`` a store that does not exist yet is a :class:`ConfigError`.
        A store written by a newer migsync is refused with :class:`ConnectError`.
        ``appliers`` get each entity change the store receives (none by default). ``clock``: what
        rollouts measure time on (default: the system's). ``pool`` sizes a Postgres store's
        connection pool (:class:`~migsync.server.engine.PoolOptions`).
        """
        mapped = engines.store_url(url)
        engine = engines.create_engine(mapped, create=create, pool=pool)
        try:
            where = engines.display(mapped)
            await engines.check_connection(engine, where)
            store = cls(engine, mapped, appliers, clock)
            await store._ensure_schema(create)
            yield store
        finally:
            await engine.dispose()

    # -- units of work ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _read(self, doing: str, *, snapshot: bool = True) -> AsyncIterator[AsyncConnection]:
        """A connection to read with; without ``snapshot``, outside a transaction on Postgres."""
        engine = self._engine if snapshot else self._lone_reads
        async with engines.mapped_errors(self.where, doing), engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _write(self, doing: str, *, exclusive: bool = False) -> AsyncIterator[AsyncConnection]:
        """One transaction; ``exclusive`` ones (publish, schema changes) run one at a time."""
        async with engines.mapped_errors(self.where, doing), self._engine.connect() as conn:
            conn = await engines.writing(conn, self._url)
            async with conn.begin():
                if exclusive and not engines.is_sqlite(self._url):
                    # SQLite's BEGIN IMMEDIATE already admits one writer only.
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
                yield conn

    @contextlib.asynccontextmanager
    async def listening(self, notified: Callable[[], None]) -> AsyncIterator[bool]:
        """Call ``notified()`` whenever a change a poll depends on is committed (a publish, a
        report or an answer that changes something, a request to clients), by any process, while
        the block runs; yields whether it can (Postgres ``LISTEN``, on a connection of its own).
        On SQLite it cannot: yields False."""
        if engines.is_sqlite(self._url):
            yield False
            return

        def heard(*_args: Any) -> None:
            notified()

        async with (
            engines.mapped_errors(self.where, "listening for changes"),
            self._lone_reads.connect() as conn,
        ):
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.add_listener(serials.CHANNEL, heard)
            try:
                yield True
            finally:
                with contextlib.suppress(Exception):  # the connection may be gone: it closes anyway
                    await raw.remove_listener(serials.CHANNEL, heard)

    # -- the store's own schema ------------------------------------------------------------------

    async def _ensure_schema(self, create: bool) -> None:
        async with self._read("reading the store's schema version") as conn:
            version = await self._schema_version(conn)
        if version == t.SCHEMA_VERSION:
            return
        self._check_version(version, create)
        async with self._write("creating the store's tables", exclusive=True) as conn:
            version = await self._schema_version(conn)  # again: another process may have done it
            self._check_version(version, create)
            if version is None:
                await conn.run_sync(t.metadata.create_all)
                await conn.execute(
                    insert(t.store_meta).values(key="schema_version", value=str(t.SCHEMA_VERSION))
                )
                return
            for step in range(version, t.SCHEMA_VERSION):
                await conn.run_sync(t.UPGRADES[step])
            await conn.execute(
                update(t.store_meta)
                .where(t.store_meta.c.key == "schema_version")
                .values(value=str(t.SCHEMA_VERSION))
            )

    async def _schema_version(self, conn: AsyncConnection) -> int | None:
        exists = await conn.run_sync(lambda sync: inspect(sync).has_table(t.store_meta.name))
        if not exists:
            return None
        value = await conn.scalar(select(t.store_meta.c.value).where(t.store_meta.c.key == "schema_version"))
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise BackendError(
                f"store {self.where}: {t.store_meta.name}.schema_version is {value!r}, not a number"
            ) from None

    def _check_version(self, version: int | None, create: bool) -> None:
        if version is None and not create:
            raise ConfigError(f"{self.where} is not a migsync store (it has no {t.store_meta.name} table)")
        if version is not None and version > t.SCHEMA_VERSION:
            raise ConnectError(
                f"store {self.where} has schema version {version}, newer than this migsync "
                f"understands ({t.SCHEMA_VERSION}); upgrade migsync to use it"
            )

    # -- migrations ------------------------------------------------------------------------------

    async def publish(
        self,
        migrations: Iterable[Migration],
        signing_key: Ed25519PrivateKey,
        *,
        force: bool = False,
        rollout: tuple[Sequence[Stage], Policy, str] | None = None,
    ) -> PublishResult:
        """Sign ``migrations`` and add them; refuse changed content unless ``force``.

        ``rollout``: ``(stages, policy, who)``: take the versions this publish adds or replaces
        to the fleet in stages (:mod:`migsync.server.rollouts`), in the same transaction, so that
        no client is offered them before the rollout holds them back. A publish that adds or
        replaces nothing then is a :class:`ConfigError` (start a rollout of published versions
        with :meth:`start_rollout`).

        Raises :class:`ChecksumMismatch` naming every version that is published
        with other content (nothing is written then), :class:`ConfigError` if
        two of ``migrations`` share a version.
        """
        from migsync.protocol.signing import fingerprint, sign

        items = sorted(migrations, key=lambda m: m.version)
        for before, after in itertools.pairwise(items):
            if before.version == after.version:
                raise ConfigError(f"version {after.version} given twice: {before.name} and {after.name}")
        signer = fingerprint(signing_key.public_key())
        signed = [(m, sign(signing_key, m)) for m in items]
        added: list[str] = []
        unchanged: list[str] = []
        replaced: list[str] = []
        resigned: list[str] = []
        async with self._write("publishing migrations", exclusive=True) as conn:
            columns = t.store_migrations.c
            published = {
                row.version: row
                for row in await conn.execute(select(columns.version, columns.checksum, columns.signature))
            }
            conflicts = [
                (m, published[m.version].checksum)
                for m, _ in signed
                if m.version in published and published[m.version].checksum != m.checksum
            ]
            if conflicts and not force:
                raise ChecksumMismatch(_refusal(conflicts))
            now = time.time()
            rows = []
            for migration, signature in signed:
                values = {
                    "name": migration.name,
                    "content": migration.canonical_content(),
                    "checksum": migration.checksum,
                    "signature": signature,
                    "signed_by": signer,
                    "published_at": now,
                }
                version = migration.version
                old = published.get(version)
                where = columns.version == version
                if old is None:
                    rows.append({"version": version, **values})
                    added.append(migration.name)
                elif old.checksum != migration.checksum:
                    values |= {"replaced_checksum": old.checksum, "replaced_at": now}
                    await conn.execute(update(t.store_migrations).where(where).values(values))
                    replaced.append(migration.name)
                elif old.signature != signature:  # Ed25519 is deterministic: another key signed it
                    await conn.execute(
                        update(t.store_migrations).where(where).values(signature=signature, signed_by=signer)
                    )
                    resigned.append(migration.name)
                else:
                    unchanged.append(migration.name)
            if rows:
                await conn.execute(insert(t.store_migrations), rows)
            if rows or replaced:
                # Drift and "done" of the clients with rows of these versions (a force replaced
                # what they applied; a new version: rows reported before it was published, if any).
                changed_versions = [
                    m.version
                    for m, _ in signed
                    if m.version not in published or published[m.version].checksum != m.checksum
                ]
                await fleet_summary.refresh_versions(conn, changed_versions)
            # The signed list of every version, in the same transaction: a client never sees a
            # migration the manifest does not list, nor a manifest listing one it cannot get.
            listed = await manifests.write(conn, signing_key)
            if rows or replaced or resigned or listed:
                await serials.bump_publish_serial(conn)
            rollout_id = None
            if rollout is not None:
                from migsync.server import rollout_store

                changed = [m.version for m in items if m.name in added or m.name in replaced]
                if not changed:
                    raise ConfigError(
                        "nothing to roll out: this publish adds or replaces no version; start a "
                        "rollout of a published version with 'migsync rollout start VERSION'"
                    )
                stages, policy, by = rollout
                started = await rollout_store.start(conn, changed, stages, policy, by, self.now())
                rollout_id = started.id
        return PublishResult(tuple(added), tuple(unchanged), tuple(replaced), tuple(resigned), rollout_id)

    async def manifest(self) -> SignedManifest | None:
        """The signed manifest of what the store publishes (None: not published by this release yet)."""
        async with self._read("reading the signed manifest") as conn:
            return await manifests.read(conn)

    async def migrations(self) -> list[PublishedMigration]:
        """Every published migration, in version order."""
        async with self._read("reading published migrations") as conn:
            rows = (
                await conn.execute(select(t.store_migrations).order_by(t.store_migrations.c.version))
            ).all()
        return [self._published(row) for row in rows]

    def _published(self, row: Row[Any]) -> PublishedMigration:
        try:
            migration = Migration.from_json(json.loads(row.content))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(
                f"store {self.where}: published version {row.version} holds unreadable content ({exc})"
            ) from None
        if migration.checksum != row.checksum or migration.version != row.version:
            raise BackendError(
                f"store {self.where}: published version {row.version} ({row.name}) was changed outside "
                "migsync: its content does not match its checksum"
            )
        return PublishedMigration(
            migration,
            row.checksum,
            row.signature,
            row.signed_by,
            row.published_at,
            row.replaced_checksum,
            row.replaced_at,
        )

    # -- clients ---------------------------------------------------------------------------------

    async def add_client(self, name: str, labels: Mapping[str, str] | None = None) -> tuple[int, str]:
        """Register client ``name`` (with ``labels``): its id and its bearer token (shown this
        once, stored hashed)."""
        name = _client_name(name)
        token = secrets.token_urlsafe(32)
        async with self._write("adding a client") as conn:
            existing = await conn.scalar(select(t.store_clients.c.id).where(t.store_clients.c.name == name))
            if existing is not None:
                raise ConfigError(f"a client named {name!r} exists already (id {existing})")
            result = await conn.execute(
                insert(t.store_clients).values(
                    name=name,
                    token_hash=token_hash(token),
                    created_at=time.time(),
                    labels=json.dumps(dict(sorted(labels.items()))) if labels else None,
                )
            )
            key = result.inserted_primary_key
            assert key is not None  # an INSERT of one row always has one
            client_id = key[0]
        return int(client_id), token

    async def add_clients(
        self,
        names: Sequence[str],
        labels: Sequence[dict[str, str] | None] | None = None,
        *,
        sources: Sequence[str] | None = None,
    ) -> list[tuple[int, str, str]]:
        """Register many clients at once, all or nothing: ``(id, name, token)`` for each of
        ``names``, in their order (the tokens shown this once, stored hashed).

        A name given twice, or one registered already, is a :class:`ConfigError` naming it, and
        nothing is registered; ``sources`` (where each name was read, e.g. ``file line 3``)
        name the row in that message. ``labels``: one dict (or None) per name, the client's labels
        (rollout stages select clients by them: :mod:`migsync.server.rollouts`).
        """
        from migsync.server import rollouts

        cleaned = [_client_name(n) for n in names]
        if labels is not None and len(labels) != len(cleaned):
            raise ConfigError(f"{len(labels)} label sets for {len(cleaned)} clients")
        stored: list[str | None] = []
        for index, given in enumerate(labels or [None] * len(cleaned)):
            try:
                checked = dict(rollouts.parse_label(f"{k}={v}") for k, v in (given or {}).items())
            except ConfigError as exc:
                raise ConfigError(f"{sources[index] + ': ' if sources else ''}{exc}") from None
            stored.append(json.dumps(dict(sorted(checked.items()))) if checked else None)
        first: dict[str, int] = {}
        for index, name in enumerate(cleaned):
            if name in first:
                raise ConfigError(f"client {name!r} is given twice (#{first[name] + 1} and #{index + 1})")
            first[name] = index
        tokens = [secrets.token_urlsafe(32) for _ in cleaned]
        now = time.time()
        rows = [
            {"name": n, "token_hash": token_hash(tok), "created_at": now, "labels": held}
            for n, tok, held in zip(cleaned, tokens, stored, strict=True)
        ]
        ids: dict[str, int] = {}
        async with self._write("adding clients") as conn:
            for start in range(0, len(rows), _BATCH):
                batch = rows[start : start + _BATCH]
                taken = (
                    await conn.execute(
                        select(t.store_clients.c.name, t.store_clients.c.id).where(
                            t.store_clients.c.name.in_([r["name"] for r in batch])
                        )
                    )
                ).first()
                if taken is not None:
                    where = f"{sources[first[taken.name]]}: " if sources else ""
                    raise ConfigError(f"{where}a client named {taken.name!r} exists already (id {taken.id})")
                # One multi-row INSERT per batch, its ids returned in the rows' order.
                result = await conn.execute(
                    insert(t.store_clients).returning(
                        t.store_clients.c.id, t.store_clients.c.name, sort_by_parameter_order=True
                    ),
                    batch,
                )
                ids |= {r.name: int(r.id) for r in result}
        return [(ids[n], n, tok) for n, tok in zip(cleaned, tokens, strict=True)]

    async def authenticate(self, token: str) -> ClientRecord | None:
        """The client whose token this is, or None. Reads only: it does not mark the client seen."""
        if not token or len(token) > _MAX_TOKEN:
            return None
        digest = token_hash(token)
        async with self._read("authenticating a client") as conn:
            row = (
                await conn.execute(select(t.store_clients).where(t.store_clients.c.token_hash == digest))
            ).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return status.client(row)

    async def clients(self) -> list[ClientRecord]:
        """Every client, oldest first."""
        async with self._read("reading clients") as conn:
            rows = (await conn.execute(select(t.store_clients).order_by(t.store_clients.c.id))).all()
        return [status.client(row) for row in rows]

    async def label_client(self, name: str, changes: Mapping[str, str | None]) -> ClientRecord:
        """Set (or, for None, remove) labels of client ``name``; the client re-fetches what it is
        offered (its stage may have changed)."""
        from migsync.server import rollouts

        name = _client_name(name)
        for key, value in changes.items():
            rollouts.parse_label(f"{key}={value or ''}")
        async with self._write("labelling a client") as conn:
            row = (await conn.execute(select(t.store_clients).where(t.store_clients.c.name == name))).first()
            if row is None:
                raise ConfigError(f"no client named {name!r}")
            labels = json.loads(row.labels) if row.labels else {}
            for key, value in changes.items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            await conn.execute(
                update(t.store_clients)
                .where(t.store_clients.c.id == row.id)
                .values(
                    labels=json.dumps(dict(sorted(labels.items()))) if labels else None,
                    status_serial=t.store_clients.c.status_serial + 1,
                )
            )
            await serials.stamp_change(conn, [row.id])  # other server processes read it as changed
            await serials.notify(conn)  # what it is offered may change (a rollout's stages by label)
            row = (await conn.execute(select(t.store_clients).where(t.store_clients.c.id == row.id))).one()
        return status.client(row)

    async def set_app_version(self, client_id: int, app_version: str | None) -> None:
        """Record the app version client ``client_id`` says it runs; its ETag changes with it."""
        if app_version is not None and (len(app_version) > 100 or not app_version.isprintable()):
            raise ConfigError("an app version is at most 100 printable characters")
        async with self._write("recording a client's app version") as conn:
            changed = await conn.execute(
                update(t.store_clients)
                .where(t.store_clients.c.id == client_id)
                .where(t.store_clients.c.app_version.is_distinct_from(app_version))
                .values(app_version=app_version, status_serial=t.store_clients.c.status_serial + 1)
            )
            if changed.rowcount:
                await serials.stamp_change(conn, [client_id])  # other server processes read it as changed

    # -- rollouts --------------------------------------------------------------------------------

    async def start_rollout(
        self, versions: Sequence[Version], stages: Sequence[Stage], policy: Policy, by: str
    ) -> Rollout:
        """Start a rollout of published ``versions`` (see :mod:`migsync.server.rollout_store`)."""
        from migsync.server import rollout_store

        async with self._write("starting a rollout", exclusive=True) as conn:
            return await rollout_store.start(conn, versions, stages, policy, by, self.now())

    async def rollouts(self) -> list[Rollout]:
        """Every rollout, newest first (not evaluated: see :meth:`rollout_status`)."""
        from migsync.server import rollout_store

        async with self._read("reading rollouts") as conn:
            return await rollout_store.read_all(conn)

    async def rollout_status(self, rollout_id: int, points: int = 12) -> RolloutStatus:
        """Rollout ``rollout_id``, evaluated now, with its stages' counts now and over time."""
        from migsync.server import rollout_store

        async with self._write("reading a rollout") as conn:
            return await rollout_store.status(conn, rollout_id, self.now(), points)

    async def rollout_operate(self, rollout_id: int, operation: str, by: str) -> Rollout:
        """``pause``, ``resume``, ``advance`` or ``abort`` rollout ``rollout_id``, recorded with ``by``."""
        from migsync.server import rollout_store

        async with self._write(f"{operation} of a rollout") as conn:
            return await rollout_store.operate(conn, rollout_id, operation, by, self.now())

    async def set_event_retention(self, seconds: float) -> None:
        """Keep clients' status events for ``seconds`` (older ones go with the next report)."""
        from migsync.server import rollout_store

        async with self._write("setting the status events' retention") as conn:
            await rollout_store.set_retention(conn, seconds)

    # -- per-client status -----------------------------------------------------------------------

    async def client_state(self, token: str) -> ClientState | None:
        """Like :meth:`authenticate`, with the parts of the client's pending ETag, in one read."""
        if not token or len(token) > _MAX_TOKEN:
            return None
        digest = token_hash(token)
        async with self._read("authenticating a client", snapshot=False) as conn:
            return await status.client_state(conn, digest)

    async def pending(self, client_id: int) -> tuple[ClientState, list[PendingMigration]]:
        """What client ``client_id`` has not applied with the published content, in version order,
        and its state (whose ``etag`` is no newer than the list)."""
        async with self._read("reading a client's pending migrations") as conn:
            return await status.pending(conn, client_id)

    async def report(
        self, client_id: int, reports: Sequence[StatusReport], held: str | None = None
    ) -> ReportResult:
        """Record a batch of status reports of client ``client_id``, all or nothing.

        Idempotent: a report equal to what is recorded changes nothing. A report
        for a version that is not published makes the whole batch write nothing
        (``ReportResult.unpublished`` names them). A checksum other than the
        published one is recorded as it is and returned as drift. Marks the client seen.
        ``held``: the pending ETag the client holds; when it was current, the result's
        ``etag`` is the client's new one (see :func:`migsync.server.status.report`).
        """
        async with self._write("recording status reports") as conn:
            result = await status.report(conn, client_id, reports, held)
            if result.recorded:
                from migsync.server import rollout_store

                now = self.now()
                # Dropping the events past retention once a second is as good as at every
                # report, and takes a statement from all but one report a second.
                expire = not 0 <= now - self._expired_at < _EXPIRE_EVERY
                moved = await rollout_store.after_report(
                    conn, client_id, reports, result.recorded, now, expire=expire
                )
                if expire:
                    self._expired_at = now
                if moved:  # every client's ETag moved with the publish serial: the new one is not known
                    result = attrs.evolve(result, rollouts_moved=True, etag=None)
            return result

    async def touch(self, client_id: int, when: float | None = None) -> None:
        """Set the client's ``last_seen_at`` (now, by default)."""
        await self.touch_many({client_id: time.time() if when is None else when})

    async def touch_many(self, seen: dict[int, float]) -> None:
        """Set the ``last_seen_at`` of many clients (client id -> when) in one statement; tried
        again when Postgres picks it as a deadlock's victim, so that no mark is lost."""
        if not seen:
            return
        for attempt in itertools.count(1):
            try:
                async with self._write("marking clients seen") as conn:
                    await status.touch(conn, seen)
                return
            except BackendError as exc:
                if attempt >= _WRITE_ATTEMPTS or not engines.is_retryable(exc):
                    raise

    async def generation(self) -> tuple[int, int]:
        """``(publish serial, newest change stamp)`` (one small read; see
        :func:`migsync.server.status.generation`)."""
        async with self._read("reading the store's generation", snapshot=False) as conn:
            return await status.generation(conn)

    async def change_horizon(self) -> serials.Horizon:
        """Where a reader of client changes stands now: the changes committed so far are behind it."""
        async with self._read("reading the store's change horizon", snapshot=False) as conn:
            return await serials.horizon(conn)

    async def changes_since(self, seen: serials.Horizon, limit: int) -> status.Changes:
        """The clients whose ETag moved beyond horizon ``seen`` (at most ``limit``; see
        :func:`migsync.server.status.changes_since`), in one indexed read (two on SQLite)."""
        async with self._read("reading the clients changed", snapshot=False) as conn:
            return await status.changes_since(conn, seen, limit)

    async def pending_view(
        self, client_id: int
    ) -> tuple[ClientState, list[tuple[str, str | None]], list[ActionRequest]]:
        """What a pending answer is made of besides the published set: the client's state, the
        versions it lacks (by key, with the checksum it applied, if any), and the requests it has
        not answered; see :func:`migsync.server.status.pending_view`. Which of them a rollout or
        its app version holds back is the caller's to say, from the published set (the rollouts
        and the requirements are in what :meth:`published_set` reads)."""
        async with self._read("reading a client's pending migrations", snapshot=False) as conn:
            state, lacking, any_request = await status.pending_view(conn, client_id)
            actions = (await requests.pending_for(conn, client_id)).get(client_id, []) if any_request else []
        return state, lacking, actions

    async def published_set(
        self,
    ) -> tuple[int, list[PendingMigration], SignedManifest | None, list[Rollout]]:
        """The publish serial, every published migration in version order, the signed manifest,
        and every rollout (oldest first): content never older than the serial (see
        :func:`migsync.server.status.published_set`; a rollout that moves bumps the serial)."""
        from migsync.server import rollout_store

        async with self._read("reading published migrations", snapshot=False) as conn:
            serial, items = await status.published_set(conn)
            manifest = await manifests.read(conn)
            rollouts = await rollout_store.every_rollout(conn)
        return serial, items, manifest, rollouts

    async def fleet(self, client_id: int | None = None) -> list[FleetEntry]:
        """Every client (or only ``client_id``) with what it applied, what failed, what drifted,
        what it still lacks and where a revert holds it."""
        entries, _ = await self.fleet_view(client_id)
        return entries

    async def fleet_view(self, client_id: int | None = None) -> tuple[list[FleetEntry], list[ActionRecord]]:
        """:meth:`fleet`, and the requests its holds come from (the open ones, and those since each
        client's last re-apply, newest first: see :func:`migsync.server.actions.current`), in one
        read, for a view that shows both."""
        async with self._read("reading the fleet's status") as conn:
            entries = await fleets.entries(conn, None if client_id is None else [client_id])
            current = await requests.current(conn, client_id)
        return self._held(entries, current), current

    async def fleet_page(
        self,
        which: fleets.FleetFilter | None = None,
        *,
        limit: int = fleets.DEFAULT_LIMIT,
        cursor: str | None = None,
        counts: bool = True,
        now: float | None = None,
    ) -> fleets.FleetPage:
        """One page of the fleet (see :func:`migsync.server.fleet.page`): up to ``limit`` clients
        matching ``which`` after ``cursor``, in id order, with where a revert holds them, the next
        page's cursor and the counts per state. A bad cursor or limit is a :class:`ConfigError`.
        ``now``: the time ``stale`` counts back from (default: the system's)."""
        async with self._read("reading a page of the fleet") as conn:
            page = await fleets.page(
                conn, which or fleets.FleetFilter(), limit=limit, cursor=cursor, counts=counts, now=now
            )
            ids = [e.client.client_id for e in page.entries]
            current = await requests.current(conn, client_ids=ids) if ids else []
        return attrs.evolve(page, entries=tuple(self._held(list(page.entries), current)))

    @staticmethod
    def _held(entries: list[FleetEntry], current: list[ActionRecord]) -> list[FleetEntry]:
        by_client: dict[int, list[ActionRecord]] = {}
        for record in current:
            by_client.setdefault(record.client_id, []).append(record)
        held = [requests.hold_of(by_client.get(e.client.client_id, [])) for e in entries]
        return [
            attrs.evolve(e, held_from=None if hold is None else hold.version)
            for e, hold in zip(entries, held, strict=True)
        ]

    # -- the admin's requests to clients --------------------------------------------------------

    async def migration_tallies(
        self,
    ) -> tuple[dict[Version, dict[str, int]], int, list[FleetEntry], list[ActionRecord]]:
        """How the fleet stands on each published migration, for the panel's migrations page,
        in one read: per version the counts of the clients no revert holds
        (:func:`migsync.server.client_list.tallies`) and how many those are, then the fleet
        entries of the clients a revert holds (few) and the requests their holds come from."""
        from migsync.server import client_list

        async with self._read("reading how the fleet stands on each migration") as conn:
            current = await requests.current(conn)
            by_client: dict[int, list[ActionRecord]] = {}
            for record in current:
                by_client.setdefault(record.client_id, []).append(record)
            held = sorted(c for c, records in by_client.items() if requests.hold_of(records) is not None)
            counts, total = await client_list.tallies(conn, held)
            entries = await fleets.entries(conn, held) if held else []
        return counts, total, entries, [r for r in current if r.client_id in set(held)]

    async def client_list(
        self,
        which: ClientFilter,
        *,
        sort: str = "name",
        limit: int = 50,
        cursor: str | None = None,
        stale_before: float,
    ) -> ClientListing:
        """A page of the admin panel's list of clients (see :mod:`migsync.server.client_list`),
        in one read: its clients' fleet entries in the page's order, the requests their holds
        come from, the fleet-wide counts (``stale_before``: when a client not seen since is
        stale) and the app versions clients run. A bad sort, limit or cursor is a
        :class:`ConfigError`."""
        from migsync.server import client_list

        async with self._read("reading a page of clients") as conn:
            found = await client_list.page(
                conn, which, sort=client_list.check_sort(sort), limit=limit, cursor=cursor
            )
            ids = list(found.client_ids)
            entries = await fleets.entries(conn, ids) if ids else []
            current = await requests.current(conn, client_ids=ids) if ids else []
            counts = await client_list.counts(conn, stale_before)
            apps = await client_list.app_versions(conn)
        by_id = {e.client.client_id: e for e in entries}
        return client_list.ClientListing(found, [by_id[i] for i in ids if i in by_id], current, counts, apps)

    async def request_action(
        self, action: str, version: Version, client_ids: Sequence[int] | None, requested_by: str
    ) -> list[ActionRecord]:
        """Ask clients to ``reapply`` or ``revert`` ``version``; each request is recorded with
        ``requested_by`` and the time. ``client_ids`` None: every client it makes sense for.
        See :func:`migsync.server.actions.request`."""
        async with self._write("recording a request to clients") as conn:
            return await requests.request(conn, action, version, client_ids, requested_by)

    async def pending_actions(self, client_id: int) -> list[ActionRequest]:
        """The requests client ``client_id`` has not answered yet, oldest first."""
        async with self._read("reading a client's requests") as conn:
            return (await requests.pending_for(conn, client_id)).get(client_id, [])

    async def pending_actions_by_client(self) -> dict[int, list[ActionRequest]]:
        """Every client's requests it has not answered yet, oldest first, by client id (one read)."""
        async with self._read("reading the clients' requests") as conn:
            return await requests.pending_for(conn)

    async def record_answers(
        self, client_id: int, answers: Sequence[ActionResult], held: str | None = None
    ) -> tuple[ActionsAck, bool]:
        """Record client ``client_id``'s answers to requests; the ack, and whether its ETag moved.
        ``held``: the pending ETag the client holds (see :meth:`report`)."""
        async with self._write("recording a client's answers") as conn:
            return await requests.record_answers(conn, client_id, answers, held)

    async def actions(self, client_id: int | None = None, limit: int | None = None) -> list[ActionRecord]:
        """Requests made of clients (of ``client_id`` only, if given), newest first."""
        async with self._read("reading requests to clients") as conn:
            return await requests.read(conn, client_id, limit)

    # -- entity changes --------------------------------------------------------------------------

    async def receive_changes(
        self, client_id: int, changes: Sequence[EntityChange] | ChangeBatch, after: str | None = None
    ) -> ChangesAck:
        """Store a batch of client ``client_id``'s entity changes, in order, in one transaction.

        A change whose id the client sent before is a duplicate (stored once). A change
        tagged with a schema version that was never published is refused with the reason,
        and the batch stops there: the changes after it are neither accepted nor refused.
        Each stored change goes to :attr:`appliers` in a savepoint of its own; an applier's
        error is kept in the change's ``apply_error`` (it is accepted all the same).
        Marks the client seen. ``changes``: records, or a :class:`ChangeBatch` (columns: what
        the HTTP API decodes a body into, with no object per change). ``after``: the id of the
        change the batch follows; unless the inbox has it, :class:`~migsync.server.inbox.NotInOrder`
        is raised and nothing stored. See :mod:`migsync.server.inbox`.
        """
        async with self._write("storing entity changes") as conn:
            return await inboxes.receive(conn, client_id, changes, self.appliers, after)

    async def inbox(self, limit: int | None = None) -> list[ReceivedChange]:
        """The entity changes received, in the order received; with ``limit``, the latest ones."""
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0, not {limit}")
        async with self._read("reading the inbox") as conn:
            return await inboxes.read(conn, limit)


def client_name(name: str) -> str:
    """``name`` as a client's name is stored (spaces stripped); :class:`ConfigError` saying why not."""
    return _client_name(name)


def _client_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise ConfigError("a client name must not be empty")
    if len(cleaned) > _MAX_NAME:
        raise ConfigError(f"client name is {len(cleaned)} characters long; at most {_MAX_NAME} are allowed")
    if not cleaned.isprintable():
        raise ConfigError(f"client name {cleaned!r} holds control characters")
    return cleaned


def _refusal(conflicts: list[tuple[Migration, str]]) -> str:
    listed = ", ".join(
        f"{m.name} (version {m.version}: published {old[:12]}, now {m.checksum[:12]})" for m, old in conflicts
    )
    what = "is" if len(conflicts) == 1 else "are"
    return (
        f"{listed} {what} already published with other content; refusing to change what clients may "
        "have applied. Publish the change as a new version, or force it (--force): clients that "
        "applied the old content are then told of the checksum mismatch"
    )
