"""``cross``, the X-Cross paper's mode: history and candidate in one prompt.

The prompt (history, candidate) is encoded as one text, pooled, and
:class:`~.heads.CrossHead` turns the pooled state into a score, adding a cosine between
the history's and the candidate's tokens of the same pass and a learned prior (so it
starts from a sensible ranking).  Every candidate costs a full forward pass over the
history, so it is the accurate, expensive re-ranker; it cannot rank a catalogue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..errors import ValidationError
from .interface import ScoringMode

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..base_model import BaseModelInfo
    from ..data import Item
    from ..scorer import Scorer, ScorerConfig
    from ..templates import PromptTemplate


class CrossMode(ScoringMode):
    """Scores one joint (history, candidate) prompt per candidate."""

    name = "cross"
    ranks_catalogue = False
    # A cross prompt contains the history, so sharing negatives saves no encoding and
    # only narrows the negatives a step sees.
    shares_negatives = False

    def make_head(self, info: "BaseModelInfo", config: "ScorerConfig") -> "nn.Module":
        from .heads import CrossHead

        return CrossHead(info.hidden_size, config.head_hidden_size, config.scale, config.learn_scale)

    def prepare(self, scorer: "Scorer", histories: Sequence[Sequence["Item"]],
                candidates: Sequence[Sequence["Item"]], template: "PromptTemplate",
                in_batch: bool) -> dict[str, "Tensor"]:
        """B×C prompts, query-major, with the masks of each prompt's candidate and history
        tokens; ``in_batch`` appends the B positives to every row: B×(C+B) prompts."""
        appended = [row[0] for row in candidates] if in_batch else []
        rendered = [template.render_with_span(history, item, scorer.tokenizer, scorer.config.max_length)
                    for history, row in zip(histories, candidates) for item in [*row, *appended]]
        texts, spans = zip(*rendered)
        return scorer.tokenize(texts, spans)

    def forward(self, scorer: "Scorer", num_candidates: int, in_batch_columns: int,
                input_ids: "Tensor", attention_mask: "Tensor",
                candidate_mask: "Tensor | None" = None, history_mask: "Tensor | None" = None) -> "Tensor":
        if candidate_mask is None or history_mask is None:
            raise ValidationError("a cross scorer needs the candidate and history token masks")
        from ..pooling import pool

        hidden = scorer.encoder(input_ids, attention_mask)
        pooled = pool(hidden, attention_mask, scorer.config.pooling).float()
        history = pool(hidden, history_mask, "mean").float()
        candidate = pool(hidden, candidate_mask, "mean").float()
        return scorer.head(pooled, history, candidate).view(-1, num_candidates + in_batch_columns)

    def score_pairs(self, scorer: "Scorer", template: "PromptTemplate",
                    pairs: Sequence[tuple[Sequence["Item"], Sequence["Item"]]]) -> list[list[float]]:
        """Every (history, candidate) prompt of every pair is one row of a shared pass;
        prompts of equal padded length share passes, so a pair's scores do not depend
        on the others."""
        from ..batching import PAD_MULTIPLE, bucketed, to_device

        rendered = [template.render_with_span(history, item, scorer.tokenizer, scorer.config.max_length)
                    for history, pool in pairs for item in pool]

        def run(chunk: list[tuple[str, tuple[int, int]]]) -> "Tensor":
            texts, spans = zip(*chunk)
            inputs = scorer.tokenize(texts, spans, pad_to_multiple_of=PAD_MULTIPLE)
            return scorer(**to_device(inputs, scorer.device), num_candidates=1)[:, 0].float()

        flat = bucketed(scorer, rendered, [text for text, _ in rendered], run).tolist()
        scores, offset = [], 0
        for _, pool in pairs:
            scores.append(flat[offset:offset + len(pool)])
            offset += len(pool)
        return scores
