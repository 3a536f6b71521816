"""The options of a staged rollout, shared by ``migsync publish --stages`` and
``migsync rollout start``."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from migsync.server.rollouts import Policy

F = TypeVar("F", bound=Callable[..., Any])


def rollout_options(command: F) -> F:
    """``--success-threshold``, ``--error-threshold``, ``--soak``, ``--on-failure``, ``--by``."""
    for option in reversed(
        [
            click.option(
                "--success-threshold",
                default="95%",
                show_default=True,
                metavar="PCT",
                help="Share of a stage's clients that reported which must have applied it before "
                "the next stage starts.",
            ),
            click.option(
                "--error-threshold",
                default="5%",
                show_default=True,
                metavar="PCT",
                help="Share of a stage's clients that reported which may have failed; above it the "
                "rollout pauses itself.",
            ),
            click.option(
                "--soak",
                default="10m",
                show_default=True,
                metavar="DURATION",
                help="Least time a stage runs before the next starts (90s, 10m, 2h, 1d).",
            ),
            click.option(
                "--on-failure",
                type=click.Choice(["pause", "revert"]),
                default="pause",
                show_default=True,
                help="On crossing the error threshold: pause, or pause and ask the clients of the "
                "started stages that applied it to revert it.",
            ),
            click.option(
                "--by",
                "by",
                default=None,
                metavar="NAME",
                help="Who does it, recorded in the rollout's audit [default: the login name].",
            ),
        ]
    ):
        command = option(command)
    return command


def who(by: str | None) -> str:
    return by if by is not None else f"{getpass.getuser()} (cli)"


def policy_of(success: str, error: str, soak: str, on_failure: str) -> Policy:
    """The policy the options give; a bad value is a usage error naming the option."""
    from migsync.server import rollouts

    try:
        return rollouts.Policy(
            rollouts.parse_ratio(success, "--success-threshold"),
            rollouts.parse_ratio(error, "--error-threshold"),
            rollouts.parse_duration(soak),
            on_failure,
        )
    except rollouts.RolloutError as exc:
        raise click.BadParameter(str(exc)) from None
