"""migsync: ship schema migrations from a server to many client databases.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562), so that ``migsync apply`` pays only for
# the modules it needs: start-up time is part of every client run.
_EXPORTS: dict[str, str] = {
    "ApplyResult": "migsync.embed",
    "Backend": "migsync.core.backend",
    "BackendError": "migsync.core.errors",
    "BackendSpec": "migsync.core.specs",
    "BaseBackend": "migsync.core.backend",
    "BaseConnection": "migsync.core.backend",
    "BaseEventSink": "migsync.core.events",
    "ChangeApplierSpec": "migsync.core.specs",
    "ChecksumMismatch": "migsync.core.errors",
    "Client": "migsync.core.client",
    "Clock": "migsync.core.clock",
    "ConfigError": "migsync.core.errors",
    "ConnectError": "migsync.core.errors",
    "Connection": "migsync.core.backend",
    "DirtyDatabase": "migsync.core.errors",
    "Event": "migsync.core.events",
    "EventSink": "migsync.core.events",
    "EventSinkSpec": "migsync.core.specs",
    "LockTimeout": "migsync.core.errors",
    "Migration": "migsync.core.migration",
    "MigrationError": "migsync.core.errors",
    "MigrationFailed": "migsync.embed",
    "apply": "migsync.embed",
    "apply_async": "migsync.embed",
    "sync": "migsync.embed",
    "sync_async": "migsync.embed",
    "MigsyncError": "migsync.core.errors",
    "PluginError": "migsync.core.errors",
    "SignatureError": "migsync.core.errors",
    "Plugins": "migsync.core.plugins",
    "RetryPolicy": "migsync.core.clock",
    "RevertResult": "migsync.core.ledger",
    "SourceSnapshot": "migsync.core.sources",
    "scan_directory": "migsync.core.sources",
    "plugin_formats": "migsync.core.sources",
    "Script": "migsync.core.migration",
    "SourceError": "migsync.core.errors",
    "SourceFormat": "migsync.core.formats",
    "SourceFormatSpec": "migsync.core.specs",
    "SQLiteCollationSpec": "migsync.core.specs",
    "SQLiteFunctionSpec": "migsync.core.specs",
    "StatementError": "migsync.core.errors",
    "SystemClock": "migsync.core.clock",
    "TransportSpec": "migsync.core.specs",
    "UnknownMigration": "migsync.core.errors",
    "BaseTransport": "migsync.transports.base",
    "Transport": "migsync.transports.base",
    "Syncer": "migsync.client.sync",
    "SyncResult": "migsync.client.sync",
    "OfferedMigration": "migsync.protocol.wire",
    "Offer": "migsync.protocol.wire",
    "StatusReport": "migsync.protocol.wire",
    "ReportAck": "migsync.protocol.wire",
    "TransportError": "migsync.core.errors",
    "ServerUnavailable": "migsync.core.errors",
    "ServerRefused": "migsync.core.errors",
    "MalformedAnswer": "migsync.core.errors",
    "hookimpl": "migsync.core.hookspecs",
    "hookspec": "migsync.core.hookspecs",
    "load_directory": "migsync.core.sources",
    "make_plugins": "migsync.core.plugins",
}

if TYPE_CHECKING:
    from migsync.client.sync import Syncer, SyncResult
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
        MalformedAnswer,
        MigrationError,
        MigsyncError,
        PluginError,
        ServerRefused,
        ServerUnavailable,
        SignatureError,
        SourceError,
        StatementError,
        TransportError,
        UnknownMigration,
    )
    from migsync.core.events import BaseEventSink, Event, EventSink
    from migsync.core.formats import SourceFormat
    from migsync.core.hookspecs import hookimpl, hookspec
    from migsync.core.ledger import RevertResult
    from migsync.core.migration import Migration, Script
    from migsync.core.plugins import Plugins, make_plugins
    from migsync.core.sources import SourceSnapshot, load_directory, plugin_formats, scan_directory
    from migsync.core.specs import (
        BackendSpec,
        ChangeApplierSpec,
        EventSinkSpec,
        SourceFormatSpec,
        SQLiteCollationSpec,
        SQLiteFunctionSpec,
        TransportSpec,
    )
    from migsync.embed import ApplyResult, MigrationFailed, apply, apply_async, sync, sync_async
    from migsync.protocol.wire import Offer, OfferedMigration, ReportAck, StatusReport
    from migsync.transports.base import BaseTransport, Transport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'migsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "ApplyResult",
    "Backend",
    "BackendError",
    "BackendSpec",
    "BaseBackend",
    "BaseConnection",
    "BaseEventSink",
    "BaseTransport",
    "ChangeApplierSpec",
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
    "MalformedAnswer",
    "Migration",
    "MigrationError",
    "MigrationFailed",
    "MigsyncError",
    "Offer",
    "OfferedMigration",
    "PluginError",
    "Plugins",
    "ReportAck",
    "RetryPolicy",
    "RevertResult",
    "SQLiteCollationSpec",
    "SQLiteFunctionSpec",
    "Script",
    "ServerRefused",
    "ServerUnavailable",
    "SignatureError",
    "SourceError",
    "SourceFormat",
    "SourceFormatSpec",
    "SourceSnapshot",
    "StatementError",
    "StatusReport",
    "SyncResult",
    "Syncer",
    "SystemClock",
    "Transport",
    "TransportError",
    "TransportSpec",
    "UnknownMigration",
    "__version__",
    "apply",
    "apply_async",
    "hookimpl",
    "hookspec",
    "load_directory",
    "make_plugins",
    "plugin_formats",
    "scan_directory",
    "sync",
    "sync_async",
]
