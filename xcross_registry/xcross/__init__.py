"""X-Cross composer core: n frozen LoRA sources over one frozen base model, integrated
layer by layer by trainable maps (peft-style: config, layer, model), plus what the
registry needs of it: the encoder a scorer wraps (:mod:`.states`) and the integration
measurement (:mod:`.integration`).  Its composition method, the registry's view of it,
is :mod:`xcross_registry.composition_methods.xcross`.

Names are exported lazily (PEP 562): :mod:`.config` is torch-free, and the
composition-methods table imports it in listing commands, which must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# exported name -> the submodule that defines it
_EXPORTS = {
    "XCrossConfig": "config",
    "StackedLora": "layer",
    "XCrossIntegrator": "layer",
    "IntegrationWeights": "model",
    "LoraSource": "model",
    "XCrossEncoder": "model",
    "XCrossOutput": "model",
    "find_layer_list": "model",
    "lora_parameter_count": "model",
    "stack_lora_sources": "model",
    "XCrossStates": "states",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
