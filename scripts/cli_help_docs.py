"""Keep the ``--help`` dumps in docs/cli.md true to the code.

Every fenced block of docs/cli.md that starts with ``Usage: migsync ...`` is
the help of that command, as a person sees it on an 80-column terminal. This
script writes the current help into each of them; ``--check`` only says which
differ and exits 1 (tests/test_docs.py runs it so, so a changed option cannot
leave the docs behind)::

    python scripts/cli_help_docs.py          # rewrite docs/cli.md
    python scripts/cli_help_docs.py --check  # exit 1 if a block is stale
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from click.testing import CliRunner

from migsync.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
_BLOCK = re.compile(r"```\n(Usage: migsync[^\n]*\n.*?)```", re.DOTALL)
_USAGE = re.compile(r"Usage: migsync((?: [a-z][a-z-]*)*)")


def current_help(command: list[str]) -> str:
    """``migsync COMMAND --help`` on an 80-column terminal, without the environment's influence."""
    environ = {"MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}
    # 78: what click fits on an 80-column terminal (it keeps a margin of two).
    result = CliRunner(env=environ).invoke(main, [*command, "--help"], prog_name="migsync", terminal_width=78)
    if result.exit_code != 0:
        raise SystemExit(f"migsync {' '.join(command)} --help failed: {result.output}")
    return result.output


def refreshed(text: str) -> tuple[str, list[str]]:
    """``text`` with every help block current, and the commands whose block changed."""
    stale: list[str] = []

    def replace(match: re.Match[str]) -> str:
        # A block may hold the helps of several commands (a group's), one after the other.
        helps = []
        for part in re.split(r"\n(?=Usage: migsync)", match.group(1)):
            usage = _USAGE.match(part)
            assert usage is not None
            command = usage.group(1).split()
            new = current_help(command)
            if new.rstrip("\n") != part.rstrip("\n"):
                stale.append(" ".join(["migsync", *command]))
            helps.append(new)
        return "```\n" + "\n".join(helps) + "```"

    return _BLOCK.sub(replace, text), stale


def run(check: bool) -> int:
    os.environ.pop("NO_COLOR", None)
    text = DOC.read_text(encoding="utf-8")
    new, stale = refreshed(text)
    if check:
        for command in stale:
            print(f"docs/cli.md: the help of '{command}' is stale (run python scripts/cli_help_docs.py)")
        return 1 if stale else 0
    if new != text:
        DOC.write_text(new, encoding="utf-8")
    print(f"docs/cli.md: {len(stale)} help block{'s' if len(stale) != 1 else ''} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(run("--check" in sys.argv[1:]))
