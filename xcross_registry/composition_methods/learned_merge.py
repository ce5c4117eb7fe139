"""``learned-merge``: the sources' LoRA updates summed with weights trained by gradient.

One trainable weight per source (or, with ``per_layer``, one per source and transformer
layer) scales that source's update ΔW_m in every adapted Linear; the weights start at
1/n, where the composition is exactly the equal-weight ``linear-merge``, and train with
the head (at the composition's ``--lr``).  It answers whether X-Cross's token-level
integrators earn more than a learned mixing of the same updates.  Torch is imported
when an encoder is built (:mod:`xcross_registry.weighted_lora`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ValidationError, refuse_unknown_fields
from .interface import CompositionMethod

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .interface import SourceAdapter


@dataclass
class LearnedMergeSettings:
    """``per_layer``: one weight per source and transformer layer instead of per source."""

    per_layer: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.per_layer, bool):
            raise ValidationError(f"learned-merge setting 'per_layer' must be true or false, "
                                  f"got {self.per_layer!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LearnedMergeSettings":
        return cls(**refuse_unknown_fields(cls, dict(values), "learned-merge setting"))


class LearnedMergeMethod(CompositionMethod):
    """``--method learned-merge``: settings are :class:`LearnedMergeSettings`."""

    name = "learned-merge"
    subject_kind = "baseline"
    default_suffix = "learned-merge"
    has_integrators = False
    settings_class = LearnedMergeSettings

    def build_encoder(self, model: "nn.Module", sources: Sequence["SourceAdapter"],
                      settings: LearnedMergeSettings) -> "nn.Module":
        import torch

        from ..weighted_lora import WeightedLoraEncoder, load_lora_sources
        from ..xcross.model import find_layer_list

        n = len(sources)
        shape = (len(find_layer_list(getattr(model, "base_model", model))), n) if settings.per_layer else (n,)
        return WeightedLoraEncoder(model, load_lora_sources(sources), torch.full(shape, 1.0 / n),
                                   trainable=True)

    def after_training(self, scorer, data, template, name: str, sources: Sequence[str]) -> dict[str, Any]:
        """The learned weights, per source (and per layer), so `show` needs no model."""
        weights = scorer.encoder.source_weights()
        return {"sources": list(sources), "weights": [[round(float(w), 6) for w in row] for row in weights]}
