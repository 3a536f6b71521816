"""A client's batches of entity changes in flight in this process, in the order they arrived.

A client that sends its next batch before the answer to the one before
(``Migsync-Changes-After``) may have it overtake that batch on the way: the
later request reaches the store first. The store then refuses it whole
(:class:`~migsync.server.inbox.NotInOrder`), and the client sends it again once
the batch before is answered: a round trip and a second decode, for nothing.

When the batch before is in flight in this same process (the usual case:
one server, or a load balancer that keeps a client's connection), the later
batch need not be refused: it waits for the batches of its client that
arrived here before it, then asks the store once more. A batch waits only for
batches that arrived before it, so two never wait for each other; it waits
at most :data:`WAIT`, then is refused as before. A batch before it that is
in another process, or not arrived yet, is not waited for: the answer is
"not yet" at once, as without this.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

#: The longest a batch waits for the batches of its client in flight before it (seconds).
WAIT = 10.0


class BatchTurns:
    """The batches in flight in this process, per client, each with its done signal."""

    def __init__(self, wait: float = WAIT) -> None:
        self.wait = wait
        self._flying: dict[int, list[asyncio.Event]] = {}
        #: client id -> how many of its batches wait for one before them (for tests and metrics)
        self.waiting: dict[int, int] = {}

    @contextlib.contextmanager
    def arrived(self, client_id: int) -> Iterator[list[asyncio.Event]]:
        """A batch of ``client_id`` in flight from here to the end of the block; gives the done
        signals of the batches of that client that arrived before it."""
        done = asyncio.Event()
        flying = self._flying.setdefault(client_id, [])
        before = list(flying)
        flying.append(done)
        try:
            yield before
        finally:
            done.set()
            flying.remove(done)
            if not flying:
                del self._flying[client_id]

    async def after(self, client_id: int, before: list[asyncio.Event]) -> bool:
        """Wait until the batches in ``before`` are done (stored or refused): True once they are
        (at once if they are already: the batch before may have committed just after the store
        said it had not), False at once if there are none, or after :attr:`wait` seconds if one
        is still in flight."""
        if not before:
            return False
        pending = [event for event in before if not event.is_set()]
        if not pending:
            return True
        self.waiting[client_id] = self.waiting.get(client_id, 0) + 1
        try:
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in pending)), self.wait)
        except TimeoutError:
            return False
        finally:
            self.waiting[client_id] -= 1
            if not self.waiting[client_id]:
                del self.waiting[client_id]
        return True


__all__ = ["WAIT", "BatchTurns"]
