"""Plugins' SQL functions and collations on SQLite: the specs, the registry, the backend, the errors.

``tests/test_plugins.py`` has the hook's own test (``test_hook_...``) and the
runs of the real ``migsync`` command with an installed plugin that registers
functions; this module covers the rest through ``Client`` and the backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from migsync import (
    BackendError,
    BackendSpec,
    BaseBackend,
    Client,
    ConfigError,
    PluginError,
    SQLiteCollationSpec,
    SQLiteFunctionSpec,
    StatementError,
    hookimpl,
    load_directory,
    make_plugins,
)
from migsync.backends.sqlite import SQLiteBackend
from migsync.core.plugins import Plugins
from migsync.core.processor import PassResult

VERSION = sqlite3.sqlite_version

SQLiteSpec = SQLiteFunctionSpec | SQLiteCollationSpec


def normalize(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"normalize() takes text, not {type(text).__name__}")
    return " ".join(text.split()).casefold()


def unicase(a: str, b: str) -> int:
    a, b = a.casefold(), b.casefold()
    return (a > b) - (a < b)


def functions_plugin(name: str, *specs: SQLiteSpec) -> SimpleNamespace:
    @hookimpl
    def migsync_register_sqlite_functions(register: Callable[[SQLiteSpec], None]) -> None:
        for spec in specs:
            register(spec)

    return SimpleNamespace(__name__=name, migsync_register_sqlite_functions=migsync_register_sqlite_functions)


TEXT = functions_plugin(
    "text",
    SQLiteFunctionSpec("normalize", 1, normalize, deterministic=True),
    SQLiteCollationSpec("unicase", unicase),
)


def text_plugins(*more: SimpleNamespace) -> Plugins:
    return make_plugins(autoload=False, extra=[TEXT, *more])


async def apply(tmp_path: Path, plugins: Plugins, files: dict[str, str]) -> PassResult:
    directory = tmp_path / "migrations"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    async with Client.connect(f"sqlite:///{tmp_path / 'client.db'}", plugins=plugins, sinks=[]) as client:
        return await client.apply(load_directory(directory))


def up(*statements: str, options: str = "") -> str:
    return f"-- migrate:up {options}\n" + "\n".join(statements) + "\n"


PEOPLE = up(
    "CREATE TABLE people (name TEXT COLLATE unicase, key TEXT GENERATED ALWAYS AS (normalize(name)));",
    "CREATE UNIQUE INDEX people_key ON people (normalize(name));",
    "INSERT INTO people (name) VALUES ('  Ada   LOVELACE '), ('bob'), ('Carol');",
)


# -- the backend installs them --------------------------------------------------------------------


async def test_migrations_and_later_writes_use_the_functions_and_collations(tmp_path: Path) -> None:
    plugins = text_plugins()
    result = await apply(tmp_path, plugins, {"0001_people.sql": PEOPLE})
    assert result.ok, result.failure
    database = tmp_path / "client.db"
    async with Client.connect(f"sqlite:///{database}", plugins=plugins, sinks=[]) as client:
        rows = await client.backend.fetch("SELECT name, key FROM people ORDER BY name")
        assert [row["key"] for row in rows] == ["ada lovelace", "bob", "carol"]
        assert [row["name"] for row in rows] == ["  Ada   LOVELACE ", "bob", "Carol"]  # unicase order
        async with client.backend.transaction() as tx:
            await tx.execute("INSERT INTO people (name) VALUES ($1)", ("dave",))
        with pytest.raises(BackendError, match="UNIQUE constraint failed"):
            async with client.backend.transaction() as tx:
                await tx.execute("INSERT INTO people (name) VALUES ($1)", ("ADA lovelace",))
    # What the schema now calls, every connection to the database needs: the application's too.
    with sqlite3.connect(database) as plain, pytest.raises(sqlite3.OperationalError, match="normalize"):
        plain.execute("INSERT INTO people (name) VALUES ('eve')")


async def test_a_function_named_as_module_and_attribute_is_imported_when_the_database_opens(
    tmp_path: Path,
) -> None:
    plugins = make_plugins(
        autoload=False,
        extra=[functions_plugin("nfc", SQLiteFunctionSpec("unicode_normalize", 2, "unicodedata:normalize"))],
    )
    assert plugins.sqlite_functions.get("unicode_normalize").function == "unicodedata:normalize"
    files = {"0001_t.sql": up("CREATE TABLE t AS SELECT unicode_normalize('NFC', 'e' || char(769)) AS x;")}
    assert (await apply(tmp_path, plugins, files)).ok
    with sqlite3.connect(tmp_path / "client.db") as db:
        assert db.execute("SELECT x FROM t").fetchone() == ("\u00e9",)


async def test_a_function_that_does_not_import_is_a_plugin_error_at_open(tmp_path: Path) -> None:
    plugins = make_plugins(
        autoload=False,
        extra=[functions_plugin("ghost", SQLiteFunctionSpec("ghost", 0, "migsync_no_such:fn"))],
    )
    client = Client.connect(f"sqlite:///{tmp_path / 'client.db'}", plugins=plugins, sinks=[])
    with pytest.raises(PluginError, match=r"^sqlite function 'ghost': cannot import 'migsync_no_such:fn'"):
        async with client:
            pass


async def test_a_sqlite_backend_that_cannot_install_them_is_refused_at_connect(tmp_path: Path) -> None:
    class BareSQLite(BaseBackend):
        """A whole backend as far as the contract goes (it is refused before it would be used)."""

        name: ClassVar[str] = "bare"
        dialect: ClassVar[str] = "sqlite"

        def __init__(self, url: str, **options: Any):
            super().__init__(url)

        async def open(self) -> None:
            raise AssertionError("a refused backend is never opened")

        async def close(self) -> None:
            raise AssertionError("a refused backend is never opened")

        def transaction(self) -> Any:
            raise AssertionError("a refused backend is never used")

        def autocommit(self) -> Any:
            raise AssertionError("a refused backend is never used")

        def processor_lock(self, name: str, timeout: float) -> Any:
            raise AssertionError("a refused backend is never used")

    bare = BackendSpec("bare", ("bare",), BareSQLite)

    @hookimpl
    def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
        register(bare)

    backend = SimpleNamespace(__name__="bare-backend", migsync_register_backends=migsync_register_backends)
    with pytest.raises(ConfigError) as raised:
        Client.connect("bare:///x.db", plugins=text_plugins(backend))
    assert str(raised.value).startswith(
        "plugins registered SQLite functions or collations (normalize, unicase), but backend 'bare' "
        "cannot install them: it has no 'sqlite_functions' attribute"
    )
    # With none registered there is nothing to install, and nothing to refuse.
    plain = make_plugins(autoload=False, extra=[backend])
    assert type(Client.connect("bare:///x.db", plugins=plain).backend) is BareSQLite


def test_postgres_is_not_given_them() -> None:
    client = Client.connect("postgresql://postgres@127.0.0.1:1/none", plugins=text_plugins())
    assert not hasattr(client.backend, "sqlite_functions")


async def test_a_backend_built_by_hand_takes_them_as_an_attribute(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}")
    backend.sqlite_functions = (SQLiteFunctionSpec("twice", 1, lambda x: 2 * x),)
    async with backend:
        assert await backend.fetch("SELECT twice(21) AS x") == [{"x": 42}]


# -- failures say which function, and what it raised ---------------------------------------------


async def test_a_function_that_raises_fails_the_migration_naming_it_and_its_exception(tmp_path: Path) -> None:
    files = {
        "0001_people.sql": PEOPLE,
        "0002_bad.sql": up("UPDATE people SET name = normalize(length(name));"),
    }
    result = await apply(tmp_path, text_plugins(), files)
    assert result.failure is not None and result.failure.label == "apply 0002_bad"
    assert result.failure.error == (
        f"migration 0002_bad, statement 1 ({tmp_path / 'migrations' / '0002_bad.sql'}:2): OperationalError: "
        "user-defined function normalize() raised ValueError: normalize() takes text, not int "
        "[in: UPDATE people SET name = normalize(length(name))]"
    )


async def test_the_functions_exception_is_the_cause_of_the_error(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}")
    backend.sqlite_functions = (SQLiteFunctionSpec("normalize", 1, normalize),)
    async with backend:
        with pytest.raises(StatementError) as raised:
            async with backend.transaction() as tx:
                await tx.run_script("SELECT 1;\nSELECT normalize(x'00');")
        assert raised.value.index == 1
        driver = raised.value.__cause__
        assert isinstance(driver, sqlite3.OperationalError)
        assert isinstance(driver.__cause__, ValueError)
        assert str(driver.__cause__) == "normalize() takes text, not bytes"
        # Outside a migration script too: a query, a write the application makes.
        with pytest.raises(BackendError, match=r"user-defined function normalize\(\) raised ValueError"):
            await backend.fetch("SELECT normalize(NULL)")
        # And a later, unrelated error is told as the driver tells it.
        with pytest.raises(BackendError, match=r": no such table: nowhere$"):
            await backend.fetch("SELECT * FROM nowhere")


@pytest.mark.parametrize(
    ("result", "says"),
    [
        ([1], "TypeError: it returned a list; SQL functions return None, int, float, str or bytes"),
        (
            2**64,
            "OverflowError: it returned 18446744073709551616, which does not fit SQLite's 64-bit integer",
        ),
    ],
    ids=["list", "too-big"],
)
async def test_a_result_sqlite_cannot_store_is_named(tmp_path: Path, result: object, says: str) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}")
    backend.sqlite_functions = (SQLiteFunctionSpec("odd", 0, lambda: result),)
    async with backend:
        with pytest.raises(BackendError) as raised:
            await backend.fetch("SELECT odd()")
    assert str(raised.value).endswith(f"user-defined function odd() raised {says}")


async def test_a_collation_that_raises_fails_its_statement_and_undoes_it(tmp_path: Path) -> None:
    def fragile(a: str, b: str) -> int:
        if "boom" in (a, b):
            raise KeyError("boom")
        return unicase(a, b)

    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}")
    backend.sqlite_functions = (SQLiteCollationSpec("fragile", fragile),)
    async with backend:
        async with backend.autocommit() as conn:
            await conn.run_script("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('a'), ('boom'), ('B');")
            # SQLite has no way for a collation to fail; run outside a transaction, the index
            # would be committed, built on comparisons that did not happen.
            with pytest.raises(StatementError) as raised:
                await conn.run_script("CREATE INDEX t_x ON t (x COLLATE fragile);", each_commits=True)
        assert raised.value.driver_message == (
            "OperationalError: user-defined collation fragile raised KeyError: 'boom'"
        )
        assert await backend.fetch("SELECT name FROM sqlite_master WHERE type = 'index'") == []
        rows = await backend.fetch("SELECT x FROM t WHERE x <> 'boom' ORDER BY x COLLATE fragile")
        assert [row["x"] for row in rows] == ["a", "B"]


async def test_a_collation_that_raises_in_a_migration_fails_it_and_the_next_pass_goes_on(
    tmp_path: Path,
) -> None:
    broken = True

    def fragile(a: str, b: str) -> int:
        if broken and "boom" in (a, b):
            raise KeyError("boom")
        return unicase(a, b)

    plugins = make_plugins(
        autoload=False, extra=[functions_plugin("f", SQLiteCollationSpec("fragile", fragile))]
    )
    files = {
        "0001_t.sql": up("CREATE TABLE t (x TEXT);", "INSERT INTO t VALUES ('a'), ('boom'), ('B');"),
        # An INSERT that SQLite interrupts inside a transaction ends the transaction too.
        "0002_copy.sql": up(
            "CREATE TABLE u (x TEXT);", "INSERT INTO u SELECT x FROM t ORDER BY x COLLATE fragile;"
        ),
    }
    result = await apply(tmp_path, plugins, files)
    assert result.failure is not None and result.failure.label == "apply 0002_copy"
    assert "OperationalError: user-defined collation fragile raised KeyError: 'boom'" in str(
        result.failure.error
    )
    with sqlite3.connect(tmp_path / "client.db") as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchall() == []
    broken = False  # the plugin's next release
    async with Client.connect(f"sqlite:///{tmp_path / 'client.db'}", plugins=plugins, sinks=[]) as client:
        again = await client.process(ignore_backoff=True)
        assert again.ok, again.failure
        rows = await client.backend.fetch("SELECT x FROM u")
    assert [row["x"] for row in rows] == ["a", "B", "boom"]


@pytest.mark.parametrize(
    "function",
    [
        "no_such_function",
        pytest.param(
            "unhex",
            marks=pytest.mark.skipif(
                sqlite3.sqlite_version_info >= (3, 41), reason="unhex is in SQLite 3.41"
            ),
        ),
    ],
)
async def test_no_such_function_names_the_sqlite_version_and_the_registered_functions(
    tmp_path: Path, function: str
) -> None:
    files = {"0001_f.sql": up(f"SELECT {function}('00');")}
    result = await apply(tmp_path, text_plugins(), files)
    assert result.failure is not None and result.failure.error is not None
    said = f"no such function: {function} (SQLite {VERSION}; functions from plugins: normalize)"
    assert f"OperationalError: {said}" in result.failure.error


async def test_no_such_function_or_collation_without_plugins(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}")
    async with backend:
        with pytest.raises(
            BackendError, match=rf"no such function: normalize \(SQLite {VERSION}; no functions"
        ):
            await backend.fetch("SELECT normalize('x')")
        with pytest.raises(
            BackendError,
            match=rf"no such collation sequence: unicase \(SQLite {VERSION}; no collations from plugins\)$",
        ):
            await backend.fetch("SELECT 'a' < 'b' COLLATE unicase")


# -- the registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (
            SQLiteFunctionSpec("normalize", 1, normalize),
            SQLiteFunctionSpec("Normalize", 2, normalize),
            "sqlite function 'normalize' is registered twice: by plugin 'text' and by plugin 'other'",
        ),
        (
            SQLiteCollationSpec("unicase", unicase),
            SQLiteCollationSpec("UNICASE", unicase),
            "sqlite collation 'unicase' is registered twice: by plugin 'text' and by plugin 'other'",
        ),
    ],
    ids=["function", "collation"],
)
def test_a_name_registered_by_two_plugins_is_an_error_naming_both(
    first: SQLiteSpec, second: SQLiteSpec, message: str
) -> None:
    plugins = make_plugins(
        autoload=False, extra=[functions_plugin("text", first), functions_plugin("other", second)]
    )
    with pytest.raises(PluginError) as raised:
        plugins.sqlite_specs()
    assert str(raised.value) == message


def test_a_function_and_a_collation_may_share_a_name() -> None:
    plugins = make_plugins(
        autoload=False,
        extra=[
            functions_plugin("a", SQLiteFunctionSpec("unicase", 2, unicase)),
            functions_plugin("b", SQLiteCollationSpec("unicase", unicase)),
        ],
    )
    assert [spec.name for spec in plugins.sqlite_specs()] == ["unicase", "unicase"]
    described = {info.name: info.registers for info in plugins.describe()}
    assert described["a"] == ("sqlite function:unicase",)
    assert described["b"] == ("sqlite collation:unicase",)


def test_the_wrong_spec_type_names_the_plugin() -> None:
    confused = functions_plugin("confused", BackendSpec("x", ("x",), SQLiteBackend))  # type: ignore[arg-type]
    with pytest.raises(
        PluginError,
        match=r"^plugin 'confused': migsync_register_sqlite_functions registered BackendSpec\(.*\); "
        r"expected a SQLiteFunctionSpec or a SQLiteCollationSpec$",
    ):
        make_plugins(autoload=False, extra=[confused]).sqlite_functions  # noqa: B018


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: SQLiteFunctionSpec("2fast", 1, normalize), r"'2fast' is not a SQL name"),
        (lambda: SQLiteFunctionSpec("no-dash", 1, normalize), r"'no-dash' is not a SQL name"),
        (lambda: SQLiteCollationSpec("", unicase), r"'' is not a SQL name"),
        (lambda: SQLiteFunctionSpec("f", -2, normalize), r"narg must be -1 .* or 0 to 127, got -2"),
        (lambda: SQLiteFunctionSpec("f", 128, normalize), r"got 128"),
        (lambda: SQLiteFunctionSpec("f", True, normalize), r"got True"),
        (lambda: SQLiteFunctionSpec("f", 1, 42), r"function must be callable or 'module:attribute', got 42"),
        (lambda: SQLiteFunctionSpec("f", 1, normalize, deterministic="yes"), r"'deterministic' must be"),
    ],
)
def test_specs_check_their_fields(make: Callable[[], object], error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        make()


def test_names_are_lower_cased_as_sqlite_compares_them() -> None:
    assert SQLiteFunctionSpec("Normalize", -1, normalize).name == "normalize"
    assert SQLiteCollationSpec("UniCase", unicase).name == "unicase"


# -- the version ----------------------------------------------------------------------------------


async def test_client_tells_the_sqlite_version(tmp_path: Path) -> None:
    async with Client.connect(f"sqlite:///{tmp_path / 'x.db'}", sinks=[]) as client:
        assert await client.sqlite_version() == VERSION
