"""The recommendation scorer: a base language model, adapted with LoRA, plus a small head.

What every scorer shares lives here: the encoder, the tokenizer, the settings
(:class:`ScorerConfig`), the head as a module, the in-batch negatives mask, and the
files.  How histories and candidates become scores is the scorer's *mode*
(``self.mode``, a :class:`~xcross_registry.scoring_modes.ScoringMode` looked up by the
name ``config.mode``): ``cross`` (the X-Cross paper's joint prompt) and ``dual`` (two
towers whose item embeddings can be cached) are built in, and a new mode is one class
registered in :data:`~xcross_registry.scoring_modes.SCORING_MODES`.  The base model
itself is loaded by :mod:`xcross_registry.base_model`.

The encoder is a seam: :class:`Scorer` accepts any module whose
``forward(input_ids, attention_mask)`` returns the last hidden states ``[B, T, H]``.
:class:`LoraEncoder` is the single-domain one (a PEFT LoRA model over the base),
:class:`BaseEncoder` the frozen base alone (the head-only baseline); the X-Cross
composer plugs its integrated multi-adapter encoder into the same place.

Files (never pickle): the LoRA weights in the PEFT layout (``adapter_config.json`` +
``adapter_model.safetensors``, loadable by ``PeftModel.from_pretrained``), the head as
``head.safetensors`` and the settings plus base-model facts as ``scorer_config.json``;
with ``popularity_prior``, also the prior's files (see :mod:`xcross_registry.item_prior`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn

from .base_model import DEFAULT_POOLING, LORA_TARGETS, BaseModelInfo, load_base_model
from .batching import to_device
from .errors import ModelError, ValidationError, refuse_unknown_fields
from .item_prior import ItemPrior
from .pooling import POOLINGS
from .scoring_modes import require_catalogue_ranker, scoring_mode
from .scoring_modes.heads import MAX_SCALE

if TYPE_CHECKING:  # pragma: no cover
    from .data import Item
    from .templates import PromptTemplate

HEAD_FILE = "head.safetensors"
CONFIG_FILE = "scorer_config.json"


@dataclass
class ScorerConfig:
    """Settings of a scorer; ``None`` fields are filled per base model by :meth:`resolve`.

    ``mode`` names a registered scoring mode (``cross``, ``dual``, or one a third party
    registered).  ``scale`` multiplies the cosine of the built-in heads (a softmax
    temperature of 1/scale); it is learnable when ``learn_scale``.  ``max_length`` is
    the token budget of a prompt; the template drops the oldest history items to fit it.
    ``popularity_prior`` adds a learned ``w · log(1 + count(item))`` to every score,
    counted on the training users the run may see (:mod:`xcross_registry.item_prior`);
    stored settings from before it existed load as ``False`` and score as they did.
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
    popularity_prior: bool = False

    def __post_init__(self) -> None:
        scoring_mode(self.mode)  # a ValidationError naming the known modes
        if not isinstance(self.popularity_prior, bool):
            raise ValidationError(f"popularity_prior must be true or false, not {self.popularity_prior!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValidationError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        for name in ("head_hidden_size", "max_length", "lora_r", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, not {value!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValidationError(f"lora_dropout must be in [0, 1), not {self.lora_dropout!r}")
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= MAX_SCALE):
            raise ValidationError(f"scale must be in (0, {MAX_SCALE:g}], not {self.scale!r}")

    def resolve(self, info: BaseModelInfo) -> "ScorerConfig":
        """A copy with the per-architecture defaults filled in and checked against ``info``."""
        pooling = self.pooling or DEFAULT_POOLING[info.family]
        if info.family == "decoder" and pooling == "first":
            raise ModelError(f"pooling 'first' on decoder {info.name!r}: a causal model's first "
                             "token has seen nothing of the prompt; use 'last' or 'mean'")
        targets = self.target_modules or LORA_TARGETS.get(info.model_type, "all-linear")
        return replace(self, pooling=pooling, target_modules=targets)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ScorerConfig":
        return cls(**refuse_unknown_fields(cls, values, "scorer config"))


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


class Scorer(nn.Module):
    """Scores candidate items for a history with an encoder, a pooling and a head.

    ``forward`` takes the tensors that :meth:`prepare` makes, so a training loop can
    run it through ``accelerate``/DDP wrappers; :meth:`score` is the convenience path
    from items to scores.  Scores are unnormalised logits, higher is better.  What
    differs between modes (the head, the tensors, how they are scored) is asked of
    ``self.mode``; this class keeps what all modes share, the optional popularity
    prior (``self.item_prior``) included: it is added to the mode's scores, never seen
    by the mode.
    """

    def __init__(self, encoder: Encoder, tokenizer: Any, config: ScorerConfig, base: BaseModelInfo) -> None:
        super().__init__()
        config = config.resolve(base)  # idempotent; also checks a loaded config against the base
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        self.base = base
        self.mode = scoring_mode(config.mode)
        self.head: nn.Module = self.mode.make_head(base, config)
        self.item_prior: ItemPrior | None = ItemPrior() if config.popularity_prior else None

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
        """One float32 vector ``[B, H]`` per text (the head always runs in float32): the
        pooled encoder states, as the mode wants them (``dual``: L2-normalised)."""
        return self.mode.embed(self, input_ids, attention_mask)

    def forward(self, num_candidates: int, in_batch_mask: Tensor | None = None,
                item_log_counts: Tensor | None = None, **inputs: Tensor) -> Tensor:
        """Scores ``[B, num_candidates]`` from the mode's tensors (see :meth:`prepare`).

        With ``in_batch_mask [B, B]`` every row also scores the B rows' positives
        (column 0), ``-inf`` where the mask is False: ``[B, C + B]``.  With
        ``item_log_counts [B, C]`` the popularity prior is added to every column, the
        in-batch ones too (column j there is row j's positive)."""
        extra = 0 if in_batch_mask is None else in_batch_mask.shape[1]
        scores = self.mode.forward(self, num_candidates, extra, **inputs)
        if item_log_counts is not None:
            if extra:
                positives = item_log_counts[:, 0].expand(len(item_log_counts), -1)
                item_log_counts = torch.cat([item_log_counts, positives], dim=1)
            scores = scores + self.item_prior(item_log_counts)
        if not extra:
            return scores
        return torch.cat([scores[:, :num_candidates],
                          scores[:, num_candidates:].masked_fill(~in_batch_mask, -math.inf)], dim=1)

    # -- items -------------------------------------------------------------------------

    def prepare(self, histories: Sequence[Sequence["Item"]], candidates: Sequence[Sequence["Item"]],
                template: "PromptTemplate", in_batch: bool = False,
                with_prior: bool = True) -> dict[str, Any]:
        """Render and tokenise B histories with C candidates each into ``forward``'s inputs.

        ``in_batch`` (training) also returns ``in_batch_mask``: row i may use row j's
        positive (its first candidate) as a negative unless it is i's own positive or in
        i's history.  A scorer with a popularity prior also returns the candidates'
        ``item_log_counts``, unless ``with_prior`` is False (the mode's own scores)."""
        if len(histories) != len(candidates) or not histories:
            raise ValidationError("need one non-empty candidate list per history")
        width = len(candidates[0])
        if width == 0 or any(len(row) != width for row in candidates):
            raise ValidationError("every history needs the same, non-zero number of candidates")
        inputs: dict[str, Any] = {**self.mode.prepare(self, histories, candidates, template, in_batch),
                                  "num_candidates": width}
        if with_prior and self.item_prior is not None:
            flat = self.item_prior.log_counts([item for row in candidates for item in row])
            inputs["item_log_counts"] = flat.view(len(candidates), width)
        if in_batch:
            positives = [row[0].id for row in candidates]
            seen = [{item.id for item in history} | {own} for history, own in zip(histories, positives)]
            inputs["in_batch_mask"] = torch.tensor([[other not in mine for other in positives] for mine in seen])
        return inputs

    def score(self, histories: Sequence[Sequence["Item"]], candidates: Sequence[Sequence["Item"]],
              template: "PromptTemplate", with_prior: bool = True) -> Tensor:
        """Scores ``[B, C]`` of each history's candidates (gradients flow if enabled);
        without the popularity prior when ``with_prior`` is False (the mode's own scores,
        which :class:`~xcross_registry.scoring_modes.ScoringMode`'s paths return)."""
        return self(**to_device(self.prepare(histories, candidates, template, with_prior=with_prior),
                                self.device))

    def require_catalogue_ranking(self, need: str) -> None:
        """Refuse ``need`` unless this scorer's mode ranks catalogues (``ranks_catalogue``)."""
        require_catalogue_ranker("this scorer", self.config.mode, need)

    def encode_histories(self, histories: Sequence[Sequence["Item"]], template: "PromptTemplate") -> Tensor:
        """Catalogue rankers: history embeddings ``[B, H]`` of the query prompts."""
        self.require_catalogue_ranking("encode_histories")
        inputs = self.tokenize([template.render_query(h, self.tokenizer, self.config.max_length)
                                for h in histories])
        return self.embed(**to_device(inputs, self.device))

    def encode_items(self, items: Sequence["Item"], template: "PromptTemplate", batch_size: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> Tensor:
        """Catalogue rankers: item embeddings ``[N, H]`` of the documents, to cache per
        model version; ``progress(items done, items)`` after each batch."""
        self.require_catalogue_ranking("encode_items")
        chunks = []
        for start in range(0, len(items), batch_size):
            inputs = self.tokenize([template.render_document(item) for item in items[start:start + batch_size]])
            chunks.append(self.embed(**to_device(inputs, self.device)))
            if progress is not None:
                progress(min(start + batch_size, len(items)), len(items))
        return torch.cat(chunks) if chunks else torch.empty(0, self.base.hidden_size, device=self.device)

    def score_embeddings(self, queries: Tensor, documents: Tensor) -> Tensor:
        """Catalogue rankers: scores of cached embeddings: ``[B, N]`` for documents ``[N, D]``
        shared by all queries (e.g. a whole catalogue), ``[B, C]`` for ``[B, C, D]``."""
        self.require_catalogue_ranking("score_embeddings")
        return self.mode.score_embeddings(self, queries, documents)

    def head_parameters(self) -> list[nn.Parameter]:
        """The head's trainable parameters (training gives them ``head_lr``)."""
        return [p for p in self.head.parameters() if p.requires_grad]

    def prior_parameters(self) -> list[nn.Parameter]:
        """The popularity prior's trainable weight, if any (training gives it ``prior_lr``)."""
        return [p for p in self.item_prior.parameters() if p.requires_grad] \
            if self.item_prior is not None else []

    def output_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters that start from nothing and must move fast: the
        head's and the popularity prior's weight.  Training gives them no weight decay;
        a composition counts them as its head."""
        return self.head_parameters() + self.prior_parameters()

    # -- files -------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, Tensor]:
        """Detached copies of every trainable tensor (LoRA, head, prior weight), e.g. a
        best epoch's."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the head, the config, the popularity prior (counts and weight) when the
        scorer has one and, for a :class:`LoraEncoder`, the PEFT adapter.

        A head-only scorer needs nothing more than its base; other encoders (the
        X-Cross composer's) save their own weights beside these files."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.encoder, LoraEncoder):
            self.encoder.save_pretrained(directory)
        head = {name: t.detach().float().cpu().contiguous() for name, t in self.head.state_dict().items()}
        save_file(head, str(directory / HEAD_FILE), metadata={"format": "pt"})
        if self.item_prior is not None:
            self.item_prior.save(directory)
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
        for param in scorer.head.parameters():  # make_head froze what must never train
            param.requires_grad_(is_trainable and param.requires_grad)
        if scorer.item_prior is not None:
            scorer.item_prior.load(directory)
            scorer.item_prior.requires_grad_(is_trainable)
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
