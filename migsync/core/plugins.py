"""The plugin manager factory and the facade the rest of migsync talks to.

Only this module calls into pluggy's hooks. Everything else asks the
:class:`Plugins` facade for typed registries (``plugins.backends``,
``plugins.backend_for_url(url)``, ...), built lazily on first use.

Discovery of installed plugins (entry-point group ``migsync``) is controlled
by environment variables:

``MIGSYNC_DISABLE_PLUGIN_AUTOLOAD=1``
    load built-ins only.
``MIGSYNC_PLUGINS=name,name``
    load only these entry points (an allow-list).
``MIGSYNC_STRICT_PLUGINS=1``
    an installed (third-party) plugin that fails to load, or whose backend,
    transport or event sink does not keep its contract, is an error instead
    of a warning and a skip.
``MIGSYNC_CHECK_BUILTINS=1``
    migsync's own plugins are checked against their contracts as soon as
    their registry is built, their lazy ``"module:attribute"`` factories
    imported for it; otherwise they are checked when first used, for
    start-up time (not under ``CI=true``: a user's CI runs ``migsync apply``
    too, and must not pay for importing every backend). A broken built-in
    is always an error.

Every backend, transport and event sink is checked against its
``typing.Protocol`` (:mod:`migsync.core.contracts`): a class given as a
spec's factory when the registry is built, a lazily imported class when it
is imported, and the object a factory makes when it is made.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import attrs
import pluggy

from migsync.core import contracts, hookspecs
from migsync.core.errors import ConfigError, PluginError
from migsync.core.specs import (
    BackendSpec,
    ChangeApplierSpec,
    EventSinkSpec,
    SourceFormatSpec,
    Spec,
    SQLiteCollationSpec,
    SQLiteFunctionSpec,
    SQLiteSpec,
    TransportSpec,
)

log = logging.getLogger("migsync.plugins")

ENTRY_POINT_GROUP = "migsync"

#: Built-in plugins, registered through the same hooks as third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "migsync.core.formats",
    "migsync.backends",
    "migsync.transports",
    "migsync.plugins.sinks",
    "migsync.plugins.appliers",
)

_TRUE = {"1", "true", "yes", "on"}

#: The end of the warning about a third-party plugin that is skipped.
STRICT_HINT = "MIGSYNC_STRICT_PLUGINS=1 makes this an error"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


@attrs.frozen
class PluginInfo:
    """One loaded (or failed) plugin, for ``migsync plugins``."""

    name: str
    origin: str  # "builtin", or "entry point <dist> <version>"
    registers: tuple[str, ...] = ()
    error: str | None = None
    #: the description each spec of ``registers`` declares, in the same order ("" if none)
    descriptions: tuple[str, ...] = ()
    #: what of this plugin was refused and skipped: a spec that does not keep its contract
    refused: tuple[str, ...] = ()


S = TypeVar("S", bound=Spec)


class Registry(Generic[S]):
    """The specs of one kind, by name, with which plugin registered each.

    A plain class, not an attrs one: it is defined at every start (each attrs class costs
    about half a millisecond of it) and nothing compares or prints registries.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.specs: dict[str, S] = {}
        self.owners: dict[str, str] = {}
        self.by_scheme: dict[str, str] = {}

    def __iter__(self) -> Any:
        return iter(self.specs.values())

    def __len__(self) -> int:
        return len(self.specs)

    def get(self, name: str) -> S:
        try:
            return self.specs[name]
        except KeyError:
            valid = ", ".join(sorted(self.specs)) or "none registered"
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self.specs)


class Plugins:
    """Typed access to everything plugins registered. Build with :func:`make_plugins`."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        failures: Sequence[PluginInfo],
        builtins: set[str],
        origins: dict[str, str] | None = None,
        *,
        dists: dict[str, str] | None = None,
        strict: bool = True,
        check_builtins: bool = False,
    ):
        self.pm = pm
        self.failures = list(failures)
        self._builtins = builtins
        self._origins = dict(origins or {})
        #: entry-point plugin name -> "module, from distribution version", for messages
        self._dists = dict(dists or {})
        #: a third-party plugin that breaks its contract is an error, not a warning and a skip
        self.strict = strict
        #: load and check migsync's own lazy factories when their registry is built
        self.check_builtins = check_builtins
        self._refused: dict[str, list[str]] = {}
        self._cache: dict[str, dict[type, Registry[Any]]] = {}

    # -- registries ---------------------------------------------------------

    @property
    def backends(self) -> Registry[BackendSpec]:
        return self._registry("backend", "migsync_register_backends", BackendSpec)

    @property
    def transports(self) -> Registry[TransportSpec]:
        return self._registry("transport", "migsync_register_transports", TransportSpec)

    @property
    def event_sinks(self) -> Registry[EventSinkSpec]:
        return self._registry("event sink", "migsync_register_event_sinks", EventSinkSpec)

    @property
    def source_formats(self) -> Registry[SourceFormatSpec]:
        return self._registry("source format", "migsync_register_source_formats", SourceFormatSpec)

    @property
    def change_appliers(self) -> Registry[ChangeApplierSpec]:
        return self._registry("change applier", "migsync_register_change_appliers", ChangeApplierSpec)

    @property
    def sqlite_functions(self) -> Registry[SQLiteFunctionSpec]:
        return self._sqlite()[SQLiteFunctionSpec]

    @property
    def sqlite_collations(self) -> Registry[SQLiteCollationSpec]:
        return self._sqlite()[SQLiteCollationSpec]

    def sqlite_specs(self) -> tuple[SQLiteSpec, ...]:
        """Every SQLite function and collation, for a SQLite backend to install."""
        return (*self.sqlite_functions, *self.sqlite_collations)

    def backend_for_url(self, url: str) -> BackendSpec:
        return self._by_scheme(self.backends, url, "database")

    def transport_for_url(self, url: str) -> TransportSpec:
        return self._by_scheme(self.transports, url, "server")

    # -- building what a spec provides ------------------------------------------------------

    def build(self, registry: Registry[Any], spec: Any, *args: Any, **kwargs: Any) -> Any:
        """``spec.load()(*args, **kwargs)``, checked against the contract of ``registry``'s kind.

        The class is checked before it is called (nothing is built from a class that cannot
        work) and the object after. A broken one is a :class:`PluginError` naming the plugin,
        whatever the strictness: it was asked for by name or URL, and nothing can stand in.
        A ``TypeError`` of the factory (options it does not take) is left to the caller.
        """
        factory = spec.load()
        if inspect.isclass(factory):
            self._check(registry.kind, spec, factory, registry.owners.get(spec.name))
        built = factory(*args, **kwargs)
        self._check(registry.kind, spec, built, registry.owners.get(spec.name))
        return built

    def _check(self, kind: str, spec: Any, target: object, owner: str | None) -> None:
        if kind not in contracts.PROTOCOLS:
            return
        clause = contracts.describe(kind, target)
        if clause is not None:
            raise PluginError(self._refusal(kind, spec, target, owner, clause))

    def _refusal(self, kind: str, spec: Any, target: object, owner: str | None, clause: str) -> str:
        klass = target if inspect.isclass(target) else type(target)
        implementation = f"{klass.__module__}:{klass.__qualname__}"
        return (
            f"{self._who(owner)}: {kind} {spec.name!r} ({implementation}) "
            f"does not keep the {kind} contract: {clause}"
        )

    def _who(self, owner: str | None) -> str:
        if owner is None:
            return "a plugin"
        if owner in self._builtins:
            return f"built-in plugin {owner!r}"
        dist = self._dists.get(owner)
        return f"plugin {owner!r} ({dist})" if dist else f"plugin {owner!r}"

    def _keeps_contract(self, kind: str, spec: Any, owner: str) -> bool:
        """Whether ``spec`` may join its registry: a class factory must keep its kind's contract.

        A factory named lazily (``"module:attribute"``) is checked when it is imported, except
        migsync's own under ``check_builtins``; a function's object is checked when it is built.
        """
        if kind not in contracts.PROTOCOLS:
            return True
        factory = spec.factory
        if isinstance(factory, str):
            if not (self.check_builtins and owner in self._builtins):
                return True
            factory = spec.load()
        if not inspect.isclass(factory):
            return True
        clause = contracts.describe(kind, factory)
        if clause is None:
            return True
        self._broken(owner, self._refusal(kind, spec, factory, owner, clause))
        return False

    def _broken(self, owner: str, message: str, cause: Exception | None = None) -> None:
        """A plugin's registration went wrong: an error, or for an installed plugin when not
        strict, one warning and the plugin's registration skipped."""
        if self.strict or owner not in self._origins:
            # migsync's own plugins and the application's (``extra``) are never skipped quietly.
            raise PluginError(message) from cause
        log.warning("%s; skipped (%s)", message, STRICT_HINT)
        self._refused.setdefault(owner, []).append(message)

    # -- introspection --------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every plugin with what it registers, built-ins first."""
        registered: dict[str, list[tuple[str, str]]] = {}
        registries = (
            self.backends,
            self.transports,
            self.event_sinks,
            self.source_formats,
            self.change_appliers,
            self.sqlite_functions,
            self.sqlite_collations,
        )
        for registry in registries:
            for name, owner in registry.owners.items():
                item = f"{registry.kind}:{name}"
                registered.setdefault(owner, []).append((item, registry.specs[name].description))
        infos = []
        for plugin_name, _ in self.pm.list_name_plugin():
            if plugin_name is None:
                continue
            items = registered.get(plugin_name, [])
            infos.append(
                PluginInfo(
                    name=plugin_name,
                    origin=self._origin(plugin_name),
                    registers=tuple(item for item, _ in items),
                    descriptions=tuple(description for _, description in items),
                    refused=tuple(self._refused.get(plugin_name, ())),
                )
            )
        return infos + self.failures

    def _origin(self, plugin_name: str) -> str:
        if plugin_name in self._builtins:
            return "builtin"
        return self._origins.get(plugin_name, "registered")

    # -- internals ---------------------------------------------------------------

    def _sqlite(self) -> dict[type, Registry[Any]]:
        # One hook, two namespaces: SQLite keeps functions and collations apart.
        return self._registries(
            "migsync_register_sqlite_functions",
            {SQLiteFunctionSpec: "sqlite function", SQLiteCollationSpec: "sqlite collation"},
        )

    def _registry(self, kind: str, hook_name: str, spec_type: type) -> Registry[Any]:
        return self._registries(hook_name, {spec_type: kind})[spec_type]

    def _registries(self, hook_name: str, kinds: dict[type, str]) -> dict[type, Registry[Any]]:
        """One registry per spec type that hook ``hook_name`` registers, by type."""
        cached = self._cache.get(hook_name)
        if cached is not None:
            return cached
        registries: dict[type, Registry[Any]] = {
            spec_type: Registry(kind) for spec_type, kind in kinds.items()
        }
        expected = " or a ".join(spec_type.__name__ for spec_type in kinds)
        hook = getattr(self.pm.hook, hook_name)
        # Call implementations one by one so every spec is attributed to the
        # plugin that registered it and a clash can name both plugins.
        for impl in hook.get_hookimpls():
            owner = impl.plugin_name
            given: list[tuple[Registry[Any], Any]] = []

            def register(spec: Any, owner: str = owner, given: list[Any] = given) -> None:
                registry = next((r for t, r in registries.items() if isinstance(spec, t)), None)
                if registry is None:
                    raise PluginError(
                        f"{self._who(owner)}: {hook_name} registered {spec!r}; expected a {expected}"
                    )
                given.append((registry, spec))

            # pluggy lets an implementation take a subset of the spec's arguments.
            arguments = {"register": register}
            try:
                impl.function(**{name: arguments[name] for name in impl.argnames})
            except PluginError as exc:
                self._broken(owner, str(exc), exc)
                continue
            except Exception as exc:
                message = f"{self._who(owner)}: {hook_name} raised {type(exc).__name__}: {exc}"
                self._broken(owner, message, exc)
                continue
            # What a hook registers joins only once the hook has run to its end: a plugin that is
            # skipped half-way leaves nothing behind.
            for registry, spec in given:
                if self._keeps_contract(registry.kind, spec, owner):
                    self._add(registry, spec, owner)
        self._cache[hook_name] = registries
        return registries

    def _add(self, registry: Registry[Any], spec: Any, owner: str) -> None:
        if spec.name in registry.specs:
            raise PluginError(
                f"{registry.kind} {spec.name!r} is registered twice: by plugin "
                f"{registry.owners[spec.name]!r} and by plugin {owner!r}"
            )
        claimed = []
        for scheme in getattr(spec, "schemes", ()):
            previous = registry.by_scheme.get(scheme)
            if previous is None:
                claimed.append(scheme)
                continue
            previous_plugin = registry.owners[previous]
            previous_builtin = previous_plugin in self._builtins
            builtin = owner in self._builtins
            if previous_builtin and not builtin:
                log.debug(
                    "%s %r takes scheme %r from built-in %r", registry.kind, spec.name, scheme, previous
                )
                claimed.append(scheme)
            elif builtin and not previous_builtin:
                # A third party already has it (its hook ran first): it wins.
                continue
            else:
                raise PluginError(
                    f"URL scheme {scheme!r} is claimed by {registry.kind} {previous!r} "
                    f"(plugin {previous_plugin!r}) and by {spec.name!r} (plugin {owner!r})"
                )
        for scheme in claimed:
            registry.by_scheme[scheme] = spec.name
        registry.specs[spec.name] = spec
        registry.owners[spec.name] = owner

    def _by_scheme(self, registry: Registry[S], url: str, what: str) -> S:
        scheme = urlsplit(url).scheme.lower()
        by_scheme = registry.by_scheme
        if not scheme or scheme not in by_scheme:
            valid = ", ".join(f"{s}://" for s in sorted(by_scheme)) or "none registered"
            raise ConfigError(f"no {registry.kind} serves {what} URL {url!r}; known schemes: {valid}")
        return registry.specs[by_scheme[scheme]]


def _check_hookimpls(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    for hook_caller in pm.get_hookcallers(plugin) or ():
        mine = [impl for impl in hook_caller.get_hookimpls() if impl.plugin is plugin]
        if not hook_caller.has_spec() and not all(impl.optionalhook for impl in mine):
            known = ", ".join(sorted(_hook_names()))
            raise PluginError(
                f"plugin {name!r} implements unknown hook {hook_caller.name!r}; known hooks: {known}"
            )
        if hook_caller.name in hookspecs.ASYNC_NOTIFICATION_HOOKS:
            continue
        for impl in mine:
            function = impl.function
            if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
                raise PluginError(
                    f"plugin {name!r}: hook {hook_caller.name} must not be 'async def'; "
                    "registration hooks are synchronous (do async work in the registered class)"
                )


def _hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "migsync_spec")]


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        # pluggy's messages are good; ours adds which plugin and the common type.
        raise PluginError(f"plugin {name!r} cannot be registered: {exc}") from exc
    try:
        _check_hookimpls(pm, plugin, name)
    except PluginError:
        pm.unregister(plugin)
        raise


def make_plugins(
    *,
    autoload: bool | None = None,
    strict: bool | None = None,
    extra: Iterable[object] = (),
    builtins: Sequence[str] = DEFAULT_PLUGINS,
    check_builtins: bool | None = None,
) -> Plugins:
    """Build an isolated plugin manager: built-ins, then installed plugins, then ``extra``.

    ``autoload`` defaults to on unless ``MIGSYNC_DISABLE_PLUGIN_AUTOLOAD`` is
    set. ``strict`` (default: ``MIGSYNC_STRICT_PLUGINS``) makes an installed
    plugin that fails to load or breaks its contract an error; otherwise it
    is logged and skipped. ``check_builtins`` (default: ``MIGSYNC_CHECK_BUILTINS``) checks
    migsync's own lazily imported backends, transports and sinks as soon as
    their registry is built. ``extra`` are plugin objects (modules,
    instances) registered last, which is how tests and embedding
    applications add their own; like the built-ins, they are never skipped.
    """
    if autoload is None:
        autoload = not _env_flag("MIGSYNC_DISABLE_PLUGIN_AUTOLOAD")
    if strict is None:
        strict = _env_flag("MIGSYNC_STRICT_PLUGINS")
    if check_builtins is None:
        check_builtins = _env_flag("MIGSYNC_CHECK_BUILTINS")
    pm = pluggy.PluginManager("migsync")
    pm.add_hookspecs(hookspecs)
    builtin_names = set()
    for module_name in builtins:
        _register(pm, importlib.import_module(module_name), module_name)
        builtin_names.add(module_name)
    failures: list[PluginInfo] = []
    origins: dict[str, str] = {}
    dists: dict[str, str] = {}
    if autoload:
        failures, origins, dists = _load_entry_points(pm, strict)
    for index, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
        _register(pm, plugin, name)
    return Plugins(
        pm, failures, builtin_names, origins, dists=dists, strict=strict, check_builtins=check_builtins
    )


def _any_entry_point_declared(group: str) -> bool:
    """Whether some distribution on ``sys.path`` may declare entry points in ``group``.

    ``importlib.metadata`` costs ~40 ms to import (email, zipfile, csv), paid by
    every ``migsync`` start. Most installs have no migsync plugin, and a look at
    the ``entry_points.txt`` files costs ~2 ms, so look first. Any doubt (a
    zip on the path, a file that cannot be read) answers yes: the full
    discovery then decides.
    """
    header = f"[{group}]"
    for entry in sys.path:
        if not entry:
            entry = "."
        if not os.path.isdir(entry):
            if os.path.exists(entry):
                return True  # a zip archive: let importlib.metadata look inside
            continue
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            path = os.path.join(entry, name, "entry_points.txt")
            try:
                with open(path, encoding="utf-8") as file:
                    if any(line.strip() == header for line in file):
                        return True
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError):
                return True
    return False


def _load_entry_points(
    pm: pluggy.PluginManager, strict: bool
) -> tuple[list[PluginInfo], dict[str, str], dict[str, str]]:
    """Register the ``migsync`` entry points: (failures, origin and distribution of each loaded one)."""
    if not _any_entry_point_declared(ENTRY_POINT_GROUP):
        return [], {}, {}
    from importlib.metadata import entry_points

    allowed_raw = os.environ.get("MIGSYNC_PLUGINS", "").strip()
    allowed = {n.strip() for n in allowed_raw.split(",") if n.strip()} if allowed_raw else None
    failures: list[PluginInfo] = []
    origins: dict[str, str] = {}
    dists: dict[str, str] = {}
    seen: set[str] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        seen.add(ep.name)
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = getattr(ep, "dist", None)
        origin = f"entry point ({dist.name} {dist.version})" if dist else "entry point"
        label = f"{ep.value}, from {dist.name} {dist.version}" if dist else ep.value
        try:
            plugin = ep.load()
            _register(pm, plugin, ep.name)
        except Exception as exc:
            message = f"plugin {ep.name!r} ({label}) failed to load: {type(exc).__name__}: {exc}"
            if strict:
                raise PluginError(message) from exc
            log.warning("%s; skipped (%s)", message, STRICT_HINT)
            failures.append(PluginInfo(ep.name, origin, error=f"{type(exc).__name__}: {exc}"))
            continue
        origins[ep.name] = origin
        dists[ep.name] = label
    for name in sorted((allowed or set()) - seen):
        log.warning("MIGSYNC_PLUGINS names %r, but no installed plugin has that name", name)
    return failures, origins, dists


# Typed re-export for callers that only need the callback type.
Register = Callable[[Spec], None]
