"""Compositions through the registry: compose, lineage, reload, errors, baselines, serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from xcross_registry.composer import load_composition
from xcross_registry.registry import Registry
from xcross_registry.schema import Composition, CompositionSource, EvaluationResult

QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3"]


@pytest.fixture
def sources(xreg, synthetic_domains, tiny_base_model):
    """toys and tools adapters (cross mode) and an empty-handed target domain, kitchen."""
    for domain in ("toys", "tools"):
        result = xreg("train-adapter", domain, *QUICK, "--base-model", str(tiny_base_model), "--json")
        assert result.exit_code == 0, result.stderr
    assert xreg("add-domain", "kitchen", "--plugin", "synthetic", "--data",
                "kitchen?users=120&items=60&max_len=8").exit_code == 0
    return tiny_base_model


def _compose(xreg, *extra):
    result = xreg("compose", "--sources", "toys,tools", "--target", "kitchen", *QUICK,
                  "--fraction", "0.5", "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return result.json()


@pytest.mark.slow
def test_compose_registers_lineage_and_evaluates(xreg, sources):
    document = _compose(xreg)
    assert document["name"] == "kitchen-x" and document["target"] == "kitchen"
    registry = Registry()
    adapters = {a.label: a.artifact_digest for a in registry.adapters()}
    assert [(s["adapter"], s["digest"]) for s in document["sources"]] == [
        ("toys@v1", adapters["toys@v1"]), ("tools@v1", adapters["tools@v1"])]
    parameters = document["parameters"]
    assert parameters["integrator_parameters"] > 0 and parameters["head_parameters"] > 0
    assert document["trainable_parameters"] == (parameters["integrator_parameters"]
                                                + parameters["head_parameters"])
    assert document["training_config"]["training"]["fraction"] == 0.5
    assert document["evaluation"]["subject"] == "kitchen-x"
    assert document["evaluation"]["users"] == 24
    assert registry.count(EvaluationResult) == 1
    shown = xreg("show", "kitchen-x")
    assert "integrators" in shown.stdout and "head" in shown.stdout
    # The sources cannot be removed from under the composition.
    refused = xreg("remove", "toys")
    assert refused.exit_code == 1 and "kitchen-x" in refused.stderr


RELOAD = """
import json, sys, torch
from xcross_registry.composer import load_composition
from xcross_registry.registry import Registry
registry = Registry()
scorer, row = load_composition(registry, "kitchen-x")
data = registry.domain_data("kitchen")
template = registry.domain_type("kitchen").default_template
histories = [[data.items[i] for i in s.history] for s in data.test[:3]]
candidates = [[data.items[j] for j in range(k, k + 4)] for k in range(3)]
with torch.no_grad():
    print(json.dumps(scorer.score(histories, candidates, template).tolist()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_reload_in_a_fresh_process_gives_identical_scores(xreg, sources, xreg_home, mode):
    _compose(xreg, "--mode", mode, "--no-evaluate")
    registry = Registry()
    scorer, _ = load_composition(registry, "kitchen-x")
    data = registry.domain_data("kitchen")
    template = registry.domain_type("kitchen").default_template
    histories = [[data.items[i] for i in s.history] for s in data.test[:3]]
    candidates = [[data.items[j] for j in range(k, k + 4)] for k in range(3)]
    with torch.no_grad():
        here = scorer.score(histories, candidates, template)
    out = subprocess.run([sys.executable, "-c", RELOAD], capture_output=True, text=True,
                         env={**os.environ, "XREG_HOME": str(xreg_home)})
    assert out.returncode == 0, out.stderr
    there = torch.tensor(json.loads(out.stdout))
    assert torch.equal(here, there)


@pytest.mark.slow
def test_bad_compositions_register_nothing(xreg, sources, tmp_path):
    from transformers import BertConfig, BertModel

    other = tmp_path / "other-base"
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(str(other))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(sources)).save_pretrained(str(other))
    assert xreg("add-domain", "garden", "--plugin", "synthetic", "--data",
                "garden?users=120&items=60&max_len=8").exit_code == 0
    assert xreg("train-adapter", "garden", *QUICK, "--base-model", str(other)).exit_code == 0
    cases = {
        ("--sources", "toys,nope", "--target", "kitchen"): "unknown domain 'nope'",
        ("--sources", "toys", "--target", "kitchen"): "at least two source adapters",
        ("--sources", "toys,garden", "--target", "kitchen"): "different base models",
        ("--sources", "toys,tools", "--target", "nowhere"): "unknown domain 'nowhere'",
        ("--sources", "toys,toys", "--target", "kitchen"): "listed twice",
        ("--sources", "toys,tools", "--target", "kitchen", "--name", "toys"): "is a domain name",
        ("--sources", "toys@v9,tools", "--target", "kitchen"): "unknown adapter 'toys@v9'",
    }
    registry = Registry()
    for args, message in cases.items():
        result = xreg("compose", *args, *QUICK)
        assert result.exit_code == 1, args
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert registry.count(Composition) == 0 and registry.count(CompositionSource) == 0


@pytest.mark.slow
def test_linear_merge_baseline_trains_only_the_head(xreg, sources):
    document = _compose(xreg, "--method", "linear-merge", "--name", "kitchen-merge")
    assert document["method"] == "linear-merge"
    assert document["parameters"]["integrator_parameters"] == 0
    assert document["evaluation"]["subject_kind"] == "baseline"
    scorer, _ = load_composition(Registry(), "kitchen-merge")
    assert not any(p.requires_grad for p in scorer.parameters())


@pytest.mark.slow
def test_recommend_ranks_candidates_and_the_catalogue(xreg, sources, tmp_path):
    _compose(xreg, "--mode", "dual", "--name", "kitchen-dual", "--no-evaluate")
    _compose(xreg, "--no-evaluate")
    registry = Registry()
    data = registry.domain_data("kitchen")
    history = "; ".join(item.title for item in data.items[:3])
    whole = xreg("recommend", "kitchen-dual", "--history", history, "--top", "5", "--json")
    assert whole.exit_code == 0, whole.stderr
    ranked = whole.json()
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    assert {r["item_id"] for r in ranked}.isdisjoint(item.id for item in data.items[:3])
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    reranked = xreg("recommend", "kitchen-dual", "--history", history, "--top", "3",
                    "--rerank", "kitchen-x", "--rerank-depth", "10", "--json").json()
    assert {r["item_id"] for r in reranked} <= {r["item_id"] for r in xreg(
        "recommend", "kitchen-dual", "--history", history, "--top", "10", "--json").json()}
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("\n".join(item.id for item in data.items[10:14]) + "\nA brand new thing\n")
    given = xreg("recommend", "kitchen-x", "--history", history, "--candidates", str(candidates),
                 "--json").json()
    assert len(given) == 5 and "A brand new thing" in {r["title"] for r in given}
    cross_whole = xreg("recommend", "kitchen-x", "--history", history)
    assert cross_whole.exit_code == 1 and "needs a dual model" in cross_whole.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_only_integrators_mix_and_head_get_gradients(xreg, sources, mode):
    from xcross_registry.composer import build_scorer

    registry = Registry()
    versions = [registry.adapter(label) for label in ("toys", "tools")]
    scorer = build_scorer(registry, versions, mode=mode)
    data = registry.domain_data("kitchen")
    template = registry.domain_type("kitchen").default_template
    histories = [[data.items[i] for i in s.history] for s in data.train[:4]]
    candidates = [[data.items[j] for j in range(k, k + 3)] for k in range(4)]
    scorer.train()
    scorer.score(histories, candidates, template).logsumexp(-1).sum().backward()
    with_grad = {name for name, p in scorer.named_parameters() if p.grad is not None}
    assert with_grad, "nothing received a gradient"
    assert all(name.startswith(("encoder.xcross.integrators.", "encoder.xcross.mix", "head."))
               for name in with_grad), sorted(with_grad)
    assert any(".integrators." in name for name in with_grad)
    assert "encoder.xcross.mix" in with_grad
    assert not any(p.grad is not None for p in scorer.encoder.xcross.base.parameters())
    distinct_base = {p.untyped_storage().data_ptr() for p in scorer.encoder.xcross.base.parameters()}
    assert len(distinct_base) == len(list(scorer.encoder.xcross.base.parameters()))
