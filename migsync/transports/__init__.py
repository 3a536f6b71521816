"""Built-in transports between server and clients, registered like third-party ones.

``http``/``https``: polling the server's HTTP API (:mod:`migsync.transports.http`).
``file``: a drop folder for offline clients (:mod:`migsync.transports.filedrop`).
``memory``: an in-memory server for tests and embedding (:mod:`migsync.transports.memory`).
The contract every transport keeps is :mod:`migsync.transports.base`.
"""

from __future__ import annotations

from collections.abc import Callable

from migsync.core.hookspecs import hookimpl
from migsync.core.specs import TransportSpec


@hookimpl
def migsync_register_transports(register: Callable[[TransportSpec], None]) -> None:
    register(
        TransportSpec(
            "http",
            ("http", "https"),
            "migsync.transports.http:HttpTransport",
            "polls the server's HTTP API (ETag, retries with backoff)",
        )
    )
    register(
        TransportSpec(
            "file",
            ("file",),
            "migsync.transports.filedrop:FileDropTransport",
            "a drop folder: migrations and reports as files, for offline clients",
        )
    )
    register(
        TransportSpec(
            "memory",
            ("memory",),
            "migsync.transports.memory:MemoryTransport",
            "an in-memory server, for tests and embedding",
        )
    )
