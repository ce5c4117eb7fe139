"""Late fusion of a text model with a stored ID model (``--with``, ``xreg fuse``)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import QUICK_STEPS
from xcross_registry import serving
from xcross_registry.composer import load_composition
from xcross_registry.fusion import Fusion, fit, standardised
from xcross_registry.registry import Registry
from xcross_registry.scoring import score_candidates
from xcross_registry.serving import load_model
from xcross_registry.subjects import load_subject
from xcross_registry.training import allowed_validation_users

QUICK = [*QUICK_STEPS, "--valid-users", "20"]
UNSEEN = -1.0e9


def test_standardised_scores_use_seen_candidates_only():
    ids = np.array([[1.0, 3.0, UNSEEN, 5.0], [2.0, UNSEEN, UNSEEN, UNSEEN]])
    z, seen = standardised(ids)
    assert seen.tolist() == [[True, True, False, True], [True, False, False, False]]
    spread = np.sqrt(8 / 3)  # of 1, 3, 5 around 3
    assert z[0].tolist() == pytest.approx([-2 / spread, 0.0, 0.0, 2 / spread])
    assert z[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # one seen candidate: nothing to standardise


def test_fit_weights_an_informative_id_model_and_ignores_a_noisy_one():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(400, 10))
    informative = rng.normal(size=(400, 10))
    informative[:, 0] += 2.0  # the positive (column 0) is ranked high by the ID model
    weight, unseen = fit(text, informative)
    assert weight > 1.0
    noise_weight, _ = fit(text, rng.normal(size=(400, 10)))
    assert abs(noise_weight) < 0.3
    # unseen positives push the unseen term up, unseen negatives down
    cold = informative.copy()
    cold[:, 1:4] = UNSEEN
    assert fit(text, cold)[1] < 0
    cold_positive = informative.copy()
    cold_positive[:, 0] = UNSEEN
    assert fit(text, cold_positive)[1] > 0
    fusion = Fusion("sasrec:x@v1", "d" * 64, weight, unseen)
    z, seen = standardised(informative)
    assert np.allclose(fusion.combine(text, informative), text + weight * z)


@pytest.fixture
def fusable(xreg, dual_sources):
    """Dual toys and sports adapters, and a SASRec of the target tools."""
    trained = xreg("train-baseline", "sasrec", "tools", "--epochs", "3", "--hidden-size", "16",
                   "--fraction", "0.5")
    assert trained.exit_code == 0, trained.stderr


def test_compose_with_fuses_stores_and_scores_identically_after_reload(xreg, fusable):
    composed = xreg("compose", "--sources", "toys,sports", "--target", "tools", *QUICK,
                    "--fraction", "0.5", "--with", "sasrec:tools@v1", "--no-evaluate", "--json")
    assert composed.exit_code == 0, composed.stderr
    stored = composed.json()["integrator_config"]["fusion"]
    registry = Registry()
    assert stored["with"] == "sasrec:tools@v1" and stored["digest"] == registry.baseline_model(
        "sasrec", "tools@v1").artifact_digest
    # the run's fraction (half) of the validation users
    assert stored["users"] == allowed_validation_users(registry.domain_data("tools"), 0.5, 20) \
        == -(-len(registry.domain_data("tools").valid) // 2)
    assert set(stored["validation_ndcg@10"]) == {"text", "ids", "fused"}

    # The fused subject's scores are the reloaded text model's, fused by the stored numbers.
    data = registry.domain_data("tools")
    users = list(range(12))
    matrix = np.array([[seq.target, *[(seq.target + k) % len(data.items) for k in range(1, 6)]]
                       for seq in data.test[:12]])
    fused = load_subject(registry, "tools-x").score(data, "test", users, matrix)
    scorer, row = load_composition(registry, "tools-x")
    template = registry.domain_type("tools").template_for(row.training_config["template"])
    text = score_candidates(scorer, data, template, "test", matrix, users)
    ids = load_subject(registry, "sasrec:tools@v1").score(data, "test", users, matrix)
    assert np.array_equal(fused, Fusion.from_dict(stored).combine(text, ids))

    rows = [row for board in xreg("leaderboard", "tools", "--json").json() for row in board["rows"]]
    assert rows == []  # nothing evaluated yet
    assert xreg("evaluate", "tools-x", "--max-users", "15").exit_code == 0
    rows = [row for board in xreg("leaderboard", "tools", "--json").json() for row in board["rows"]]
    assert [(row["subject"], row["method"], row["kind"]) for row in rows] == [
        ("tools-x", "xcross+sasrec", "composition")]


def test_fuse_registers_a_fused_copy_as_its_own_row(xreg, fusable):
    assert xreg("compose", "--sources", "toys,sports", "--target", "tools", *QUICK, "--fraction", "0.5",
                "--no-evaluate").exit_code == 0
    fused = xreg("fuse", "tools-x", "--with", "sasrec:tools", "--json")
    assert fused.exit_code == 0, fused.stderr
    assert fused.json()["name"] == "tools-x-sasrec"
    registry = Registry()
    plain, copy = registry.composition("tools-x"), registry.composition("tools-x-sasrec")
    assert copy.artifact_digest == plain.artifact_digest and "fusion" not in plain.integrator_config
    assert copy.training_config["fused_from"] == "tools-x"
    for name in ("tools-x", "tools-x-sasrec"):
        assert xreg("evaluate", name, "--max-users", "15").exit_code == 0
    compared = xreg("compare", "tools", "tools-x-sasrec", "tools-x", "--json")
    assert compared.exit_code == 0, compared.stderr
    # An adapter is fused into its domain's next version.
    assert xreg("train-adapter", "tools", *QUICK, "--mode", "dual", "--max-length", "32",
                "--base-model", str(registry.adapter("toys").base_model.name)).exit_code == 0
    adapter = xreg("fuse", "tools", "--with", "sasrec:tools@v1", "--json")
    assert adapter.exit_code == 0, adapter.stderr
    assert adapter.json()["name"] == "tools@v2"
    assert Registry().adapter("tools@v2").training_config["fused_from"] == "tools@v1"


def test_bad_fusions_are_one_line_and_register_nothing(xreg, fusable):
    assert xreg("compose", "--sources", "toys,sports", "--target", "tools", *QUICK,
                "--no-evaluate").exit_code == 0
    before = len(Registry().compositions())
    for args, message in [
        (["fuse", "tools-x", "--with", "popularity:tools"], "error: --with needs a stored trained baseline "
         "(an ID model such as sasrec:tools@v1), not 'popularity:tools'\n"),
        (["fuse", "tools-x", "--with", "sasrec:toys"],
         "error: domain 'toys' has no sasrec baseline yet; train one with 'xreg train-baseline sasrec toys'\n"),
        (["fuse", "popularity:tools", "--with", "sasrec:tools"],
         "error: popularity:tools is a baseline; fuse an adapter or a composition with an ID model\n"),
        (["compose", "--sources", "toys,sports", "--target", "tools", "--name", "t2", *QUICK,
          "--with", "sasrec:tools@v9"], "error: "),
    ]:
        result = xreg(*args)
        assert result.exit_code == 1 and result.stderr.startswith(message), (args, result.stderr)
    assert xreg("fuse", "tools-x", "--with", "sasrec:tools").exit_code == 0
    # An ID model that scores a split's users only is evaluated fused, but not served.
    assert xreg("train-baseline", "item-knn", "tools").exit_code == 0
    assert xreg("fuse", "tools-x", "--with", "item-knn:tools", "--name", "tools-x-knn").exit_code == 0
    assert xreg("evaluate", "tools-x-knn", "--max-users", "5").exit_code == 0
    served = xreg("recommend", "tools-x-knn", "--history", "a;b")
    assert served.exit_code == 1 and served.stderr == (
        "error: tools-x-knn is fused with item-knn:tools@v1, which scores a split's users only, not a history "
        "given at request time: recommend with the unfused model\n")
    again = xreg("fuse", "tools-x-sasrec", "--with", "sasrec:tools")
    assert again.stderr == "error: tools-x-sasrec is already fused with sasrec:tools@v1\n"
    assert len(Registry().compositions()) == before + 2


def test_a_fused_model_serves_what_it_is_evaluated_with(xreg, fusable):
    """recommend and serve fuse the request's history as evaluation fuses a user's: the
    same scores for the same candidates, the whole catalogue ranked by the fused scores,
    and history entries that match no item (free text) left to the text model."""
    assert xreg("compose", "--sources", "toys,sports", "--target", "tools", *QUICK, "--fraction", "0.5",
                "--with", "sasrec:tools@v1", "--no-evaluate").exit_code == 0
    model = load_model(Registry(), "tools-x")
    assert model.fusion is not None and model.fusion.fusion.weight != 0
    data = model.data
    user = next(u for u, seq in enumerate(data.test) if len(seq.history) >= 2)
    seq = data.test[user]
    history = [data.items[i].id for i in seq.history]
    pool = [seq.target, *[(seq.target + k) % len(data.items) for k in range(1, 6)]]
    served = {r.item_id: r.score for r in serving.recommend(
        model, history, candidates=[data.items[i].id for i in pool], top=len(pool))}
    expected = model.score(data, "test", [user], np.array([pool]))[0]
    assert np.allclose([served[data.items[i].id] for i in pool], expected, atol=1e-4)

    every = model.score(data, "test", [user], np.arange(len(data.items))[None])[0]
    every[list(seq.history)] = -np.inf  # a request's history is not recommended back
    ranked = serving.recommend(model, history, top=5)
    assert np.allclose([r.score for r in ranked], np.sort(every)[::-1][:5], atol=1e-4)
    assert np.allclose([every[model.positions()[r.item_id]] for r in ranked], [r.score for r in ranked], atol=1e-4)

    # A free-text entry gives the ID model nothing: the ID scores are those of the matched
    # entries, fused with the text model's scores of the whole history.
    free = [*history, "a title no catalogue holds"]
    fused = {r.item_id: r.score for r in serving.recommend(
        model, free, candidates=[data.items[i].id for i in pool], top=len(pool))}
    text_model = load_model(Registry(), "tools-x")
    fusion, text_model.fusion = text_model.fusion, None
    text = {r.item_id: r.score for r in serving.recommend(
        text_model, free, candidates=[data.items[i].id for i in pool], top=len(pool))}
    expected = fusion.combine(np.array([[text[data.items[i].id] for i in pool]]), [seq.history], np.array([pool]))
    assert np.allclose([fused[data.items[i].id] for i in pool], expected[0], atol=1e-6)
    assert not np.allclose(expected[0], [text[data.items[i].id] for i in pool])

    answer = xreg("recommend", "tools-x", "--history", ";".join(history), "--top", "3", "--json")
    assert answer.exit_code == 0, answer.stderr
    assert [row["item_id"] for row in answer.json()] == [r.item_id for r in ranked[:3]]
