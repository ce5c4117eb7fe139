"""A serving copy of a scorer with every LoRA update folded into its base weights.

Training and evaluation run a LoRA model as the base Linear plus the low-rank update
(``W x + s·B(A x)``, through PEFT or the X-Cross and weighted-merge forward hooks): two
more small matrix products, a scaling, an addition and a Python hook per adapted
Linear and call.  A request only needs the sum, so a served copy can hold the folded
matrix ``W + s·B A`` instead (computed once in float64, stored in the serving
precision) and run one product per Linear, with no hook:

* a PEFT adapter (and PEFT's static merges): one matrix, ``W + ΔW`` of its one active
  adapter;
* a weighted merge of sources (``learned-merge``, ``lorahub``): one matrix,
  ``W + Σ_m w_m s_m B_m A_m`` with the merge weights of the Linear's layer;
* X-Cross: one matrix per stream, ``W_m = W + s_m B_m A_m``; the n streams run stacked
  (stream m owns rows ``m·B … (m+1)·B − 1``, see :mod:`xcross_registry.xcross.layer`),
  so stream m's rows are multiplied by ``W_m``.  The integrators still run as hooks of
  the transformer layers (their cost is small: one product per layer, not per Linear).

Every other Linear of the backbone becomes a :class:`FoldedLinear` too, so that all of
the model's products use the same kernels: oneDNN with weights packed once at load
(``torch.ops.mkldnn``, the kernels ``torch.compile`` uses on CPU) where PyTorch has
it, else ``torch.nn.functional.linear``.  In ``bfloat16`` the products take bfloat16
operands with float32 accumulation and give float32 back; everything else (layer norm,
attention, activations, pooling) stays float32.

Folding reorders the float arithmetic, so a folded copy is not bit-identical to the
model evaluation scores (embeddings move by ~3e-7 in float32 on Tools); bfloat16 moves
them by ~2e-3.  Both are opt-in serving runtimes (:mod:`xcross_registry.runtimes`) with
their paired NDCG@10 differences measured in docs/RESULTS.md (issue 25, round 2).
Models whose update depends on the input (PEFT's Arrow routing) cannot be folded and
are refused.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import Scorer

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def onednn_linear() -> bool:
    """Whether this PyTorch has oneDNN's packed-weight Linear (x86 builds do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def bfloat16_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere
    bfloat16 products are emulated and slower than float32."""
    return any(getattr(torch.cpu, check, lambda: False)()
               for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def require_bfloat16() -> None:
    if not bfloat16_native():
        raise ValidationError("bfloat16 products need a CPU with AVX512-BF16 or AMX; this one has "
                              "neither (use the float32 runtime)")


class FoldedLinear(nn.Module):
    """A Linear with one folded weight per stream, ``weight [k, out, in]``: the input's
    rows are k equal blocks (the stacked streams), block m multiplied by matrix m (k = 1:
    an ordinary Linear).  ``packed``: the matrices are packed for oneDNN once, an opaque
    layout that only oneDNN reads, and the bias stays float32 (oneDNN adds it to the
    float32 sums); else plain Linear products (PyTorch without oneDNN, GPUs)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 packed: bool) -> None:
        super().__init__()
        self.streams, self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.packed = packed
        weight = weight.to(dtype).contiguous()
        if packed:
            self.blocks = [torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None) for w in weight]
        else:
            self.register_buffer("weight", weight, persistent=False)
        bias_dtype = torch.float32 if packed else dtype
        self.register_buffer("bias", None if bias is None else bias.detach().to(bias_dtype).clone(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(self.streams, -1, self.in_features).to(self.dtype)
        if self.packed:
            blocks = [torch.ops.mkldnn._linear_pointwise(rows[m], w, self.bias, "none", [], "")
                      for m, w in enumerate(self.blocks)]
        else:
            blocks = [nn.functional.linear(rows[m], self.weight[m], self.bias) for m in range(self.streams)]
        out = blocks[0] if self.streams == 1 else torch.cat(blocks)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def serving_copy(scorer: "Scorer", precision: str = "float32") -> "Scorer":
    """A deep copy of ``scorer`` for inference with its encoder folded (:func:`folded_encoder`)."""
    folded = folded_encoder(scorer.encoder, precision)
    return copy.deepcopy(scorer, memo={id(scorer.encoder): folded}).eval()


def folded_encoder(encoder: nn.Module, precision: str = "float32", packed: bool | None = None) -> nn.Module:
    """A deep copy of a scorer's ``encoder`` whose Linears are :class:`FoldedLinear`s with
    the LoRA updates folded in; ``encoder`` itself is left as it was.  ``packed``
    (default: where oneDNN is available and the encoder is on the CPU): oneDNN-packed
    weights."""
    if precision not in PRECISIONS:
        raise ValidationError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    on_cpu = all(p.device.type == "cpu" for p in encoder.parameters())
    if precision == "bfloat16" and on_cpu:
        require_bfloat16()
    backbone, updates = _updates(encoder)
    if packed is None:
        packed = onednn_linear() and on_cpu
    linears: dict[str, nn.Linear] = {}
    for name, module in backbone.named_modules():
        linear = _base_linear(module)
        if linear is not None and not any(name.startswith(f"{outer}.") for outer in linears):
            linears[name] = linear
    # The copy does not copy the matrices it replaces (a model's size of memory saved).
    memo: dict[int, object] = {id(linear.weight): torch.empty(0) for linear in linears.values()}
    folded = copy.deepcopy(encoder, memo).eval()
    copied = memo[id(backbone)]
    for name, linear in linears.items():
        weight = linear.weight.detach().double()
        if name in updates:  # [out, in] + ([n, out, in] per stream, or [out, in])
            weight = weight + updates[name]
        parent, _, attribute = name.rpartition(".")
        setattr(copied.get_submodule(parent), attribute,
                FoldedLinear(weight if weight.dim() == 3 else weight.unsqueeze(0), linear.bias,
                             PRECISIONS[precision], packed))
    return folded.requires_grad_(False)


def _base_linear(module: nn.Module) -> nn.Linear | None:
    """The plain Linear a module computes with: itself, or a PEFT LoRA layer's base layer."""
    if type(module) is nn.Linear:
        return module
    base = getattr(module, "base_layer", None)
    return base if type(base) is nn.Linear and hasattr(module, "lora_A") else None


def _updates(encoder: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The module whose Linears are folded and the float64 update of each adapted Linear
    by module name: ``[out, in]``, or ``[n, out, in]`` for n stacked streams."""
    from .scorer import BaseEncoder
    from .weighted_lora import WeightedLoraEncoder
    from .xcross.states import XCrossStates

    if isinstance(encoder, XCrossStates):
        xcross = encoder.xcross
        return xcross.base, {
            name: _stacked_updates(xcross.lora[name.replace(".", "__")])
            for name, _ in xcross.base.named_modules() if name.replace(".", "__") in xcross.lora}
    if isinstance(encoder, WeightedLoraEncoder):
        updates = {}
        for name, _ in encoder.base.named_modules():
            key = name.replace(".", "__")
            if key in encoder.lora:
                weights = encoder.merge_weights.detach().double()
                weights = weights if weights.dim() == 1 else weights[encoder.row[key]]
                updates[name] = (weights.view(-1, 1, 1) * _stacked_updates(encoder.lora[key])).sum(0)
        return encoder.base, updates
    if isinstance(encoder, BaseEncoder):
        return encoder.model, _peft_updates(encoder.model)
    raise ValidationError(f"cannot fold the LoRA updates of a {type(encoder).__name__} encoder")


def _stacked_updates(lora: nn.Module) -> torch.Tensor:
    """``s_m · B_m A_m`` of a :class:`~xcross_registry.xcross.layer.StackedLora`, ``[n, out, in]``."""
    return lora.scaling.double().view(-1, 1, 1) * (lora.lora_B.double() @ lora.lora_A.double())


def _peft_updates(model: nn.Module) -> dict[str, torch.Tensor]:
    """The update of each PEFT LoRA layer's one active adapter, by module name.  Layers
    whose update is not a fixed matrix (a LoRA variant such as Arrow's routing or DoRA,
    several active adapters, dropout in training) are refused."""
    updates = {}
    for name, module in model.named_modules():
        if _base_linear(module) is None or type(module) is nn.Linear:
            continue
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        variants = getattr(module, "lora_variant", {})
        if len(adapters) != 1 or adapters[0] in variants or getattr(module, "merged", False):
            raise ValidationError(f"cannot fold the LoRA layer {name!r}: its update is not one fixed, "
                                  "unmerged matrix (several adapters, or a LoRA variant such as Arrow "
                                  "routing)")
        lora_A, lora_B = module.lora_A[adapters[0]].weight, module.lora_B[adapters[0]].weight
        update = module.scaling[adapters[0]] * (lora_B.detach().double() @ lora_A.detach().double())
        updates[name] = update.T if getattr(module, "fan_in_fan_out", False) else update
    return updates
