"""Configuration files: ``migsync.toml`` supplies defaults for the commands' options.

A value is taken from, in order: the command line, a ``MIGSYNC_*``
environment variable, the configuration file, the option's default. The
file is the one ``--config`` (or ``MIGSYNC_CONFIG``) names, else
``migsync.toml`` in the working directory if there is one. Its
``[client]`` table configures ``migsync client ...``::

    [client]
    db = "sqlite:///app.db"
    server = "https://migrations.example.com"
    client_id = "shop-berlin"
    token = "..."            # better: MIGSYNC_TOKEN in the environment
    trust_key = ["/etc/migsync/server.pub"]
    interval = 60

Relative paths in ``trust_key`` are relative to the file's folder.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from migsync.core.errors import ConfigError
from migsync.core.files import read_regular, reason

DEFAULT_FILE = "migsync.toml"

#: key in the file -> the option's parameter name, per table
CLIENT_KEYS = {
    "db": "db_url",
    "server": "server_url",
    "client_id": "client_id",
    "token": "token",
    "trust_key": "trust_keys",
    "interval": "interval",
    "timeout": "timeout",
    "retries": "retries",
    "max_attempts": "max_attempts",
    "sink": "sinks",
    "reports": "reports_dir",
}
_LISTS = {"trust_key", "sink"}


def find_file(explicit: str | None) -> Path | None:
    """The configuration file to read: ``explicit``, else ./migsync.toml if present."""
    if explicit:
        path = Path(explicit)
        if not os.path.lexists(path):
            raise ConfigError(f"configuration file {explicit} does not exist")
        return path  # a FIFO or a directory is named by load_table, which refuses to read it
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def load_table(path: Path, table: str, keys: Mapping[str, str]) -> dict[str, Any]:
    """The ``[table]`` of ``path`` as option defaults (parameter name -> value)."""
    try:
        data = tomllib.loads(read_regular(path).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {reason(exc)}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{table}] must be a table")
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} in [{table}] "
            f"(known: {', '.join(sorted(keys))})"
        )
    defaults: dict[str, Any] = {}
    for key, value in section.items():
        if key in _LISTS:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: [{table}] {key} must be a string or a list of strings")
            if key == "trust_key":
                value = [str(path.parent / v) if not os.path.isabs(v) else v for v in value]
        elif isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: [{table}] {key} must be a single value")
        defaults[keys[key]] = value
    return defaults
