"""The registry: plain operations over the schema, used by the CLI and by Python code.

``Registry()`` opens the database named by the environment (upgrading its schema on
first use) and the artifact store beside it.  Every operation that can fail on user
input checks everything it can *before* writing, and writes in one transaction, so a
failure leaves the registry exactly as it was.

Many processes may write at once (a team on one PostgreSQL server).  No write reads a
row and then inserts on what it read without a guard: version numbers are taken under
a row lock on their domain, rows that may be created by two processes at once (a base
model on first use, a candidate set) are inserted in a savepoint whose unique-key
failure makes the loser read the winner's row, and names are taken under a lock on the
name (a transaction-level advisory lock on PostgreSQL; SQLite's ``BEGIN IMMEDIATE``
already runs one writer at a time).  A conflict no guard foresaw becomes a
:class:`~xcross_registry.errors.ConflictError`, never a raw driver error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from sqlalchemy import JSON, delete, func, or_, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, selectinload

from . import settings
from .artifacts import open_store
from .data import (DEFAULT_SPLIT_STRATEGY, DomainData, DomainType, Item, validate_domain_data,
                   validate_domain_type)
from .database import explained_errors, open_session_factory
from .errors import (ConflictError, DataError, ModelError, NotFoundError, PluginError,
                     ValidationError, XregError)
from .plugins import PluginSet, describe, get_plugins
from .safe_text import mask_url
from .schema import (AdapterVersion, Base, BaseModel, BaselineModel, Composition, CompositionSource,
                     Domain, EvaluationResult, Tag, utcnow)
from .schema import CandidateSet as CandidateSetRow

if TYPE_CHECKING:  # pragma: no cover
    from .base_model import BaseModelInfo
    from .candidates import CandidateSet

RowT = TypeVar("RowT")
# SQLSTATEs of a transaction that lost to a concurrent one on PostgreSQL: unique or
# foreign-key violation, serialization failure, deadlock.
CONFLICT_SQLSTATES = {"23505", "23503", "40001", "40P01"}

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ADAPTER_LABEL = re.compile(r"(?P<domain>[^@]+)(?:@v?(?P<version>\d+))?")


@dataclass(frozen=True)
class PendingDomain:
    """A domain checked and loaded but not yet registered (:meth:`Registry.load_new_domain`)."""

    row: Domain
    data: DomainData
    domain_type: DomainType


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
        self.display_url = mask_url(self.sessions.kw["bind"].url)
        self.store = open_store(artifacts or settings.artifacts_location())
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
        :class:`~xcross_registry.errors.DatabaseError` after the rollback; a transaction
        that lost to a concurrent writer in a way no guard below foresaw raises
        :class:`~xcross_registry.errors.ConflictError` (nothing of it was written)."""
        try:
            with explained_errors(self.sessions.kw["bind"].url), self.sessions.begin() as session:
                yield session
        except DBAPIError as exc:
            if not _lost_to_concurrent_writer(exc):
                raise
            raise ConflictError("another process changed the registry at the same moment "
                                f"({_constraint_of(exc)}); nothing was written, run the command "
                                "again") from exc

    # ---- domains -------------------------------------------------------------------

    def add_domain(self, name: str, plugin: str, data: str, description: str = "",
                   split: str | None = None) -> Domain:
        """Validate ``data`` with the plugin's loader, split it by the strategy ``split``
        (:mod:`xcross_registry.splits`; ``None``: ``user``, the loader's own splits), then
        register it as domain ``name``."""
        pending = self.load_new_domain(name, plugin, data, description, split)
        with self.session() as session:
            self._insert_domain(session, pending)
        self._data_cache[name] = pending.data
        return pending.row

    def load_new_domain(self, name: str, plugin: str, data: str, description: str = "",
                        split: str | None = None) -> PendingDomain:
        """Check the name, load ``data`` with the plugin and split it, without registering
        anything: the domain row to insert later, with its data.  The data is loaded
        twice: a loader that is not deterministic is refused here, not later.

        ``add-domain --train`` trains on this and inserts the domain together with its
        first adapter in one transaction, so a run killed at any moment (even SIGKILL)
        leaves either both or neither."""
        validate_name(name)
        split = _split_text(split or DEFAULT_SPLIT_STRATEGY)
        with self.session() as session:
            self._check_domain_name(session, name, plugin)
        domain_type = self.plugins.domain_type(plugin)
        location = normalise_location(domain_type, data)
        loaded = load_deterministic(domain_type, location, split)
        row = Domain(name=name, plugin=plugin, data_location=location,
                     data_fingerprint=loaded.fingerprint(), summary=loaded.summary(),
                     description=description, plugin_version=self.plugin_version(plugin),
                     split_strategy=split)
        return PendingDomain(row, loaded, domain_type)

    def _insert_domain(self, session: Session, pending: PendingDomain) -> Domain:
        """Insert a loaded domain's row, its name checked again under a lock on it."""
        _lock_name(session, pending.row.name)
        self._check_domain_name(session, pending.row.name, pending.row.plugin)
        session.add(pending.row)
        session.flush()
        return pending.row

    @staticmethod
    def _check_domain_name(session: Session, name: str, plugin: str) -> None:
        """Refuse a domain name taken by a domain or a composition (one namespace on the
        command line: ``xreg show NAME`` must reach exactly one thing)."""
        if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
            raise ConflictError(f"domain {name!r} already exists; `xreg add-domain {name} "
                                f"--plugin {plugin} --data LOCATION --refresh` re-registers its data")
        if session.scalar(select(Composition.id).where(Composition.name == name)) is not None:
            raise ConflictError(f"{name!r} is the name of a composition; choose another domain name")

    def refresh_domain(self, name: str, plugin: str | None = None, data: str | None = None,
                       split: str | None = None) -> tuple[Domain, bool]:
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
        if split is not None and _split_text(split) != row.split_strategy:
            raise ValidationError(f"domain {name!r} is split by {row.split_strategy!r}, not "
                                  f"{_split_text(split)!r}; a refresh keeps the split strategy "
                                  "(register the other split under a new name)")
        domain_type = self.plugins.domain_type(row.plugin)
        location = normalise_location(domain_type, data) if data is not None else row.data_location
        loaded = load_deterministic(domain_type, location, row.split_strategy)
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
            current = _locked_domain(session, row.id, name)
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
        domain_type = self.plugins.domain_type(row.plugin)
        loaded = load_with(domain_type, row.data_location, row.split_strategy)
        if loaded.fingerprint() != row.data_fingerprint:
            load_deterministic(domain_type, row.data_location, row.split_strategy, loaded)
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
        """Adapters, compositions and trained baselines that would lose their data if
        ``name`` went away."""
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
            baselines = session.scalars(
                select(BaselineModel).where(BaselineModel.domain_id == domain.id)
                .order_by(BaselineModel.kind, BaselineModel.version)).all()
            return {"adapters": [f"{name}@v{a.version}" for a in adapters],
                    "compositions": list(compositions),
                    "baselines": [f"{b.kind}:{name}@v{b.version}" for b in baselines]}

    def remove_domain(self, name: str, force: bool = False) -> dict[str, list[str]]:
        """Remove a domain; with ``force`` also its adapters, compositions, trained
        baselines and results.

        Artifacts stay in the store: they are addressed by content and may be shared."""
        deps = self.dependents(name)
        if not force and any(deps.values()):
            listed = ", ".join(sum(deps.values(), []))
            raise ConflictError(f"domain {name!r} is used by {listed}; remove those first or "
                                "use --force")
        domain = self.domain(name)
        with self.session() as session:
            # Writers of new versions wait for this lock and then find no domain.
            _locked_domain(session, domain.id, name)
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
            session.execute(delete(BaselineModel).where(BaselineModel.domain_id == domain.id))
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
        from .candidates import CandidateSet, parse_protocol, sample_candidates

        row = self.domain(domain)
        key = (CandidateSetRow.data_fingerprint == row.data_fingerprint,
               CandidateSetRow.split == split, CandidateSetRow.protocol == protocol,
               CandidateSetRow.seed == seed)
        with self.session() as session:
            digest = session.scalar(select(CandidateSetRow.artifact_digest).where(*key))
        if digest is None:
            name, negatives = parse_protocol(protocol)  # a label: sampled:100 has 100 negatives
            drawn = sample_candidates(self.domain_data(domain), split, name, seed=seed,
                                      negatives=negatives)
            drawn_digest = self.store.put_bytes(drawn.to_bytes())
            with self.session() as session:
                # Another process may have drawn the same set meanwhile: the first row
                # stored wins, and everyone ranks the winner's bytes.
                digest = _insert_or_get(
                    session, select(CandidateSetRow).where(*key),
                    lambda: CandidateSetRow(data_fingerprint=row.data_fingerprint, split=split,
                                            protocol=protocol, seed=seed,
                                            artifact_digest=drawn_digest)).artifact_digest
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

    def adapter(self, label: str) -> AdapterVersion:
        """``toys`` (its latest LoRA version) or ``toys@v2`` / ``toys@2`` → the adapter version row."""
        match = ADAPTER_LABEL.fullmatch(label or "")
        if match is None:
            raise ValidationError(f"not an adapter name: {label!r} (use DOMAIN or DOMAIN@vN)")
        versions = self.adapters(match["domain"])
        if not versions:
            self.domain(match["domain"])  # raises 'unknown domain' when that is the problem
            raise NotFoundError(f"domain {match['domain']!r} has no adapter yet; train one with "
                                f"'xreg train-adapter {match['domain']}'")
        if match["version"] is None:
            lora = [v for v in versions if v.status != "head-only"]
            if not lora:
                raise NotFoundError(f"domain {match['domain']!r} has only head-only baselines; "
                                    f"train a LoRA adapter with 'xreg train-adapter {match['domain']}'")
            return lora[-1]
        wanted = int(match["version"])
        for version in versions:
            if version.version == wanted:
                return version
        raise NotFoundError(f"unknown adapter {label!r}: {match['domain']} has versions "
                            + ", ".join(f"v{v.version}" for v in versions))

    def head_only_adapter(self, domain: str) -> AdapterVersion:
        """The newest head-only baseline of ``domain`` (``xreg train-adapter D --head-only``)."""
        versions = [v for v in self.adapters(domain) if v.status == "head-only"]
        if not versions:
            self.domain(domain)
            raise NotFoundError(f"domain {domain!r} has no head-only baseline; train one with "
                                f"'xreg train-adapter {domain} --head-only'")
        return versions[-1]

    def add_adapter_version(self, domain: str | PendingDomain, base: "BaseModelInfo", *,
                            artifact_digest: str, lora_config: dict[str, Any],
                            trainable_parameters: int, training_config: dict[str, Any],
                            metrics: dict[str, Any], status: str = "ready") -> AdapterVersion:
        """Add stored artifacts as ``domain``'s next adapter version, in one transaction
        (the version number is taken under a lock on the domain's row, so concurrent runs
        get distinct, consecutive ones).

        ``domain`` may be a :class:`PendingDomain` (:meth:`load_new_domain`): the domain
        is then registered in the same transaction, with this as its v1."""
        with self.session() as session:
            if isinstance(domain, PendingDomain):
                domain_row = self._insert_domain(session, domain)
            else:
                domain_row = _locked_domain(session, self.domain(domain).id, domain)
            base_row = _base_model_row(session, base)
            version = (session.scalar(select(func.max(AdapterVersion.version))
                                      .where(AdapterVersion.domain_id == domain_row.id)) or 0) + 1
            session.add(AdapterVersion(
                domain_id=domain_row.id, base_model_id=base_row.id, version=version,
                lora_config=lora_config, artifact_digest=artifact_digest,
                trainable_parameters=int(trainable_parameters),
                data_fingerprint=domain_row.data_fingerprint, training_config=training_config,
                metrics=metrics, status=status))
            name = domain_row.name
        if isinstance(domain, PendingDomain):
            self._data_cache[name] = domain.data
        return self.adapter(f"{name}@v{version}")

    # ---- compositions ------------------------------------------------------------------

    def find_composition(self, name: str) -> Composition | None:
        """The composition called ``name`` with its target and lineage, or ``None``."""
        with self.session() as session:
            return session.scalar(_with_lineage(select(Composition).where(Composition.name == name)))

    def composition(self, name: str) -> Composition:
        row = self.find_composition(name)
        if row is None:
            raise NotFoundError(f"unknown composition {name!r}")
        return row

    def compositions(self) -> list[Composition]:
        with self.session() as session:
            return list(session.scalars(_with_lineage(select(Composition).order_by(Composition.name))))

    def check_composition_name(self, name: str, session: Session | None = None) -> None:
        """Refuse a composition name that is taken by a composition or a domain (names
        share one namespace on the command line)."""
        with contextlib.ExitStack() as stack:
            session = session or stack.enter_context(self.session())
            if session.scalar(select(Composition.id).where(Composition.name == name)) is not None:
                raise ConflictError(f"composition {name!r} already exists")
            if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
                raise ConflictError(f"{name!r} is a domain name; choose another composition name")

    def add_composition(self, name: str, target: str, sources: list[AdapterVersion], *,
                        artifact_digest: str, integrator_config: dict[str, Any],
                        training_config: dict[str, Any], metrics: dict[str, Any],
                        trainable_parameters: int) -> Composition:
        """Add a composition row with its lineage (its ordered sources), atomically; the
        name is checked again inside the transaction that takes it, under a lock on it."""
        target_row = self.domain(target)
        with self.session() as session:
            _lock_name(session, name)
            self.check_composition_name(name, session)
            row = Composition(name=name, target_domain_id=target_row.id,
                              artifact_digest=artifact_digest, integrator_config=integrator_config,
                              training_config=training_config, metrics=metrics,
                              trainable_parameters=int(trainable_parameters),
                              data_fingerprint=target_row.data_fingerprint)
            row.sources = [CompositionSource(position=i, adapter_version_id=v.id)
                           for i, v in enumerate(sources)]
            session.add(row)
        return self.composition(name)

    # ---- trained baselines -------------------------------------------------------------

    def baseline_models(self, domain: str | None = None, kind: str | None = None) -> list[BaselineModel]:
        """Stored trained baselines (of one domain, of one kind), by domain, kind and version."""
        with self.session() as session:
            query = (select(BaselineModel).join(Domain).options(selectinload(BaselineModel.domain))
                     .order_by(Domain.name, BaselineModel.kind, BaselineModel.version))
            if domain is not None:
                query = query.where(Domain.name == domain)
            if kind is not None:
                query = query.where(BaselineModel.kind == kind)
            return list(session.scalars(query))

    def baseline_model(self, kind: str, label: str) -> BaselineModel:
        """``kind``'s stored baseline of ``tools`` (the latest version) or ``tools@v2``."""
        match = ADAPTER_LABEL.fullmatch(label or "")
        if match is None:
            raise ValidationError(f"not a baseline name: {kind}:{label} (use {kind}:DOMAIN or "
                                  f"{kind}:DOMAIN@vN)")
        domain = match["domain"]
        versions = self.baseline_models(domain, kind)
        if not versions:
            self.domain(domain)  # raises 'unknown domain' when that is the problem
            raise NotFoundError(f"domain {domain!r} has no {kind} baseline yet; train one with "
                                f"'xreg train-baseline {kind} {domain}'")
        if match["version"] is None:
            return versions[-1]
        for version in versions:
            if version.version == int(match["version"]):
                return version
        raise NotFoundError(f"unknown baseline {kind}:{label}: {kind}:{domain} has versions "
                            + ", ".join(f"v{v.version}" for v in versions))

    def add_baseline_model(self, domain: str, kind: str, *, artifact_digest: str,
                           trainable_parameters: int, training_config: dict[str, Any],
                           metrics: dict[str, Any]) -> BaselineModel:
        """Add a stored trained baseline as ``domain``'s next version of ``kind``, in one
        transaction (the version number is taken under the domain's row lock, as for adapters)."""
        domain_row = self.domain(domain)
        with self.session() as session:
            _locked_domain(session, domain_row.id, domain)
            version = (session.scalar(select(func.max(BaselineModel.version)).where(
                BaselineModel.domain_id == domain_row.id, BaselineModel.kind == kind)) or 0) + 1
            session.add(BaselineModel(
                domain_id=domain_row.id, kind=kind, version=version, artifact_digest=artifact_digest,
                trainable_parameters=int(trainable_parameters),
                data_fingerprint=domain_row.data_fingerprint, training_config=training_config,
                metrics=metrics))
        return self.baseline_model(kind, f"{domain}@v{version}")

    # ---- evaluations -------------------------------------------------------------------

    def add_evaluation(self, *, subject_kind: str, subject_name: str, domain: str, protocol: str,
                       split: str, metrics: dict[str, Any], num_users: int,
                       candidates_digest: str | None, adapter_version_id: int | None = None,
                       composition_id: int | None = None) -> int:
        """Record one evaluation of a subject on ``domain``'s current data; its row id."""
        domain_row = self.domain(domain)
        with self.session() as session:
            row = EvaluationResult(
                subject_kind=subject_kind, subject_name=subject_name,
                adapter_version_id=adapter_version_id, composition_id=composition_id,
                domain_id=domain_row.id, protocol=protocol, split=split, metrics=metrics,
                num_users=int(num_users), data_fingerprint=domain_row.data_fingerprint,
                candidates_digest=candidates_digest)
            session.add(row)
            session.flush()
            return row.id

    def evaluations(self, domain: str | None = None, protocol: str | None = None) -> list[dict]:
        """Stored evaluation rows, oldest first, as JSON-ready dicts."""
        with self.session() as session:
            query = (select(EvaluationResult, Domain.name).join(Domain)
                     .order_by(EvaluationResult.id))
            if domain is not None:
                query = query.where(Domain.name == domain)
            if protocol is not None:
                query = query.where(EvaluationResult.protocol == protocol)
            return [{"id": r.id, "subject_kind": r.subject_kind, "subject": r.subject_name,
                     "domain": name, "protocol": r.protocol, "split": r.split, "users": r.num_users,
                     "metrics": r.metrics.get("summary", {}),
                     **{k: v for k, v in r.metrics.items() if k != "summary"},
                     "data_fingerprint": r.data_fingerprint, "candidates_digest": r.candidates_digest,
                     "created": r.created.isoformat()}
                    for r, name in session.execute(query)]

    # ---- tags ------------------------------------------------------------------------

    def set_tag(self, kind: str, entity_id: int, key: str, value: str) -> None:
        with self.session() as session:
            row = _insert_or_get(session, select(Tag).where(Tag.entity_kind == kind,
                                                            Tag.entity_id == entity_id, Tag.key == key),
                                 lambda: Tag(entity_kind=kind, entity_id=entity_id, key=key, value=value))
            row.value = value

    def tags(self, kind: str, entity_id: int) -> dict[str, str]:
        with self.session() as session:
            rows = session.scalars(select(Tag).where(Tag.entity_kind == kind,
                                                     Tag.entity_id == entity_id))
            return {row.key: row.value for row in rows}

    # ---- artifacts -------------------------------------------------------------------

    def artifact_references(self) -> list[Any]:
        """Every stored value that can name an artifact (digest columns, and JSON columns,
        which hold digests in configs and records), for garbage collection to follow."""
        values: list[Any] = []
        with self.session() as session:
            for table in Base.metadata.sorted_tables:
                columns = [c for c in table.columns
                           if c.name.endswith("digest") or isinstance(c.type, JSON)]
                if columns:
                    values.extend(value for row in session.execute(select(*columns)) for value in row)
        return values

    def count(self, table: type) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(table))


def _insert_or_get(session: Session, query, make: Callable[[], RowT]) -> RowT:
    """The row ``query`` finds, or ``make()`` inserted when there is none.

    Two processes may both find none: the insert runs in a savepoint, and the one whose
    insert hits the unique key rolls back only the savepoint and reads the winner's row
    (on PostgreSQL the loser's insert waits for the winner's commit, so it is there)."""
    row = session.scalar(query)
    if row is not None:
        return row
    row = make()
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        winner = session.scalar(query)
        if winner is None:  # not a lost race: another constraint failed
            raise
        return winner
    return row


def _locked_domain(session: Session, domain_id: int, name: str) -> Domain:
    """The domain's row, locked until the transaction ends (``SELECT … FOR UPDATE``;
    SQLite runs one writer at a time anyway): what serialises version numbers."""
    row = session.scalar(select(Domain).where(Domain.id == domain_id).with_for_update())
    if row is None:
        raise NotFoundError(f"unknown domain {name!r} (removed by another command meanwhile)")
    return row


def _lock_name(session: Session, name: str) -> None:
    """Take ``name`` for this transaction on PostgreSQL (a transaction-level advisory lock
    keyed by the name's hash), so that a domain and a composition cannot take one name
    at once: the second waits, then its name check sees the first."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(f"xreg name {name}".encode()).digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _lost_to_concurrent_writer(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.orig, "sqlstate", None) in CONFLICT_SQLSTATES


def _constraint_of(exc: DBAPIError) -> str:
    """The constraint a conflict hit, for the one-line message (no SQL, no values)."""
    diag = getattr(exc.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name:
        return name
    first = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    return first[:120]


def _base_model_row(session: Session, info: "BaseModelInfo") -> BaseModel:
    """The base model's row, added on first use (by one of any number of concurrent
    writers); a known name with another shape is refused."""
    row = _insert_or_get(session, select(BaseModel).where(BaseModel.name == info.name),
                         lambda: BaseModel(name=info.name, family=info.family,
                                           model_type=info.model_type,
                                           hidden_size=info.hidden_size, num_layers=info.num_layers))
    if (row.hidden_size, row.num_layers) != (info.hidden_size, info.num_layers):
        raise ModelError(f"base model {info.name!r} is registered with hidden size "
                         f"{row.hidden_size} and {row.num_layers} layers, not "
                         f"{info.hidden_size} and {info.num_layers}")
    return row


def _with_lineage(query):
    """Eager-load what a composition's readers use (target, sources with their domain and
    base model), so listing N compositions is a few queries, not N."""
    adapter = selectinload(Composition.sources).selectinload(CompositionSource.adapter)
    return query.options(selectinload(Composition.target_domain),
                         adapter.selectinload(AdapterVersion.domain),
                         adapter.selectinload(AdapterVersion.base_model))


def _split_text(split: str) -> str:
    from .splits import parse_split

    return parse_split(split).text


def load_with(domain_type: DomainType, location: str,
              split: str = DEFAULT_SPLIT_STRATEGY) -> DomainData:
    """Run a plugin's loader, check its output against the data contract
    (:func:`~xcross_registry.data.validate_domain_data`) and make the splits of the
    strategy ``split`` (checked again).  Anything but our own errors is reported as the
    plugin's, ``SystemExit`` and ``KeyboardInterrupt`` raised by a loader included: a
    plugin never ends the command without its one line."""
    from .splits import apply_split, disjoint_users

    validate_domain_type(domain_type)
    try:
        loaded = domain_type.load(location)
    except XregError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        raise PluginError(f"plugin {domain_type.name!r} failed to load {location}: "
                          f"{describe(exc)}") from exc
    if not isinstance(loaded, DomainData):
        raise PluginError(f"plugin {domain_type.name!r} returned {type(loaded).__name__}, "
                          "not DomainData")
    validate_domain_data(loaded, domain_type, location)
    if split == DEFAULT_SPLIT_STRATEGY:
        return loaded
    made = apply_split(loaded, split, domain_type.name)
    validate_domain_data(made, domain_type, f"{location} (split {made.split_strategy})",
                         disjoint_users=disjoint_users(split))
    return made


def load_deterministic(domain_type: DomainType, location: str, split: str = DEFAULT_SPLIT_STRATEGY,
                       first: DomainData | None = None) -> DomainData:
    """:func:`load_with` twice (or once more after ``first``); a loader whose two results
    differ is refused as non-deterministic, since every later command would otherwise
    find "changed" data."""
    first = first if first is not None else load_with(domain_type, location, split)
    again = load_with(domain_type, location, split)
    if again.fingerprint() != first.fingerprint():
        raise DataError(f"plugin {domain_type.name!r} is non-deterministic: it loaded {location} "
                        f"twice with different results (fingerprints {first.fingerprint()[:12]} and "
                        f"{again.fingerprint()[:12]}); a loader must return the same data for the "
                        "same location (seed every random choice from its options)")
    return first


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
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
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
                "split": row.split_strategy, "data_version": row.data_version, "data_history": row.data_history or [],
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
    if isinstance(row, BaselineModel):
        return {"name": row.label, "kind": row.kind, "domain": row.domain.name,
                "version": row.version, "artifact_digest": row.artifact_digest,
                "trainable_parameters": row.trainable_parameters,
                "data_fingerprint": row.data_fingerprint,
                "training_config": row.training_config, "metrics": row.metrics,
                "created": row.created.isoformat()}
    raise TypeError(f"no dict form for {type(row).__name__}")
