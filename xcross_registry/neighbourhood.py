"""Neighbourhood baselines: item-kNN and a last-item Markov chain, the ID models that on
sparse Amazon data are often level with SASRec.

Both learn from the training sequences they are allowed to see (the users
:func:`xcross_registry.training.select_users` picks for their ``fraction``, ``seed`` and
``max_users``: the users a LoRA and a SASRec at that fraction train on) and nothing
else, and both store what they learned as a sparse item-by-item matrix in CSR form
(``indptr``, ``indices``, ``values``) plus the training popularity of every item, in one
safetensors file:

* **item-kNN**: the cosine of two items' occurrence over training sequences,
  ``sim(i, j) = C(i, j) / sqrt(n(i) n(j))`` (``C``: sequences holding both, ``n``:
  sequences holding one), each item keeping its ``neighbours`` most similar items.
  A history scores candidate ``c`` by ``sum_k decay**k * sim(h_k, c)`` over its ``history``
  most recent items (``k = 0`` the most recent, repeats adding up).
* **Markov**: transition counts ``T(a, b)`` of consecutive items in training sequences;
  from the history's last item ``a``, ``P(c | a) = (T(a, c) + smoothing * p(c)) /
  (N(a) + smoothing)``, where ``p`` is the training popularity share and ``N(a)`` the
  transitions out of ``a``: popularity is the back-off, and all there is after an item
  never seen leaving.

Items the model knows nothing about tie at its lowest score, and a tie counts against
the positive (:mod:`xcross_registry.metrics`).  Item-kNN orders the candidates no
neighbour reaches by popularity: it adds :data:`POPULARITY_TIEBREAK` times the
popularity share (at most 1), which changes only ties and differences below 1e-12 (the
smallest similarity term is ``decay**(history - 1) / #training users``: 5.8e-10 for the
defaults on 30,711 users).

Numpy only: scoring never imports torch (training does, to pick the users as a LoRA
run would).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import safetensors.numpy

from .data import DomainData, UserSequence, catalogue_digest
from .errors import ModelError, ValidationError, refuse_unknown_fields

FORMAT = "xreg-neighbourhood/1"
WEIGHTS_FILE = "neighbourhood.safetensors"
CONFIG_FILE = "neighbourhood.json"
POPULARITY_TIEBREAK = 1e-12


def _check_positive_int(config: Any, names: Sequence[str], minimum: int) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValidationError(f"{config.kind} {name} must be an integer >= {minimum}, not {value!r}")


@dataclass
class NeighbourhoodConfig:
    """What both baselines share: which training users they learn from (``fraction``,
    ``seed``, ``max_users``, as :class:`~xcross_registry.training.TrainingConfig` picks
    them) and how the stored row's validation is measured (NDCG@10 of ``valid_users``
    validation users against ``valid_negatives`` uniformly drawn negatives)."""

    kind = ""  # the baseline's name (a class attribute, not a setting)
    fraction: float = 1.0
    seed: int = 0
    max_users: int | None = None
    valid_users: int = 1000
    valid_negatives: int = 29

    def __post_init__(self) -> None:
        _check_positive_int(self, ("seed", "valid_users"), 0)
        _check_positive_int(self, ("valid_negatives",), 1)
        if not isinstance(self.fraction, (int, float)) or isinstance(self.fraction, bool) \
                or not 0.0 < self.fraction <= 1.0:
            raise ValidationError(f"{self.kind} fraction must be in (0, 1], not {self.fraction!r}")
        if self.max_users is not None:
            _check_positive_int(self, ("max_users",), 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fit(self, sequences: Sequence[UserSequence], num_items: int) -> "Csr":
        """The item-by-item matrix learned from ``sequences``."""
        raise NotImplementedError

    def scores(self, model: "SparseItemModel", history: Sequence[int]) -> np.ndarray:
        """Scores of every catalogue item after ``history`` (oldest first)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "NeighbourhoodConfig":
        if not isinstance(values, dict):
            raise ValidationError(f"a {cls.kind} config is a JSON object, not {type(values).__name__}")
        return cls(**refuse_unknown_fields(cls, values, f"{cls.kind} config"))


@dataclass
class ItemKNNConfig(NeighbourhoodConfig):
    """``neighbours`` kept per item (0: all), the recency ``decay`` of history weights, and
    the ``history`` most recent items read."""

    kind = "item-knn"
    neighbours: int = 100
    decay: float = 0.8
    history: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int(self, ("neighbours",), 0)
        _check_positive_int(self, ("history",), 1)
        if not isinstance(self.decay, (int, float)) or isinstance(self.decay, bool) or not 0 < self.decay <= 1:
            raise ValidationError(f"item-knn decay must be in (0, 1], not {self.decay!r}")

    def fit(self, sequences: Sequence[UserSequence], num_items: int) -> "Csr":
        return fit_item_knn(sequences, num_items, self.neighbours)

    def scores(self, model: "SparseItemModel", history: Sequence[int]) -> np.ndarray:
        scores = POPULARITY_TIEBREAK * model.share()
        for age, item in enumerate(list(history)[-self.history:][::-1]):
            columns, values = model.row(item)
            scores[columns] += self.decay ** age * values
        return scores


@dataclass
class MarkovConfig(NeighbourhoodConfig):
    """``smoothing``: the weight of the popularity back-off (a Dirichlet prior's mass)."""

    kind = "markov"
    smoothing: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.smoothing, (int, float)) or isinstance(self.smoothing, bool) \
                or not self.smoothing > 0:
            raise ValidationError(f"markov smoothing must be positive, not {self.smoothing!r}")

    def fit(self, sequences: Sequence[UserSequence], num_items: int) -> "Csr":
        return fit_markov(sequences, num_items)

    def scores(self, model: "SparseItemModel", history: Sequence[int]) -> np.ndarray:
        columns, counts = model.row(history[-1]) if len(history) else (np.empty(0, np.int64), np.empty(0))
        scores = self.smoothing * model.share()
        scores[columns] += counts
        return scores / (counts.sum() + self.smoothing)


@dataclass
class SparseItemModel:
    """An item-by-item matrix in CSR form with the training popularity: what either
    baseline learned, and what it scores with."""

    config: NeighbourhoodConfig
    indptr: np.ndarray  # int64 [items + 1]
    indices: np.ndarray  # int64 [entries]
    values: np.ndarray  # float64 [entries]
    popularity: np.ndarray  # int64 [items]: occurrences in the training sequences
    catalogue: str  # catalogue_digest of the data it was trained on

    @property
    def num_items(self) -> int:
        return len(self.popularity)

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = self.indptr[item], self.indptr[item + 1]
        return self.indices[start:stop], self.values[start:stop]

    def share(self) -> np.ndarray:
        """Each item's share of the training occurrences (all zeros without training data)."""
        total = self.popularity.sum()
        return self.popularity / total if total else np.zeros(self.num_items)

    def history_scores(self, history: Sequence[int]) -> np.ndarray:
        """Scores of every catalogue item after ``history`` (oldest first)."""
        return self.config.scores(self, history)


Csr = tuple[np.ndarray, np.ndarray, np.ndarray]  # indptr, indices, values


def _csr(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, num_items: int) -> Csr:
    """CSR of entries already sorted by row."""
    indptr = np.zeros(num_items + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), columns.astype(np.int64), values.astype(np.float64)


def _pairs(keys: list[np.ndarray], num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, counts) of the item pairs in ``keys`` (``row * num_items + column``),
    counted, sorted by row then column."""
    if not keys:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    unique, counts = np.unique(np.concatenate(keys), return_counts=True)
    return unique // num_items, unique % num_items, counts


def fit_item_knn(sequences: Sequence[UserSequence], num_items: int, neighbours: int) -> Csr:
    """CSR of each item's ``neighbours`` (0: all) most cosine-similar items (see the module
    docstring); ties keep the lower item index."""
    occurrences = np.zeros(num_items, dtype=np.int64)
    keys = []
    for seq in sequences:
        distinct = np.unique(np.asarray(seq.items, dtype=np.int64))
        occurrences[distinct] += 1
        if len(distinct) > 1:
            left, right = np.meshgrid(distinct, distinct, indexing="ij")
            off_diagonal = left != right
            keys.append(left[off_diagonal] * num_items + right[off_diagonal])
    rows, columns, together = _pairs(keys, num_items)
    similarity = together / np.sqrt(occurrences[rows] * occurrences[columns])
    order = np.lexsort((columns, -similarity, rows))
    rows, columns, similarity = rows[order], columns[order], similarity[order]
    if neighbours:
        starts = np.searchsorted(rows, rows, side="left")
        keep = np.arange(len(rows)) - starts < neighbours
        rows, columns, similarity = rows[keep], columns[keep], similarity[keep]
    return _csr(rows, columns, similarity, num_items)


def fit_markov(sequences: Sequence[UserSequence], num_items: int) -> Csr:
    """CSR of the transition counts between consecutive items."""
    keys = [np.asarray(seq.items[:-1], dtype=np.int64) * num_items + np.asarray(seq.items[1:], dtype=np.int64)
            for seq in sequences if len(seq.items) > 1]
    rows, columns, counts = _pairs(keys, num_items)
    return _csr(rows, columns, counts, num_items)


def train_neighbourhood(data: DomainData, config: NeighbourhoodConfig) -> tuple[SparseItemModel, dict[str, Any]]:
    """Fit the baseline ``config`` describes on ``data``'s selected training users;
    returns the model and a JSON-ready record of the run (with its validation)."""
    from .training import TrainingConfig, select_users

    started = time.monotonic()
    users = select_users(data.train, TrainingConfig(fraction=config.fraction, max_users=config.max_users,
                                                    seed=config.seed))
    if not users:
        raise ValidationError(f"{config.kind} needs training users; the selection has none")
    popularity = np.zeros(len(data.items), dtype=np.int64)
    for seq in users:
        np.add.at(popularity, np.asarray(seq.items, dtype=np.int64), 1)
    indptr, indices, values = config.fit(users, len(data.items))
    model = SparseItemModel(config, indptr, indices, values, popularity, catalogue_digest(data))
    validation = _validate(model, data, config)
    positions = sum(len(seq.items) - 1 for seq in users)
    record = {"model": config.kind, "train_users": len(users), "train_positions": positions,
              "entries": int(len(indices)), "items": len(data.items),
              "validation": validation, "stop_reason": "completed", "examples_seen": positions,
              "optimizer_steps": 0, "epochs_completed": 1,
              "train_seconds": round(time.monotonic() - started, 2)}
    return model, record


def _validate(model: SparseItemModel, data: DomainData, config: NeighbourhoodConfig) -> dict[str, float] | None:
    """Hit@1 and NDCG@10 on up to ``valid_users`` validation users (``None`` without any)."""
    from .candidates import sample_candidates
    from .metrics import per_user_metrics, sampled_ranks

    if not data.valid or not config.valid_users:
        return None
    drawn = sample_candidates(data, "valid", "sampled", seed=config.seed,
                              negatives=config.valid_negatives, max_users=config.valid_users)
    score = score_function(model)
    values = per_user_metrics(sampled_ranks(score(data, "valid", drawn.users.tolist(), drawn.candidates)),
                              (1, 10), ())
    return {"hit@1": float(values["hit@1"].mean()), "ndcg@10": float(values["ndcg@10"].mean())}


def save_neighbourhood(model: SparseItemModel, folder: str | Path) -> Path:
    """Write the matrix and popularity (safetensors) and the config (JSON) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file({"indptr": model.indptr, "indices": model.indices, "values": model.values,
                                 "popularity": model.popularity}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "kind": model.config.kind,
                                                  "config": model.config.to_dict(),
                                                  "catalogue": model.catalogue}, sort_keys=True, indent=1) + "\n")
    return folder


CONFIGS: dict[str, type[NeighbourhoodConfig]] = {cls.kind: cls for cls in (ItemKNNConfig, MarkovConfig)}


def load_neighbourhood(folder: str | Path) -> SparseItemModel:
    """What :func:`save_neighbourhood` wrote; :class:`ModelError` naming the file when a
    file is missing, malformed or inconsistent."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelError(f"{path}: missing; a saved neighbourhood model has {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        header = json.loads(config_path.read_text())
        if header.get("format") != FORMAT or header.get("kind") not in CONFIGS:
            raise ValueError(f"format is not {FORMAT} with a known kind")
        config = CONFIGS[header["kind"]].from_dict(header["config"])
        catalogue = header["catalogue"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ValidationError) as error:
        raise ModelError(f"{config_path}: not a neighbourhood model config ({error})") from None
    try:
        arrays = safetensors.numpy.load_file(str(weights_path))
        model = SparseItemModel(config, arrays["indptr"], arrays["indices"], arrays["values"],
                                arrays["popularity"], catalogue)
    except Exception as error:  # safetensors raises its own (non-exported) error types
        raise ModelError(f"{weights_path}: not a neighbourhood model ({type(error).__name__}: {error})") from None
    entries = len(model.indices)
    if len(model.indptr) != model.num_items + 1 or model.indptr[-1] != entries or len(model.values) != entries \
            or (entries and not 0 <= model.indices.min() <= model.indices.max() < model.num_items):
        raise ModelError(f"{weights_path}: its arrays do not fit together")
    return model


def score_function(model: SparseItemModel) -> Callable[..., np.ndarray]:
    """``score(data, split, users, matrix [U, C], progress=None) -> scores [U, C]``: each
    user's history in ``data.split(split)`` scored against the catalogue indices of their
    row.  Refuses (:class:`ModelError`) data whose catalogue is not the one it learned."""

    def score(data: DomainData, split: str, users: Sequence[int], matrix: np.ndarray,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        if len(data.items) != model.num_items or catalogue_digest(data) != model.catalogue:
            raise ModelError(f"this {model.config.kind} model was trained on another catalogue "
                             f"({model.num_items} items) than the scored data's ({len(data.items)} items)")
        sequences = data.split(split)
        columns = np.asarray(matrix, dtype=np.int64)
        scores = np.empty(columns.shape, dtype=np.float64)
        for row, user in enumerate(users):
            scores[row] = model.history_scores(sequences[int(user)].history)[columns[row]]
            if progress is not None and (row + 1) % 1000 == 0:
                progress(row + 1, len(users))
        if progress is not None:
            progress(len(users), len(users))
        return scores

    return score
