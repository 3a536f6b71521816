"""What travels between the server and its clients, whatever the transport.

A transport hands the client :class:`OfferedMigration` records (untrusted:
the client verifies each before it stores it, see :mod:`migsync.protocol.verify`)
and carries the client's :class:`StatusReport` records back. The JSON shapes
here are the ones the HTTP API and the drop folder use; everything read from
the other side is checked by :func:`offers_from_json` and
:func:`ack_from_json`, which raise :class:`MalformedAnswer` naming what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from migsync.core.errors import MalformedAnswer
from migsync.core.version import Version, VersionError, as_version

CHECKSUM = re.compile(r"[0-9a-f]{64}")


def _plain(instance: object, field: object, value: Any) -> Any:
    return value.text if isinstance(value, Version) else value


def _json(record: Any) -> dict[str, Any]:
    """A wire record as JSON-ready values: every version as its text."""
    return attrs.asdict(record, value_serializer=_plain)


#: The protocol this release speaks: 2 carries every version as a string (``"42"``,
#: ``"20150100000001000000"``, ``"1.2.10"``); 1 carried whole numbers. Sent on every HTTP
#: request and answer (:data:`PROTOCOL_HEADER`); the other side refuses what it does not speak.
PROTOCOL = 2
PROTOCOL_HEADER = "Migsync-Protocol"
#: The header a client says its application's version in (``client run --app-version``); the
#: server offers a migration that says ``-- migsync:requires app>=2.3`` only to apps that satisfy it.
APP_VERSION_HEADER = "Migsync-App-Version"
#: What it may hold: a version such as ``2.3.1`` or ``2.3.1-beta+7`` (at most 64 characters).
APP_VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z.+_\-]{0,63}$"
#: Sent with a report (and with answers to requests): the pending ETag the client holds. When it
#: was current just before, the answer carries the client's new ETag (``etag``), which the client
#: keeps, so its next poll is a 304 rather than a full answer it has already. Optional both ways:
#: a server that does not know it answers without ``etag``, and the client then keeps its old one.
HELD_ETAG_HEADER = "Migsync-Held-ETag"
#: Sent with a batch of entity changes that the client sends before the answer to the batch
#: before it came (two requests in flight): the id of the last change of that batch. The server
#: stores this batch only if it has that change (so the batches are stored in the client's
#: order, whichever request arrives first), else answers 409 with nothing stored, and the
#: client sends it again once the batch before is stored.
CHANGES_AFTER_HEADER = "Migsync-Changes-After"
#: On every answer to a batch of entity changes from a server that honours
#: :data:`CHANGES_AFTER_HEADER`: a client sends a batch before the answer to the one before it
#: only to a server that said so (an older one would store them in the order they arrive).
CHANGES_ORDERED_HEADER = "Migsync-Changes-Ordered"


def protocol_refusal(theirs: str | None, who: str) -> str | None:
    """Why a peer that says it speaks ``theirs`` cannot be talked to (None: it can).

    ``who`` names the peer in the message ("this server", "the client").
    """
    if theirs == str(PROTOCOL):
        return None
    spoken = "an older migsync protocol (1)" if theirs in (None, "1") else f"migsync protocol {theirs!r}"
    return (
        f"{who} speaks {spoken}, and this migsync speaks protocol {PROTOCOL} (versions as strings): "
        "run the same migsync release on the server and its clients"
    )


@attrs.frozen
class OfferedMigration:
    """A published migration as a transport delivered it: nothing of it is trusted yet."""

    version: Version = attrs.field(converter=as_version)
    name: str
    #: the canonical content (JSON text): exactly the bytes the signature covers
    content: str
    checksum: str
    signature: str | None
    signed_by: str | None = None
    #: why the transport could not read it whole (it is then refused, and reported)
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = _json(self)
        if data["problem"] is None:
            del data["problem"]
        return data


@attrs.frozen
class SignedManifest:
    """The fleet manifest as a transport delivered it (see :mod:`migsync.protocol.manifest`): nothing
    of it is trusted yet."""

    content: str
    signature: str | None
    signed_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"content": self.content, "signature": self.signature, "signed_by": self.signed_by}


def signed_from_json(value: Any, where: str) -> SignedManifest | None:
    """The ``"manifest"`` of an answer (absent or null: None, which the client refuses)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("content"), str):
        raise MalformedAnswer(f"{where}: manifest is not an object with a 'content' string")
    for key in ("signature", "signed_by"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise MalformedAnswer(f"{where}: manifest.{key} is not a string or null")
    return SignedManifest(value["content"], value.get("signature"), value.get("signed_by"))


@attrs.frozen
class Offer:
    """The answer to a fetch: the client's pending migrations, or ``None`` when unchanged."""

    #: in version order; ``None`` means "the same as the answer that had ``etag``"
    migrations: tuple[OfferedMigration, ...] | None
    #: an opaque tag to send with the next fetch (``None``: the transport has none)
    etag: str | None = None
    #: what the server's admin asked of this client and it has not acknowledged, oldest first
    actions: tuple[ActionRequest, ...] = ()
    #: the signed list of every published version (with ``migrations``; None: the server sent none)
    manifest: SignedManifest | None = None

    @property
    def unchanged(self) -> bool:
        return self.migrations is None


#: What an admin can ask of a client: apply a migration again (a dead one), or revert it.
ACTIONS = ("reapply", "revert")
#: What a client answers about an action: taken into its queue, carried out, or not possible.
ACTION_STATES = ("queued", "done", "failed")


@attrs.frozen
class ActionRequest:
    """An admin's request to one client (see :mod:`migsync.client.actions`)."""

    #: the server's id of the request: the client carries out each id once
    id: int
    action: str  # reapply | revert
    version: Version = attrs.field(converter=as_version)
    requested_by: str
    #: seconds since the epoch (the server's clock)
    requested_at: float
    #: set when it travels by drop folder: see :func:`migsync.protocol.signing.sign_request`
    signature: str | None = None
    signed_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = _json(self)
        for key in ("signature", "signed_by"):
            if data[key] is None:
                del data[key]
        return data


@attrs.frozen
class ActionResult:
    """A client's word on an action request: queued, done or failed, and why."""

    id: int
    state: str  # queued | done | failed
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@attrs.frozen
class ActionsAck:
    """The server's answer to action results: which it recorded, and which ids it does not know."""

    recorded: tuple[int, ...] = ()
    unknown: tuple[int, ...] = ()
    #: the client's new pending ETag (see :data:`HELD_ETAG_HEADER`); None: keep the one held
    etag: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"recorded": list(self.recorded), "unknown": list(self.unknown)}
        return body if self.etag is None else body | {"etag": self.etag}


@attrs.frozen
class StatusReport:
    """One client's word on one migration."""

    version: Version = attrs.field(converter=as_version)
    applied: bool
    error: str | None
    attempts: int
    checksum: str
    #: it failed as often as it may: nothing retries it until someone re-applies it
    dead: bool = False

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@attrs.frozen
class Drift:
    """A migration a client reported with other content than the published one."""

    version: Version = attrs.field(converter=as_version)
    published_checksum: str
    reported_checksum: str

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@attrs.frozen
class ReportAck:
    """The server's answer to a batch of reports: what it recorded, what it had already."""

    recorded: tuple[Version, ...] = ()
    unchanged: tuple[Version, ...] = ()
    drift: tuple[Drift, ...] = ()
    #: the client's new pending ETag (see :data:`HELD_ETAG_HEADER`); None: keep the one held
    etag: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "recorded": [v.text for v in self.recorded],
            "unchanged": [v.text for v in self.unchanged],
            "drift": [d.to_json() for d in self.drift],
        }
        return body if self.etag is None else body | {"etag": self.etag}


def reports_to_json(reports: Sequence[StatusReport]) -> dict[str, Any]:
    return {"reports": [r.to_json() for r in reports]}


def offers_from_json(body: Any, where: str) -> tuple[OfferedMigration, ...]:
    """``{"migrations": [...]}`` from ``where`` as records, in version order."""
    if not isinstance(body, dict) or not isinstance(body.get("migrations"), list):
        raise MalformedAnswer(f'{where}: expected an object {{"migrations": [...]}}')
    offers = [_offer(f"{where}: migrations[{i}]", item) for i, item in enumerate(body["migrations"])]
    versions = [o.version for o in offers]
    if versions != sorted(set(versions)):
        raise MalformedAnswer(f"{where}: the migrations are not in strictly increasing version order")
    return tuple(offers)


def actions_from_json(body: Any, where: str) -> tuple[ActionRequest, ...]:
    """The ``"actions"`` of a pending answer (absent: none, as from a server that has none)."""
    items = body.get("actions", []) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise MalformedAnswer(f"{where}: actions is not a list")
    actions = []
    for i, item in enumerate(items):
        here = f"{where}: actions[{i}]"
        if not isinstance(item, dict):
            raise MalformedAnswer(f"{here} is not an object")
        if not _is_id(item.get("id")):
            raise MalformedAnswer(f"{here}: id must be a non-negative integer")
        version = read_version(item.get("version"))
        if version is None:
            raise MalformedAnswer(f"{here}.version is not a version")
        if item.get("action") not in ACTIONS:
            raise MalformedAnswer(f"{here}.action is not one of {', '.join(ACTIONS)}")
        if not isinstance(item.get("requested_by"), str):
            raise MalformedAnswer(f"{here}.requested_by is not a string")
        requested_at = item.get("requested_at")
        if not isinstance(requested_at, int | float) or isinstance(requested_at, bool):
            raise MalformedAnswer(f"{here}.requested_at is not a number")
        for key in ("signature", "signed_by"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise MalformedAnswer(f"{here}.{key} is not a string or null")
        actions.append(
            ActionRequest(
                item["id"],
                item["action"],
                version,
                item["requested_by"],
                requested_at,
                item.get("signature"),
                item.get("signed_by"),
            )
        )
    return tuple(sorted(actions, key=lambda a: a.id))


def action_results_to_json(results: Sequence[ActionResult]) -> dict[str, Any]:
    return {"results": [r.to_json() for r in results]}


def actions_ack_from_json(body: Any, where: str) -> ActionsAck:
    """``{"recorded": [ids], "unknown": [ids]}`` from ``where``."""
    if not isinstance(body, dict):
        raise MalformedAnswer(f"{where}: expected an object with 'recorded' and 'unknown'")
    recorded = _ids(body.get("recorded", []), f"{where}: recorded")
    unknown = _ids(body.get("unknown", []), f"{where}: unknown")
    return ActionsAck(recorded, unknown, _etag(body, where))


def _etag(body: dict[str, Any], where: str) -> str | None:
    """The answer's optional ``etag`` (absent from an older server's)."""
    etag = body.get("etag")
    if etag is not None and (not isinstance(etag, str) or not etag or len(etag) > 200):
        raise MalformedAnswer(f"{where}: etag is not a short string")
    return etag


def _offer(where: str, item: Any) -> OfferedMigration:
    if not isinstance(item, dict):
        raise MalformedAnswer(f"{where} is not an object")
    version = read_version(item.get("version"))
    if version is None:
        raise MalformedAnswer(f"{where}.version is not a version")
    for key in ("name", "content", "checksum"):
        if not isinstance(item.get(key), str):
            raise MalformedAnswer(f"{where}.{key} is not a string")
    for key in ("signature", "signed_by"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise MalformedAnswer(f"{where}.{key} is not a string or null")
    return OfferedMigration(
        version, item["name"], item["content"], item["checksum"], item.get("signature"), item.get("signed_by")
    )


def ack_from_json(body: Any, where: str) -> ReportAck:
    """``{"recorded": [...], "unchanged": [...], "drift": [...]}`` from ``where``."""
    if not isinstance(body, dict):
        raise MalformedAnswer(f"{where}: expected an object with 'recorded', 'unchanged' and 'drift'")
    recorded = _versions(body.get("recorded", []), f"{where}: recorded")
    unchanged = _versions(body.get("unchanged", []), f"{where}: unchanged")
    drift = body.get("drift", [])
    if not isinstance(drift, list) or not all(
        isinstance(d, dict)
        and read_version(d.get("version")) is not None
        and isinstance(d.get("published_checksum"), str)
        and isinstance(d.get("reported_checksum"), str)
        for d in drift
    ):
        raise MalformedAnswer(
            f"{where}: drift is not a list of {{version, published_checksum, reported_checksum}}"
        )
    return ReportAck(
        recorded,
        unchanged,
        tuple(Drift(d["version"], d["published_checksum"], d["reported_checksum"]) for d in drift),
        _etag(body, where),
    )


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_version(value: Any) -> Version | None:
    """A version as the other side sent it: text (protocol 2) or, from a drop folder an older
    release wrote, a whole number; None when it is neither."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    if isinstance(value, int) and value < 0:
        return None
    try:
        return Version.parse(value)
    except VersionError:
        return None


def _versions(value: Any, where: str) -> tuple[Version, ...]:
    versions = [read_version(v) for v in value] if isinstance(value, list) else [None]
    if any(v is None for v in versions):
        raise MalformedAnswer(f"{where} is not a list of versions")
    return tuple(v for v in versions if v is not None)


def _ids(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_id(v) for v in value):
        raise MalformedAnswer(f"{where} is not a list of action ids")
    return tuple(value)


# -- entity changes ------------------------------------------------------------------------------


@attrs.frozen
class EntityChange:
    """One write of the client's application data, as the server receives it."""

    #: unique per client: the server stores a change once, however often it is sent
    id: str
    entity: str
    entity_id: str
    operation: str  # insert | update | delete
    #: the row after the write (None for a delete, or when not captured)
    data: Any
    #: the client's newest applied migration when the change was written (None: none yet)
    schema_version: Version | None = attrs.field(converter=attrs.converters.optional(as_version))
    timestamp: float

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@attrs.frozen
class ChangeRefusal:
    id: str
    reason: str


@attrs.frozen
class ChangesAck:
    """The server's answer to a batch of changes, which it takes in order.

    ``accepted`` (stored now) and ``duplicate`` (stored before) together are a
    prefix of the batch. ``refused`` is the first change it would not take, with
    the reason; the changes after it were not looked at and must be sent again.
    """

    accepted: tuple[str, ...] = ()
    duplicate: tuple[str, ...] = ()
    refused: ChangeRefusal | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": list(self.accepted),
            "duplicate": list(self.duplicate),
            "refused": None if self.refused is None else attrs.asdict(self.refused),
        }


def changes_to_json(changes: Sequence[EntityChange]) -> dict[str, Any]:
    return {"changes": [c.to_json() for c in changes]}


def changes_ack_from_json(body: Any, where: str) -> ChangesAck:
    """``{"accepted": [ids], "duplicate": [ids], "refused": null | {"id", "reason"}}`` from ``where``."""
    if not isinstance(body, dict):
        raise MalformedAnswer(f"{where}: expected an object with 'accepted', 'duplicate' and 'refused'")
    ids = {}
    for key in ("accepted", "duplicate"):
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MalformedAnswer(f"{where}: {key} is not a list of change ids")
        ids[key] = tuple(value)
    refused = body.get("refused")
    if refused is not None and not (
        isinstance(refused, dict)
        and isinstance(refused.get("id"), str)
        and isinstance(refused.get("reason"), str)
    ):
        raise MalformedAnswer(f"{where}: refused is not null or {{id, reason}}")
    return ChangesAck(
        ids["accepted"],
        ids["duplicate"],
        None if refused is None else ChangeRefusal(refused["id"], refused["reason"]),
    )
