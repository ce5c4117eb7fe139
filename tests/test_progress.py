"""Progress displays: drawn on a terminal, silent in pipes and under --json."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import run_on_a_terminal, run_subprocess
from xcross_registry import progress

WORK = """
import sys
from xcross_registry import evaluation, serving
from xcross_registry.adapters import train_adapter
from xcross_registry.registry import Registry
from xcross_registry.scorer import ScorerConfig
from xcross_registry.training import TrainingConfig

registry = Registry()
registry.add_domain("toys", "synthetic", "toys?users=60&items=60&max_len=8")
config = TrainingConfig(epochs=1, max_users=8, batch_size=4, negatives=3, valid_users=4)
train_adapter(registry, "toys", scorer_config=ScorerConfig(mode="dual", max_length=32),
              training_config=config, base_model=sys.argv[1])   # progress: the default
evaluation.evaluate_adapter(registry, "toys@v1", max_users=8)
serving.item_embeddings(serving.load_model(registry, "toys@v1"))
print("DONE", file=sys.stderr)
"""


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run with stderr on a 150-column pseudo-terminal; what the terminal showed."""
    code, shown = run_on_a_terminal(args, {"COLUMNS": "150", **env})
    assert code == 0, shown[-2000:]
    return shown


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    return {"XREG_HOME": str(tmp_path / "home")}


@pytest.mark.slow
def test_library_work_draws_bars_on_a_terminal(tiny_base, home):
    shown = _on_a_terminal([sys.executable, "-c", WORK, tiny_base], home)
    assert "DONE" in shown
    assert "epoch 1/1" in shown and "ex/s" in shown  # training, without asking for it
    assert "evaluating toys@v1 on toys" in shown
    assert "encoding the 60 catalogue items" in shown


@pytest.mark.slow
def test_library_work_is_silent_in_a_pipe(tiny_base, home):
    result = run_subprocess([sys.executable, "-c", WORK, tiny_base], env=home)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" not in result.stderr and "evaluating" not in result.stderr
    assert "encoding the" not in result.stderr and "\x1b[" not in result.stderr


# CLI commands in one process on a terminal, each marking where its output starts.
COMMANDS = """
import sys
from xcross_registry.cli import main

quick = ["--epochs", "1", "--max-users", "8", "--batch-size", "4", "--negatives", "3",
         "--valid-users", "4", "--base-model", sys.argv[1]]
for label, args in [("ADD", ["add-domain", "toys", "--plugin", "synthetic", "--data",
                             "toys?users=60&items=60&max_len=8"]),
                    ("TRAIN-JSON", ["train-adapter", "toys", *quick, "--json"]),
                    ("EVAL-JSON", ["evaluate", "toys@v1", "--max-users", "8", "--json"]),
                    ("TRAIN", ["train-adapter", "toys", *quick])]:
    print(f"<<{label}>>", file=sys.stderr, flush=True)
    sys.argv = ["xreg", *args]
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code, label
"""


@pytest.mark.slow
def test_json_commands_stay_silent_on_a_terminal(tiny_base, home):
    shown = _on_a_terminal([sys.executable, "-c", COMMANDS, tiny_base], home)
    parts = dict(part.split(">>", 1) for part in shown.split("<<")[1:])
    assert "epoch" not in parts["TRAIN-JSON"] and "\x1b[" not in parts["TRAIN-JSON"]
    assert "evaluating" not in parts["EVAL-JSON"] and "\x1b[" not in parts["EVAL-JSON"]
    assert "epoch 1/1" in parts["TRAIN"]  # the same command without --json draws
    assert "toys adapter" in parts["TRAIN"]  # and names what it trains


def test_auto_follows_the_terminal_and_silence(monkeypatch):
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    progress.silence(False)
    assert progress.shows()
    progress.silence(True)
    try:
        assert not progress.shows()
        with progress.training_display() as callback:
            assert callback is None
    finally:
        progress.silence(False)
    own = json.dumps
    with progress.training_display(own) as callback:
        assert callback is own
    with progress.training_display(None) as callback:
        assert callback is None
