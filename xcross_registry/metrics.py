"""Ranking metrics: Hit@K, Recall@K, NDCG@K and MRR, per user and with bootstrap intervals.

Everything starts from the rank of each user's positive.  Ties count AGAINST the
positive (rank = 1 + number of other candidates scoring at least as high), so a
scorer that gives every candidate the same score ranks last, not first, and a
degenerate model cannot look good.  A NaN score, positive or not, also counts
against the positive.

Per-user values are kept so two systems evaluated on the same candidates can be
compared user by user: ``bootstrap_interval(values_a - values_b, seed)`` is the paired
interval of their difference.

Every metric is a function of the positive's rank alone, so a stored evaluation's
per-user ranks give any metric later (:func:`summarize` over them): evaluations stored
before Recall@K and NDCG@20 existed get them that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_KS = (1, 3, 10, 20)
# Recall@K as papers report it on the full catalogue.  With one held-out item per user
# it equals Hit@K (the share of users whose item is in the top K); both names are
# reported so a number can be set beside a paper that uses either.
RECALL_KS = (10, 20)


def sampled_ranks(scores: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of column 0 in each row of ``scores [users, candidates]``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [users, candidates] with the positive in column 0, got {scores.shape}")
    return 1 + np.count_nonzero(~(scores[:, 1:] < scores[:, :1]), axis=1)


def full_ranks(scores: np.ndarray, positives: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Pessimistic 1-based rank of each user's positive among the whole catalogue.

    ``scores [users, items]``; ``positives [users]`` catalogue indices; ``exclude``
    (bool, same shape) marks items left out of the ranking, such as the user's own
    history (:func:`xcross_registry.candidates.exclusion_mask`).  The positive's own
    score is read whether it is excluded or not, and never counts against itself."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(scores))
    positives = np.asarray(positives, dtype=np.int64)
    beats = ~(scores < scores[rows, positives][:, None])
    beats[rows, positives] = False
    if exclude is not None:
        beats &= ~np.asarray(exclude, dtype=bool)
    return 1 + np.count_nonzero(beats, axis=1)


def per_user_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                     recall_ks: Sequence[int] = RECALL_KS) -> dict[str, np.ndarray]:
    """``{"hit@K", "ndcg@K" for each K in ks, "recall@K" for each K in recall_ks, "mrr"}``
    → float array [users].

    With one relevant item, NDCG@K is 1/log2(rank + 1) when rank <= K, else 0, and
    Recall@K is Hit@K; a K larger than the candidate list counts every user as a hit."""
    ranks = np.asarray(ranks, dtype=np.float64)
    values: dict[str, np.ndarray] = {}
    for k in (*ks, *recall_ks):
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
    for k in ks:
        inside = ranks <= k
        values[f"hit@{k}"] = inside.astype(np.float64)
        values[f"ndcg@{k}"] = np.where(inside, 1.0 / np.log2(ranks + 1.0), 0.0)
    for k in recall_ks:
        values[f"recall@{k}"] = (ranks <= k).astype(np.float64)
    values["mrr"] = 1.0 / ranks
    return values


def bootstrap_interval(per_user_values: np.ndarray, seed: int, n_boot: int = 1000,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users (resampled with replacement)."""
    values = np.asarray(per_user_values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // values.size)  # bound memory at a few million indices
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = values[rng.integers(0, values.size, (stop - start, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


@dataclass(frozen=True)
class MetricSummary:
    """A metric's mean over users with its bootstrap interval."""

    mean: float
    low: float
    high: float


def summarize(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS, seed: int = 0,
              n_boot: int = 1000, recall_ks: Sequence[int] = RECALL_KS) -> dict[str, MetricSummary]:
    """Every metric of :func:`per_user_metrics` as mean and 95% interval.  Each metric's
    interval is drawn with ``seed`` on its own, so adding a metric changes no other."""
    return {name: MetricSummary(float(values.mean()) if values.size else float("nan"),
                                *bootstrap_interval(values, seed, n_boot))
            for name, values in per_user_metrics(ranks, ks, recall_ks).items()}
