"""Trained baselines as subjects: ``xreg train-baseline sasrec DOMAIN`` stores a versioned
row with its artifact, and ``sasrec:DOMAIN[@vN]`` evaluates, sits on every leaderboard
(by fraction too), compares, and goes away with its domain; bad input changes nothing."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
from alembic import command
from sqlalchemy import inspect, text

from conftest import run_subprocess
from test_gc import age_everything, stored
from test_postgres import backend  # noqa: F401  (the registry on SQLite and on PostgreSQL)
from xcross_registry import baselines, database, evaluation, schema
from xcross_registry.cli import SASREC_OPTIONS
from xcross_registry.records import TrainingRecord
from xcross_registry.registry import Registry
from xcross_registry.sasrec import SASRecConfig, load_sasrec
from xcross_registry.schema import BaselineModel, EvaluationResult
from xcross_registry.stored_folders import manifest_files, write_folder
from xcross_registry.training import TrainingConfig, select_users

TINY = dict(hidden_size=16, blocks=1, heads=2, dropout=0.1, lr=1e-2, epochs=3, batch_size=32,
            patience=0, valid_users=12)
QUICK = ["--hidden-size", "16", "--blocks", "1", "--heads", "2", "--dropout", "0.1", "--lr", "0.01",
         "--epochs", "3", "--batch-size", "32", "--patience", "0", "--valid-users", "12"]


def train(xreg, *args: str) -> dict:
    result = xreg("train-baseline", "sasrec", "tools", *QUICK, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_the_cli_options_are_the_sasrec_config_fields_with_its_defaults():
    assert {field: option.default for field, (_, option) in SASREC_OPTIONS.items()} == SASRecConfig().to_dict()


def test_train_baseline_registers_a_versioned_row_and_its_artifact(xreg, synthetic_domains, tmp_path):
    first = train(xreg, "--fraction", "0.5", "--seed", "3")
    registry = Registry()
    config = SASRecConfig(**TINY, fraction=0.5, seed=3)
    users = select_users(registry.domain_data("tools").train, TrainingConfig(fraction=0.5, seed=3))
    assert (first["name"], first["kind"], first["domain"], first["version"]) == ("sasrec:tools@v1", "sasrec", "tools", 1)
    assert first["data_fingerprint"] == registry.domain("tools").data_fingerprint
    assert first["training_config"]["training"] == config.to_dict()
    run = first["training_config"]["run"]
    assert (run["train_users"], run["epochs_completed"], run["stop_reason"]) == (len(users), 3, "completed")
    assert run["optimizer_steps"] == 3 * -(-len(users) // 32)
    assert first["metrics"]["train_users"] == len(users)
    assert first["metrics"]["validation"] == run["epochs"][first["metrics"]["best_epoch"] - 1]["valid"]

    # The stored folder is the model: it loads with the config it was trained with and
    # knows exactly the items of the selected users.
    files = manifest_files(registry, first["artifact_digest"], baselines.SASRec.manifest)
    assert sorted(files) == ["sasrec.json", "sasrec.safetensors"]
    model, loaded_config = load_sasrec(write_folder(registry, first["artifact_digest"], tmp_path / "model",
                                                    baselines.SASRec.manifest))
    assert loaded_config == config
    assert np.flatnonzero(model.seen.numpy()).tolist() == sorted({i for seq in users for i in seq.items})
    assert first["trainable_parameters"] == sum(p.numel() for p in model.parameters())

    # The typed record of the row, as the leaderboard and subjects read it.
    row = registry.baseline_model("sasrec", "tools")
    record = TrainingRecord.of(row)
    assert (record.method, record.mode, record.template, record.fraction, record.seed) == ("sasrec", None, None, 0.5, 3)
    assert record.run_brief() == {key: run[key] for key in ("stop_reason", "examples_seen", "optimizer_steps",
                                                           "epochs_completed")}

    # Python: one library call; versions count up per domain and baseline.
    second = baselines.train_baseline(registry, "sasrec", "tools", SASRecConfig(**TINY))
    assert second.label == "sasrec:tools@v2" and second.training_config["training"]["fraction"] == 1.0
    assert registry.baseline_model("sasrec", "tools").label == "sasrec:tools@v2"  # the latest
    assert registry.baseline_model("sasrec", "tools@v1").id == row.id
    shown = xreg("show", "sasrec:tools@v1", "--json")
    assert shown.exit_code == 0 and shown.json() == first
    assert "sasrec:tools@v1: sasrec baseline of tools" in xreg("show", "sasrec:tools@v1").stdout


def test_evaluate_leaderboard_and_compare_treat_it_as_a_subject(xreg, synthetic_domains):
    train(xreg, "--fraction", "0.5")
    evaluated = xreg("evaluate", "sasrec:tools", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    result = evaluated.json()
    assert (result["subject"], result["subject_kind"], result["method"]) == ("sasrec:tools@v1", "baseline", "sasrec")
    assert (result["fraction"], result["training_seed"], result["run"]["stop_reason"]) == (0.5, 0, "completed")
    # Reloaded from the store in this process: the same model gives the same ranks.
    registry = Registry()
    again = evaluation.evaluate(registry, "sasrec:tools@v1")
    assert again.ranks_digest == result["ranks_digest"]
    assert again.candidates_digest == result["candidates_digest"]
    assert xreg("evaluate", "tools", "--baseline", "popularity").exit_code == 0
    latest = xreg("evaluate", "tools", "--baseline", "sasrec", "--json")
    assert latest.exit_code == 0 and latest.json()["subject"] == "sasrec:tools@v1", latest.stderr

    (board,) = xreg("leaderboard", "tools", "--json").json()
    rows = {row["subject"]: row for row in board["rows"]}
    assert set(rows) == {"sasrec:tools@v1", "popularity:tools"}
    sasrec = rows["sasrec:tools@v1"]
    assert (sasrec["kind"], sasrec["method"], sasrec["fraction"], sasrec["mode"]) == ("baseline", "sasrec", 0.5, None)
    assert sasrec["trainable_parameters"] > 0 and rows["popularity:tools"]["fraction"] is None
    (by_fraction,) = xreg("leaderboard", "tools", "--by-fraction", "--json").json()
    assert [(p["method"], p["fraction"], p["subjects"], p["seeds"]) for p in by_fraction["rows"]] == \
        [("sasrec", 0.5, ["sasrec:tools@v1"], [0])]

    compared = xreg("compare", "tools", "sasrec:tools@v1", "popularity:tools", "--json")
    assert compared.exit_code == 0, compared.stderr
    difference = compared.json()["differences"]["hit@1"]["difference"]
    assert difference == pytest.approx(sasrec["metrics"]["hit@1"]["mean"]
                                       - rows["popularity:tools"]["metrics"]["hit@1"]["mean"])
    # An ID model ranks a whole catalogue too.
    full = xreg("evaluate", "sasrec:tools@v1", "--protocol", "full", "--max-users", "10", "--json")
    assert full.exit_code == 0 and full.json()["protocol"] == "full", full.stderr
    prompts = xreg("evaluate", "sasrec:tools", "--template", "tools")
    assert prompts.exit_code == 1
    assert prompts.stderr == "error: --template does not apply to the sasrec baseline (no prompts)\n"


def test_remove_force_and_gc_handle_baseline_rows(xreg, synthetic_domains):
    row = train(xreg)
    assert xreg("evaluate", "sasrec:tools", "--max-users", "10").exit_code == 0
    registry = Registry()
    files = set(manifest_files(registry, row["artifact_digest"], baselines.SASRec.manifest).values())
    age_everything(registry.store)
    assert xreg("gc").exit_code == 0  # referenced by the row: kept
    assert {row["artifact_digest"], *files} <= stored(registry.store)
    assert registry.dependents("tools")["baselines"] == ["sasrec:tools@v1"]

    refused = xreg("remove", "tools")
    assert refused.exit_code == 1
    assert refused.stderr == ("error: domain 'tools' is used by sasrec:tools@v1; remove those first "
                              "or use --force\n")
    assert registry.count(BaselineModel) == 1
    removed = xreg("remove", "tools", "--force")
    assert removed.exit_code == 0 and removed.stdout == "removed domain tools and sasrec:tools@v1\n"
    assert registry.count(BaselineModel) == 0 and registry.count(EvaluationResult) == 0
    age_everything(registry.store)
    assert xreg("gc").exit_code == 0
    assert not ({row["artifact_digest"], *files} & stored(registry.store))


def _unchanged(registry: Registry, before: set[str]) -> None:
    assert registry.count(BaselineModel) == 0
    assert stored(registry.store) == before
    assert not registry.store.staging.exists() or not any(registry.store.staging.iterdir())


@pytest.mark.parametrize("args, message", [
    (["sasrek", "tools"], "'sasrek' is not a trainable baseline; trainable baselines: sasrec, item-knn, markov"),
    (["popularity", "tools"], "'popularity' is not a trainable baseline; trainable baselines: sasrec, item-knn, markov"),
    (["sasrec", "nosuch"], "unknown domain 'nosuch'"),
    (["sasrec", "tools", "--hidden-size", "30", "--heads", "4"], "SASRec hidden_size 30 is not divisible by heads 4"),
    (["sasrec", "tools", "--fraction", "0"], "fraction must be in (0, 1], not 0.0"),
    (["sasrec", "tools", "--dropout", "1.5"], "SASRec dropout must be in [0, 1), not 1.5"),
    (["sasrec", "tools", "--epochs", "0"], "SASRec epochs must be a positive integer, not 0"),
])
def test_bad_input_is_one_line_and_changes_nothing(xreg, synthetic_domains, args, message):
    registry = Registry()
    before = stored(registry.store)
    result = xreg("train-baseline", *args)
    assert (result.exit_code, result.stderr) == (1, f"error: {message}\n")
    _unchanged(registry, before)


def test_an_interrupted_training_registers_nothing(xreg, synthetic_domains, monkeypatch):
    from xcross_registry import sasrec

    validate = sasrec._validate

    def validate_then_get_killed(*args, **kwargs):
        metrics = validate(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, in the middle of the run
        return metrics

    monkeypatch.setattr(sasrec, "_validate", validate_then_get_killed)
    registry = Registry()
    before = stored(registry.store)
    result = xreg("train-baseline", "sasrec", "tools", *QUICK)
    assert result.exit_code == 1
    assert result.stderr == f"error: training stopped by signal {int(signal.SIGTERM)}; nothing was registered\n"
    _unchanged(registry, before)


def test_train_evaluate_and_remove_on_each_backend(xreg, backend):
    assert xreg("add-domain", "tools", "--plugin", "synthetic", "--data",
                "tools?users=120&items=60&max_len=8").exit_code == 0
    assert [train(xreg)["name"], train(xreg, "--seed", "1")["name"]] == ["sasrec:tools@v1", "sasrec:tools@v2"]
    evaluated = xreg("evaluate", "sasrec:tools@v2", "--max-users", "10", "--json")
    assert evaluated.exit_code == 0 and evaluated.json()["training_seed"] == 1, evaluated.stderr
    assert [row["subject"] for row in xreg("leaderboard", "tools", "--json").json()[0]["rows"]] == \
        ["sasrec:tools@v2"]
    removed = xreg("remove", "tools", "--force")
    assert removed.stdout == "removed domain tools and sasrec:tools@v1, sasrec:tools@v2\n", removed.stderr
    assert Registry().count(BaselineModel) == Registry().count(EvaluationResult) == 0


# Commands run in a fresh process: none of these may import torch.
PROBE = """
import json, sys
from xcross_registry.cli import main
outcomes = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["xreg", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    outcomes.append(code)
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(json.dumps({"outcomes": outcomes, "heavy": heavy}))
"""


def test_names_checks_and_listings_never_import_torch(xreg, synthetic_domains, xreg_home):
    train(xreg)
    assert xreg("evaluate", "sasrec:tools", "--max-users", "10").exit_code == 0
    cases = [(["show", "sasrec:tools@v1"], 0), (["show", "sasrec:tools", "--json"], 0),
             (["leaderboard", "tools", "--by-fraction"], 0), (["show", "tools"], 0),
             (["evaluate", "sasrec:tools@v9"], 1), (["evaluate", "sasrec:toys"], 1),
             (["evaluate", "sasrec:nosuch"], 1), (["evaluate", "sasrec:tools", "--protocol", "bogus"], 1),
             (["train-baseline", "sasrek", "tools"], 1), (["train-baseline", "sasrec", "nosuch"], 1)]
    result = run_subprocess([sys.executable, "-c", PROBE, json.dumps([args for args, _ in cases])],
                            env={"XREG_HOME": str(xreg_home)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"outcomes": [code for _, code in cases], "heavy": []}, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "error: unknown baseline sasrec:tools@v9: sasrec:tools has versions v1" in lines
    assert ("error: domain 'toys' has no sasrec baseline yet; train one with "
            "'xreg train-baseline sasrec toys'") in lines
    assert "error: unknown domain 'nosuch'" in lines


def test_a_registry_at_0003_upgrades_to_the_baseline_table_and_back(xreg_home):
    engine = database.make_engine(f"sqlite:///{xreg_home / 'registry.db'}")
    config = database.alembic_config(engine)
    command.upgrade(config, "0003")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO domains (name, plugin, data_location, data_fingerprint, summary, description, "
            "created, data_history) VALUES ('d', 'synthetic', 'x', 'f', '{}', '', '2026-01-01 00:00:00', '[]')"))
    command.upgrade(config, "head")
    assert database.current_revision(engine) == schema.SCHEMA_HEAD
    assert "baseline_models" in inspect(engine).get_table_names()
    registry = Registry()
    assert [d.name for d in registry.domains()] == ["d"] and registry.baseline_models() == []
    registry.sessions.kw["bind"].dispose()
    command.downgrade(config, "0003")
    assert "baseline_models" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM domains")).scalars().all() == ["d"]
