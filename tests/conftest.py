from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import forkserver
import pytest
from _pytest.nodeid import NodeId
from hypothesis import HealthCheck, settings

from migsync.protocol.signing import write_keypair

# Tests build their own plugin managers; never pick up whatever is installed
# in the environment unless a test asks for it.
os.environ.setdefault("MIGSYNC_DISABLE_PLUGIN_AUTOLOAD", "1")

# Hypothesis measures the wall clock (a deadline per example, a health check on slow data):
# on a loaded machine, or beside parallel workers, that fails tests that are right.
settings.register_profile("migsync", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("migsync")

REPO = Path(__file__).resolve().parent.parent
MIGSYNC = str(Path(sys.executable).with_name("migsync"))
# The console script imports migsync from wherever the venv's editable install points, which
# is another checkout when these tests run from a git worktree: subprocesses import this one's.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)
PG_DSN = os.environ.get("MIGSYNC_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionfinish() -> None:
    """This worker's ``migsync`` fork server ends with it (see tests/forkserver.py), and every
    database its tests made is dropped before it ends."""
    forkserver.shutdown()
    _dropper.finish()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share a module-scoped fixture (an installed plugin, an exported drop folder)
    run on one pytest-xdist worker (``make test`` runs ``--dist loadgroup``), so that the fixture
    is made once, not once per worker. Without xdist the mark does nothing.

    pytest-xdist groups by a suffix of the node id (``test_x.py::test_y@group``) that its own
    hook adds by setting ``item._nodeid``, which pytest 9 no longer reads (the id is
    ``item._id``): there, ``--dist loadgroup`` groups nothing, and each worker made the
    fixture again. So this hook, after xdist's, adds the suffix where it is missing.
    """
    group_by_id = bool(getattr(config.option, "loadgroup", False))
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name, definitions in info.name2fixturedefs.items() if info is not None else ():
            if definitions and definitions[-1].scope == "module":
                item.add_marker(pytest.mark.xdist_group(f"{item.nodeid.split('::')[0]}::{name}"))
                break
        groups = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group") if mark.args})
        if group_by_id and groups and item.nodeid.rfind("@") <= item.nodeid.rfind("]"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database file in the test's own folder."""
    return f"sqlite:///{tmp_path / 'client.db'}"


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin DSN of a Postgres that answers; under CI=true its absence fails the run."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except Exception as exc:
        message = (
            f"Postgres does not answer at {PG_DSN}: {exc} (make test starts it; see MIGSYNC_TEST_PG_DSN)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return PG_DSN


def worker_id() -> str:
    """This pytest-xdist worker's name (``gw0``, ``gw1``, ...), ``main`` when the run is not parallel."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def database_name(prefix: str = "migsync_test") -> str:
    """A Postgres database name no other test, worker or concurrent run uses: ``prefix``, the
    worker (so that leftovers of a crashed worker say whose they are) and a random part."""
    return f"{prefix}_{worker_id()}_{uuid.uuid4().hex[:12]}"


class DatabaseDropper:
    """Drops the tests' databases in a thread of its own, several at once, while the tests go on.

    Postgres makes a checkpoint for every ``DROP DATABASE`` and waits for it: a second or more
    when the other workers write too, which a test spent waiting in its teardown. Drops that
    run at the same time share one checkpoint. :meth:`finish` (at the end of the session) waits
    for every drop; a drop that failed fails the next test that makes a database, or the end.
    """

    def __init__(self) -> None:
        self._names: queue.Queue[str | None] = queue.Queue()
        self._errors: list[str] = []
        self._thread: threading.Thread | None = None

    def drop(self, name: str) -> None:
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drop databases", daemon=True)
            self._thread.start()
        self._names.put(name)

    def check(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise AssertionError("could not drop test databases: " + "; ".join(errors))

    def finish(self) -> None:
        if self._thread is not None:
            self._names.put(None)
            self._thread.join()
            self._thread = None
        self.check()

    def _run(self) -> None:
        while True:
            names = [self._names.get()]
            while not self._names.empty() and len(names) < 8:
                names.append(self._names.get())
            asyncio.run(self._drop_all([name for name in names if name is not None]))
            if None in names:
                return

    async def _drop_all(self, names: list[str]) -> None:
        async def drop(name: str) -> None:
            try:
                await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                self._errors.append(f"{name}: {exc!r}")

        await asyncio.gather(*(drop(name) for name in names))


_dropper = DatabaseDropper()


@contextlib.contextmanager
def throwaway_database(prefix: str = "migsync_test") -> Iterator[str]:
    """A fresh Postgres database of the caller's own (its URL), dropped afterwards even if in use
    (by :class:`DatabaseDropper`, soon after: the caller does not wait for it)."""
    _dropper.check()
    name = database_name(prefix)
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(PG_DSN)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        _dropper.drop(name)


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    """A database of this test's own, created for it and dropped after it."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh database on each built-in backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'client.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh server store database on each backend (plain URLs, as a user gives them); a sync
    fixture, since ``pg_url`` runs its own event loop."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    """A fresh signing key pair: the private key here, the public one beside it (``.pub``)."""
    path = tmp_path / "signing.key"
    write_keypair(path)
    return path
