"""The registry: plain operations over the schema, used by the CLI and by Python code.

``Registry()`` opens the database named by the environment (upgrading its schema on
first use) and the artifact store beside it.  Every operation that can fail on user
input checks everything it can *before* writing, and writes in one transaction, so a
failure leaves the registry exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from typing import TYPE_CHECKING, Any, Iterator

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from . import settings
from .artifacts import ArtifactStore
from .data import DomainData, DomainType, Item, validate_domain_data, validate_domain_type
from .database import display_url, explained_errors, open_session_factory
from .errors import ConflictError, DataError, NotFoundError, PluginError, ValidationError, XregError
from .plugins import PluginSet, get_plugins
from .schema import (AdapterVersion, Composition, CompositionSource, Domain,
                     EvaluationResult, Tag, utcnow)
from .schema import CandidateSet as CandidateSetRow

if TYPE_CHECKING:  # pragma: no cover
    from .candidates import CandidateSet

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def validate_name(name: str, what: str = "domain") -> str:
    """Names become CLI arguments and folder names: keep them short and path-safe."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValidationError(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return name


class Registry:
    """A registry database plus its artifact store."""

    def __init__(self, url: str | None = None, artifacts: str | os.PathLike | None = None,
                 plugins: PluginSet | None = None) -> None:
        self.url = url or settings.database_url()
        self.sessions = open_session_factory(self.url)
        # What may be printed: the password masked.
        self.display_url = display_url(self.sessions.kw["bind"].url)
        self.store = ArtifactStore(artifacts or settings.artifacts_root())
        self._plugins = plugins
        self._data_cache: dict[str, DomainData] = {}

    @property
    def plugins(self) -> PluginSet:
        if self._plugins is None:
            self._plugins = get_plugins()
        return self._plugins

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises.

        A damaged database (a corrupt file, a missing table, a read-only file) raises
        :class:`~xcross_registry.errors.DatabaseError` after the rollback."""
        with explained_errors(self.sessions.kw["bind"].url), self.sessions.begin() as session:
            yield session

    # ---- domains -------------------------------------------------------------------

    def add_domain(self, name: str, plugin: str, data: str, description: str = "") -> Domain:
        """Validate ``data`` with the plugin's loader, then register it as domain ``name``."""
        validate_name(name)
        with self.session() as session:
            if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
                raise ConflictError(f"domain {name!r} already exists; `xreg add-domain {name} "
                                    f"--plugin {plugin} --data LOCATION --refresh` re-registers its data")
        domain_type = self.plugins.domain_type(plugin)
        location = normalise_location(domain_type, data)
        loaded = load_with(domain_type, location)
        row = Domain(name=name, plugin=plugin, data_location=location,
                     data_fingerprint=loaded.fingerprint(), summary=loaded.summary(),
                     description=description, plugin_version=self.plugin_version(plugin))
        try:
            with self.session() as session:
                session.add(row)
        except IntegrityError:
            raise ConflictError(f"domain {name!r} already exists") from None
        self._data_cache[name] = loaded
        return row

    def refresh_domain(self, name: str, plugin: str | None = None,
                       data: str | None = None) -> tuple[Domain, bool]:
        """Re-read a domain's data (from ``data``, or where it was registered) and make it
        the domain's next data version when its fingerprint changed.

        For data that changed on purpose: a loader fix in a new plugin version, new
        files.  The domain keeps its name and its adapters and compositions keep their
        rows, lineage and the fingerprint they were trained on; the replaced version is
        kept in ``data_history``.  New evaluations use the new data (and so land on new
        leaderboards, which are keyed by data fingerprint).  Returns the row and whether a
        new data version was made; the same data at a new location (or read by a new
        plugin version) only updates those fields."""
        row = self.domain(name)
        if plugin is not None and plugin != row.plugin:
            raise ValidationError(f"domain {name!r} is read by plugin {row.plugin!r}, not {plugin!r}; "
                                  "a refresh keeps the plugin (register other data under a new name)")
        domain_type = self.plugins.domain_type(row.plugin)
        location = normalise_location(domain_type, data) if data is not None else row.data_location
        loaded = load_with(domain_type, location)
        fingerprint = loaded.fingerprint()
        version = self.plugin_version(row.plugin)
        if fingerprint == row.data_fingerprint:  # same data: at most a new place or plugin version
            if (location, version) != (row.data_location, row.plugin_version):
                with self.session() as session:
                    current = session.get(Domain, row.id)
                    current.data_location, current.plugin_version = location, version
            self._data_cache[name] = loaded
            return self.domain(name), False
        previous = {"fingerprint": row.data_fingerprint, "plugin_version": row.plugin_version,
                    "data_location": row.data_location, "summary": row.summary,
                    "replaced": utcnow().isoformat()}
        with self.session() as session:
            current = session.get(Domain, row.id)
            current.data_history = [*(current.data_history or []), previous]
            current.data_fingerprint = fingerprint
            current.data_location = location
            current.summary = loaded.summary()
            current.plugin_version = version
        self._data_cache[name] = loaded
        return self.domain(name), True

    def plugin_version(self, domain_type: str) -> str | None:
        """The installed version of the distribution that provides ``domain_type``
        (``None`` when unknown: a plugin that is not an installed distribution)."""
        owner = self.plugins.owner(domain_type)
        return owner.version if owner is not None else None

    def domains(self) -> list[Domain]:
        with self.session() as session:
            return list(session.scalars(select(Domain).order_by(Domain.name)))

    def domain(self, name: str) -> Domain:
        with self.session() as session:
            row = session.scalar(select(Domain).where(Domain.name == name))
        if row is None:
            raise NotFoundError(f"unknown domain {name!r}")
        return row

    def domain_data(self, name: str) -> DomainData:
        """The domain's data, re-read through its plugin and checked against the
        fingerprint recorded at registration (data that changed is refused)."""
        if name in self._data_cache:
            return self._data_cache[name]
        row = self.domain(name)
        loaded = load_with(self.plugins.domain_type(row.plugin), row.data_location)
        if loaded.fingerprint() != row.data_fingerprint:
            then, now = row.plugin_version or "unknown", self.plugin_version(row.plugin) or "unknown"
            where = shlex.quote(row.data_location)
            raise DataError(
                f"the data of domain {name!r} at {row.data_location} changed since it was registered "
                f"(fingerprint {row.data_fingerprint[:12]} -> {loaded.fingerprint()[:12]}; plugin "
                f"{row.plugin!r} version {then} then, {now} now); to use it, run `xreg add-domain "
                f"{name} --plugin {row.plugin} --data {where} --refresh` (keeps its adapters and "
                f"their lineage) or register it as a new domain with `xreg add-domain NEW "
                f"--plugin {row.plugin} --data {where}`")
        self._data_cache[name] = loaded
        return loaded

    def domain_type(self, name: str) -> DomainType:
        return self.plugins.domain_type(self.domain(name).plugin)

    def find_items(self, name: str, search: str | None = None) -> list[Item]:
        """Catalogue items of domain ``name`` whose id or title contains every word of
        ``search`` (case-insensitive), in catalogue order; all items without ``search``.

        What a user looks up to write a ``recommend --history`` (titles or ids)."""
        items = self.domain_data(name).items
        words = (search or "").lower().split()
        if not words:
            return list(items)
        return [item for item in items
                if all(word in f"{item.id} {item.title}".lower() for word in words)]

    def dependents(self, name: str) -> dict[str, list[str]]:
        """Adapters and compositions that would lose their data if ``name`` went away."""
        domain = self.domain(name)
        with self.session() as session:
            adapters = session.scalars(
                select(AdapterVersion).where(AdapterVersion.domain_id == domain.id)
                .order_by(AdapterVersion.version)).all()
            adapter_ids = [a.id for a in adapters]
            # Names, not whole rows, are made distinct: PostgreSQL cannot compare the
            # rows' JSON columns.
            compositions = session.scalars(
                select(Composition.name).outerjoin(CompositionSource).where(or_(
                    Composition.target_domain_id == domain.id,
                    CompositionSource.adapter_version_id.in_(adapter_ids)))
                .distinct().order_by(Composition.name)).all()
            return {"adapters": [f"{name}@v{a.version}" for a in adapters],
                    "compositions": list(compositions)}

    def remove_domain(self, name: str, force: bool = False) -> dict[str, list[str]]:
        """Remove a domain; with ``force`` also its adapters, compositions and results.

        Artifacts stay in the store: they are addressed by content and may be shared."""
        deps = self.dependents(name)
        if not force and (deps["adapters"] or deps["compositions"]):
            listed = ", ".join(deps["adapters"] + deps["compositions"])
            raise ConflictError(f"domain {name!r} is used by {listed}; remove those first or "
                                "use --force")
        domain = self.domain(name)
        with self.session() as session:
            composition_ids = session.scalars(
                select(Composition.id).where(Composition.name.in_(deps["compositions"]))).all()
            adapter_ids = session.scalars(
                select(AdapterVersion.id).where(AdapterVersion.domain_id == domain.id)).all()
            session.execute(delete(EvaluationResult).where(or_(
                EvaluationResult.domain_id == domain.id,
                EvaluationResult.composition_id.in_(composition_ids),
                EvaluationResult.adapter_version_id.in_(adapter_ids))))
            session.execute(delete(CompositionSource).where(
                CompositionSource.composition_id.in_(composition_ids)))
            session.execute(delete(Composition).where(Composition.id.in_(composition_ids)))
            session.execute(delete(AdapterVersion).where(AdapterVersion.id.in_(adapter_ids)))
            for kind, ids in (("domain", [domain.id]), ("adapter", adapter_ids),
                              ("composition", composition_ids)):
                session.execute(delete(Tag).where(Tag.entity_kind == kind,
                                                  Tag.entity_id.in_(ids)))
            session.execute(delete(Domain).where(Domain.id == domain.id))
        self._data_cache.pop(name, None)
        return deps

    # ---- evaluation candidates -------------------------------------------------------

    def candidate_set(self, domain: str, split: str = "test", protocol: str = "sampled",
                      seed: int = 0) -> tuple["CandidateSet", str]:
        """The stored candidates of (domain data, split, protocol, seed), drawn on first
        use, with the digest of their artifact (recorded by every evaluation row).

        Every evaluation of a domain reads the same stored bytes, so all methods and
        baselines are ranked against identical lists."""
        from .candidates import CandidateSet, sample_candidates

        row = self.domain(domain)
        key = (CandidateSetRow.data_fingerprint == row.data_fingerprint,
               CandidateSetRow.split == split, CandidateSetRow.protocol == protocol,
               CandidateSetRow.seed == seed)
        with self.session() as session:
            digest = session.scalar(select(CandidateSetRow.artifact_digest).where(*key))
        if digest is None:
            drawn = sample_candidates(self.domain_data(domain), split, protocol, seed=seed)
            digest = self.store.put_bytes(drawn.to_bytes())
            with self.session() as session:
                # Another process may have drawn the same set meanwhile: same bytes, same digest.
                if session.scalar(select(CandidateSetRow.id).where(*key)) is None:
                    session.add(CandidateSetRow(data_fingerprint=row.data_fingerprint, split=split,
                                                protocol=protocol, seed=seed,
                                                artifact_digest=digest))
        return CandidateSet.from_bytes(self.store.get_bytes(digest)), digest

    # ---- adapters --------------------------------------------------------------------

    def adapters(self, domain: str | None = None) -> list[AdapterVersion]:
        with self.session() as session:
            query = (select(AdapterVersion).join(Domain)
                     .options(selectinload(AdapterVersion.domain),
                              selectinload(AdapterVersion.base_model))
                     .order_by(Domain.name, AdapterVersion.version))
            if domain is not None:
                query = query.where(Domain.name == domain)
            return list(session.scalars(query))

    # ---- tags ------------------------------------------------------------------------

    def set_tag(self, kind: str, entity_id: int, key: str, value: str) -> None:
        with self.session() as session:
            row = session.scalar(select(Tag).where(Tag.entity_kind == kind,
                                                   Tag.entity_id == entity_id, Tag.key == key))
            if row is None:
                session.add(Tag(entity_kind=kind, entity_id=entity_id, key=key, value=value))
            else:
                row.value = value

    def tags(self, kind: str, entity_id: int) -> dict[str, str]:
        with self.session() as session:
            rows = session.scalars(select(Tag).where(Tag.entity_kind == kind,
                                                     Tag.entity_id == entity_id))
            return {row.key: row.value for row in rows}

    def count(self, table: type) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(table))


def load_with(domain_type: DomainType, location: str) -> DomainData:
    """Run a plugin's loader and check its output against the data contract
    (:func:`~xcross_registry.data.validate_domain_data`); anything but our own errors
    is reported as the plugin's."""
    validate_domain_type(domain_type)
    try:
        loaded = domain_type.load(location)
    except XregError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {domain_type.name!r} failed to load {location}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, DomainData):
        raise PluginError(f"plugin {domain_type.name!r} returned {type(loaded).__name__}, "
                          "not DomainData")
    validate_domain_data(loaded, domain_type, location)
    return loaded


def normalise_location(domain_type: DomainType, data: str) -> str:
    """The location to store: the plugin's ``locate`` when it has one, else the path
    part of ``PATH[?options]`` made absolute when it exists, so the registry works from
    any folder (other strings, such as recipes, are kept as given)."""
    from .plugin_helpers import absolute_location

    locate = domain_type.locate or absolute_location
    try:
        location = locate(data)
    except XregError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {domain_type.name!r} cannot read the location {data!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(location, str):
        raise PluginError(f"plugin {domain_type.name!r}: locate returned "
                          f"{type(location).__name__}, not a string")
    return location


def as_dict(row: Any) -> dict[str, Any]:
    """A row as JSON-ready data, for ``--json`` output and for Python callers."""
    if isinstance(row, Domain):
        return {"name": row.name, "plugin": row.plugin, "plugin_version": row.plugin_version,
                "data_location": row.data_location, "data_fingerprint": row.data_fingerprint,
                "data_version": row.data_version, "data_history": row.data_history or [],
                "summary": row.summary, "description": row.description,
                "created": row.created.isoformat()}
    if isinstance(row, AdapterVersion):
        return {"domain": row.domain.name, "version": row.version,
                "base_model": row.base_model.name, "lora_config": row.lora_config,
                "artifact_digest": row.artifact_digest,
                "trainable_parameters": row.trainable_parameters,
                "data_fingerprint": row.data_fingerprint,
                "training_config": row.training_config, "metrics": row.metrics,
                "status": row.status, "created": row.created.isoformat()}
    raise TypeError(f"no dict form for {type(row).__name__}")
