"""A server process's bounded memory of clients: their states, least recently used dropped first.

A poll that finds its client here costs no store access; one that does not costs one indexed
read (:meth:`migsync.server.store.Store.client_state`), and the state joins the cache. What
other processes (and ``migsync publish``) change reaches it through :meth:`ClientCache.changed`:
only the clients the cache holds are updated, the others are read when they next ask.

Of two reads of one client, the newer one wins, whichever arrives last: the one with the higher
``status_serial``, which every change of the client's ETag bumps in its row (a change stamp
would not do: on Postgres it is the writer's transaction id, and a transaction that began
earlier may write the row later).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import attrs

from migsync.server.records import ClientState

#: How many clients a process keeps by default (about 0.6 KB each).
DEFAULT_CACHE_CLIENTS = 200_000


class ClientCache:
    """Client states by the sha256 of their token, at most ``size`` of them."""

    def __init__(self, size: int = DEFAULT_CACHE_CLIENTS) -> None:
        if size < 1:
            raise ValueError(f"the client cache must hold at least 1 client, not {size}")
        self.size = size
        self._states: OrderedDict[str, ClientState] = OrderedDict()
        #: the newest publish serial this process has seen: every state is at least that new
        self.publish_serial = 0

    def __len__(self) -> int:
        return len(self._states)

    def get(self, digest: str) -> ClientState | None:
        state = self._states.get(digest)
        if state is None:
            return None
        self._states.move_to_end(digest)
        if state.publish_serial < self.publish_serial:
            state = attrs.evolve(state, publish_serial=self.publish_serial)
            self._states[digest] = state
        return state

    def put(self, digest: str, state: ClientState) -> None:
        """Keep ``state`` unless the cache holds a newer one of the client."""
        old = self._states.get(digest)
        if old is not None and old.status_serial > state.status_serial:
            return
        self._states[digest] = state
        self._states.move_to_end(digest)
        while len(self._states) > self.size:
            self._states.popitem(last=False)

    def changed(self, publish_serial: int, states: Iterable[tuple[str, ClientState]]) -> None:
        """What the store says changed: a publish serial, and changed clients (by digest); of
        the clients, only those the cache holds are kept (no reordering: nobody asked for them)."""
        self.publish_serial = max(self.publish_serial, publish_serial)
        for digest, state in states:
            old = self._states.get(digest)
            if old is not None and old.status_serial <= state.status_serial:
                self._states[digest] = state

    def drop(self, digest: str) -> None:
        """Forget the client: its next poll reads its state from the store."""
        self._states.pop(digest, None)

    def clear(self) -> None:
        self._states.clear()
