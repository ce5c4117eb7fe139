"""The one train-and-register path: registration happens once, in a staging folder that
is gone afterwards; a signal or an error registers nothing; ``add_trained_domain`` is
all or nothing for Python callers as it is for ``xreg add-domain --train``."""

from __future__ import annotations

import os
import signal

import pytest

from xcross_registry import training
from xcross_registry.adapters import add_trained_domain
from xcross_registry.errors import NotFoundError
from xcross_registry.registry import Registry
from xcross_registry.runs import TrainingInterrupted, TrainingJob, train_and_register
from xcross_registry.scorer import ScorerConfig
from xcross_registry.training import TrainingConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

DATA = "toys?users=60&items=60&max_len=6"
SCORER = ScorerConfig(head_hidden_size=8, max_length=40, lora_r=2)
TRAINING = TrainingConfig(epochs=1, max_users=8, batch_size=8, negatives=3, valid_users=4)


def _add(registry: Registry, tiny_base: str, **options):
    return add_trained_domain(registry, "toys", "synthetic", DATA, scorer_config=SCORER,
                              training_config=TRAINING, base_model=tiny_base, progress=None, **options)


def _nothing_left(registry: Registry) -> None:
    assert registry.domains() == [] and registry.adapters() == []
    staging = registry.store.staging
    assert not staging.exists() or list(staging.iterdir()) == []


def test_add_trained_domain_registers_the_domain_and_its_first_adapter(xreg_home, tiny_base):
    registry = Registry()
    version = _add(registry, tiny_base, description="little toys")
    assert version.label == "toys@v1" and version.status == "ready"
    assert registry.domain("toys").description == "little toys"
    assert version.training_config["run"]["stop_reason"] == "completed"
    assert version.metrics["train_users"] == 8


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_add_trained_domain_is_all_or_nothing(xreg_home, tiny_base, monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure("stopped")

    monkeypatch.setattr(training, "train_scorer", fail)
    registry = Registry()
    with pytest.raises(failure):
        _add(registry, tiny_base)
    _nothing_left(registry)


def test_add_trained_domain_with_an_unknown_template_leaves_nothing(xreg_home, tiny_base):
    registry = Registry()
    with pytest.raises(NotFoundError):
        _add(registry, tiny_base, template="nope")
    _nothing_left(registry)


def test_sigterm_during_training_registers_nothing(xreg_home, tiny_base):
    from xcross_registry.scorer import Scorer

    registry = Registry()
    registry.add_domain("toys", "synthetic", DATA)
    registered = []

    def prepare() -> TrainingJob:
        return TrainingJob(Scorer.create(tiny_base, SCORER), registry.domain_data("toys"),
                           registry.domain_type("toys").template(None))

    def terminate(report) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="stopped by signal 15; nothing was registered"):
        train_and_register(registry, prepare, lambda folder, run: registered.append(run) or "x",
                           TRAINING, progress=terminate)
    assert registered == [] and signal.getsignal(signal.SIGTERM) is previous
    staging = registry.store.staging
    assert not staging.exists() or list(staging.iterdir()) == []


def test_the_registrar_gets_the_run_in_the_shared_stored_shape(xreg_home, tiny_base):
    from xcross_registry.scorer import Scorer

    registry = Registry()
    registry.add_domain("toys", "synthetic", DATA)
    seen = {}

    def prepare() -> TrainingJob:
        return TrainingJob(Scorer.create(tiny_base, SCORER), registry.domain_data("toys"),
                           registry.domain_type("toys").template(None))

    def register(folder, run) -> str:
        seen.update(folder=folder, exists=folder.is_dir(), training=run.training_config(extra=1),
                    metrics=run.metrics())
        return "key"

    assert train_and_register(registry, prepare, register, TRAINING, staging="probe", progress=None) == "key"
    assert seen["exists"] and not seen["folder"].exists()  # the staging folder is gone afterwards
    assert seen["folder"].name.startswith("probe-")
    assert set(seen["training"]) == {"training", "template", "run", "extra"}
    assert seen["training"]["training"] == TRAINING.to_dict()
    assert seen["training"]["run"]["stop_reason"] == "completed"
    assert set(seen["metrics"]) == {"validation", "best_epoch", "train_users", "seconds",
                                    "sequences_per_second"}
