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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from . import settings
from .artifacts import ArtifactStore
from .data import DomainData, DomainType
from .database import open_session_factory
from .errors import ConflictError, DataError, NotFoundError, PluginError, ValidationError, XregError
from .plugins import PluginSet, get_plugins
from .schema import (AdapterVersion, Composition, CompositionSource, Domain,
                     EvaluationResult, Tag)
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
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self.sessions.begin() as session:
            yield session

    # ---- domains -------------------------------------------------------------------

    def add_domain(self, name: str, plugin: str, data: str, description: str = "") -> Domain:
        """Validate ``data`` with the plugin's loader, then register it as domain ``name``."""
        validate_name(name)
        with self.session() as session:
            if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
                raise ConflictError(f"domain {name!r} already exists")
        domain_type = self.plugins.domain_type(plugin)
        location = _normalise_location(data)
        loaded = load_with(domain_type, location)
        row = Domain(name=name, plugin=plugin, data_location=location,
                     data_fingerprint=loaded.fingerprint(), summary=loaded.summary(),
                     description=description)
        try:
            with self.session() as session:
                session.add(row)
        except IntegrityError:
            raise ConflictError(f"domain {name!r} already exists") from None
        self._data_cache[name] = loaded
        return row

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
            raise DataError(f"the data of domain {name!r} at {row.data_location} changed since "
                            "it was registered (fingerprint differs); register it under a new name")
        self._data_cache[name] = loaded
        return loaded

    def domain_type(self, name: str) -> DomainType:
        return self.plugins.domain_type(self.domain(name).plugin)

    def dependents(self, name: str) -> dict[str, list[str]]:
        """Adapters and compositions that would lose their data if ``name`` went away."""
        domain = self.domain(name)
        with self.session() as session:
            adapters = session.scalars(
                select(AdapterVersion).where(AdapterVersion.domain_id == domain.id)
                .order_by(AdapterVersion.version)).all()
            adapter_ids = [a.id for a in adapters]
            compositions = session.scalars(
                select(Composition).outerjoin(CompositionSource).where(or_(
                    Composition.target_domain_id == domain.id,
                    CompositionSource.adapter_version_id.in_(adapter_ids)))
                .distinct().order_by(Composition.name)).all()
            return {"adapters": [f"{name}@v{a.version}" for a in adapters],
                    "compositions": [c.name for c in compositions]}

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
    """Run a plugin's loader; anything but our own errors is reported as the plugin's."""
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
    return loaded


def _normalise_location(data: str) -> str:
    """Paths are stored absolute so the registry works from any folder; other location
    strings (a synthetic recipe, say) are the plugin's business and kept as given."""
    path = Path(data).expanduser()
    return str(path.resolve()) if path.exists() else data


def as_dict(row: Any) -> dict[str, Any]:
    """A row as JSON-ready data, for ``--json`` output and for Python callers."""
    if isinstance(row, Domain):
        return {"name": row.name, "plugin": row.plugin, "data_location": row.data_location,
                "data_fingerprint": row.data_fingerprint, "summary": row.summary,
                "description": row.description, "created": row.created.isoformat()}
    if isinstance(row, AdapterVersion):
        return {"domain": row.domain.name, "version": row.version,
                "base_model": row.base_model.name, "lora_config": row.lora_config,
                "artifact_digest": row.artifact_digest,
                "trainable_parameters": row.trainable_parameters,
                "data_fingerprint": row.data_fingerprint,
                "training_config": row.training_config, "metrics": row.metrics,
                "status": row.status, "created": row.created.isoformat()}
    raise TypeError(f"no dict form for {type(row).__name__}")
