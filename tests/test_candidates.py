"""Evaluation candidates: determinism, exclusion rules and the safetensors round trip."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xcross_registry.candidates import CandidateSet, exclusion_mask, sample_candidates
from xcross_registry.data import DomainData, Item, UserSequence
from xcross_registry.errors import ArtifactError, ValidationError


def _domain(n_items: int = 200, n_users: int = 60, seed: int = 5) -> DomainData:
    rng = np.random.default_rng(seed)

    def users(prefix: str, count: int) -> list[UserSequence]:
        return [UserSequence(user=f"{prefix}{u}",
                             items=tuple(int(i) for i in rng.integers(0, n_items, rng.integers(3, 9))))
                for u in range(count)]

    return DomainData(items=[Item(id=f"i{i}", title=f"item {i}") for i in range(n_items)],
                      train=users("a", n_users), valid=users("v", 10), test=users("t", n_users))


@pytest.fixture(scope="module")
def data() -> DomainData:
    return _domain()


@pytest.mark.parametrize("protocol", ["sampled", "sampled-pop", "full"])
def test_same_seed_same_bytes_and_round_trip(data, protocol):
    first = sample_candidates(data, "test", protocol, seed=3)
    assert first.to_bytes() == sample_candidates(data, "test", protocol, seed=3).to_bytes()
    back = CandidateSet.from_bytes(first.to_bytes())
    assert (back.protocol, back.split, back.seed, back.fingerprint, back.negatives) == \
           (protocol, "test", 3, data.fingerprint(), first.negatives)
    assert back.candidates.dtype == np.int64 and np.array_equal(back.candidates, first.candidates)
    assert np.array_equal(back.users, first.users)


@pytest.mark.parametrize("protocol", ["sampled", "sampled-pop"])
def test_different_seed_different_bytes(data, protocol):
    assert (sample_candidates(data, "test", protocol, seed=0).to_bytes()
            != sample_candidates(data, "test", protocol, seed=1).to_bytes())


@pytest.mark.parametrize("protocol", ["sampled", "sampled-pop"])
def test_negatives_are_distinct_and_never_the_users_items(data, protocol):
    result = sample_candidates(data, "test", protocol, seed=0)
    assert result.candidates.shape == (len(data.test), 30)
    for row, user in zip(result.candidates, result.users):
        sequence = data.test[user]
        assert row[0] == sequence.target
        assert len(set(row.tolist())) == 30
        assert not set(row[1:].tolist()) & set(sequence.items)


def test_popularity_negatives_follow_training_popularity():
    data = _domain(n_items=120, n_users=300)
    popularity = np.array(data.popularity())
    result = sample_candidates(data, "test", "sampled-pop", seed=0, negatives=10)
    drawn = np.bincount(result.candidates[:, 1:].ravel(), minlength=len(data.items))
    assert drawn[popularity == 0].sum() == 0
    uniform = np.bincount(sample_candidates(data, "test", "sampled", seed=0, negatives=10)
                          .candidates[:, 1:].ravel(), minlength=len(data.items))
    popular = popularity >= np.quantile(popularity, 0.9)
    assert drawn[popular].sum() > 1.2 * uniform[popular].sum()


def test_uniform_negatives_cover_the_catalogue(data):
    result = sample_candidates(data, "test", "sampled", seed=0)
    counts = np.bincount(result.candidates[:, 1:].ravel(), minlength=len(data.items))
    expected = counts.sum() / len(data.items)
    assert counts.min() > 0.2 * expected and counts.max() < 2.5 * expected


def test_full_protocol_and_exclusion_mask(data):
    result = sample_candidates(data, "valid", "full", seed=0)
    assert result.negatives == 0 and result.candidates.shape == (10, 1)
    mask = exclusion_mask(data, "valid", result.users[:4])
    for row, user in enumerate(result.users[:4]):
        assert set(np.flatnonzero(mask[row]).tolist()) == set(data.valid[user].items)


def test_max_users_takes_a_seeded_subset_in_split_order(data):
    result = sample_candidates(data, "test", "sampled", seed=2, max_users=7)
    assert len(result.users) == 7 and np.all(np.diff(result.users) > 0)
    assert np.array_equal(result.users, sample_candidates(data, "test", "sampled", seed=2, max_users=7).users)


def test_bad_requests_are_validation_errors(data):
    with pytest.raises(ValidationError, match="unknown evaluation protocol 'random'"):
        sample_candidates(data, "test", "random")
    with pytest.raises(ValidationError, match="unknown split"):
        sample_candidates(data, "dev", "sampled")
    with pytest.raises(ValidationError, match="negatives"):
        sample_candidates(_domain(n_items=20, n_users=5), "test", "sampled", negatives=29)


def test_garbage_bytes_are_an_artifact_error():
    with pytest.raises(ArtifactError, match="not a candidate set"):
        CandidateSet.from_bytes(b"not safetensors at all")


def test_module_does_not_import_torch():
    code = "import sys, xcross_registry.candidates, xcross_registry.metrics; print('torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert output == "False"
