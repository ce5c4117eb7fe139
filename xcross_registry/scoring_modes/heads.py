"""The built-in modes' heads: the trainable modules that turn pooled states into scores.

They live apart from :mod:`.cross` and :mod:`.dual` because they are torch modules
(an ``nn.Module`` subclass needs torch to be defined), while the mode classes must be
importable without torch; each mode imports its head inside ``make_head``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MAX_SCALE = 100.0  # beyond this the dual softmax is nearly one-hot and gradients vanish


class CrossHead(nn.Module):
    """The paper's head, pooled prompt state → dense → GELU → linear, plus two skip terms
    read off the same joint pass: a scaled cosine between the mean states of the
    history's and the candidate's tokens, and a learned prior on the candidate's state.

    Why: a freshly initialised MLP ranks at chance, and on CPU budgets a cross scorer
    sees only a few thousand examples; the skip terms start it from the base model's
    own notion of "similar to what this user bought" (the output layer starts at zero,
    so at step 0 the score is exactly the cosine), and the MLP learns what that misses.
    """

    def __init__(self, hidden_size: int, head_hidden_size: int, scale: float, learnable: bool) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, head_hidden_size)
        self.out = nn.Linear(head_hidden_size, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learnable)
        self.prior = nn.Parameter(torch.zeros(hidden_size))

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def forward(self, pooled: Tensor, history: Tensor, candidate: Tensor) -> Tensor:
        history = nn.functional.normalize(history, dim=-1)
        candidate = nn.functional.normalize(candidate, dim=-1)
        mlp = self.out(nn.functional.gelu(self.dense(pooled))).squeeze(-1)
        return mlp + self.scale * (history * candidate).sum(-1) + candidate @ self.prior


class DualHead(nn.Module):
    """Scaled cosine plus a learned item prior: ``(scale · q + prior) · d``.

    ``prior`` is one vector, zero at the start (so training starts from the base
    model's own cosine ranking).  Its dot product with the item embedding is a
    history-independent preference learned from the item's text, which is how a
    two-tower model can learn what popularity knows (on Amazon Toys popularity alone
    ranks as well as zero-shot MiniLM).  Being folded into the query, it keeps item
    embeddings cacheable and a catalogue ranking one matrix product.  The scale is kept
    as its logarithm so it stays positive.
    """

    def __init__(self, scale: float, learnable: bool, hidden_size: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learnable)
        self.prior = nn.Parameter(torch.zeros(hidden_size))

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def query_vectors(self, queries: Tensor) -> Tensor:
        """``scale · q + prior``: what a document's embedding is multiplied with, so that a
        nearest-neighbour index over the documents ranks as this head scores."""
        return self.scale * queries + self.prior

    def forward(self, queries: Tensor, documents: Tensor) -> Tensor:
        """``queries [B, D]`` against ``documents [B, C, D]`` (per query) or ``[N, D]`` (shared)."""
        queries = self.query_vectors(queries)
        if documents.dim() == 3:
            return torch.einsum("bd,bcd->bc", queries, documents)
        return queries @ documents.T
