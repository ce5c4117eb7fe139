"""X-Cross multi-stream encoder: n frozen LoRA sources over ONE frozen base model.

The n streams run as one stacked batch ``[n*B, T]`` through the base model's own
``forward`` (so attention masks, position ids and rotary embeddings are built by the
model itself, for any architecture). Two kinds of forward hooks turn that single
pass into n coupled LoRA models:

* on every LoRA target ``nn.Linear``: add each stream's low-rank update, computed
  with batched matrix products over the stacked factors (:class:`StackedLora`);
* on every transformer layer: view the layer's output as ``[n, B, T, H]``, refine it
  with that layer's :class:`XCrossIntegrator`, and return it as the next layer's input.

The hooks act only while :meth:`XCrossEncoder.forward` runs, so the base model keeps
behaving as a plain model when called directly.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from torch import nn

from xcross_registry.base_model import model_family
from xcross_registry.errors import ModelError, ValidationError
from xcross_registry.xcross.config import XCrossConfig
from xcross_registry.xcross.layer import StackedLora, XCrossIntegrator

# peft saves "<prefix>.<module path>.lora_A.weight"; in-memory state dicts may keep the
# adapter name ("lora_A.default.weight"). Anything else mentioning lora_ is a LoRA
# variant this composer cannot run (DoRA magnitudes, LoRA biases, embedding LoRA).
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraSource:
    """One frozen source adapter in the PEFT layout: its state dict and its ``LoraConfig``."""

    state_dict: Mapping[str, torch.Tensor]
    config: LoraConfig
    name: str = "source"


@dataclass
class XCrossOutput:
    """``hidden_state`` [B, T, H]: Σ_m w_m·h̃_m; ``stream_states`` [n, B, T, H]: each h̃_m."""

    hidden_state: torch.Tensor
    stream_states: torch.Tensor


@dataclass
class IntegrationWeights:
    """What one layer's integrator did over a batch, for plotting.

    ``mean`` and ``mean_abs`` are [n, n, 2]: entry [m, m', t] is the average of z (or
    |z|) for stream m taking from stream m' with term t (0: β·h_{m'}, 1: γ·(h_m − h_{m'}))
    over the batch's real tokens (per-token mode) or sequences (pooled mode). The
    diagonal m = m' does not exist and is NaN.
    """

    layer: int
    mean: torch.Tensor
    mean_abs: torch.Tensor


def lora_parameter_count(source: LoraSource) -> int:
    """Number of LoRA parameters of one source (its A and B factors), for the size ratio."""
    return sum(t.numel() for k, t in source.state_dict.items() if _LORA_KEY.match(k))


def _resolve_module(key_path: str, modules: Mapping[str, nn.Module]) -> str | None:
    """The base module an adapter key's module path refers to, tolerating wrapper prefixes.

    Adapters are often trained on a task model (``BertForSequenceClassification``:
    ``bert.encoder…``; ``LlamaForCausalLM``: ``model.layers…``) while the composer
    runs the bare backbone, so leading path components are dropped until a module of
    the backbone matches; the longest match wins.
    """
    if key_path.startswith(_PEFT_PREFIX):
        key_path = key_path[len(_PEFT_PREFIX) :]
    parts = key_path.split(".")
    for start in range(len(parts)):
        candidate = ".".join(parts[start:])
        if candidate in modules:
            return candidate
    return None


def _source_factors(
    source: LoraSource, modules: Mapping[str, nn.Module]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """(A, B, scaling) of one source per base module name, checked against the base's Linears."""
    config = source.config
    if getattr(config, "use_dora", False):
        raise ModelError(f"source {source.name!r} is a DoRA adapter; X-Cross composes plain LoRA adapters only")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    key_paths: dict[str, str] = {}
    for key, tensor in source.state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            if "lora_" in key:
                raise ModelError(
                    f"source {source.name!r} has an unsupported LoRA weight {key!r} (only lora_A/lora_B weights)"
                )
            continue  # modules_to_save copies (e.g. a task head): not part of the composition
        name = _resolve_module(match["module"], modules)
        if name is None:
            raise ModelError(
                f"source {source.name!r} adapts {match['module']!r}, which the base model does not have"
            )
        module = modules[name]
        if not isinstance(module, nn.Linear):
            raise ModelError(
                f"source {source.name!r} adapts {name!r}, a {type(module).__name__}; "
                "only nn.Linear layers are supported"
            )
        factors.setdefault(name, {})[match["factor"]] = tensor
        key_paths[name] = match["module"]

    result: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, pair in factors.items():
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise ModelError(f"source {source.name!r} has no lora_{missing} weight for {name!r}")
        a, b = pair["A"], pair["B"]
        linear = modules[name]
        fits = a.dim() == b.dim() == 2 and a.shape[0] == b.shape[1]
        if not fits or a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
            raise ModelError(
                f"source {source.name!r} does not fit the base model at {name!r}: lora_A {tuple(a.shape)}, "
                f"lora_B {tuple(b.shape)}, but the layer maps {linear.in_features} -> {linear.out_features}"
            )
        rank = a.shape[0]
        rank_key = get_pattern_key(config.rank_pattern.keys(), key_paths[name])
        expected_rank = config.rank_pattern.get(rank_key, config.r)
        if rank != expected_rank:
            raise ModelError(
                f"source {source.name!r} has rank {rank} at {name!r} but its LoraConfig says {expected_rank}"
            )
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), key_paths[name])
        alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
        scaling = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        result[name] = (a, b, scaling)
    if not result:
        raise ModelError(f"source {source.name!r} has no LoRA weights")
    return result


def stack_lora_sources(base: nn.Module, sources: Sequence[LoraSource]) -> dict[str, StackedLora]:
    """Map every source's LoRA weights onto ``base``'s Linear layers and stack them per layer.

    Raises :class:`ModelError` when a source adapts a module the base lacks or that is
    not a Linear, when shapes do not fit, or when the sources adapt different module
    sets (a stream without an update at a shared layer would silently be the base
    model there). Ranks may differ: factors are zero-padded to the largest rank.
    """
    modules = dict(base.named_modules())
    per_source = [_source_factors(source, modules) for source in sources]
    first = set(per_source[0])
    for source, factors in zip(sources[1:], per_source[1:]):
        if set(factors) != first:
            extra, missing = sorted(set(factors) - first), sorted(first - set(factors))
            detail = f"adds {extra[0]!r}" if extra else f"lacks {missing[0]!r}"
            raise ModelError(
                f"sources {sources[0].name!r} and {source.name!r} adapt different modules "
                f"({source.name!r} {detail}, {len(extra)} extra / {len(missing)} missing); "
                "X-Cross needs all sources to target the same modules"
            )
    stacked: dict[str, StackedLora] = {}
    for name in sorted(first):
        ranks = [factors[name][0].shape[0] for factors in per_source]
        max_rank = max(ranks)
        dtype = functools.reduce(torch.promote_types, (factors[name][0].dtype for factors in per_source))
        linear = modules[name]
        lora_A = torch.zeros(len(sources), max_rank, linear.in_features, dtype=dtype)
        lora_B = torch.zeros(len(sources), linear.out_features, max_rank, dtype=dtype)
        for m, factors in enumerate(per_source):
            a, b, _ = factors[name]
            lora_A[m, : a.shape[0]] = a.detach().to(dtype)
            lora_B[m, :, : b.shape[1]] = b.detach().to(dtype)
        scaling = torch.tensor([factors[name][2] for factors in per_source], dtype=dtype)
        device = linear.weight.device
        stacked[name] = StackedLora(lora_A.to(device), lora_B.to(device), scaling.to(device))
    return stacked


def find_layer_list(backbone: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer layers (BERT ``encoder.layer``, Llama ``layers``, …).

    Found by shape rather than by name so that other architectures work unchanged:
    the ModuleList of ``config.num_hidden_layers`` modules of one class holding the
    most parameters.
    """
    expected = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
    candidates = [
        module
        for module in backbone.modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and (expected is None or len(module) == expected)
        and len({type(layer) for layer in module}) == 1
    ]
    if not candidates:
        raise ModelError(f"cannot find the transformer layers of {type(backbone).__name__}")
    return max(candidates, key=lambda layers: sum(p.numel() for p in layers.parameters()))


@dataclass
class _Run:
    """State of one stacked forward pass, read by the hooks."""

    attention_mask: torch.Tensor | None
    record: dict[int, torch.Tensor] | None


class XCrossEncoder(nn.Module):
    """n frozen LoRA sources over one frozen base model, integrated layer by layer.

    ``base`` may be a bare backbone (``BertModel``, ``LlamaModel``) or a task model
    wrapping one (its ``base_model`` is used). It is frozen and kept in eval mode
    (no dropout: the sources are fixed feature extractors, and each stream must be
    exactly its source's LoRA model when the integrators are zero). Only the
    integrators' W_l and the mixing weights ``mix`` train.
    """

    def __init__(self, base: nn.Module, sources: Sequence[LoraSource], config: XCrossConfig | None = None) -> None:
        super().__init__()
        if len(sources) < 2:
            raise ValidationError(f"X-Cross composes at least two source adapters, got {len(sources)}")
        self.config = config if config is not None else XCrossConfig()
        backbone = getattr(base, "base_model", base)
        backbone.requires_grad_(False)
        backbone.eval()
        self.base = backbone
        self.n_streams = len(sources)
        self.source_names = [source.name for source in sources]
        stacked_lora = stack_lora_sources(backbone, sources)
        # ModuleDict keys cannot contain dots.
        self.lora = nn.ModuleDict({name.replace(".", "__"): stacked for name, stacked in stacked_lora.items()})

        layers = find_layer_list(backbone)
        n_layers = len(layers)
        integrated = self.config.layers if self.config.layers is not None else list(range(n_layers))
        if integrated[-1] >= n_layers:
            raise ValidationError(f"X-Cross layers {integrated} out of range: the base model has {n_layers} layers")
        hidden_size = backbone.config.hidden_size
        device = next(backbone.parameters()).device
        norm = self.config.input_norm or (
            "rms" if model_family(getattr(backbone.config, "model_type", "")) == "decoder" else "none")
        self.integrators = nn.ModuleDict(
            {
                str(i): XCrossIntegrator(
                    self.n_streams,
                    hidden_size,
                    beta=self.config.beta,
                    gamma=self.config.gamma,
                    per_token=self.config.per_token,
                    init_std=self.config.init_std,
                    mix_init=self.config.init == "mix",
                    rms_input=norm == "rms",
                )
                for i in integrated
            }
        )
        self.integrators.to(device)
        self.mix = nn.Parameter(torch.full((self.n_streams,), 1.0 / self.n_streams, device=device))

        self._run: _Run | None = None
        # Hooks are partials of bound methods (not closures) so that copy.deepcopy of the
        # encoder rebinds them to the copy's own LoRA factors and integrators.
        modules = dict(backbone.named_modules())
        for name in stacked_lora:
            modules[name].register_forward_hook(functools.partial(self._on_linear, name.replace(".", "__")))
        for i in integrated:
            layers[i].register_forward_hook(functools.partial(self._on_layer, i))
        self._use_cache_off = "use_cache" in inspect.signature(backbone.forward).parameters

    def train(self, mode: bool = True) -> XCrossEncoder:
        """Switch the integrators' mode; the frozen base always stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    def _on_linear(
        self, key: str, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        """Forward hook of a LoRA target Linear: add every stream's update during a stacked pass."""
        if self._run is None:
            return None
        return output + self.lora[key].delta(args[0]).to(output.dtype)

    def _on_layer(self, index: int, module: nn.Module, args: Any, output: Any) -> Any:
        """Forward hook of transformer layer ``index``: replace its output by the refined stream states."""
        run = self._run
        if run is None:
            return None
        # transformers 5 layers return the hidden states; older ones a tuple led by them.
        states = output[0] if isinstance(output, tuple) else output
        per_stream = states.reshape(self.n_streams, -1, *states.shape[1:])
        refined, z = self.integrators[str(index)](per_stream, run.attention_mask)
        if run.record is not None:
            run.record[index] = z.detach()
        refined = refined.reshape(states.shape)
        return (refined, *output[1:]) if isinstance(output, tuple) else refined

    @contextmanager
    def _running(self, attention_mask: torch.Tensor | None, record: dict[int, torch.Tensor] | None) -> Iterator[None]:
        self._run = _Run(attention_mask, record)
        try:
            yield
        finally:
            self._run = None

    def _stacked_forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        record: dict[int, torch.Tensor] | None,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """Run the base once over the n-fold stacked batch; the final states viewed as [n, B, T, H]."""
        n = self.n_streams
        first = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if first is None:
            raise ValidationError("X-Cross encoder needs input_ids or inputs_embeds")
        batch = first.shape[0]

        def stack(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                return value.repeat(n, *([1] * (value.dim() - 1)))
            return value

        call = {key: stack(value) for key, value in kwargs.items()}
        if self._use_cache_off:
            call.setdefault("use_cache", False)
        with self._running(attention_mask, record):
            output = self.base(input_ids=stack(input_ids), attention_mask=stack(attention_mask), **call)
        states = output[0]
        return states.view(n, batch, *states.shape[1:])

    def forward(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> XCrossOutput:
        """Encode [B, T] inputs; extra keyword arguments (``token_type_ids``, …) go to the base model.

        Batch-shaped tensors among them are stacked like the inputs.
        """
        streams = self._stacked_forward(input_ids, attention_mask, None, kwargs)
        mixed = torch.einsum("m,mbth->bth", self.mix.to(streams.dtype), streams)
        return XCrossOutput(hidden_state=mixed, stream_states=streams)

    @torch.no_grad()
    def integration_weights(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> list[IntegrationWeights]:
        """Per integrating layer, the average integration scalars z on this batch (see :class:`IntegrationWeights`).

        z depends on the input, so it is measured on data rather than read off W_l.
        """
        record: dict[int, torch.Tensor] = {}
        self._stacked_forward(input_ids, attention_mask, record, kwargs)
        n = self.n_streams
        result = []
        for index in sorted(record):
            z = record[index].float()  # [B, T or 1, n, n-1, 2]
            if self.config.per_token and attention_mask is not None:
                weight = attention_mask.to(z.dtype).view(*attention_mask.shape, 1, 1, 1)
            else:
                weight = torch.ones(*z.shape[:2], 1, 1, 1, dtype=z.dtype, device=z.device)
            total = weight.sum(dim=(0, 1)).clamp(min=1.0)
            means = [(z * weight).sum(dim=(0, 1)) / total, (z.abs() * weight).sum(dim=(0, 1)) / total]
            full = []
            for reduced in means:
                square = torch.full((n, n, 2), float("nan"), dtype=z.dtype, device=z.device)
                for m in range(n):
                    others = [k for k in range(n) if k != m]
                    square[m, others] = reduced[m]
                full.append(square.cpu())
            result.append(IntegrationWeights(layer=index, mean=full[0], mean_abs=full[1]))
        return result

    def integrator_parameter_count(self) -> int:
        """Trainable parameters of the composition without its head: every W_l plus the mixing weights."""
        return sum(p.numel() for p in self.integrators.parameters()) + self.mix.numel()
