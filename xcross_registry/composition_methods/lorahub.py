"""``lorahub``: per-source merge weights found by a gradient-free search on the target's
validation users, then a frozen weighted merge whose head trains (LoraHub, Huang et al.
2023, adapted to ranking).

The search minimises LoraHub's objective, the loss of the merged model on a few target
examples plus ``l1 · Σ|w|``, where the loss is the softmax cross-entropy of the positive
among its candidates for the validation users the run may see (the composition's
fraction of them; never a test user).  The optimiser is CMA-ES from ``cma`` (pycma, N.
Hansen's maintained reference implementation; numpy only): LoraHub itself calls
nevergrad, whose NGOpt hands small continuous budgets to CMA-style searches, but
nevergrad pins ``bayesian-optimization==1.4.0`` and pulls pandas and scikit-learn into
the install.  The equal-weight merge is evaluated first and the best point seen is kept,
so on its own objective the search can only improve on ``linear-merge``.  Every
evaluation is stored with the composition (``search``), the chosen weights with its
settings, so reloading rebuilds the same merge without searching again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ValidationError, refuse_unknown_fields
from .interface import CompositionMethod, FitContext

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .interface import SourceAdapter


@dataclass
class LoraHubSettings:
    """Attributes:
        weights: the chosen weights (filled by the search; given, the search is skipped).
        budget: objective evaluations of the search.
        bound: weights are searched in ``[-bound, bound]`` (LoraHub's 1.5).
        l1: weight of the L1 penalty ``Σ|w|`` (LoraHub's 0.05).
        search_users: at most this many of the allowed validation users per evaluation.
        negatives: negatives per user in the objective (of those the validation set drew).
        seed: seed of the search.
    """

    weights: list[float] | None = None
    budget: int = 24
    bound: float = 1.5
    l1: float = 0.05
    search_users: int = 64
    negatives: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("budget", "search_users", "negatives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"lorahub setting {name!r} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValidationError(f"lorahub setting 'seed' must be a non-negative integer, got {self.seed!r}")
        for name in ("bound", "l1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "bound" and value == 0):
                raise ValidationError(f"lorahub setting {name!r} must be a finite number "
                                      f"{'> 0' if name == 'bound' else '>= 0'}, got {value!r}")
            setattr(self, name, float(value))
        if self.weights is not None:
            if not isinstance(self.weights, (list, tuple)) or not self.weights or not all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                    for w in self.weights):
                raise ValidationError(f"lorahub weights must be a non-empty list of finite numbers, "
                                      f"got {self.weights!r}")
            self.weights = [float(w) for w in self.weights]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LoraHubSettings":
        return cls(**refuse_unknown_fields(cls, dict(values), "lorahub setting"))


class LoraHubMethod(CompositionMethod):
    """``--method lorahub``: settings are :class:`LoraHubSettings`."""

    name = "lorahub"
    subject_kind = "baseline"
    default_suffix = "lorahub"
    has_integrators = False
    settings_class = LoraHubSettings

    def build_encoder(self, model: "nn.Module", sources: Sequence["SourceAdapter"],
                      settings: LoraHubSettings) -> "nn.Module":
        """The merge with the chosen weights (equal weights until the search has run), frozen."""
        import torch

        from ..weighted_lora import WeightedLoraEncoder, load_lora_sources

        n = len(sources)
        weights = settings.weights if settings.weights is not None else [1.0 / n] * n
        if len(weights) != n:
            raise ValidationError(f"lorahub has {len(weights)} weights for {n} sources")
        return WeightedLoraEncoder(model, load_lora_sources(sources), torch.tensor(weights), trainable=False)

    def fit(self, context: FitContext, settings: LoraHubSettings) -> tuple[LoraHubSettings, dict[str, Any] | None]:
        """Search the weights (unless given) and set them on ``context.scorer``."""
        if settings.weights is not None:
            return settings, None
        import cma
        import numpy as np

        from ..scoring import score_candidates

        encoder = context.scorer.encoder
        n = encoder.n_sources
        users = context.users[:settings.search_users]
        if not users:
            raise ValidationError("lorahub needs validation users of the target to search on; it has none")
        columns = min(settings.negatives + 1, context.candidates.shape[1])
        matrix = context.candidates[:len(users), :columns]
        trace: list[dict[str, Any]] = []

        def objective(weights: Sequence[float]) -> float:
            encoder.set_weights(list(weights))
            scores = score_candidates(context.scorer, context.data, context.template, "valid", matrix, users)
            scores = scores.astype(np.float64)
            top = scores.max(axis=1, keepdims=True)
            loss = float(np.mean(np.log(np.exp(scores - top).sum(axis=1)) + top[:, 0] - scores[:, 0]))
            value = loss + settings.l1 * float(np.abs(weights).sum())
            trace.append({"weights": [round(float(w), 6) for w in weights], "loss": round(loss, 6),
                          "objective": round(value, 6)})
            return value

        start = [1.0 / n] * n
        objective(start)
        search = cma.CMAEvolutionStrategy(start, settings.bound / 4, {
            "bounds": [-settings.bound, settings.bound], "seed": settings.seed + 1, "verbose": -9,
            "maxfevals": settings.budget - 1, "popsize": max(4, 2 + n)})
        while not search.stop() and len(trace) < settings.budget:
            points = search.ask()[:settings.budget - len(trace)]
            values = [objective(point) for point in points]
            if len(values) < search.popsize:
                break
            search.tell(points, values)
        best = min(range(len(trace)), key=lambda i: trace[i]["objective"])
        chosen = trace[best]["weights"]
        encoder.set_weights(chosen)
        record = {"optimizer": f"cma {cma.__version__} (CMA-ES)", "users": len(users),
                  "candidates": columns, "evaluations": trace, "best": best, "weights": chosen}
        return LoraHubSettings(**{**asdict(settings), "weights": chosen}), record
