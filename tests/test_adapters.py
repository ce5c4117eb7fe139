"""Domain adapters through the registry: train, export, import, evaluate, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from xcross_registry.adapters import load_scorer
from xcross_registry.registry import Registry
from xcross_registry.schema import AdapterVersion, Domain

QUICK = ["--epochs", "1", "--max-users", "24", "--batch-size", "8", "--negatives", "3"]


def _train(xreg, base, *extra):
    result = xreg("train-adapter", "toys", *QUICK, "--base-model", str(base), "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_train_registers_a_version_with_its_lineage(xreg, synthetic_domains, tiny_base_model):
    first = _train(xreg, tiny_base_model)
    second = _train(xreg, tiny_base_model, "--mode", "dual", "--in-batch")
    assert (first["version"], second["version"]) == (1, 2)
    assert first["base_model"] == str(tiny_base_model)
    assert first["lora_config"]["peft_type"] == "LORA" and first["lora_config"]["r"] == 8
    assert first["data_fingerprint"] == xreg("show", "toys", "--json").json()["data_fingerprint"]
    assert first["training_config"]["training"]["max_users"] == 24
    assert first["training_config"]["scorer"]["mode"] == "cross"
    assert second["training_config"]["training"]["in_batch_negatives"] is True
    assert first["training_config"]["training"]["in_batch_negatives"] is False
    assert first["metrics"]["validation"]["hit@1"] >= 0
    assert first["trainable_parameters"] > first["training_config"]["lora_parameters"] > 0
    listed = xreg("adapters", "--json").json()
    assert [(a["domain"], a["version"]) for a in listed] == [("toys", 1), ("toys", 2)]
    assert xreg("remove", "toys").exit_code == 1  # adapters depend on it


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_export_loads_with_peft_and_scores_like_the_registry(xreg, synthetic_domains,
                                                             tiny_base_model, tmp_path, mode):
    from peft import PeftModel
    from transformers import AutoModel

    from xcross_registry.scorer import LoraEncoder, Scorer, read_scorer_config

    _train(xreg, tiny_base_model, "--mode", mode)
    out = tmp_path / "exported"
    assert xreg("export", "toys", str(out)).exit_code == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors",
            "README.md"} <= {p.name for p in out.iterdir()}
    assert f"base_model: {tiny_base_model}" in (out / "README.md").read_text()

    registry = Registry()
    ours, _ = load_scorer(registry, "toys")
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_base_model)), str(out))
    config, info = read_scorer_config(out)
    theirs = Scorer(LoraEncoder(peft_model), ours.tokenizer, config, info)
    theirs.load_head(out)
    theirs.eval()
    data = registry.domain_data("toys")
    template = registry.domain_type("toys").default_template
    histories = [[data.items[i] for i in seq.history] for seq in data.test[:4]]
    candidates = [[data.items[j] for j in range(k, k + 5)] for k in range(4)]
    with torch.no_grad():
        difference = (ours.score(histories, candidates, template)
                      - theirs.score(histories, candidates, template)).abs().max().item()
    assert difference < 1e-5


@pytest.mark.slow
def test_evaluate_stores_rows_with_shared_candidates(xreg, synthetic_domains, tiny_base_model):
    _train(xreg, tiny_base_model)
    adapter = xreg("evaluate", "toys", "--json")
    assert adapter.exit_code == 0, adapter.stderr
    popularity = xreg("evaluate", "toys", "--baseline", "popularity", "--json")
    zero_shot = xreg("evaluate", "toys", "--domain", "tools", "--json")
    documents = [r.json() for r in (adapter, popularity, zero_shot)]
    assert documents[0]["candidates_digest"] == documents[1]["candidates_digest"]
    assert documents[0]["users"] == 24  # 20% of 120 users are test users
    assert set(documents[0]["metrics"]) >= {"hit@1", "hit@3", "hit@10", "ndcg@10", "mrr"}
    assert documents[2]["subject"] == "toys@v1:zero-shot" and documents[2]["domain"] == "tools"
    rows = Registry().evaluations("toys")
    assert [r["subject"] for r in rows] == ["toys@v1", "popularity:toys"]
    head_only = xreg("evaluate", "toys", "--baseline", "head-only")
    assert head_only.exit_code == 1 and "train-adapter toys --head-only" in head_only.stderr
    _train(xreg, tiny_base_model, "--head-only")
    assert xreg("evaluate", "toys", "--baseline", "head-only", "--json").json()["subject"] == "toys@v2"
    # "toys" still means the LoRA adapter, not the newer head-only baseline.
    assert xreg("evaluate", "toys", "--json").json()["subject"] == "toys@v1"


def test_import_checks_the_adapter_against_the_base(xreg, synthetic_domains, tiny_base_model,
                                                    tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    _train(xreg, tiny_base_model)
    exported = tmp_path / "good"
    xreg("export", "toys", str(exported))
    data = "kitchen?users=120&items=60&max_len=8"
    imported = xreg("add-domain", "kitchen", "--plugin", "synthetic", "--data", data, "--adapter",
                    str(exported), "--base-model", str(tiny_base_model), "--json")
    assert imported.exit_code == 0, imported.stderr
    assert imported.json()["adapters"][0]["status"] == "ready"

    wide = get_peft_model(BertModel(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64)),
                          LoraConfig(r=4, target_modules=["query", "value"]))
    peft_config = wide.peft_config["default"]
    peft_config.base_model_name_or_path = str(tiny_base_model)
    wide.save_pretrained(str(tmp_path / "wide"))
    registry = Registry()
    before = (registry.count(Domain), registry.count(AdapterVersion))
    wrong_size = xreg("add-domain", "garden", "--plugin", "synthetic", "--data", data, "--adapter",
                      str(tmp_path / "wide"), "--base-model", str(tiny_base_model))
    assert wrong_size.exit_code == 1 and "does not fit the base model" in wrong_size.stderr
    config = json.loads((exported / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "bert-base-uncased"
    (exported / "adapter_config.json").write_text(json.dumps(config))
    wrong_base = xreg("add-domain", "garden", "--plugin", "synthetic", "--data", data, "--adapter",
                      str(exported))
    assert wrong_base.exit_code == 1
    assert "made for base model 'bert-base-uncased'" in wrong_base.stderr
    (exported / "adapter_model.safetensors").write_bytes(b"not safetensors")
    corrupt = xreg("add-domain", "garden", "--plugin", "synthetic", "--data", data, "--adapter",
                   str(exported), "--base-model", str(tiny_base_model))
    assert corrupt.exit_code == 1 and "unreadable safetensors" in corrupt.stderr
    assert (registry.count(Domain), registry.count(AdapterVersion)) == before


def test_corrupt_stored_weights_are_refused(xreg, synthetic_domains, tiny_base_model):
    _train(xreg, tiny_base_model)
    registry = Registry()
    from xcross_registry.stored_folders import manifest_files

    files = manifest_files(registry, registry.adapters("toys")[0].artifact_digest)
    path = registry.store.path(files["adapter_model.safetensors"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    result = xreg("evaluate", "toys")
    assert result.exit_code == 1 and "is corrupt" in result.stderr


KILLED_RUN = """
import sys
from xcross_registry.adapters import train_adapter
from xcross_registry.registry import Registry
from xcross_registry.training import TrainingConfig

def progress(report):
    if report.step == 2:
        print("training", flush=True)

train_adapter(Registry(), "toys", base_model=sys.argv[1], progress=progress,
              training_config=TrainingConfig(epochs=50, max_users=60, batch_size=2, negatives=3))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL])
def test_killed_training_registers_nothing(synthetic_domains, tiny_base_model, xreg_home, xreg,
                                           signal_number):
    registry = Registry()
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tiny_base_model)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "XREG_HOME": str(xreg_home)})
    assert process.stdout.readline().strip() == "training"
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    if signal_number == signal.SIGTERM:
        assert "nothing was registered" in err
    assert registry.count(AdapterVersion) == 0
    # A SIGKILL leaves its staging folder; the next run (here `xreg init`) removes it.
    assert xreg("init").exit_code == 0
    staging = registry.store.staging
    assert not staging.exists() or list(staging.iterdir()) == []
    assert [p for p in registry.store.root.rglob("*") if p.is_file()] == []
