"""The two per-module pieces of the multi-stream execution.

* :class:`StackedLora` holds the frozen LoRA factors of all n sources for ONE base
  ``nn.Linear`` and computes every stream's low-rank update with two batched matrix
  products, so the base Linear runs once over the stacked batch.
* :class:`XCrossIntegrator` is the trainable map of one transformer layer that mixes
  the n stream states into refined states.

Stacked tensors always put the stream first: ``[n, B, ...]`` is the stacked batch
``[n*B, ...]`` viewed per stream (stream m owns rows ``m*B … (m+1)*B − 1``).
"""

from __future__ import annotations

import torch
from torch import nn


class StackedLora(nn.Module):
    """Frozen LoRA factors of n sources for one Linear, applied to a stream-stacked input.

    Ranks may differ between sources: A and B are zero-padded to the largest rank,
    which leaves every product unchanged. The factors are non-persistent buffers: they
    never train, are not counted as parameters, and are not saved with a composition
    (the composition refers to its source adapters instead).
    """

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: torch.Tensor

    def __init__(self, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: torch.Tensor) -> None:
        """``lora_A``: [n, r, in]; ``lora_B``: [n, out, r]; ``scaling``: [n]."""
        super().__init__()
        self.register_buffer("lora_A", lora_A, persistent=False)
        self.register_buffer("lora_B", lora_B, persistent=False)
        self.register_buffer("scaling", scaling, persistent=False)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling_m · (x_m A_mᵀ) B_mᵀ`` per stream of ``x`` [n*B, …, in], shaped like the Linear's output.

        Computed in the factors' dtype (as peft does) and left for the caller to cast.
        """
        n, _, in_features = self.lora_A.shape
        xs = x.reshape(n, -1, in_features).to(self.lora_A.dtype)
        # torch.matmul on 3-d operands is the batched product (bmm); on CPU it avoids
        # torch.bmm's thread-pool overhead for small shapes.
        low = torch.matmul(xs, self.lora_A.transpose(1, 2))
        out = torch.matmul(low, self.lora_B.transpose(1, 2)) * self.scaling.view(n, 1, 1)
        return out.reshape(*x.shape[:-1], out.shape[-1])


RMS_EPS = 1e-6  # keeps an all-zero state (padding) finite under input_norm "rms"


class XCrossIntegrator(nn.Module):
    """Trainable integration of n stream states at the output of one transformer layer.

    ``z = W · concat(h_1 … h_n)`` has 2n(n−1) entries, read as ``z[m, j, t]`` with
    ``m`` the refined stream, ``j`` running over the other streams ``m' ≠ m`` in
    increasing order, and ``t`` the term (0: β, injects h_{m'}; 1: γ, the
    difference h_m − h_{m'}). The refinement is linear in the states, so it is
    applied as one n×n mixing matrix per token (or per sequence):
    ``h̃_m = (1 + γ Σ_j z[m,j,1]) h_m + Σ_{m'≠m} (β z[m,m',0] − γ z[m,m',1]) h_{m'}``.

    With ``rms_input`` W reads each stream's state divided by its per-token root mean
    square (``input_norm: rms``).  With ``mix_init`` z gets a trainable bias that starts at ``z[·,·,0] = 0``,
    ``z[·,·,1] = −1/(nγ)``: then both coefficients are 1/n and every refined state is the
    equal mix of the streams (see :class:`~xcross_registry.xcross.XCrossConfig`).
    """

    other_index: torch.Tensor

    def __init__(
        self,
        n_streams: int,
        hidden_size: int,
        *,
        beta: float,
        gamma: float,
        per_token: bool,
        init_std: float,
        mix_init: bool = False,
        rms_input: bool = False,
    ) -> None:
        super().__init__()
        self.n_streams = n_streams
        self.beta = beta
        self.gamma = gamma
        self.per_token = per_token
        self.rms_input = rms_input
        self.weight = nn.Parameter(torch.empty(2 * n_streams * (n_streams - 1), n_streams * hidden_size))
        nn.init.normal_(self.weight, std=init_std)
        if mix_init:
            start = torch.zeros(n_streams, n_streams - 1, 2)
            start[..., 1] = -1.0 / (n_streams * gamma)
            self.bias = nn.Parameter(start.flatten())
        else:
            self.register_parameter("bias", None)
        # other_index[m, j] = j-th stream other than m, the m' that z[m, j] refers to.
        others = [[k for k in range(n_streams) if k != m] for m in range(n_streams)]
        self.register_buffer("other_index", torch.tensor(others, dtype=torch.long), persistent=False)

    def scalars(self, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """z for states ``h`` [n, B, T, H]: [B, T, n, n−1, 2] per token, [B, 1, n, n−1, 2] pooled."""
        n, batch, length, hidden = h.shape
        h = h.to(self.weight.dtype)
        if self.rms_input:
            h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
        if not self.per_token:
            if attention_mask is None:
                h = h.mean(dim=2, keepdim=True)
            else:
                mask = attention_mask.to(h.dtype).view(1, batch, length, 1)
                h = (h * mask).sum(dim=2, keepdim=True) / mask.sum(dim=2, keepdim=True).clamp(min=1.0)
        cat = h.permute(1, 2, 0, 3).reshape(batch, h.shape[2], n * hidden)
        return nn.functional.linear(cat, self.weight, self.bias).view(batch, h.shape[2], n, n - 1, 2)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined states [n, B, T, H] (dtype of ``h``) and the scalars z they were made with."""
        n, batch, length, _ = h.shape
        z = self.scalars(h, attention_mask)
        inject = self.beta * z[..., 0]
        differ = self.gamma * z[..., 1]
        index = self.other_index.expand(*z.shape[:2], n, n - 1)
        mixing = torch.zeros(*z.shape[:2], n, n, dtype=z.dtype, device=z.device).scatter(-1, index, inject - differ)
        mixing = mixing + torch.diag_embed(1.0 + differ.sum(dim=-1))
        mixing = mixing.expand(batch, length, n, n)
        refined = torch.einsum("btmk,kbth->mbth", mixing, h.to(mixing.dtype))
        return refined.to(h.dtype), z
