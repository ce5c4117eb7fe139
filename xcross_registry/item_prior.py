"""The item-popularity prior: ``score += w · log(1 + count(item))``, counted on what the
model was allowed to see.

Why: on sparse domains popularity alone ranks about as well as a language model does
(on Amazon Tools the popularity baseline beat every text model), and a text scorer can
learn popularity only indirectly, from item titles.  Handing it the counts as one
feature with one learned weight lets training decide how much popularity is worth,
next to what the text says.

What it counts, and why exactly that: the occurrences of each item in the scored
domain's training sequences of the users the run trained on, ``training.select_users``
(its fraction, ``max_users`` and seed) and no other user.  A model trained on a quarter
of the target's users that counted all of them would have seen the other three
quarters' data, and the data-efficiency comparison would be void.  The counts are set
by :func:`~xcross_registry.training.train_scorer` from the very user list it trains
on, so the two cannot drift apart.  Items not in the counts (another catalogue's, free
text in a request) count zero, and so does every item when a model is used zero-shot
on another domain (:func:`~xcross_registry.subjects.load_subject` forgets the counts):
popularity measured on one domain says nothing about another's items, even where their
ids happen to be equal.

Where it lives: an optional part of the :class:`~xcross_registry.scorer.Scorer`
(``ScorerConfig.popularity_prior``), independent of the scoring mode, which never sees
it.  It is added exactly once, by whoever holds the items being scored:
``Scorer.prepare`` puts the candidates' log-counts beside the mode's tensors and
``Scorer.forward`` adds ``w · log-counts`` (training, and ``Scorer.score``).  A mode's
own paths (``score_matrix``, ``score_pairs``, ``score_embeddings``) return the mode's
scores without it, whether they pass through ``forward`` or not (the default ones
score with ``Scorer.score(..., with_prior=False)``), and their callers add
:meth:`ItemPrior.scores` of the items scored: :func:`~xcross_registry.scoring.score_candidates`
(evaluation, validation) and :mod:`~xcross_registry.serving` (candidate pools, whole
catalogues, re-ranking).  So evaluation, ``recommend``, the HTTP service and a reload in
a fresh process all score with the same prior, and a new mode needs to know nothing
about it.

``w`` starts at zero, so a fresh scorer with the prior scores exactly as one without
it.  Files (JSON and safetensors, never pickle): the counts as ``item_counts.json``
(``{"counts": {item id: count}}``), the weight as ``item_prior.safetensors`` beside an
adapter's head; a composition keeps the weight with the rest of what it trained and
stores the counts file beside it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from .data import Item, UserSequence

COUNTS_FILE = "item_counts.json"
WEIGHT_FILE = "item_prior.safetensors"


class ItemPrior(nn.Module):
    """A learned weight ``w`` (zero at the start) times ``log(1 + count)`` of each item.

    ``counts`` maps item ids to their counts; it is data, not a parameter, and is set
    by :meth:`count` when the owning scorer is trained."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.counts: dict[str, int] = {}

    def count(self, sequences: Iterable["UserSequence"], items: Sequence["Item"]) -> None:
        """Take the counts from ``sequences`` (catalogue indices into ``items``) and from
        nothing else: how often each item occurs, as the popularity baseline counts."""
        self.counts = dict(Counter(items[index].id for seq in sequences for index in seq.items))

    def forget_counts(self) -> None:
        """Every item counts zero: the model scores a domain whose data it never saw."""
        self.counts = {}

    def log_counts(self, items: Sequence["Item"]) -> Tensor:
        """``log(1 + count)`` of each item, float32 ``[len(items)]`` on the CPU."""
        counts = torch.tensor([self.counts.get(item.id, 0) for item in items], dtype=torch.float32)
        return torch.log1p(counts)

    def forward(self, log_counts: Tensor) -> Tensor:
        """``w · log_counts``, on the weight's device."""
        return self.weight * log_counts.to(self.weight.device)

    def scores(self, items: Sequence["Item"]) -> Tensor:
        """What the prior adds to each item's score: float32 ``[len(items)]`` on the CPU,
        computed as :meth:`forward` computes it inside a scorer's pass."""
        with torch.no_grad():
            return self(self.log_counts(items)).float().cpu()

    # -- files -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, *, weight: bool = True) -> None:
        """Write the counts and, unless the owner stores ``weight`` with its other trained
        tensors (a composition's ``trained.safetensors``), the weight."""
        from safetensors.torch import save_file

        directory = Path(directory)
        document = {"counts": dict(sorted(self.counts.items()))}
        (directory / COUNTS_FILE).write_text(json.dumps(document, indent=1) + "\n")
        if weight:
            save_file({"weight": self.weight.detach().float().cpu().contiguous()},
                      str(directory / WEIGHT_FILE), metadata={"format": "pt"})

    def load(self, directory: str | os.PathLike, *, weight: bool = True) -> None:
        """Read what :meth:`save` wrote; a missing or damaged file is a :class:`ModelError`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / COUNTS_FILE
        try:
            counts = json.loads(path.read_text())["counts"]
            if not isinstance(counts, dict) or not all(
                    isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool)
                    and value >= 0 for key, value in counts.items()):
                raise ValueError("counts must map item ids to non-negative integers")
            if weight:
                path = directory / WEIGHT_FILE
                value = load_file(str(path))["weight"]
                if value.shape != self.weight.shape:
                    raise ValueError(f"weight of shape {tuple(value.shape)}, expected a scalar")
                with torch.no_grad():
                    self.weight.copy_(value)
        except Exception as exc:  # unreadable, not JSON, not safetensors, wrong content
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load the popularity prior {path}: {reason}") from None
        self.counts = dict(counts)
