"""``migsync serve``'s uvicorn server: it says where the API and the panel are once it listens."""

from __future__ import annotations

import socket
from collections.abc import Iterable

import click
import uvicorn


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints the API's and the panel's URLs once its sockets listen.

    Printed after start-up, not before, so that the port is the one bound
    (``--port 0`` asks the system for a free one).
    """

    def __init__(self, config: uvicorn.Config, *, panel: bool) -> None:
        super().__init__(config)
        self.panel = panel

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        announce([sock for listener in self.servers for sock in listener.sockets], panel=self.panel)

    def base_urls(self) -> Iterable[str]:
        return base_urls(sock for listener in self.servers for sock in listener.sockets)


def base_urls(sockets: Iterable[socket.socket]) -> Iterable[str]:
    for sock in sockets:
        address, port = sock.getsockname()[:2]
        host = f"[{address}]" if ":" in address else address
        yield f"http://{host}:{port}"


def announce(sockets: Iterable[socket.socket], *, panel: bool, workers: int = 1) -> None:
    """Say where the API (and the panel) listen; with ``workers``, how many processes serve them."""
    processes = f" ({workers} worker processes)" if workers > 1 else ""
    for base in base_urls(sockets):
        click.echo(f"migsync: API at {base}/api/{processes}")
        if panel:
            click.echo(f"migsync: admin panel at {base}/admin/ (log in with the admin token)")
