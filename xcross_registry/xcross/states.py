"""The multi-stream X-Cross encoder seen as a scorer's encoder."""

from __future__ import annotations

from torch import Tensor, nn

from xcross_registry.xcross.model import XCrossEncoder


class XCrossStates(nn.Module):
    """An :class:`~xcross_registry.xcross.XCrossEncoder` as a scorer encoder: its mixed
    final states ``[B, T, H]`` (the scorer pools them like any encoder's)."""

    def __init__(self, xcross: XCrossEncoder) -> None:
        super().__init__()
        self.xcross = xcross

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.xcross(input_ids, attention_mask).hidden_state
