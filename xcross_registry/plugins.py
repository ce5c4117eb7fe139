"""Finding and loading plugins, once per process.

Plugins are found through the entry-point group ``xcross_registry``; the built-in
``amazon`` and ``synthetic`` domains arrive the same way.  ``XREG_LOAD_PLUGINS``, when
set, is an allowlist of entry-point names (comma-separated; the empty string loads
none).  A plugin that fails to import, or raises inside a hook, is recorded with its
error and skipped: ``xreg plugins`` shows it, and every other command keeps working.

Three names meet here (docs/plugins.md): the *entry-point name* (what the allowlist
and ``xreg plugins`` say), the *module* it points at, and the *domain-type name* each
registered :class:`DomainType` carries (what ``add-domain --plugin`` takes).  When a
user gives one where another is expected, the error says which name to use instead.

What a plugin can get wrong is an error row, never a silent gap: a hook that registers
nothing (no ``@hookimpl``, a hook that returns its domain type instead of calling
``register``), a plugin that needs a newer plugin API (its module's
``REQUIRES_PLUGIN_API``), and two plugins claiming one domain-type name, which refuses
both claimants (built-ins included) rather than letting entry-point order choose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType

import pluggy

from . import PLUGIN_API_VERSION, hookspecs
from .data import DomainType
from .errors import NotFoundError, PluginError
from .templates import PromptTemplate

ENTRY_POINT_GROUP = "xcross_registry"


@dataclass
class PluginInfo:
    """One plugin as ``xreg plugins`` reports it."""

    name: str
    module: str
    version: str | None = None
    domain_types: list[str] = field(default_factory=list)
    error: str | None = None
    distribution: str | None = None  # the installed package that provides the entry point
    registered_nothing: bool = False  # it imported, but its hooks gave no domain type

    @property
    def package(self) -> str:
        """How messages name the plugin: entry point and the package it comes from."""
        source = f"{self.distribution} {self.version}" if self.distribution else self.module
        return f"plugin {self.name!r} (package {source})"

    def as_dict(self, domain_types: dict[str, DomainType] | None = None) -> dict:
        """JSON form; with the loaded ``domain_types`` also each type's description and
        templates (what ``xreg plugins`` lists)."""
        document = {"name": self.name, "module": self.module, "version": self.version,
                    "distribution": self.distribution,
                    "domain_types": self.domain_types, "error": self.error}
        if domain_types is not None:
            document["domain_type_details"] = [describe_domain_type(domain_types[name])
                                               for name in self.domain_types]
        return document


def describe_domain_type(domain_type: DomainType) -> dict:
    """Name, description and templates of a domain type, for listings.  Malformed
    templates are left out here (listing must not fail); ``add-domain`` refuses them."""
    templates = domain_type.templates if isinstance(domain_type.templates, (list, tuple)) else []
    return {"name": domain_type.name, "description": domain_type.description,
            "templates": [{"key": t.key, "description": t.description}
                          for t in templates if isinstance(t, PromptTemplate)]}


class PluginSet:
    """The loaded plugins and the domain types they contributed.

    ``not_allowed`` holds installed entry points that ``XREG_LOAD_PLUGINS`` left out
    (name → module), and ``unmatched`` the allowlist names that match no entry point,
    so that messages can explain a plugin that seems to be missing."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.domain_types: dict[str, DomainType] = {}
        self._type_owner: dict[str, str] = {}
        self._claimants: dict[str, list[PluginInfo]] = {}  # domain-type name -> plugins claiming it
        self.not_allowed: dict[str, str] = {}
        self.unmatched: list[str] = []

    def add(self, module: ModuleType, name: str, version: str | None = None,
            distribution: str | None = None) -> PluginInfo:
        """Register an imported plugin module and collect what its hooks contribute;
        every problem becomes the plugin's error row (see the module docstring)."""
        info = PluginInfo(name=name, module=module.__name__, version=version, distribution=distribution)
        self.plugins[name] = info
        try:
            _check_api(module)
            self.manager.register(module, name=name)
        except Exception as exc:  # a malformed hookimpl, a name clash, a newer API needed
            info.error = describe(exc)
            return info
        try:
            collected = _collect(self.manager, name)
        except (Exception, SystemExit) as exc:  # a plugin never ends the command
            info.error = describe(exc)
            info.registered_nothing = isinstance(exc, NothingRegistered)
            self.manager.unregister(name=name)
            return info
        for domain_type in collected:
            self._claim(info, domain_type)
        return info

    def _claim(self, info: PluginInfo, domain_type: DomainType) -> None:
        """Give ``domain_type`` to ``info``'s plugin, or, when another plugin claims its name
        too, to none of them: a clash refuses every claimant, whatever the load order."""
        name = domain_type.name
        claimants = self._claimants.setdefault(name, [])
        claimants.append(info)
        if len(claimants) == 1:
            self.domain_types[name] = domain_type
            self._type_owner[name] = info.name
            info.domain_types.append(name)
            return
        if len(claimants) == 2:  # the first claimant loses it too
            first = claimants[0]
            first.domain_types.remove(name)
            del self.domain_types[name], self._type_owner[name]
            _add_error(first, f"domain type {name!r} is also registered by {info.package}; neither is loaded")
        _add_error(info, f"domain type {name!r} is also registered by {claimants[0].package}; "
                         "neither is loaded")

    def clash(self, name: str) -> str | None:
        """Who claims domain type ``name`` when more than one plugin does."""
        claimants = self._claimants.get(name, [])
        return " and ".join(c.package for c in claimants) if len(claimants) > 1 else None

    def add_failure(self, name: str, module: str, error: BaseException,
                    version: str | None = None, distribution: str | None = None) -> None:
        self.plugins[name] = PluginInfo(name=name, module=module, version=version, error=describe(error),
                                        distribution=distribution)

    def owner(self, domain_type: str) -> PluginInfo | None:
        """The plugin (entry point) that registered ``domain_type``, if it is loaded."""
        name = self._type_owner.get(domain_type)
        return self.plugins.get(name) if name is not None else None

    def domain_type(self, name: str) -> DomainType:
        """The domain type called ``name``; the error for any other name says what
        ``name`` is instead (a plugin's entry point or module, a plugin left out by the
        allowlist, a plugin that failed) and what to type."""
        if name in self.domain_types:
            return self.domain_types[name]
        if self.clash(name):
            raise PluginError(f"domain type {name!r} is registered by {self.clash(name)}; none of "
                              "them is loaded: uninstall one, or leave one out with XREG_LOAD_PLUGINS")
        broken = self.plugins.get(name)
        if broken is not None and broken.registered_nothing:
            raise PluginError(f"plugin {name!r} is installed but {broken.error}")
        if broken is not None and broken.error and not broken.domain_types:
            raise PluginError(f"plugin {name!r} failed to load: {broken.error}")
        for info in self.plugins.values():
            if name in (info.name, info.module) and info.domain_types:
                types = ", ".join(info.domain_types)
                raise NotFoundError(f"{name!r} is the {'entry point' if name == info.name else 'module'} "
                                    f"of plugin {info.name!r}; --plugin takes a domain type name: {types}")
        typo = (f" (it names {', '.join(map(repr, self.unmatched))}, which match no installed plugin)"
                if self.unmatched else "")
        for entry_point, module in self.not_allowed.items():
            if name in (entry_point, module):
                raise NotFoundError(f"plugin {entry_point!r} is installed but not allowed by "
                                    f"XREG_LOAD_PLUGINS={os.environ.get('XREG_LOAD_PLUGINS', '')!r}; "
                                    f"add {entry_point} to it{typo}")
        known = ", ".join(sorted(self.domain_types)) or "none"
        message = f"unknown plugin {name!r} (domain types available: {known})"
        if self.not_allowed:
            message += (f"; installed but not allowed by XREG_LOAD_PLUGINS: "
                        f"{', '.join(sorted(self.not_allowed))}{typo}")
        raise NotFoundError(message)

    def warnings(self) -> list[str]:
        """Allowlist names that match no installed plugin (a likely typo)."""
        installed = ", ".join(sorted({*self.plugins, *self.not_allowed})) or "none"
        return [f"XREG_LOAD_PLUGINS names {name!r}, which matches no installed plugin "
                f"(installed: {installed})" for name in self.unmatched]


class NothingRegistered(PluginError):
    """A plugin's hooks ran without registering a domain type."""


def describe(exc: BaseException) -> str:
    """An exception as one line: its type and message (our own errors: the message)."""
    if isinstance(exc, PluginError):  # our own words already
        return str(exc).splitlines()[0]
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.splitlines()[0]


def _add_error(info: PluginInfo, message: str) -> None:
    info.error = message if not info.error else f"{info.error}; {message}"


def _check_api(module: ModuleType) -> None:
    """Refuse a module whose ``REQUIRES_PLUGIN_API = (MAJOR, MINOR)`` this library does not
    offer: another major version, or a newer minor one."""
    needed = getattr(module, "REQUIRES_PLUGIN_API", None)
    if needed is None:
        return
    if not (isinstance(needed, tuple) and len(needed) == 2 and all(type(n) is int for n in needed)):
        raise PluginError(f"REQUIRES_PLUGIN_API must be a (major, minor) tuple of ints, not {needed!r}")
    if needed[0] != PLUGIN_API_VERSION[0] or needed[1] > PLUGIN_API_VERSION[1]:
        offered = ".".join(map(str, PLUGIN_API_VERSION))
        raise PluginError(f"needs plugin API {needed[0]}.{needed[1]}, this xcross-registry offers "
                          f"{offered} (see CHANGELOG.md)")


def _collect(manager: pluggy.PluginManager, name: str) -> list[DomainType]:
    """What plugin ``name``'s hooks register, checked: DomainType objects, at least one,
    and registered through ``register`` rather than returned."""
    impls = [impl for impl in manager.hook.register_domains.get_hookimpls() if impl.plugin_name == name]
    collected: list = []
    for impl in impls:
        returned = impl.function(register=collected.append)
        if returned is not None:
            raise NothingRegistered(f"its register_domains returned a {type(returned).__name__} "
                                    "instead of calling register(...) with it")
    for domain_type in collected:
        if not isinstance(domain_type, DomainType):
            raise PluginError(f"registered {type(domain_type).__name__}, not a DomainType")
    if not collected:
        raise NothingRegistered("registered no domain types (did you forget @hookimpl?)")
    return collected


def allowlist() -> set[str] | None:
    value = os.environ.get("XREG_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def discover() -> PluginSet:
    """Load every allowed entry point of the group into a fresh :class:`PluginSet`."""
    plugin_set = PluginSet()
    allowed = allowlist()
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if allowed is not None:
        plugin_set.unmatched = sorted(allowed - {entry_point.name for entry_point in found})
    for entry_point in found:
        if allowed is not None and entry_point.name not in allowed:
            plugin_set.not_allowed[entry_point.name] = entry_point.value
            continue
        if entry_point.name in plugin_set.plugins:
            continue  # the same distribution seen twice on sys.path
        version = entry_point.dist.version if entry_point.dist else None
        distribution = entry_point.dist.metadata["Name"] if entry_point.dist else None
        try:
            module = entry_point.load()
        except BaseException as exc:  # SystemExit too: a plugin must never end the CLI
            if isinstance(exc, KeyboardInterrupt):
                raise
            plugin_set.add_failure(entry_point.name, entry_point.value, exc, version, distribution)
            continue
        plugin_set.add(module, entry_point.name, version, distribution)
    return plugin_set


_loaded: PluginSet | None = None


def get_plugins() -> PluginSet:
    """The process's plugins, discovered on first use."""
    global _loaded
    if _loaded is None:
        _loaded = discover()
    return _loaded


def reset() -> None:
    """Forget the loaded plugins, so the next :func:`get_plugins` discovers again."""
    global _loaded
    _loaded = None
