"""The linear-merge baseline: the sources' LoRA updates averaged into one frozen adapter
(peft's ``add_weighted_adapter``); only the scorer head trains.

It answers "do trained integrators beat simply averaging the adapters?", so leaderboards
list it as a baseline.  Torch and peft are imported when an encoder is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from . import SourceAdapter


class LinearMergeMethod:
    """``--method linear-merge``: a :class:`~xcross_registry.composition_methods.CompositionMethod`."""

    name = "linear-merge"
    subject_kind = "baseline"
    default_suffix = "merge"
    has_integrators = False

    def settings(self, given: Any | None) -> None:
        return None  # nothing to set: the weights are equal by definition

    def settings_to_json(self, settings: None) -> None:
        return None

    def settings_from_json(self, stored: dict[str, Any] | None) -> None:
        return None

    def build_encoder(self, model: "nn.Module", sources: Sequence["SourceAdapter"],
                      settings: None) -> "nn.Module":
        """A PEFT model whose active adapter is the equal-weight merge of the sources (frozen)."""
        from peft import PeftModel

        from ..scorer import LoraEncoder

        peft_model = PeftModel.from_pretrained(model, str(sources[0].folder), adapter_name="source0")
        for i, source in enumerate(sources[1:], 1):
            peft_model.load_adapter(str(source.folder), adapter_name=f"source{i}")
        names = [f"source{i}" for i in range(len(sources))]
        # "cat" stacks the factors, so the merged update is exactly the weighted sum of the
        # sources' updates, whatever their ranks.
        peft_model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "merged",
                                        combination_type="cat")
        peft_model.set_adapter("merged")
        for name in names:
            peft_model.delete_adapter(name)
        peft_model.requires_grad_(False)
        return LoraEncoder(peft_model)

    def after_training(self, scorer, data, template, name: str, sources: Sequence[str]) -> None:
        return None
