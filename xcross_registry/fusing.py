"""Registering a fused copy of a trained model: ``xreg fuse NAME --with ID_MODEL``.

The fusion itself (the math, the fit, the stored record) is :mod:`xcross_registry.fusion`;
this module adds a model that already exists, fused, as a row of its own, so the plain
and the fused model sit side by side on the board and compare user by user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ValidationError
from .fusion import check_id_model, fit_fusion

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry


def fuse(registry: "Registry", name: str, with_model: str, *, new_name: str | None = None,
         valid_users: int | None = None) -> str:
    """Fit a fusion of the registered model ``name`` (a composition or an adapter version,
    not yet fused) with the stored ID model ``with_model``, and register the fused model as
    its own row, sharing the text model's stored weights: a composition ``new_name``
    (default ``NAME-KIND``, e.g. ``tools-x-sasrec``), or for an adapter the domain's next
    version.  The fit uses the model's own run's fraction, seed and validation settings
    (``valid_users`` overrides the cap).  Returns the new row's name or label."""
    from .base_model import BaseModelInfo
    from .registry import validate_name
    from .subjects import load_subject, resolve_subject

    subject = resolve_subject(registry, name)
    if subject.kind == "baseline":
        raise ValidationError(f"{name} is a baseline; fuse an adapter or a composition with an ID model")
    if subject.record is not None and subject.record.fusion:
        raise ValidationError(f"{subject.name} is already fused with {subject.record.fusion['with']}")
    id_name, _ = check_id_model(registry, with_model, subject.domain)
    training = subject.record.training if subject.record is not None else {}
    if subject.kind == "composition":
        new_name = validate_name(new_name or f"{subject.name}-{id_name.partition(':')[0]}", "composition")
        registry.check_composition_name(new_name)
    elif new_name is not None:
        raise ValidationError("--name applies to compositions; a fused adapter is its domain's next version")
    loaded = load_subject(registry, subject)
    record = fit_fusion(registry, loaded.score, id_name, subject.domain,
                        fraction=training.get("fraction", 1.0), seed=training.get("seed", 0),
                        valid_users=valid_users or training.get("valid_users", 200),
                        negatives=training.get("valid_negatives", 29))
    if subject.kind == "composition":
        row = registry.composition(subject.name)
        registry.add_composition(
            new_name, row.target_domain.name, [s.adapter for s in row.sources],
            artifact_digest=row.artifact_digest, integrator_config={**row.integrator_config, "fusion": record},
            training_config={**row.training_config, "fused_from": row.name}, metrics=row.metrics,
            trainable_parameters=row.trainable_parameters)
        return new_name
    version = registry.adapter(subject.name)
    base = version.base_model
    info = BaseModelInfo(name=base.name, family=base.family, hidden_size=base.hidden_size,
                         num_layers=base.num_layers, model_type=base.model_type)
    return registry.add_adapter_version(
        version.domain.name, info, artifact_digest=version.artifact_digest, lora_config=version.lora_config,
        trainable_parameters=version.trainable_parameters,
        training_config={**version.training_config, "fusion": record, "fused_from": version.label},
        metrics=version.metrics, status=version.status).label
