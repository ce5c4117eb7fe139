"""One frozen base model carrying a weighted sum of n frozen LoRA updates.

Every LoRA target Linear adds ``Σ_m w_m · s_m · B_m A_m x``: the sources' updates ΔW_m
weighted by ``w``.  With ``w = 1/n`` this is exactly PEFT's equal-weight ``cat`` merge
(the ``linear-merge`` composition); the weights are a tensor here rather than baked
into merged factors, so they can train by gradient (``learned-merge``, one weight per
source or per source and layer) or be set from outside between forward passes
(``lorahub``'s gradient-free search) without rebuilding anything.

Like the X-Cross encoder, the update is added by forward hooks that act only while
:meth:`WeightedLoraEncoder.forward` runs, and the base stays in eval mode (no dropout:
the sources are fixed feature extractors).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .errors import ModelError, ValidationError
from .xcross.model import LoraSource, find_layer_list, stack_lora_sources


class WeightedLoraEncoder(nn.Module):
    """``(input_ids, attention_mask)`` → last hidden states ``[B, T, H]`` of ``base`` with
    the weighted sum of ``sources``' LoRA updates.

    ``weights``: the initial weights, ``[n]`` (one per source) or ``[layers, n]`` (one per
    source and transformer layer); ``trainable`` makes them a parameter, else a buffer
    (saved with the encoder's state either way)."""

    def __init__(self, base: nn.Module, sources: Sequence[LoraSource], weights: torch.Tensor,
                 trainable: bool) -> None:
        super().__init__()
        backbone = getattr(base, "base_model", base)
        backbone.requires_grad_(False)
        backbone.eval()
        self.base = backbone
        self.n_sources = len(sources)
        stacked = stack_lora_sources(backbone, sources)
        self.lora = nn.ModuleDict({name.replace(".", "__"): s for name, s in stacked.items()})
        modules = dict(backbone.named_modules())
        weights = torch.as_tensor(weights, dtype=torch.float32).clone()
        if weights.shape[-1] != self.n_sources or weights.dim() not in (1, 2):
            raise ValidationError(f"merge weights of shape {tuple(weights.shape)} do not fit "
                                  f"{self.n_sources} sources")
        self.row = {name.replace(".", "__"): 0 for name in stacked}
        if weights.dim() == 2:
            layers = find_layer_list(backbone)
            if weights.shape[0] != len(layers):
                raise ValidationError(f"per-layer merge weights have {weights.shape[0]} rows, the base "
                                      f"model has {len(layers)} layers")
            owner = {id(module): index for index, layer in enumerate(layers) for module in layer.modules()}
            for name in stacked:
                if id(modules[name]) not in owner:
                    raise ModelError(f"per-layer merge weights need every LoRA module inside a "
                                     f"transformer layer; {name!r} is not")
                self.row[name.replace(".", "__")] = owner[id(modules[name])]
        device = next(backbone.parameters()).device
        if trainable:
            self.merge_weights = nn.Parameter(weights.to(device))
        else:
            self.register_buffer("merge_weights", weights.to(device))
        self._active = False
        for name in stacked:
            modules[name].register_forward_hook(functools.partial(self._on_linear, name.replace(".", "__")))

    def train(self, mode: bool = True) -> "WeightedLoraEncoder":
        """Only the weights change mode; the frozen base always stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    def source_weights(self) -> torch.Tensor:
        """The weights as ``[layers or 1, n]`` (a copy, for records and plots)."""
        return self.merge_weights.detach().float().cpu().reshape(-1, self.n_sources).clone()

    @torch.no_grad()
    def set_weights(self, weights: Sequence[float] | torch.Tensor) -> None:
        """Replace the weights in place (a search trying one candidate after another)."""
        value = torch.as_tensor(weights, dtype=self.merge_weights.dtype, device=self.merge_weights.device)
        self.merge_weights.copy_(value.reshape(self.merge_weights.shape))

    def _on_linear(self, key: str, module: nn.Module, args: tuple[torch.Tensor, ...],
                   output: torch.Tensor) -> torch.Tensor | None:
        if not self._active:
            return None
        lora = self.lora[key]
        weights = self.merge_weights if self.merge_weights.dim() == 1 else self.merge_weights[self.row[key]]
        x = args[0].to(lora.lora_A.dtype)
        low = torch.einsum("...i,mri->...mr", x, lora.lora_A)
        low = low * (weights.to(low.dtype) * lora.scaling).unsqueeze(-1)
        return output + torch.einsum("...mr,mor->...o", low, lora.lora_B).to(output.dtype)

    @contextmanager
    def _hooked(self) -> Iterator[None]:
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        with self._hooked():
            return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]


def load_lora_sources(sources: Sequence[Any]) -> list[LoraSource]:
    """The composition's stored source folders (``SourceAdapter``) as :class:`LoraSource`s."""
    from peft import LoraConfig
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file

    return [LoraSource(load_file(str(s.folder / SAFETENSORS_WEIGHTS_NAME)),
                       LoraConfig.from_pretrained(str(s.folder)), name=s.label) for s in sources]
