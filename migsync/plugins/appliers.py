"""Built-in change appliers of the server (registration only).

The applier itself, :class:`migsync.server.appliers.TablesApplier`, imports
SQLAlchemy; this module must not, since every ``migsync`` command (``apply``
included) registers the built-ins. Its factory is named as a string and
imported only when a server builds its appliers.
"""

from __future__ import annotations

from collections.abc import Callable

from migsync.core.hookspecs import hookimpl
from migsync.core.specs import ChangeApplierSpec


@hookimpl
def migsync_register_change_appliers(register: Callable[[ChangeApplierSpec], None]) -> None:
    register(
        ChangeApplierSpec(
            "tables",
            "migsync.server.appliers:TablesApplier",
            "apply each change to the same-named table of the store database, if there is one",
            default=True,
        )
    )
