"""Training guards: rates and seeds are checked before any model loads, and a run whose
loss or weights stop being finite ends with one clear line and registers nothing."""

from __future__ import annotations

import pytest

from xcross_registry.registry import Registry
from xcross_registry.schema import AdapterVersion, Composition

QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3",
         "--valid-users", "10"]
NO_MODEL = "/nonexistent/base-model"  # loading it would fail: the checks must come first


@pytest.mark.parametrize("args, message", [
    (["--lr", "inf"], "error: lr must be a finite number above 0, not inf"),
    (["--lr", "nan"], "error: lr must be a finite number above 0, not nan"),
    (["--head-lr", "inf"], "error: head_lr must be a finite number above 0, not inf"),
    (["--prior-lr", "-1"], "error: prior_lr must be a finite number above 0, not -1.0"),
    (["--max-minutes", "inf"], "error: max_minutes must be a finite number above 0, not inf"),
    (["--seed", "-1"], "error: seed must be an integer from 0 to 4294967295, not -1"),
    (["--seed", str(2**32)], "error: seed must be an integer from 0 to 4294967295, not 4294967296"),
])
def test_bad_rates_and_seeds_fail_before_any_model_loads(xreg, synthetic_domains, args, message):
    for command in (["train-adapter", "toys"], ["compose", "--sources", "toys", "--target", "tools"]):
        result = xreg(*command, *args, "--base-model", NO_MODEL) if command[0] == "train-adapter" \
            else xreg(*command, *args)
        assert result.exit_code == 1, (command, result.stderr)
        assert result.stderr.strip() == message, (command, result.stderr)
    registry = Registry()
    assert registry.count(AdapterVersion) == registry.count(Composition) == 0


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_evaluation_seed_is_checked(xreg, synthetic_domains, seed):
    result = xreg("evaluate", "toys", "--baseline", "popularity", "--seed", seed)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: --seed must be an integer from 0 to 4294967295, not {seed}"


def test_a_diverging_run_stops_and_registers_nothing(xreg, synthetic_domains, tiny_base, xreg_home):
    """A finite but absurd rate: the first step's update makes the weights infinite."""
    artifacts = xreg_home / "artifacts"
    before = sorted(p for p in artifacts.rglob("*") if p.is_file())
    result = xreg("train-adapter", "toys", *QUICK, "--lr", "1e308", "--base-model", tiny_base)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: training diverged at epoch 1, step 1: the weights became NaN or "
                           "infinite; nothing was registered (lower the learning rate: --lr 1e+308"), line
    assert Registry().count(AdapterVersion) == 0
    assert sorted(p for p in artifacts.rglob("*") if p.is_file()) == before  # no file stored


def test_sasrec_rate_is_checked(xreg, synthetic_domains):
    result = xreg("train-baseline", "sasrec", "toys", "--lr", "inf")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: SASRec lr must be a finite number above 0, not inf"
