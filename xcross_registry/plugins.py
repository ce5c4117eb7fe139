"""Finding and loading plugins, once per process.

Plugins are found through the entry-point group ``xcross_registry``; the built-in
``amazon`` and ``synthetic`` domains arrive the same way.  ``XREG_LOAD_PLUGINS``, when
set, is an allowlist of entry-point names (comma-separated; the empty string loads
none).  A plugin that fails to import, or raises inside a hook, is recorded with its
error and skipped: ``xreg plugins`` shows it, and every other command keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType

import pluggy

from . import hookspecs
from .data import DomainType
from .errors import NotFoundError, PluginError

ENTRY_POINT_GROUP = "xcross_registry"


@dataclass
class PluginInfo:
    """One plugin as ``xreg plugins`` reports it."""

    name: str
    module: str
    version: str | None = None
    domain_types: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "module": self.module, "version": self.version,
                "domain_types": self.domain_types, "error": self.error}


class PluginSet:
    """The loaded plugins and the domain types they contributed."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.domain_types: dict[str, DomainType] = {}
        self._type_owner: dict[str, str] = {}

    def add(self, module: ModuleType, name: str, version: str | None = None) -> PluginInfo:
        """Register an imported plugin module and collect what its hooks contribute."""
        info = PluginInfo(name=name, module=module.__name__, version=version)
        self.plugins[name] = info
        try:
            self.manager.register(module, name=name)
        except Exception as exc:  # a malformed hookimpl, a name clash
            info.error = _describe(exc)
            return info
        impls = [impl for impl in self.manager.hook.register_domains.get_hookimpls()
                 if impl.plugin_name == name]
        collected: list[DomainType] = []
        try:
            for impl in impls:
                impl.function(register=lambda domain_type: collected.append(domain_type))
            for domain_type in collected:
                if not isinstance(domain_type, DomainType):
                    raise PluginError(f"registered {type(domain_type).__name__}, not a DomainType")
                owner = self._type_owner.get(domain_type.name)
                if owner is not None:
                    raise PluginError(f"domain type {domain_type.name!r} is already "
                                      f"registered by plugin {owner!r}")
        except Exception as exc:
            info.error = _describe(exc)
            self.manager.unregister(name=name)
            return info
        for domain_type in collected:
            self.domain_types[domain_type.name] = domain_type
            self._type_owner[domain_type.name] = name
            info.domain_types.append(domain_type.name)
        return info

    def add_failure(self, name: str, module: str, error: BaseException,
                    version: str | None = None) -> None:
        self.plugins[name] = PluginInfo(name=name, module=module, version=version,
                                        error=_describe(error))

    def domain_type(self, name: str) -> DomainType:
        try:
            return self.domain_types[name]
        except KeyError:
            broken = self.plugins.get(name)
            if broken is not None and broken.error:
                raise PluginError(f"plugin {name!r} failed to load: {broken.error}") from None
            known = ", ".join(sorted(self.domain_types)) or "none"
            raise NotFoundError(f"unknown plugin {name!r} (domain types available: {known})") from None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def allowlist() -> set[str] | None:
    value = os.environ.get("XREG_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def discover() -> PluginSet:
    """Load every allowed entry point of the group into a fresh :class:`PluginSet`."""
    plugin_set = PluginSet()
    allowed = allowlist()
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if entry_point.name in plugin_set.plugins:
            continue  # the same distribution seen twice on sys.path
        version = entry_point.dist.version if entry_point.dist else None
        try:
            module = entry_point.load()
        except BaseException as exc:  # SystemExit too: a plugin must never end the CLI
            if isinstance(exc, KeyboardInterrupt):
                raise
            plugin_set.add_failure(entry_point.name, entry_point.value, exc, version)
            continue
        plugin_set.add(module, entry_point.name, version)
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
