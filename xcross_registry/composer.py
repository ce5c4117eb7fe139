"""The composer: build, train, store and reload compositions of source adapters.

A composition references its source adapter versions by id and digest (it never
copies them) and stores only what it trained (for X-Cross the integrators, the mixing
weights and the scorer head; with a popularity prior its weight too) in one safetensors
file beside its settings, plus the prior's item counts (``item_counts.json``), which are
data rather than trained weights.  Reloading
rebuilds the encoder from the same base model and the same stored source adapters, so
scores are identical in a fresh process.

How the sources become one encoder is the composition method's business (a table:
:mod:`xcross_registry.composition_methods`); everything else (checking the sources,
the scoring mode, the head, training, storing, the lineage) is the same for every
method and lives here.

torch, transformers and peft are imported only inside the functions that build or run
a model: listing and showing compositions reads the registry alone and starts fast.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .composition_methods import CompositionMethod, FitContext, SourceAdapter, composition_method
from .errors import ModelError, ValidationError
from .fusion import check_id_model, fit_for_run
from .progress import AUTO
from .records import TrainingRecord
from .registry import Registry, validate_name
from .runs import FinishedRun, TrainingJob, train_and_register
from .schema import AdapterVersion, Composition
from .stored_folders import store_folder, write_folder

if TYPE_CHECKING:  # pragma: no cover
    from .data import DomainData
    from .scorer import Scorer
    from .templates import PromptTemplate
    from .training import Deadline, TrainingConfig, TrainingProgress

TRAINED_FILE = "trained.safetensors"
SETTINGS_FILE = "composition.json"
MANIFEST_KIND = "xreg.composition.v1"


@dataclass
class ParameterCounts:
    """What a composition trained, against the size of one source adapter's LoRA."""

    integrator_parameters: int
    head_parameters: int
    source_lora_parameters: int

    def as_dict(self) -> dict[str, Any]:
        one = max(self.source_lora_parameters, 1)
        return {"integrator_parameters": self.integrator_parameters,
                "head_parameters": self.head_parameters,
                "source_lora_parameters": self.source_lora_parameters,
                "integrators_over_one_adapter": round(self.integrator_parameters / one, 4),
                "head_over_one_adapter": round(self.head_parameters / one, 4)}


# ---- checking and building ---------------------------------------------------------------

def check_sources(registry: Registry, sources: Sequence[str], target: str) -> list[AdapterVersion]:
    """Resolve and check a composition's sources and target before any work starts."""
    if len(sources) < 2:
        raise ValidationError(f"X-Cross needs at least two source adapters, got {len(sources)}: "
                              f"{', '.join(sources) or 'none'}")
    versions = [registry.adapter(label) for label in sources]
    if len({v.id for v in versions}) != len(versions):
        raise ValidationError("the same source adapter is listed twice")
    for version in versions:
        if version.status == "head-only":
            raise ValidationError(f"{version.label} is a head-only baseline, not a LoRA adapter")
    bases = sorted({v.base_model.name for v in versions})
    if len(bases) != 1:
        raise ModelError("sources are on different base models: " + ", ".join(
            f"{v.label} on {v.base_model.name}" for v in versions))
    if not registry.domain_data(target).train:
        raise ValidationError(f"target domain {target!r} has no training users")
    return versions


def sources_mode(versions: Sequence[AdapterVersion], mode: str | None = None) -> str | None:
    """The scoring mode of a composition: ``mode`` when given, else the one its sources
    share (None: none of them records one, the scorer's default applies).  Sources of
    different modes need an explicit choice rather than a silent default."""
    if mode is not None:
        return mode
    modes = {record.mode for record in map(TrainingRecord.of, versions) if record.mode is not None}
    if len(modes) > 1:
        raise ValidationError("the sources were trained in different scoring modes ("
                              + ", ".join(f"{v.label}: {TrainingRecord.of(v).mode}" for v in versions)
                              + "); choose the composition's with --mode")
    return modes.pop() if modes else None


@contextlib.contextmanager
def _source_adapters(registry: Registry,
                     versions: Sequence[AdapterVersion]) -> Iterator[list[SourceAdapter]]:
    """The stored source adapters written out (digest-checked) into staging folders."""
    with registry.store.staging_folder("sources") as root:
        yield [SourceAdapter(v.label, write_folder(registry, v.artifact_digest, root / f"source{i}"))
               for i, v in enumerate(versions)]


def build_scorer(registry: Registry, versions: Sequence[AdapterVersion], *, method: str = "xcross",
                 mode: str | None = None, settings: Any | None = None,
                 popularity_prior: bool = False) -> "Scorer":
    """A fresh composed scorer over ``versions``: the method's encoder (sources frozen)
    and a head; what requires grad (the method's trainable parts and the head) trains.

    The scorer settings are the first source's, except the mode (see
    :func:`sources_mode`) and ``popularity_prior``, which is the composition's own
    switch whatever the sources were trained with: a source's prior counted another
    domain's items.

    ``settings`` are the method's (e.g. an :class:`~xcross_registry.xcross.XCrossConfig`;
    None: its defaults).  The head starts as the average of the sources' heads when
    they have the same shape (each X-Cross stream starts as its source model, and the
    mix as their average)."""
    import torch
    from safetensors.torch import load_file

    from .base_model import load_base_model
    from .scorer import HEAD_FILE, Scorer, ScorerConfig

    chosen = composition_method(method)
    model, tokenizer, info = load_base_model(versions[0].base_model.name)
    first = versions[0].training_config.get("scorer", {})
    resolved = sources_mode(versions, mode)
    config = ScorerConfig(**{**first, **({"mode": resolved} if resolved is not None else {}),
                             "target_modules": None, "popularity_prior": popularity_prior}).resolve(info)
    with _source_adapters(registry, versions) as sources:
        encoder = chosen.build_encoder(model, sources, chosen.settings(settings))
        scorer = Scorer(encoder, tokenizer, config, info)
        heads = [load_file(str(s.folder / HEAD_FILE)) for s in sources if (s.folder / HEAD_FILE).is_file()]
    own = scorer.head.state_dict()
    if len(heads) == len(versions) and all(h.keys() == own.keys() and
                                           all(h[k].shape == own[k].shape for k in own) for h in heads):
        scorer.head.load_state_dict({k: torch.stack([h[k] for h in heads]).mean(0) for k in own})
    return scorer


def fit_context(scorer: "Scorer", data: "DomainData", template: "PromptTemplate",
                config: "TrainingConfig") -> FitContext:
    """What a method may fit its settings on: the validation users of the run's fraction
    (:func:`~xcross_registry.training.allowed_validation_users`), with the candidates
    training validates on."""
    from .training import allowed_validation_users, validation_set

    allowed = allowed_validation_users(data, config.fraction, config.valid_users)
    valid = validation_set(data, seed=config.seed, users=allowed, negatives=config.valid_negatives)
    if valid is None:
        import numpy as np

        return FitContext(scorer, data, template, [], np.zeros((0, config.valid_negatives + 1), dtype=np.int64),
                          config.seed)
    return FitContext(scorer, data, template, valid.users, valid.candidates, config.seed)


def parameter_counts(scorer: "Scorer", versions: Sequence[AdapterVersion]) -> ParameterCounts:
    head = sum(p.numel() for p in scorer.output_parameters())
    trainable = sum(p.numel() for p in scorer.parameters() if p.requires_grad)
    return ParameterCounts(integrator_parameters=trainable - head, head_parameters=head,
                           source_lora_parameters=int(versions[0].training_config["lora_parameters"]))


# ---- composing ---------------------------------------------------------------------------

@dataclass
class CompositionPlan:
    """One composition, checked and ready to train: :meth:`prepare` builds its model
    (fitting the method's settings on validation users when the method fits any) and
    :meth:`register` stores what a finished run trained and adds the row with its
    lineage.  ``record`` is stored with the row as well (an automatic composition's
    search, ``auto``)."""

    registry: Registry
    name: str
    target: str
    method: CompositionMethod
    versions: list[AdapterVersion]
    mode: str | None
    settings: Any
    popularity_prior: bool
    fuse_with: str | None
    training_config: "TrainingConfig"
    prompt: "PromptTemplate"
    search: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def prepare(self) -> TrainingJob:
        scorer = build_scorer(self.registry, self.versions, method=self.method.name, mode=self.mode,
                              settings=self.settings, popularity_prior=self.popularity_prior)
        data = self.registry.domain_data(self.target)
        self.settings, self.search = self.method.fit(
            fit_context(scorer, data, self.prompt, self.training_config), self.settings)
        return TrainingJob(scorer, data, self.prompt)

    def register(self, folder: Path, run: FinishedRun) -> str:
        """Store what the composition trained and add its row with its lineage."""
        from safetensors.torch import save_file

        registry, method, versions = self.registry, self.method, self.versions
        scorer = run.job.scorer
        trained = {key: tensor.detach().float().cpu().contiguous()
                   for key, tensor in scorer.trainable_state().items()}
        save_file(trained, str(folder / TRAINED_FILE), metadata={"format": "pt"})
        if scorer.item_prior is not None:  # its weight is in TRAINED_FILE with the rest
            scorer.item_prior.save(folder, weight=False)
        stored_settings = method.settings_to_json(self.settings)
        (folder / SETTINGS_FILE).write_text(json.dumps(
            {"method": method.name, "scorer": scorer.config.to_dict(), "base_model": scorer.base.to_dict(),
             "settings": stored_settings, "template": self.prompt.key,
             "sources": [{"adapter": v.label, "digest": v.artifact_digest} for v in versions]},
            indent=2, sort_keys=True) + "\n")
        digest = store_folder(registry, folder, kind=MANIFEST_KIND)
        # Measured now, from the weights just trained, so `show --plot` needs no model.
        integration = method.after_training(scorer, run.job.data, self.prompt, self.name,
                                            [v.label for v in versions])
        count = parameter_counts(scorer, versions)
        fusion = fit_for_run(registry, run, self.fuse_with, self.target) if self.fuse_with else None
        registry.add_composition(
            self.name, self.target, versions, artifact_digest=digest,
            integrator_config={"method": method.name, "mode": scorer.config.mode,
                               "popularity_prior": self.popularity_prior,
                               **({method.name: stored_settings} if stored_settings is not None else {}),
                               "parameters": count.as_dict(),
                               **({"integration": integration} if integration else {}),
                               **({"search": self.search} if self.search else {}),
                               **({"fusion": fusion} if fusion else {}), **self.record},
            training_config=run.training_config(), metrics=run.metrics(),
            trainable_parameters=count.integrator_parameters + count.head_parameters)
        return self.name


def plan_composition(registry: Registry, sources: Sequence[str], target: str, *, name: str | None = None,
                     method: str = "xcross", mode: str | None = None, settings: Any | None = None,
                     popularity_prior: bool = False, fuse_with: str | None = None,
                     training_config: "TrainingConfig | None" = None,
                     template: str | None = None) -> CompositionPlan:
    """Check everything about a composition before any model loads (see :func:`compose`)."""
    from .training import TrainingConfig

    training_config = training_config or TrainingConfig()
    chosen = composition_method(method)
    versions = check_sources(registry, sources, target)  # an unknown source first, then the name
    name = validate_name(f"{target}-{chosen.default_suffix}" if name is None else name, "composition")
    registry.check_composition_name(name)
    settings = chosen.settings(settings)
    if chosen.validates_start(settings) and not training_config.validate_start:
        training_config = replace(training_config, validate_start=True)
    if fuse_with is not None:
        check_id_model(registry, fuse_with, registry.domain(target).name)
    return CompositionPlan(registry, name, target, chosen, versions, sources_mode(versions, mode), settings,
                           popularity_prior, fuse_with, training_config,
                           registry.domain_type(target).template(template))


def compose(registry: Registry, sources: Sequence[str], target: str, *, name: str | None = None,
            method: str = "xcross", mode: str | None = None, settings: Any | None = None,
            popularity_prior: bool = False, fuse_with: str | None = None,
            training_config: "TrainingConfig | None" = None, template: str | None = None,
            progress: "Callable[[TrainingProgress], None] | str | None" = AUTO,
            should_stop: "Callable[[], bool] | None" = None,
            deadline: "Deadline | None" = None) -> Composition:
    """Train a composition of ``sources`` for ``target`` with ``method`` (its
    ``settings``: see :func:`build_scorer`) and register it with its lineage;
    ``popularity_prior`` adds the learned item-popularity prior, counted on the target
    users the run trains on (:mod:`xcross_registry.item_prior`); ``fuse_with`` (a stored
    ID model of the target, ``sasrec:T@vN``) fuses its scores with the composition's by
    weights fitted on validation users after training (:mod:`xcross_registry.fusion`).

    :func:`~xcross_registry.auto_composition.auto_compose` chooses the sources and the
    method on the target's validation users instead.  Everything is checked before a
    model loads.  ``deadline`` bounds the run
    (default: ``training_config.max_minutes`` from the run's start; the CLI passes one
    from the command's start).  Under a multi-process launch every process trains, the
    main process alone writes the artifacts and the registry row, and every process
    returns that row."""
    plan = plan_composition(registry, sources, target, name=name, method=method, mode=mode,
                            settings=settings, popularity_prior=popularity_prior, fuse_with=fuse_with,
                            training_config=training_config, template=template)
    return registry.composition(train_and_register(
        registry, plan.prepare, plan.register, plan.training_config, staging="compose", progress=progress,
        should_stop=should_stop, deadline=deadline, label=plan.name))


def load_composition(registry: Registry, name: str) -> tuple["Scorer", Composition]:
    """A registered composition, rebuilt from its stored sources and trained weights."""
    from safetensors.torch import load_file

    row = registry.composition(name)
    versions = [source.adapter for source in row.sources]
    config = row.integrator_config
    method = composition_method(config["method"])
    with registry.store.staging_folder("load") as folder:
        write_folder(registry, row.artifact_digest, folder, kind=MANIFEST_KIND)
        stored = json.loads((folder / SETTINGS_FILE).read_text())
        for recorded, version in zip(stored["sources"], versions):
            if recorded["digest"] != version.artifact_digest:
                raise ModelError(f"composition {name!r} was trained on {recorded['adapter']} with "
                                 f"digest {recorded['digest'][:12]}, the registry now has "
                                 f"{version.artifact_digest[:12]}")
        trained = load_file(str(folder / TRAINED_FILE))
        # Compositions stored before the prior existed have no switch: none, as before.
        scorer = build_scorer(registry, versions, method=method.name, mode=config["mode"],
                              settings=method.settings_from_json(config.get(method.name)),
                              popularity_prior=bool(config.get("popularity_prior", False)))
        if scorer.item_prior is not None:
            scorer.item_prior.load(folder, weight=False)
    expected = set(scorer.trainable_state())
    if set(trained) != expected:
        raise ModelError(f"composition {name!r}: stored weights do not match its structure")
    scorer.load_trainable_state(trained)
    scorer.requires_grad_(False)
    scorer.eval()
    return scorer, row


def as_dict(row: Composition) -> dict[str, Any]:
    return {"name": row.name, "target": row.target_domain.name,
            "sources": [{"adapter": s.adapter.label, "digest": s.adapter.artifact_digest,
                         "base_model": s.adapter.base_model.name} for s in row.sources],
            "method": row.integrator_config.get("method"), "mode": row.integrator_config.get("mode"),
            "integrator_config": row.integrator_config, "training_config": row.training_config,
            "metrics": row.metrics, "trainable_parameters": row.trainable_parameters,
            "parameters": row.integrator_config.get("parameters"),
            "artifact_digest": row.artifact_digest, "data_fingerprint": row.data_fingerprint,
            "created": row.created.isoformat()}


def integration_weights(registry: Registry, name: str) -> dict[str, Any]:
    """What the trained parts of a composition do (for X-Cross: its integration weights,
    see :func:`~xcross_registry.xcross.integration.measure_integration`): as recorded
    when the composition was trained, without loading a model; measured again from the
    stored weights for compositions registered before that record existed."""
    row = registry.composition(name)
    method = composition_method(row.integrator_config["method"])
    if not method.has_integrators:
        raise ValidationError(f"{name} is a {method.name} {method.subject_kind}: "
                              "it has no integrators")
    if row.integrator_config.get("integration"):
        return row.integrator_config["integration"]
    scorer, row = load_composition(registry, name)
    data = registry.domain_data(row.target_domain.name)
    template = registry.domain_type(row.target_domain.name).template_for(
        TrainingRecord.of(row).template)
    return method.after_training(scorer, data, template, name, [s.adapter.label for s in row.sources])
