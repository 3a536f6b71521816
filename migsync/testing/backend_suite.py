"""A conformance suite for storage backends, built-in and third-party.

Subclass :class:`BackendSuite` in a test module and say which database to
use; every test of the suite then runs against your backend, opened through
the plugin registry exactly as ``migsync`` opens it::

    import pytest
    from migsync import make_plugins
    from migsync.testing.backend_suite import BackendSuite

    import my_plugin


    class TestMyBackend(BackendSuite):
        @pytest.fixture
        def backend_url(self, tmp_path):
            return f"mydb:///{tmp_path}/x"

        @pytest.fixture
        def plugins(self):  # optional: default is make_plugins()
            return make_plugins(autoload=False, extra=[my_plugin])

Optional fixtures: ``backend_options`` (keyword arguments for the backend's
factory, default none). Each test gets a fresh ``backend_url``: the suite
creates tables of its own and expects an empty database.

Tests skip by capability (``backend.capabilities``, constants in
:mod:`migsync.core.backend`): rollback of DDL needs ``transactional_ddl``;
savepoints and everything that runs the processor need ``savepoints``; two
backend instances on one database need ``multi_process``.

The suite's own SQL is the portable subset (``CREATE TABLE t (x INTEGER)``,
``$1`` placeholders), which every SQL backend is expected to accept.

The tests are ``async def``: the suite needs pytest-asyncio with
``asyncio_mode = "auto"`` (``[tool.pytest.ini_options]``); it uses no
async fixtures, so nothing else is asked of the plugin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from migsync.core import contracts
from migsync.core.backend import MULTI_PROCESS, PROCESS_WIDE_LOCK, SAVEPOINTS, TRANSACTIONAL_DDL, Backend
from migsync.core.client import Client
from migsync.core.clock import RetryPolicy
from migsync.core.errors import BackendError, ClaimLost, LockTimeout, MigsyncError, StatementError
from migsync.core.migration import ANY_DIALECT, Migration, Script
from migsync.core.plugins import Plugins, make_plugins
from migsync.core.schema import SCHEMA_VERSION, Tables
from migsync.core.work import (
    Await,
    Begin,
    Commit,
    Execute,
    Fetch,
    Flush,
    Release,
    Rollback,
    RollbackTo,
    Savepoint,
    Work,
)
from migsync.core.work import Script as RunScript
from migsync.testing import FakeClock

BackendFactory = Callable[[], Backend]


def migration(version: int, name: str, up: str, down: str = "") -> Migration:
    """A migration with one generic (every-dialect) script per direction."""
    return Migration(version, name, up={ANY_DIALECT: Script(up)}, down={ANY_DIALECT: Script(down)})


#: Three migrations whose effects the suite can see: tables t1, t2, t3.
THREE = [
    migration(1, "0001_one", "CREATE TABLE t1 (x INTEGER)", "DROP TABLE t1"),
    migration(2, "0002_two", "CREATE TABLE t2 (x INTEGER);\nINSERT INTO t2 VALUES (2)", "DROP TABLE t2"),
    migration(3, "0003_three", "CREATE TABLE t3 (x INTEGER)", "DROP TABLE t3"),
]


def require(backend: Backend, *capabilities: str) -> None:
    """Skip the calling test unless ``backend`` declares every capability."""
    missing = sorted(set(capabilities) - set(backend.capabilities))
    if missing:
        pytest.skip(f"backend {backend.name!r} lacks capability {', '.join(missing)}")


async def table_exists(backend: Backend, table: str) -> bool:
    """Whether ``table`` can be read (portable: no catalog query)."""
    try:
        await backend.fetch(f"SELECT COUNT(*) AS n FROM {table}")
    except BackendError:
        return False
    return True


def assert_ours(exc: BaseException) -> None:
    """The error is one of migsync's own classes, never the driver's."""
    assert isinstance(exc, MigsyncError), f"raw driver exception {type(exc).__module__}.{exc!r}"
    assert type(exc).__module__.startswith("migsync."), type(exc)


class _Mine(Exception):
    """An exception only the caller's code raises."""


class BackendSuite:
    """The contract of :class:`migsync.core.backend.Backend`, as tests.

    Subclasses provide the ``backend_url`` fixture (and optionally
    ``plugins`` and ``backend_options``).
    """

    # -- fixtures the subclass may override -------------------------------------------

    @pytest.fixture
    def backend_url(self) -> str:
        raise NotImplementedError("a BackendSuite subclass must define the backend_url fixture")

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins()

    @pytest.fixture
    def backend_options(self) -> dict[str, Any]:
        return {}

    @pytest.fixture
    def make_backend(
        self, plugins: Plugins, backend_url: str, backend_options: dict[str, Any]
    ) -> BackendFactory:
        """A new, unopened backend for ``backend_url`` each call, made through the registry."""
        spec = plugins.backend_for_url(backend_url)

        def make() -> Backend:
            # Through plugins.build, as migsync builds it: a backend that breaks the contract fails here.
            backend: Backend = plugins.build(plugins.backends, spec, backend_url, **backend_options)
            return backend

        return make

    def client(self, backend: Backend, **options: Any) -> Client:
        options.setdefault("clock", FakeClock())
        options.setdefault("retry", RetryPolicy(jitter=0.0))
        return Client(backend, sinks=(), **options)

    # -- declarations, open and close ----------------------------------------------------

    async def test_declares_itself(self, make_backend: BackendFactory, plugins: Plugins) -> None:
        backend = make_backend()
        assert isinstance(backend, Backend)
        # Every member of the protocol, async where it must be: the check migsync makes on load.
        assert contracts.problems("backend", backend) == []
        assert isinstance(backend.name, str) and backend.name
        assert isinstance(backend.dialect, str) and backend.dialect
        assert isinstance(backend.capabilities, frozenset)
        assert all(isinstance(c, str) for c in backend.capabilities)
        assert isinstance(backend.url, str) and backend.url
        assert isinstance(backend.tables, Tables)
        assert plugins.backends.get(backend.name).load() is type(backend)

    async def test_open_close_and_async_with(self, make_backend: BackendFactory) -> None:
        backend = make_backend()
        await backend.open()
        try:
            assert await backend.fetch("SELECT 1 AS one") == [{"one": 1}]
        finally:
            await backend.close()
        async with make_backend() as entered:
            assert isinstance(entered, Backend)
            assert await entered.fetch("SELECT 2 AS two") == [{"two": 2}]
        with pytest.raises(BackendError) as caught:
            await entered.fetch("SELECT 1 AS one")
        assert_ours(caught.value)

    async def test_closed_backend_is_a_backend_error(self, make_backend: BackendFactory) -> None:
        backend = make_backend()  # never opened
        with pytest.raises(BackendError) as caught:
            await backend.fetch("SELECT 1 AS one")
        assert_ours(caught.value)
        with pytest.raises(BackendError):
            async with backend.transaction():
                pass
        with pytest.raises(BackendError):
            await backend.ensure_schema()

    # -- bookkeeping tables --------------------------------------------------------------

    async def test_ensure_schema_creates_tables_idempotently(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            t = backend.tables
            names = (t.migrations, t.status, t.queue, t.meta)
            assert [await table_exists(backend, name) for name in names] == [False] * 4
            await backend.ensure_schema()
            await backend.ensure_schema()
            assert [await table_exists(backend, name) for name in names] == [True] * 4
            rows = await backend.fetch(f"SELECT value FROM {t.meta} WHERE key = $1", ("schema_version",))
            assert rows == [{"value": str(SCHEMA_VERSION)}]
        async with make_backend() as again:  # a second open finds them and keeps them
            await again.ensure_schema()
            assert await again.fetch(f"SELECT COUNT(*) AS n FROM {t.queue}") == [{"n": 0}]

    # -- transactions, placeholders, results ------------------------------------------------

    async def test_transaction_commits(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend, backend.transaction() as tx:
            await tx.execute("CREATE TABLE t (x INTEGER)")
            await tx.execute("INSERT INTO t (x) VALUES ($1)", (7,))
        async with make_backend() as other:  # visible to a new session: committed
            assert await other.fetch("SELECT x FROM t") == [{"x": 7}]

    async def test_transaction_rolls_back_and_reraises(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            async with backend.transaction() as tx:
                await tx.execute("CREATE TABLE t (x INTEGER)")
            mine = _Mine("from the caller")
            with pytest.raises(_Mine) as caught:
                async with backend.transaction() as tx:
                    await tx.execute("INSERT INTO t (x) VALUES ($1)", (1,))
                    raise mine
            assert caught.value is mine
            # The caller's own TimeoutError (an OSError) is not "a lost connection".
            with pytest.raises(TimeoutError, match="the caller's"):
                async with backend.transaction() as tx:
                    await tx.execute("INSERT INTO t (x) VALUES ($1)", (2,))
                    raise TimeoutError("the caller's")
            assert await backend.fetch("SELECT COUNT(*) AS n FROM t") == [{"n": 0}]
            async with backend.transaction() as tx:  # usable after the rollbacks
                await tx.execute("INSERT INTO t (x) VALUES ($1)", (3,))
            assert await backend.fetch("SELECT x FROM t") == [{"x": 3}]

    async def test_transaction_rolls_back_ddl(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            require(backend, TRANSACTIONAL_DDL)
            with pytest.raises(_Mine):
                async with backend.transaction() as tx:
                    await tx.execute("CREATE TABLE gone (x INTEGER)")
                    raise _Mine()
            assert not await table_exists(backend, "gone")

    async def test_placeholders_fetch_and_rowcounts(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            async with backend.transaction() as tx:
                await tx.execute("CREATE TABLE p (x INTEGER, y TEXT)")
                # Numbered, not positional: $2 comes first in the statement.
                assert await tx.execute("INSERT INTO p (y, x) VALUES ($2, $1)", (1, "one")) == 1
                assert (
                    await tx.execute("INSERT INTO p (x, y) VALUES ($1, $2), ($3, $4)", (2, "b", 3, "c")) == 2
                )
                assert await tx.execute("UPDATE p SET y = $1 WHERE x >= $2", ("big", 2)) == 2
                assert await tx.execute("DELETE FROM p WHERE x = $1", (99,)) == 0
                await tx.execute_batch(
                    [("INSERT INTO p (x, y) VALUES ($1, $2)", (4, "d")), ("DELETE FROM p WHERE x = $1", (3,))]
                )
                rows = await tx.fetch("SELECT x, y FROM p WHERE x <> $1 ORDER BY x", (0,))
                assert rows == [{"x": 1, "y": "one"}, {"x": 2, "y": "big"}, {"x": 4, "y": "d"}]
                assert all(type(row) is dict for row in rows)
                assert await tx.fetch("SELECT x FROM p WHERE x = $1", (42,)) == []
                assert await tx.fetchone("SELECT y FROM p WHERE x = $1", (4,)) == {"y": "d"}
                assert await tx.fetchone("SELECT y FROM p WHERE x = $1", (42,)) is None
            assert await backend.fetch("SELECT y FROM p WHERE x = $1", (1,)) == [{"y": "one"}]

    async def test_statement_error_outside_scripts_is_ours(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            with pytest.raises(BackendError) as caught:
                await backend.fetch("SELECT x FROM no_such_table")
            assert_ours(caught.value)
            assert "no_such_table" in str(caught.value)
            with pytest.raises(BackendError) as caught:
                async with backend.transaction() as tx:
                    await tx.execute("INSERT INTO no_such_table VALUES ($1)", (1,))
            assert_ours(caught.value)

    # -- scripts ---------------------------------------------------------------------------

    async def test_run_script_runs_every_statement(self, make_backend: BackendFactory) -> None:
        script = (
            "CREATE TABLE s (x INTEGER, note TEXT);\n"
            "-- a comment; with a semicolon\n"
            "INSERT INTO s VALUES (1, 'a;b');\n"
            "/* a block comment; too */ INSERT INTO s VALUES (2, 'it''s');\n"
            "INSERT INTO s VALUES (3, '--not a comment')"
        )
        async with make_backend() as backend:
            async with backend.transaction() as tx:
                await tx.run_script(script)
            rows = await backend.fetch("SELECT x, note FROM s ORDER BY x")
        assert rows == [
            {"x": 1, "note": "a;b"},
            {"x": 2, "note": "it's"},
            {"x": 3, "note": "--not a comment"},
        ]

    @pytest.mark.parametrize("script", ["", "   \n\n", "-- nothing to do\n", "/* none */ ;\n-- x"])
    async def test_blank_script_is_a_no_op(self, make_backend: BackendFactory, script: str) -> None:
        async with make_backend() as backend:
            async with backend.transaction() as tx:
                await tx.execute("CREATE TABLE t (x INTEGER)")
                await tx.run_script(script)
                await tx.execute("INSERT INTO t VALUES ($1)", (1,))
            async with backend.autocommit() as session:
                await session.run_script(script)
            assert await backend.fetch("SELECT x FROM t") == [{"x": 1}]

    async def test_failing_statement_names_index_and_line(self, make_backend: BackendFactory) -> None:
        script = (
            "CREATE TABLE f (x INTEGER);\n"
            "-- the next one is fine\n"
            "INSERT INTO f VALUES (1);\n"
            "\n"
            "INSERT INTO no_such_table VALUES (1);\n"
            "INSERT INTO f VALUES (2);"
        )
        async with make_backend() as backend:
            with pytest.raises(StatementError) as caught:
                async with backend.transaction() as tx:
                    await tx.run_script(script)
            error = caught.value
            assert_ours(error)
            assert (error.index, error.line) == (2, 5)
            assert "no_such_table" in error.driver_message
            assert "statement 3 (line 5 of the script)" in str(error)
            if TRANSACTIONAL_DDL in backend.capabilities:
                assert not await table_exists(backend, "f")

    async def test_failing_first_statement_on_a_shared_line(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            with pytest.raises(StatementError) as caught:
                async with backend.transaction() as tx:
                    await tx.run_script("CREATE TABLE g (x INTEGER);\nINSERT INTO nope VALUES (1); SELECT 1")
            assert (caught.value.index, caught.value.line) == (1, 2)

    # -- units of work ---------------------------------------------------------------------

    async def test_run_drives_a_program(self, make_backend: BackendFactory) -> None:
        def program() -> Work[tuple[int, list[dict[str, Any]]]]:
            yield Begin()
            yield Execute("CREATE TABLE w (x INTEGER)")
            count: int = yield Execute("INSERT INTO w VALUES ($1), ($2)", (1, 2))
            yield RunScript("INSERT INTO w VALUES (3);\nINSERT INTO w VALUES (4)")
            rows: list[dict[str, Any]] = yield Fetch("SELECT SUM(x) AS s FROM w WHERE x > $1", (0,))
            yield Commit()
            return count, rows

        async with make_backend() as backend:
            count, rows = await backend.run(program())
            assert count == 2 and rows == [{"s": 10}]
            assert await backend.fetch("SELECT COUNT(*) AS n FROM w") == [{"n": 4}]

    async def test_run_checks_an_expected_row_count(self, make_backend: BackendFactory) -> None:
        """``Execute(expect=n)`` is the processor's claim: another count raises ClaimLost, at
        the request or (for a backend that keeps a migration's requests back) at the commit."""

        def program(expect: int) -> Work[str]:
            yield Begin(schema_change=True)
            try:
                yield RunScript("INSERT INTO e VALUES (2)")
                yield Execute("UPDATE e SET x = x + 10 WHERE x = $1", (1,), expect=expect)
                yield Flush()
                yield Commit()
            except ClaimLost:
                yield Rollback()
                return "lost"
            return "kept"

        async with make_backend() as backend:
            async with backend.transaction() as tx:
                await tx.execute("CREATE TABLE e (x INTEGER)")
                await tx.execute("INSERT INTO e VALUES (1)")
            assert await backend.run(program(2)) == "lost"
            assert await backend.fetch("SELECT x FROM e ORDER BY x") == [{"x": 1}]  # all rolled back
            assert await backend.run(program(1)) == "kept"
            assert await backend.fetch("SELECT x FROM e ORDER BY x") == [{"x": 2}, {"x": 11}]

    async def test_run_awaits_on_the_event_loop_between_transactions(
        self, make_backend: BackendFactory
    ) -> None:
        loop = asyncio.get_running_loop()
        seen: list[object] = []

        async def remote(value: int) -> int:
            seen.append(asyncio.get_running_loop())
            await asyncio.sleep(0)
            return value * 2

        async def broken() -> int:
            raise ValueError("the server said no")

        def program() -> Work[tuple[int, str]]:
            yield Begin()
            yield Execute("CREATE TABLE aw (x INTEGER)")
            yield Commit()
            doubled: int = yield Await(lambda: remote(21))
            try:
                yield Await(broken)
            except ValueError as exc:
                error = str(exc)
            yield Begin()
            yield Execute("INSERT INTO aw VALUES ($1)", (doubled,))
            yield Commit()
            return doubled, error

        async with make_backend() as backend:
            assert await backend.run(program()) == (42, "the server said no")
            assert await backend.fetch("SELECT x FROM aw") == [{"x": 42}]
        assert seen == [loop]  # on the caller's loop, whatever thread drives the program

    async def test_run_with_savepoints_and_a_caught_script_failure(
        self, make_backend: BackendFactory
    ) -> None:
        def program() -> Work[tuple[StatementError | None, list[dict[str, Any]]]]:
            yield Begin()
            yield Execute("CREATE TABLE w (x INTEGER)")
            yield Execute("INSERT INTO w VALUES ($1)", (1,))
            yield Savepoint("undone")
            yield Execute("INSERT INTO w VALUES ($1)", (100,))
            yield RollbackTo("undone")
            caught: StatementError | None = None
            yield Savepoint("failing")
            try:
                yield RunScript("INSERT INTO w VALUES (200);\nINSERT INTO nope VALUES (1)")
            except StatementError as exc:
                caught = exc
                yield RollbackTo("failing")
            yield Savepoint("kept")
            yield Execute("INSERT INTO w VALUES ($1)", (2,))
            yield Release("kept")
            rows: list[dict[str, Any]] = yield Fetch("SELECT x FROM w ORDER BY x")
            yield Commit()
            return caught, rows

        async with make_backend() as backend:
            require(backend, SAVEPOINTS)
            caught, rows = await backend.run(program())
            assert isinstance(caught, StatementError)
            assert (caught.index, caught.line) == (1, 2)
            assert rows == [{"x": 1}, {"x": 2}]
            assert await backend.fetch("SELECT x FROM w ORDER BY x") == rows

    async def test_run_rolls_back_a_program_left_open(self, make_backend: BackendFactory) -> None:
        def left_open() -> Work[str]:
            yield Begin()
            yield Execute("INSERT INTO t VALUES ($1)", (1,))
            return "done"

        def failing() -> Work[None]:
            yield Begin()
            yield Execute("INSERT INTO t VALUES ($1)", (2,))
            raise _Mine("half-way")

        def caught_failure() -> Work[str]:
            yield Begin()
            yield Execute("INSERT INTO t VALUES ($1)", (3,))
            try:
                yield RunScript("INSERT INTO nope VALUES (1)")
            except StatementError as exc:
                return str(exc)
            return "no error"

        async with make_backend() as backend:
            async with backend.transaction() as tx:
                await tx.execute("CREATE TABLE t (x INTEGER)")
            assert await backend.run(left_open()) == "done"
            with pytest.raises(_Mine, match="half-way"):
                await backend.run(failing())
            assert "nope" in await backend.run(caught_failure())
            assert await backend.fetch("SELECT COUNT(*) AS n FROM t") == [{"n": 0}]
            async with backend.transaction() as tx:  # nothing was left holding a lock
                await tx.execute("INSERT INTO t VALUES ($1)", (4,))
            assert await backend.fetch("SELECT x FROM t") == [{"x": 4}]

    # -- the processor lock ------------------------------------------------------------------

    async def test_processor_lock_is_exclusive_within_an_instance(self, make_backend: BackendFactory) -> None:
        async with make_backend() as backend:
            async with backend.processor_lock("suite", 5):
                started = time.monotonic()
                with pytest.raises(LockTimeout) as caught:
                    async with backend.processor_lock("suite", 0.2):
                        pass
                assert 0.15 <= time.monotonic() - started < 4
                assert_ours(caught.value)
                async with backend.processor_lock("another", 0.2):  # names are independent
                    pass
            async with backend.processor_lock("suite", 0.2):  # released after the block
                pass

    async def test_processor_lock_is_exclusive_between_instances(self, make_backend: BackendFactory) -> None:
        async with make_backend() as first, make_backend() as second:
            require(first, PROCESS_WIDE_LOCK)
            async with first.processor_lock("suite", 5):
                started = time.monotonic()
                with pytest.raises(LockTimeout) as caught:
                    async with second.processor_lock("suite", 0.3):
                        pass
                assert 0.25 <= time.monotonic() - started < 4
                assert_ours(caught.value)
            async with second.processor_lock("suite", 1):
                pass
            with pytest.raises(_Mine):
                async with second.processor_lock("suite", 1):
                    raise _Mine()
            async with first.processor_lock("suite", 1):  # released on an exception too
                pass

    # -- end to end through Client ---------------------------------------------------------

    async def test_failed_migration_leaves_no_trace(self, make_backend: BackendFactory) -> None:
        half = migration(
            1,
            "0001_half",
            "CREATE TABLE half (x INTEGER);\nINSERT INTO nowhere VALUES (1)",
            "DROP TABLE half",
        )
        async with self.client(make_backend()) as client:
            require(client.backend, TRANSACTIONAL_DDL)
            result = await client.apply([half])
            assert result.failure is not None and not result.ok
            assert "0001_half" in (result.failure.error or "")
            assert "statement 2 (line 2 of the script)" in (result.failure.error or "")
            assert not await table_exists(client.backend, "half")
            [state] = await client.status()
            assert (state.state, state.attempts, state.queued) == ("failed", 1, "apply")

    async def test_apply_and_revert_through_client(self, make_backend: BackendFactory) -> None:
        async with self.client(make_backend()) as client:
            result = await client.apply(THREE)
            assert result.ok and [o.label for o in result.processed] == [
                "apply 0001_one",
                "apply 0002_two",
                "apply 0003_three",
            ]
            assert [s.state for s in await client.status()] == ["applied"] * 3
            assert await client.backend.fetch("SELECT x FROM t2") == [{"x": 2}]
            reverting = await client.ledger.revert(everything=True)
            assert reverting.reverting == ["0003_three", "0002_two", "0001_one"]
            assert [s.queued for s in await client.status()] == ["revert"] * 3
            result = await client.process()
            assert result.ok and [o.label for o in result.processed] == [
                "revert 0003_three",
                "revert 0002_two",
                "revert 0001_one",
            ]
            states = await client.status()
            assert [(s.name, s.state, s.queued) for s in states] == [(m.name, "pending", None) for m in THREE]
            for table in ("t1", "t2", "t3"):
                assert not await table_exists(client.backend, table)

    async def test_two_clients_apply_each_migration_once(self, make_backend: BackendFactory) -> None:
        migrations = [
            migration(1, "0001_log", "CREATE TABLE applied_log (name TEXT)"),
            *(
                migration(v, f"000{v}_step", f"INSERT INTO applied_log (name) VALUES ('000{v}_step')")
                for v in (2, 3, 4, 5)
            ),
        ]
        probe = make_backend()
        require(probe, MULTI_PROCESS)
        async with self.client(make_backend()) as one, self.client(make_backend()) as two:
            results = await asyncio.gather(one.apply(migrations), two.apply(migrations))
            assert all(r.ok for r in results)
            done = sorted(o.label for r in results for o in r.processed if o.ok)
            assert done == sorted(f"apply {m.name}" for m in migrations)  # each once, by one of them
            rows = await one.backend.fetch("SELECT name FROM applied_log ORDER BY name")
            assert rows == [{"name": f"000{v}_step"} for v in (2, 3, 4, 5)]
            assert [s.state for s in await two.status()] == ["applied"] * 5


__all__ = ["THREE", "BackendFactory", "BackendSuite", "assert_ours", "migration", "require", "table_exists"]
