"""The SASRec baseline: config, learning, user selection, unseen items, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xcross_registry.candidates import sample_candidates
from xcross_registry.data import DomainData, Item, UserSequence
from xcross_registry.errors import ModelError, ValidationError
from xcross_registry.metrics import per_user_metrics, sampled_ranks
from xcross_registry.sasrec import (UNSEEN_ITEM_SCORE, WEIGHTS_FILE, CONFIG_FILE, SASRecConfig, load_sasrec,
                                    sasrec_score_function, save_sasrec, train_sasrec)
from xcross_registry.training import TrainingConfig, sample_negatives, select_users

TINY = dict(hidden_size=16, blocks=1, heads=2, dropout=0.1, lr=1e-2, epochs=12, batch_size=32,
            patience=0, valid_users=40)


def cyclic_data(items: int = 40, users: int = 240, length: int = 6, seed: int = 0) -> DomainData:
    """Every user walks the catalogue in steps of one from a random start: the next item
    is always the last item plus one, a pattern only a sequential model can learn."""
    rng = np.random.default_rng(seed)
    sequences = [UserSequence(f"u{u}", tuple(int(s + k) % items for k in range(length)))
                 for u, s in enumerate(rng.integers(0, items, users))]
    cut_valid, cut_test = int(users * 0.7), int(users * 0.85)
    return DomainData(items=[Item(f"i{i}", f"item {i}") for i in range(items)],
                      train=sequences[:cut_valid], valid=sequences[cut_valid:cut_test], test=sequences[cut_test:])


def hit_at_1(data: DomainData, model, split: str = "test") -> float:
    candidates = sample_candidates(data, split, "sampled", seed=0, negatives=29)
    scores = sasrec_score_function(model)(data, split, candidates.users.tolist(), candidates.candidates)
    return float(per_user_metrics(sampled_ranks(scores), (1,))["hit@1"].mean())


@pytest.fixture(scope="module")
def trained():
    data = cyclic_data()
    config = SASRecConfig(**TINY)
    model, record = train_sasrec(data, config)
    return data, config, model, record


def test_config_round_trips_and_refuses_unknown_or_bad_fields():
    config = SASRecConfig(hidden_size=32, heads=4, fraction=0.25, max_users=100, seed=3)
    assert SASRecConfig.from_json(config.to_json()) == config
    assert SASRecConfig.from_dict(json.loads(config.to_json())).to_dict() == config.to_dict()
    with pytest.raises(ValidationError, match=r"^unknown SASRec config field\(s\): bogus, colour$"):
        SASRecConfig.from_dict({**config.to_dict(), "bogus": 1, "colour": "red"})
    with pytest.raises(ValidationError, match=r"^SASRec hidden_size 30 is not divisible by heads 4$"):
        SASRecConfig(hidden_size=30, heads=4)
    with pytest.raises(ValidationError, match=r"^SASRec blocks must be a positive integer, not 0$"):
        SASRecConfig(blocks=0)
    with pytest.raises(ValidationError, match=r"^fraction must be in \(0, 1\], not 0.0$"):
        SASRecConfig(fraction=0.0)
    with pytest.raises(ValidationError, match=r"^SASRec config is not valid JSON"):
        SASRecConfig.from_json("{not json")


def test_training_lowers_the_loss_and_learns_the_pattern(trained):
    data, config, model, record = trained
    losses = [epoch["loss"] for epoch in record["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    assert record["train_users"] == len(data.train) and record["epochs_completed"] == config.epochs
    assert record["validation_users"] == len(data.valid)
    assert record["best_metrics"] == record["epochs"][record["best_epoch"] - 1]["valid"]
    assert json.loads(json.dumps(record))["config"] == config.to_dict()  # stored as JSON with the model
    # random ranking gives Hit@1 = 1/30; the next item is always last + 1
    assert hit_at_1(data, model) > 0.8


def test_training_is_deterministic_for_a_seed():
    data = cyclic_data(users=80)
    config = SASRecConfig(**{**TINY, "epochs": 2})
    first, _ = train_sasrec(data, config)
    state_before = torch.random.get_rng_state()
    second, _ = train_sasrec(data, config)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # global generator untouched
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


def test_early_stopping_keeps_the_best_epoch():
    data = cyclic_data(users=120)
    model, record = train_sasrec(data, SASRecConfig(**{**TINY, "epochs": 60, "patience": 2, "lr": 5e-2}))
    scores = [epoch["valid"]["ndcg@10"] for epoch in record["epochs"]]
    # the pattern is learned perfectly within a few epochs, after which nothing improves
    assert record["stop_reason"] == "early-stop" and max(scores) == 1.0
    assert record["best_epoch"] == 1 + int(np.argmax(scores))  # the first of the best
    assert len(scores) == record["best_epoch"] + 2


def test_the_best_validated_epoch_is_the_one_returned():
    data = cyclic_data(users=120)
    # validation targets opposite the next item on the cycle: nothing the training teaches,
    # so the validated score wanders and its best epoch is not the last
    data.valid = [UserSequence(seq.user, (*seq.history, (seq.history[-1] + 20) % 40)) for seq in data.valid]
    model, record = train_sasrec(data, SASRecConfig(**{**TINY, "epochs": 8}))
    assert record["best_epoch"] < 8
    draw = np.random.default_rng([0, 1])  # the validation candidates, as the LoRA scorers draw them
    matrix = np.array([[seq.target, *sample_negatives(draw, 40, set(seq.items), 29)] for seq in data.valid])
    scores = sasrec_score_function(model)(data, "valid", list(range(len(data.valid))), matrix)
    ndcg = per_user_metrics(sampled_ranks(scores), (10,))["ndcg@10"].mean()
    assert ndcg == pytest.approx(record["best_metrics"]["ndcg@10"], abs=1e-12)
    assert ndcg != record["epochs"][-1]["valid"]["ndcg@10"]


def test_trains_on_exactly_the_select_users_users():
    # each training user owns items nobody else has, so the seen items name the users
    users, length = 60, 4
    train = [UserSequence(f"u{u}", tuple(range(u * length, (u + 1) * length))) for u in range(users)]
    shared = users * length
    valid = [UserSequence(f"v{u}", (shared + u % 5, u % 7)) for u in range(10)]
    test = [UserSequence(f"t{u}", (u % 9, shared + u % 5)) for u in range(10)]
    data = DomainData(items=[Item(f"i{i}", f"item {i}") for i in range(shared + 5)],
                      train=train, valid=valid, test=test)
    config = SASRecConfig(**{**TINY, "epochs": 1, "fraction": 0.25, "seed": 3})
    model, record = train_sasrec(data, config)
    chosen = select_users(data.train, TrainingConfig(fraction=0.25, seed=3))
    expected = sorted(i for seq in chosen for i in seq.items)
    assert record["train_users"] == len(chosen) == 15
    assert np.flatnonzero(model.seen.numpy()).tolist() == expected
    other = select_users(data.train, TrainingConfig(fraction=0.25, seed=4))
    assert sorted(i for seq in other for i in seq.items) != expected


def test_unseen_items_score_the_stated_constant_and_are_dropped_from_histories(trained):
    data, _, model, _ = trained
    extra = len(data.items)  # a catalogue with one more item, bought by a single test user
    grown = DomainData(items=data.items + [Item("new", "brand-new item")], train=data.train,
                       valid=data.valid, test=[*data.test, UserSequence("cold", (3, 4, extra, 5))])
    retrained, _ = train_sasrec(grown, SASRecConfig(**{**TINY, "epochs": 1}))
    assert not retrained.seen[extra] and bool(retrained.seen[:extra].all())
    score = sasrec_score_function(retrained)
    cold = len(grown.test) - 1
    scores = score(grown, "test", [cold, cold], np.array([[5, extra, 6], [extra, 7, 8]]))
    assert scores[0, 1] == scores[1, 0] == UNSEEN_ITEM_SCORE
    assert (scores[0, [0, 2]] > UNSEEN_ITEM_SCORE).all() and (scores[1, 1:] > UNSEEN_ITEM_SCORE).all()
    # the unseen item in the history (3, 4, new) is ignored: same scores as for (3, 4)
    plain = DomainData(items=grown.items, train=grown.train, valid=grown.valid,
                       test=[UserSequence("warm", (3, 4, 5))])
    np.testing.assert_array_equal(score(plain, "test", [0], np.array([[5, 6, 7]])),
                                  score(grown, "test", [cold], np.array([[5, 6, 7]])))
    # an unseen positive ranks last: the tie with another unseen candidate counts against it
    assert sampled_ranks(score(grown, "test", [cold], np.array([[extra, extra, 6]])))[0] == 3


def test_save_and_load_give_identical_scores(trained, tmp_path):
    data, config, model, _ = trained
    candidates = sample_candidates(data, "test", "sampled", seed=1)
    before = sasrec_score_function(model)(data, "test", candidates.users.tolist(), candidates.candidates)
    save_sasrec(model, config, tmp_path / "model")
    loaded, loaded_config = load_sasrec(tmp_path / "model")
    assert loaded_config == config
    calls = []
    after = sasrec_score_function(loaded)(data, "test", candidates.users.tolist(), candidates.candidates,
                                          progress=lambda done, total: calls.append((done, total)))
    assert calls == [(len(data.test), len(data.test))]
    np.testing.assert_array_equal(before, after)
    catalogue = np.broadcast_to(np.arange(len(data.items)), (len(data.test), len(data.items)))
    full = sasrec_score_function(loaded)(data, "test", list(range(len(data.test))), catalogue)
    np.testing.assert_allclose(full[np.arange(len(candidates.users))[:, None], candidates.candidates],
                               before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValidationError, match="^the config to save is not the one"):
        save_sasrec(model, SASRecConfig(**{**TINY, "seed": 9}), tmp_path / "other")


def test_broken_files_raise_one_line_model_errors(trained, tmp_path):
    data, config, model, _ = trained
    folder = save_sasrec(model, config, tmp_path / "model")
    weights = folder / WEIGHTS_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[:len(good) // 2])
    with pytest.raises(ModelError, match=rf"^{weights}: not a safetensors file") as error:
        load_sasrec(folder)
    assert "\n" not in str(error.value)
    weights.write_bytes(good)
    header = json.loads((folder / CONFIG_FILE).read_text())
    header["config"]["hidden_size"] = 32
    (folder / CONFIG_FILE).write_text(json.dumps(header))
    with pytest.raises(ModelError, match=rf"^{weights}: does not fit .*sasrec.json \(.*size mismatch") as error:
        load_sasrec(folder)
    assert "\n" not in str(error.value)
    (folder / CONFIG_FILE).write_text(json.dumps({**header, "config": {**header["config"], "layers": 2}}))
    with pytest.raises(ModelError,
                       match=r"sasrec.json: not a SASRec config \(unknown SASRec config field\(s\): layers\)$"):
        load_sasrec(folder)
    (folder / CONFIG_FILE).write_text("{")
    with pytest.raises(ModelError, match=r"sasrec.json: not a SASRec config \(Expecting"):
        load_sasrec(folder)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(ModelError, match=r"sasrec.json: missing; a saved SASRec is a folder with sasrec.json and "
                                         r"sasrec.safetensors$"):
        load_sasrec(folder)
    other = cyclic_data(items=41)
    with pytest.raises(ModelError, match=r"^this SASRec model was trained on another catalogue \(40 items\)"):
        sasrec_score_function(model)(other, "test", [0], np.array([[0, 1]]))


def test_refuses_training_data_that_leaves_no_negative_to_draw():
    items = [Item(f"i{i}", f"item {i}") for i in range(3)]
    data = DomainData(items=items, train=[UserSequence("a", (0, 1, 2)), UserSequence("b", (0, 1))],
                      valid=[], test=[UserSequence("t", (1, 2))])
    with pytest.raises(ValidationError, match=r"^SASRec needs training users whose items leave negatives to draw: "
                                              r"2 user\(s\), 3 distinct item\(s\)$"):
        train_sasrec(data, SASRecConfig(**TINY))
