"""Scoring modes are objects: the table, the capabilities, and a third mode that is one class.

The acceptance test defines a toy mode here, registers it through the public table and
uses it through the library and the CLI, without any library module knowing it.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_subprocess
from test_training import config as training_config
from test_training import make_scorer, toy_data
from xcross_registry.data import Item
from xcross_registry.errors import ValidationError
from xcross_registry.scorer import Scorer, ScorerConfig
from xcross_registry.scoring import score_candidates
from xcross_registry.scoring_modes import (
    SCORING_MODES,
    ScoringMode,
    catalogue_rankers,
    register_scoring_mode,
    require_catalogue_ranker,
    scoring_mode,
)
from xcross_registry.scoring_modes.cross import CrossMode
from xcross_registry.scoring_modes.dual import DualMode
from xcross_registry.templates import DEFAULT_TEMPLATE
from xcross_registry.training import train_scorer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


# -- the toy: a two-tower mode whose head is a learned bilinear form ---------------------

class BilinearHead(nn.Module):
    """``q · W · d``, W starting at the identity (the base model's dot product)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(hidden_size))

    def forward(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        queries = queries @ self.weight
        if documents.dim() == 3:
            return torch.einsum("bd,bcd->bc", queries, documents)
        return queries @ documents.T


class ToyMode(ScoringMode):
    """History and item encoded apart (unnormalised pooled states), scored by a bilinear
    form: a catalogue ranker written against the interface alone."""

    name = "toy"
    ranks_catalogue = True
    shares_negatives = False

    def make_head(self, info, config):
        return BilinearHead(info.hidden_size)

    def prepare(self, scorer, histories, candidates, template, in_batch):
        budget = scorer.config.max_length
        queries = scorer.tokenize([template.render_query(h, scorer.tokenizer, budget) for h in histories])
        documents = scorer.tokenize([template.render_document(item) for row in candidates for item in row])
        return {**queries, "doc_input_ids": documents["input_ids"],
                "doc_attention_mask": documents["attention_mask"]}

    def forward(self, scorer, num_candidates, in_batch_columns, input_ids, attention_mask,
                doc_input_ids, doc_attention_mask):
        queries = scorer.embed(input_ids, attention_mask)
        documents = scorer.embed(doc_input_ids, doc_attention_mask).view(len(queries), num_candidates, -1)
        scores = scorer.head(queries, documents)
        if in_batch_columns:
            scores = torch.cat([scores, scorer.head(queries, documents[:, 0])], dim=1)
        return scores

    def score_embeddings(self, scorer, queries, documents):
        return scorer.head(queries, documents)


@pytest.fixture
def toy_mode():
    """The toy registered through the public table for one test, then removed."""
    register_scoring_mode(ToyMode)
    yield ToyMode
    SCORING_MODES.pop(ToyMode.name)


# -- the table ----------------------------------------------------------------------------

def test_table_names_the_built_ins_and_their_capabilities():
    assert SCORING_MODES == {"cross": CrossMode, "dual": DualMode}
    assert isinstance(scoring_mode("cross"), CrossMode) and isinstance(scoring_mode("dual"), DualMode)
    assert (CrossMode.ranks_catalogue, DualMode.ranks_catalogue) == (False, True)
    assert (CrossMode.shares_negatives, DualMode.shares_negatives) == (False, True)
    assert catalogue_rankers() == ["dual"]


def test_unknown_mode_is_one_validation_error_naming_the_known_ones():
    with pytest.raises(ValidationError) as caught:
        scoring_mode("bi")
    assert str(caught.value) == "unknown scoring mode 'bi'; known: cross, dual"
    with pytest.raises(ValidationError, match=re.escape("unknown scoring mode 'bi'; known: cross, dual")):
        ScorerConfig(mode="bi")


def test_registration_refuses_duplicates_and_non_modes():
    class Impostor(CrossMode):
        name = "dual"

    with pytest.raises(ValidationError, match=re.escape("scoring mode 'dual' is already registered (DualMode)")):
        register_scoring_mode(Impostor)
    with pytest.raises(ValidationError, match="ScoringMode subclass"):
        register_scoring_mode(object)

    class Nameless(CrossMode):
        name = ""

    with pytest.raises(ValidationError, match="non-empty name"):
        register_scoring_mode(Nameless)
    assert SCORING_MODES == {"cross": CrossMode, "dual": DualMode}


def test_registration_is_a_decorator_and_the_new_mode_is_usable(toy_mode):
    assert SCORING_MODES["toy"] is ToyMode and isinstance(scoring_mode("toy"), ToyMode)
    assert ScorerConfig(mode="toy").mode == "toy"
    assert catalogue_rankers() == ["dual", "toy"]


def test_require_catalogue_ranker_messages():
    require_catalogue_ranker("toys@v1", "dual", "whole-catalogue ranking")
    require_catalogue_ranker("toys@v1", None, "whole-catalogue ranking")  # imported: checked after loading
    require_catalogue_ranker("toys@v1", "unregistered", "whole-catalogue ranking")  # its load will say
    with pytest.raises(ValidationError) as caught:
        require_catalogue_ranker("toys@v1", "cross", "whole-catalogue ranking", " (give candidates)")
    assert str(caught.value) == ("whole-catalogue ranking needs a dual model; toys@v1 is a cross model "
                                 "(give candidates)")


def test_table_imports_without_torch():
    probe = ("import sys\n"
             "from xcross_registry.scoring_modes import SCORING_MODES, require_catalogue_ranker\n"
             "print(sorted((n, c.ranks_catalogue) for n, c in SCORING_MODES.items()))\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules))\n")
    result = run_subprocess([sys.executable, "-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[('cross', False), ('dual', True)]", "[]"]


# -- the scorer delegates to its mode -----------------------------------------------------

@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_scorer_takes_its_head_from_its_mode(tiny_base, mode):
    scorer = make_scorer(tiny_base, mode)
    assert type(scorer.mode) is SCORING_MODES[mode]
    expected = type(SCORING_MODES[mode]().make_head(scorer.base, scorer.config))
    assert type(scorer.head) is expected


def test_catalogue_methods_refuse_a_mode_that_cannot_rank(tiny_base):
    scorer = make_scorer(tiny_base, "cross")
    with pytest.raises(ValidationError) as caught:
        scorer.encode_histories([[Item("a", "red ball")]], DEFAULT_TEMPLATE)
    assert str(caught.value) == "encode_histories needs a dual model; this scorer is a cross model"


def test_toy_mode_trains_scores_saves_and_ranks_through_the_library(tiny_base, toy_mode, tmp_path):
    data = toy_data()
    scorer = make_scorer(tiny_base, "toy")
    assert isinstance(scorer.head, BilinearHead) and scorer.head.weight.requires_grad
    start = scorer.head.weight.detach().clone()
    result = train_scorer(scorer, data, DEFAULT_TEMPLATE, training_config(epochs=2, in_batch_negatives=True))
    assert np.isfinite(result.epochs[-1].loss) and result.best_metrics is not None
    assert not torch.equal(scorer.head.weight, start)  # the head got gradients and moved

    users, matrix = [0, 2, 5], np.array([[1, 9, 17], [2, 3, 30], [31, 0, 9]])
    scores = score_candidates(scorer, data, DEFAULT_TEMPLATE, "test", matrix, users, batch_size=4)
    histories = [[data.items[i] for i in data.test[u].history] for u in users]
    with torch.no_grad():
        direct = scorer.score(histories, [[data.items[i] for i in row] for row in matrix], DEFAULT_TEMPLATE)
        catalogue = scorer.score_embeddings(scorer.encode_histories(histories, DEFAULT_TEMPLATE),
                                            scorer.encode_items(data.items, DEFAULT_TEMPLATE, batch_size=7))
    assert np.allclose(scores, direct.numpy(), atol=1e-4)
    assert np.allclose(catalogue.numpy()[np.arange(3)[:, None], matrix], scores, atol=1e-4)

    scorer.save_pretrained(tmp_path)
    loaded = Scorer.from_pretrained(tmp_path)
    assert loaded.config.mode == "toy" and isinstance(loaded.mode, ToyMode)
    assert np.allclose(score_candidates(loaded, data, DEFAULT_TEMPLATE, "test", matrix, users), scores, atol=1e-5)


# -- acceptance: the toy through the CLI, no library module edited ------------------------

QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3", "--valid-users", "4"]


def test_a_third_mode_is_one_class_trained_evaluated_listed_and_served_by_the_cli(
        xreg, synthetic_domains, tiny_base, toy_mode):
    trained = xreg("train-adapter", "toys", "--mode", "toy", *QUICK, "--base-model", tiny_base)
    assert trained.exit_code == 0, trained.stderr

    evaluated = xreg("evaluate", "toys", "--max-users", "20")
    assert evaluated.exit_code == 0, evaluated.stderr

    board = xreg("leaderboard", "toys", "--json")
    assert board.exit_code == 0, board.stderr
    assert [row["mode"] for row in board.json()[0]["rows"] if row["subject"] == "toys@v1"] == ["toy"]

    shown = xreg("show", "toys@v1", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert shown.json()["training_config"]["scorer"]["mode"] == "toy"

    items = xreg("items", "toys", "--json")
    assert items.exit_code == 0, items.stderr
    titles = [item["title"] for item in items.json()[:3]]
    ranked = xreg("recommend", "toys", "--history", "; ".join(titles), "--top", "4", "--json")
    assert ranked.exit_code == 0, ranked.stderr
    answer = ranked.json()
    assert len(answer) == 4 and [row["rank"] for row in answer] == [1, 2, 3, 4]
    assert not {row["title"] for row in answer} & set(titles)  # the history is not recommended back


@pytest.mark.parametrize("mode", ["cross", "dual"])
def test_serving_pair_scores_match_each_pair_scored_alone(tiny_base, mode):
    """The default ``score_pairs`` (one pass per pair, what a new joint mode gets for
    serving) and cross's shared passes both give each pair its own scores."""
    data = toy_data()
    scorer = make_scorer(tiny_base, mode).eval()
    pairs = [([data.items[0], data.items[3]], [data.items[5], data.items[7], data.items[9]]),
             ([data.items[2]], [data.items[1], data.items[4]]),
             ([data.items[6], data.items[8], data.items[10]], [data.items[11]])]
    with torch.inference_mode():
        alone = [scorer.score([history], [pool], DEFAULT_TEMPLATE)[0].tolist() for history, pool in pairs]
        default = ScoringMode.score_pairs(scorer.mode, scorer, DEFAULT_TEMPLATE, pairs)
        own = scorer.mode.score_pairs(scorer, DEFAULT_TEMPLATE, pairs)
    assert [len(row) for row in default] == [3, 2, 1] and default == alone
    assert np.allclose(np.concatenate(own), np.concatenate(alone), atol=1e-4)
