"""Metrics against hand-computed values, including ties and K beyond the list."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xcross_registry.metrics import (bootstrap_interval, full_ranks, per_user_metrics, sampled_ranks,
                                     summarize)


def test_ranks_count_ties_against_the_positive():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],   # clear winner → 1
        [0.5, 0.5, 0.1, 0.0],   # one tie → 2
        [0.2, 0.2, 0.2, 0.2],   # all tied → last
        [0.1, 0.3, 0.2, 0.0],   # two above → 3
    ])
    assert sampled_ranks(scores).tolist() == [1, 2, 4, 3]


def test_nan_scores_count_against_the_positive():
    assert sampled_ranks(np.array([[np.nan, 0.0, 1.0], [1.0, np.nan, 0.0]])).tolist() == [3, 2]


def test_per_user_values_by_hand():
    values = per_user_metrics(np.array([1, 2, 4, 3]), ks=(1, 3, 10))
    assert values["hit@1"].tolist() == [1, 0, 0, 0]
    assert values["hit@3"].tolist() == [1, 1, 0, 1]
    assert values["hit@10"].tolist() == [1, 1, 1, 1]  # K larger than the 4-item list
    assert values["ndcg@3"] == pytest.approx([1, 1 / math.log2(3), 0, 0.5])
    assert values["ndcg@10"] == pytest.approx([1, 1 / math.log2(3), 1 / math.log2(5), 0.5])
    assert values["mrr"] == pytest.approx([1, 0.5, 0.25, 1 / 3])
    assert values["ndcg@1"].tolist() == values["hit@1"].tolist()


def test_full_ranks_exclude_history_and_self():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.7],
                       [0.3, 0.2, 0.1, 0.0, 0.4]])
    positives = np.array([0, 3])
    exclude = np.array([[True, True, False, False, False],   # item 1 is history: its 0.9 does not count
                        [False, False, False, True, False]])  # positive masked: still ranked by its score
    # user 0: 0.5 (tie, counts) and 0.7 beat it → 3; user 1: everything else beats 0.0 → 5
    assert full_ranks(scores, positives, exclude).tolist() == [3, 5]
    assert full_ranks(scores, positives).tolist() == [4, 5]


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(1).random(500)
    low, high = bootstrap_interval(values, seed=0)
    assert low < values.mean() < high
    assert high - low < 0.12
    assert bootstrap_interval(values, seed=0) == (low, high)
    assert bootstrap_interval(values, seed=1) != (low, high)
    assert bootstrap_interval(np.ones(10), seed=0) == (1.0, 1.0)


def test_summarize_means_and_intervals():
    summary = summarize(np.array([1, 2, 4, 3]), ks=(1,), seed=0, n_boot=200, recall_ks=())
    assert set(summary) == {"hit@1", "ndcg@1", "mrr"}
    assert summary["hit@1"].mean == pytest.approx(0.25)
    assert summary["mrr"].mean == pytest.approx((1 + 0.5 + 0.25 + 1 / 3) / 4)
    assert summary["mrr"].low <= summary["mrr"].mean <= summary["mrr"].high


def test_recall_and_ndcg_at_20_by_hand():
    # ranks in a full-catalogue ranking: inside the top 10, between 11 and 20, beyond 20
    ranks = np.array([1, 7, 12, 20, 21, 300])
    values = per_user_metrics(ranks)
    assert values["recall@10"].tolist() == [1, 1, 0, 0, 0, 0]
    assert values["recall@20"].tolist() == [1, 1, 1, 1, 0, 0]
    assert values["recall@20"].tolist() == values["hit@20"].tolist()  # one held-out item each
    assert values["ndcg@20"] == pytest.approx([1, 1 / 3, 1 / math.log2(13), 1 / math.log2(21), 0, 0])
    summary = summarize(ranks, seed=0, n_boot=100)
    assert summary["recall@20"].mean == pytest.approx(4 / 6)
    assert summary["ndcg@20"].mean == pytest.approx((1 + 1 / 3 + 1 / math.log2(13) + 1 / math.log2(21)) / 6)


def test_new_metrics_leave_the_old_ones_exactly_as_they_were():
    """An interval is drawn per metric with the same seed: the numbers stored before
    Recall@K and NDCG@20 existed are reproduced bit for bit."""
    ranks = np.random.default_rng(4).integers(1, 31, size=300)
    before = summarize(ranks, ks=(1, 3, 10), seed=0, recall_ks=())
    after = summarize(ranks, seed=0)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {"hit@20", "ndcg@20", "recall@10", "recall@20"}
