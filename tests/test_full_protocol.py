"""The full-catalogue protocol scores many users per call, so a dual scorer encodes
the catalogue once rather than once per small chunk of users (issue 11: on Tools the
old 64-user chunks re-encoded 5,820 items 35 times, hours on a CPU)."""

from __future__ import annotations

import numpy as np

from xcross_registry import evaluation
from xcross_registry.registry import Registry


def counting_scores(calls: list[int]):
    """Scores that depend only on (user, item), recording how many users each call got."""
    def score(data, split, users, matrix, progress=None):
        calls.append(len(users))
        users = np.asarray(users)[:, None]
        return np.sin(users * 7.0 + np.asarray(matrix) * 3.0)
    return score


def test_full_protocol_scores_the_catalogue_in_few_calls_with_the_same_ranks(xreg_home, monkeypatch):
    registry = Registry()
    registry.add_domain("tools", "synthetic", "tools?users=600&items=80&max_len=8")
    test_users = len(registry.domain_data("tools").test)
    assert test_users > evaluation.FULL_PROTOCOL_MIN_USERS_PER_CHUNK

    calls: list[int] = []
    whole = evaluation.evaluate_scores(registry, "tools", counting_scores(calls), subject_kind="baseline",
                                       subject_name="one-call", protocol="full")
    assert calls == [test_users]  # 120 users × 80 items fit the cell budget: one call

    monkeypatch.setattr(evaluation, "FULL_PROTOCOL_SCORE_CELLS", 1)  # force the 64-user floor
    calls.clear()
    chunked = evaluation.evaluate_scores(registry, "tools", counting_scores(calls), subject_kind="baseline",
                                         subject_name="chunked", protocol="full")
    assert calls == [64, test_users - 64]
    first = evaluation.load_ranks(registry, whole.ranks_digest)
    second = evaluation.load_ranks(registry, chunked.ranks_digest)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
