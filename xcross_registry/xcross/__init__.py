"""X-Cross composer core: n frozen LoRA sources over one frozen base model, integrated
layer by layer by trainable maps (peft-style: config, layer, model).

Pure torch; the registry, the scorer head and the CLI build on it.
"""

from xcross_registry.xcross.config import XCrossConfig
from xcross_registry.xcross.layer import StackedLora, XCrossIntegrator
from xcross_registry.xcross.model import (
    IntegrationWeights,
    LoraSource,
    XCrossEncoder,
    XCrossOutput,
    find_layer_list,
    lora_parameter_count,
    stack_lora_sources,
)

__all__ = [
    "IntegrationWeights",
    "LoraSource",
    "StackedLora",
    "XCrossConfig",
    "XCrossEncoder",
    "XCrossIntegrator",
    "XCrossOutput",
    "find_layer_list",
    "lora_parameter_count",
    "stack_lora_sources",
]
