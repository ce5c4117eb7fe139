"""The item-kNN and Markov baselines against a hand-computed toy, trained only on the
users their fraction allows, and as trained baselines through the CLI (stored rows,
evaluation on every protocol, options of other baselines refused)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xcross_registry.data import DomainData, Item, UserSequence
from xcross_registry.neighbourhood import (POPULARITY_TIEBREAK, ItemKNNConfig, MarkovConfig, load_neighbourhood,
                                           save_neighbourhood, score_function, train_neighbourhood)
from xcross_registry.registry import Registry
from xcross_registry.training import TrainingConfig, select_users

R6 = math.sqrt(6)
# Sequences holding each item: 0 in s1 s4, 1 in s1 s2, 2 in s1 s2 s3, 3 in s3 s4; item 4 never.
TRAIN = [UserSequence("s1", (0, 1, 2)), UserSequence("s2", (1, 2)), UserSequence("s3", (2, 3, 2)),
         UserSequence("s4", (0, 3))]
# Occurrences with repeats: 2, 2, 4, 2, 0 of 10.
SHARE = np.array([0.2, 0.2, 0.4, 0.2, 0.0])


def _toy(test_history: tuple[int, ...]) -> DomainData:
    items = [Item(f"i{k}", f"thing {k}") for k in range(5)]
    return DomainData(items=items, train=list(TRAIN), valid=[],
                      test=[UserSequence("t", (*test_history, 4))])


def _scores(config, history: tuple[int, ...]) -> np.ndarray:
    data = _toy(history)
    model, _ = train_neighbourhood(data, config)
    return score_function(model)(data, "test", [0], np.arange(5)[None, :])[0]


def test_item_knn_by_hand():
    # cosines: sim(0,1) = 1/2, sim(0,2) = 1/sqrt6, sim(1,2) = 2/sqrt6, sim(2,3) = 1/sqrt6,
    # sim(0,3) = 1/2; history (0, 2): item 2 weighs 1, item 0 weighs decay = 0.5
    scores = _scores(ItemKNNConfig(decay=0.5, valid_users=0), (0, 2))
    expected = np.array([1 / R6, 2 / R6 + 0.25, 0.5 / R6, 1 / R6 + 0.25, 0.0])
    assert scores == pytest.approx(expected + POPULARITY_TIEBREAK * SHARE, abs=1e-15)
    # one neighbour each: item 2 keeps 1 (2/sqrt6); item 0 keeps 1 of its tied 1 and 3
    scores = _scores(ItemKNNConfig(decay=0.5, neighbours=1, valid_users=0), (0, 2))
    assert scores - POPULARITY_TIEBREAK * SHARE == pytest.approx([0, 2 / R6 + 0.25, 0, 0, 0], abs=1e-15)
    # items no neighbour reaches are ordered by popularity alone: 2 before 0 before 4
    assert scores[2] > scores[0] > scores[4] == 0.0
    # history 1: only the most recent item is read
    scores = _scores(ItemKNNConfig(decay=0.5, history=1, valid_users=0), (0, 2))
    assert scores - POPULARITY_TIEBREAK * SHARE == pytest.approx([1 / R6, 2 / R6, 0, 1 / R6, 0], abs=1e-15)


def test_markov_by_hand():
    # transitions: 0→1, 0→3, 1→2 (twice), 2→3, 3→2
    scores = _scores(MarkovConfig(smoothing=1.0, valid_users=0), (2, 0))
    assert scores == pytest.approx((np.array([0, 1, 0, 1, 0]) + SHARE) / 3)
    scores = _scores(MarkovConfig(smoothing=4.0, valid_users=0), (1,))
    assert scores == pytest.approx((np.array([0, 0, 2, 0, 0]) + 4 * SHARE) / 6)
    # an item never seen leaving (4): popularity alone
    assert _scores(MarkovConfig(valid_users=0), (0, 4)) == pytest.approx(SHARE)


def test_trained_only_on_the_allowed_fraction(tmp_path):
    users = [UserSequence(f"u{k}", (k % 7, (k + 1) % 7, (k + 3) % 7)) for k in range(12)]
    data = DomainData(items=[Item(f"i{k}", f"t{k}") for k in range(8)], train=users, valid=[],
                      test=[UserSequence("t", (0, 1))])
    config = MarkovConfig(fraction=0.25, seed=5, valid_users=0)
    model, record = train_neighbourhood(data, config)
    chosen = select_users(data.train, TrainingConfig(fraction=0.25, seed=5))
    assert record["train_users"] == len(chosen) == 3
    counts = np.bincount([i for seq in chosen for i in seq.items], minlength=8)
    assert model.popularity.tolist() == counts.tolist()
    assert model.indptr[-1] == len({(a, b) for seq in chosen for a, b in zip(seq.items, seq.items[1:])})
    # saved and loaded, it scores the same
    loaded = load_neighbourhood(save_neighbourhood(model, tmp_path / "m"))
    matrix = np.arange(8)[None, :]
    assert np.array_equal(score_function(loaded)(data, "test", [0], matrix),
                          score_function(model)(data, "test", [0], matrix))


def test_train_evaluate_and_refuse_other_options(xreg, synthetic_domains):
    for name in ("item-knn", "markov"):
        trained = xreg("train-baseline", name, "tools", "--fraction", "0.5", "--json")
        assert trained.exit_code == 0, trained.stderr
        row = trained.json()
        assert row["name"] == f"{name}:tools@v1" and row["training_config"]["training"]["fraction"] == 0.5
        assert 0 <= row["metrics"]["validation"]["ndcg@10"] <= 1
        for protocol in ("sampled", "full"):
            result = xreg("evaluate", f"{name}:tools", "--protocol", protocol, "--json")
            assert result.exit_code == 0, result.stderr
            assert result.json()["fraction"] == 0.5
    board = xreg("leaderboard", "tools", "--protocol", "full", "--json").json()[0]
    assert {r["subject"] for r in board["rows"]} == {"item-knn:tools@v1", "markov:tools@v1"}
    before = len(Registry().baseline_models())
    refused = xreg("train-baseline", "markov", "tools", "--hidden-size", "32", "--decay", "0.5")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == ("error: --decay, --hidden-size does not apply to markov (its options: "
                                      "--fraction, --max-users, --seed, --smoothing, --valid-negatives, "
                                      "--valid-users)")
    bad = xreg("train-baseline", "item-knn", "tools", "--decay", "1.5")
    assert bad.exit_code == 1 and bad.stderr.strip() == "error: item-knn decay must be in (0, 1], not 1.5"
    assert len(Registry().baseline_models()) == before


def test_cli_options_are_the_config_fields_with_their_defaults():
    from xcross_registry.cli import NEIGHBOURHOOD_OPTIONS, SASREC_OPTIONS

    defaults = {field: option.default for field, (_, option) in {**SASREC_OPTIONS, **NEIGHBOURHOOD_OPTIONS}.items()}
    for config in (ItemKNNConfig(), MarkovConfig()):
        assert {k: defaults[k] for k in config.to_dict()} == config.to_dict()
