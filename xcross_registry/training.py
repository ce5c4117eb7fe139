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

The loop runs under :class:`accelerate.Accelerator`, so the same code runs on a
laptop CPU and, under ``accelerate launch`` (or torchrun), on several processes.  Every
process walks the same shuffled batches and trains on its own slice of each one, and
each process's loss is scaled so that the gradients, averaged by DDP, are exactly the
mean over the whole batch: N processes take the same optimiser steps over the same
examples as one process, each doing 1/N of the work.
After every epoch the main process validates the scorer (Hit@1 and NDCG@10 over
sampled candidates of a capped number of validation users) and tells the others what
it found; the best epoch's trainable tensors are kept in memory and restored at the end.

A run reports what it did, not what it was asked to do (:meth:`TrainingResult.run_record`):
examples seen, optimiser steps, epochs completed, examples per second, wall seconds,
how many validation users were scored, and why it stopped.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .batching import to_device
from .checks import check_seed, finite_in_range, finite_positive
from .data import DomainData, UserSequence
from .errors import ModelError, ValidationError, XregWarning, refuse_unknown_fields
from .scorer import Scorer
from .scoring import hit_and_ndcg_per_user, score_candidates
from .templates import PromptTemplate

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainingConfig:
    """How to train a scorer.

    ``batch_size`` counts examples (one history with its 1+N candidates).
    ``lr`` is the LoRA weights' rate and ``head_lr`` (``None``: the same) the head's
    (:meth:`Scorer.output_parameters`): the head starts from nothing and must move
    fast, while LoRA perturbs a pretrained model.  ``prior_lr`` is the popularity
    prior's weight's: one scalar whose useful values are of order 1, which Adam moves
    by about its rate per step, so at the head's 1e-2 it could not pass 0.6 in the 58
    steps of a 6-minute Tools run (issue 11; the learned weight was still climbing).
    On Amazon Toys with MiniLM, one shared rate of 3e-4 made the dual scorer worse than
    zero-shot within a few thousand examples, while LoRA at 3e-4 with the
    head at 1e-2 is the recipe that beats the head-only model (docs/RESULTS.md).
    ``fraction`` keeps that share of the training users (the target-data budget of
    an X-Cross experiment), ``max_users`` then caps their number; both pick users
    by ``seed``.  ``prefixes_per_user`` 0 uses every prefix of every sequence.
    ``share_negatives`` draws one set of N negatives per batch, outside every batch
    user's items, instead of one per example; a dual scorer then encodes N + B
    documents per step instead of B·(1+N), several times cheaper.  ``None``: share
    when the scorer's mode says so (``shares_negatives``: dual yes; a cross prompt
    contains the history, so sharing saves nothing there and only narrows the
    negatives a step sees).
    ``in_batch_negatives`` adds the batch's other positives as up to B−1 more
    negatives: free for a dual scorer (their embeddings are already computed), B more
    prompts per example for a cross scorer.  Uniform negatives alone reward whatever
    predicts popularity, because a uniform draw is mostly rare items; the other users'
    positives are as popular as the positive, so only the history can tell them apart
    (mixed negative sampling, Yang et al., WWW 2020).
    The best epoch is chosen by validation NDCG@10, which is less noisy than Hit@1;
    ``patience`` > 0 ends the run early ("early-stop") once that many validated epochs
    in a row have not improved on it.
    ``max_minutes`` bounds the whole command, counted from the process's start under
    the CLI and from the call of :func:`~xcross_registry.adapters.train_adapter` or
    :func:`~xcross_registry.composer.compose` in Python (model loading included): training ends
    after the step that crosses it, validation stops there too and records how many
    users it scored, and the best validated epoch is kept (the schedule is still
    planned in steps, so a run that is not stopped stays reproducible).
    ``max_steps``, when set, replaces ``epochs`` (as in transformers' Trainer): the run
    plans exactly that many optimiser steps, its learning-rate schedule decays to zero at
    the last of them, and it ends there as "completed", validating the epoch it ends in.
    Unlike ``max_minutes`` it gives the same model on a busy machine as on a quiet one.
    ``validate_start`` validates the untrained model too (as epoch 0): it stays the kept
    model unless a trained epoch beats it on validation, so a run that starts from a
    sensible model (X-Cross from the mix) leaves it only when validation says so.
    ``bf16`` trains under bfloat16 autocast where the hardware has bf16 arithmetic
    (CUDA that supports it; CPUs with AVX512-BF16 or AMX); elsewhere it warns and
    trains in float32, because emulated bf16 is many times slower than float32.
    """

    epochs: int = 2
    lr: float = 1e-4
    head_lr: float | None = 1e-2
    prior_lr: float = 0.1
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
    max_steps: int | None = None
    patience: int = 0
    validate_start: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "negatives", "min_history", "valid_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, not {value!r}")
        for name in ("prefixes_per_user", "valid_users", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"{name} must be a non-negative integer, not {value!r}")
        for name in ("max_users", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValidationError(f"{name} must be a positive integer or None, not {value!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValidationError(f"fraction must be in (0, 1], not {self.fraction!r}")
        # Rates and caps: finite and positive, checked before any model loads (an
        # infinite rate would train weights that are all NaN).
        for name in ("lr", "head_lr", "prior_lr", "max_minutes"):
            optional = name in ("head_lr", "max_minutes")  # None: the lr's / no cap
            if not (optional and getattr(self, name) is None):
                finite_positive(name, getattr(self, name))
        finite_in_range("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        finite_in_range("max_grad_norm", self.max_grad_norm, 0.0, math.inf, high_open=True)
        finite_in_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        check_seed("seed", self.seed)
        if not isinstance(self.validate_start, bool):
            raise ValidationError(f"validate_start must be true or false, not {self.validate_start!r}")
        if self.device not in DEVICES:
            raise ValidationError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        return cls(**refuse_unknown_fields(cls, values, "training config"))


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
    overall_step: int = 0  # optimiser steps taken in the whole run so far
    overall_steps: int = 0  # optimiser steps the run plans (over every epoch)


@dataclass
class EpochStats:
    """One epoch as it happened; ``validated_users`` < the planned number when the
    time cap cut its validation short (0: not validated, ``metrics`` is then ``None``)."""

    epoch: int
    loss: float
    examples: int
    seconds: float
    sequences_per_second: float
    metrics: dict[str, float] | None
    validated_users: int = 0


@dataclass
class TrainingResult:
    """What a run did; ``best_epoch`` is the epoch whose weights the scorer now holds
    (0: the untrained start, validated as ``start`` under ``validate_start``).

    ``stop_reason`` is "completed", "time-cap", "interrupted" (``should_stop``) or
    "early-stop" (``patience``).  ``examples_seen`` counts examples over all processes
    (each example once);
    ``planned_examples`` and ``planned_steps`` are what the schedule asked for."""

    epochs: list[EpochStats] = field(default_factory=list)
    start: EpochStats | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, float] | None = None
    train_users: int = 0
    seconds: float = 0.0
    sequences_per_second: float = 0.0
    stop_reason: str = "completed"
    examples_seen: int = 0
    optimizer_steps: int = 0
    epochs_completed: int = 0
    planned_examples: int = 0
    planned_steps: int = 0
    processes: int = 1
    precision: str = "float32"
    valid_users: int = 0

    @property
    def stopped(self) -> bool:
        """The run ended before its planned epochs (time cap, interruption, early stop)."""
        return self.stop_reason != "completed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_record(self, wall_seconds: float | None = None) -> dict[str, Any]:
        """The record stored with an adapter or composition (``training_config["run"]``):
        the same shape for both, so ``xreg show`` and the leaderboard read one format.

        ``wall_seconds`` is what the caller measured (``train_adapter`` and ``compose``:
        their whole call, model loading and saving included), else this training call's."""
        best = self.start if self.best_epoch == 0 else \
            self.epochs[self.best_epoch - 1] if self.best_epoch else None
        return {"stop_reason": self.stop_reason, "examples_seen": self.examples_seen,
                "planned_examples": self.planned_examples, "optimizer_steps": self.optimizer_steps,
                "planned_steps": self.planned_steps, "epochs_completed": self.epochs_completed,
                "examples_per_second": round(self.sequences_per_second, 2),
                "train_seconds": round(sum(e.seconds for e in self.epochs), 2),
                "wall_seconds": round(self.seconds if wall_seconds is None else wall_seconds, 2),
                "processes": self.processes, "precision": self.precision,
                "best_epoch": self.best_epoch,
                "validation_users": best.validated_users if best else 0,
                "validation_users_planned": self.valid_users,
                **({"start_metrics": self.start.metrics} if self.start is not None else {})}


@dataclass
class Deadline:
    """A wall-clock limit shared by every part of one command (training, validation, saving).

    ``clock`` is injectable so that tests can move time instead of waiting for it."""

    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after_minutes(cls, minutes: float, clock: Callable[[], float] = time.monotonic) -> "Deadline":
        return cls(clock() + 60.0 * minutes, clock)

    @classmethod
    def for_config(cls, config: TrainingConfig, started: float | None = None) -> "Deadline | None":
        """``config.max_minutes`` after ``started`` (a ``time.monotonic()`` reading taken
        when the command began; default now), or ``None`` without a cap."""
        if config.max_minutes is None:
            return None
        return cls((time.monotonic() if started is None else started) + 60.0 * config.max_minutes)

    def expired(self) -> bool:
        return self.clock() >= self.at


class Bf16FallbackWarning(XregWarning):
    """``bf16`` was asked for on hardware without bf16 arithmetic; training runs in float32."""


def cpu_supports_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has native bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16, Arm BF16).

    ``torch.backends.cpu.get_cpu_capability()`` only names the vector width (an AVX512
    CPU may lack the bf16 instructions), so the flags are read from ``/proc/cpuinfo``;
    where that file does not exist the answer is no, and training stays in float32."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs natively (and so faster than float32) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return True


def _on_cpu(device: str) -> bool:
    """Whether accelerate must be told to use the CPU.  Without CUDA it must be told
    explicitly: otherwise a multi-process launch on a CPU-only machine silently runs
    every process as a separate single-process job instead of joining them over gloo."""
    return device == "cpu" or not torch.cuda.is_available()


def process_state():
    """accelerate's process-wide state (the one :func:`train_scorer`'s Accelerator uses)."""
    from accelerate import PartialState

    return PartialState(cpu=_on_cpu("auto"))


def is_main_process() -> bool:
    """True except in the non-zero ranks of a multi-process launch (accelerate, torchrun)."""
    return process_state().is_main_process


# "diverged" outranks the others: a process whose loss or weights are no longer finite
# stops every process, and the run raises instead of registering.
_STOP_CODES = {None: 0, "interrupted": 1, "time-cap": 2, "diverged": 3}


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one synchronisation in all)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def divergence_error(where: str, what: str, rates: str) -> ModelError:
    """The error of a run whose loss or weights (``what``) became NaN or infinite: raised
    before anything is stored, so the broken model is never registered."""
    return ModelError(f"training diverged at {where}: the {what} became NaN or infinite; "
                      f"nothing was registered (lower the learning rate: {rates})")


def _agreed_stop(accelerator, reason: str | None) -> str | None:
    """The stop reason of whichever process has one: every process must stop at the same
    step, or the next gradient synchronisation waits forever."""
    if accelerator.num_processes == 1:
        return reason
    import torch.distributed as dist

    code = torch.tensor([_STOP_CODES[reason]], device=accelerator.device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return {v: k for k, v in _STOP_CODES.items()}[int(code.item())]


def _process_share(batch: Sequence[tuple[UserSequence, int]], rank: int,
                   processes: int) -> tuple[list[tuple[UserSequence, int]], float]:
    """This process's slice of a batch and the weight of its examples (1, or 0 for a
    stand-in example when the batch has fewer examples than processes: every process
    must run forward and backward at every step)."""
    share = list(batch[rank::processes])
    return (share, 1.0) if share else ([batch[0]], 0.0)


def train_scorer(scorer: Scorer, data: DomainData, template: PromptTemplate, config: TrainingConfig,
                 progress: Callable[[TrainingProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 deadline: Deadline | None = None) -> TrainingResult:
    """Train ``scorer``'s trainable parameters (LoRA, head, popularity prior) in place.

    A scorer with a popularity prior gets its counts here, from exactly the users this
    run trains on (:func:`select_users`) and from no other user.

    Deterministic for a given ``config.seed`` on CPU.  ``should_stop`` is polled
    every step (a Ctrl-C handler, say: the run then stops as "interrupted");
    ``deadline`` (default: ``config.max_minutes`` from now) ends training and
    validation as "time-cap".  A stopped run still restores the best validated epoch.
    The scorer is left in eval mode on the training device.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if not any(p.requires_grad for p in scorer.parameters()):
        raise ValidationError("the scorer has no trainable parameters (loaded without is_trainable?)")
    users = select_users(data.train, config)
    if not users:
        raise ValidationError("no training user has a sequence long enough to train on")
    if scorer.item_prior is not None:
        scorer.item_prior.count(users, data.items)
    start = time.perf_counter()
    deadline = deadline or Deadline.for_config(config)
    # Mixed precision is applied here rather than through Accelerator(mixed_precision=...):
    # accelerate's state is process-wide and refuses a second run with another setting.
    accelerator = Accelerator(cpu=_on_cpu(config.device))
    processes, rank = accelerator.num_processes, accelerator.process_index
    bf16 = config.bf16 and bf16_supported(accelerator.device)
    if config.bf16 and not bf16 and accelerator.is_main_process:
        warnings.warn(f"--bf16 ignored: this {accelerator.device.type.upper()} has no bf16 arithmetic "
                      "(it would run many times slower than float32); training in float32",
                      Bf16FallbackWarning, stacklevel=2)
    set_seed(config.seed)
    order_rng = random.Random(config.seed)
    # Each process draws its own negatives, reproducibly.
    negative_rng = np.random.default_rng([config.seed, rank])
    valid = validation_set(data, seed=config.seed, users=config.valid_users,
                           negatives=config.valid_negatives)
    share = config.share_negatives if config.share_negatives is not None else scorer.mode.shares_negatives

    params = [p for p in scorer.parameters() if p.requires_grad]
    fast_ids = {id(p) for p in scorer.output_parameters()}
    groups = [{"params": [p for p in params if id(p) not in fast_ids], "lr": config.lr},
              {"params": scorer.head_parameters(), "lr": config.head_lr or config.lr,
               "weight_decay": 0.0},  # scale, the head's own prior, biases
              {"params": scorer.prior_parameters(), "lr": config.prior_lr, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(scorer, optimizer)
    examples_per_epoch = _count_examples(users, config)
    steps_per_epoch = math.ceil(examples_per_epoch / config.batch_size)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    whole_epochs, extra_steps = divmod(total_steps, steps_per_epoch)  # every batch but an epoch's last is full
    planned_examples = whole_epochs * examples_per_epoch + extra_steps * config.batch_size
    warmup = int(config.warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        """Linear warm-up, then linear decay to zero at the last step."""
        return min((step + 1) / max(warmup, 1), max(total_steps - step, 0) / max(total_steps - warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    result = TrainingResult(train_users=len(users), planned_examples=planned_examples,
                            planned_steps=total_steps, processes=processes,
                            precision="bfloat16" if bf16 else "float32",
                            valid_users=len(valid.users) if valid is not None else 0)
    best_state: dict[str, torch.Tensor] | None = None
    best_per_user: np.ndarray | None = None  # the best epoch's NDCG@10 per validation user
    since_best = 0
    train_seconds = 0.0

    def time_up() -> bool:
        return deadline is not None and deadline.expired()

    def validate() -> tuple[dict[str, np.ndarray] | None, bool]:
        """Per-user Hit@1/NDCG@10 of the validation users (the main process scores, every
        process gets them) and whether the deadline cut the scoring short."""
        found = None
        if accelerator.is_main_process:
            scores = score_candidates(scorer, data, template, valid.split, valid.candidates, valid.users,
                                      should_stop=time_up)
            found = (hit_and_ndcg_per_user(scores), time_up())
        return wait_for_main(found)

    if config.validate_start and valid is not None:
        per_user, _ = validate()
        validated = len(per_user["ndcg@10"])
        metrics = {name: float(values.mean()) for name, values in per_user.items()} if validated else None
        result.start = EpochStats(0, 0.0, 0, 0.0, 0.0, metrics, validated)
        if validated:
            best_state, best_per_user = scorer.trainable_state(), per_user["ndcg@10"]
            result.best_epoch, result.best_metrics = 0, metrics

    for epoch in range(1, epochs + 1):
        examples = _epoch_examples(users, config, order_rng)
        epoch_batches = [examples[i:i + config.batch_size] for i in range(0, len(examples), config.batch_size)]
        batches = epoch_batches[:total_steps - result.optimizer_steps]  # max_steps may end it early
        model.train()
        epoch_start, loss_sum, own_examples, epoch_examples = time.perf_counter(), 0.0, 0, 0
        for step, batch in enumerate(batches, 1):
            own, weight = _process_share(batch, rank, processes)
            histories, candidates = _training_batch(own, data, config.negatives, share, negative_rng)
            inputs = to_device(scorer.prepare(histories, candidates, template, in_batch=config.in_batch_negatives),
                               accelerator.device)
            with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
                scores = model(**inputs).float()
            losses = torch.nn.functional.cross_entropy(
                scores, torch.zeros(len(own), dtype=torch.long, device=scores.device), reduction="none")
            # DDP averages gradients over processes; this scaling makes the average the
            # mean over the whole batch, as one process would compute it.
            accelerator.backward(losses.sum() * (weight * processes / len(batch)))
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step_loss = losses.detach().sum().item() * weight
            broken = "loss" if not math.isfinite(step_loss) else None if all_finite(params) else "weights"
            loss_sum += step_loss
            own_examples += int(weight) * len(own)
            epoch_examples += len(batch)
            result.optimizer_steps += 1
            elapsed = train_seconds + time.perf_counter() - epoch_start
            rate = (result.examples_seen + epoch_examples) / elapsed if elapsed > 0 else 0.0
            if progress is not None and accelerator.is_main_process:
                eta = elapsed / result.optimizer_steps * (total_steps - result.optimizer_steps)
                progress(TrainingProgress("train", epoch, epochs, step, len(batches),
                                          loss_sum / max(own_examples, 1), rate, eta,
                                          overall_step=result.optimizer_steps, overall_steps=total_steps))
            reason = "diverged" if broken else "time-cap" if time_up() else \
                "interrupted" if should_stop is not None and should_stop() else None
            reason = _agreed_stop(accelerator, reason)
            if reason == "diverged":
                raise divergence_error(f"epoch {epoch}, step {step}", broken or "loss or the weights",
                                       f"--lr {config.lr:g}, --head-lr {config.head_lr or config.lr:g}, "
                                       f"--prior-lr {config.prior_lr:g}")
            if reason is not None:
                result.stop_reason = reason
                break
        else:
            if len(batches) == len(epoch_batches):
                result.epochs_completed += 1
        seconds = time.perf_counter() - epoch_start
        train_seconds += seconds
        result.examples_seen += epoch_examples
        loss = _mean_over_processes(accelerator, loss_sum, own_examples)

        per_user = None
        if valid is not None:
            per_user, capped = validate()
            if capped and result.stop_reason == "completed":
                result.stop_reason = "time-cap"
        validated = len(per_user["ndcg@10"]) if per_user is not None else 0
        metrics = ({name: float(values.mean()) for name, values in per_user.items()}
                   if validated else None)
        stats = EpochStats(epoch, loss, epoch_examples, seconds,
                           epoch_examples / seconds if seconds > 0 else 0.0, metrics, validated)
        result.epochs.append(stats)
        if progress is not None and accelerator.is_main_process:
            eta = train_seconds / max(result.optimizer_steps, 1) * (total_steps - result.optimizer_steps)
            progress(TrainingProgress("valid", epoch, epochs, len(batches), len(batches),
                                      stats.loss, stats.sequences_per_second, eta, metrics,
                                      overall_step=result.optimizer_steps, overall_steps=total_steps))
        if _improves(per_user, best_per_user, validating=valid is not None):
            best_state = scorer.trainable_state()
            best_per_user = per_user["ndcg@10"] if validated else None
            result.best_epoch, result.best_metrics = epoch, metrics
            since_best = 0
        elif validated:
            since_best += 1
        if result.stopped:
            break
        if config.patience and since_best >= config.patience and epoch < epochs:
            result.stop_reason = "early-stop"
            break

    if best_state is not None:
        scorer.load_trainable_state(best_state)
    # Under `accelerate launch --mixed_precision ...` prepare() wrapped forward; undo that.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    scorer.eval()
    result.seconds = time.perf_counter() - start
    result.sequences_per_second = result.examples_seen / train_seconds if train_seconds > 0 else 0.0
    return result


def _improves(per_user: dict[str, np.ndarray] | None, best: np.ndarray | None, *, validating: bool) -> bool:
    """Whether an epoch's weights replace the best kept so far.

    Without validation data the latest epoch wins.  An epoch whose validation was cut
    short is compared with the best epoch on the same users (validation scores users
    in a fixed order), and one that scored nobody replaces only an unvalidated best."""
    if not validating:
        return True
    validated = len(per_user["ndcg@10"]) if per_user is not None else 0
    if not validated:
        return best is None
    if best is None:
        return True
    shared = min(validated, len(best))
    return float(per_user["ndcg@10"][:shared].mean()) > float(best[:shared].mean())


def _mean_over_processes(accelerator, total: float, count: int) -> float:
    """The mean of per-example values summed separately by every process."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        both = torch.tensor([total, float(count)], dtype=torch.float64, device=accelerator.device)
        dist.all_reduce(both)
        total, count = both.tolist()
    return total / max(count, 1)


def wait_for_main(value: Any) -> Any:
    """``value`` as the main process computed it, on every process (which waits for it)."""
    if process_state().num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


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


@dataclass(frozen=True)
class ValidationSet:
    """Validation users (indices into the valid split) and their candidate matrix, the
    target in column 0, fixed for a whole run."""

    users: list[int]
    candidates: np.ndarray
    split: str = "valid"


def allowed_validation_users(data: DomainData, fraction: float, cap: int) -> int:
    """How many validation users a choice made on validation (LoraHub's search, a
    fusion weight, an automatic composition) may look at: the run's ``fraction`` of
    them (a run on 25% of the target's users sees 25% of its validation users too),
    at most ``cap``."""
    return min(cap, math.ceil(fraction * len(data.valid)))


def validation_set(data: DomainData, *, seed: int, users: int, negatives: int = 29) -> ValidationSet | None:
    """The first ``users`` validation users with ``negatives`` uniform negatives each,
    drawn by ``seed`` outside the user's items (the same set for the same arguments);
    ``None`` when there is nothing to validate on."""
    chosen = list(range(min(users, len(data.valid))))
    if not chosen:
        return None
    rng = np.random.default_rng([seed, 1])
    matrix = np.array([[data.valid[u].target, *sample_negatives(rng, len(data.items), set(data.valid[u].items),
                                                                 negatives)] for u in chosen],
                      dtype=np.int64).reshape(len(chosen), negatives + 1)
    return ValidationSet(chosen, matrix)
