"""The composer: build, train, store and reload X-Cross compositions and their baselines.

A composition references its source adapter versions by id and digest (it never
copies them) and stores only what it trained, the integrators, the mixing weights and
the scorer head, in one safetensors file beside its settings.  Reloading rebuilds the
multi-stream encoder from the same base model and the same stored source adapters, so
scores are identical in a fresh process.

Also here, because it composes sources too: the fixed linear merge baseline (peft's
``add_weighted_adapter``, method ``linear-merge``) with only the head trained.

torch, transformers and peft are imported only inside the functions that build or run
a model: listing and showing compositions reads the registry alone and starts fast.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .adapters import (PEFT_WEIGHTS, _signals_interrupt, resolve_adapter, store_folder,
                       write_folder)
from .errors import ConflictError, ModelError, NotFoundError, ValidationError
from .progress import AUTO, training_display
from .registry import Registry, validate_name
from .schema import AdapterVersion, Composition, CompositionSource, Domain

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import Scorer
    from .training import Deadline, TrainingConfig, TrainingProgress, TrainingResult
    from .xcross import XCrossConfig

METHODS = ("xcross", "linear-merge")
TRAINED_FILE = "trained.safetensors"
SETTINGS_FILE = "composition.json"


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
    versions = [resolve_adapter(registry, label) for label in sources]
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


def _source_mode(versions: Sequence[AdapterVersion]) -> str:
    modes = {v.training_config.get("scorer", {}).get("mode", "cross") for v in versions}
    return modes.pop() if len(modes) == 1 else "cross"


@contextlib.contextmanager
def _source_folders(registry: Registry, versions: Sequence[AdapterVersion]) -> Iterator[list[Path]]:
    """The stored source adapters written out (digest-checked) into staging folders."""
    with registry.store.staging_folder("sources") as root:
        yield [write_folder(registry, v.artifact_digest, root / f"source{i}")
               for i, v in enumerate(versions)]


def build_scorer(registry: Registry, versions: Sequence[AdapterVersion], *, method: str = "xcross",
                 mode: str | None = None, xcross_config: "XCrossConfig | None" = None) -> "Scorer":
    """A fresh composed scorer over ``versions``; only integrators, mix and head train.

    The head starts as the average of the sources' heads when they have the same
    shape (each stream starts as its source model, and the mix as their average)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import load_file

    from .scorer import HEAD_FILE, LoraEncoder, Scorer, ScorerConfig, XCrossStates, load_base_model
    from .xcross import LoraSource, XCrossConfig, XCrossEncoder

    if method not in METHODS:
        raise ValidationError(f"unknown composition method {method!r}; use {' or '.join(METHODS)}")
    model, tokenizer, info = load_base_model(versions[0].base_model.name)
    first = versions[0].training_config.get("scorer", {})
    config = ScorerConfig(**{**first, "mode": mode or _source_mode(versions),
                             "target_modules": None}).resolve(info)
    with _source_folders(registry, versions) as folders:
        if method == "xcross":
            sources = [LoraSource(load_file(str(f / PEFT_WEIGHTS)), LoraConfig.from_pretrained(str(f)),
                                  name=v.label) for f, v in zip(folders, versions)]
            encoder = XCrossStates(XCrossEncoder(model, sources, xcross_config or XCrossConfig()))
        else:
            encoder = LoraEncoder(_linear_merge(model, folders))
        scorer = Scorer(encoder, tokenizer, config, info)
        heads = [load_file(str(f / HEAD_FILE)) for f in folders if (f / HEAD_FILE).is_file()]
    own = scorer.head.state_dict()
    if len(heads) == len(versions) and all(h.keys() == own.keys() and
                                           all(h[k].shape == own[k].shape for k in own) for h in heads):
        scorer.head.load_state_dict({k: torch.stack([h[k] for h in heads]).mean(0) for k in own})
    return scorer


def _linear_merge(model, folders: Sequence[Path]):
    """A PEFT model whose active adapter is the equal-weight merge of the sources (frozen)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name="source0")
    for i, folder in enumerate(folders[1:], 1):
        peft_model.load_adapter(str(folder), adapter_name=f"source{i}")
    names = [f"source{i}" for i in range(len(folders))]
    # "cat" stacks the factors, so the merged update is exactly the weighted sum of the
    # sources' updates, whatever their ranks.
    peft_model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "merged",
                                    combination_type="cat")
    peft_model.set_adapter("merged")
    for name in names:
        peft_model.delete_adapter(name)
    peft_model.requires_grad_(False)
    return peft_model


def parameter_counts(scorer: "Scorer", versions: Sequence[AdapterVersion]) -> ParameterCounts:
    head = sum(p.numel() for p in scorer.head.parameters() if p.requires_grad)
    trainable = sum(p.numel() for p in scorer.parameters() if p.requires_grad)
    return ParameterCounts(integrator_parameters=trainable - head, head_parameters=head,
                           source_lora_parameters=int(versions[0].training_config["lora_parameters"]))


# ---- composing ---------------------------------------------------------------------------

def compose(registry: Registry, sources: Sequence[str], target: str, *, name: str | None = None,
            method: str = "xcross", mode: str | None = None,
            xcross_config: "XCrossConfig | None" = None,
            training_config: "TrainingConfig | None" = None, template: str | None = None,
            progress: "Callable[[TrainingProgress], None] | str | None" = AUTO,
            should_stop: "Callable[[], bool] | None" = None,
            deadline: "Deadline | None" = None) -> Composition:
    """Train a composition of ``sources`` for ``target`` and register it with its lineage.

    ``deadline`` bounds the run (default: ``training_config.max_minutes`` from this
    call's start; the CLI passes one from the command's start).  Under a
    multi-process launch every process trains, the main process alone writes the
    artifacts and the registry row, and every process returns that row."""
    import time

    from .training import Deadline, TrainingConfig, is_main_process, train_scorer, wait_for_main
    from .xcross import XCrossConfig

    started = time.perf_counter()
    training_config = training_config or TrainingConfig()
    deadline = deadline or Deadline.for_config(training_config)
    name = validate_name(name or f"{target}-{'x' if method == 'xcross' else 'merge'}",
                         "composition")
    _check_free(registry, name)
    versions = check_sources(registry, sources, target)
    xcross_config = xcross_config or XCrossConfig()
    prompt = registry.domain_type(target).template(template)
    scorer = build_scorer(registry, versions, method=method, mode=mode, xcross_config=xcross_config)
    counts = parameter_counts(scorer, versions)
    data = registry.domain_data(target)
    with _signals_interrupt(), training_display(progress) as report:
        result = train_scorer(scorer, data, prompt, training_config, progress=report,
                              should_stop=should_stop, deadline=deadline)
        if is_main_process():
            # Measured now, from the weights just trained, so `show --plot` needs no model.
            integration = (measure_integration(scorer, data, prompt, name, [v.label for v in versions])
                           if method == "xcross" else None)
            _register(registry, name, scorer, result, versions, method, xcross_config,
                      training_config, counts, prompt.key, target, time.perf_counter() - started,
                      integration)
    return composition(registry, wait_for_main(name))


def _register(registry: Registry, name: str, scorer: "Scorer", result: "TrainingResult",
              versions: Sequence[AdapterVersion], method: str, xcross_config: "XCrossConfig",
              training_config: "TrainingConfig", counts: ParameterCounts, template_key: str,
              target: str, wall_seconds: float, integration: dict[str, Any] | None = None) -> None:
    """Store what a composition trained and add its row with its lineage, atomically."""
    from safetensors.torch import save_file

    with registry.store.staging_folder("compose") as folder:
        trained = {key: tensor.detach().float().cpu().contiguous()
                   for key, tensor in scorer.trainable_state().items()}
        save_file(trained, str(folder / TRAINED_FILE), metadata={"format": "pt"})
        settings = {"method": method, "scorer": scorer.config.to_dict(),
                    "base_model": scorer.base.to_dict(),
                    "xcross": xcross_config.to_dict() if method == "xcross" else None,
                    "template": template_key,
                    "sources": [{"adapter": v.label, "digest": v.artifact_digest} for v in versions]}
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        digest = store_folder(registry, folder, kind="xreg.composition.v1")
        target_row = registry.domain(target)
        with registry.session() as session:
            _check_free(registry, name, session)
            row = Composition(
                name=name, target_domain_id=target_row.id, artifact_digest=digest,
                integrator_config={"method": method, "mode": scorer.config.mode,
                                   **({"xcross": xcross_config.to_dict()} if method == "xcross" else {}),
                                   "parameters": counts.as_dict(),
                                   **({"integration": integration} if integration else {})},
                training_config={"training": training_config.to_dict(), "template": template_key,
                                 "validation": result.best_metrics, "best_epoch": result.best_epoch,
                                 "train_users": result.train_users,
                                 "seconds": round(result.seconds, 1),
                                 "run": result.run_record(wall_seconds)},
                trainable_parameters=counts.integrator_parameters + counts.head_parameters,
                data_fingerprint=target_row.data_fingerprint)
            row.sources = [CompositionSource(position=i, adapter_version_id=v.id)
                           for i, v in enumerate(versions)]
            session.add(row)


def _check_free(registry: Registry, name: str, session=None) -> None:
    with contextlib.ExitStack() as stack:
        session = session or stack.enter_context(registry.session())
        if session.scalar(select(Composition.id).where(Composition.name == name)) is not None:
            raise ConflictError(f"composition {name!r} already exists")
        if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
            raise ConflictError(f"{name!r} is a domain name; choose another composition name")


def _with_lineage(query):
    """Eager-load what :func:`as_dict` reads, so listing N compositions is a few queries, not N."""
    adapter = selectinload(Composition.sources).selectinload(CompositionSource.adapter)
    return query.options(selectinload(Composition.target_domain),
                         adapter.selectinload(AdapterVersion.domain),
                         adapter.selectinload(AdapterVersion.base_model))


def composition(registry: Registry, name: str) -> Composition:
    with registry.session() as session:
        row = session.scalar(_with_lineage(select(Composition).where(Composition.name == name)))
    if row is None:
        raise NotFoundError(f"unknown composition {name!r}")
    return row


def composition_exists(registry: Registry, name: str) -> bool:
    with registry.session() as session:
        return session.scalar(select(Composition.id).where(Composition.name == name)) is not None


def compositions(registry: Registry) -> list[Composition]:
    with registry.session() as session:
        return list(session.scalars(_with_lineage(select(Composition).order_by(Composition.name))))


def load_composition(registry: Registry, name: str) -> tuple["Scorer", Composition]:
    """A registered composition, rebuilt from its stored sources and trained weights."""
    from safetensors.torch import load_file

    from .xcross import XCrossConfig

    row = composition(registry, name)
    versions = [source.adapter for source in row.sources]
    config = row.integrator_config
    with registry.store.staging_folder("load") as folder:
        write_folder(registry, row.artifact_digest, folder, kind="xreg.composition.v1")
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        for recorded, version in zip(settings["sources"], versions):
            if recorded["digest"] != version.artifact_digest:
                raise ModelError(f"composition {name!r} was trained on {recorded['adapter']} with "
                                 f"digest {recorded['digest'][:12]}, the registry now has "
                                 f"{version.artifact_digest[:12]}")
        trained = load_file(str(folder / TRAINED_FILE))
    scorer = build_scorer(registry, versions, method=config["method"], mode=config["mode"],
                          xcross_config=XCrossConfig.from_dict(config["xcross"])
                          if config.get("xcross") else None)
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
            "trainable_parameters": row.trainable_parameters,
            "parameters": row.integrator_config.get("parameters"),
            "artifact_digest": row.artifact_digest, "data_fingerprint": row.data_fingerprint,
            "created": row.created.isoformat()}


def integration_weights(registry: Registry, name: str, users: int = 64) -> dict[str, Any]:
    """What the trained integrators do (see :func:`measure_integration`): as recorded
    when the composition was trained, without loading a model; measured again from the
    stored weights for compositions registered before that record existed."""
    row = composition(registry, name)
    if row.integrator_config.get("method") != "xcross":
        raise ValidationError(f"{name} is a {row.integrator_config.get('method')} baseline: "
                              "it has no integrators")
    if row.integrator_config.get("integration"):
        return row.integrator_config["integration"]
    scorer, row = load_composition(registry, name)
    data = registry.domain_data(row.target_domain.name)
    template = registry.domain_type(row.target_domain.name).template_for(row.training_config.get("template"))
    return measure_integration(scorer, data, template, name, [s.adapter.label for s in row.sources],
                               users)


def measure_integration(scorer: "Scorer", data, template, name: str, sources: Sequence[str],
                        users: int = 64) -> dict[str, Any]:
    """The mean integration scalar z of an X-Cross scorer on target validation prompts,
    per integrating layer and (stream, other stream, term): which source each stream
    leans on, layer by layer (term β: take the other stream's state; term γ: move away
    from it), plus the final mixing weights."""
    import torch

    sequences = (data.valid or data.train)[:users]
    prompts = [template.render([data.items[i] for i in s.history], data.items[s.target],
                               scorer.tokenizer, scorer.config.max_length) for s in sequences]
    inputs = scorer.tokenize(prompts)
    with torch.inference_mode():
        weights = scorer.encoder.xcross.integration_weights(inputs["input_ids"].to(scorer.device),
                                                            inputs["attention_mask"].to(scorer.device))
    return {"name": name, "sources": list(sources),
            "mix": scorer.encoder.xcross.mix.detach().float().cpu().tolist(),
            "layers": [{"layer": w.layer, "mean": _json_grid(w.mean), "mean_abs": _json_grid(w.mean_abs)}
                       for w in weights]}


def _json_grid(values) -> list:
    """A tensor as nested lists with the (undefined) diagonal as None: JSON has no NaN."""
    return [[[None if math.isnan(v) else v for v in pair] for pair in row] for row in values.tolist()]


def plot_integration(summary: dict[str, Any], path: str | Path) -> Path:
    """One heatmap per term: rows are (stream ← other stream), columns are layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sources = summary["sources"]
    pairs = [(m, k) for m in range(len(sources)) for k in range(len(sources)) if m != k]
    layers = [entry["layer"] for entry in summary["layers"]]
    figure, axes = plt.subplots(1, 2, figsize=(4 + 0.6 * len(layers) * 2, 1.5 + 0.45 * len(pairs)))
    for term, (axis, title) in enumerate(zip(axes, ("β: take the other stream",
                                                     "γ: move away from it"))):
        grid = np.array([[entry["mean"][m][k][term] for entry in summary["layers"]] for m, k in pairs],
                        dtype=float)
        bound = max(float(np.nanmax(np.abs(grid))), 1e-12)
        image = axis.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
        axis.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        axis.set_yticks(range(len(pairs)), [f"{sources[m]} ← {sources[k]}" for m, k in pairs])
        axis.set_xlabel("layer")
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    mix = ", ".join(f"{s} {w:.2f}" for s, w in zip(sources, summary["mix"]))
    figure.suptitle(f"{summary['name']}: mean integration weight z per layer (final mix: {mix})",
                    fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
