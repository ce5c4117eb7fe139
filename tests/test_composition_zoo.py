"""The composition zoo through the registry and the CLI: the merges, learned-merge,
lorahub and X-Cross from the mix are trained, stored, reloaded and listed like X-Cross."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import QUICK_STEPS
from xcross_registry.composer import load_composition
from xcross_registry.registry import Registry
from xcross_registry.scoring import hit_and_ndcg_per_user, score_candidates
from xcross_registry.training import allowed_validation_users, validation_set

QUICK = [*QUICK_STEPS, "--valid-users", "12"]


def compose(xreg, method: str, name: str, *extra: str) -> dict:
    result = xreg("compose", "--sources", "toys,sports", "--target", "tools", "--method", method,
                  "--name", name, *QUICK, "--no-evaluate", "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return result.json()


def validation_ndcg(registry: Registry, name: str, fraction: float, valid_users: int = 12) -> float:
    """NDCG@10 of the reloaded composition on the validation set its run validated on."""
    scorer, row = load_composition(registry, name)
    data = registry.domain_data("tools")
    template = registry.domain_type("tools").template_for(row.training_config["template"])
    valid = validation_set(data, seed=0, users=valid_users)
    scores = score_candidates(scorer, data, template, "valid", valid.candidates, valid.users)
    return float(hit_and_ndcg_per_user(scores)["ndcg@10"].mean())


def test_lorahub_searches_on_allowed_validation_users_stores_its_trace_and_reloads(xreg, dual_sources):
    document = compose(xreg, "lorahub", "tools-hub", "--fraction", "0.5", "--set", "budget=7",
                       "--set", "search_users=40")
    config = document["integrator_config"]
    search, settings = config["search"], config["lorahub"]
    registry = Registry()
    allowed = allowed_validation_users(registry.domain_data("tools"), 0.5, 12)
    assert search["users"] == allowed < 12  # the run's fraction of the validation users
    assert len(search["evaluations"]) == 7
    assert search["evaluations"][0]["weights"] == [0.5, 0.5]  # the equal merge is tried first
    best = search["evaluations"][search["best"]]
    assert best["objective"] == min(e["objective"] for e in search["evaluations"])
    assert settings["weights"] == best["weights"] == search["weights"]
    assert document["parameters"]["integrator_parameters"] == 0  # nothing but the head trains

    scorer, _ = load_composition(registry, "tools-hub")
    assert scorer.encoder.source_weights()[0].tolist() == pytest.approx(best["weights"], abs=1e-6)
    # The reloaded model scores the run's validation users exactly as training last did.
    assert validation_ndcg(registry, "tools-hub", 0.5) == pytest.approx(
        document["metrics"]["validation"]["ndcg@10"], abs=1e-9)


def test_learned_merge_records_its_weights_and_reloads(xreg, dual_sources):
    document = compose(xreg, "learned-merge", "tools-lm", "--set", "per_layer=true", "--lr", "0.05")
    record = document["integrator_config"]["integration"]
    assert record["sources"] == ["toys@v1", "sports@v1"]
    weights = np.array(record["weights"])
    assert weights.shape == (2, 2) and not np.allclose(weights, 0.5)  # trained away from 1/n
    assert document["parameters"]["integrator_parameters"] == 4
    assert validation_ndcg(Registry(), "tools-lm", 1.0) == pytest.approx(
        document["metrics"]["validation"]["ndcg@10"], abs=1e-9)
    shown = xreg("show", "tools-lm")
    assert shown.exit_code == 0 and "learned weights (toys@v1, sports@v1)" in shown.stdout
    # served like any composition: a whole-catalogue recommendation from a history
    served = xreg("recommend", "tools-lm", "--history", "tools item 1; tools item 2", "--top", "3", "--json")
    assert served.exit_code == 0, served.stderr
    assert len(served.json()) == 3


def test_xcross_from_the_mix_validates_its_start_and_keeps_the_better(xreg, dual_sources):
    document = compose(xreg, "xcross", "tools-mix", "--init", "mix")
    assert document["integrator_config"]["xcross"]["init"] == "mix"
    assert document["training_config"]["training"]["validate_start"] is True
    run = document["training_config"]["run"]
    start = run["start_metrics"]["ndcg@10"]
    assert run["best_epoch"] in (0, 1)
    kept = document["metrics"]["validation"]["ndcg@10"]
    assert kept >= start  # the start is kept unless an epoch beat it
    assert validation_ndcg(Registry(), "tools-mix", 1.0) == pytest.approx(kept, abs=1e-9)


@pytest.mark.parametrize("method", ["ties", "dare-ties", "svd", "arrow"])
def test_static_merges_and_arrow_compose_and_land_on_the_board(xreg, dual_sources, method):
    document = compose(xreg, method, f"tools-{method}")
    assert document["parameters"]["integrator_parameters"] == 0
    evaluated = xreg("evaluate", f"tools-{method}", "--max-users", "10", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    rows = [row for board in xreg("leaderboard", "tools", "--json").json() for row in board["rows"]]
    (row,) = [row for row in rows if row["subject"] == f"tools-{method}"]
    assert (row["kind"], row["method"]) == ("baseline", method)


def test_bad_settings_are_one_line_and_register_nothing(xreg, dual_sources):
    for extra, message in [
        (["--method", "ties", "--set", "density=2"], "error: merge density must be in (0, 1], got 2\n"),
        (["--method", "svd", "--set", "density=0.5"],
         "error: svd does not take density (its settings: svd_rank, weights)\n"),
        (["--method", "linear-merge", "--beta", "0.5"], "error: unknown merge setting field(s): beta\n"),
        (["--set", "nokey"], "error: --set needs KEY=VALUE, got 'nokey'\n"),
        (["--init", "merge"], "error: X-Cross setting 'init' must be one of streams, mix, got 'merge'\n"),
        (["--method", "lorahub", "--set", "budget=0"],
         "error: lorahub setting 'budget' must be a positive integer, got 0\n"),
    ]:
        result = xreg("compose", "--sources", "toys,sports", "--target", "tools", *QUICK, *extra)
        assert (result.exit_code, result.stderr) == (1, message), extra
    assert Registry().compositions() == []


def test_auto_composition_ranks_sources_and_methods_on_validation_and_never_reads_test(
        xreg, dual_sources, monkeypatch):
    """--sources auto --method auto: the search scores validation users only (the split of
    every scoring call and every stored candidate set asked for is recorded), registers the
    winner with its search, and `show` prints it."""
    from xcross_registry import scoring, training

    assert xreg("add-domain", "garden", "--plugin", "synthetic", "--data",
                "garden?users=120&items=60&max_len=8").exit_code == 0
    assert xreg("train-adapter", "garden", *QUICK, "--mode", "dual", "--max-length", "32", "--base-model",
                Registry().adapter("toys").base_model.name).exit_code == 0
    asked: list[str] = []
    score, candidate_set = scoring.score_candidates, Registry.candidate_set

    def scoring_spy(scorer, data, template, split, *args, **kwargs):
        asked.append(split)
        return score(scorer, data, template, split, *args, **kwargs)

    def candidates_spy(self, domain, split, *args, **kwargs):
        asked.append(split)
        return candidate_set(self, domain, split, *args, **kwargs)

    for module in (scoring, training):
        monkeypatch.setattr(module, "score_candidates", scoring_spy)
    monkeypatch.setattr(Registry, "candidate_set", candidates_spy)
    result = xreg("compose", "--sources", "auto", "--max-sources", "2", "--target", "tools", "--method",
                  "auto", "--candidates", "xcross;linear-merge;learned-merge:per_layer=true", *QUICK,
                  "--fraction", "0.5", "--no-evaluate", "--json")
    assert result.exit_code == 0, result.stderr
    assert "test" not in asked and "valid" in asked  # validation only, never a test user
    document = result.json()
    auto = document["integrator_config"]["auto"]
    ranked = auto["sources"]
    assert {row["adapter"] for row in ranked} == {"toys@v1", "sports@v1", "garden@v1"}
    scores = [row["validation_ndcg@10"] for row in ranked]
    assert scores == sorted(scores, reverse=True)  # best first
    assert auto["chosen_sources"] == [row["adapter"] for row in ranked[:2]]
    assert [s["adapter"] for s in document["sources"]] == auto["chosen_sources"]
    assert [c["candidate"] for c in auto["candidates"]] == ["xcross", "linear-merge",
                                                            "learned-merge:per_layer=true"]
    assert all(c["planned_steps"] == 2 for c in auto["candidates"])  # one declared budget
    best = max(auto["candidates"], key=lambda c: c["validation_ndcg@10"])
    assert auto["chosen"] == best["candidate"] and document["method"] == best["method"]
    assert document["name"] == "tools-auto" and len(Registry().compositions()) == 1
    shown = xreg("show", "tools-auto")
    assert "chosen automatically on" in shown.stdout and "learned-merge:per_layer=true" in shown.stdout


def test_auto_options_are_checked_before_anything_trains(xreg, dual_sources):
    for extra, message in [
        (["--sources", "toys,sports", "--max-sources", "2"], "error: --max-sources applies to --sources auto\n"),
        (["--sources", "toys,sports", "--method", "auto", "--candidates", "xcross;median"],
         "error: unknown composition method 'median'"),
        (["--sources", "toys,sports", "--method", "auto", "--init", "mix"],
         "error: method settings apply to one method"),
        (["--sources", "toys,sports", "--candidates", "xcross"], "error: --candidates applies to --method auto\n"),
    ]:
        result = xreg("compose", "--target", "tools", *QUICK, *extra)
        assert result.exit_code == 1 and result.stderr.startswith(message), (extra, result.stderr)
    assert Registry().compositions() == []
