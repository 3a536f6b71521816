"""Configuration files: ``migsync.toml`` supplies defaults for every command's options.

A value is taken from, in order: the command line, a ``MIGSYNC_*``
environment variable, the configuration file, the option's default. The
file is the one ``--config`` (or ``MIGSYNC_CONFIG``) names, else
``migsync.toml`` in the working directory if there is one.

A key is an option's long name without its dashes (``--max-attempts`` is
``max_attempts``, ``--trust-key`` is ``trust_key``). Keys at the top of the
file are defaults for every command that has the option; a table named after
a command (``[apply]``, ``[serve]``) or a group (``[client]``, with
``[client.run]`` inside it) is for that command, or every command of the
group, and wins over the keys above it::

    db = "sqlite:///app.db"          # apply, status, revert, client sync, ...
    migrations = "db/migrations"     # apply, publish, ...

    [client]
    server = "https://migrations.example.com"
    client_id = "shop-berlin"
    trust_key = ["keys/server.pub"]  # relative to this file's folder

    [client.run]
    interval = 60

    [serve]
    store = "postgresql://db/migsync"

A path option's relative value (``migrations``, ``trust_key``, ``signing_key``)
is relative to the file's folder, so the file works from any working
directory. An unknown key or table is an error naming the file and where.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from migsync.cli.lazy import all_commands
from migsync.core.errors import ConfigError
from migsync.core.files import read_regular, reason

DEFAULT_FILE = "migsync.toml"

#: Options that make no sense in a file (the file itself, help).
_NOT_IN_FILES = {"config", "help", "version"}


def find_file(explicit: str | None) -> Path | None:
    """The configuration file to read: ``explicit``, else ./migsync.toml if present."""
    if explicit:
        path = Path(explicit)
        if not os.path.lexists(path):
            raise ConfigError(f"configuration file {explicit} does not exist")
        return path  # a FIFO or a directory is named by read_file, which refuses to read it
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def read_file(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``."""
    try:
        return tomllib.loads(read_regular(path).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {reason(exc)}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None


def default_map(path: Path, root: click.Group) -> dict[str, Any]:
    """Click's ``default_map`` for ``root`` and every command under it, from the file at ``path``."""
    return _Reader(path).group(root, read_file(path), (), {})


def key_of(option: click.Option) -> str:
    """``max_attempts`` for ``--max-attempts``: the option's name in a configuration file."""
    longest = max(option.opts, key=len)
    return longest.lstrip("-").replace("-", "_")


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def group(
        self, group: click.Group, table: Mapping[str, Any], names: tuple[str, ...], inherited: dict[str, Any]
    ) -> dict[str, Any]:
        values = {k: v for k, v in table.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        commands = all_commands(group)
        unknown_tables = sorted(set(tables) - set(commands))
        if unknown_tables:
            where = f"[{'.'.join(names)}]" if names else "the file"
            raise ConfigError(
                f"{self.path}: no command {', '.join(unknown_tables)} for a table in {where} "
                f"(commands: {', '.join(sorted(commands))})"
            )
        known = self._keys_under(group)
        unknown = sorted(set(values) - known)
        if unknown:
            where = f"in [{'.'.join(names)}]" if names else "at the top of the file"
            raise ConfigError(
                f"{self.path}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} {where} "
                f"(no {'.'.join(names) or 'migsync'} command has such an option)"
            )
        merged = {**inherited, **values}
        result: dict[str, Any] = {}
        for name, command in commands.items():
            section = tables.get(name, {})
            if isinstance(command, click.Group):
                result[name] = self.group(command, section, (*names, name), merged)
            else:
                result[name] = self.command(command, section, (*names, name), merged)
        return result

    def command(
        self,
        command: click.Command,
        table: Mapping[str, Any],
        names: tuple[str, ...],
        inherited: dict[str, Any],
    ) -> dict[str, Any]:
        options = self._options(command)
        nested = sorted(k for k, v in table.items() if isinstance(v, dict))
        unknown = sorted(set(table) - set(options) - set(nested))
        if nested or unknown:
            bad = [*nested, *unknown]
            raise ConfigError(
                f"{self.path}: unknown key{'s' * (len(bad) > 1)} {', '.join(bad)} in [{'.'.join(names)}] "
                f"(known: {', '.join(sorted(options))})"
            )
        merged = {**inherited, **table}
        defaults: dict[str, Any] = {}
        for key, value in merged.items():
            option = options.get(key)
            if option is None:  # a key from above that this command does not take
                continue
            assert option.name is not None
            defaults[option.name] = self._value(option, key, value, names)
        return defaults

    def _value(self, option: click.Option, key: str, value: Any, names: tuple[str, ...]) -> Any:
        where = f"[{'.'.join(names)}] {key}"
        if option.multiple:
            value = [value] if not isinstance(value, list) else value
            if any(isinstance(v, dict | list) for v in value):
                raise ConfigError(f"{self.path}: {where} must be a value or a list of values")
            return [self._path(option, v) for v in value]
        if isinstance(value, dict | list):
            raise ConfigError(f"{self.path}: {where} must be a single value")
        return self._path(option, value)

    def _path(self, option: click.Option, value: Any) -> Any:
        """A path option's relative value, relative to the file's folder."""
        if isinstance(option.type, click.Path) and isinstance(value, str) and not os.path.isabs(value):
            return str(self.path.parent / value)
        return value

    @staticmethod
    def _options(command: click.Command) -> dict[str, click.Option]:
        return {
            key_of(p): p
            for p in command.params
            if isinstance(p, click.Option) and key_of(p) not in _NOT_IN_FILES
        }

    def _keys_under(self, group: click.Group) -> set[str]:
        keys: set[str] = set()
        for command in all_commands(group).values():
            if isinstance(command, click.Group):
                keys |= self._keys_under(command)
            else:
                keys |= set(self._options(command))
        return keys
