"""``--negatives N`` for the sampled protocols (stored as their own label, ``sampled:100``),
Recall@10/20 and NDCG@20 on every result, and evaluations stored before those metrics
existed: their per-user ranks give the new metrics on the leaderboard."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from xcross_registry.candidates import DEFAULT_NEGATIVES, parse_protocol, protocol_label
from xcross_registry.errors import ValidationError
from xcross_registry.evaluation import load_ranks
from xcross_registry.metrics import summarize
from xcross_registry.registry import Registry
from xcross_registry.schema import EvaluationResult

NEW_METRICS = ("hit@20", "ndcg@20", "recall@10", "recall@20")


def test_labels_keep_the_default_count_under_its_plain_name():
    assert protocol_label("sampled") == "sampled" and protocol_label("full") == "full"
    assert protocol_label("sampled", DEFAULT_NEGATIVES) == "sampled"
    assert protocol_label("sampled", 100) == "sampled:100"
    assert protocol_label("sampled-pop:50") == "sampled-pop:50"
    assert parse_protocol("sampled:100") == ("sampled", 100)
    assert parse_protocol("full") == ("full", 0)
    for label in ("full:10", "sampled:0", "sampled:ten", "leave-one-out"):
        with pytest.raises(ValidationError, match="unknown evaluation protocol"):
            parse_protocol(label)
    with pytest.raises(ValidationError, match="--negatives applies to sampled and sampled-pop"):
        protocol_label("full", 100)


def test_negatives_count_is_stored_under_its_label_and_never_draws_history(xreg, synthetic_domains):
    plain = xreg("evaluate", "popularity:tools", "--json")
    hundred = xreg("evaluate", "popularity:tools", "--negatives", "40", "--json")
    assert plain.exit_code == 0 and hundred.exit_code == 0, hundred.stderr
    assert (plain.json()["protocol"], plain.json()["negatives"]) == ("sampled", 29)
    assert (hundred.json()["protocol"], hundred.json()["negatives"]) == ("sampled:40", 40)
    assert hundred.json()["candidates_digest"] != plain.json()["candidates_digest"]
    for name in NEW_METRICS:
        assert name in hundred.json()["metrics"]
    registry = Registry()
    stored, _ = registry.candidate_set("tools", "test", "sampled:40", 0)
    data = registry.domain_data("tools")
    assert stored.candidates.shape[1] == 41 and stored.negatives == 40
    for user, row in zip(stored.users, stored.candidates):
        assert not set(row[1:].tolist()) & set(data.test[int(user)].items)
    # boards keep the two counts apart; --protocol takes the label
    boards = xreg("leaderboard", "tools", "--protocol", "sampled:40", "--json").json()
    assert [(b["protocol"], len(b["rows"])) for b in boards] == [("sampled:40", 1)]
    assert boards[0]["rows"][0]["negatives"] == 40


@pytest.mark.parametrize("args, message", [
    (["--protocol", "full", "--negatives", "100"], "error: the full protocol ranks the whole catalogue"),
    (["--negatives", "0"], "error: --negatives must be at least 1, not 0"),
    (["--negatives", "60"], "error: user 0 of split 'test' has only"),
])
def test_bad_negatives_are_one_line_and_store_nothing(xreg, synthetic_domains, args, message):
    result = xreg("evaluate", "popularity:tools", *args)
    assert result.exit_code == 1 and result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert Registry().evaluations("tools") == []


def test_old_evaluations_get_the_new_metrics_from_their_stored_ranks(xreg, synthetic_domains):
    full = xreg("evaluate", "popularity:tools", "--protocol", "full", "--json")
    assert full.exit_code == 0, full.stderr
    registry = Registry()
    with registry.session() as session:  # the row as it was stored before the new metrics
        row = session.scalar(select(EvaluationResult))
        stored = dict(row.metrics)
        stored["summary"] = {k: v for k, v in stored["summary"].items() if k not in NEW_METRICS}
        row.metrics = stored
    board = xreg("leaderboard", "tools", "--json").json()[0]
    shown = board["rows"][0]["metrics"]
    _, ranks = load_ranks(registry, full.json()["ranks_digest"])
    expected = summarize(ranks, seed=0)
    for name in ("recall@10", "recall@20", "ndcg@20"):
        assert shown[name] == {"mean": expected[name].mean, "low": expected[name].low,
                               "high": expected[name].high} == full.json()["metrics"][name]
    assert shown["recall@20"]["mean"] == pytest.approx(float(np.mean(ranks <= 20)))
