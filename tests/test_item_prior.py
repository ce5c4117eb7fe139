"""The item-popularity prior (issue 11): counted only on the training users a run may
see, learned, stored with the model so a reload scores identically, zero for zero-shot
use, and named on the leaderboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from test_training import config as training_config
from xcross_registry.composer import load_composition
from xcross_registry.data import DomainData, Item, UserSequence
from xcross_registry.errors import ModelError, ValidationError
from xcross_registry.item_prior import COUNTS_FILE, WEIGHT_FILE
from xcross_registry.registry import Registry
from xcross_registry.scorer import Scorer, ScorerConfig
from xcross_registry.scoring import score_candidates
from xcross_registry.templates import DEFAULT_TEMPLATE
from xcross_registry.training import TrainingConfig, select_users, train_scorer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3"]


def make_scorer(base: str, mode: str, prior: bool = True) -> Scorer:
    torch.manual_seed(0)
    return Scorer.create(base, ScorerConfig(mode=mode, head_hidden_size=16, max_length=48, lora_r=4,
                                            popularity_prior=prior))


def own_items_data(users: int = 16) -> DomainData:
    """Eight shared items, and two items per training user that nobody else buys."""
    shared = [Item(f"s{i}", f"shared thing {i}") for i in range(8)]
    own = [Item(f"u{u}-{k}", f"private thing {u} {k}") for u in range(users) for k in range(2)]
    items = shared + own

    def own_index(u: int, k: int) -> int:
        return len(shared) + 2 * u + k

    train = [UserSequence(f"t{u}", (u % 8, own_index(u, 0), (u + 3) % 8, own_index(u, 1)))
             for u in range(users)]
    valid = [UserSequence(f"v{u}", (u % 8, (u + 1) % 8, (u + 2) % 8)) for u in range(4)]
    test = [UserSequence(f"x{u}", ((u + 2) % 8, (u + 5) % 8, u % 8)) for u in range(4)]
    return DomainData(items=items, train=train, valid=valid, test=test)


def popular_next_data() -> DomainData:
    """The next item is one of four popular items, whatever came before."""
    items = [Item(f"p{i}", f"bestseller {i}") for i in range(4)] + \
            [Item(f"r{i}", f"rarity {i}") for i in range(36)]
    rng = np.random.default_rng(5)

    def users(prefix: str, count: int) -> list[UserSequence]:
        return [UserSequence(f"{prefix}{u}", (int(rng.integers(4, 40)), int(rng.integers(0, 4))))
                for u in range(count)]

    return DomainData(items=items, train=users("t", 48), valid=users("v", 8), test=users("x", 8))


def fixed_batch(data: DomainData) -> tuple[list, list]:
    histories = [[data.items[i] for i in seq.history] for seq in data.test]
    candidates = [[data.items[j] for j in (seq.target, 9, 12, 3)] for seq in data.test]
    return histories, candidates


# -- the prior in the scorer ----------------------------------------------------------------

def test_the_prior_weight_trains_at_its_own_rate(tiny_base):
    """One scalar of order 1: at the head's rate Adam moves it by about that rate per
    step, so it gets its own (``prior_lr``), and the head keeps ``head_lr``."""
    def trained(**rates):
        scorer = make_scorer(tiny_base, "dual")
        head_before = [p.detach().clone() for p in scorer.head.parameters()]
        config = training_config(epochs=1, lr=1e-3, **rates)
        result = train_scorer(scorer, popular_next_data(), DEFAULT_TEMPLATE, config)
        head_moved = max((p.detach() - q).abs().max().item()
                         for p, q in zip(scorer.head.parameters(), head_before))
        return abs(scorer.item_prior.weight.item()), head_moved, result.optimizer_steps

    fast, head_fast, steps = trained(head_lr=1e-3, prior_lr=0.2)
    slow, head_slow, _ = trained(head_lr=1e-3, prior_lr=1e-6)
    assert fast > 2 * 1e-3 * steps  # further than the head's rate could have taken it
    assert slow <= 2 * 1e-6 * steps
    assert head_fast > 0 and head_slow > 0  # the head trains at its rate either way


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_a_fresh_prior_scores_exactly_as_no_prior(tiny_base, mode):
    data = own_items_data()
    plain, with_prior = make_scorer(tiny_base, mode, prior=False), make_scorer(tiny_base, mode)
    with_prior.item_prior.count(data.train, data.items)
    plain.eval()
    with_prior.eval()
    histories, candidates = fixed_batch(data)
    with torch.no_grad():
        assert torch.equal(plain.score(histories, candidates, DEFAULT_TEMPLATE),
                           with_prior.score(histories, candidates, DEFAULT_TEMPLATE))
    assert with_prior.item_prior.weight.item() == 0.0
    assert "item_prior.weight" in with_prior.trainable_state()
    assert ScorerConfig.from_dict({"mode": mode}).popularity_prior is False  # stored configs without it
    with pytest.raises(ValidationError, match="popularity_prior must be true or false"):
        ScorerConfig(popularity_prior="yes")


def test_the_prior_reaches_every_column_in_batch_ones_included(tiny_base):
    data = own_items_data()
    scorer = make_scorer(tiny_base, "dual")
    scorer.item_prior.count(data.train, data.items)
    with torch.no_grad():
        scorer.item_prior.weight.fill_(0.5)
    scorer.eval()
    histories, candidates = fixed_batch(data)
    inputs = scorer.prepare(histories, candidates, DEFAULT_TEMPLATE, in_batch=True)
    content = scorer.prepare(histories, candidates, DEFAULT_TEMPLATE, in_batch=True, with_prior=False)
    with torch.no_grad():
        total, bare = scorer(**inputs), scorer(**content)
    positives = scorer.item_prior.scores([row[0] for row in candidates])
    added = torch.cat([scorer.item_prior.scores([i for row in candidates for i in row]).view(4, 4),
                       positives.expand(4, 4)], dim=1)
    usable = torch.isfinite(bare)
    assert torch.equal(total[usable], (bare + added)[usable])
    assert torch.equal(torch.isfinite(total), usable)


@pytest.mark.parametrize("settings", [dict(fraction=0.5), dict(fraction=1.0, max_users=5)])
def test_counts_come_only_from_the_users_the_run_may_see(tiny_base, settings):
    data = own_items_data()
    config = training_config(**settings)
    scorer = make_scorer(tiny_base, "dual")
    scorer.item_prior.counts = {"stale": 3}  # whatever was there before is replaced
    train_scorer(scorer, data, DEFAULT_TEMPLATE, config)
    seen = select_users(data.train, config)
    assert 0 < len(seen) < len(data.train)
    expected = Counter(data.items[i].id for seq in seen for i in seq.items)
    assert scorer.item_prior.counts == dict(expected)
    unseen_own = [data.items[i] for seq in data.train if seq not in seen for i in seq.items
                  if data.items[i].id.startswith("u")]
    assert len(unseen_own) == 2 * (len(data.train) - len(seen))
    assert all(item.id not in scorer.item_prior.counts for item in unseen_own)
    assert not scorer.item_prior.scores(unseen_own).any()


def test_training_learns_a_positive_weight_where_popularity_predicts(tiny_base):
    data = popular_next_data()
    scorer = make_scorer(tiny_base, "dual")
    train_scorer(scorer, data, DEFAULT_TEMPLATE, training_config(epochs=2, lr=1e-3))
    assert scorer.item_prior.counts["p0"] > scorer.item_prior.counts.get("r0", 0)
    assert scorer.item_prior.weight.item() > 0.01


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_save_and_reload_reproduce_the_scores(tiny_base, tmp_path, mode):
    data = popular_next_data()
    scorer = make_scorer(tiny_base, mode)
    train_scorer(scorer, data, DEFAULT_TEMPLATE, training_config(fraction=0.5))
    assert scorer.item_prior.weight.item() != 0.0
    matrix = np.array([[seq.target, 5, 9, 1] for seq in data.test])
    users = list(range(len(data.test)))
    here = score_candidates(scorer, data, DEFAULT_TEMPLATE, "test", matrix, users)
    scorer.save_pretrained(tmp_path / "saved")
    assert {COUNTS_FILE, WEIGHT_FILE} <= {p.name for p in (tmp_path / "saved").iterdir()}
    loaded = Scorer.from_pretrained(tmp_path / "saved")
    assert loaded.item_prior.weight.item() == scorer.item_prior.weight.item()
    assert loaded.item_prior.counts == scorer.item_prior.counts
    assert np.array_equal(score_candidates(loaded, data, DEFAULT_TEMPLATE, "test", matrix, users), here)
    histories = [[data.items[i] for i in data.test[u].history] for u in users]
    loaded.eval()
    with torch.no_grad():
        direct = loaded.score(histories, [[data.items[i] for i in row] for row in matrix], DEFAULT_TEMPLATE)
        bare = loaded.score(histories, [[data.items[i] for i in row] for row in matrix], DEFAULT_TEMPLATE,
                            with_prior=False)
    assert np.allclose(direct.numpy(), here, atol=1e-5)
    assert not np.allclose(bare.numpy(), here, atol=1e-3)  # the prior is part of the scores
    (tmp_path / "saved" / COUNTS_FILE).write_text('{"counts": {"x": -1}}')
    with pytest.raises(ModelError, match="cannot load the popularity prior"):
        Scorer.from_pretrained(tmp_path / "saved")


# -- through the registry and the CLI -------------------------------------------------------

SCORES = """
import json, sys
import numpy as np
from xcross_registry.registry import Registry
from xcross_registry.subjects import load_subject
registry = Registry()
model = load_subject(registry, sys.argv[1])
data = model.data
matrix = np.array([[seq.target, 1, 2, 3, 4] for seq in data.test[:6]])
print(json.dumps(model.score(data, "test", list(range(6)), matrix).tolist()))
"""


def scores_now_and_in_a_fresh_process(name: str, home) -> tuple[np.ndarray, np.ndarray]:
    from xcross_registry.subjects import load_subject

    model = load_subject(Registry(), name)
    matrix = np.array([[seq.target, 1, 2, 3, 4] for seq in model.data.test[:6]])
    here = model.score(model.data, "test", list(range(6)), matrix)
    out = subprocess.run([sys.executable, "-c", SCORES, name], capture_output=True, text=True,
                         env={**os.environ, "XREG_HOME": str(home), "HF_HUB_OFFLINE": "1",
                              "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return here, np.array(json.loads(out.stdout), dtype=here.dtype)


def expected_counts(registry: Registry, domain: str, training: dict) -> dict[str, int]:
    data = registry.domain_data(domain)
    seen = select_users(data.train, TrainingConfig.from_dict(training))
    assert len(seen) < len(data.train)
    return dict(Counter(data.items[i].id for seq in seen for i in seq.items))


@pytest.mark.slow
def test_adapter_with_the_prior_on_the_board_reloaded_and_zero_shot(xreg, synthetic_domains, tiny_base,
                                                                    xreg_home):
    from xcross_registry.adapters import load_scorer
    from xcross_registry.subjects import load_subject

    trained = xreg("train-adapter", "toys", *QUICK, "--fraction", "0.5", "--popularity-prior",
                   "--mode", "dual", "--base-model", tiny_base, "--json")
    assert trained.exit_code == 0, trained.stderr
    assert trained.json()["training_config"]["scorer"]["popularity_prior"] is True
    plain = xreg("train-adapter", "tools", *QUICK, "--mode", "dual", "--base-model", tiny_base, "--json")
    assert plain.exit_code == 0, plain.stderr
    registry = Registry()
    scorer, version = load_scorer(registry, "toys@v1")
    assert scorer.item_prior.weight.item() != 0.0
    assert scorer.item_prior.counts == expected_counts(registry, "toys", version.training_config["training"])
    assert load_scorer(registry, "tools@v1")[0].item_prior is None  # without the flag: as before

    here, there = scores_now_and_in_a_fresh_process("toys@v1", xreg_home)
    assert np.array_equal(here, there)

    # serving adds the same prior: a candidate pool and the whole catalogue
    from xcross_registry import serving

    model = serving.load_model(registry, "toys@v1")
    seq = model.data.test[0]
    history = [model.data.items[i].id for i in seq.history]
    pool = [seq.target, 1, 2, 3]
    ranked = {r.item_id: r.score for r in serving.recommend(
        model, history, candidates=[model.data.items[i].id for i in pool], top=4)}
    expected = model.score(model.data, "test", [0], np.array([pool]))[0]
    assert np.allclose([ranked[model.data.items[i].id] for i in pool], expected, atol=1e-4)
    catalogue = serving.recommend(model, history, top=5)
    top = np.array([[model.positions()[r.item_id] for r in catalogue]])
    assert np.allclose([r.score for r in catalogue], model.score(model.data, "test", [0], top)[0], atol=1e-4)

    # zero-shot on tools: toys' counts say nothing about tools' items
    zero_shot = load_subject(registry, "toys@v1", domain="tools")
    assert zero_shot.scorer.item_prior.counts == {}
    assert not zero_shot.scorer.item_prior.scores(zero_shot.data.items).any()

    for args in (["toys"], ["tools"], ["toys", "--domain", "tools"], ["popularity:toys"]):
        result = xreg("evaluate", *args, "--max-users", "10", "--json")
        assert result.exit_code == 0, result.stderr
    rows = {row["subject"]: row for board in xreg("leaderboard", "toys", "--json").json()
            for row in board["rows"]}
    assert rows["toys@v1"]["popularity_prior"] is True
    assert rows["popularity:toys"]["popularity_prior"] is None
    tools = {row["subject"]: row for board in xreg("leaderboard", "tools", "--json").json()
             for row in board["rows"]}
    assert tools["tools@v1"]["popularity_prior"] is False
    assert tools["toys@v1:zero-shot"]["popularity_prior"] is False
    table = xreg("leaderboard", "toys", "--wide").stdout
    assert "prior" in table and any("toys@v1" in line and " yes " in line for line in table.splitlines())

    # the head-only baseline gets the same option
    head_only = xreg("train-adapter", "toys", *QUICK, "--head-only", "--popularity-prior",
                     "--base-model", tiny_base, "--json")
    assert head_only.exit_code == 0, head_only.stderr
    scorer, version = load_scorer(registry, f"toys@v{head_only.json()['version']}")
    assert version.status == "head-only" and scorer.item_prior.weight.item() != 0.0
    assert scorer.item_prior.counts == expected_counts(registry, "toys", version.training_config["training"])


@pytest.mark.slow
def test_composition_with_the_prior_reloads_with_identical_scores(xreg, synthetic_domains, tiny_base,
                                                                  xreg_home):
    for domain in ("toys", "tools"):  # sources trained with the prior: the composition's switch wins
        result = xreg("train-adapter", domain, *QUICK, "--popularity-prior", "--base-model", tiny_base)
        assert result.exit_code == 0, result.stderr
    assert xreg("add-domain", "kitchen", "--plugin", "synthetic", "--data",
                "kitchen?users=120&items=60&max_len=8").exit_code == 0
    for name, extra in (("kitchen-x", ["--popularity-prior"]), ("kitchen-plain", [])):
        result = xreg("compose", "--sources", "toys,tools", "--target", "kitchen", "--name", name,
                      *QUICK, "--fraction", "0.5", "--json", *extra)
        assert result.exit_code == 0, result.stderr
    registry = Registry()
    scorer, row = load_composition(registry, "kitchen-x")
    assert row.integrator_config["popularity_prior"] is True
    assert scorer.item_prior.weight.item() != 0.0
    assert scorer.item_prior.counts == expected_counts(registry, "kitchen", row.training_config["training"])
    assert load_composition(registry, "kitchen-plain")[0].item_prior is None
    merge = xreg("compose", "--sources", "toys,tools", "--target", "kitchen", "--name", "kitchen-merge",
                 "--method", "linear-merge", "--popularity-prior", *QUICK, "--no-evaluate")
    assert merge.exit_code == 0, merge.stderr
    merged, merge_row = load_composition(registry, "kitchen-merge")
    assert merged.item_prior.weight.item() != 0.0
    assert merged.item_prior.counts == expected_counts(registry, "kitchen", merge_row.training_config["training"])

    here, there = scores_now_and_in_a_fresh_process("kitchen-x", xreg_home)
    assert np.array_equal(here, there)
    rows = {r["subject"]: r for board in xreg("leaderboard", "kitchen", "--json").json()
            for r in board["rows"]}
    assert rows["kitchen-x"]["popularity_prior"] is True
    assert rows["kitchen-plain"]["popularity_prior"] is False
