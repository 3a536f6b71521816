"""A click group whose commands are imported only when they run.

``migsync apply`` runs on every client start, so it must not pay for the
import of ``serve``, ``publish`` or ``client run``. The group knows each lazy
command by where it lives (``"migsync.cli.queue:apply"``) and by its short
help, so ``migsync --help`` lists every command without importing one.
tests/test_cli_startup.py checks that each short help here is the one the
command itself would give.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import click
from click.utils import _make_default_short_help


class LazyCommand(NamedTuple):
    """Where a command lives (``module:attribute``) and what ``--help`` says of it."""

    target: str
    #: The first sentence of the command's help, as click shortens it (without a limit).
    short_help: str


class LazyGroup(click.Group):
    """A group of eagerly added commands and lazy ones (:class:`LazyCommand`)."""

    def __init__(self, *args: Any, lazy_commands: dict[str, LazyCommand] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(load_command(self.lazy_commands[cmd_name].target), cmd_name)
        return self.commands.get(cmd_name)

    def all_commands(self) -> dict[str, click.Command]:
        """Every command, the lazy ones imported (``migsync.toml`` is checked against them all)."""
        ctx = click.Context(self)
        found = {name: self.get_command(ctx, name) for name in self.list_commands(ctx)}
        return {name: command for name, command in found.items() if command is not None}

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own asks every command for its short help, which would import them all.
        rows: list[tuple[str, str | None]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is not None and command.hidden:
                continue
            rows.append((name, None if command is not None else self.lazy_commands[name].short_help))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        shown = []
        for name, short_help in rows:
            if short_help is None:
                shown.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                shown.append((name, _make_default_short_help(short_help, limit).strip()))
        with formatter.section("Commands"):
            formatter.write_dl(shown)


def load_command(target: str) -> click.Command:
    module, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command), target
    return command


def all_commands(group: click.Group) -> dict[str, click.Command]:
    """``group``'s commands, lazy ones included."""
    return group.all_commands() if isinstance(group, LazyGroup) else dict(group.commands)
