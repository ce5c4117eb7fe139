"""X-Cross as a composition method (``xreg compose --method xcross``, the default).

The sources' LoRA weights are stacked over one frozen base and run as parallel streams;
trainable integrators refine each stream from the others at every layer and a mix
combines the final states (:class:`~xcross_registry.xcross.XCrossEncoder`).  Torch-free
at import: the composition-methods table names it in listing commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from xcross_registry.errors import ValidationError
from xcross_registry.xcross.config import XCrossConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from xcross_registry.composition_methods import SourceAdapter
    from xcross_registry.data import DomainData
    from xcross_registry.scorer import Scorer
    from xcross_registry.templates import PromptTemplate


class XCrossMethod:
    """``--method xcross``: a :class:`~xcross_registry.composition_methods.CompositionMethod`
    whose settings are an :class:`XCrossConfig`."""

    name = "xcross"
    subject_kind = "composition"
    default_suffix = "x"
    has_integrators = True

    def settings(self, given: Any | None) -> XCrossConfig:
        if given is None:
            return XCrossConfig()
        if not isinstance(given, XCrossConfig):
            raise ValidationError(f"X-Cross settings must be an XCrossConfig, not {type(given).__name__}")
        return given

    def settings_to_json(self, settings: XCrossConfig) -> dict[str, Any]:
        return settings.to_dict()

    def settings_from_json(self, stored: dict[str, Any] | None) -> XCrossConfig:
        return XCrossConfig.from_dict(stored) if stored else XCrossConfig()

    def build_encoder(self, model: "nn.Module", sources: Sequence["SourceAdapter"],
                      settings: XCrossConfig) -> "nn.Module":
        from peft import LoraConfig
        from safetensors.torch import load_file

        from xcross_registry.adapters import PEFT_WEIGHTS
        from xcross_registry.xcross.model import LoraSource, XCrossEncoder
        from xcross_registry.xcross.states import XCrossStates

        streams = [LoraSource(load_file(str(s.folder / PEFT_WEIGHTS)),
                              LoraConfig.from_pretrained(str(s.folder)), name=s.label) for s in sources]
        return XCrossStates(XCrossEncoder(model, streams, settings))

    def after_training(self, scorer: "Scorer", data: "DomainData", template: "PromptTemplate",
                       name: str, sources: Sequence[str]) -> dict[str, Any]:
        """The integration weights, measured from the weights just trained."""
        from xcross_registry.xcross.integration import measure_integration

        return measure_integration(scorer, data, template, name, sources)
