"""The plugin contract: a package written only from docs/plugins.md works, and one that breaks the
contract is refused when it loads, with one line.

The package is built from the fenced ``python`` blocks of docs/plugins.md that start with a file
name comment (``# logged_http.py``): the event sink of "A plugin package", the backend of "A small
backend" and the transport of "A small transport". It is installed with pip into a folder and
found through its entry points, as a user's would be, and it syncs a client with a real server on
a loopback port through the real ``migsync`` command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from dbtools import run as migsync_run
from forkserver import run_forked
from servers import ServerThread

from migsync import BaseEventSink, EventSinkSpec, PluginError, TransportSpec, hookimpl, make_plugins
from migsync.core import contracts
from migsync.core.backend import BaseBackend
from migsync.core.plugins import STRICT_HINT
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.transports.base import BaseTransport
from migsync.transports.memory import MemoryTransport

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "plugins.md"
MIGSYNC = str(Path(sys.executable).with_name("migsync"))
DIST = "migsync-docs-plugins 0.1.0"
ADMIN = "contract-admin"

USERS = (
    "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n"
    "-- migrate:down\nDROP TABLE users;\n"
)
ORDERS = "-- migrate:up\nCREATE TABLE orders (id INTEGER PRIMARY KEY);\n-- migrate:down\nDROP TABLE orders;\n"


# -- the package, from the docs ----------------------------------------------------------------


def doc_files() -> dict[str, str]:
    """Every ``python`` block of docs/plugins.md whose first line names a file: name -> text."""
    text = DOCS.read_text(encoding="utf-8")
    files = {}
    for block in re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE):
        first = block.split("\n", 1)[0]
        match = re.fullmatch(r"# (\w+\.py)", first)
        if match:
            files[match[1]] = block
    return files


PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
dependencies = ["migsync"]

[project.entry-points.migsync]
{entry_points}

[tool.setuptools]
py-modules = {modules}
"""


def install(files: dict[str, str], entry_points: dict[str, str], target: Path, scratch: Path) -> Path:
    """A distribution of ``files`` (module file name -> source) with ``entry_points``, pip-installed
    into ``target`` (the folder to put on PYTHONPATH)."""
    name = "migsync-docs-plugins"
    source = scratch / f"src-{target.name}"
    source.mkdir(parents=True)
    for filename, text in files.items():
        (source / filename).write_text(text, encoding="utf-8")
    (source / "pyproject.toml").write_text(
        PYPROJECT.format(
            name=name,
            entry_points="\n".join(f'{ep} = "{module}"' for ep, module in entry_points.items()),
            modules=json.dumps([filename.removesuffix(".py") for filename in files]),
        )
    )
    command = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "--target", str(target), str(source),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"pip could not install the docs' plugins:\n{result.stdout}\n{result.stderr}"
    )
    shutil.rmtree(source)
    return target


def without_methods(source: str, *names: str) -> str:
    """``source`` with the methods ``names`` cut out: the transport as the docs used to show it."""
    for name in names:
        source, count = re.subn(
            rf"\n    async def {name}\(.*?\n(?=\n    \S|\n\n\S)", "\n", source, flags=re.DOTALL
        )
        assert count == 1, f"no method {name} in the example"
    return source


ENTRY_POINTS = {"stdout": "migsync_stdout", "plain": "plain_sqlite", "logged": "logged_http"}


@attrs.frozen
class Installed:
    good: Path
    old: Path  # the transport without report_actions and push_changes


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    files = doc_files()
    assert {"migsync_stdout.py", "plain_sqlite.py", "logged_http.py"} <= set(files), sorted(files)
    chosen = {name: files[name] for name in ("migsync_stdout.py", "plain_sqlite.py", "logged_http.py")}
    root = tmp_path_factory.mktemp("docs_plugins")
    good = install(chosen, ENTRY_POINTS, root / "good", root)
    old_transport = without_methods(files["logged_http.py"], "report_actions", "push_changes")
    old = install({"logged_http.py": old_transport}, {"logged": "logged_http"}, root / "old", root)
    return Installed(good, old)


def cli(*args: str, path: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    """``migsync ARGS`` with ``path`` on PYTHONPATH (after this checkout) and only the plugin
    settings of ``env``: no MIGSYNC_* or CI of the test run's own."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("MIGSYNC_") and k not in ("CI", "PYTHONPATH")
    }
    environment["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *(str(p) for p in path)])
    environment.update(env)
    return run_forked(MIGSYNC, args, environment, None, timeout=120)


# -- a client on the docs' plugins, a real server ----------------------------------------------------


class Deployment:
    """A SQLite store with two signed migrations and one client, its API served on loopback."""

    def __init__(self, tmp: Path) -> None:
        from migsync.server.app import create_app

        self.tmp = tmp
        self.store = f"sqlite:///{tmp / 'server.db'}"
        self.key = tmp / "key"
        migrations = tmp / "migrations"
        migrations.mkdir()
        (migrations / "0001_users.sql").write_text(USERS)
        (migrations / "0002_orders.sql").write_text(ORDERS)
        assert migsync_run("keygen", "--out", str(self.key)).returncode == 0
        published = migsync_run(
            "publish", "--migrations", str(migrations), "--store", self.store, "--signing-key", str(self.key)
        )
        assert published.returncode == 0, published.stderr
        added = migsync_run("clients", "add", "shop", "--store", self.store, "--json")
        assert added.returncode == 0, added.stderr
        body = json.loads(added.stdout)
        self.client_id, self.token = str(body["client_id"]), body["token"]
        assert migsync_run("keygen", "--out", str(tmp / "requests")).returncode == 0
        request_key = load_private_key(tmp / "requests")
        self.server = ServerThread(
            lambda: create_app(self.store, admin_token=ADMIN, cache_seconds=0, request_key=request_key)
        )
        self.database = tmp / "shop.db"

    def sync_args(self, scheme: str = "loggedhttp") -> list[str]:
        return [
            "client", "sync", "--db", f"plainsqlite:///{self.database}",
            "--server", f"{scheme}://127.0.0.1:{self.server.port}",
            "--client-id", self.client_id, "--token", self.token,
            "--trust-key", f"{self.key}.pub", "--trust-request-key", str(self.tmp / "requests.pub"),
            "--sink", "stdout:prefix=shop", "--timeout", "5", "--retries", "1",
        ]  # fmt: skip

    def tables(self) -> set[str]:
        with sqlite3.connect(self.database) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    d.server.start()
    try:
        yield d
    finally:
        d.server.stop()


def test_the_docs_examples_are_whole_plugins() -> None:
    """What a plugin author copies from the docs keeps the contract: each class, by the same check
    migsync makes when it loads them."""
    namespace: dict[str, Any] = {}
    files = doc_files()
    for filename, kind, name in (
        ("migsync_stdout.py", "event sink", "StdoutSink"),
        ("plain_sqlite.py", "backend", "PlainSQLiteBackend"),
        ("logged_http.py", "transport", "LoggedHTTP"),
    ):
        exec(compile(files[filename], filename, "exec"), namespace)
        assert contracts.problems(kind, namespace[name]) == [], (filename, name)


def test_plugins_written_from_the_docs_sync_a_client_through_the_cli(
    installed: Installed, deployment: Deployment
) -> None:
    listed = cli("plugins", "--json", path=[installed.good])
    assert listed.returncode == 0, listed.stderr
    entries = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert entries["logged"]["descriptions"] == {
        "transport:logged-http": "HTTP, one line on stderr per exchange"
    }
    assert entries["plain"]["registers"] == ["backend:plain-sqlite"]
    assert entries["stdout"]["descriptions"] == {"event sink:stdout": "print each event: stdout:prefix=TEXT"}
    assert all(
        entry["origin"] == f"entry point ({DIST})" for name, entry in entries.items() if name in ENTRY_POINTS
    )
    assert listed.stderr == ""

    # The docs' backend, transport and sink together: migrations fetched, applied, reported.
    first = cli(*deployment.sync_args(), path=[installed.good])
    assert first.returncode == 0, first.stderr
    assert {"users", "orders"} <= deployment.tables()
    assert first.stdout.count("shop: migration_applied") == 2, first.stdout
    assert "logged-http: fetch: 2 migrations, 0 requests" in first.stderr
    assert "logged-http: report: 2 sent, 2 recorded" in first.stderr

    # Entity changes go through push_changes; an admin's request through report_actions.
    captured = cli(
        "capture", "--db", f"plainsqlite:///{deployment.database}", "--table", "users", path=[installed.good]
    )
    assert captured.returncode == 0, captured.stderr
    with sqlite3.connect(deployment.database) as db:
        db.execute("INSERT INTO users (name) VALUES ('ada')")
    requested = migsync_run(
        "actions", "request", "revert", "2", "--store", deployment.store, "--client", "shop", "--by", "carol"
    )
    assert requested.returncode == 0, requested.stderr
    second = cli(*deployment.sync_args(), path=[installed.good])
    assert second.returncode == 0, second.stderr
    assert "logged-http: push_changes: 1 sent, 1 accepted" in second.stderr, second.stderr
    assert re.search(r"logged-http: report_actions: \d+ sent, \d+ recorded", second.stderr), second.stderr
    assert "Traceback" not in second.stderr
    assert "orders" not in deployment.tables()
    assert "shop: migration_reverted" in second.stdout
    answered = migsync_run("actions", "list", "--store", deployment.store, "--json")
    assert answered.returncode == 0, answered.stderr
    [action] = json.loads(answered.stdout)["actions"]
    assert action["state"] in ("queued", "done"), action


def refusal(kind: str = "transport", name: str = "logged-http") -> str:
    return (
        f"plugin 'logged' (logged_http, from {DIST}): {kind} {name!r} (logged_http:LoggedHTTP) "
        "does not keep the transport contract: missing report_actions(), push_changes()"
    )


def unreachable_sync(tmp_path: Path) -> tuple[str, ...]:
    """``client sync`` through the docs' transport to a port where nothing listens."""
    write_keypair(tmp_path / "key")
    return (
        "client", "sync", "--db", f"sqlite:///{tmp_path / 'c.db'}", "--server", "loggedhttp://127.0.0.1:9/",
        "--client-id", "1", "--token", "t", "--trust-key", str(tmp_path / "key.pub"),
    )  # fmt: skip


def test_a_transport_missing_methods_is_one_warning_and_skipped(installed: Installed, tmp_path: Path) -> None:
    listed = cli("plugins", path=[installed.old])
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines() == [f"WARNING migsync.plugins: {refusal()}; skipped ({STRICT_HINT})"]
    lines = listed.stdout.splitlines()
    start = lines.index(f"logged  [entry point ({DIST})]")
    assert lines[start + 1] == f"    REFUSED: {refusal()}"
    assert "transport:http" in listed.stdout  # the built-ins are all there
    entries = {
        entry["name"]: entry for entry in json.loads(cli("plugins", "--json", path=[installed.old]).stdout)
    }
    assert entries["logged"]["registers"] == [] and entries["logged"]["refused"] == [refusal()]

    # The skipped transport serves nothing; a command that needs none is not disturbed at all.
    sync = cli(*unreachable_sync(tmp_path), path=[installed.old])
    assert sync.returncode == 2
    assert f"WARNING migsync.plugins: {refusal()}" in sync.stderr
    assert "no transport serves server URL 'loggedhttp://127.0.0.1:9/'" in sync.stderr
    assert "Traceback" not in sync.stderr
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_users.sql").write_text(USERS)
    applied = cli(
        "apply",
        "--migrations",
        str(migrations),
        "--db",
        f"sqlite:///{tmp_path / 'a.db'}",
        path=[installed.old],
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stderr == ""


@pytest.mark.parametrize(
    "env", [{"MIGSYNC_STRICT_PLUGINS": "1"}, {"MIGSYNC_STRICT_PLUGINS": "1", "CI": "true"}]
)
def test_a_transport_missing_methods_is_exit_2_when_strict(
    installed: Installed, tmp_path: Path, env: dict[str, str]
) -> None:
    for args in (("plugins",), unreachable_sync(tmp_path)):
        result = cli(*args, path=[installed.old], **env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines() == [f"error: {refusal()}"], args
    assert not (tmp_path / "c.db").exists()


def test_ci_alone_keeps_a_broken_installed_plugin_a_warning(installed: Installed) -> None:
    listed = cli("plugins", path=[installed.old], CI="true")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines() == [f"WARNING migsync.plugins: {refusal()}; skipped ({STRICT_HINT})"]


def test_migsyncs_own_lazy_plugins_are_checked_when_asked_and_never_slow_a_ci_start_up() -> None:
    script = textwrap.dedent("""
        import sys
        from migsync import make_plugins
        plugins = make_plugins(autoload=False)
        assert "migsync.transports.http" not in sys.modules
        plugins.transports
        print("migsync.transports.http" in sys.modules, "migsync.transports.filedrop" in sys.modules)
    """)
    environment = {k: v for k, v in os.environ.items() if k not in ("CI", "MIGSYNC_CHECK_BUILTINS")}
    environment["PYTHONPATH"] = str(HERE.parent)
    for unasked in (environment, {**environment, "CI": "true"}):
        lazy = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=unasked)
        assert (lazy.returncode, lazy.stdout.split()) == (0, ["False", "False"]), lazy.stderr
    asked = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**environment, "MIGSYNC_CHECK_BUILTINS": "1"},
    )
    assert (asked.returncode, asked.stdout.split()) == (0, ["True", "True"]), asked.stderr


# -- the check, in process ------------------------------------------------------------------------


def transport_plugin(name: str, factory: Any) -> SimpleNamespace:
    @hookimpl
    def migsync_register_transports(register: Callable[[TransportSpec], None]) -> None:
        register(TransportSpec("pigeon", ("pigeon",), factory, "carrier pigeons"))

    return SimpleNamespace(__name__=name, migsync_register_transports=migsync_register_transports)


class OldTransport(BaseTransport):
    """What docs/plugins.md used to describe: fetch and report only."""

    where = "pigeon://loft"

    async def fetch(self, etag: str | None = None) -> Any: ...

    async def report(self, reports: Any) -> Any: ...


def test_an_applications_plugin_missing_methods_is_an_error_naming_them() -> None:
    plugins = make_plugins(extra=[transport_plugin("pigeons", OldTransport)])
    with pytest.raises(PluginError) as raised:
        plugins.transports  # noqa: B018
    assert str(raised.value) == (
        "plugin 'pigeons': transport 'pigeon' (test_plugin_contract:OldTransport) does not keep the "
        "transport contract: missing report_actions(), push_changes()"
    )


def test_sync_where_async_is_due_and_async_where_a_context_manager_is_due() -> None:
    class SyncFetch(MemoryTransport):
        def fetch(self, etag: str | None = None) -> Any:  # type: ignore[override]
            return None

    class AsyncTransaction(BaseBackend):
        async def open(self) -> None: ...

        async def close(self) -> None: ...

        async def transaction(self) -> Any: ...  # type: ignore[override]

        async def autocommit(self) -> Any:  # type: ignore[override]
            yield None

        def processor_lock(self, name: str, timeout: float) -> Any: ...

    assert contracts.problems("transport", SyncFetch) == ["fetch() must be 'async def'"]
    found = contracts.problems("backend", AsyncTransaction)
    assert [problem.split(" must ")[0] for problem in found] == ["transaction()", "autocommit()"]
    assert all("async context manager" in problem for problem in found)


def test_a_base_class_stub_is_not_an_implementation() -> None:
    class OnlyOpen(BaseBackend):
        async def open(self) -> None: ...

    class Silent(BaseEventSink):
        pass

    assert contracts.problems("backend", OnlyOpen) == [
        "missing close(), transaction(), autocommit(), processor_lock()"
    ]
    assert contracts.problems("event sink", Silent) == ["missing emit()"]


def test_an_object_made_by_a_function_factory_is_checked_when_made() -> None:
    def make(options: dict[str, str]) -> object:
        return SimpleNamespace(name="half")  # no emit

    @hookimpl
    def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
        register(EventSinkSpec("half", make))

    plugins = make_plugins(
        extra=[SimpleNamespace(__name__="halves", migsync_register_event_sinks=migsync_register_event_sinks)]
    )
    spec = plugins.event_sinks.get("half")  # a function: nothing to check before it runs
    with pytest.raises(PluginError, match=r"^plugin 'halves': event sink 'half' \(types:SimpleNamespace\) "
                       r"does not keep the event sink contract: missing emit\(\)$"):  # fmt: skip
        plugins.build(plugins.event_sinks, spec, {})


def test_a_lazy_factory_is_checked_when_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_pigeons.py").write_text(
        "class Pigeons:\n    where = 'loft'\n    async def fetch(self, etag=None): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = make_plugins(extra=[transport_plugin("lazy", "lazy_pigeons:Pigeons")])
    spec = plugins.transport_for_url("pigeon://loft")  # registering imported nothing
    assert "lazy_pigeons" not in sys.modules
    with pytest.raises(PluginError) as raised:
        plugins.build(
            plugins.transports, spec, "pigeon://loft", client_id="c", token=None, timeout=1, retries=0
        )
    assert str(raised.value) == (
        "plugin 'lazy': transport 'pigeon' (lazy_pigeons:Pigeons) does not keep the transport contract: "
        "missing report(), report_actions(), push_changes(), aclose(), __aenter__(), __aexit__()"
    )


@pytest.mark.parametrize("kind", sorted(contracts.PROTOCOLS))
def test_every_contract_member_is_in_docs_plugins_md(kind: str) -> None:
    """Each protocol member is named in the section of docs/plugins.md that teaches its kind."""
    text = DOCS.read_text(encoding="utf-8")
    heading = {"backend": "## Writing a backend", "transport": "## Writing a transport",
               "event sink": "## Writing an event sink"}[kind]  # fmt: skip
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    for member in contracts.members(kind):
        shown = f"`async {member.name}(" if member.is_async else f"`{member.name}"
        if member.name in ("__aenter__", "__aexit__"):
            shown = "async with"
        assert shown in section, f"{heading} does not document {member.name} as {shown}"


def test_a_proxy_that_delegates_with_getattr_is_judged_by_what_it_answers() -> None:
    class Proxy:
        """A transport that hands everything to another one."""

        def __init__(self, inner: object) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    assert contracts.problems("transport", Proxy) == []  # the class alone cannot say
    assert contracts.problems("transport", Proxy(MemoryTransport("memory://proxy", client_id="c"))) == []
    assert contracts.problems("transport", Proxy(OldTransport())) == [
        "missing report_actions(), push_changes()"
    ]
