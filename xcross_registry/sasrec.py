"""SASRec: the ID-based sequential recommender a team would train instead of a language model.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.  Each item has a
learned embedding; a user's history (most recent ``max_len`` items) plus learned position
embeddings goes through a few causal self-attention blocks, and the output at the last
position is scored against candidate items by a dot product with the SAME item embeddings
(shared input/output embeddings, as in the paper).  It knows nothing of titles, so it is
the baseline that tells whether the language-model route pays off, and at which fraction
of the target domain's data.

Objective: the paper's binary cross-entropy with ONE sampled negative per position.  Every
training sequence ``items`` gives ``len(items) - 1`` examples at once: position ``t`` of
the input ``items[:-1]`` predicts ``items[t + 1]`` (the same prefixes the LoRA scorers
train on, see :mod:`xcross_registry.training`).  Negatives are drawn uniformly, afresh
every epoch, from the items seen in training outside the user's own sequence: uniform,
like the ``sampled`` evaluation protocol, and never an unseen item, so that an item the
model was not allowed to see keeps no trace of the training data.

Training users are exactly :func:`xcross_registry.training.select_users` of the training
split for the config's ``fraction``, ``seed`` and ``max_users``: the users the target LoRA
trains on at the same fraction and seed.  After every epoch the model is validated as the
LoRA scorers are (NDCG@10 of the first ``valid_users`` validation users against
``valid_negatives`` uniformly drawn negatives, seeded by ``[seed, 1]``); the best epoch's
weights are kept, and ``patience`` epochs without improvement stop the run.  On a CPU a
run is deterministic for a seed (weights, dropout, batch order and negatives are all drawn
from seeded generators; torch's global generator is left as it was).

**Items never seen in training** (in no selected training sequence) score
:data:`UNSEEN_ITEM_SCORE`, below every score a seen item can get: an ID model has
learned nothing about them, and ranking them last is what the popularity baseline does
with a zero count.  Two unseen candidates tie, and a tie counts against the positive
(:mod:`xcross_registry.metrics`), so a cold positive is ranked last rather than lucky.
In a history, unseen items are dropped before encoding for the same reason (their
embeddings are untrained noise).  Which items were seen is stored with the weights.

Why a compact module rather than a library (checked with this project's pins,
torch==2.13.0 CPU, numpy 2.4, Python 3.11, safetensors-only weights):

* ``recbole`` 1.2.1 (the reference SASRec implementation in most papers): its
  ``Config`` assigns ``np.float_`` and friends, which NumPy 2 removed (AttributeError on
  construction); it also requires ``ray<=2.6.3``, ``tensorboard``, ``pandas``,
  ``colorlog==4.7.2`` and saves checkpoints with ``torch.save`` (pickle).
* ``cornac`` 3.0.1 installs cleanly (adds ``powerlaw``; numpy>2) and has a PyTorch
  SASRec, but does not fit: models persist through ``pickle``; ``fit`` owns the loop and
  selects epochs only by its own recall@k every ``val_eval_every`` epochs, with no early
  stopping on this project's validation protocol; it re-indexes items through its own
  dataset object; and it would add a compiled dependency for one baseline.
* ``recpack`` 0.3.6 pins ``numpy==1.*`` and ships no SASRec; ``recommenders`` 1.2.1
  has only a TensorFlow SASRec; ``transformers4rec`` needs NVIDIA Merlin.

The module is imported only where a SASRec is trained or scored: it imports torch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import safetensors.torch
import torch
from torch import nn

from .checks import check_seed, finite_positive
from .data import DomainData, UserSequence, catalogue_digest
from .errors import ModelError, ValidationError, refuse_unknown_fields
from .metrics import per_user_metrics, sampled_ranks
from .training import TrainingConfig, all_finite, divergence_error, sample_negatives, select_users

UNSEEN_ITEM_SCORE = -1.0e9
"""The score of an item that no training sequence contained (see the module docstring).

Seen items score a dot product of a layer-normalised vector with an embedding, orders of
magnitude above this."""

CONFIG_FILE = "sasrec.json"
WEIGHTS_FILE = "sasrec.safetensors"
FORMAT = "xreg-sasrec/1"
SCORING_USERS_PER_BATCH = 256


@dataclass
class SASRecConfig:
    """How to build and train a SASRec.

    ``hidden_size``, ``blocks``, ``heads``, ``max_len`` and ``dropout`` shape the model
    (``max_len``: the most recent items of a history that are read; Amazon sequences are
    at most 15 long).  ``lr`` is Adam's rate (plain Adam, as in the paper: without weight
    decay an item that gets no gradient keeps its initial embedding exactly).  ``epochs``
    is the most that run; ``patience`` > 0 stops after that many validated epochs without
    a better NDCG@10 (0: run every epoch, keep the best).  ``fraction``, ``max_users``
    and ``seed`` choose the training users exactly as
    :class:`~xcross_registry.training.TrainingConfig` does.

    The defaults were chosen on Amazon Tools' VALIDATION users at F=0.25 and F=1.0 among
    hidden sizes 32/64/128, 1 or 2 blocks, dropout 0.2/0.5 and lr 5e-4/1e-3; every
    variant landed within about 0.01 NDCG@10 of the others (noise at 877 users), and
    these were best at F=0.25, where the data is scarce.  Dropout 0.5 is the paper's
    choice for its sparse Amazon domains.
    """

    hidden_size: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.5
    lr: float = 1e-3
    epochs: int = 200
    batch_size: int = 128
    patience: int = 10
    seed: int = 0
    fraction: float = 1.0
    max_users: int | None = None
    valid_users: int = 1000
    valid_negatives: int = 29

    def __post_init__(self) -> None:
        for name in ("hidden_size", "blocks", "heads", "max_len", "epochs", "batch_size", "valid_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"SASRec {name} must be a positive integer, not {value!r}")
        check_seed("SASRec seed", self.seed)
        for name in ("patience", "valid_users"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"SASRec {name} must be a non-negative integer, not {value!r}")
        if self.hidden_size % self.heads:
            raise ValidationError(f"SASRec hidden_size {self.hidden_size} is not divisible by heads {self.heads}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValidationError(f"SASRec dropout must be in [0, 1), not {self.dropout!r}")
        finite_positive("SASRec lr", self.lr)
        # fraction and max_users are checked by the TrainingConfig that selects the users
        self.user_selection()

    def user_selection(self) -> TrainingConfig:
        """The training config whose :func:`~xcross_registry.training.select_users` picks
        this run's users: the same users as a LoRA trained at this fraction and seed."""
        return TrainingConfig(fraction=self.fraction, max_users=self.max_users, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SASRecConfig":
        if not isinstance(values, dict):
            raise ValidationError(f"a SASRec config is a JSON object, not {type(values).__name__}")
        return cls(**refuse_unknown_fields(cls, values, "SASRec config"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SASRecConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValidationError(f"SASRec config is not valid JSON ({error})") from None
        return cls.from_dict(values)


class _SelfAttentionBlock(nn.Module):
    """One pre-norm transformer block: causal self-attention, then a position-wise MLP."""

    def __init__(self, hidden_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, heads, dropout=dropout, batch_first=True)
        self.feed_forward_norm = nn.LayerNorm(hidden_size)
        self.feed_forward = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout),
                                          nn.Linear(hidden_size, hidden_size), nn.Dropout(dropout))

    def forward(self, states: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        query = self.attention_norm(states)
        attended, _ = self.attention(query, query, query, attn_mask=blocked, need_weights=False)
        states = states + attended
        return states + self.feed_forward(self.feed_forward_norm(states))


class SASRecModel(nn.Module):
    """Item and position embeddings, causal blocks, and the shared output embeddings.

    Row 0 of ``item_embedding`` is padding; catalogue item ``i`` is row ``i + 1``.
    ``seen`` marks the items of the training sequences (the only ones given a learned
    score); ``catalogue`` is :func:`catalogue_digest` of the training data."""

    def __init__(self, config: SASRecConfig, num_items: int, catalogue: str) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.catalogue = catalogue
        size = config.hidden_size
        self.item_embedding = nn.Embedding(num_items + 1, size, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, size)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_SelfAttentionBlock(size, config.heads, config.dropout)
                                    for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(size)
        self.register_buffer("seen", torch.zeros(num_items, dtype=torch.bool))
        nn.init.normal_(self.item_embedding.weight, std=size ** -0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [B, T]`` embedding rows, left-padded with 0 → states ``[B, T, hidden]``.

        Positions count back from the most recent item, so the last item always has the
        same position embedding whatever the history's length (as in the paper)."""
        length = rows.shape[1]
        pad = rows == 0
        positions = torch.arange(self.config.max_len - length, self.config.max_len, device=rows.device)
        states = (self.item_embedding(rows) * math.sqrt(self.config.hidden_size)
                  + self.position_embedding(positions))
        states = self.embedding_dropout(states).masked_fill(pad[..., None], 0.0)
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=rows.device), diagonal=1)
        # a padding position may attend to itself: otherwise its row is all -inf (NaN)
        blocked = (future | pad[:, None, :]) & ~torch.eye(length, dtype=torch.bool, device=rows.device)
        blocked = blocked.repeat_interleave(self.config.heads, dim=0)
        for block in self.blocks:
            states = block(states, blocked).masked_fill(pad[..., None], 0.0)
        return self.final_norm(states)

    def item_scores(self, states: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Dot products of ``states [..., hidden]`` with catalogue ``items [..., C]`` → ``[..., C]``."""
        return (states.unsqueeze(-2) * self.item_embedding(items + 1)).sum(-1)


def _history_rows(histories: Sequence[Sequence[int]], seen: np.ndarray, max_len: int) -> torch.Tensor:
    """Left-padded embedding rows of each history's last ``max_len`` seen items."""
    kept = [[i + 1 for i in history if seen[i]][-max_len:] for history in histories]
    width = max(1, max(map(len, kept), default=1))
    rows = np.zeros((len(kept), width), dtype=np.int64)
    for row, items in zip(rows, kept):
        if items:
            row[width - len(items):] = items
    return torch.from_numpy(rows)


@torch.inference_mode()
def _score_histories(model: SASRecModel, histories: Sequence[Sequence[int]], matrix: np.ndarray,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Scores ``[U, C]`` of each history against its row of catalogue indices ``matrix``."""
    model.eval()
    seen = model.seen.numpy()
    weights = model.item_embedding.weight[1:]
    scores = np.empty(matrix.shape, dtype=np.float64)
    for start in range(0, len(histories), SCORING_USERS_PER_BATCH):
        stop = min(start + SCORING_USERS_PER_BATCH, len(histories))
        states = model.encode(_history_rows(histories[start:stop], seen, model.config.max_len))[:, -1]
        columns = np.asarray(matrix[start:stop], dtype=np.int64)
        if columns.shape[1] >= model.num_items:  # the whole catalogue: one matrix product
            every = (states @ weights.T).numpy()
            chunk = np.take_along_axis(every, columns, axis=1).astype(np.float64)
        else:
            chunk = model.item_scores(states, torch.from_numpy(columns)).numpy().astype(np.float64)
        scores[start:stop] = np.where(seen[columns], chunk, UNSEEN_ITEM_SCORE)
        if progress is not None:
            progress(stop, len(histories))
    return scores


def _validation_candidates(data: DomainData, config: SASRecConfig) -> tuple[list[UserSequence], np.ndarray]:
    """The validation users and their candidates (target in column 0), drawn as the LoRA
    scorers' validation draws them: first ``valid_users`` users, generator ``[seed, 1]``."""
    users = data.valid[:config.valid_users]
    rng = np.random.default_rng([config.seed, 1])
    rows = [[seq.target, *sample_negatives(rng, len(data.items), set(seq.items), config.valid_negatives)]
            for seq in users]
    return users, np.array(rows, dtype=np.int64).reshape(len(users), config.valid_negatives + 1)


def _validate(model: SASRecModel, users: list[UserSequence], matrix: np.ndarray) -> dict[str, float]:
    ranks = sampled_ranks(_score_histories(model, [seq.history for seq in users], matrix))
    values = per_user_metrics(ranks, (1, 10))
    return {"hit@1": float(values["hit@1"].mean()), "ndcg@10": float(values["ndcg@10"].mean())}


def _training_batch(sequences: Sequence[UserSequence], max_len: int, seen_items: np.ndarray,
                    rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, positives, negatives) rows ``[B, T]``, left-padded with 0: each position's
    next item and one uniformly drawn seen item outside the user's sequence."""
    windows = [seq.items[-(max_len + 1):] for seq in sequences]
    width = max(len(items) for items in windows) - 1
    inputs = np.zeros((len(windows), width), dtype=np.int64)
    positives = np.zeros_like(inputs)
    for row, items in enumerate(windows):
        inputs[row, width - len(items) + 1:] = np.asarray(items[:-1]) + 1
        positives[row, width - len(items) + 1:] = np.asarray(items[1:]) + 1
    own = np.zeros((len(windows), max(len(seq.items) for seq in sequences)), dtype=np.int64)
    for row, seq in enumerate(sequences):
        own[row, :len(seq.items)] = np.asarray(seq.items) + 1
    negatives = np.zeros_like(inputs)
    redraw = positives > 0
    while redraw.any():
        negatives[redraw] = seen_items[rng.integers(0, len(seen_items), int(redraw.sum()))] + 1
        redraw = (negatives[:, :, None] == own[:, None, :]).any(-1) & (positives > 0)
    return torch.from_numpy(inputs), torch.from_numpy(positives), torch.from_numpy(negatives)


def train_sasrec(data: DomainData, config: SASRecConfig) -> tuple[SASRecModel, dict[str, Any]]:
    """Train a SASRec on ``data``'s selected training users; returns the model (holding
    its best validated epoch) and a JSON-ready record of the run.

    Refuses (:class:`ValidationError`) a selection with nothing to learn from: no users,
    or a user whose sequence covers every seen item (no negative is left to draw)."""
    started = time.monotonic()
    users = select_users(data.train, config.user_selection())
    seen = np.zeros(len(data.items), dtype=bool)
    for seq in users:
        seen[list(seq.items)] = True
    seen_items = np.flatnonzero(seen)
    longest = max((len(set(seq.items)) for seq in users), default=0)
    if not users or len(seen_items) <= longest:
        raise ValidationError(f"SASRec needs training users whose items leave negatives to draw: "
                              f"{len(users)} user(s), {len(seen_items)} distinct item(s)")
    valid_users, valid_matrix = _validation_candidates(data, config)
    rng = np.random.default_rng([config.seed, 2])
    epochs: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    stop_reason = "completed"
    examples_seen = optimizer_steps = 0  # predicted positions, and steps, over all epochs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SASRecModel(config, len(data.items), catalogue_digest(data))
        model.seen.copy_(torch.from_numpy(seen))
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
        for epoch in range(1, config.epochs + 1):
            epoch_started = time.monotonic()
            model.train()
            order = rng.permutation(len(users))
            total, positions = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                batch = [users[i] for i in order[start:start + config.batch_size]]
                inputs, positives, negatives = _training_batch(batch, config.max_len, seen_items, rng)
                states = model.encode(inputs)
                real = positives > 0
                logits = model.item_scores(states, torch.stack([positives, negatives], -1) - 1)
                labels = torch.zeros_like(logits)
                labels[..., 0] = 1.0
                losses = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(-1)
                loss = losses[real].mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                count = int(real.sum())
                if not math.isfinite(loss.item()):
                    raise divergence_error(f"epoch {epoch}", "loss", f"--lr {config.lr:g}")
                if not all_finite(list(model.parameters())):
                    raise divergence_error(f"epoch {epoch}", "weights", f"--lr {config.lr:g}")
                total += loss.item() * count
                positions += count
                optimizer_steps += 1
            examples_seen += positions
            stats: dict[str, Any] = {"epoch": epoch, "loss": total / positions,
                                     "seconds": round(time.monotonic() - epoch_started, 3)}
            if valid_users:
                stats["valid"] = _validate(model, valid_users, valid_matrix)
            epochs.append(stats)
            score = stats["valid"]["ndcg@10"] if valid_users else float(epoch)
            if best is None or score > best[0]:
                best = (score, epoch, copy.deepcopy(model.state_dict()))
            elif config.patience and epoch - best[1] >= config.patience:
                stop_reason = "early-stop"
                break
    assert best is not None  # epochs >= 1
    model.load_state_dict(best[2])
    model.eval()
    record = {"model": "sasrec", "config": config.to_dict(), "data_fingerprint": data.fingerprint(),
              "train_users": len(users), "train_positions": sum(min(len(seq.items) - 1, config.max_len) for seq in users),
              "seen_items": int(len(seen_items)), "items": len(data.items),
              "validation_users": len(valid_users), "epochs": epochs, "epochs_completed": len(epochs),
              "examples_seen": examples_seen, "optimizer_steps": optimizer_steps,
              "best_epoch": best[1], "best_metrics": epochs[best[1] - 1].get("valid"),
              "stop_reason": stop_reason, "train_seconds": round(time.monotonic() - started, 2)}
    return model, record


def save_sasrec(model: SASRecModel, config: SASRecConfig, folder: str | Path) -> Path:
    """Write ``folder/sasrec.safetensors`` (weights and the seen-item mask) and
    ``folder/sasrec.json`` (format, config, catalogue size and digest); returns ``folder``."""
    if config != model.config:
        raise ValidationError("the config to save is not the one this SASRec model was built with")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "config": config.to_dict(),
                                                  "items": model.num_items, "catalogue": model.catalogue},
                                                 sort_keys=True, indent=1) + "\n")
    return folder


def load_sasrec(folder: str | Path) -> tuple[SASRecModel, SASRecConfig]:
    """The model and config :func:`save_sasrec` wrote; :class:`ModelError` naming the file
    when either file is missing, corrupt, or does not fit the other."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelError(f"{path}: missing; a saved SASRec is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        header = json.loads(config_path.read_text())
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        config = SASRecConfig.from_dict(header["config"])
        num_items, catalogue = header["items"], header["catalogue"]
        if not isinstance(num_items, int) or num_items < 1 or not isinstance(catalogue, str):
            raise ValueError("items must be a positive integer and catalogue a string")
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as error:
        raise ModelError(f"{config_path}: not a SASRec config ({error})") from None
    try:
        tensors = safetensors.torch.load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own (non-exported) error types
        raise ModelError(f"{weights_path}: not a safetensors file ({type(error).__name__}: {error})") from None
    model = SASRecModel(config, num_items, catalogue)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise ModelError(f"{weights_path}: does not fit {config_path} ({first})") from None
    model.eval()
    return model, config


def _check_catalogue(model: SASRecModel, data: DomainData) -> None:
    if len(data.items) != model.num_items or catalogue_digest(data) != model.catalogue:
        raise ModelError(f"this SASRec model was trained on another catalogue "
                         f"({model.num_items} items) than the scored data's ({len(data.items)} items)")


def sasrec_score_function(model: SASRecModel) -> Callable[..., np.ndarray]:
    """``score(data, split, users, matrix [U, C], progress=None) -> scores [U, C]``, the
    function evaluation calls: each user's history in ``data.split(split)`` against the
    catalogue indices of their row; unseen items score :data:`UNSEEN_ITEM_SCORE`.

    Refuses (:class:`ModelError`) data whose catalogue is not the one the model learned."""

    def score(data: DomainData, split: str, users: Sequence[int], matrix: np.ndarray,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        _check_catalogue(model, data)
        sequences = data.split(split)
        return _score_histories(model, [sequences[int(u)].history for u in users], np.asarray(matrix), progress)

    return score


def sasrec_history_scorer(model: SASRecModel, data: DomainData) -> Callable[..., np.ndarray]:
    """``score(histories, matrix [U, C]) -> scores [U, C]`` for histories given as lists of
    ``data``'s catalogue indices (a request's, not a split's users), scored exactly as
    :func:`sasrec_score_function` scores a user with that history.  The catalogue is
    checked once, here."""
    _check_catalogue(model, data)

    def score(histories: Sequence[Sequence[int]], matrix: np.ndarray) -> np.ndarray:
        return _score_histories(model, histories, np.asarray(matrix))

    return score
