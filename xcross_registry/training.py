"""Training a :class:`~xcross_registry.scorer.Scorer` on one domain's sequences.

The objective is softmax cross-entropy over the positive (the next item) and N
negatives drawn uniformly from the items the user never interacted with, resampled
every epoch.  Negatives are drawn independently of any stored evaluation candidates,
so an evaluation never measures memorised candidate lists.

Each training sequence of L items gives up to L-1 examples: every prefix
``items[:t]`` predicts ``items[t]``.  Amazon sequences are short (5–15 items, mean
about 6), so prefixes multiply the data about five-fold and teach the model
histories of every length it will meet; ``prefixes_per_user`` samples fewer per
user per epoch when time is short.

The loop runs under :class:`accelerate.Accelerator`, which places the model and,
under ``accelerate launch``, shards the batches over processes and synchronises
gradients, so the same code runs on a laptop CPU and on several GPUs.
After every epoch the scorer is validated (Hit@1 and NDCG@10 over sampled candidates
of a capped number of validation users); the best epoch's trainable tensors are kept
in memory and restored at the end.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data import DomainData, UserSequence
from .errors import ValidationError
from .scorer import Scorer, to_device
from .templates import PromptTemplate

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainingConfig:
    """How to train a scorer.

    ``batch_size`` counts examples (one history with its 1+N candidates).
    ``lr`` is the LoRA weights' rate and ``head_lr`` (``None``: the same) the head's:
    the head starts from nothing and must move fast, while LoRA perturbs a pretrained
    model.  On Amazon Toys with MiniLM, one shared rate of 3e-4 made the dual scorer
    worse than zero-shot within a few thousand examples, while LoRA at 3e-4 with the
    head at 1e-2 is the recipe that beats the head-only model (docs/RESULTS.md).
    ``fraction`` keeps that share of the training users (the target-data budget of
    an X-Cross experiment), ``max_users`` then caps their number; both pick users
    by ``seed``.  ``prefixes_per_user`` 0 uses every prefix of every sequence.
    ``share_negatives`` draws one set of N negatives per batch, outside every batch
    user's items, instead of one per example; a dual scorer then encodes N + B
    documents per step instead of B·(1+N), several times cheaper.  ``None``: share
    when the scorer is dual (a cross prompt contains the history, so sharing saves
    nothing there and only narrows the negatives a step sees).
    ``in_batch_negatives`` adds the batch's other positives as up to B−1 more
    negatives: free for a dual scorer (their embeddings are already computed), B more
    prompts per example for a cross scorer.  Uniform negatives alone reward whatever
    predicts popularity, because a uniform draw is mostly rare items; the other users'
    positives are as popular as the positive, so only the history can tell them apart
    (mixed negative sampling, Yang et al., WWW 2020).
    The best epoch is chosen by validation NDCG@10, which is less noisy than Hit@1.
    ``max_minutes`` is a wall-clock safety stop: the run ends after the step that
    crosses it, validates, and keeps the best epoch (the schedule is still planned in
    steps, so a run that is not stopped stays reproducible).
    """

    epochs: int = 2
    lr: float = 1e-4
    head_lr: float | None = 1e-2
    batch_size: int = 16
    negatives: int = 15
    max_users: int | None = None
    fraction: float = 1.0
    prefixes_per_user: int = 0
    share_negatives: bool | None = None
    in_batch_negatives: bool = False
    min_history: int = 1
    seed: int = 0
    valid_users: int = 200
    valid_negatives: int = 29
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    bf16: bool = False
    device: str = "auto"
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "negatives", "min_history", "valid_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, not {value!r}")
        for name in ("prefixes_per_user", "valid_users"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"{name} must be a non-negative integer, not {value!r}")
        if self.max_users is not None and (not isinstance(self.max_users, int) or self.max_users < 1):
            raise ValidationError(f"max_users must be a positive integer or None, not {self.max_users!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValidationError(f"fraction must be in (0, 1], not {self.fraction!r}")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise ValidationError(f"learning rates must be positive, not {self.lr!r} / {self.head_lr!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValidationError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValidationError(f"max_minutes must be positive, not {self.max_minutes!r}")
        if self.device not in DEVICES:
            raise ValidationError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValidationError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class TrainingProgress:
    """One report to the progress callback: after every step, and after validation
    (``phase == "valid"``, with ``metrics``)."""

    phase: str
    epoch: int  # 1-based
    epochs: int
    step: int  # within the epoch, 1-based
    steps: int
    loss: float  # running mean over the epoch so far
    sequences_per_second: float
    eta_seconds: float
    metrics: dict[str, float] | None = None


@dataclass
class EpochStats:
    epoch: int
    loss: float
    examples: int
    seconds: float
    sequences_per_second: float
    metrics: dict[str, float] | None


@dataclass
class TrainingResult:
    """What a run did; ``best_epoch`` is the epoch whose weights the scorer now holds."""

    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] | None = None
    train_users: int = 0
    seconds: float = 0.0
    sequences_per_second: float = 0.0
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_scorer(scorer: Scorer, data: DomainData, template: PromptTemplate, config: TrainingConfig,
                 progress: Callable[[TrainingProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> TrainingResult:
    """Train ``scorer``'s trainable parameters (LoRA and head) in place.

    Deterministic for a given ``config.seed`` on CPU.  ``should_stop`` is polled
    every step (a Ctrl-C handler, a time budget); a stopped run still restores the
    best validated epoch.  The scorer is left in eval mode on the training device.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if not any(p.requires_grad for p in scorer.parameters()):
        raise ValidationError("the scorer has no trainable parameters (loaded without is_trainable?)")
    users = select_users(data.train, config)
    if not users:
        raise ValidationError("no training user has a sequence long enough to train on")
    # Mixed precision is applied here rather than through Accelerator(mixed_precision=...):
    # accelerate's state is process-wide and refuses a second run with another setting.
    accelerator = Accelerator(cpu=config.device == "cpu")
    set_seed(config.seed)
    order_rng = random.Random(config.seed)
    # Each process draws its own negatives, reproducibly.
    negative_rng = np.random.default_rng([config.seed, accelerator.process_index])
    valid = _validation_set(data, config)
    share = config.share_negatives if config.share_negatives is not None else scorer.config.mode == "dual"

    params = [p for p in scorer.parameters() if p.requires_grad]
    head = [p for p in scorer.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    groups = [{"params": [p for p in params if id(p) not in head_ids], "lr": config.lr},
              {"params": head, "lr": config.head_lr or config.lr, "weight_decay": 0.0}]  # scale, prior, biases
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(scorer, optimizer)
    steps_per_epoch = math.ceil(_count_examples(users, config) / config.batch_size / accelerator.num_processes)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        """Linear warm-up, then linear decay to zero at the last step."""
        return min((step + 1) / max(warmup, 1), max(total_steps - step, 0) / max(total_steps - warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    result = TrainingResult(train_users=len(users))
    best_state: dict[str, torch.Tensor] | None = None
    best_score = -math.inf
    start = time.perf_counter()
    train_seconds, examples_seen, steps_done = 0.0, 0, 0
    for epoch in range(1, config.epochs + 1):
        examples = _epoch_examples(users, config, order_rng)
        batches = [examples[i:i + config.batch_size] for i in range(0, len(examples), config.batch_size)]
        # Every process must run the same number of steps, or gradient sync hangs.
        usable = len(batches) - len(batches) % accelerator.num_processes or len(batches)
        batches = batches[accelerator.process_index:usable:accelerator.num_processes]
        model.train()
        epoch_start, loss_sum, epoch_examples = time.perf_counter(), 0.0, 0
        for step, batch in enumerate(batches, 1):
            histories, candidates = _training_batch(batch, data, config.negatives, share, negative_rng)
            inputs = to_device(scorer.prepare(histories, candidates, template, in_batch=config.in_batch_negatives),
                               accelerator.device)
            with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                scores = model(**inputs).float()
            loss = torch.nn.functional.cross_entropy(scores, torch.zeros(len(batch), dtype=torch.long,
                                                                         device=scores.device))
            accelerator.backward(loss)
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss_sum += loss.item() * len(batch)
            epoch_examples += len(batch)
            steps_done += 1
            elapsed = train_seconds + time.perf_counter() - epoch_start
            rate = (examples_seen + epoch_examples) / elapsed if elapsed > 0 else 0.0
            if progress is not None and accelerator.is_main_process:
                eta = elapsed / steps_done * (total_steps - steps_done)
                progress(TrainingProgress("train", epoch, config.epochs, step, len(batches),
                                          loss_sum / epoch_examples, rate, eta))
            out_of_time = (config.max_minutes is not None
                           and time.perf_counter() - start > 60 * config.max_minutes)
            if out_of_time or (should_stop is not None and should_stop()):
                result.stopped = True
                break
        seconds = time.perf_counter() - epoch_start
        train_seconds += seconds
        examples_seen += epoch_examples
        metrics = evaluate_sampled(scorer, data, template, *valid) if valid is not None else None
        stats = EpochStats(epoch, loss_sum / max(epoch_examples, 1), epoch_examples, seconds,
                           epoch_examples / seconds if seconds > 0 else 0.0, metrics)
        result.epochs.append(stats)
        if progress is not None and accelerator.is_main_process:
            eta = train_seconds / max(steps_done, 1) * (total_steps - steps_done)
            progress(TrainingProgress("valid", epoch, config.epochs, len(batches), len(batches),
                                      stats.loss, stats.sequences_per_second, eta, metrics))
        score = metrics["ndcg@10"] if metrics else epoch  # without validation: the latest epoch
        if score > best_score:
            best_score, best_state = score, scorer.trainable_state()
            result.best_epoch, result.best_metrics = epoch, metrics
        if result.stopped:
            break

    if best_state is not None:
        scorer.load_trainable_state(best_state)
    # Under `accelerate launch --mixed_precision ...` prepare() wrapped forward; undo that.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    scorer.eval()
    result.seconds = time.perf_counter() - start
    result.sequences_per_second = examples_seen / train_seconds if train_seconds > 0 else 0.0
    return result


def select_users(train: Sequence[UserSequence], config: TrainingConfig) -> list[UserSequence]:
    """The training users a run uses: a seeded ``fraction`` of them, capped at ``max_users``,
    skipping sequences too short to give one example."""
    eligible = [seq for seq in train if len(seq.items) > config.min_history]
    random.Random(config.seed).shuffle(eligible)
    keep = max(1, round(config.fraction * len(eligible))) if eligible else 0
    if config.max_users is not None:
        keep = min(keep, config.max_users)
    return eligible[:keep]


def _count_examples(users: Sequence[UserSequence], config: TrainingConfig) -> int:
    per_user = (len(seq.items) - config.min_history for seq in users)
    if config.prefixes_per_user:
        return sum(min(n, config.prefixes_per_user) for n in per_user)
    return sum(per_user)


def _epoch_examples(users: Sequence[UserSequence], config: TrainingConfig,
                    rng: random.Random) -> list[tuple[UserSequence, int]]:
    """(sequence, t) pairs, shuffled: the prefix ``items[:t]`` predicts ``items[t]``."""
    examples = []
    for seq in users:
        positions = list(range(config.min_history, len(seq.items)))
        if config.prefixes_per_user and len(positions) > config.prefixes_per_user:
            positions = rng.sample(positions, config.prefixes_per_user)
        examples.extend((seq, t) for t in positions)
    rng.shuffle(examples)
    return examples


def sample_negatives(rng: np.random.Generator, num_items: int, exclude: set[int], count: int) -> list[int]:
    """``count`` distinct items drawn uniformly from those not in ``exclude``."""
    available = num_items - len(exclude)
    if available < count:
        raise ValidationError(f"cannot draw {count} negatives: only {available} items outside the user's sequence")
    chosen: list[int] = []
    seen = set(exclude)
    while len(chosen) < count:
        for item in rng.integers(0, num_items, size=2 * (count - len(chosen)) + 4).tolist():
            if item not in seen:
                seen.add(item)
                chosen.append(item)
                if len(chosen) == count:
                    break
    return chosen


def _training_batch(batch: Sequence[tuple[UserSequence, int]], data: DomainData, negatives: int, share: bool,
                    rng: np.random.Generator) -> tuple[list[list], list[list]]:
    """Histories and candidate lists (positive first) of one step."""
    touched = {i for seq, _ in batch for i in seq.items}
    share = share and len(data.items) - len(touched) >= negatives  # tiny catalogues: per example
    if share:
        shared = sample_negatives(rng, len(data.items), touched, negatives)
    histories, candidates = [], []
    for seq, t in batch:
        drawn = shared if share else sample_negatives(rng, len(data.items), set(seq.items), negatives)
        histories.append([data.items[i] for i in seq.items[:t]])
        candidates.append([data.items[i] for i in [seq.items[t], *drawn]])
    return histories, candidates


def _validation_set(data: DomainData, config: TrainingConfig) -> tuple[str, np.ndarray, list[int]] | None:
    """Fixed (split, candidate matrix, users) for every epoch, the target in column 0;
    ``None`` when there is nothing to validate on."""
    users = list(range(min(config.valid_users, len(data.valid))))
    if not users:
        return None
    rng = np.random.default_rng([config.seed, 1])
    matrix = np.array([[data.valid[u].target, *sample_negatives(rng, len(data.items), set(data.valid[u].items),
                                                                 config.valid_negatives)] for u in users],
                      dtype=np.int64).reshape(len(users), config.valid_negatives + 1)
    return "valid", matrix, users


def evaluate_sampled(scorer: Scorer, data: DomainData, template: PromptTemplate, split: str,
                     candidate_matrix: np.ndarray, user_indices: Sequence[int]) -> dict[str, float]:
    """Hit@1 and NDCG@10 with the positive in column 0; ties count against the positive."""
    from .metrics import per_user_metrics, sampled_ranks

    scores = score_candidates(scorer, data, template, split, candidate_matrix, user_indices)
    values = per_user_metrics(sampled_ranks(scores), ks=(1, 10))
    return {"hit@1": float(values["hit@1"].mean()), "ndcg@10": float(values["ndcg@10"].mean())}


def score_candidates(scorer: Scorer, data: DomainData, template: PromptTemplate, split: str,
                     candidate_matrix: np.ndarray | Sequence[Sequence[int]], user_indices: Sequence[int],
                     batch_size: int = 64) -> np.ndarray:
    """Scores ``[users, candidates]`` of ``candidate_matrix`` (item indices) for the
    histories of ``split``'s users ``user_indices``.

    ``batch_size`` is texts per forward pass.  A dual scorer encodes each distinct
    candidate item once and each history once.  The scorer's train/eval mode is
    restored afterwards.
    """
    matrix = np.asarray(candidate_matrix, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != len(user_indices):
        raise ValidationError(f"candidate matrix of shape {matrix.shape} does not match {len(user_indices)} users")
    if matrix.size and (matrix.min() < 0 or matrix.max() >= len(data.items)):
        raise ValidationError("candidate matrix holds item indices outside the catalogue")
    sequences = data.split(split)
    histories = [[data.items[i] for i in sequences[u].history] for u in user_indices]
    was_training = scorer.training
    scorer.eval()
    rows: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            if scorer.config.mode == "dual":
                unique, inverse = np.unique(matrix, return_inverse=True)
                inverse = torch.as_tensor(inverse.reshape(matrix.shape), device=scorer.device)
                items = scorer.encode_items([data.items[i] for i in unique], template, batch_size)
                for start in range(0, len(histories), batch_size):
                    queries = scorer.encode_histories(histories[start:start + batch_size], template)
                    documents = items[inverse[start:start + batch_size]]
                    rows.append(scorer.score_embeddings(queries, documents).float().cpu().numpy())
            else:
                users_per_pass = max(1, batch_size // max(matrix.shape[1], 1))
                for start in range(0, len(histories), users_per_pass):
                    block = matrix[start:start + users_per_pass]
                    candidates = [[data.items[i] for i in row] for row in block]
                    rows.append(scorer.score(histories[start:start + users_per_pass], candidates,
                                             template).float().cpu().numpy())
    finally:
        scorer.train(was_training)
    return np.concatenate(rows) if rows else np.zeros(matrix.shape, dtype=np.float32)
