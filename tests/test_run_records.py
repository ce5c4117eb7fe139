"""Honest run records: what a training run did (examples seen, optimiser steps, epochs
completed, rate, wall time, validation coverage) and why it stopped, stored with
adapters and compositions and shown by ``xreg show`` and the leaderboard.

Time caps are tested by moving a fake clock, never by waiting for a real one."""

from __future__ import annotations

import random

import pytest
import torch

from xcross_registry import training
from xcross_registry.data import DomainData, Item, UserSequence
from xcross_registry.scorer import Scorer, ScorerConfig
from xcross_registry.templates import DEFAULT_TEMPLATE
from xcross_registry.training import Deadline, TrainingConfig, train_scorer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

RUN_KEYS = {"stop_reason", "examples_seen", "planned_examples", "optimizer_steps", "planned_steps",
            "epochs_completed", "examples_per_second", "train_seconds", "wall_seconds", "processes",
            "precision", "best_epoch", "validation_users", "validation_users_planned"}


def colour_data(valid_users: int = 8) -> DomainData:
    """Users buy items of one colour; 24 training users with 2 to 4 examples each."""
    colours, nouns = ("red", "blue", "green", "yellow"), ("ball", "car", "doll", "kite", "drum", "boat")
    items = [Item(f"{c}-{n}", f"{c} {n}") for c in colours for n in nouns]
    rng = random.Random(5)

    def users(prefix: str, count: int) -> list[UserSequence]:
        return [UserSequence(f"{prefix}{u}", tuple((u % 4) * len(nouns) + p
                                                   for p in rng.sample(range(len(nouns)), rng.randint(3, 5))))
                for u in range(count)]

    return DomainData(items=items, train=users("t", 24), valid=users("v", valid_users), test=users("x", 4))


def make_scorer(base: str, mode: str = "cross") -> Scorer:
    torch.manual_seed(0)
    return Scorer.create(base, ScorerConfig(mode=mode, head_hidden_size=8, max_length=40, lora_r=2))


def config(**overrides) -> TrainingConfig:
    values = dict(epochs=2, lr=1e-2, batch_size=8, negatives=3, valid_users=8, valid_negatives=7,
                  device="cpu", seed=1, prefixes_per_user=1)
    return TrainingConfig(**{**values, **overrides})


class FakeClock:
    """A clock that stands still until ``ticking``, then moves one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ticking = False

    def __call__(self) -> float:
        if self.ticking:
            self.now += 1.0
        return self.now


def test_completed_run_reports_what_it_did(tiny_base):
    result = train_scorer(make_scorer(tiny_base), colour_data(), DEFAULT_TEMPLATE, config())
    record = result.run_record()
    assert set(record) == RUN_KEYS
    # 24 users, one prefix each, batches of 8: 3 steps an epoch, 2 epochs.
    assert record["stop_reason"] == "completed" and not result.stopped
    assert (record["examples_seen"], record["planned_examples"]) == (48, 48)
    assert (record["optimizer_steps"], record["planned_steps"], record["epochs_completed"]) == (6, 6, 2)
    assert record["processes"] == 1 and record["precision"] == "float32"
    assert record["validation_users"] == record["validation_users_planned"] == 8
    assert record["examples_per_second"] > 0 and record["wall_seconds"] >= record["train_seconds"] > 0


def test_time_cap_during_training_stops_after_that_step(tiny_base):
    clock = FakeClock()
    deadline = Deadline(at=10.0, clock=clock)

    def progress(report):
        if report.phase == "train" and report.step == 2:
            clock.now = 11.0  # the second step crossed the cap

    result = train_scorer(make_scorer(tiny_base), colour_data(), DEFAULT_TEMPLATE, config(epochs=3),
                          progress=progress, deadline=deadline)
    record = result.run_record()
    assert record["stop_reason"] == "time-cap"
    assert (record["examples_seen"], record["optimizer_steps"], record["epochs_completed"]) == (16, 2, 0)
    assert record["planned_steps"] == 9 and len(result.epochs) == 1
    # Validation starts after the cap: it scores nobody and says so.
    assert record["validation_users"] == 0 and result.epochs[0].metrics is None
    assert record["best_epoch"] == 1  # the only (unvalidated) epoch's weights are kept


def test_time_cap_cuts_validation_and_records_partial_coverage(tiny_base):
    clock = FakeClock()
    data = colour_data(valid_users=40)
    # 40 validation users x 8 candidates, 64 texts a pass: 8 users per pass, 5 passes.
    deadline = Deadline(at=4.5, clock=clock)
    steps = []

    def progress(report):
        steps.append(report.phase)
        if report.phase == "train" and report.step == report.steps:
            clock.ticking = True  # from the end of epoch 1, every clock reading is a second

    result = train_scorer(make_scorer(tiny_base), data, DEFAULT_TEMPLATE,
                          config(epochs=2, valid_users=40), progress=progress, deadline=deadline)
    record = result.run_record()
    assert record["stop_reason"] == "time-cap" and record["epochs_completed"] == 1
    assert record["examples_seen"] == 24 and record["optimizer_steps"] == 3
    validated = result.epochs[0].validated_users
    assert 0 < validated < 40 and validated % 8 == 0
    assert record["validation_users"] == validated and record["validation_users_planned"] == 40
    assert result.epochs[0].metrics is not None and len(result.epochs) == 1


def test_should_stop_is_interrupted(tiny_base):
    result = train_scorer(make_scorer(tiny_base), colour_data(), DEFAULT_TEMPLATE, config(),
                          should_stop=lambda: True)
    assert result.run_record()["stop_reason"] == "interrupted"
    assert (result.examples_seen, result.optimizer_steps, result.epochs_completed) == (8, 1, 0)


def test_early_stop_after_patience_epochs_without_improvement(tiny_base):
    # Learning rates too small to change a float32 weight: validation NDCG cannot improve.
    result = train_scorer(make_scorer(tiny_base, "dual"), colour_data(), DEFAULT_TEMPLATE,
                          config(epochs=5, lr=1e-12, head_lr=1e-12, patience=2))
    record = result.run_record()
    assert record["stop_reason"] == "early-stop"
    assert record["epochs_completed"] == 3 and record["best_epoch"] == 1
    assert record["examples_seen"] == 3 * 24 and record["planned_examples"] == 5 * 24


def test_max_steps_replaces_epochs_and_ends_the_run_as_planned(tiny_base):
    # 3 steps an epoch: 4 steps are one epoch and the first batch of a second, validated too.
    result = train_scorer(make_scorer(tiny_base), colour_data(), DEFAULT_TEMPLATE,
                          config(epochs=1, max_steps=4))
    record = result.run_record()
    assert record["stop_reason"] == "completed" and not result.stopped
    assert (record["optimizer_steps"], record["planned_steps"], record["epochs_completed"]) == (4, 4, 1)
    assert (record["examples_seen"], record["planned_examples"]) == (32, 32)
    assert [epoch.validated_users for epoch in result.epochs] == [8, 8]


def test_max_steps_of_one_epoch_trains_exactly_that_epoch(tiny_base):
    # Same steps, same schedule (decaying to zero at step 3), same seed: the same weights,
    # however many epochs max_steps replaced.
    by_epochs, by_steps = make_scorer(tiny_base, "dual"), make_scorer(tiny_base, "dual")
    train_scorer(by_epochs, colour_data(), DEFAULT_TEMPLATE, config(epochs=1, valid_users=0))
    train_scorer(by_steps, colour_data(), DEFAULT_TEMPLATE, config(epochs=5, max_steps=3, valid_users=0))
    first, second = by_epochs.trainable_state(), by_steps.trainable_state()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    untrained = make_scorer(tiny_base, "dual").trainable_state()
    assert any(not torch.equal(first[name], untrained[name]) for name in first)


def test_deadline_comes_from_max_minutes():
    clock = FakeClock()
    deadline = Deadline.after_minutes(0.5, clock)
    assert deadline.at == 30.0 and not deadline.expired()
    clock.now = 30.0
    assert deadline.expired()
    assert Deadline.for_config(config()) is None
    assert Deadline.for_config(config(max_minutes=2.0)).at > Deadline.for_config(config(max_minutes=1.0)).at


@pytest.fixture
def expired_deadlines(monkeypatch):
    """Every --max-minutes cap is already over (a fake clock past the deadline)."""
    monkeypatch.setattr(training.Deadline, "for_config",
                        classmethod(lambda cls, config, started=None: cls(at=0.0, clock=lambda: 1.0)
                                    if config.max_minutes is not None else None))


TRAIN = ("--max-users", "16", "--prefixes-per-user", "1", "--batch-size", "4", "--negatives", "3",
         "--valid-users", "4", "--epochs", "2", "--mode", "dual")


@pytest.mark.slow
def test_adapter_and_composition_records_through_the_cli(xreg, synthetic_domains, tiny_base, expired_deadlines):
    done = xreg("train-adapter", "toys", "--base-model", tiny_base, *TRAIN, "--json")
    assert done.exit_code == 0, done.stderr
    run = done.json()["training_config"]["run"]
    assert set(run) == RUN_KEYS and run["stop_reason"] == "completed"
    assert (run["examples_seen"], run["optimizer_steps"], run["epochs_completed"]) == (32, 8, 2)

    stepped = xreg("train-adapter", "toys", "--base-model", tiny_base, *TRAIN, "--max-steps", "5", "--json")
    assert stepped.exit_code == 0, stepped.stderr
    document = stepped.json()["training_config"]
    assert document["training"]["max_steps"] == 5
    assert (document["run"]["optimizer_steps"], document["run"]["planned_steps"]) == (5, 5)
    refused = xreg("train-adapter", "toys", "--base-model", tiny_base, *TRAIN, "--max-steps", "0")
    assert refused.exit_code != 0 and "--max-steps" in refused.stderr
    assert len(xreg("show", "toys", "--json").json()["adapters"]) == 2  # the refused run added nothing

    capped = xreg("train-adapter", "tools", "--base-model", tiny_base, *TRAIN, "--max-minutes", "5", "--json")
    assert capped.exit_code == 0, capped.stderr
    run = capped.json()["training_config"]["run"]
    assert run["stop_reason"] == "time-cap"
    assert (run["examples_seen"], run["optimizer_steps"], run["epochs_completed"]) == (4, 1, 0)
    assert run["validation_users"] == 0 and run["validation_users_planned"] == 4

    shown = xreg("show", "tools")
    assert shown.exit_code == 0, shown.stderr
    assert ("run: time-cap; 4 of 32 examples, 1 of 8 optimiser steps, 0 full epochs; kept epoch 1 "
            "(stopped part-way through it), validated on 0 of 4 users" in shown.stdout)
    assert xreg("show", "tools", "--json").json()["adapters"][0]["training_config"]["run"] == run

    composed = xreg("compose", "--sources", "toys,tools", "--target", "tools", *TRAIN,
                    "--max-minutes", "5", "--json")
    assert composed.exit_code == 0, composed.stderr
    document = composed.json()
    run = document["training_config"]["run"]
    # X-Cross starts from the mix, so its run also has the start's validation metrics: none
    # here, the cap had passed before the start was validated.
    assert set(run) == RUN_KEYS | {"start_metrics"} and run["start_metrics"] is None
    assert run["stop_reason"] == "time-cap" and run["examples_seen"] == 4
    # The cap bounds the whole command: the evaluation after training is not started.
    assert "evaluation" not in document
    assert "note: not evaluated, the --max-minutes cap was reached; run 'xreg evaluate tools-x'" \
        in composed.stderr
    assert xreg("leaderboard", "tools", "--json").json() == []
    assert xreg("evaluate", "tools-x", "--json").exit_code == 0
    shown = xreg("show", "tools-x")
    assert "run: time-cap; 4 of 32 examples" in shown.stdout
    assert xreg("show", "tools-x", "--json").json()["training_config"]["run"] == run

    board = xreg("leaderboard", "tools", "--json").json()
    rows = {row["subject"]: row for row in board[0]["rows"]}
    assert rows["tools-x"]["run"] == {"stop_reason": "time-cap", "examples_seen": 4,
                                      "optimizer_steps": 1, "epochs_completed": 0}
    table = xreg("leaderboard", "tools", "--wide")
    assert "4 (time-cap)" in table.stdout


def test_patience_option_stops_early_through_the_cli(xreg, synthetic_domains, tiny_base):
    # Learning rates too small to change a float32 weight: the second epoch cannot improve.
    done = xreg("train-adapter", "toys", "--base-model", tiny_base, *TRAIN[:-4], "--epochs", "4",
                "--lr", "1e-12", "--head-lr", "1e-12", "--patience", "1", "--json")
    assert done.exit_code == 0, done.stderr
    run = done.json()["training_config"]["run"]
    assert (run["stop_reason"], run["epochs_completed"], run["best_epoch"]) == ("early-stop", 2, 1)
    assert run["examples_seen"] == 32 and run["planned_examples"] == 64
