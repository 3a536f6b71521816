"""``migsync demo``: the main job end to end, on SQLite files, in this one process.

Part 1, one client on its own (no server):

1. apply the bundled migrations (three files in both supported formats);
2. a broken migration fails, is retried with backoff, and ends up dead;
3. the fix is written, the dead migration is revived and applies;
4. a revert runs newest first.

Part 2, a server and its fleet, is :mod:`migsync.demo.fleet` (steps 5-10).
It imports the server's stack (SQLAlchemy, Starlette, uvicorn, httpx), so it
is imported only when it runs.

Part 1's events go to the log and to ``events.jsonl`` in the demo folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from migsync.demo.local import run_local
from migsync.demo.steps import part

PARTS = ("local", "fleet", "all")


async def run_demo(workdir: str, which: str = "all") -> int:
    """Part 1 (``local``), part 2 (``fleet``) or both, in ``workdir`` (deleted first)."""
    if which not in PARTS:
        raise ValueError(f"part {which!r} is not one of {', '.join(PARTS)}")
    root = Path(workdir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    codes = []
    if which in ("local", "all"):
        part("part 1: one client on its own, no server")
        codes.append(await run_local(root))
    if which in ("fleet", "all"):
        from migsync.demo.fleet import run_fleet

        part("part 2: a server and its fleet, on a loopback port of this process")
        codes.append(await run_fleet(root / "fleet"))
    return max(codes)
