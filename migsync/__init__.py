"""migsync: ship schema migrations from a server to many client databases.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

from migsync.core.backend import Backend, BaseBackend, BaseConnection, Connection
from migsync.core.client import Client
from migsync.core.clock import Clock, RetryPolicy, SystemClock
from migsync.core.errors import (
    BackendError,
    ChecksumMismatch,
    ConfigError,
    ConnectError,
    DirtyDatabase,
    LockTimeout,
    MigrationError,
    MigsyncError,
    PluginError,
    SourceError,
    StatementError,
    UnknownMigration,
)
from migsync.core.events import BaseEventSink, Event, EventSink
from migsync.core.formats import SourceFormat
from migsync.core.hookspecs import hookimpl, hookspec
from migsync.core.migration import Migration, Script
from migsync.core.plugins import Plugins, make_plugins
from migsync.core.sources import load_directory
from migsync.core.specs import BackendSpec, EventSinkSpec, SourceFormatSpec, TransportSpec

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendSpec",
    "BaseBackend",
    "BaseConnection",
    "BaseEventSink",
    "ChecksumMismatch",
    "Client",
    "Clock",
    "ConfigError",
    "ConnectError",
    "Connection",
    "DirtyDatabase",
    "Event",
    "EventSink",
    "EventSinkSpec",
    "LockTimeout",
    "Migration",
    "MigrationError",
    "MigsyncError",
    "PluginError",
    "Plugins",
    "RetryPolicy",
    "Script",
    "SourceError",
    "SourceFormat",
    "SourceFormatSpec",
    "StatementError",
    "SystemClock",
    "TransportSpec",
    "UnknownMigration",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_directory",
    "make_plugins",
]
