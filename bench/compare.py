"""The side-by-side half of bench/apply.py (``--compare``): migsync against the raw driver and
the migration tools people use, on one machine, in one run.

Every tool applies the same N migrations (each creates a table and an index;
down drops both) to a fresh database, then runs once more with nothing to do
(no-op), then reverts all of them. Every measurement runs in a child process
of its own, so each one has its peak RSS (``wait4``) and its CPU time:

- ``raw``: the driver alone (sqlite3; asyncpg on Postgres), one transaction and
  one history-row insert (delete, on revert) per migration. On Postgres also
  ``raw pipelined``: the same transactions sent as one simple query.
- ``migsync``: ``Client.apply(scan_directory(DIR))`` in-process (start-up not
  counted), and ``migsync apply`` / ``revert --all`` as whole processes.
- ``alembic`` (``upgrade head`` / ``downgrade base``, one transaction per
  migration), ``yoyo`` (``apply`` / ``rollback --all``), ``dbmate`` (``up`` /
  ``rollback``, one process per migration rolled back: dbmate has no other
  way), each as whole processes.

Time is wall time; for the in-process rows, of the work alone, for the others
of the whole process. CPU is the process's user + system time (the database
server's is not counted on Postgres). SQLite: every database file is made in
WAL mode before a tool touches it, and every tool runs with synchronous=FULL
(SQLite's default, migsync's setting, dbmate's ``?_sync=FULL``): one fsync
per commit for each. Rounds are interleaved: per repeat, every N and every
tool once, the tools in a rotated order.

A tool that is not installed is skipped with a line saying how to get it. The
tools are looked up beside this Python, in ``MIGSYNC_BENCH_TOOLS`` (folders,
``:``-separated), in bench/.tools/ and on PATH.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
TOOLS_DIR = HERE / ".tools"
HOW_TO_GET = {
    "alembic": "pip install -e '.[bench]' (or alembic into MIGSYNC_BENCH_TOOLS)",
    "yoyo": "pip install -e '.[bench]' (or yoyo-migrations into MIGSYNC_BENCH_TOOLS)",
    "dbmate": "npm install --prefix bench/.tools dbmate (its Go binary is used, not the node wrapper)",
    "psycopg2": "pip install psycopg2-binary beside alembic and yoyo (their Postgres driver)",
}

Scripts = list[tuple[list[str], list[str]]]


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mb: float


@dataclass
class Result:
    samples: dict[tuple[str, int, str, str], list[Sample]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, backend: str, n: int, tool: str, op: str, sample: Sample) -> None:
        self.samples.setdefault((backend, n, tool, op), []).append(sample)

    def save(self, path: Path) -> None:
        rows = [[*key, [[s.wall, s.cpu, s.rss_mb] for s in samples]] for key, samples in self.samples.items()]
        path.write_text(json.dumps({"samples": rows, "skipped": self.skipped}, indent=1))

    def load(self, path: Path) -> None:
        """Add the samples of a saved run (runs at other Ns merge into one table)."""
        saved = json.loads(path.read_text())
        for backend, n, tool, op, samples in saved["samples"]:
            for wall, cpu, rss in samples:
                self.add(backend, n, tool, op, Sample(wall, cpu, rss))
        self.skipped.update(saved["skipped"])


# -- finding the tools -------------------------------------------------------------------------


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("MIGSYNC_BENCH_TOOLS", "").split(os.pathsep) if p]
    return [
        Path(sys.executable).parent,
        *extra,
        TOOLS_DIR / "venv" / "bin",
        TOOLS_DIR / "node_modules" / "@dbmate" / "linux-x64" / "bin",
        TOOLS_DIR / "node_modules" / "@dbmate" / "linux-arm64" / "bin",
    ]


def find_tool(name: str) -> str | None:
    for folder in search_path():
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        # npm's layout: <prefix>/node_modules/@dbmate/<platform>/bin/dbmate
        for binary in folder.glob(f"node_modules/@dbmate/*/bin/{name}"):
            return str(binary)
    found = shutil.which(name)
    if found and name == "dbmate" and Path(found).resolve().suffix == ".js":
        # npm's .bin/dbmate is a node script that starts the binary: find the binary itself.
        platform = Path(found).resolve().parents[2] / "@dbmate"
        binaries = sorted(platform.glob("*/bin/dbmate"))
        return str(binaries[0]) if binaries else None
    return found


def python_of(script: str) -> str:
    """The interpreter of a console script (its shebang), to ask it whether psycopg2 is there."""
    with open(script, encoding="utf-8", errors="replace") as file:
        first = file.readline()
    return first[2:].strip() if first.startswith("#!") else sys.executable


# -- running one measurement -------------------------------------------------------------------


def child_env() -> dict[str, str]:
    # Bytecode is cached, as it is in any real install (the shell may say not to write it).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPATH", str(HERE.parent))
    return env


#: GNU time reports a child's own peak RSS. wait4's ru_maxrss would not: Linux carries the
#: RSS of the forking process (this one) across exec, so every child would seem as big as us.
GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run_child(cmd: Sequence[str], cwd: Path | None = None) -> tuple[Sample, str]:
    """Run ``cmd`` to its end: its wall time, CPU time, peak RSS, and its stdout."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile() as rss,
    ):
        full = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd] if GNU_TIME else list(cmd)
        started = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=child_env(), cwd=cwd)
        # CPU: the child's, which GNU time reaped, plus that of GNU time itself (about 1 ms).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        peak_kb = int(Path(rss.name).read_text().split()[-1]) if GNU_TIME else usage.ru_maxrss
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {stderr[-2000:]}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024), stdout


def run_worker(*args: str) -> Sample:
    """An in-process measurement: the worker times its own work and prints it."""
    sample, stdout = run_child([sys.executable, str(Path(__file__)), "--worker", *args])
    timed = json.loads(stdout.strip().splitlines()[-1])
    return Sample(timed["wall"], timed["cpu"], sample.rss_mb)


# -- the migration folders of each tool --------------------------------------------------------


def scripts_for(n: int) -> Scripts:
    out = []
    for i in range(1, n + 1):
        up = [
            f"CREATE TABLE t_{i} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL)",
            f"CREATE INDEX ix_t_{i}_name ON t_{i} (name)",
        ]
        out.append((up, [f"DROP INDEX ix_t_{i}_name", f"DROP TABLE t_{i}"]))
    return out


def write_native(folder: Path, scripts: Scripts) -> None:
    """dbmate's format, which migsync reads as it is."""
    folder.mkdir(parents=True)
    for i, (up, down) in enumerate(scripts, 1):
        (folder / f"{i:05d}_table_{i}.sql").write_text(
            "-- migrate:up\n" + ";\n".join(up) + ";\n-- migrate:down\n" + ";\n".join(down) + ";\n"
        )


def write_yoyo(folder: Path, scripts: Scripts) -> None:
    folder.mkdir(parents=True)
    for i, (up, down) in enumerate(scripts, 1):
        (folder / f"{i:05d}_table_{i}.sql").write_text(";\n".join(up) + ";\n")
        (folder / f"{i:05d}_table_{i}.rollback.sql").write_text(";\n".join(down) + ";\n")


ALEMBIC_ENV = """\
from alembic import context
from sqlalchemy import create_engine, event
from sqlalchemy.pool import NullPool

url = context.get_x_argument(as_dictionary=True)["db"]
engine = create_engine(url, poolclass=NullPool)
if url.startswith("sqlite"):
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""


def write_alembic(folder: Path, scripts: Scripts) -> None:
    (folder / "versions").mkdir(parents=True)
    (folder / "env.py").write_text(ALEMBIC_ENV)
    (folder / "alembic.ini").write_text(f"[alembic]\nscript_location = {folder}\n")
    for i, (up, down) in enumerate(scripts, 1):
        previous = repr(f"r{i - 1:05d}") if i > 1 else "None"
        body = [
            "from alembic import op",
            f"revision = 'r{i:05d}'",
            f"down_revision = {previous}",
            "branch_labels = None",
            "depends_on = None",
            "def upgrade():",
            *(f"    op.execute({statement!r})" for statement in up),
            "def downgrade():",
            *(f"    op.execute({statement!r})" for statement in down),
        ]
        (folder / "versions" / f"r{i:05d}.py").write_text("\n".join(body) + "\n")


# -- databases ---------------------------------------------------------------------------------


class Database:
    """A fresh database for one tool's round: a SQLite file in WAL mode, or a Postgres database."""

    def __init__(self, backend: str, root: Path, name: str, pg_dsn: str):
        self.backend, self.root, self.name, self.pg_dsn = backend, root, name, pg_dsn

    def __enter__(self) -> Database:
        if self.backend == "sqlite":
            self.path = self.root / f"{self.name}.db"
            conn = sqlite3.connect(self.path)
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: every tool then writes a WAL
            conn.close()
        else:
            asyncio.run(_pg_admin(self.pg_dsn, f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.backend == "postgresql":
            asyncio.run(_pg_admin(self.pg_dsn, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            return
        for leftover in self.root.glob(f"{self.name}.db*"):  # the file, its WAL, migsync's lock file
            leftover.unlink()

    def url(self, flavour: str) -> str:
        if self.backend == "sqlite":
            return {
                "migsync": f"sqlite:///{self.path}",
                "sqlalchemy": f"sqlite:///{self.path}",
                "yoyo": f"sqlite:///{self.path}",
                "dbmate": f"sqlite:{self.path}?_sync=FULL",
                "raw": str(self.path),
            }[flavour]
        parts = urlsplit(self.pg_dsn)
        plain = urlunsplit(("postgresql", parts.netloc, f"/{self.name}", "", ""))
        return {
            "migsync": plain,
            "raw": plain,
            "sqlalchemy": plain.replace("postgresql://", "postgresql+psycopg2://", 1),
            "yoyo": plain,  # yoyo's postgresql scheme is psycopg2
            "dbmate": plain.replace("postgresql://", "postgres://", 1) + "?sslmode=disable",
        }[flavour]


async def _pg_admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# -- the tools ---------------------------------------------------------------------------------


@dataclass
class Folders:
    native: Path
    yoyo: Path
    alembic: Path


@dataclass
class Tool:
    name: str
    backends: tuple[str, ...]
    #: (op, db, folders, n) -> one measurement; op is apply, noop or revert
    measure: Callable[[str, Database, Folders, int], Sample | None]
    in_process: bool = False


def _raw(op: str, db: Database, folders: Folders, n: int) -> Sample | None:
    if op == "noop":
        return None
    return run_worker("raw", db.backend, db.url("raw"), op, str(n))


def _raw_pipelined(op: str, db: Database, folders: Folders, n: int) -> Sample | None:
    if op == "noop":
        return None
    return run_worker("raw-pipelined", db.backend, db.url("raw"), op, str(n))


def _migsync_inproc(op: str, db: Database, folders: Folders, n: int) -> Sample | None:
    return run_worker("migsync", db.backend, db.url("migsync"), op, str(folders.native))


def _migsync_cli(op: str, db: Database, folders: Folders, n: int) -> Sample | None:
    migsync = str(Path(sys.executable).with_name("migsync"))
    if op == "revert":
        cmd = [migsync, "revert", "--all", "--db", db.url("migsync")]
    else:
        cmd = [migsync, "apply", "--migrations", str(folders.native), "--db", db.url("migsync")]
    return run_child(cmd)[0]


def _alembic(op: str, db: Database, folders: Folders, n: int) -> Sample | None:
    exe = find_tool("alembic")
    assert exe is not None
    target = ["downgrade", "base"] if op == "revert" else ["upgrade", "head"]
    ini = str(folders.alembic / "alembic.ini")
    return run_child([exe, "-c", ini, "-x", f"db={db.url('sqlalchemy')}", *target])[0]


def _yoyo(op: str, db: Database, folders: Folders, n: int) -> Sample | None:
    exe = find_tool("yoyo")
    assert exe is not None
    verb = ["rollback", "--all"] if op == "revert" else ["apply"]
    cmd = [exe, *verb, "--batch", "--no-config-file", "--database", db.url("yoyo"), str(folders.yoyo)]
    return run_child(cmd)[0]


def _dbmate(op: str, db: Database, folders: Folders, n: int) -> Sample | None:
    exe = find_tool("dbmate")
    assert exe is not None
    base = [exe, "--url", db.url("dbmate"), "--migrations-dir", str(folders.native), "--no-dump-schema"]
    if op != "revert":
        return run_child([*base, "up"])[0]
    if n > DBMATE_REVERT_MAX:
        return None
    total = Sample(0.0, 0.0, 0.0)
    started = time.perf_counter()
    for _ in range(n):  # dbmate rolls back one migration per run
        one = run_child([*base, "rollback"])[0]
        total = Sample(0.0, total.cpu + one.cpu, max(total.rss_mb, one.rss_mb))
    return Sample(time.perf_counter() - started, total.cpu, total.rss_mb)


DBMATE_REVERT_MAX = 1000

TOOLS = [
    Tool("raw", ("sqlite", "postgresql"), _raw, in_process=True),
    Tool("raw pipelined", ("postgresql",), _raw_pipelined, in_process=True),
    Tool("migsync", ("sqlite", "postgresql"), _migsync_inproc, in_process=True),
    Tool("migsync CLI", ("sqlite", "postgresql"), _migsync_cli),
    Tool("alembic CLI", ("sqlite", "postgresql"), _alembic),
    Tool("yoyo CLI", ("sqlite", "postgresql"), _yoyo),
    Tool("dbmate", ("sqlite", "postgresql"), _dbmate),
]


def why_missing(tool: Tool, backend: str) -> str | None:
    """None if ``tool`` can run on ``backend`` here, else how to get it."""
    exe_name = {"alembic CLI": "alembic", "yoyo CLI": "yoyo", "dbmate": "dbmate"}.get(tool.name)
    if exe_name is None:
        return None
    exe = find_tool(exe_name)
    if exe is None:
        return f"{exe_name} not found: {HOW_TO_GET[exe_name]}"
    if backend == "postgresql" and exe_name in ("alembic", "yoyo"):
        probe = subprocess.run([python_of(exe), "-c", "import psycopg2"], capture_output=True, check=False)
        if probe.returncode != 0:
            return f"psycopg2 not found for {exe_name}: {HOW_TO_GET['psycopg2']}"
    return None


# -- the run -----------------------------------------------------------------------------------


@contextmanager
def folders_for(root: Path, n: int) -> Iterator[Folders]:
    scripts = scripts_for(n)
    folders = Folders(root / f"native{n}", root / f"yoyo{n}", root / f"alembic{n}")
    write_native(folders.native, scripts)
    write_yoyo(folders.yoyo, scripts)
    write_alembic(folders.alembic, scripts)
    yield folders


def compare(
    sizes: Sequence[int],
    repeat: int,
    backends: Sequence[str],
    pg_dsn: str,
    only: Sequence[str] = (),
    save: Path | None = None,
) -> Result:
    """Run the rounds; with ``save``, the samples so far are written there after every round
    (a long run stopped early still has its finished rounds)."""
    result = Result()
    tools: dict[str, list[Tool]] = {}
    for backend in backends:
        tools[backend] = []
        for tool in TOOLS:
            if backend not in tool.backends or (only and tool.name not in only):
                continue
            why = why_missing(tool, backend)
            if why is None:
                tools[backend].append(tool)
            else:
                result.skipped[f"{tool.name} ({backend})"] = why
    with tempfile.TemporaryDirectory(prefix="migsync-compare-") as tmp:
        root = Path(tmp)
        folders = {}
        for n in sizes:
            folders[n] = folders_for(root, n).__enter__()
        # Untimed, on a few migrations: bytecode compiled and the tools' files in the page cache
        # before the first timed round.
        warm_n = min(20, *sizes)
        warm = folders[warm_n] if warm_n in folders else folders_for(root, warm_n).__enter__()
        for backend in backends:
            for tool in tools[backend]:
                with Database(backend, root, f"warm_{_slug(tool.name)}", pg_dsn) as db:
                    for op in ("apply", "noop", "revert"):
                        tool.measure(op, db, warm, warm_n)
        serial = 0
        for round_ in range(repeat):
            for n in sizes:
                for backend in backends:
                    order = (
                        tools[backend][round_ % len(tools[backend]) :]
                        + tools[backend][: round_ % len(tools[backend])]
                    )
                    for tool in order:
                        serial += 1
                        name = f"b{os.getpid()}_{serial}"
                        with Database(backend, root, name, pg_dsn) as db:
                            for op in ("apply", "noop", "revert"):
                                sample = tool.measure(op, db, folders[n], n)
                                if sample is not None:
                                    result.add(backend, n, tool.name, op, sample)
                    print(f"  round {round_ + 1}/{repeat}  N={n}  {backend}: done", file=sys.stderr)
                    if save is not None:
                        result.save(save)
    return result


def _slug(name: str) -> str:
    return name.replace(" ", "_").lower()


# -- the table ---------------------------------------------------------------------------------


def _median(samples: Sequence[Sample], key: str) -> float:
    return statistics.median(getattr(s, key) for s in samples)


def _span(samples: Sequence[Sample]) -> str:
    walls = [s.wall * 1000 for s in samples]
    return f"{statistics.median(walls):.0f} ({min(walls):.0f}-{max(walls):.0f})"


def table(result: Result) -> str:
    header = (
        "| backend | N | tool | apply ms (min-max) | ÷ raw | revert ms (min-max) | ÷ raw "
        "| no-op ms | CPU apply ms | peak RSS MB | rounds |"
    )
    lines = [header, "| " + " | ".join("---" for _ in range(header.count("|") - 1)) + " |"]
    keys = sorted({(b, n, t) for b, n, t, _ in result.samples}, key=lambda k: (k[0] != "sqlite", k[1]))
    order = [t.name for t in TOOLS]
    keys.sort(key=lambda k: (k[0] != "sqlite", k[1], order.index(k[2])))
    for backend, n, tool in keys:
        cells = [backend, str(n), tool]
        for op in ("apply", "revert"):
            samples = result.samples.get((backend, n, tool, op))
            raw = result.samples.get((backend, n, "raw", op))
            if not samples:
                cells += ["—", ""]
                continue
            cells.append(_span(samples))
            cells.append(f"{_median(samples, 'wall') / _median(raw, 'wall'):.2f}x" if raw else "")
        noop = result.samples.get((backend, n, tool, "noop"))
        cells.append(f"{_median(noop, 'wall') * 1000:.0f}" if noop else "")
        apply = result.samples.get((backend, n, tool, "apply"), [])
        cells.append(f"{_median(apply, 'cpu') * 1000:.0f}" if apply else "")
        rss = [
            s.rss_mb
            for op in ("apply", "revert", "noop")
            for s in result.samples.get((backend, n, tool, op), [])
        ]
        cells.append(f"{max(rss):.0f}" if rss else "")
        cells.append(str(len(apply)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(result: Result, path: Path) -> str:
    """A bar chart of apply ÷ raw per tool and N, if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart: matplotlib is not installed (pip install -e '.[bench]'): no chart drawn"
    backends = sorted({b for b, *_ in result.samples}, key=lambda b: b != "sqlite")
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        sizes = sorted({n for b, n, *_ in result.samples if b == backend})
        names = [t.name for t in TOOLS if any(k[0] == backend and k[2] == t.name for k in result.samples)]
        names = [name for name in names if name != "raw"]
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            ratios = []
            for n in sizes:
                mine = result.samples.get((backend, n, name, "apply"))
                raw = result.samples.get((backend, n, "raw", "apply"))
                ratios.append(_median(mine, "wall") / _median(raw, "wall") if mine and raw else 0.0)
            color = f"C{[t.name for t in TOOLS].index(name)}"  # one colour per tool in every panel
            ax.bar([x + i * width for x in range(len(sizes))], ratios, width, label=name, color=color)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(sizes))], [f"N={n}" for n in sizes])
        ax.set_ylabel("apply time ÷ raw driver")
        ax.set_title(backend)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"chart: {path}"


# -- the worker (in-process measurements) ------------------------------------------------------


def worker(kind: str, backend: str, url: str, op: str, arg: str) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "migsync":
        asyncio.run(_migsync_work(url, op, Path(arg)))
        return
    n = int(arg)
    scripts = scripts_for(n)
    if backend == "sqlite":
        _raw_sqlite(url, op, scripts)
    else:
        asyncio.run(_raw_pg(url, op, scripts, pipelined=kind == "raw-pipelined"))
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))


async def _migsync_work(url: str, op: str, folder: Path) -> None:
    from migsync import Client
    from migsync.core.plugins import make_plugins
    from migsync.core.sources import scan_directory

    # Timed from here: the work, not the imports (the CLI row has those).
    wall, cpu = time.perf_counter(), time.process_time()
    async with Client.connect(url, plugins=make_plugins(), sinks=[]) as client:
        if op == "revert":
            await client.ledger.revert(everything=True)
            result = await client.process()
        else:
            result = await client.apply(scan_directory(folder))
        assert result.ok and result.remaining == 0, result
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))


def _raw_sqlite(path: str, op: str, scripts: Scripts) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS history (version INTEGER PRIMARY KEY, applied_at REAL)")
    versions = range(1, len(scripts) + 1) if op == "apply" else range(len(scripts), 0, -1)
    for version in versions:
        conn.execute("BEGIN IMMEDIATE")
        for statement in scripts[version - 1][0 if op == "apply" else 1]:
            conn.execute(statement)
        if op == "apply":
            conn.execute("INSERT INTO history VALUES (?, ?)", (version, time.time()))
        else:
            conn.execute("DELETE FROM history WHERE version = ?", (version,))
        conn.execute("COMMIT")
    conn.close()


async def _raw_pg(url: str, op: str, scripts: Scripts, *, pipelined: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS history (version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION)"
        )
        versions = range(1, len(scripts) + 1) if op == "apply" else range(len(scripts), 0, -1)
        if pipelined:
            # Every migration its own transaction, all of them in one simple-query message.
            parts = []
            for version in versions:
                body = ";\n".join(scripts[version - 1][0 if op == "apply" else 1])
                record = (
                    f"INSERT INTO history VALUES ({version}, {time.time()})"
                    if op == "apply"
                    else f"DELETE FROM history WHERE version = {version}"
                )
                parts.append(f"BEGIN;\n{body};\n{record};\nCOMMIT;")
            await conn.execute("\n".join(parts))
            return
        for version in versions:
            async with conn.transaction():
                await conn.execute(";\n".join(scripts[version - 1][0 if op == "apply" else 1]))
                if op == "apply":
                    await conn.execute("INSERT INTO history VALUES ($1, $2)", version, time.time())
                else:
                    await conn.execute("DELETE FROM history WHERE version = $1", version)
    finally:
        await conn.close()


def show_saved(paths: Sequence[Path], chart_path: Path | None) -> None:
    """The table (and chart) of saved runs, merged: needs neither migsync nor the tools, so any
    Python with matplotlib can draw the chart."""
    result = Result()
    for path in paths:
        result.load(path)
    print(table(result))
    for tool, why in result.skipped.items():
        print(f"skipped {tool}: {why}")
    if chart_path is not None:
        print(chart(result, chart_path))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:7])
    else:
        import argparse

        parser = argparse.ArgumentParser(description="Show saved runs of bench/apply.py --compare.")
        parser.add_argument("--load", type=Path, nargs="+", required=True, help="runs saved with --save")
        parser.add_argument("--chart", type=Path, help="also draw a PNG chart here (needs matplotlib)")
        options = parser.parse_args()
        show_saved(options.load, options.chart)
