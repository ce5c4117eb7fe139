"""``dual``: two towers, history and item encoded apart and compared by a dot product.

The history prompt and the item document are encoded separately by the same adapted
model, pooled, L2-normalised and scored by :class:`~.heads.DualHead` (a cosine times
``scale``, plus a learned item prior).  Item embeddings do not depend on the history,
so a whole catalogue is encoded once (and cached per model version) and one history
encoding ranks all of it.  Normalising keeps the starting point equal to the base
model's own cosine similarity (all-MiniLM-L6-v2 was trained for exactly that, with a
scale of 20), so training starts from the zero-shot ranker instead of from noise.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import ValidationError
from .interface import ScoringMode

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import Tensor, nn

    from ..base_model import BaseModelInfo
    from ..data import DomainData, Item
    from ..scorer import Scorer, ScorerConfig
    from ..templates import PromptTemplate


class DualMode(ScoringMode):
    """Scores cached history and item embeddings; ranks whole catalogues."""

    name = "dual"
    ranks_catalogue = True
    # With one set of negatives per batch a step encodes N + B documents instead of B·(1+N).
    shares_negatives = True

    def make_head(self, info: "BaseModelInfo", config: "ScorerConfig") -> "nn.Module":
        from .heads import DualHead

        return DualHead(config.scale, config.learn_scale, info.hidden_size)

    def prepare(self, scorer: "Scorer", histories: Sequence[Sequence["Item"]],
                candidates: Sequence[Sequence["Item"]], template: "PromptTemplate",
                in_batch: bool) -> dict[str, "Tensor"]:
        """B query prompts, the distinct documents, and ``doc_index [B, C]``: which
        document each candidate is, so a document shared by several rows (a batch's
        shared negatives) is encoded once.  In-batch scoring reuses the positives'
        embeddings, so ``in_batch`` needs nothing more."""
        import torch

        budget = scorer.config.max_length
        queries = scorer.tokenize([template.render_query(h, scorer.tokenizer, budget) for h in histories])
        texts: dict[str, int] = {}
        index = [[texts.setdefault(template.render_document(item), len(texts)) for item in row]
                 for row in candidates]
        documents = scorer.tokenize(list(texts))
        return {**queries, "doc_input_ids": documents["input_ids"],
                "doc_attention_mask": documents["attention_mask"], "doc_index": torch.tensor(index)}

    def forward(self, scorer: "Scorer", num_candidates: int, in_batch_columns: int,
                input_ids: "Tensor", attention_mask: "Tensor",
                doc_input_ids: "Tensor | None" = None, doc_attention_mask: "Tensor | None" = None,
                doc_index: "Tensor | None" = None) -> "Tensor":
        if doc_input_ids is None or doc_attention_mask is None or doc_index is None:
            raise ValidationError("a dual scorer needs document tensors")
        import torch

        queries = scorer.embed(input_ids, attention_mask)
        documents = scorer.embed(doc_input_ids, doc_attention_mask)
        scores = scorer.head(queries, documents[doc_index])
        if in_batch_columns:
            scores = torch.cat([scores, scorer.head(queries, documents[doc_index[:, 0]])], dim=1)
        return scores

    def embed(self, scorer: "Scorer", input_ids: "Tensor", attention_mask: "Tensor") -> "Tensor":
        from torch import nn

        return nn.functional.normalize(super().embed(scorer, input_ids, attention_mask), dim=-1)

    def score_embeddings(self, scorer: "Scorer", queries: "Tensor", documents: "Tensor") -> "Tensor":
        return scorer.head(queries, documents)

    def query_vectors(self, scorer: "Scorer", queries: "Tensor") -> "Tensor":
        return scorer.head.query_vectors(queries)

    def score_matrix(self, scorer: "Scorer", data: "DomainData", template: "PromptTemplate",
                     histories: Sequence[Sequence["Item"]], matrix: "np.ndarray", batch_size: int,
                     stop: Callable[[], bool], report: Callable[[int, int], None]) -> list["np.ndarray"]:
        """Each distinct candidate item encoded once, each history once, then scored by
        their embeddings.  Stopped while encoding items, nothing is scored."""
        import numpy as np
        import torch

        unique, inverse = np.unique(matrix, return_inverse=True)
        inverse = torch.as_tensor(inverse.reshape(matrix.shape), device=scorer.device)
        item_passes = math.ceil(len(unique) / batch_size)
        passes = item_passes + math.ceil(len(histories) / batch_size)
        chunks = []
        for start in range(0, len(unique), batch_size):
            if stop():
                return []
            chunks.append(scorer.encode_items([data.items[i] for i in unique[start:start + batch_size]],
                                              template, batch_size))
            report(start // batch_size + 1, passes)
        items = torch.cat(chunks) if chunks else None
        blocks = []
        for start in range(0, len(histories), batch_size):
            if stop():
                break
            queries = scorer.encode_histories(histories[start:start + batch_size], template)
            documents = items[inverse[start:start + batch_size]]
            blocks.append(scorer.score_embeddings(queries, documents).float().cpu().numpy())
            report(item_passes + start // batch_size + 1, passes)
        return blocks
