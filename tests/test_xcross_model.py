"""X-Cross multi-stream encoder against an independent per-stream peft reference.

The reference runs each stream through a real peft model (adapter switched with
``set_adapter``), one transformer layer at a time, and applies the integrator
equations with explicit loops; the encoder runs all streams as one stacked batch
with batched LoRA products and hooks. Tiny random models, fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import BertConfig, BertForSequenceClassification, BertModel, LlamaConfig, LlamaModel

from xcross_registry.errors import ModelError, ValidationError
from xcross_registry.xcross import LoraSource, XCrossConfig, XCrossEncoder, lora_parameter_count

# These tests pin the integrator's arithmetic from the streams' start on the raw layer
# outputs (tests/test_merge_methods.py covers the mix start and the rms input).
STREAMS = {"init": "streams", "input_norm": "none"}

BERT_TARGETS = ["query", "value", "dense"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]


def tiny_bert(hidden_size: int = 32) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=hidden_size, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, vocab_size=100
    )
    return BertModel(config).eval()


def tiny_llama() -> LlamaModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    model = LlamaModel(config).eval()
    # O(1) embeddings (as in trained models) rather than std 0.02: the final RMSNorm
    # would otherwise magnify fp32 rounding ~20x and blur the 1e-6 comparisons.
    torch.nn.init.normal_(model.embed_tokens.weight, std=1.0)
    return model


def make_source(base: torch.nn.Module, seed: int, targets: list[str], r: int = 4, rslora: bool = False) -> LoraSource:
    """A trained-looking adapter, as peft saves it: random non-zero A and B.

    B is scaled down so that the update stays a modest fraction of the base layer, as
    after training; peft's raw random B would blow the tiny Llama's residual stream up
    to ~100x its scale and leave fp32 comparisons ill-conditioned.
    """
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_rslora=rslora)
    model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    state = {
        k: v.detach().clone() * (0.2 if ".lora_B." in k else 1.0) for k, v in get_peft_model_state_dict(model).items()
    }
    return LoraSource(state_dict=state, config=config, name=f"s{seed}")


FLOAT32_UNIT_ROUNDOFF = 2.0**-24  # u: half of torch.finfo(torch.float32).eps


def rounding_bound(reference: torch.Tensor, base: torch.nn.Module, streams: int, integrating_layers: int,
                   length: int) -> float:
    """The largest difference float32 rounding alone can make between two correct
    implementations of the multi-stream forward, derived rather than measured.

    Both sides compute the same real function in a different order: the encoder stacks
    the streams into one batch and applies LoRA by batched products, the reference runs
    peft one stream at a time; and BLAS kernels split their sums differently on AVX2,
    AVX512 and AMX CPUs.  A length-K dot product summed in any order lies within
    gamma_K = K*u/(1-K*u) ~ K*u of the exact value, relative to the sum of its terms'
    magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.1),
    so two orders differ by at most 2*K*u.  To first order the errors of a chain of
    products add, so the chain's accumulation length is summed: per transformer layer,
    the q/k/v projections (hidden), the attention scores (head dim), the attention-
    weighted values (sequence length), the attention output and FFN input (hidden each),
    the FFN output (intermediate size) and the two normalisations' reductions (hidden
    each); per integrating layer z = W.concat(h_1..h_n) (n*hidden); and the final mix
    (n).  The normalisations keep the terms at the scale of the outputs, so the bound
    is relative to max|reference|.  It is a worst case: rounding errors typically grow
    like sqrt(K) (Higham and Mary, SIAM J. Sci. Comput. 2019), and the differences seen
    stay 60-700x below it (1.05e-5 against 6.6e-4 for bert-3-True-layers2 on AVX2, where a
    fixed 1e-5 failed), while the integrators themselves move the states by 0.18 to 7, so
    a wrong term still fails.
    """
    config = base.config
    per_layer = (6 * config.hidden_size + config.hidden_size // config.num_attention_heads + length
                 + config.intermediate_size)
    accumulated = (config.num_hidden_layers * per_layer + integrating_layers * streams * config.hidden_size
                   + streams)
    return 2 * accumulated * FLOAT32_UNIT_ROUNDOFF * reference.abs().max().item()


def inputs(batch: int = 2, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(123)
    ids = torch.randint(1, 100, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 2 :] = 0  # right padding on the second sequence
    return ids, mask


def peft_model(base: torch.nn.Module, sources: list[LoraSource]):
    """One peft model on a copy of ``base`` holding every source as a named adapter."""
    model = get_peft_model(copy.deepcopy(base), copy.deepcopy(sources[0].config), adapter_name="a0")
    for m, source in enumerate(sources):
        if m:
            model.add_adapter(f"a{m}", copy.deepcopy(source.config))
        set_peft_model_state_dict(model, source.state_dict, adapter_name=f"a{m}")
    return model.eval()


def reference_integrate(hs, weight, beta, gamma, per_token, mask):
    """The integrator equations, written out term by term."""
    n = len(hs)
    if per_token:
        features = hs
    else:
        m_ = mask.to(hs[0].dtype)[..., None]
        features = [(h * m_).sum(1, keepdim=True) / m_.sum(1, keepdim=True) for h in hs]
    z = torch.cat(features, dim=-1) @ weight.T
    refined = []
    for m in range(n):
        acc = hs[m].clone()
        for j, k in enumerate(k for k in range(n) if k != m):
            col = (m * (n - 1) + j) * 2
            inject, differ = z[..., col : col + 1], z[..., col + 1 : col + 2]
            acc = acc + beta * inject * hs[k] + gamma * differ * (hs[m] - hs[k])
        refined.append(acc)
    return refined


def reference_forward(base, sources, encoder, ids, mask, layers_of, final_of):
    """Per-stream peft run, layer by layer, with the refined states fed forward."""
    model = peft_model(base, sources)
    inner = model.base_model.model
    layers = layers_of(inner)
    captured: dict[int, tuple] = {}

    def capture(index):
        def pre_hook(module, args, kwargs):
            captured[index] = (args, kwargs)

        return pre_hook

    handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        inner(input_ids=ids, attention_mask=mask, use_cache=False)
    for handle in handles:
        handle.remove()

    cfg = encoder.config
    states = [captured[0][0][0].clone() for _ in sources]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            args, kwargs = captured[i]
            hs = []
            for m in range(len(sources)):
                model.set_adapter(f"a{m}")
                out = layer(states[m], *args[1:], **kwargs)
                hs.append(out[0] if isinstance(out, tuple) else out)
            if str(i) in encoder.integrators:
                weight = encoder.integrators[str(i)].weight.detach()
                states = reference_integrate(hs, weight, cfg.beta, cfg.gamma, cfg.per_token, mask)
            else:
                states = hs
        finals = [final_of(inner)(s) for s in states]
    mixed = sum(w * f for w, f in zip(encoder.mix.detach(), finals))
    return torch.stack(finals), mixed


ARCHS = {
    "bert": (tiny_bert, BERT_TARGETS, lambda m: m.encoder.layer, lambda m: (lambda h: h)),
    "llama": (tiny_llama, LLAMA_TARGETS, lambda m: m.layers, lambda m: m.norm),
}


@pytest.mark.parametrize(
    "arch,n,per_token,layers",
    [
        ("bert", 2, True, None),
        ("bert", 3, False, None),
        ("bert", 3, True, [0, 2]),
        ("llama", 2, True, None),
        ("llama", 3, False, [1]),
    ],
)
def test_stacked_forward_matches_per_stream_peft_reference(arch, n, per_token, layers):
    build, targets, layers_of, final_of = ARCHS[arch]
    base = build()
    # different ranks (zero-padded in the encoder) and one rsLoRA scaling
    sources = [make_source(base, seed=10 + m, targets=targets, r=2 + 2 * m, rslora=(m == 1)) for m in range(n)]
    config = XCrossConfig(**STREAMS, beta=0.7, gamma=1.3, per_token=per_token, layers=layers, init_std=0.05)
    encoder = XCrossEncoder(copy.deepcopy(base), sources, config)
    with torch.no_grad():
        # Unequal weights summing to one: the mixed state's float32 error then stays
        # within the streams' own (weights summing to 1.8 had scaled it past 1e-5 on
        # some CPUs' kernels while every stream matched).
        weights = torch.linspace(0.2, 1.0, n)
        encoder.mix.copy_(weights / weights.sum())
    ids, mask = inputs()
    with torch.no_grad():
        out = encoder(ids, attention_mask=mask)
    ref_streams, ref_mixed = reference_forward(base, sources, encoder, ids, mask, layers_of, final_of)
    assert out.stream_states.shape == (n, 2, 7, 32)
    assert out.hidden_state.shape == (2, 7, 32)
    # the integrators really change the streams, and the streams really differ
    plain = XCrossEncoder(copy.deepcopy(base), sources, XCrossConfig(**STREAMS, layers=layers))
    with torch.no_grad():
        effect = (plain(ids, attention_mask=mask).stream_states - ref_streams).abs().max()
        assert effect > 1e-3
    assert (ref_streams[0] - ref_streams[1]).abs().max() > 1e-3
    integrating = len(layers) if layers is not None else base.config.num_hidden_layers
    stream_bound = rounding_bound(ref_streams, base, n, integrating, ids.shape[1])
    assert stream_bound < 0.01 * effect  # far below what the integrators (or a wrong term) change
    assert (out.stream_states - ref_streams).abs().max() < stream_bound
    assert (out.hidden_state - ref_mixed).abs().max() < rounding_bound(ref_mixed, base, n, integrating, ids.shape[1])


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_zero_integrators_give_each_plain_lora_model(arch):
    build, targets, _, _ = ARCHS[arch]
    base = build()
    sources = [make_source(base, seed=20 + m, targets=targets, r=4) for m in range(3)]
    # init_std 0: every W_l is zero
    encoder = XCrossEncoder(copy.deepcopy(base), sources, XCrossConfig(**STREAMS))
    ids, mask = inputs()
    with torch.no_grad():
        out = encoder(ids, attention_mask=mask)
        for m, source in enumerate(sources):
            plain = peft_model(base, [source])
            expected = plain(input_ids=ids, attention_mask=mask).last_hidden_state
            bound = rounding_bound(expected, base, len(sources), base.config.num_hidden_layers, ids.shape[1])
            assert (out.stream_states[m] - expected).abs().max() < bound
        # sum_m w_m*f_m with float32 weights fl(1/n) against (sum_m f_m)/n: the weights, the
        # products and n-1 additions round on one side (n+1 roundings of at most u each,
        # relative to max|f| since the weights sum to 1), n-1 additions and a division on
        # the other (n), so the two differ by at most (2n+1)*u*max|f|.
        terms = out.stream_states.abs().max()
        assert (out.hidden_state - out.stream_states.mean(0)).abs().max() < \
            (2 * len(sources) + 1) * FLOAT32_UNIT_ROUNDOFF * terms


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_gradients_reach_only_integrators_and_mix(arch):
    build, targets, _, _ = ARCHS[arch]
    base = build()
    sources = [make_source(base, seed=30 + m, targets=targets) for m in range(2)]
    encoder = XCrossEncoder(base, sources, XCrossConfig(**STREAMS, init_std=0.02)).train()
    ids, mask = inputs()
    out = encoder(ids, attention_mask=mask)
    (out.hidden_state**2).mean().backward()
    trainable = []
    for name, param in encoder.named_parameters():
        if name.startswith("integrators.") or name == "mix":
            trainable.append(name)
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    assert len(trainable) == 3 + 1
    assert all(not b.requires_grad for b in encoder.lora.buffers())
    assert not encoder.base.training  # frozen base stays in eval mode (no dropout)


def test_zero_init_still_gets_gradient():
    base = tiny_bert()
    sources = [make_source(base, seed=m, targets=BERT_TARGETS) for m in range(2)]
    encoder = XCrossEncoder(base, sources, XCrossConfig(**STREAMS))
    ids, mask = inputs()
    encoder(ids, attention_mask=mask).hidden_state.pow(2).mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in encoder.integrators.parameters())


@pytest.mark.parametrize("n", [2, 3, 4])
def test_one_copy_of_the_base_weights(n):
    base = tiny_bert()
    base_storages = {p.untyped_storage().data_ptr() for p in base.parameters()}
    base_numel = sum(p.numel() for p in base.parameters())
    sources = [make_source(base, seed=40 + m, targets=BERT_TARGETS) for m in range(n)]
    encoder = XCrossEncoder(base, sources, XCrossConfig(**STREAMS))
    frozen = [p for name, p in encoder.named_parameters() if not (name.startswith("integrators.") or name == "mix")]
    assert {p.untyped_storage().data_ptr() for p in frozen} == base_storages
    assert sum(p.numel() for p in encoder.parameters()) == base_numel + encoder.integrator_parameter_count()
    # one stacked factor pair per adapted Linear, whatever n is
    lora_numel = sum(b.numel() for b in encoder.lora.buffers())
    assert lora_numel == sum(lora_parameter_count(s) for s in sources) + n * len(encoder.lora)


def test_parameter_counts():
    base = tiny_bert()
    sources = [make_source(base, seed=m, targets=["query", "value"], r=8) for m in range(2)]
    encoder = XCrossEncoder(base, sources, XCrossConfig(**STREAMS))
    n, hidden, layers = 2, 32, 3
    assert encoder.integrator_parameter_count() == layers * 2 * n * (n - 1) * n * hidden + n
    assert lora_parameter_count(sources[0]) == layers * 2 * (8 * hidden + hidden * 8)


def test_mismatched_target_modules_raise():
    base = tiny_bert()
    sources = [
        make_source(base, seed=1, targets=["query", "value"]),
        make_source(base, seed=2, targets=["query", "key"]),
    ]
    with pytest.raises(ModelError, match="adapt different modules"):
        XCrossEncoder(base, sources, XCrossConfig(**STREAMS))


def test_adapter_of_another_hidden_size_raises():
    base = tiny_bert(32)
    other = make_source(tiny_bert(48), seed=2, targets=BERT_TARGETS)
    with pytest.raises(ModelError, match="does not fit the base model"):
        XCrossEncoder(base, [make_source(base, seed=1, targets=BERT_TARGETS), other])


def test_adapter_of_another_architecture_raises():
    base = tiny_bert()
    with pytest.raises(ModelError, match="does not have"):
        XCrossEncoder(base, [make_source(tiny_llama(), seed=m, targets=["q_proj"]) for m in range(2)])


def test_rank_disagreeing_with_config_raises():
    base = tiny_bert()
    bad = make_source(base, seed=2, targets=BERT_TARGETS, r=4)
    bad.config = LoraConfig(r=8, lora_alpha=8, target_modules=BERT_TARGETS)
    with pytest.raises(ModelError, match="rank 4"):
        XCrossEncoder(base, [make_source(base, seed=1, targets=BERT_TARGETS), bad])


def test_needs_two_sources_and_layers_in_range():
    base = tiny_bert()
    sources = [make_source(base, seed=m, targets=BERT_TARGETS) for m in range(2)]
    with pytest.raises(ValidationError, match="at least two"):
        XCrossEncoder(base, sources[:1])
    with pytest.raises(ValidationError, match="out of range"):
        XCrossEncoder(base, sources, XCrossConfig(**STREAMS, layers=[0, 3]))


def test_adapter_trained_on_a_task_model_maps_onto_the_backbone():
    """Keys like base_model.model.bert.encoder… fit a bare BertModel, and a wrapped base works too."""
    torch.manual_seed(0)
    task = BertForSequenceClassification(tiny_bert().config).eval()
    sources = [make_source(task, seed=m, targets=["query", "value"]) for m in range(2)]
    assert any(".bert.encoder." in k for k in sources[0].state_dict)
    ids, mask = inputs()
    with torch.no_grad():
        bare = XCrossEncoder(copy.deepcopy(task.bert), sources, XCrossConfig(**STREAMS))(ids, attention_mask=mask)
        wrapped = XCrossEncoder(copy.deepcopy(task), sources, XCrossConfig(**STREAMS))(ids, attention_mask=mask)
        expected = peft_model(task, sources[:1]).base_model.model.bert(input_ids=ids, attention_mask=mask)
    assert torch.equal(bare.stream_states, wrapped.stream_states)
    reference = expected.last_hidden_state
    bound = rounding_bound(reference, task.bert, len(sources), task.config.num_hidden_layers, ids.shape[1])
    assert (bare.stream_states[0] - reference).abs().max() < bound


def test_base_called_directly_is_unchanged_and_deepcopy_is_independent():
    base = tiny_bert()
    ids, mask = inputs()
    with torch.no_grad():
        before = base(input_ids=ids, attention_mask=mask).last_hidden_state
    sources = [make_source(base, seed=m, targets=BERT_TARGETS) for m in range(2)]
    encoder = XCrossEncoder(base, sources, XCrossConfig(**STREAMS, init_std=0.05))
    twin = copy.deepcopy(encoder)
    with torch.no_grad():
        assert torch.equal(encoder.base(input_ids=ids, attention_mask=mask).last_hidden_state, before)
        first = encoder(ids, attention_mask=mask).hidden_state
        assert torch.equal(twin(ids, attention_mask=mask).hidden_state, first)
        twin.integrators["0"].weight.zero_()
        assert torch.equal(encoder(ids, attention_mask=mask).hidden_state, first)
        assert not torch.equal(twin(ids, attention_mask=mask).hidden_state, first)


def test_integration_weights_summary():
    base = tiny_bert()
    sources = [make_source(base, seed=m, targets=BERT_TARGETS) for m in range(3)]
    encoder = XCrossEncoder(base, sources, XCrossConfig(**STREAMS, init_std=0.05, layers=[1, 2]))
    ids, mask = inputs()
    summary = encoder.integration_weights(ids, attention_mask=mask)
    assert [s.layer for s in summary] == [1, 2]
    for s in summary:
        assert s.mean.shape == s.mean_abs.shape == (3, 3, 2)
        diagonal = torch.eye(3, dtype=torch.bool)
        assert s.mean[diagonal].isnan().all() and not s.mean[~diagonal].isnan().any()
        assert (s.mean_abs[~diagonal] >= s.mean[~diagonal].abs()).all()
        assert s.mean_abs[~diagonal].min() > 0


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_bf16_autocast_and_bf16_base(arch):
    build, targets, _, _ = ARCHS[arch]
    base = build()
    sources = [make_source(base, seed=m, targets=targets) for m in range(2)]
    encoder = XCrossEncoder(base, sources, XCrossConfig(**STREAMS, init_std=0.02))
    ids, mask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(ids, attention_mask=mask)
    assert torch.isfinite(out.hidden_state.float()).all()
    out.hidden_state.float().sum().backward()
    assert encoder.mix.grad is not None
    encoder.base.to(torch.bfloat16)
    with torch.no_grad():
        out = encoder(ids, attention_mask=mask)
    assert out.hidden_state.dtype == torch.bfloat16 and torch.isfinite(out.hidden_state.float()).all()


def test_config_json_round_trip_and_validation():
    config = XCrossConfig(beta=0.5, gamma=2, per_token=False, layers=[2, 0], init_std=1e-3)
    again = XCrossConfig.from_json(config.to_json())
    assert again == config and again.layers == [0, 2] and isinstance(again.gamma, float)
    assert XCrossConfig.from_dict(XCrossConfig().to_dict()) == XCrossConfig()
    for bad in (
        {"beta": "x"},
        {"init_std": -1.0},
        {"layers": [0, 0]},
        {"layers": [-1]},
        {"layers": []},
        {"per_token": 1},
        {"alpha": 1.0},
    ):
        with pytest.raises(ValidationError):
            XCrossConfig.from_dict(bad)
    with pytest.raises(ValidationError, match="not valid JSON"):
        XCrossConfig.from_json("{")
