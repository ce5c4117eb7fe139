"""X-Cross as a composition method (``xreg compose --method xcross``, the default).

The sources' LoRA weights are stacked over one frozen base and run as parallel streams;
trainable integrators refine each stream from the others at every layer and a mix
combines the final states (:class:`~xcross_registry.xcross.XCrossEncoder`).  Torch-free
at import: the composition-methods table names it in listing commands.  The model lives
in the :mod:`xcross_registry.xcross` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..xcross.config import XCrossConfig
from .interface import CompositionMethod

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..data import DomainData
    from ..scorer import Scorer
    from ..templates import PromptTemplate
    from .interface import SourceAdapter


class XCrossMethod(CompositionMethod):
    """``--method xcross``: settings are an :class:`XCrossConfig` (or a dict of its fields)."""

    name = "xcross"
    subject_kind = "composition"
    default_suffix = "x"
    has_integrators = True
    settings_class = XCrossConfig

    def settings_from_json(self, stored: dict[str, Any] | None) -> XCrossConfig:
        return XCrossConfig.from_stored(stored)

    def validates_start(self, settings: XCrossConfig) -> bool:
        """From the mix, the untrained composition is the equal mix of the sources: kept
        unless training beats it on validation."""
        return settings.init == "mix"

    def build_encoder(self, model: "nn.Module", sources: Sequence["SourceAdapter"],
                      settings: XCrossConfig) -> "nn.Module":
        from ..weighted_lora import load_lora_sources
        from ..xcross.model import XCrossEncoder
        from ..xcross.states import XCrossStates

        return XCrossStates(XCrossEncoder(model, load_lora_sources(sources), settings))

    def after_training(self, scorer: "Scorer", data: "DomainData", template: "PromptTemplate",
                       name: str, sources: Sequence[str]) -> dict[str, Any]:
        """The integration weights, measured from the weights just trained."""
        from ..xcross.integration import measure_integration

        return measure_integration(scorer, data, template, name, sources)
