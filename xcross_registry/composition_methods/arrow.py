"""``arrow``: PEFT's Arrow routing (Ostapenko et al. 2024) over the source adapters,
training-free; only the head (and the popularity prior) trains.

At every adapted Linear, each token is routed to the ``top_k`` sources whose LoRA
update's top right singular vector is most aligned with it (|cosine|), weighted by a
softmax at ``router_temperature``: a per-token, per-layer choice of sources with no
trained parameter, the zero-training counterpart of X-Cross's integrators.  Built by
``peft.create_arrow_model``; the singular vectors come from a seeded power iteration
(``rng_seed``), so a stored composition rebuilds the same router.

PEFT's Arrow (0.21) puts its router on every module whose *last* name matches a source's
target (``dense``), adapted or not; on BERT-style encoders that includes the pooler's
``dense``, which no source adapts, and the first forward pass fails there.  The scorer
pools hidden states itself and never reads the pooler's output, so the pooler is dropped
from the base before routing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ModelError, ValidationError, refuse_unknown_fields
from .interface import CompositionMethod

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .interface import SourceAdapter


@dataclass
class ArrowSettings:
    """``top_k``: sources mixed per token (None: all of them); ``router_temperature``:
    the softmax temperature of the routing weights; ``rng_seed``: seed of the power
    iteration that finds each update's top singular vector."""

    top_k: int | None = None
    router_temperature: float = 1.0
    rng_seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValidationError(f"arrow setting 'top_k' must be a positive integer or null, got {self.top_k!r}")
        if isinstance(self.router_temperature, bool) or not isinstance(self.router_temperature, (int, float)) \
                or not math.isfinite(self.router_temperature) or self.router_temperature <= 0:
            raise ValidationError(f"arrow setting 'router_temperature' must be a number > 0, "
                                  f"got {self.router_temperature!r}")
        self.router_temperature = float(self.router_temperature)
        if isinstance(self.rng_seed, bool) or not isinstance(self.rng_seed, int) or self.rng_seed < 0:
            raise ValidationError(f"arrow setting 'rng_seed' must be a non-negative integer, got {self.rng_seed!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ArrowSettings":
        return cls(**refuse_unknown_fields(cls, dict(values), "arrow setting"))


class ArrowMethod(CompositionMethod):
    """``--method arrow``: settings are :class:`ArrowSettings`."""

    name = "arrow"
    subject_kind = "baseline"
    default_suffix = "arrow"
    has_integrators = False
    settings_class = ArrowSettings

    def build_encoder(self, model: "nn.Module", sources: Sequence["SourceAdapter"],
                      settings: ArrowSettings) -> "nn.Module":
        from peft import ArrowConfig, create_arrow_model
        from torch import nn

        from ..scorer import LoraEncoder

        top_k = settings.top_k or len(sources)
        if top_k > len(sources):
            raise ValidationError(f"arrow top_k {top_k} is more than the {len(sources)} sources")
        config = ArrowConfig(top_k=top_k, router_temperature=settings.router_temperature,
                             rng_seed=settings.rng_seed)
        backbone = getattr(model, "base_model", model)
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            backbone.pooler = None
        try:
            peft_model = create_arrow_model(model, [str(s.folder) for s in sources], config)
        except ValueError as exc:
            raise ModelError(f"arrow cannot route these sources: {str(exc).strip().splitlines()[0]}") from None
        peft_model.requires_grad_(False)
        return LoraEncoder(peft_model)
