"""Text and IDs together: a text model's scores fused with a stored ID model's (late fusion).

A text model (an adapter or a composition) transfers from item titles and so works when
target data is scarce; an ID model (SASRec) learns item-to-item signal that text cannot
see, once there is enough of it.  The fused score of a candidate is

    text(c) + weight · z(c)        when the ID model has seen c,
    text(c) + unseen               when it has not,

where ``z`` is the ID model's score standardised over the row's seen candidates (so one
weight fits any ID model's scale, and rows differ only in shape), and ``weight`` and
``unseen`` are fitted on validation users by minimising the softmax cross-entropy of the
positive among its candidates: two numbers, starting from (0, 0), which is the text
model alone, so the fit can only improve the validation loss.  The users are the run's
allowed share of the validation users (:func:`~xcross_registry.training.allowed_validation_users`),
never a test user.

The fusion is stored with the model (``fusion`` in its settings: the ID model's name and
digest, the two numbers, what validation measured), so evaluation, ``recommend``, ``serve``
and a reload score alike (serving gives the ID model the request's history entries that
match catalogue items); the fused model is its own row on the board (method ``xcross+sasrec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import ModelError, ValidationError
from .metrics import per_user_metrics, sampled_ranks

if TYPE_CHECKING:  # pragma: no cover
    from .baselines import HistoryScoreFunction, ScoreFunction
    from .data import DomainData
    from .registry import Registry
    from .runs import FinishedRun

# An ID model marks a candidate it never saw in training with a score at or below this
# (SASRec's UNSEEN_ITEM_SCORE is -1e9); such candidates get the fitted ``unseen`` term.
UNSCORED_BELOW = -1.0e8


@dataclass(frozen=True)
class Fusion:
    """A fitted late fusion: ``with_model`` (``sasrec:DOMAIN@vN``), its artifact digest,
    and the two fitted numbers."""

    with_model: str
    digest: str
    weight: float
    unseen: float

    def combine(self, text: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Fused scores of a candidate matrix from the text model's and the ID model's."""
        z, seen = standardised(ids)
        return np.asarray(text, dtype=np.float64) + np.where(seen, self.weight * z, self.unseen)

    def to_dict(self) -> dict[str, Any]:
        return {"with": self.with_model, "digest": self.digest, "weight": self.weight, "unseen": self.unseen}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> "Fusion":
        try:
            return cls(stored["with"], stored["digest"], float(stored["weight"]), float(stored["unseen"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"stored fusion is malformed ({exc})") from None


def standardised(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z, seen): the ID scores standardised over each row's seen candidates, and which
    candidates the ID model has seen (a row with fewer than two seen has z = 0)."""
    ids = np.asarray(ids, dtype=np.float64)
    seen = ids > UNSCORED_BELOW
    count = seen.sum(axis=1, keepdims=True)
    mean = np.where(seen, ids, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
    spread = np.sqrt(np.where(seen, (ids - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1))
    z = np.where(seen & (count > 1) & (spread > 0), (ids - mean) / np.where(spread > 0, spread, 1.0), 0.0)
    return z, seen


def fit(text: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
    """(weight, unseen) minimising the mean softmax cross-entropy of column 0 (the
    positive) over the rows of ``text + weight·z`` / ``text + unseen``; deterministic."""
    import torch

    z, seen = standardised(ids)
    text_t = torch.as_tensor(np.asarray(text, dtype=np.float64))
    z_t, seen_t = torch.as_tensor(z), torch.as_tensor(seen)
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        fused = text_t + torch.where(seen_t, params[0] * z_t, params[1])
        value = torch.nn.functional.cross_entropy(fused, torch.zeros(len(fused), dtype=torch.long))
        value.backward()
        return value

    optimizer.step(loss)
    weight, unseen = (float(v) for v in params.detach())
    if not (np.isfinite(weight) and np.isfinite(unseen)):
        raise ModelError("the fusion fit diverged (non-finite weights); nothing was registered")
    return weight, unseen


def ndcg_at_10(scores: np.ndarray) -> float:
    return float(np.mean(per_user_metrics(sampled_ranks(np.asarray(scores)), ks=(10,))["ndcg@10"]))


def check_id_model(registry: "Registry", name: str, domain: str) -> tuple[str, str]:
    """(canonical name, digest) of the stored ID model ``name`` to fuse with a text model
    of ``domain``, refused by name before any model loads when it cannot be."""
    from .baselines import stored_baseline

    row = stored_baseline(registry, name)  # an unknown domain or version fails here
    if row is None:
        raise ValidationError(f"--with needs a stored trained baseline (an ID model such as "
                              f"sasrec:{domain}@v1), not {name!r}")
    if row.domain.name != domain:
        raise ValidationError(f"{row.label} scores {row.domain.name}, the model scores {domain}")
    return row.label, row.artifact_digest


def id_score_function(registry: "Registry", name: str) -> "ScoreFunction":
    """The score function of the stored ID model ``name`` (``sasrec:DOMAIN@vN``)."""
    from .baselines import BASELINES, stored_baseline

    row = stored_baseline(registry, name)
    return BASELINES[row.kind]().score_function(registry, row.domain.name, row.artifact_digest)


def fit_fusion(registry: "Registry", text_score: "ScoreFunction", with_model: str, domain: str, *,
               fraction: float, seed: int, valid_users: int, negatives: int = 29) -> dict[str, Any]:
    """Fit a fusion of ``text_score`` (a score function over ``domain``'s candidates) with
    the stored ID model ``with_model`` on the allowed validation users; returns what is
    stored with the model: the :class:`Fusion` fields plus the users it was fitted on and
    the validation NDCG@10 of the text model, the ID model and the fusion there."""
    from .training import allowed_validation_users, validation_set

    name, digest = check_id_model(registry, with_model, domain)
    data = registry.domain_data(domain)
    valid = validation_set(data, seed=seed, users=allowed_validation_users(data, fraction, valid_users),
                           negatives=negatives)
    if valid is None:
        raise ValidationError(f"fusing needs validation users of {domain}; it has none")
    ids = np.asarray(id_score_function(registry, name)(data, "valid", valid.users, valid.candidates))
    text = np.asarray(text_score(data, "valid", valid.users, valid.candidates), dtype=np.float64)
    weight, unseen = fit(text, ids)
    fusion = Fusion(name, digest, weight, unseen)
    return {**fusion.to_dict(), "users": len(valid.users),
            "validation_ndcg@10": {"text": ndcg_at_10(text), "ids": ndcg_at_10(ids),
                                   "fused": ndcg_at_10(fusion.combine(text, ids))}}


def fit_for_run(registry: "Registry", run: "FinishedRun", with_model: str, domain: str) -> dict[str, Any]:
    """:func:`fit_fusion` for a model just trained by ``run`` (its in-memory scorer, its
    run's fraction, seed and validation settings): what ``--with`` stores with it."""
    from .scoring import score_candidates

    job, config = run.job, run.config

    def text_score(data: "DomainData", split: str, users: Sequence[int], matrix, progress=None) -> np.ndarray:
        return score_candidates(job.scorer, data, job.template, split, matrix, users)

    return fit_fusion(registry, text_score, with_model, domain, fraction=config.fraction, seed=config.seed,
                      valid_users=config.valid_users, negatives=config.valid_negatives)


@dataclass(frozen=True)
class LoadedFusion:
    """A stored fusion with its ID model loaded over the text model's catalogue.  An ID
    model that scores histories (SASRec) is loaded once, for evaluation and serving
    alike; one that scores a split's users only is evaluated through ``split_scores``
    and cannot be served (``history_scores`` is None)."""

    fusion: Fusion
    history_scores: "HistoryScoreFunction | None"
    split_scores: "ScoreFunction | None" = None

    def ids_of_users(self, data: "DomainData", split: str, users: Sequence[int], matrix) -> np.ndarray:
        """The ID model's scores of a split's users' candidate rows."""
        if self.history_scores is None:
            return np.asarray(self.split_scores(data, split, users, matrix), dtype=np.float64)
        sequences = data.split(split)
        return np.asarray(self.history_scores([sequences[int(u)].history for u in users], np.asarray(matrix)),
                          dtype=np.float64)

    def combine(self, text: np.ndarray, histories: Sequence[Sequence[int]], matrix: np.ndarray) -> np.ndarray:
        """Fused scores ``[Q, C]`` from the text model's scores of a request's candidates
        (catalogue indices; -1 for one outside the catalogue, which the ID model never
        saw) and the histories (catalogue indices) they were scored for."""
        if self.history_scores is None:
            raise ValidationError(f"{self.fusion.with_model} scores a split's users only, not a history "
                                  "given at request time: recommend with the unfused model")
        matrix = np.asarray(matrix, dtype=np.int64)
        known = matrix >= 0
        ids = np.asarray(self.history_scores(histories, np.where(known, matrix, 0)), dtype=np.float64)
        return self.fusion.combine(text, np.where(known, ids, UNSCORED))


# The ID score given to a candidate outside the catalogue (below UNSCORED_BELOW).
UNSCORED = -1.0e9


def load_fusion(registry: "Registry", stored: dict[str, Any], data: "DomainData") -> LoadedFusion:
    """The stored fusion ``stored`` with its ID model loaded over ``data``'s catalogue;
    the ID model must still be the one fitted with."""
    from .baselines import BASELINES, stored_baseline

    fusion = Fusion.from_dict(stored)
    row = stored_baseline(registry, fusion.with_model)
    if row is None or row.artifact_digest != fusion.digest:
        raise ModelError(f"the fusion was fitted with {fusion.with_model} of digest {fusion.digest[:12]}, "
                         f"the registry now has {row.artifact_digest[:12] if row else 'no such model'}")
    baseline = BASELINES[row.kind]()
    history = baseline.history_score_function(registry, data, row.artifact_digest)
    if history is not None:
        return LoadedFusion(fusion, history)
    return LoadedFusion(fusion, None, baseline.score_function(registry, row.domain.name, row.artifact_digest))


def fused_score_function(text_score: "ScoreFunction", fused: LoadedFusion) -> Callable[..., np.ndarray]:
    """The score function of a fused model: the text model's scores of a split's users'
    candidates, fused with the ID model's scores of the same candidates."""

    def score(data: "DomainData", split: str, users: Sequence[int], matrix, progress=None) -> np.ndarray:
        text = np.asarray(text_score(data, split, users, matrix, progress=progress), dtype=np.float64)
        return fused.fusion.combine(text, fused.ids_of_users(data, split, users, matrix))

    return score
