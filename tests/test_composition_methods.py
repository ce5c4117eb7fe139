"""Composition methods are a table: one class per method, found by name.

The acceptance test defines a third method here, in the test file, registers it through
the public table and composes, evaluates and lists it through the CLI: no library
module knows about it."""

from __future__ import annotations

import sys
from typing import Any, Sequence

import pytest
import torch

from conftest import run_subprocess
from xcross_registry.composition_methods import (COMPOSITION_METHODS, CompositionMethod, SourceAdapter,
                                                 composition_method, register_composition_method)
from xcross_registry.errors import ValidationError
from xcross_registry.registry import Registry

QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3"]
BUILT_IN = "xcross, linear-merge, ties, dare-linear, dare-ties, svd, learned-merge, lorahub, arrow"


class OneSource(CompositionMethod):
    """A toy method: one source's LoRA (``position``, default the second), frozen; only
    the head trains.  Its settings are a plain dict, stored with the composition."""

    name = "one-source"
    subject_kind = "composition"
    default_suffix = "one"
    has_integrators = False

    def settings(self, given: Any | None) -> dict[str, int]:
        return given if isinstance(given, dict) else {"position": 1}

    def settings_to_json(self, settings: dict[str, int]) -> dict[str, int]:
        return dict(settings)

    def settings_from_json(self, stored: dict[str, Any] | None) -> dict[str, int]:
        return dict(stored or {"position": 1})

    def build_encoder(self, model, sources: Sequence[SourceAdapter], settings: dict[str, int]):
        from peft import PeftModel

        from xcross_registry.scorer import LoraEncoder

        peft_model = PeftModel.from_pretrained(model, str(sources[settings["position"]].folder))
        peft_model.requires_grad_(False)
        return LoraEncoder(peft_model)


@pytest.fixture
def one_source(monkeypatch):
    monkeypatch.setitem(COMPOSITION_METHODS, OneSource.name, OneSource)
    return OneSource


def test_built_in_methods_and_their_flags():
    xcross, merge = composition_method("xcross"), composition_method("linear-merge")
    assert (xcross.subject_kind, xcross.default_suffix, xcross.has_integrators) == ("composition", "x", True)
    assert (merge.subject_kind, merge.default_suffix, merge.has_integrators) == ("baseline", "merge", False)
    assert merge.settings_to_json(merge.settings(None)) is None
    from xcross_registry.xcross import XCrossConfig

    config = XCrossConfig(beta=0.5, gamma=2.0, per_token=False)
    assert xcross.settings_from_json(xcross.settings_to_json(xcross.settings(config))) == config
    assert xcross.settings({"beta": 0.5, "gamma": 2.0, "per_token": False}) == config
    with pytest.raises(ValidationError, match="^xcross settings must be XCrossConfig or a dict, not list$"):
        xcross.settings([1.0])
    with pytest.raises(ValidationError, match="unknown X-Cross setting"):
        xcross.settings({"betta": 1})


def test_unknown_and_duplicate_methods_are_refused():
    with pytest.raises(ValidationError) as unknown:
        composition_method("average")
    assert str(unknown.value) == f"unknown composition method 'average'; known: {BUILT_IN}"
    with pytest.raises(ValidationError, match="'xcross' is already registered"):
        register_composition_method(type("Again", (OneSource,), {"name": "xcross"}))
    with pytest.raises(ValidationError, match="has no 'build_encoder'"):
        register_composition_method(type("Incomplete", (), {
            "name": "incomplete", "subject_kind": "baseline", "default_suffix": "i",
            "has_integrators": False}))
    assert ", ".join(COMPOSITION_METHODS) == BUILT_IN


def test_register_adds_to_the_table_and_the_error_lists_it():
    try:
        assert register_composition_method(OneSource) is OneSource
        assert isinstance(composition_method("one-source"), OneSource)
        with pytest.raises(ValidationError, match=f"known: {BUILT_IN}, one-source$"):
            composition_method("nope")
    finally:
        COMPOSITION_METHODS.pop(OneSource.name, None)


def test_the_table_imports_without_torch():
    code = ("import sys, xcross_registry.composition_methods as m; "
            "print(sorted(m.COMPOSITION_METHODS), m.composition_method('xcross').has_integrators, "
            "[x for x in ('torch', 'transformers', 'peft') if x in sys.modules])")
    result = run_subprocess([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{sorted(BUILT_IN.split(', '))} True []"


@pytest.fixture
def sources(xreg, synthetic_domains, tiny_base):
    """toys and sports adapters (cross mode); tools is the target."""
    assert xreg("add-domain", "sports", "--plugin", "synthetic", "--data",
                "sports?users=120&items=60&max_len=8").exit_code == 0
    for domain in ("toys", "sports"):
        result = xreg("train-adapter", domain, *QUICK, "--base-model", tiny_base)
        assert result.exit_code == 0, result.stderr


@pytest.mark.slow
def test_a_method_defined_here_composes_evaluates_and_lists_through_the_cli(xreg, sources, one_source):
    composed = xreg("compose", "--sources", "toys,sports", "--target", "tools", "--method",
                    "one-source", *QUICK, "--name", "t", "--no-evaluate", "--json")
    assert composed.exit_code == 0, composed.stderr
    document = composed.json()
    assert (document["method"], document["mode"], document["target"]) == ("one-source", "cross", "tools")
    assert document["integrator_config"]["one-source"] == {"position": 1}
    assert document["parameters"]["integrator_parameters"] == 0
    assert document["parameters"]["head_parameters"] == document["trainable_parameters"] > 0
    assert document["metrics"]["train_users"] > 0 and document["training_config"]["run"]

    evaluated = xreg("evaluate", "t", "--max-users", "20", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert evaluated.json()["users"] == 20

    listed = {c["name"]: c for c in xreg("compositions", "--json").json()}
    assert listed["t"]["method"] == "one-source"
    assert [s["adapter"] for s in listed["t"]["sources"]] == ["toys@v1", "sports@v1"]
    rows = [row for board in xreg("leaderboard", "tools", "--json").json() for row in board["rows"]]
    (row,) = [row for row in rows if row["subject"] == "t"]
    assert row["kind"] == "composition" and row["method"] == "one-source"

    # The reloaded composition's encoder is exactly the chosen (second) source's.
    from xcross_registry.adapters import load_scorer
    from xcross_registry.composer import load_composition

    registry = Registry()
    scorer, _ = load_composition(registry, "t")
    sports, _ = load_scorer(registry, "sports")
    toys, _ = load_scorer(registry, "toys")
    inputs = scorer.tokenize(["a red ball", "a long blue kite with a tail"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        states = scorer.encoder(ids, mask)
        assert torch.equal(states, sports.encoder(ids, mask))
        assert not torch.equal(states, toys.encoder(ids, mask))


@pytest.mark.slow
def test_sources_of_different_modes_need_an_explicit_mode(xreg, synthetic_domains, tiny_base):
    assert xreg("add-domain", "sports", "--plugin", "synthetic", "--data",
                "sports?users=120&items=60&max_len=8").exit_code == 0
    for domain, mode in (("toys", "cross"), ("sports", "dual")):
        result = xreg("train-adapter", domain, *QUICK, "--mode", mode, "--base-model", tiny_base)
        assert result.exit_code == 0, result.stderr
    refused = xreg("compose", "--sources", "toys,sports", "--target", "tools", *QUICK)
    assert refused.exit_code == 1
    assert refused.stderr == ("error: the sources were trained in different scoring modes "
                              "(toys@v1: cross, sports@v1: dual); choose the composition's with --mode\n")
    assert Registry().compositions() == []
    chosen = xreg("compose", "--sources", "toys,sports", "--target", "tools", *QUICK, "--mode", "dual",
                  "--no-evaluate", "--json")
    assert chosen.exit_code == 0, chosen.stderr
    assert chosen.json()["mode"] == "dual"
