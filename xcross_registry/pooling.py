"""Pooling: one vector per text from an encoder's token states.

Its own module because the scorer (its configuration and ``embed``) and the scoring
modes (a cross head also pools the history's and the candidate's tokens) both need
it, and the modes must not import the scorer that imports them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import ValidationError

POOLINGS = ("first", "mean", "last")


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """Summarise ``[B, T, H]`` states into ``[B, H]``, ignoring padding."""
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "last":
        # Index of the last real token; correct for left and right padding alike.
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValidationError(f"unknown pooling {pooling!r}")
