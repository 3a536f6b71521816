"""The server store as the commands open it: ``--store URL`` and :func:`on_store`."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from migsync.cli.support import run_coro

if TYPE_CHECKING:
    from migsync.server import Store

T = TypeVar("T")


def on_store(store_url: str, work: Callable[[Store], Awaitable[T]], *, create: bool = False) -> T:
    """``work(store)`` on the store at ``store_url``, opened for it (made if missing only with
    ``create``); a migsync error is one line and exit 2."""

    async def run() -> T:
        from migsync.server import Store

        clock = None
        if os.environ.get("MIGSYNC_TEST_CLOCK"):  # a testing aid: see migsync.testing.fileclock
            from migsync.testing.fileclock import from_environment

            clock = from_environment()
        async with Store.open(store_url, create=create, clock=clock) as store:
            return await work(store)

    return run_coro(run())


store_option = click.option(
    "--store",
    "store_url",
    required=True,
    envvar="MIGSYNC_STORE",
    metavar="URL",
    help="Server store URL, e.g. sqlite:///server.db or postgresql://host/db [env: MIGSYNC_STORE]",
)
