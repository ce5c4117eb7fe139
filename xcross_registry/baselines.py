"""Baselines: the rankers a team would ship instead, asked for as ``NAME:DOMAIN``.

A baseline is evaluated on the same stored candidates as every model, so it sits on the
same leaderboard and can be compared user by user.  A new one is one class here (or in
a plugin's code) registered in :data:`BASELINES`.  Two sorts share the table:

* model-free (``popularity:tools``): scores come from the domain's data alone;
* trained (``sasrec:tools@v2``, ``sasrec:tools`` for the latest; ``item-knn`` and
  ``markov``, the neighbourhood models of :mod:`xcross_registry.neighbourhood`): :func:`train_baseline`
  trains one on a domain's training users and stores it as a ``baseline_models`` row
  (artifact, settings, run record, validation metrics, data fingerprint), numbered per
  domain and baseline.  Its class says how to check its settings, train and save it,
  and score with what it saved; the storing and numbering are shared.

Trained baselines that *are* scorers over a language model (the head-only scorer, a
source adapter used zero-shot, the linear merge) are adapters or compositions, not
entries here: an ID model such as SASRec has no prompt, base model or LoRA to store.

Torch-free: naming a baseline happens before any model library is imported; a trained
baseline imports its model code only to train or to score.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from .errors import ValidationError
from .named_tables import add_named_class
from .runs import signals_interrupt
from .stored_folders import store_folder, write_folder

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .data import DomainData
    from .registry import Registry
    from .schema import BaselineModel

# score(data, split, user_indices, candidate_matrix [U, C], progress=None) -> scores [U, C];
# progress(done, total), when given, follows the work (see xcross_registry.progress).
ScoreFunction = Callable[..., "np.ndarray"]
# score(histories as lists of catalogue indices, candidate_matrix [U, C]) -> scores [U, C]:
# a request's history rather than a split's user (serving a model fused with the baseline).
HistoryScoreFunction = Callable[..., "np.ndarray"]


@dataclass(frozen=True)
class BaselineRun:
    """What training a baseline produced, besides the files it saved: its settings as
    JSON, the record of the run, what validation measured (the shape adapters store:
    ``validation``, ``best_epoch``, ``train_users``, ``seconds``) and its size."""

    settings: dict[str, Any]
    run: dict[str, Any]
    metrics: dict[str, Any]
    trainable_parameters: int


class Baseline:
    """A ranker of a domain's candidates that is not a language-model scorer.

    ``trained`` False: :meth:`score_function` scores from the data alone.  ``trained``
    True: :meth:`settings`, :meth:`train` and :meth:`score_function` with the stored
    artifact; the saved folder is stored under the manifest kind ``manifest``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    trained: ClassVar[bool] = False
    manifest: ClassVar[str] = ""

    def score_function(self, registry: "Registry", domain: str, artifact: str | None = None) -> ScoreFunction:
        """How to score ``domain``; ``artifact`` is a trained baseline's stored folder."""
        raise NotImplementedError

    def history_score_function(self, registry: "Registry", data: "DomainData",
                               artifact: str | None = None) -> HistoryScoreFunction | None:
        """How to score histories given at request time over ``data``'s catalogue, what a
        text model fused with this baseline needs to be served; ``None`` for a baseline
        that scores a split's users only."""
        return None

    def config_class(self) -> type:
        """The dataclass of its training settings (with ``from_dict`` and ``to_dict``)."""
        raise NotImplementedError

    def settings(self, config: Any) -> Any:
        """The training settings from ``config`` (the baseline's config object, a dict of
        its fields, or ``None`` for the defaults), checked: bad values raise
        :class:`ValidationError` before anything is trained."""
        cls = self.config_class()
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        return cls.from_dict(config)

    def train(self, data: "DomainData", settings: Any, folder: Path) -> BaselineRun:
        """Train on ``data`` and save the model's files into ``folder``."""
        raise NotImplementedError


class Popularity(Baseline):
    """An item's score is how often it occurs in the domain's training sequences: the
    number a recommender has to beat before it is worth anything."""

    name = "popularity"
    description = "items ranked by their count in the training sequences"

    def score_function(self, registry: "Registry", domain: str, artifact: str | None = None) -> ScoreFunction:
        import numpy as np

        def score(data: "DomainData", split: str, users: Sequence[int], matrix: "np.ndarray",
                  progress=None) -> "np.ndarray":
            return np.asarray(data.popularity(), dtype=np.float64)[matrix]

        return score


class SASRec(Baseline):
    """The ID-based sequential model a recommendation team would train instead
    (:mod:`xcross_registry.sasrec`), on the users the target LoRA at the same fraction
    and seed trains on, so the two can be compared fraction by fraction."""

    name = "sasrec"
    description = "SASRec (Kang & McAuley 2018): item ids through causal self-attention"
    trained = True
    manifest = "xreg.sasrec.v1"

    def config_class(self) -> type:
        from .sasrec import SASRecConfig

        return SASRecConfig

    def train(self, data: "DomainData", settings: Any, folder: Path) -> BaselineRun:
        from .sasrec import save_sasrec, train_sasrec

        model, record = train_sasrec(data, settings)
        save_sasrec(model, settings, folder)
        # The row holds the config and the data fingerprint once, in their own places.
        run = {key: value for key, value in record.items()
               if key not in ("model", "config", "data_fingerprint", "best_metrics")}
        return BaselineRun(settings=settings.to_dict(), run=run,
                           metrics={"validation": record["best_metrics"], "best_epoch": record["best_epoch"],
                                    "train_users": record["train_users"], "seconds": record["train_seconds"]},
                           trainable_parameters=sum(p.numel() for p in model.parameters()))

    def score_function(self, registry: "Registry", domain: str, artifact: str | None = None) -> ScoreFunction:
        from .sasrec import sasrec_score_function

        return sasrec_score_function(self._load(registry, artifact))

    def history_score_function(self, registry: "Registry", data: "DomainData",
                               artifact: str | None = None) -> HistoryScoreFunction:
        from .sasrec import sasrec_history_scorer

        return sasrec_history_scorer(self._load(registry, artifact), data)

    def _load(self, registry: "Registry", artifact: str | None):
        from .sasrec import load_sasrec

        with registry.store.staging_folder("load") as folder:
            write_folder(registry, artifact, folder, self.manifest)
            model, _ = load_sasrec(folder)
        return model


class Neighbourhood(Baseline):
    """A neighbourhood model (:mod:`xcross_registry.neighbourhood`) trained on the users a
    LoRA at the same fraction and seed trains on, stored as a sparse item matrix."""

    trained = True
    manifest = "xreg.neighbourhood.v1"

    def config_class(self) -> type:
        from .neighbourhood import CONFIGS

        return CONFIGS[self.name]

    def train(self, data: "DomainData", settings: Any, folder: Path) -> BaselineRun:
        from .neighbourhood import save_neighbourhood, train_neighbourhood

        model, record = train_neighbourhood(data, settings)
        save_neighbourhood(model, folder)
        run = {key: value for key, value in record.items() if key not in ("model", "validation")}
        return BaselineRun(settings=settings.to_dict(), run=run,
                           metrics={"validation": record["validation"], "best_epoch": None,
                                    "train_users": record["train_users"], "seconds": record["train_seconds"]},
                           trainable_parameters=record["entries"])

    def score_function(self, registry: "Registry", domain: str, artifact: str | None = None) -> ScoreFunction:
        from .neighbourhood import load_neighbourhood, score_function

        with registry.store.staging_folder("load") as folder:
            write_folder(registry, artifact, folder, self.manifest)
            model = load_neighbourhood(folder)
        return score_function(model)


class ItemKNN(Neighbourhood):
    """Item-kNN: cosine on item co-occurrence in training sequences, recency-weighted history."""

    name = "item-knn"
    description = "item-kNN: cosine on co-occurrence in training sequences, recency-weighted history"


class Markov(Neighbourhood):
    """First-order Markov chain on the last item, backing off to popularity."""

    name = "markov"
    description = "last-item transitions (first-order Markov) with popularity back-off"


BASELINES: dict[str, type[Baseline]] = {}


def register_baseline(cls: type[Baseline]) -> type[Baseline]:
    """Add a baseline class to :data:`BASELINES` (usable as a decorator)."""
    return add_named_class(BASELINES, cls, "baseline")


for _baseline in (Popularity, SASRec, ItemKNN, Markov):
    register_baseline(_baseline)


def split_baseline_name(name: str) -> tuple[type[Baseline], str] | None:
    """(baseline class, the rest) for ``NAME:REST`` when NAME is a registered baseline;
    the rest is a domain, or ``DOMAIN@vN`` for a trained baseline's version."""
    kind, colon, rest = name.partition(":")
    if not colon or kind not in BASELINES or not rest:
        return None
    return BASELINES[kind], rest


def trainable_baseline(name: str) -> type[Baseline]:
    """The class of the trained baseline ``name``; one line naming the trainable ones otherwise."""
    cls = BASELINES.get(name)
    if cls is None or not cls.trained:
        trainable = ", ".join(n for n, c in BASELINES.items() if c.trained)
        raise ValidationError(f"{name!r} is not a trainable baseline; trainable baselines: {trainable}")
    return cls


def settings_from_options(name: str, values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The settings of trained baseline ``name`` among command-line option ``values``
    (every trained baseline's options, by field); an option of another baseline set to
    something else than its default ``defaults[field]`` is refused by its flag."""
    fields = {field.name for field in dataclasses.fields(trainable_baseline(name)().config_class())}
    stray = sorted(field for field, value in values.items()
                   if field not in fields and value != defaults.get(field))
    if stray:
        flags = ", ".join("--" + field.replace("_", "-") for field in stray)
        own = ", ".join("--" + field.replace("_", "-") for field in sorted(fields))
        raise ValidationError(f"{flags} does not apply to {name} (its options: {own})")
    return {field: value for field, value in values.items() if field in fields}


def stored_baseline(registry: "Registry", name: str) -> "BaselineModel | None":
    """The stored row of ``NAME:DOMAIN[@vN]`` when NAME is a trained baseline (the
    latest version without ``@vN``), ``None`` when ``name`` names no trained baseline;
    an unknown domain or version is an error."""
    baseline = split_baseline_name(name)
    if baseline is None or not baseline[0].trained:
        return None
    return registry.baseline_model(baseline[0].name, baseline[1])


def train_baseline(registry: "Registry", name: str, domain: str, config: Any = None,
                   option_defaults: dict[str, Any] | None = None) -> "BaselineModel":
    """Train the baseline ``name`` on ``domain`` and register it as the domain's next
    version of it (``NAME:DOMAIN@vN``); returns the row.

    ``config`` is the baseline's config (for ``sasrec`` a
    :class:`~xcross_registry.sasrec.SASRecConfig`), a dict of its fields, or ``None``;
    with ``option_defaults`` it is a dict of every trained baseline's command-line options,
    narrowed by :func:`settings_from_options`.
    The name, the domain, the settings and the data are checked before training; the
    files are stored after it and the row written in one transaction, so bad input, a
    failed run or an interruption (SIGTERM, Ctrl-C) leaves the registry as it was and no
    staging behind."""
    baseline = trainable_baseline(name)()
    registry.domain(domain)
    if option_defaults is not None:
        config = settings_from_options(name, config, option_defaults)
    settings = baseline.settings(config)
    data = registry.domain_data(domain)
    started = time.perf_counter()
    with signals_interrupt(), registry.store.staging_folder("baseline") as folder:
        trained = baseline.train(data, settings, folder)
        digest = store_folder(registry, folder, baseline.manifest)
    return registry.add_baseline_model(
        domain, baseline.name, artifact_digest=digest, trainable_parameters=trained.trainable_parameters,
        training_config={"training": trained.settings,
                         "run": {**trained.run, "wall_seconds": round(time.perf_counter() - started, 2)}},
        metrics=trained.metrics)
