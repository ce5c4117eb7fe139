"""The registry's tables (SQLAlchemy 2 ORM).

This module describes the schema for the ORM; the schema itself is created and
changed only by the Alembic revisions in ``migrations/``.  JSON columns hold the
configs that must round-trip exactly (LoRA, training, integrator, metrics).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bumped together with every new revision in migrations/versions; a test checks that
# it equals Alembic's head, so startup can compare versions without importing Alembic.
SCHEMA_HEAD = "0005"
VERSION_TABLE = "xreg_schema_version"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class BaseModel(Base):
    """A language model that adapters are trained on (name or path, plus its shape)."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    family: Mapped[str] = mapped_column(String(32))  # "encoder" or "decoder"
    model_type: Mapped[str] = mapped_column(String(64))
    hidden_size: Mapped[int] = mapped_column(Integer)
    num_layers: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Domain(Base):
    """A product domain: which plugin reads its data, where, and what the data was."""

    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    plugin: Mapped[str] = mapped_column(String(128))
    data_location: Mapped[str] = mapped_column(Text)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The version of the plugin's distribution that loaded the data (None: unknown,
    # registered before revision 0002 or by a plugin that is not an installed package).
    plugin_version: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    # The data this domain had before each refresh, oldest first: fingerprint, plugin
    # version, location, summary and when it was replaced.  Its length + 1 is the
    # current data version; adapters keep the fingerprint they were trained on.
    data_history: Mapped[list[Any]] = mapped_column(default=list)
    # How the splits are made (xcross_registry.splits, canonical text): "user" for the
    # loader's own user-disjoint splits, and for every domain registered before 0005.
    split_strategy: Mapped[str] = mapped_column(String(128), default="user")

    adapters: Mapped[list["AdapterVersion"]] = relationship(back_populates="domain")

    @property
    def data_version(self) -> int:
        return len(self.data_history or []) + 1


class AdapterVersion(Base):
    """One trained (or imported) LoRA adapter of a domain; versions count up per domain."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("domain_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    version: Mapped[int] = mapped_column(Integer)
    lora_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact_digest: Mapped[str] = mapped_column(String(64))
    trainable_parameters: Mapped[int] = mapped_column(Integer)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    training_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    domain: Mapped[Domain] = relationship(back_populates="adapters")
    base_model: Mapped[BaseModel] = relationship()

    @property
    def label(self) -> str:
        return f"{self.domain.name}@v{self.version}"


class Composition(Base):
    """A model composed of frozen source adapters (by reference) by a composition method
    (X-Cross integrators, a linear merge...), with what it trained.

    Stored in the shape of :class:`AdapterVersion`: ``training_config`` holds how it was
    trained (training options, template, run record), ``metrics`` what training measured
    (validation, best epoch, train users, seconds); ``integrator_config`` holds what is
    particular to a composition (method, mode, method settings, parameter counts)."""

    __tablename__ = "compositions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    target_domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    integrator_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact_digest: Mapped[str] = mapped_column(String(64))
    trainable_parameters: Mapped[int] = mapped_column(Integer, default=0)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Since revision 0003 (which moved them here out of training_config).
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)

    target_domain: Mapped[Domain] = relationship()
    sources: Mapped[list["CompositionSource"]] = relationship(
        order_by="CompositionSource.position", cascade="all, delete-orphan")


class CompositionSource(Base):
    """Lineage: the ordered source adapter versions a composition integrates."""

    __tablename__ = "composition_sources"

    composition_id: Mapped[int] = mapped_column(ForeignKey("compositions.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))

    adapter: Mapped[AdapterVersion] = relationship()


class BaselineModel(Base):
    """A trained baseline of a domain (an ID-based SASRec, ...), asked for as
    ``KIND:DOMAIN@vN``; versions count up per (domain, kind).

    Stored in the shape of :class:`AdapterVersion` (``training_config``: the baseline's
    settings under ``training`` and its ``run`` record; ``metrics``: what validation
    measured) without what only language-model scorers have (base model, LoRA, prompt)."""

    __tablename__ = "baseline_models"
    __table_args__ = (UniqueConstraint("domain_id", "kind", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    kind: Mapped[str] = mapped_column(String(32))  # its name in baselines.BASELINES
    version: Mapped[int] = mapped_column(Integer)
    artifact_digest: Mapped[str] = mapped_column(String(64))
    trainable_parameters: Mapped[int] = mapped_column(Integer)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    training_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    domain: Mapped[Domain] = relationship()

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.domain.name}@v{self.version}"


class CandidateSet(Base):
    """Stored evaluation candidates, so every method is scored on identical lists."""

    __tablename__ = "candidate_sets"
    __table_args__ = (UniqueConstraint("data_fingerprint", "split", "protocol", "seed"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(16))
    protocol: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer)
    artifact_digest: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvaluationResult(Base):
    """One evaluation of an adapter, a composition or a baseline on a domain."""

    __tablename__ = "evaluation_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(16))  # adapter | composition | baseline
    subject_name: Mapped[str] = mapped_column(String(128))
    adapter_version_id: Mapped[Optional[int]] = mapped_column(ForeignKey("adapter_versions.id"))
    composition_id: Mapped[Optional[int]] = mapped_column(ForeignKey("compositions.id"))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    protocol: Mapped[str] = mapped_column(String(32))
    split: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    num_users: Mapped[int] = mapped_column(Integer)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    candidates_digest: Mapped[Optional[str]] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    domain: Mapped[Domain] = relationship()


class Tag(Base):
    """Free key/value labels on domains, adapter versions and compositions."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("entity_kind", "entity_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entity_kind: Mapped[str] = mapped_column(String(16))  # domain | adapter | composition
    entity_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(128))
    value: Mapped[str] = mapped_column(Text, default="")
