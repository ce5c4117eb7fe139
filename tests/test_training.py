"""Training: the loss falls on a learnable toy pattern, runs are reproducible by seed,
the best epoch is restored, and evaluation scores match the scorer's own."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from xcross_registry.data import DomainData, Item, UserSequence
from xcross_registry.errors import ValidationError
from xcross_registry.scorer import Scorer, ScorerConfig
from xcross_registry.scoring import evaluate_sampled, score_candidates
from xcross_registry.templates import DEFAULT_TEMPLATE
from xcross_registry.training import (
    TrainingConfig,
    sample_negatives,
    select_users,
    train_scorer,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

COLOURS = ("red", "blue", "green", "yellow")
NOUNS = ("ball", "car", "doll", "kite", "drum", "boat", "bear", "top")


def toy_data() -> DomainData:
    """Every user buys items of one colour: the next item shares the history's colour."""
    items = [Item(f"{c}-{n}", f"{c} {n}") for c in COLOURS for n in NOUNS]
    rng = random.Random(7)

    def users(prefix: str, count: int) -> list[UserSequence]:
        out = []
        for u in range(count):
            colour = u % len(COLOURS)
            picks = rng.sample(range(len(NOUNS)), rng.randint(3, 5))
            out.append(UserSequence(f"{prefix}{u}", tuple(colour * len(NOUNS) + p for p in picks)))
        return out

    return DomainData(items=items, train=users("t", 24), valid=users("v", 8), test=users("x", 8))


def make_scorer(base: str, mode: str) -> Scorer:
    torch.manual_seed(0)
    return Scorer.create(base, ScorerConfig(mode=mode, head_hidden_size=16, max_length=48, lora_r=4))


def config(**overrides) -> TrainingConfig:
    values = dict(epochs=1, lr=1e-2, batch_size=8, negatives=5, valid_users=8, valid_negatives=7,
                  device="cpu", seed=3)
    return TrainingConfig(**{**values, **overrides})


def fixed_loss(scorer: Scorer, data: DomainData) -> float:
    """Mean cross-entropy on a fixed batch of test users with fixed negatives."""
    rng = np.random.default_rng(0)
    histories = [[data.items[i] for i in seq.history] for seq in data.test]
    candidates = [[data.items[i] for i in [seq.target, *sample_negatives(rng, len(data.items), set(seq.items), 5)]]
                  for seq in data.test]
    scorer.eval()
    with torch.no_grad():
        scores = scorer.score(histories, candidates, DEFAULT_TEMPLATE)
    return torch.nn.functional.cross_entropy(scores, torch.zeros(len(histories), dtype=torch.long)).item()


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_one_epoch_lowers_the_loss_and_reports(tiny_base, mode):
    data = toy_data()
    scorer = make_scorer(tiny_base, mode)
    frozen = {n: p.detach().clone() for n, p in scorer.named_parameters() if not p.requires_grad}
    before = fixed_loss(scorer, data)
    events = []
    result = train_scorer(scorer, data, DEFAULT_TEMPLATE, config(epochs=2), progress=events.append)
    assert fixed_loss(scorer, data) < before
    # Only LoRA and head moved.
    assert all(torch.equal(p, frozen[n]) for n, p in scorer.named_parameters() if not p.requires_grad)
    assert result.epochs[1].loss < result.epochs[0].loss
    assert result.epochs[0].examples == sum(len(s.items) - 1 for s in data.train)  # every prefix
    assert result.sequences_per_second > 0 and result.train_users == len(data.train)
    assert {"train", "valid"} == {e.phase for e in events}
    assert events[-1].metrics == result.epochs[-1].metrics and not scorer.training


def test_training_is_deterministic_by_seed(tiny_base):
    data = toy_data()
    runs = []
    for seed in (3, 3, 4):
        scorer = make_scorer(tiny_base, "cross")
        train_scorer(scorer, data, DEFAULT_TEMPLATE, config(seed=seed, prefixes_per_user=2))
        runs.append(scorer.trainable_state())
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_best_epoch_is_restored(tiny_base):
    data = toy_data()
    scorer = make_scorer(tiny_base, "dual")
    # A learning rate too high to keep improving: the best epoch is often not the last.
    result = train_scorer(scorer, data, DEFAULT_TEMPLATE, config(epochs=3, lr=0.2))
    best = result.epochs[result.best_epoch - 1].metrics
    assert best == result.best_metrics
    assert best["ndcg@10"] == max(e.metrics["ndcg@10"] for e in result.epochs)
    from xcross_registry.training import validation_set

    valid = validation_set(data, seed=config().seed, users=config().valid_users,
                           negatives=config().valid_negatives)
    assert evaluate_sampled(scorer, data, DEFAULT_TEMPLATE, valid.split, valid.candidates, valid.users) == best


def test_shared_negatives_avoid_every_batch_users_items():
    from xcross_registry.training import _training_batch

    data = toy_data()
    batch = [(seq, len(seq.items) - 1) for seq in data.train[:3]]
    _, candidates = _training_batch(batch, data, 4, True, np.random.default_rng(0))
    touched = {data.items[i].id for seq, _ in batch for i in seq.items}
    assert all(row[1:] == candidates[0][1:] for row in candidates)
    assert not touched & {item.id for item in candidates[0][1:]}
    _, separate = _training_batch(batch, data, 4, False, np.random.default_rng(0))
    assert any(row[1:] != separate[0][1:] for row in separate)


def test_bf16_autocast_trains(tiny_base):
    scorer = make_scorer(tiny_base, "dual")
    result = train_scorer(scorer, toy_data(), DEFAULT_TEMPLATE, config(bf16=True, prefixes_per_user=1))
    assert np.isfinite(result.epochs[0].loss) and result.epochs[0].examples == 24


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_in_batch_negatives_train(tiny_base, mode):
    data = toy_data()
    scorer = make_scorer(tiny_base, mode)
    before = fixed_loss(scorer, data)
    result = train_scorer(scorer, data, DEFAULT_TEMPLATE, config(epochs=2, in_batch_negatives=True))
    assert np.isfinite(result.epochs[-1].loss) and fixed_loss(scorer, data) < before


def test_should_stop_ends_the_run(tiny_base):
    data = toy_data()
    scorer = make_scorer(tiny_base, "cross")
    result = train_scorer(scorer, data, DEFAULT_TEMPLATE, config(epochs=3), should_stop=lambda: True)
    assert result.stopped and len(result.epochs) == 1 and result.epochs[0].examples == 8


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_score_candidates_matches_scorer(tiny_base, mode):
    data = toy_data()
    scorer = make_scorer(tiny_base, mode)
    users = [0, 2, 5]
    matrix = np.array([[1, 9, 17], [2, 3, 30], [31, 0, 9]])
    scores = score_candidates(scorer, data, DEFAULT_TEMPLATE, "test", matrix, users, batch_size=4)
    assert scorer.training  # the caller's mode is restored
    scorer.eval()
    histories = [[data.items[i] for i in data.test[u].history] for u in users]
    with torch.no_grad():
        expected = scorer.score(histories, [[data.items[i] for i in row] for row in matrix], DEFAULT_TEMPLATE)
    assert scores.shape == (3, 3) and np.allclose(scores, expected.numpy(), atol=1e-5)
    with pytest.raises(ValidationError):
        score_candidates(scorer, data, DEFAULT_TEMPLATE, "test", matrix, users[:2])
    with pytest.raises(ValidationError):
        score_candidates(scorer, data, DEFAULT_TEMPLATE, "test", matrix + 100, users)


def test_negatives_avoid_the_users_items():
    rng = np.random.default_rng(0)
    drawn = sample_negatives(rng, 10, {0, 1, 2}, 7)
    assert sorted(drawn) == list(range(3, 10))
    with pytest.raises(ValidationError):
        sample_negatives(rng, 10, {0, 1, 2}, 8)


def test_user_selection():
    data = toy_data()
    assert len(select_users(data.train, config(fraction=0.5))) == 12
    assert len(select_users(data.train, config(fraction=0.5, max_users=5))) == 5
    assert select_users(data.train, config(seed=1)) != select_users(data.train, config(seed=2))


@pytest.mark.parametrize("settings", [{"epochs": 0}, {"fraction": 0.0}, {"fraction": 1.5}, {"lr": 0},
                                      {"device": "tpu"}, {"max_users": 0}, {"prefixes_per_user": -1},
                                      {"head_lr": 0.0}, {"max_steps": 0}, {"max_steps": 2.5}])
def test_bad_training_config_is_validation_error(settings):
    with pytest.raises(ValidationError):
        config(**settings)
    with pytest.raises(ValidationError, match="unknown"):
        TrainingConfig.from_dict({"epoch": 1})


def test_frozen_scorer_refuses_to_train(tiny_base, tmp_path):
    make_scorer(tiny_base, "cross").save_pretrained(tmp_path)
    with pytest.raises(ValidationError, match="trainable"):
        train_scorer(Scorer.from_pretrained(tmp_path), toy_data(), DEFAULT_TEMPLATE, config())
