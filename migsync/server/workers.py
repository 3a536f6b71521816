"""``migsync serve --workers N``: the app made again in each of uvicorn's worker processes.

uvicorn starts a worker by importing the app, so what ``serve`` was told travels to the
workers as one JSON object in the environment (:data:`CONFIG_ENV`), which each worker reads in
:func:`app_from_env`. The workers share nothing but the store and the panel's secret, which is
why more than one process needs ``--panel-secret``: a login signed by one worker must be good
on the others.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from starlette.applications import Starlette

from migsync.core.errors import ConfigError

#: The environment variable ``serve`` hands the workers their configuration in.
CONFIG_ENV = "MIGSYNC_SERVE_CONFIG"
#: What :func:`app_from_env` is, for uvicorn (a factory: ``factory=True``).
APP_FACTORY = "migsync.server.workers:app_from_env"


@attrs.frozen
class ServeConfig:
    """What every process of ``migsync serve`` makes its app from."""

    store_url: str
    admin_token: str
    #: ``--apply-changes`` values; None: the default appliers; ``[]``: none
    appliers: list[str] | None = None
    panel: bool = True
    panel_secure_cookie: bool = False
    #: the panel's secret as text (None: random per process, refused with several workers)
    panel_secret: str | None = None
    failed_auth_limit: str = "20/minute"
    request_key_path: str | None = None
    pool_size: int = 10
    max_overflow: int = 10
    cache_seconds: float = 1.0
    cache_clients: int = 200_000

    def to_env(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


def build(config: ServeConfig) -> Starlette:
    """The app ``config`` describes (what ``serve`` runs in each process)."""
    from migsync.core.plugins import make_plugins
    from migsync.protocol.signing import load_private_key
    from migsync.server.app import create_app
    from migsync.server.appliers import build_appliers
    from migsync.server.engine import PoolOptions
    from migsync.server.panel import PanelOptions

    appliers = [] if config.appliers == [] else build_appliers(make_plugins(), config.appliers)
    secret = None if config.panel_secret is None else config.panel_secret.encode("utf-8")
    panel: bool | PanelOptions = (
        PanelOptions(secure_cookie=config.panel_secure_cookie, secret=secret) if config.panel else False
    )
    request_key = (
        None if config.request_key_path is None else load_private_key(config.request_key_path, "request key")
    )
    return create_app(
        config.store_url,
        admin_token=config.admin_token,
        appliers=appliers,
        panel=panel,
        failed_auth_limit=config.failed_auth_limit,
        request_key=request_key,
        pool=PoolOptions(size=config.pool_size, overflow=config.max_overflow),
        cache_seconds=config.cache_seconds,
        cache_clients=config.cache_clients,
    )


def app_from_env() -> Starlette:
    """The app of one uvicorn worker, from :data:`CONFIG_ENV` (set by ``migsync serve``)."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise ConfigError(f"{CONFIG_ENV} is not set: start workers with 'migsync serve --workers N'")
    return build(ServeConfig.from_env(text))


def environment(config: ServeConfig) -> dict[str, Any]:
    """The environment entries that hand ``config`` to the workers."""
    return {CONFIG_ENV: config.to_env()}
