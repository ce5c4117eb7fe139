"""The interface of a scoring mode: how a scorer turns histories and candidates into scores.

A :class:`~xcross_registry.scorer.Scorer` owns what every mode shares (the adapted
encoder, the tokenizer, the settings, the head as a module, files, the in-batch
negatives mask); its mode, one instance of a :class:`ScoringMode` subclass looked up by
the name stored in the scorer's settings, decides everything else: which head to build,
how histories and candidates become tensors, how those tensors become scores, and how a
whole candidate matrix is scored efficiently.  Modes hold no state: every method gets
the scorer as its first argument, so one instance serves any number of scorers.
A mode's scores never include the scorer's popularity prior: that is the scorer's,
independent of the mode, and added by whoever scored through the mode (see
:mod:`xcross_registry.item_prior`); the default paths below score through
``Scorer.score(..., with_prior=False)`` for that reason.

This module, like every built-in mode's, imports no torch at import time (torch is
imported by the methods that compute): the table of modes and their capabilities is
read by registry commands and argument checks, which must start fast.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import Tensor, nn

    from ..base_model import BaseModelInfo
    from ..data import DomainData, Item
    from ..scorer import Scorer, ScorerConfig
    from ..templates import PromptTemplate


class ScoringMode(ABC):
    """One way of scoring (history, candidate) pairs; subclass it and register the class
    with :func:`~xcross_registry.scoring_modes.register_scoring_mode`.

    ``ranks_catalogue``: item embeddings do not depend on the history, so one history
    encoding ranks a cached catalogue (whole-catalogue recommendation, the full-catalogue
    protocol).  Such a mode implements :meth:`score_embeddings`, and its :meth:`embed`
    is what encodes a history's query prompt and an item's document.
    ``shares_negatives``: the default of ``TrainingConfig.share_negatives``; sharing one
    set of negatives per batch pays off when a mode encodes each distinct document once.
    """

    name: ClassVar[str]
    ranks_catalogue: ClassVar[bool] = False
    shares_negatives: ClassVar[bool] = False

    @abstractmethod
    def make_head(self, info: "BaseModelInfo", config: "ScorerConfig") -> "nn.Module":
        """A freshly initialised head for a scorer on the base model ``info``.  Its
        parameters that should not train (e.g. a fixed scale) have ``requires_grad``
        False; a reloaded scorer keeps them frozen."""

    @abstractmethod
    def prepare(self, scorer: "Scorer", histories: Sequence[Sequence["Item"]],
                candidates: Sequence[Sequence["Item"]], template: "PromptTemplate",
                in_batch: bool) -> dict[str, "Tensor"]:
        """Render and tokenise B histories with C candidates each (already checked to
        be non-empty and rectangular) into the tensors :meth:`forward` takes.

        With ``in_batch``, :meth:`forward` must also score every row against the B
        rows' positives (each row's first candidate); prepare what that needs."""

    @abstractmethod
    def forward(self, scorer: "Scorer", num_candidates: int, in_batch_columns: int,
                **inputs: "Tensor") -> "Tensor":
        """Scores ``[B, num_candidates + in_batch_columns]`` from :meth:`prepare`'s tensors;
        the last ``in_batch_columns`` (B, or 0) are the scores of the B rows' positives.
        The scorer masks the ones a row may not use."""

    def embed(self, scorer: "Scorer", input_ids: "Tensor", attention_mask: "Tensor") -> "Tensor":
        """One float32 vector ``[B, H]`` per text: the encoder's states pooled as the
        scorer's settings say.  A catalogue ranker may transform it (dual normalises)."""
        from ..pooling import pool

        hidden = scorer.encoder(input_ids, attention_mask)
        return pool(hidden, attention_mask, scorer.config.pooling).float()

    def score_embeddings(self, scorer: "Scorer", queries: "Tensor", documents: "Tensor") -> "Tensor":
        """Catalogue rankers: scores of history embeddings ``[B, D]`` against documents
        ``[N, D]`` shared by all queries (``[B, N]``) or ``[B, C, D]`` per query (``[B, C]``)."""
        raise NotImplementedError(f"scoring mode {self.name!r} does not rank a catalogue")

    def query_vectors(self, scorer: "Scorer", queries: "Tensor") -> "Tensor | None":
        """Catalogue rankers whose :meth:`score_embeddings` against documents ``[N, D]`` is
        an inner product ``query_vectors(queries) @ documents.T``: those vectors ``[B, D]``,
        which a nearest-neighbour index over the documents can search (see
        :mod:`xcross_registry.ann`).  ``None``: this mode's scores are not such a product,
        and its catalogues are always scored exactly."""
        return None

    def score_matrix(self, scorer: "Scorer", data: "DomainData", template: "PromptTemplate",
                     histories: Sequence[Sequence["Item"]], matrix: "np.ndarray", batch_size: int,
                     stop: Callable[[], bool], report: Callable[[int, int], None]) -> list["np.ndarray"]:
        """Score rows ``[users, candidates]`` of ``matrix`` (catalogue indices) for
        ``histories`` (one per row), as consecutive blocks of rows, under inference mode.

        ``batch_size`` is texts per forward pass.  ``stop()`` is asked before every pass;
        once it says stop, the blocks done so far are returned.  ``report(done, total)``
        is told the passes done after each one.

        This default works for any mode: it scores blocks of whole rows through
        :meth:`Scorer.score`, every (history, candidate) pair in one pass.  A mode that
        can share work between rows (dual: each distinct item encoded once) overrides it."""
        users_per_pass = max(1, batch_size // max(matrix.shape[1], 1))
        passes = math.ceil(len(histories) / users_per_pass)
        blocks = []
        for start in range(0, len(histories), users_per_pass):
            if stop():
                break
            candidates = [[data.items[i] for i in row] for row in matrix[start:start + users_per_pass]]
            blocks.append(scorer.score(histories[start:start + users_per_pass], candidates,
                                       template, with_prior=False).float().cpu().numpy())
            report(start // users_per_pass + 1, passes)
        return blocks

    def score_pairs(self, scorer: "Scorer", template: "PromptTemplate",
                    pairs: Sequence[tuple[Sequence["Item"], Sequence["Item"]]]) -> list[list[float]]:
        """Serving: the scores of each (history, candidate list) pair, under inference mode,
        each exactly as the pair scores alone whatever other pairs share the call (a
        service batches the requests that arrive together).

        This default scores each pair in its own pass, which is batch-invariant by
        construction; a mode that can share passes between pairs overrides it (cross:
        prompts of equal padded length share passes, see :mod:`xcross_registry.batching`)."""
        return [scorer.score([history], [list(pool)], template, with_prior=False)[0].float().tolist()
                for history, pool in pairs]

    def __repr__(self) -> str:
        return f"<scoring mode {self.name!r}>"
