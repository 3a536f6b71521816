"""Start-up: whole ``migsync`` processes that have (almost) nothing to do, against the floor.

Times, as whole processes, interleaved, medians of ``--repeat`` runs: a no-op
``migsync apply`` on a database that has all N migrations applied (SQLite),
``migsync status`` on it (stdout a pipe: the plain table), ``--version``,
``--help``, and the floor, ``python -c "import asyncio, sqlite3"`` (what any
asyncio program on SQLite pays). Wall time and CPU time (user + system) per
process; on a shared machine CPU is the steadier of the two.

``--importtime`` also prints the modules of a no-op apply with the largest
cumulative import time (``python -X importtime``; its numbers include its own
overhead).

    python bench/startup.py [-n 1000] [--repeat 20] [--importtime]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from apply import generate


def child_env() -> dict[str, str]:
    # Bytecode cached, as in any real install (a shell may say not to write it).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    return env


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # cwd: not a checkout, whose migsync folder `python -m` would import ahead of PYTHONPATH.
    subprocess.run(
        cmd, env=child_env(), cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def importtime(cmd: list[str], cwd: Path, top: int = 25) -> list[tuple[int, int, str]]:
    """The ``top`` modules by cumulative import time: (self us, cumulative us, name as indented)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd[1:]],
        env=child_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
    ).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, own, cumulative, name = line.split("|", 0)[0], *line[12:].split("|")
            rows.append((int(own), int(cumulative), name.rstrip()))
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="migrations applied in the database")
    parser.add_argument("--repeat", type=int, default=20, help="runs of each; the median is shown")
    parser.add_argument("--importtime", action="store_true", help="also show the slowest imports of apply")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="migsync-startup-") as tmp:
        root = Path(tmp)
        folder = root / "migrations"
        folder.mkdir()
        generate(folder, args.n)
        db = f"sqlite:///{root / 'app.db'}"
        migsync = [sys.executable, "-m", "migsync"]
        subprocess.run(
            [*migsync, "apply", "--migrations", str(folder), "--db", db],
            env=child_env(),
            cwd=root,
            check=True,
        )
        commands = {
            "no-op apply": [*migsync, "apply", "--migrations", str(folder), "--db", db],
            "status (pipe)": [*migsync, "status", "--db", db],
            "--version": [*migsync, "--version"],
            "--help": [*migsync, "--help"],
            "floor: import asyncio, sqlite3": [sys.executable, "-c", "import asyncio, sqlite3"],
        }
        for cmd in commands.values():  # untimed: bytecode written, files cached
            timed(cmd, root)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        load = os.getloadavg()[0]
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                samples[name].append(timed(cmd, root))
        print(
            f"\nmigsync bench/startup.py  N={args.n}  repeat={args.repeat}  {os.cpu_count()} CPUs  "
            f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
        )
        print(f"{'process':<32}{'wall ms':>10}{'(min-max)':>16}{'CPU ms':>10}")
        for name, values in samples.items():
            walls = [w * 1000 for w, _ in values]
            cpu = statistics.median(c for _, c in values) * 1000
            span = f"({min(walls):.0f}-{max(walls):.0f})"
            print(f"{name:<32}{statistics.median(walls):>10.1f}{span:>16}{cpu:>10.1f}")
        print("targets: no-op apply <= 90 ms and status <= 150 ms at N=1000 (wall, on a quiet machine)")
        if args.importtime:
            print("\nslowest imports of a no-op apply (self us, cumulative us):")
            for own, cumulative, name in importtime(commands["no-op apply"], root):
                print(f"{own:>8}{cumulative:>10}  {name}")


if __name__ == "__main__":
    main()
