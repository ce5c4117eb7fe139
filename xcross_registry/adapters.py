"""Domain adapters through the registry: train, import, export, load.

An adapter version is a folder in the PEFT layout (``adapter_config.json`` +
``adapter_model.safetensors``) plus the scorer's head (``head.safetensors``) and
settings (``scorer_config.json``).  Each file is stored in the artifact store by its
sha256, and a small JSON manifest naming them is the version's ``artifact_digest``.
A version is registered in one transaction after all its files are stored, so a run
killed at any moment leaves no half-registered version; what it had written lives in
a staging folder that the next run removes.
"""

from __future__ import annotations

import json
import math
import re
import signal
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy import func, select

from .errors import ModelError, NotFoundError, ValidationError, XregError
from .registry import Registry, validate_name
from .schema import AdapterVersion, BaseModel

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import BaseModelInfo, Scorer, ScorerConfig
    from .training import TrainingConfig, TrainingProgress

MANIFEST_KIND = "xreg.adapter.v1"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_LABEL = re.compile(r"(?P<domain>[^@]+)(?:@v?(?P<version>\d+))?")


class TrainingInterrupted(XregError):
    """A training run was stopped by a signal; nothing was registered."""


# ---- storing and reading adapter folders -----------------------------------------------

def store_folder(registry: Registry, folder: Path, kind: str = MANIFEST_KIND) -> str:
    """Store every file of ``folder`` and return the digest of the manifest naming them."""
    files = {path.name: registry.store.put_file(path)
             for path in sorted(folder.iterdir()) if path.is_file()}
    manifest = json.dumps({"kind": kind, "files": files}, sort_keys=True).encode()
    return registry.store.put_bytes(manifest)


def manifest_files(registry: Registry, digest: str, kind: str = MANIFEST_KIND) -> dict[str, str]:
    try:
        manifest = json.loads(registry.store.get_bytes(digest))
        if manifest.get("kind") != kind:
            raise ValueError(f"kind {manifest.get('kind')!r}, expected {kind!r}")
        return dict(manifest["files"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"artifact {digest} is not a stored folder manifest ({exc})") from None


def write_folder(registry: Registry, digest: str, folder: Path, kind: str = MANIFEST_KIND) -> Path:
    """Write the files of a stored folder into ``folder``, each checked against its digest."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, file_digest in manifest_files(registry, digest, kind).items():
        (folder / name).write_bytes(registry.store.get_bytes(file_digest))
    return folder


# ---- resolving names ---------------------------------------------------------------------

def resolve_adapter(registry: Registry, label: str) -> AdapterVersion:
    """``toys`` (its latest LoRA version) or ``toys@v2`` / ``toys@2`` → the adapter version row."""
    match = _LABEL.fullmatch(label or "")
    if match is None:
        raise ValidationError(f"not an adapter name: {label!r} (use DOMAIN or DOMAIN@vN)")
    versions = registry.adapters(match["domain"])
    if not versions:
        registry.domain(match["domain"])  # raises 'unknown domain' when that is the problem
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


def latest_head_only(registry: Registry, domain: str) -> AdapterVersion:
    """The newest head-only baseline of ``domain`` (``xreg train-adapter D --head-only``)."""
    versions = [v for v in registry.adapters(domain) if v.status == "head-only"]
    if not versions:
        registry.domain(domain)
        raise NotFoundError(f"domain {domain!r} has no head-only baseline; train one with "
                            f"'xreg train-adapter {domain} --head-only'")
    return versions[-1]


# ---- registering -------------------------------------------------------------------------

def _base_model_row(session, info: "BaseModelInfo") -> BaseModel:
    row = session.scalar(select(BaseModel).where(BaseModel.name == info.name))
    if row is None:
        row = BaseModel(name=info.name, family=info.family, model_type=info.model_type,
                        hidden_size=info.hidden_size, num_layers=info.num_layers)
        session.add(row)
        session.flush()
    elif (row.hidden_size, row.num_layers) != (info.hidden_size, info.num_layers):
        raise ModelError(f"base model {info.name!r} is registered with hidden size "
                         f"{row.hidden_size} and {row.num_layers} layers, not "
                         f"{info.hidden_size} and {info.num_layers}")
    return row


def register_version(registry: Registry, domain: str, folder: Path, info: "BaseModelInfo", *,
                     trainable_parameters: int, training_config: dict[str, Any],
                     metrics: dict[str, Any], status: str = "ready") -> AdapterVersion:
    """Store ``folder`` and add it as the domain's next adapter version, atomically."""
    lora_config = (json.loads((folder / PEFT_CONFIG).read_text())
                   if (folder / PEFT_CONFIG).is_file() else {})
    training_config = {**training_config, "lora_parameters": _tensor_elements(folder / PEFT_WEIGHTS)}
    digest = store_folder(registry, folder)
    domain_row = registry.domain(domain)
    with registry.session() as session:
        base = _base_model_row(session, info)
        version = (session.scalar(select(func.max(AdapterVersion.version))
                                  .where(AdapterVersion.domain_id == domain_row.id)) or 0) + 1
        session.add(AdapterVersion(
            domain_id=domain_row.id, base_model_id=base.id, version=version,
            lora_config=lora_config, artifact_digest=digest,
            trainable_parameters=int(trainable_parameters),
            data_fingerprint=domain_row.data_fingerprint, training_config=training_config,
            metrics=metrics, status=status))
    return resolve_adapter(registry, f"{domain}@v{version}")


def _tensor_elements(path: Path) -> int:
    """Number of weights in a safetensors file (0 when absent), read from its header."""
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM into an exception, so a killed run unwinds and cleans its staging."""
    def interrupt(signum, _frame):
        raise TrainingInterrupted(f"training stopped by signal {signum}; nothing was registered")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_adapter(registry: Registry, domain: str, *, scorer_config: "ScorerConfig | None" = None,
                  training_config: "TrainingConfig | None" = None, base_model: str | None = None,
                  head_only: bool = False, template: str | None = None,
                  progress: "Callable[[TrainingProgress], None] | None" = None) -> AdapterVersion:
    """Train a LoRA scorer (or, with ``head_only``, just a head on the frozen base) on
    ``domain`` and register it as the domain's next adapter version."""
    from .scorer import Scorer, ScorerConfig
    from .training import TrainingConfig, train_scorer

    scorer_config = scorer_config or ScorerConfig()
    training_config = training_config or TrainingConfig()
    data = registry.domain_data(domain)
    prompt = registry.domain_type(domain).template(template)
    scorer = Scorer.create(base_model, scorer_config, head_only=head_only)
    trainable = sum(p.numel() for p in scorer.parameters() if p.requires_grad)
    with _signals_interrupt(), registry.store.staging_folder("train") as folder:
        result = train_scorer(scorer, data, prompt, training_config, progress=progress)
        scorer.save_pretrained(folder)
        return register_version(
            registry, domain, folder, scorer.base, trainable_parameters=trainable,
            training_config={"scorer": scorer.config.to_dict(), "training": training_config.to_dict(),
                             "template": prompt.key, "head_only": head_only},
            metrics={"validation": result.best_metrics, "best_epoch": result.best_epoch,
                     "train_users": result.train_users, "seconds": round(result.seconds, 1),
                     "sequences_per_second": round(result.sequences_per_second, 2)},
            status="head-only" if head_only else "ready")


def load_scorer(registry: Registry, label: str) -> tuple["Scorer", AdapterVersion]:
    """The scorer of a registered adapter version, ready to score (frozen, eval mode)."""
    from .scorer import Scorer

    version = resolve_adapter(registry, label)
    if version.status == "no-head":
        raise ModelError(f"adapter {version.label} was imported without a scorer head; it can be "
                         "an X-Cross source but cannot score on its own")
    with registry.store.staging_folder("load") as folder:
        write_folder(registry, version.artifact_digest, folder)
        scorer = Scorer.from_pretrained(folder)
    scorer.eval()
    return scorer, version


def export_adapter(registry: Registry, label: str, directory: str | Path) -> Path:
    """Write a standard PEFT folder (plus head, settings and a model card) to ``directory``."""
    version = resolve_adapter(registry, label)
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise ValidationError(f"export folder {target} is not empty")
    if version.status == "head-only":
        raise ValidationError(f"{version.label} is a head-only baseline: it has no LoRA to export")
    write_folder(registry, version.artifact_digest, target)
    (target / "README.md").write_text(_model_card(version))
    return target


def _model_card(version: AdapterVersion) -> str:
    training = version.training_config.get("training", {})
    validation = version.metrics.get("validation") or {}
    return (f"---\nbase_model: {version.base_model.name}\nlibrary_name: peft\n"
            f"tags: [xcross-registry, lora, recommendation]\n---\n\n"
            f"# {version.label}: LoRA recommendation adapter for domain `{version.domain.name}`\n\n"
            f"- base model: `{version.base_model.name}`\n"
            f"- trainable parameters: {version.trainable_parameters}\n"
            f"- data fingerprint: `{version.data_fingerprint}`\n"
            f"- prompt template: `{version.training_config.get('template', 'unknown')}`\n"
            f"- training: {json.dumps(training, sort_keys=True)}\n"
            f"- validation: {json.dumps(validation, sort_keys=True)}\n\n"
            "Load with `PeftModel.from_pretrained(AutoModel.from_pretrained(base), this_folder)`;\n"
            "`head.safetensors` and `scorer_config.json` hold the xcross-registry scorer head.\n")


def import_adapter(registry: Registry, name: str, plugin: str, data: str, adapter_dir: str | Path,
                   *, description: str = "", base_model: str | None = None) -> AdapterVersion:
    """Register domain ``name`` together with an existing PEFT LoRA folder as its v1.

    The folder must fit the base model: the base it records, its target modules and
    every weight shape are checked against the loaded base before anything is written.
    A folder with ``head.safetensors`` + ``scorer_config.json`` (an ``xreg export``) can
    score on its own; a bare PEFT folder is registered as ``no-head`` (an X-Cross source).
    """
    from peft import LoraConfig
    from safetensors.torch import load_file

    from .scorer import CONFIG_FILE, HEAD_FILE, Scorer, load_base_model
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
    domain_row = registry.add_domain(name, plugin, data, description)
    files = [PEFT_CONFIG, PEFT_WEIGHTS] + ([HEAD_FILE, CONFIG_FILE] if has_head else [])
    try:
        with registry.store.staging_folder("import") as staged:
            for file in files:
                (staged / file).write_bytes((folder / file).read_bytes())
            return register_version(registry, domain_row.name, staged, info,
                                    trainable_parameters=trainable,
                                    training_config={"imported_from": str(folder.resolve())},
                                    metrics={}, status="ready" if has_head else "no-head")
    except BaseException:
        registry.remove_domain(domain_row.name, force=True)
        raise
