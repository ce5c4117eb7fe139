"""The merge methods against PEFT and against each other, on tiny random models.

Each static merge must be exactly what PEFT's ``add_weighted_adapter`` gives for the same
settings; ``learned-merge`` and ``lorahub`` must start as the equal-weight linear merge;
X-Cross from the mix must start as the layer-wise equal mix of its streams."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertModel

from xcross_registry.composition_methods import MergeSettings, SourceAdapter, composition_method
from xcross_registry.errors import ModelError, ValidationError
from xcross_registry.weighted_lora import WeightedLoraEncoder, load_lora_sources
from xcross_registry.xcross import XCrossConfig, XCrossEncoder

CONFIG = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64)


def fresh_base() -> BertModel:
    torch.manual_seed(0)
    return BertModel(CONFIG).eval()


def save_sources(tmp_path_factory, ranks) -> list[SourceAdapter]:
    """LoRA adapters of these ranks with random (non-zero) factors, saved as PEFT folders."""
    found = []
    for index, rank in enumerate(ranks):
        base = fresh_base()
        torch.manual_seed(10 + index)  # after fresh_base(), which seeds its own weights
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=8, target_modules=["query", "value"]))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:
                    parameter.normal_(std=0.2)
        folder = tmp_path_factory.mktemp(f"source{index}")
        model.save_pretrained(str(folder), safe_serialization=True)
        found.append(SourceAdapter(f"s{index}", folder))
    return found


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[SourceAdapter]:
    return save_sources(tmp_path_factory, (4, 4))


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> list[SourceAdapter]:
    """Sources of ranks 4 and 6: the summing merges take them, the factor-wise ones cannot."""
    return save_sources(tmp_path_factory, (4, 6))


INPUTS = {"input_ids": torch.tensor([[2, 17, 33, 91, 5, 0], [2, 40, 41, 8, 0, 0]]),
          "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])}


def peft_merge(sources, combination: str, weights, seed: int = 0, **options) -> torch.Tensor:
    """PEFT's own merged model's hidden states, built the way PEFT's docs show."""
    model = PeftModel.from_pretrained(fresh_base(), str(sources[0].folder), adapter_name="a")
    model.load_adapter(str(sources[1].folder), adapter_name="b")
    torch.manual_seed(seed)
    model.add_weighted_adapter(["a", "b"], weights, "merged", combination_type=combination, **options)
    model.set_adapter("merged")
    model.eval()
    with torch.no_grad():
        return model(**INPUTS).last_hidden_state


def encoded(method: str, sources, settings=None) -> torch.Tensor:
    chosen = composition_method(method)
    encoder = chosen.build_encoder(fresh_base(), sources, chosen.settings(settings))
    encoder.eval()
    with torch.no_grad():
        return encoder(**INPUTS)


@pytest.mark.parametrize(("method", "combination", "weights", "options"), [
    ("linear-merge", "cat", [0.5, 0.5], {}),
    ("ties", "ties", [1.0, 1.0], {"density": 0.5, "majority_sign_method": "total"}),
    ("dare-linear", "dare_linear", [0.5, 0.5], {"density": 0.5}),
    ("dare-ties", "dare_ties", [1.0, 1.0], {"density": 0.5, "majority_sign_method": "total"}),
    ("svd", "svd", [0.5, 0.5], {}),
])
def test_each_static_merge_is_peft_add_weighted_adapter_with_its_defaults(sources, method, combination,
                                                                          weights, options):
    assert torch.equal(encoded(method, sources), peft_merge(sources, combination, weights, **options))


def test_static_merge_settings_reach_peft_and_change_the_merge(sources):
    given = {"density": 0.3, "majority_sign_method": "frequency", "weights": [0.7, 0.2]}
    ours = encoded("ties", sources, given)
    assert torch.equal(ours, peft_merge(sources, "ties", [0.7, 0.2], density=0.3,
                                        majority_sign_method="frequency"))
    assert not torch.equal(ours, encoded("ties", sources))
    assert torch.equal(encoded("svd", sources, {"svd_rank": 2}), peft_merge(sources, "svd", [0.5, 0.5],
                                                                            svd_rank=2))
    # DARE's random drop mask comes from the stored seed: the same seed, the same merge.
    assert torch.equal(encoded("dare-linear", sources, {"seed": 3}),
                       peft_merge(sources, "dare_linear", [0.5, 0.5], seed=3, density=0.5))
    assert not torch.equal(encoded("dare-linear", sources, {"seed": 3}), encoded("dare-linear", sources))


def test_sources_of_different_ranks(uneven):
    assert torch.equal(encoded("linear-merge", uneven), peft_merge(uneven, "cat", [0.5, 0.5]))
    assert torch.equal(encoded("svd", uneven), peft_merge(uneven, "svd", [0.5, 0.5]))
    with pytest.raises(ModelError, match="^ties cannot merge these sources: All adapters must have the same r"):
        encoded("ties", uneven)
    linear = encoded("linear-merge", uneven)
    assert (encoded("learned-merge", uneven) - linear).abs().max().item() < 1e-6


def test_merge_settings_are_checked_and_round_trip():
    ties = composition_method("ties")
    settings = ties.settings({"density": 0.2})
    assert ties.settings_from_json(ties.settings_to_json(settings)) == settings
    assert ties.settings_to_json(settings) == {"density": 0.2, "majority_sign_method": "total"}
    assert composition_method("linear-merge").settings_to_json(composition_method("linear-merge").settings(None)) is None
    with pytest.raises(ValidationError, match=r"^svd does not take density \(its settings: svd_rank, weights\)$"):
        composition_method("svd").settings({"density": 0.5})
    with pytest.raises(ValidationError, match=r"^merge density must be in \(0, 1\], got 1.5$"):
        ties.settings({"density": 1.5})
    with pytest.raises(ValidationError, match="unknown merge setting field"):
        ties.settings({"dens": 0.5})
    with pytest.raises(ValidationError, match="majority_sign_method must be one of total, frequency"):
        MergeSettings(majority_sign_method="vote")


def test_arrow_is_peft_create_arrow_model(sources):
    from peft import ArrowConfig, create_arrow_model

    reference = create_arrow_model(fresh_base(), [str(s.folder) for s in sources],
                                   ArrowConfig(top_k=2, router_temperature=0.5, rng_seed=0)).eval()
    with torch.no_grad():
        expected = reference(**INPUTS).last_hidden_state
    assert torch.equal(encoded("arrow", sources, {"router_temperature": 0.5}), expected)
    assert not torch.allclose(encoded("arrow", sources, {"top_k": 1}), expected)
    with pytest.raises(ValidationError, match="top_k 3 is more than the 2 sources"):
        encoded("arrow", sources, {"top_k": 3})


def test_learned_merge_starts_as_the_linear_merge(sources):
    linear = encoded("linear-merge", sources)
    for per_layer in (False, True):
        learned = encoded("learned-merge", sources, {"per_layer": per_layer})
        assert (learned - linear).abs().max().item() < 1e-6


def test_learned_merge_weights_train_and_per_layer_weights_act_per_layer(sources):
    method = composition_method("learned-merge")
    encoder = method.build_encoder(fresh_base(), sources, method.settings({"per_layer": True}))
    trainable = [name for name, p in encoder.named_parameters() if p.requires_grad]
    assert trainable == ["merge_weights"] and encoder.merge_weights.shape == (2, 2)
    out = encoder(**INPUTS)
    # (a plain sum would be blind: LayerNorm makes the hidden sum of the last layer constant)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert encoder.merge_weights.grad.abs().min() > 0  # every layer's every weight has a gradient
    # Moving layer 1's weights changes the output; a per-source encoder with the same
    # weights everywhere is the same model.
    with torch.no_grad():
        encoder.set_weights([[0.5, 0.5], [0.9, -0.1]])
        moved = encoder(**INPUTS)
        flat = WeightedLoraEncoder(fresh_base(), load_lora_sources(sources), torch.tensor([0.9, -0.1]),
                                   trainable=False)(**INPUTS)
        encoder.set_weights([[0.9, -0.1], [0.9, -0.1]])
        assert (encoder(**INPUTS) - flat).abs().max().item() < 1e-6
    assert not torch.allclose(moved, flat)


def test_weighted_sum_of_updates_equals_peft_cat_with_any_weights(sources):
    ours = WeightedLoraEncoder(fresh_base(), load_lora_sources(sources), torch.tensor([1.3, -0.4]),
                               trainable=False)
    with torch.no_grad():
        assert (ours(**INPUTS) - peft_merge(sources, "cat", [1.3, -0.4])).abs().max().item() < 1e-6


def equal_mix_reference(sources) -> torch.Tensor:
    """The layer-wise equal mix computed with PEFT alone: the batch repeated per source,
    each copy through its own adapter (PEFT's mixed-adapter batches), and after every
    layer each copy's state replaced by the mean over the copies."""
    model = PeftModel.from_pretrained(fresh_base(), str(sources[0].folder), adapter_name="a")
    model.load_adapter(str(sources[1].folder), adapter_name="b")
    model.eval()
    batch = INPUTS["input_ids"].shape[0]

    def average(module, args, output):
        states = output[0] if isinstance(output, tuple) else output
        mean = states.view(2, batch, *states.shape[1:]).mean(0)
        mixed = mean.repeat(2, 1, 1)
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    hooks = [layer.register_forward_hook(average) for layer in model.base_model.model.encoder.layer]
    try:
        with torch.no_grad():
            out = model(input_ids=INPUTS["input_ids"].repeat(2, 1),
                        attention_mask=INPUTS["attention_mask"].repeat(2, 1),
                        adapter_names=["a"] * batch + ["b"] * batch).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    return out[:batch]


def test_xcross_from_the_mix_starts_as_the_equal_mix_of_its_streams(sources):
    reference = equal_mix_reference(sources)
    encoder = XCrossEncoder(fresh_base(), load_lora_sources(sources), XCrossConfig(init="mix", gamma=0.5))
    with torch.no_grad():
        ours = encoder(**INPUTS).hidden_state
    # Derived tolerance: float32 rounding of sums of O(hidden) terms in each of the two
    # layers' matrix products, relative to the states' size; the two computations differ
    # only in summation order (stacked LoRA products and an n×n mixing matrix here,
    # PEFT's per-adapter products and a mean there).
    tolerance = 8 * CONFIG.num_hidden_layers * CONFIG.intermediate_size * torch.finfo(torch.float32).eps \
        * reference.abs().max().item()
    assert (ours - reference).abs().max().item() <= tolerance
    # and it is not what the default start (independent streams, averaged at the end) gives
    streams = XCrossEncoder(fresh_base(), load_lora_sources(sources), XCrossConfig(init="streams"))
    with torch.no_grad():
        assert (streams(**INPUTS).hidden_state - reference).abs().max().item() > 10 * tolerance
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert {"integrators.0.bias", "integrators.1.bias"} <= trainable


def test_mix_init_settings_are_checked():
    assert XCrossConfig.from_dict(XCrossConfig(init="mix").to_dict()).init == "mix"
    assert XCrossConfig().init == "mix"  # the default the issue-22 screen chose on validation
    assert XCrossConfig.from_stored({}).init == "streams"  # compositions stored before it
    assert XCrossConfig.from_stored({"init": "mix"}).init == "mix"
    with pytest.raises(ValidationError, match="'init' must be one of streams, mix"):
        XCrossConfig(init="merge")
    with pytest.raises(ValidationError, match="needs gamma != 0"):
        XCrossConfig(init="mix", gamma=0.0)
    assert math.isclose(XCrossConfig(init="mix").gamma, 1.0)


def test_integrators_read_rms_normalised_states_on_decoders(sources):
    """A decoder's layer outputs are its un-normalised residual stream (SmolLM2's reach
    2e4): with input_norm rms the integration scalars do not grow with them."""
    from transformers import LlamaConfig, LlamaModel

    from xcross_registry.xcross.layer import XCrossIntegrator

    torch.manual_seed(0)
    integrator = XCrossIntegrator(2, 8, beta=1.0, gamma=1.0, per_token=True, init_std=0.1, rms_input=True)
    states = torch.randn(2, 3, 5, 8)
    assert torch.allclose(integrator.scalars(states, None), integrator.scalars(1000 * states, None), atol=1e-5)
    plain = XCrossIntegrator(2, 8, beta=1.0, gamma=1.0, per_token=True, init_std=0.1)
    plain.load_state_dict(integrator.state_dict())
    assert torch.allclose(plain.scalars(1000 * states, None), 1000 * plain.scalars(states, None), rtol=1e-4)

    llama = LlamaModel(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2))
    lora = {f"layers.{i}.self_attn.{m}.lora_{f}.weight": torch.randn(2, 16) if f == "A" else torch.randn(16, 2)
            for i in range(2) for m in ("q_proj", "v_proj") for f in "AB"}
    from xcross_registry.xcross import LoraSource
    decoder = XCrossEncoder(llama, [LoraSource(lora, LoraConfig(r=2, lora_alpha=2, target_modules=[
        "q_proj", "v_proj"]), name=name) for name in ("a", "b")])
    assert all(i.rms_input for i in decoder.integrators.values())  # chosen by the base: a decoder
    encoder = XCrossEncoder(fresh_base(), load_lora_sources(sources), XCrossConfig(init="streams"))
    assert not any(i.rms_input for i in encoder.integrators.values())  # BERT: as stored compositions score
    chosen = XCrossEncoder(fresh_base(), load_lora_sources(sources), XCrossConfig(input_norm="rms"))
    assert all(i.rms_input for i in chosen.integrators.values())
