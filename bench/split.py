"""Split large scripts into statements, against the plain ``sqlite3.complete_statement`` loop.

The splitter must stay linear in the script's size: a data migration of
100 MiB of ``INSERT`` statements is split before it runs, holding the write
lock on SQLite. The baseline is the simplest correct splitter for SQLite
(find each ``;``, ask ``sqlite3.complete_statement`` about the text since
the last cut), measured in the same run; it knows nothing of line numbers.

    python bench/split.py [--mib 100]
"""

from __future__ import annotations

import argparse
import sqlite3
import time

from migsync.core.splitter import split

ROW = "INSERT INTO t VALUES ({i}, 'some text; with a semicolon and ''quotes''', 3.14, NULL);\n"


def baseline(sql: str) -> int:
    count, start, search = 0, 0, 0
    while (end := sql.find(";", search)) >= 0:
        search = end + 1
        if sqlite3.complete_statement(sql[start:search]):
            count, start = count + 1, search
    return count


def timed(fn: object, *args: object) -> tuple[float, object]:
    began = time.perf_counter()
    result = fn(*args)  # type: ignore[operator]
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=100, help="size of the largest script")
    args = parser.parse_args()
    print(f"migsync bench/split.py  up to {args.mib:g} MiB")
    print(f"{'statements':>12} {'MiB':>7} {'baseline s':>11} {'sqlite s':>9} {'postgres s':>11} {'ratio':>7}")
    sizes = [10_000, 40_000, int(args.mib * 1024 * 1024 / len(ROW.format(i=500_000)))]
    for n in sizes:
        sql = "".join(ROW.format(i=i) for i in range(n))
        base, counted = timed(baseline, sql)
        lite, statements = timed(split, sql, "sqlite")
        pg, _ = timed(split, sql, "postgresql")
        assert counted == len(statements) == n  # type: ignore[arg-type]
        mib = len(sql) / 1024 / 1024
        print(f"{n:>12} {mib:>7.1f} {base:>11.3f} {lite:>9.3f} {pg:>11.3f} {lite / base:>6.2f}x")


if __name__ == "__main__":
    main()
