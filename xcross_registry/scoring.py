"""Scoring stored candidates: the one path from a scorer to a score matrix.

Training validates with it, evaluation ranks with it, and the plugin test kit checks a
plugin's data through it, so all three measure a model the same way.  How a mode scores
a matrix efficiently is the mode's business (:meth:`ScoringMode.score_matrix
<xcross_registry.scoring_modes.ScoringMode.score_matrix>`); this module checks the
matrix, builds the histories, adds the scorer's popularity prior (modes never see it,
see :mod:`xcross_registry.item_prior`) and restores the scorer's train/eval mode.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .data import DomainData
from .errors import ValidationError
from .metrics import per_user_metrics, sampled_ranks
from .scorer import Scorer
from .templates import PromptTemplate


def score_candidates(scorer: Scorer, data: DomainData, template: PromptTemplate, split: str,
                     candidate_matrix: np.ndarray | Sequence[Sequence[int]], user_indices: Sequence[int],
                     batch_size: int = 64, should_stop: Callable[[], bool] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Scores ``[users, candidates]`` of ``candidate_matrix`` (item indices) for the
    histories of ``split``'s users ``user_indices``.

    ``batch_size`` is texts per forward pass.  A dual scorer encodes each distinct
    candidate item once and each history once.  ``should_stop`` is polled before
    every forward pass; once it says stop, the scores of the users done so far (the
    first rows, possibly none) are returned.  ``progress(done, total)`` is told the
    forward passes done after each one.  The scorer's train/eval mode is restored
    afterwards.  A scorer's popularity prior is added to the mode's scores here, by the
    candidates' catalogue items.
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
    try:
        with torch.inference_mode():
            blocks = scorer.mode.score_matrix(scorer, data, template, histories, matrix, batch_size,
                                              should_stop or (lambda: False),
                                              progress or (lambda done, total: None))
    finally:
        scorer.train(was_training)
    scores = np.concatenate(blocks) if blocks else np.zeros((0, matrix.shape[1]), dtype=np.float32)
    if scorer.item_prior is None:
        return scores
    # A copy: stored candidate matrices are read-only views, which torch.from_numpy warns about.
    prior = scorer.item_prior.scores(data.items)[torch.tensor(matrix[:len(scores)])]
    return (torch.from_numpy(scores) + prior).numpy()


def hit_and_ndcg_per_user(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Hit@1 and NDCG@10 of each scored user (the positive in column 0): what training
    validates on."""
    if not len(scores):
        return {"hit@1": np.zeros(0), "ndcg@10": np.zeros(0)}
    values = per_user_metrics(sampled_ranks(scores), ks=(1, 10))
    return {"hit@1": np.asarray(values["hit@1"], dtype=float), "ndcg@10": np.asarray(values["ndcg@10"], dtype=float)}


def evaluate_sampled(scorer: Scorer, data: DomainData, template: PromptTemplate, split: str,
                     candidate_matrix: np.ndarray, user_indices: Sequence[int]) -> dict[str, float]:
    """Hit@1 and NDCG@10 with the positive in column 0; ties count against the positive."""
    scores = score_candidates(scorer, data, template, split, candidate_matrix, user_indices)
    return {name: float(values.mean()) for name, values in hit_and_ndcg_per_user(scores).items()}
