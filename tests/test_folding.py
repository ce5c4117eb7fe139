"""Folded serving copies: every composition method's encoder, with its LoRA updates
folded into the base weights, gives the hooked encoder's states up to float rounding;
bfloat16 products stay close; what cannot be folded is refused; the original encoder is
untouched.  Tiny random models."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_merge_methods import INPUTS, fresh_base, save_sources

from xcross_registry import folding
from xcross_registry.composition_methods import composition_method
from xcross_registry.errors import ValidationError
from xcross_registry.folding import FoldedLinear, bfloat16_native, folded_encoder
from xcross_registry.runtimes import runtime


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return save_sources(tmp_path_factory, (4, 6))  # ranks differ: X-Cross pads, the sums do not care


def built(method: str, sources, settings=None) -> torch.nn.Module:
    chosen = composition_method(method)
    encoder = chosen.build_encoder(fresh_base(), sources, chosen.settings(settings)).eval()
    if method == "xcross":  # trained-looking integrators, so that the streams really mix
        torch.manual_seed(3)
        with torch.no_grad():
            for parameter in encoder.xcross.integrators.parameters():
                parameter.normal_(std=0.05)
    return encoder


def batch(size: int = 3) -> dict[str, torch.Tensor]:
    """Rows of different lengths, padded: the stacked streams and the padding must both fold right."""
    ids, mask = INPUTS["input_ids"], INPUTS["attention_mask"]
    return {"input_ids": ids.repeat(2, 1)[:size], "attention_mask": mask.repeat(2, 1)[:size]}


@pytest.mark.parametrize(("method", "settings"), [
    ("xcross", None), ("linear-merge", None), ("svd", None), ("learned-merge", {"per_layer": True}),
])
@pytest.mark.parametrize("packed", [True, False])
def test_a_folded_encoder_gives_the_hooked_states(sources, method, settings, packed):
    encoder = built(method, sources, settings)
    if method == "learned-merge":  # per-layer weights that differ, as after training
        encoder.set_weights([[0.9, -0.2], [0.3, 0.6]])
    inputs = batch()
    with torch.inference_mode():
        expected = encoder(**inputs)
        folded = folded_encoder(encoder, packed=packed)
        states = folded(**inputs)
        alone = folded(**{k: v[1:2] for k, v in inputs.items()})
    linears = [m for m in folded.modules() if isinstance(m, FoldedLinear)]
    assert linears and not [m for m in folded.modules() if type(m) is torch.nn.Linear]
    assert {m.streams for m in linears} == ({1, 2} if method == "xcross" else {1})  # X-Cross: one matrix per stream
    assert (states - expected).abs().max().item() < 1e-5
    assert (alone[0] - expected[1]).abs().max().item() < 1e-5
    # The served copy is a copy: the encoder still runs its hooks and LoRA layers.
    assert not any(isinstance(m, FoldedLinear) for m in encoder.modules())
    with torch.inference_mode():
        assert torch.equal(encoder(**inputs), expected)


@pytest.mark.skipif(not bfloat16_native(), reason="this CPU has no bfloat16 instructions (AVX512-BF16, AMX)")
def test_bfloat16_products_stay_close(sources):
    encoder = built("xcross", sources)
    with torch.inference_mode():
        expected = encoder(**batch())
        states = folded_encoder(encoder, "bfloat16")(**batch())
    assert states.dtype == torch.float32
    difference = (states - expected).abs().max().item()
    assert 1e-6 < difference < 0.05 * expected.abs().max().item()


def test_without_bfloat16_instructions_the_bfloat16_runtime_is_refused(sources, monkeypatch):
    monkeypatch.setattr(folding, "bfloat16_native", lambda: False)
    message = "bfloat16 products need a CPU with AVX512-BF16 or AMX; this one has neither"
    with pytest.raises(ValidationError, match=message):
        runtime("folded-bf16")  # a service asks when it starts
    with pytest.raises(ValidationError, match=message):
        folded_encoder(built("xcross", sources), "bfloat16")
    assert runtime("folded").name == "folded"


def test_what_cannot_be_folded_is_refused(sources, tmp_path_factory):
    even = save_sources(tmp_path_factory, (4, 4))  # Arrow routes sources of one rank
    with pytest.raises(ValidationError, match="cannot fold the LoRA layer .*Arrow"):
        folded_encoder(built("arrow", even))
    dora = get_peft_model(fresh_base(), LoraConfig(r=2, target_modules=["query"], use_dora=True))
    from xcross_registry.scorer import LoraEncoder

    with pytest.raises(ValidationError, match="cannot fold the LoRA layer"):
        folded_encoder(LoraEncoder(dora))
    with pytest.raises(ValidationError, match="unknown precision 'float16': use float32, bfloat16"):
        folded_encoder(built("linear-merge", sources), "float16")
