"""The plugin system: a real third-party package installed with pip, and the hooks one by one.

The subprocess tests install ``tests/plugin_pkg/example`` (and a broken
plugin, ``tests/plugin_pkg/broken``) into a temporary folder and run the real
``migsync`` command with that folder on ``PYTHONPATH``, so discovery goes
through installed entry points exactly as it does for users.

Every hook in :mod:`migsync.core.hookspecs` has a ``test_hook_<name>`` here
that drives it through a plugin registered with ``make_plugins(extra=[...])``;
``test_every_hook_has_a_test`` keeps it that way.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from forkserver import run_forked

import migsync
from migsync import (
    BackendSpec,
    BaseEventSink,
    ChangeApplierSpec,
    Client,
    ConfigError,
    Event,
    EventSinkSpec,
    PluginError,
    SourceError,
    SourceFormatSpec,
    SQLiteCollationSpec,
    SQLiteFunctionSpec,
    TransportSpec,
    hookimpl,
    load_directory,
    make_plugins,
)
from migsync.backends.sqlite import SQLiteBackend
from migsync.core import hookspecs
from migsync.core.formats import FileName, Section, SourceFormat
from migsync.core.sources import plugin_formats
from migsync.transports.memory import MemoryTransport

HERE = Path(__file__).resolve().parent
PLUGIN_PKG = HERE / "plugin_pkg"
MIGSYNC = str(Path(sys.executable).with_name("migsync"))
EXAMPLE_ORIGIN = "entry point (migsync-example-plugin 1.2.3)"
BROKEN_ORIGIN = "entry point (migsync-broken-plugin 0.0.1)"
BROKEN_ERROR = "RuntimeError: migsync_broken_plugin is broken on purpose"
BROKEN_LABEL = "migsync_broken_plugin, from migsync-broken-plugin 0.0.1"
EXAMPLE_REGISTERS = [
    "backend:example-sqlite",
    "event sink:example-file",
    "sqlite function:normalize",
    "sqlite collation:unicase",
]
EXAMPLE_DESCRIPTIONS = {
    "backend:example-sqlite": "SQLite as examplesqlite://",
    "event sink:example-file": "append event kinds to path=FILE",
    "sqlite function:normalize": "fold case and blanks",
    "sqlite collation:unicase": "text without case",
}

MIGRATIONS = {
    "0001_create_users.sql": (
        "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n"
        "-- migrate:down\nDROP TABLE users;\n"
    ),
    "0002_add_email.sql": (
        "-- migrate:up\nALTER TABLE users ADD COLUMN email TEXT;\n"
        "-- migrate:down\nALTER TABLE users DROP COLUMN email;\n"
    ),
}


def hook_names() -> list[str]:
    return sorted(
        name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, "migsync_spec")
    )


def plugin(name: str, *hooks: Callable[..., Any]) -> SimpleNamespace:
    """A plugin object named ``name`` whose hook implementations are ``hooks``."""
    namespace = SimpleNamespace(__name__=name)
    for hook in hooks:
        setattr(namespace, hook.__name__, hook)
    return namespace


def write_migrations(directory: Path, files: Mapping[str, str] = MIGRATIONS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- a real installed plugin, through the real command ----------------------------------------


@attrs.frozen
class Installed:
    example: Path
    broken: Path


def pip_install(source: Path, target: Path, scratch: Path) -> None:
    # Build from a copy so that setuptools' build/ and *.egg-info stay out of the repository.
    copy = scratch / source.name
    shutil.copytree(source, copy)
    command = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "--target", str(target), str(copy),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"pip could not install {source} offline (the venv needs setuptools>=70.1 or wheel):\n"
        f"{result.stdout}\n{result.stderr}"
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("plugin_install")
    result = Installed(example=root / "example", broken=root / "broken")
    pip_install(PLUGIN_PKG / "example", result.example, root / "src")
    pip_install(PLUGIN_PKG / "broken", result.broken, root / "src")
    assert (result.example / "migsync_example_plugin.py").is_file()
    assert list(result.example.glob("migsync_example_plugin-1.2.3.dist-info/entry_points.txt"))
    return result


def run(*args: str, path: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``migsync`` command with ``path`` on PYTHONPATH and only the plugin settings in ``env``.

    This checkout comes first on the path, so the command runs this migsync and not the one the
    shared virtualenv's editable install points at (another checkout, when tests run from a worktree).
    """
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("MIGSYNC_") and k not in ("CI", "PYTHONPATH")
    }
    environment["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *(str(p) for p in path)])
    environment.update(env)
    return run_forked(MIGSYNC, args, environment, None, timeout=120)


def plugins_json(**kwargs: Any) -> dict[str, dict[str, Any]]:
    result = run("plugins", "--json", **kwargs)
    assert result.returncode == 0, result.stderr
    return {entry["name"]: entry for entry in json.loads(result.stdout)}


def test_plugins_command_lists_installed_plugin(installed: Installed) -> None:
    result = run("plugins", path=[installed.example])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(f"example  [{EXAMPLE_ORIGIN}]")
    width = max(map(len, EXAMPLE_REGISTERS))
    assert set(lines[start + 1 : start + 5]) == {
        f"    {item:<{width}}  {EXAMPLE_DESCRIPTIONS[item]}" for item in EXAMPLE_REGISTERS
    }
    assert "migsync.backends  [builtin]" in lines
    # Every spec's description is shown, the built-ins' too.
    sqlite_line = lines[lines.index("migsync.backends  [builtin]") + 1]
    assert sqlite_line.split()[:2] == ["backend:sqlite", "SQLite"], sqlite_line
    assert "FAILED" not in result.stdout
    assert lines[-1] == f"SQLite library {sqlite3.sqlite_version} (Python's sqlite3 module)"


def test_plugins_command_json(installed: Installed) -> None:
    entries = plugins_json(path=[installed.example])
    assert entries["example"] == {
        "name": "example",
        "origin": EXAMPLE_ORIGIN,
        "registers": EXAMPLE_REGISTERS,
        "descriptions": EXAMPLE_DESCRIPTIONS,
        "refused": [],
        "error": None,
    }
    assert entries["migsync.backends"] == {
        "name": "migsync.backends",
        "origin": "builtin",
        "registers": ["backend:sqlite", "backend:postgresql"],
        "descriptions": {
            "backend:sqlite": "SQLite files through aiosqlite (WAL, BEGIN IMMEDIATE)",
            "backend:postgresql": "Postgres through asyncpg (advisory locks, bookkeeping in a chosen schema)",
        },
        "refused": [],
        "error": None,
        "sqlite_version": sqlite3.sqlite_version,
    }


def test_apply_uses_third_party_backend_and_sink(installed: Installed, tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "migrations")
    database = tmp_path / "client.db"
    events = tmp_path / "events.txt"
    url = f"examplesqlite:///{database}"
    result = run(
        "apply", "--migrations", str(migrations), "--db", url, "--sink", f"example-file:path={events}",
        path=[installed.example],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "applied 2 migrations" in result.stdout
    assert {"users", "client_migration"} <= table_names(database)
    kinds = events.read_text(encoding="utf-8").splitlines()
    assert kinds.count("migration_applied") == 2, kinds
    assert all(re.fullmatch(r"[a-z_]+", kind) for kind in kinds), kinds

    status = run("status", "--json", "--db", url, path=[installed.example])
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    states = {m["name"]: m["state"] for m in shown["migrations"]}
    assert states == {"0001_create_users": "applied", "0002_add_email": "applied"}
    assert shown["sqlite_version"] == sqlite3.sqlite_version  # a plugin's backend, SQLite all the same


PEOPLE = {
    "0001_people.sql": (
        "-- migrate:up\n"
        "CREATE TABLE people (name TEXT COLLATE unicase);\n"
        "CREATE UNIQUE INDEX people_key ON people (normalize(name));\n"
        "INSERT INTO people VALUES ('  Ada   LOVELACE '), ('bob'), ('Carol');\n"
    ),
}


def test_apply_and_status_with_an_installed_plugins_sql_functions(
    installed: Installed, tmp_path: Path
) -> None:
    migrations = write_migrations(tmp_path / "migrations", PEOPLE)
    database = tmp_path / "client.db"
    url = f"sqlite:///{database}"
    result = run("apply", "--migrations", str(migrations), "--db", url, path=[installed.example])
    assert result.returncode == 0, result.stderr
    assert "applied 1 migration" in result.stdout
    with sqlite3.connect(database) as db:
        db.create_collation("unicase", lambda a, b: (a.lower() > b.lower()) - (a.lower() < b.lower()))
        assert [row[0] for row in db.execute("SELECT name FROM people ORDER BY name")] == [
            "  Ada   LOVELACE ",
            "bob",
            "Carol",
        ]

    # A migration whose function raises fails with the function and its exception named.
    write_migrations(migrations, {"0002_bad.sql": "-- migrate:up\nUPDATE people SET name = normalize(1);\n"})
    failed = run("apply", "--migrations", str(migrations), "--db", url, path=[installed.example])
    assert failed.returncode == 1
    said = " ".join(failed.stderr.split())
    assert (
        "OperationalError: user-defined function normalize() raised ValueError: normalize() takes text, "
        "not int [in: UPDATE people SET name = normalize(1)]"
    ) in said, failed.stderr

    status = run("status", "--db", url, path=[installed.example])
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"database: SQLite {sqlite3.sqlite_version}"
    assert "normalize() raised ValueError" in " ".join(status.stdout.split())

    # Without the plugin the function is missing, and the error says what this SQLite is.
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    without = run("apply", "--migrations", str(migrations), "--db", fresh, path=[])
    assert without.returncode == 1
    assert (
        f"no such collation sequence: unicase (SQLite {sqlite3.sqlite_version}; no collations from plugins)"
    ) in " ".join(without.stderr.split())


@pytest.mark.parametrize(
    "env",
    [{"MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}, {"MIGSYNC_PLUGINS": "other"}],
    ids=["autoload-disabled", "not-allow-listed"],
)
def test_plugin_can_be_switched_off(installed: Installed, tmp_path: Path, env: dict[str, str]) -> None:
    entries = plugins_json(path=[installed.example], **env)
    assert "example" not in entries
    assert "migsync.backends" in entries
    migrations = write_migrations(tmp_path / "migrations")
    result = run(
        "apply", "--migrations", str(migrations), "--db", f"examplesqlite:///{tmp_path / 'client.db'}",
        path=[installed.example], **env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "known schemes: postgres://, postgresql://, sqlite://" in result.stderr
    assert not (tmp_path / "client.db").exists()


def test_allow_list_naming_the_plugin_loads_it(installed: Installed) -> None:
    entries = plugins_json(path=[installed.example, installed.broken], MIGSYNC_PLUGINS="other, example")
    assert entries["example"]["origin"] == EXAMPLE_ORIGIN
    assert "broken" not in entries


def test_broken_plugin_is_reported_and_not_fatal(installed: Installed, tmp_path: Path) -> None:
    path = [installed.example, installed.broken]
    result = run("plugins", path=path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(f"broken  [{BROKEN_ORIGIN}]")
    assert lines[start + 1] == f"    FAILED: {BROKEN_ERROR}"
    assert f"example  [{EXAMPLE_ORIGIN}]" in lines
    # The logged warning: one line, naming the entry point and its distribution.
    [warning] = result.stderr.splitlines()
    assert warning == (
        f"WARNING migsync.plugins: plugin 'broken' ({BROKEN_LABEL}) failed to load: {BROKEN_ERROR}; "
        "skipped (MIGSYNC_STRICT_PLUGINS=1 makes this an error)"
    )

    entries = plugins_json(path=path)
    assert entries["broken"] == {
        "name": "broken",
        "origin": BROKEN_ORIGIN,
        "registers": [],
        "descriptions": {},
        "refused": [],
        "error": BROKEN_ERROR,
    }

    # The working plugin still works next to the broken one.
    migrations = write_migrations(tmp_path / "migrations")
    database = tmp_path / "client.db"
    applied = run("apply", "--migrations", str(migrations), "--db", f"examplesqlite:///{database}", path=path)
    assert applied.returncode == 0, applied.stderr
    assert "users" in table_names(database)


def test_ci_alone_does_not_make_a_third_party_plugin_fatal(installed: Installed, tmp_path: Path) -> None:
    """CI=true is strict about migsync's own plugins only: one broken installed plugin must not
    fail every command of a pipeline."""
    path = [installed.example, installed.broken]
    listing = run("plugins", path=path, CI="true")
    assert listing.returncode == 0, listing.stderr
    assert f"plugin 'broken' ({BROKEN_LABEL}) failed to load" in listing.stderr
    migrations = write_migrations(tmp_path / "migrations")
    database = tmp_path / "client.db"
    applied = run(
        "apply", "--migrations", str(migrations), "--db", f"examplesqlite:///{database}", path=path, CI="true"
    )
    assert applied.returncode == 0, applied.stderr
    assert "users" in table_names(database)


@pytest.mark.parametrize(
    "env",
    [{"MIGSYNC_STRICT_PLUGINS": "1"}, {"MIGSYNC_STRICT_PLUGINS": "1", "CI": "true"}],
    ids=["strict", "ci"],
)
def test_broken_plugin_is_an_error_when_strict(
    installed: Installed, tmp_path: Path, env: dict[str, str]
) -> None:
    path = [installed.example, installed.broken]
    message = f"plugin 'broken' ({BROKEN_LABEL}) failed to load: {BROKEN_ERROR}"
    listing = run("plugins", path=path, **env)
    assert listing.returncode != 0
    assert message in listing.stderr

    migrations = write_migrations(tmp_path / "migrations")
    database = tmp_path / "client.db"
    applied = run(
        "apply", "--migrations", str(migrations), "--db", f"examplesqlite:///{database}", path=path, **env
    )
    assert applied.returncode == 2
    assert applied.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in applied.stderr
    assert not database.exists()


# -- registration rules, in process ------------------------------------------------------------


class RecordingSink(BaseEventSink):
    """Keeps the events it receives; ``tag`` is an option, to show options arrive."""

    name = "recording"
    received: list[tuple[str, Event]] = []

    def __init__(self, options: Mapping[str, str]):
        self.tag = options.get("tag", "")

    async def emit(self, event: Event) -> None:
        RecordingSink.received.append((self.tag, event))


class OtherSQLiteBackend(SQLiteBackend):
    """The built-in SQLite backend under other schemes (``testsqlite://``)."""

    name = "other-sqlite"

    def __init__(self, url: str, **options: Any):
        super().__init__("sqlite:" + url.partition(":")[2], **options)


def backend_plugin(
    name: str, spec: BackendSpec, *, tryfirst: bool = False, trylast: bool = False
) -> SimpleNamespace:
    @hookimpl(tryfirst=tryfirst, trylast=trylast)
    def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
        register(spec)

    return plugin(name, migsync_register_backends)


def test_duplicate_name_is_an_error_naming_both_plugins() -> None:
    @hookimpl
    def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
        register(EventSinkSpec("logging", RecordingSink))

    plugins = make_plugins(extra=[plugin("my-logging", migsync_register_event_sinks)])
    with pytest.raises(PluginError) as raised:
        plugins.event_sinks  # noqa: B018
    assert str(raised.value) == (
        "event sink 'logging' is registered twice: "
        "by plugin 'migsync.plugins.sinks' and by plugin 'my-logging'"
    )


def test_duplicate_name_between_third_parties() -> None:
    spec = BackendSpec("twin", ("twin-a",), OtherSQLiteBackend)
    other = BackendSpec("twin", ("twin-b",), OtherSQLiteBackend)
    plugins = make_plugins(extra=[backend_plugin("first", spec), backend_plugin("second", other)])
    with pytest.raises(
        PluginError, match="backend 'twin' is registered twice: by plugin 'first' and by plugin 'second'"
    ):
        plugins.backends  # noqa: B018


@pytest.mark.parametrize(
    "marker", [{}, {"trylast": True}, {"tryfirst": True}], ids=["plain", "trylast", "tryfirst"]
)
async def test_third_party_wins_a_builtin_scheme(db_url: str, marker: dict[str, bool]) -> None:
    assert make_plugins().backend_for_url(db_url).name == "sqlite"
    spec = BackendSpec("other-sqlite", ("sqlite",), OtherSQLiteBackend)
    plugins = make_plugins(extra=[backend_plugin("mine", spec, **marker)])
    assert plugins.backend_for_url(db_url) is spec
    assert plugins.backends.get("sqlite").name == "sqlite"  # still there by name
    async with Client.connect(db_url, plugins=plugins, sinks=[]) as client:
        assert type(client.backend) is OtherSQLiteBackend


def test_two_third_parties_claiming_one_scheme_is_an_error() -> None:
    first = BackendSpec("duck-a", ("duckdb",), OtherSQLiteBackend)
    second = BackendSpec("duck-b", ("DuckDB",), OtherSQLiteBackend)
    plugins = make_plugins(extra=[backend_plugin("plugin-a", first), backend_plugin("plugin-b", second)])
    with pytest.raises(PluginError) as raised:
        plugins.backend_for_url("duckdb:///x")
    assert str(raised.value) == (
        "URL scheme 'duckdb' is claimed by backend 'duck-a' (plugin 'plugin-a') "
        "and by 'duck-b' (plugin 'plugin-b')"
    )


def test_async_hookimpl_is_rejected_at_load() -> None:
    @hookimpl
    async def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
        register(BackendSpec("never", ("never",), OtherSQLiteBackend))

    assert "migsync_register_backends" not in hookspecs.ASYNC_NOTIFICATION_HOOKS
    with pytest.raises(PluginError) as raised:
        make_plugins(extra=[plugin("async-plugin", migsync_register_backends)])
    assert str(raised.value).startswith(
        "plugin 'async-plugin': hook migsync_register_backends must not be 'async def'"
    )


def test_unknown_hook_is_rejected_at_load() -> None:
    @hookimpl
    def migsync_register_backend(register: Callable[[BackendSpec], None]) -> None:
        raise AssertionError("never called")

    with pytest.raises(
        PluginError, match=r"plugin 'typo' implements unknown hook 'migsync_register_backend'; known hooks: "
    ):
        make_plugins(extra=[plugin("typo", migsync_register_backend)])


def test_hookimpl_with_wrong_arguments_is_a_plugin_error() -> None:
    @hookimpl
    def migsync_register_backends(register: Any, config: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(
        PluginError,
        match=r"(?s)^plugin 'bad-args' cannot be registered: .*{'config'} are declared in the hook",
    ):
        make_plugins(extra=[plugin("bad-args", migsync_register_backends)])


def test_failing_or_wrong_registration_names_the_plugin() -> None:
    @hookimpl
    def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
        register(BackendSpec("half", "sqlite://", OtherSQLiteBackend))

    with pytest.raises(PluginError) as raised:
        make_plugins(extra=[plugin("sloppy", migsync_register_backends)]).backends  # noqa: B018
    assert str(raised.value).startswith("plugin 'sloppy': migsync_register_backends raised ValueError: ")
    assert "'sqlite://' is not a URL scheme" in str(raised.value)

    @hookimpl
    def migsync_register_event_sinks(register: Callable[[Any], None]) -> None:
        register(BackendSpec("wrong-kind", ("wrong",), OtherSQLiteBackend))

    with pytest.raises(PluginError, match=r"plugin 'confused': .* expected a EventSinkSpec"):
        make_plugins(extra=[plugin("confused", migsync_register_event_sinks)]).event_sinks  # noqa: B018


def test_spec_schemes_are_normalised() -> None:
    assert BackendSpec("duck", "DuckDB", OtherSQLiteBackend).schemes == ("duckdb",)
    assert TransportSpec("s3", ["s3", "S3+HTTPS"], "my_pkg:S3").schemes == ("s3", "s3+https")
    with pytest.raises(ValueError, match="needs at least one URL scheme"):
        BackendSpec("none", (), OtherSQLiteBackend)


async def test_unknown_backend_scheme_lists_known_schemes(tmp_path: Path) -> None:
    spec = BackendSpec("other-sqlite", ("testsqlite", "alt-sqlite"), OtherSQLiteBackend)
    plugins = make_plugins(extra=[backend_plugin("mine", spec)])
    url = f"nosuch:///{tmp_path / 'x.db'}"
    with pytest.raises(ConfigError) as raised:
        Client.connect(url, plugins=plugins)
    assert str(raised.value) == (
        f"no backend serves database URL {url!r}; known schemes: alt-sqlite://, postgres://, "
        "postgresql://, sqlite://, testsqlite://"
    )
    with pytest.raises(ConfigError, match=r"known schemes: postgres://, postgresql://, sqlite://$"):
        make_plugins().backend_for_url(str(tmp_path / "no-scheme.db"))


async def test_unknown_sink_lists_valid_ones(db_url: str) -> None:
    @hookimpl
    def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
        register(EventSinkSpec("recording", RecordingSink))

    plugins = make_plugins(extra=[plugin("recorder", migsync_register_event_sinks)])
    with pytest.raises(ConfigError) as raised:
        Client.connect(db_url, plugins=plugins, sinks=["recordnig:tag=x"])
    assert str(raised.value) == "unknown event sink 'recordnig'; valid: bus, jsonl, logging, recording"


@pytest.mark.parametrize(
    ("factory", "cause"),
    [
        ("migsync_no_such_module:Sink", "ModuleNotFoundError: No module named 'migsync_no_such_module'"),
        ("migsync.plugins.sinks:NoSuchSink", "AttributeError: "),
        ("migsync.plugins.sinks", None),
    ],
    ids=["no-module", "no-attribute", "no-colon"],
)
async def test_lazy_factory_that_does_not_import_names_it(
    db_url: str, factory: str, cause: str | None
) -> None:
    @hookimpl
    def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
        register(EventSinkSpec("lazy", factory))

    plugins = make_plugins(extra=[plugin("lazy-plugin", migsync_register_event_sinks)])
    assert plugins.event_sinks.get("lazy").factory == factory  # registering imports nothing
    with pytest.raises(PluginError) as raised:
        Client.connect(db_url, plugins=plugins, sinks=["lazy"])
    if cause is None:
        assert str(raised.value) == (
            f"event sink 'lazy': factory {factory!r} is not of the form 'package.module:attribute'"
        )
    else:
        assert str(raised.value).startswith(f"event sink 'lazy': cannot import {factory!r}: {cause}")


def test_lazy_backend_factory_that_does_not_import_names_it() -> None:
    spec = BackendSpec("ghost", ("ghost",), "migsync.backends.sqlite:GhostBackend")
    plugins = make_plugins(extra=[backend_plugin("ghost-plugin", spec)])
    with pytest.raises(
        PluginError, match=r"^backend 'ghost': cannot import 'migsync.backends.sqlite:GhostBackend'"
    ):
        Client.connect("ghost:///x.db", plugins=plugins)


# -- one test per hook ------------------------------------------------------------------------


async def test_hook_migsync_register_backends(tmp_path: Path) -> None:
    @hookimpl
    def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
        register(BackendSpec("other-sqlite", ("testsqlite",), OtherSQLiteBackend, "SQLite, renamed"))

    plugins = make_plugins(extra=[plugin("other-backend", migsync_register_backends)])
    database = tmp_path / "client.db"
    migrations = load_directory(write_migrations(tmp_path / "migrations"))
    async with Client.connect(f"testsqlite:///{database}", plugins=plugins, sinks=[]) as client:
        assert type(client.backend) is OtherSQLiteBackend
        result = await client.apply(migrations)
        assert result.ok
        assert [s.state for s in await client.status()] == ["applied", "applied"]
    assert "users" in table_names(database)
    described = {info.name: info for info in plugins.describe()}
    assert described["other-backend"].registers == ("backend:other-sqlite",)
    assert described["other-backend"].origin == "registered"


async def test_hook_migsync_register_transports() -> None:
    class PigeonTransport(MemoryTransport):
        """The in-memory transport under other schemes: a whole transport, as the contract asks."""

        def __init__(self, url: str, **options: Any):
            super().__init__("memory://" + url.partition("://")[2], **options)

    @hookimpl
    def migsync_register_transports(register: Callable[[TransportSpec], None]) -> None:
        register(TransportSpec("pigeon", ("pigeon", "pigeons"), PigeonTransport))

    plugins = make_plugins(extra=[plugin("pigeon-plugin", migsync_register_transports)])
    spec = plugins.transport_for_url("PIGEONS://loft/client-7")
    assert spec.name == "pigeon"
    transport = plugins.build(plugins.transports, spec, "pigeon://loft", client_id="c7")
    assert isinstance(transport, PigeonTransport)
    assert transport.where == "memory://loft"
    assert plugins.transports.names() == ["file", "http", "memory", "pigeon"]
    with pytest.raises(
        ConfigError, match=r"no transport serves server URL 'ftp://x'; known schemes: .*pigeons://"
    ):
        plugins.transport_for_url("ftp://x")


async def test_hook_migsync_register_event_sinks(db_url: str, tmp_path: Path) -> None:
    @hookimpl
    def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
        register(EventSinkSpec("recording", RecordingSink, "keeps events"))

    plugins = make_plugins(extra=[plugin("recorder", migsync_register_event_sinks)])
    RecordingSink.received.clear()
    migrations = load_directory(write_migrations(tmp_path / "migrations"))
    async with Client.connect(db_url, plugins=plugins, sinks=["recording:tag=mine"]) as client:
        assert (await client.apply(migrations)).ok
    applied = [event for tag, event in RecordingSink.received if event.kind == "migration_applied"]
    assert [getattr(event, "name", None) for event in applied] == ["0001_create_users", "0002_add_email"]
    assert {tag for tag, _ in RecordingSink.received} == {"mine"}


def test_hook_migsync_register_source_formats(tmp_path: Path) -> None:
    class TicketFormat(SourceFormat):
        """``<version>-<ticket>.psql`` files: up only. A plugin's format joins the group of
        migsync's own formats unless it names one: its files may share their folder."""

        name = "tickets"
        suffixes = (".psql",)
        pattern_help = "<version>-<ticket>.psql"

        def match(self, filename: str) -> FileName | None:
            m = re.fullmatch(r"(\d+)-(\w+)\.psql", filename)
            return FileName(int(m[1]), f"{m[1]}_{m[2]}", "up") if m else None

        def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
            return [Section("up", text, path=path)]

    @hookimpl
    def migsync_register_source_formats(register: Callable[[SourceFormatSpec], None]) -> None:
        register(SourceFormatSpec("tickets", TicketFormat, "ticket files", priority=15))

    plugins = make_plugins(extra=[plugin("ticket-plugin", migsync_register_source_formats)])
    specs = sorted(plugins.source_formats, key=lambda spec: spec.priority)
    assert [spec.name for spec in specs] == [
        "paired",
        "tickets",
        "native",
        "golang-migrate",
        "sqlx",
        "goose",
        "flyway",
        "prisma",
    ]
    directory = write_migrations(
        tmp_path / "migrations",
        {"1-ops42.psql": "CREATE TABLE users (id INTEGER);", **dict(list(MIGRATIONS.items())[1:])},
    )
    migrations = load_directory(directory, plugin_formats(plugins))
    assert [(m.version, m.name) for m in migrations] == [(1, "1_ops42"), (2, "0002_add_email")]
    assert "CREATE TABLE users" in migrations[0].script("up", "sqlite").sql
    # A name the plugin's suffix covers but its pattern does not is an error, as a .sql one is.
    (directory / "2-x.y.psql").write_text("SELECT 1;")
    with pytest.raises(SourceError, match="fits no migration format"):
        load_directory(directory, plugin_formats(plugins))


async def test_hook_migsync_register_change_appliers(tmp_path: Path) -> None:
    from migsync.protocol.wire import EntityChange
    from migsync.server import Store
    from migsync.server.appliers import build_appliers

    seen: list[tuple[str, str, str, str]] = []

    class AuditApplier:
        name = "audit"

        def __init__(self, options: Mapping[str, str]):
            self.tag = options["tag"]

        async def apply(self, change: Any, connection: Any, dialect: str) -> None:
            seen.append((self.tag, change.change_id, change.entity, dialect))

    @hookimpl
    def migsync_register_change_appliers(register: Callable[[ChangeApplierSpec], None]) -> None:
        register(ChangeApplierSpec("audit", AuditApplier, "keeps what it is given"))

    plugins = make_plugins(extra=[plugin("audit-plugin", migsync_register_change_appliers)])
    assert plugins.change_appliers.names() == ["audit", "tables"]
    assert [spec.name for spec in plugins.change_appliers if spec.default] == ["tables"]
    appliers = build_appliers(plugins, ["audit:tag=mine"])
    async with Store.open(f"sqlite:///{tmp_path / 'server.db'}", appliers=appliers) as store:
        client_id, _ = await store.add_client("a")
        change = EntityChange("c1", "todo", "1", "insert", {"title": "x"}, None, 1.0)
        assert (await store.receive_changes(client_id, [change])).accepted == ("c1",)
        assert [c.apply_error for c in await store.inbox()] == [None]
    assert seen == [("mine", "c1", "todo", "sqlite")]
    described = {info.name: info for info in plugins.describe()}
    assert described["audit-plugin"].registers == ("change applier:audit",)
    assert described["migsync.plugins.appliers"].registers == ("change applier:tables",)


async def test_hook_migsync_register_sqlite_functions(tmp_path: Path) -> None:
    def normalize(text: str) -> str:
        return " ".join(text.split()).casefold()

    def unicase(a: str, b: str) -> int:
        return (a.casefold() > b.casefold()) - (a.casefold() < b.casefold())

    @hookimpl
    def migsync_register_sqlite_functions(
        register: Callable[[SQLiteFunctionSpec | SQLiteCollationSpec], None],
    ) -> None:
        register(SQLiteFunctionSpec("normalize", 1, normalize, deterministic=True, description="fold"))
        register(SQLiteCollationSpec("unicase", unicase))

    plugins = make_plugins(extra=[plugin("text-functions", migsync_register_sqlite_functions)])
    assert plugins.sqlite_functions.names() == ["normalize"]
    assert plugins.sqlite_collations.names() == ["unicase"]
    database = tmp_path / "client.db"
    migrations = load_directory(write_migrations(tmp_path / "migrations", PEOPLE))
    async with Client.connect(f"sqlite:///{database}", plugins=plugins, sinks=[]) as client:
        assert (await client.apply(migrations)).ok
        rows = await client.backend.fetch("SELECT normalize(name) AS key FROM people ORDER BY name")
    assert [row["key"] for row in rows] == ["ada lovelace", "bob", "carol"]
    described = {info.name: info for info in plugins.describe()}
    assert described["text-functions"].registers == ("sqlite function:normalize", "sqlite collation:unicase")


# -- meta-tests: the contract stays documented and tested -------------------------------------


@pytest.mark.parametrize("name", hook_names())
def test_hookspec_is_documented_with_an_example(name: str) -> None:
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec)
    assert doc, f"hookspec {name} has no docstring"
    assert "Example::" in doc, f"hookspec {name}'s docstring has no 'Example::' block"
    example = textwrap.dedent(doc.split("Example::", 1)[1])
    tree = ast.parse(example)  # the example is valid Python
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    assert [f.name for f in functions] == [name], f"the example of {name} must implement {name}"
    (function,) = functions
    assert [ast.unparse(d) for d in function.decorator_list] == ["hookimpl"]
    assert [a.arg for a in function.args.args] == list(inspect.signature(spec).parameters)


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_in_plugins_md(name: str) -> None:
    """docs/plugins.md has a section per hook: its signature, its parameters' types, an example."""
    text = (HERE.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    parameters = inspect.signature(getattr(hookspecs, name)).parameters
    heading = f"### {name}({', '.join(parameters)})"
    assert f"\n{heading}\n" in text, f"docs/plugins.md has no section '{heading}'"
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    for parameter in parameters.values():
        # The annotation as written in hookspecs.py (a string, with postponed annotations).
        assert f"`{parameter.name}: {parameter.annotation}`" in section, (name, parameter)
    assert f"def {name}(" in section, f"the section on {name} has no example"


def test_hookspecs_are_found() -> None:
    assert "migsync_register_backends" in hook_names()
    assert len(hook_names()) >= 4


def test_every_hook_has_a_test() -> None:
    module = sys.modules[__name__]
    tests = {
        name.removeprefix("test_hook_"): function
        for name, function in vars(module).items()
        if name.startswith("test_hook_") and inspect.isfunction(function)
    }
    assert set(tests) == set(hook_names())
    for name, function in tests.items():
        source = inspect.getsource(function)
        assert "make_plugins(extra=[" in source, (
            f"test_hook_{name} must register a plugin with make_plugins(extra=[...])"
        )
        assert f"def {name}(" in source, f"test_hook_{name} must implement {name}"


def test_public_api_exports_the_plugin_contract() -> None:
    for name in (
        "hookimpl",
        "make_plugins",
        "BackendSpec",
        "EventSinkSpec",
        "TransportSpec",
        "SourceFormatSpec",
        "ChangeApplierSpec",
        "SQLiteFunctionSpec",
        "SQLiteCollationSpec",
    ):
        assert name in migsync.__all__
    assert migsync.hookimpl is hookspecs.hookimpl


def test_entry_point_prefilter_reads_only_entry_points_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from migsync.core.plugins import _any_entry_point_declared

    site = tmp_path / "site"
    other = site / "other-1.0.dist-info"
    other.mkdir(parents=True)
    (other / "entry_points.txt").write_text("[console_scripts]\nother = other:main\n")
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "missing")])
    assert not _any_entry_point_declared("migsync")

    plugin = site / "plug-2.0.dist-info"
    plugin.mkdir()
    (plugin / "entry_points.txt").write_text("[migsync]\nplug = plug.plugin\n")
    assert _any_entry_point_declared("migsync")

    archive = tmp_path / "bundle.zip"
    archive.write_bytes(b"PK")
    monkeypatch.setattr(sys, "path", [str(archive)])
    assert _any_entry_point_declared("migsync"), "a zip on the path is left to importlib.metadata"
