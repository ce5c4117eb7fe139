"""The approximate index for large catalogues: exact where every cell is searched, used
by serving above its threshold only, stored in the cache by the model's digest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("faiss", reason="the ann extra is not installed (pip install -e '.[ann]')")

from xcross_registry.ann import AnnConfig, AnnIndex  # noqa: E402
from xcross_registry.errors import ValidationError  # noqa: E402


def _unit(rows: int, dims: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_searching_every_cell_returns_the_exact_top_with_exact_scores():
    vectors, queries = _unit(2000, 24, 0), _unit(20, 24, 1) * 7.0
    index = AnnIndex.build(vectors, AnnConfig(min_items=1, nlist=16, nprobe=16))
    found, scores = index.search(queries, vectors, 10)
    exact = queries @ vectors.T
    for row in range(len(queries)):
        expected = np.argsort(-exact[row], kind="stable")[:10]
        assert found[row].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[row], exact[row, expected], rtol=1e-5)


def test_an_index_is_the_same_on_every_build_and_survives_its_file(tmp_path):
    vectors = _unit(3000, 16, 2)
    config = AnnConfig(min_items=1, nlist=32, nprobe=4, train_size=1000)
    first, second = AnnIndex.build(vectors, config), AnnIndex.build(vectors, config)
    queries = _unit(30, 16, 3)
    assert (first.search(queries, vectors, 10)[0] == second.search(queries, vectors, 10)[0]).all()
    first.save(tmp_path / "index.faiss")
    loaded = AnnIndex.load(tmp_path / "index.faiss", config, len(vectors))
    assert (loaded.search(queries, vectors, 10)[0] == first.search(queries, vectors, 10)[0]).all()
    assert AnnIndex.load(tmp_path / "index.faiss", config, len(vectors) + 1) is None  # another catalogue
    (tmp_path / "damaged.faiss").write_bytes(b"not an index")
    assert AnnIndex.load(tmp_path / "damaged.faiss", config, len(vectors)) is None
    with pytest.raises(ValidationError, match="nprobe must be a positive integer"):
        AnnConfig(nprobe=0)


@pytest.mark.slow
def test_serving_searches_the_index_above_its_threshold(xreg_home, tiny_base, monkeypatch):
    from xcross_registry import adapters, serving
    from xcross_registry.registry import Registry
    from xcross_registry.scorer import ScorerConfig
    from xcross_registry.training import TrainingConfig

    registry = Registry()
    registry.add_domain("toys", "synthetic", "toys?users=60&items=300&max_len=8")
    adapters.train_adapter(registry, "toys", base_model=tiny_base,
                           scorer_config=ScorerConfig(mode="dual", max_length=64, popularity_prior=True),
                           training_config=TrainingConfig(epochs=1, max_users=16, batch_size=8, negatives=3,
                                                          valid_users=10))
    model = serving.load_model(registry, "toys")
    with torch.no_grad():
        model.scorer.item_prior.weight.fill_(1.5)  # the prior's column must rank too
    every_cell = AnnConfig(min_items=100, nlist=8, nprobe=8)
    built = serving.catalogue(model, every_cell)
    assert built.index is not None and built.vectors.shape == (300, model.scorer.base.hidden_size + 1)
    history = [model.data.items[i].title for i in model.data.test[0].history]
    approximate = serving.recommend(model, history, top=10)
    exact = serving.recommend(model, history, top=10, exact=True)
    assert [r.item_id for r in approximate] == [r.item_id for r in exact]
    assert [r.score for r in approximate] == pytest.approx([r.score for r in exact], rel=1e-5)
    assert not {r.title for r in approximate} & set(history)  # the history is left out, as exactly

    # A reload reads the index from the cache instead of building it again.
    monkeypatch.setattr(AnnIndex, "build", classmethod(lambda cls, *a: pytest.fail("rebuilt")))
    again = serving.load_model(registry, "toys")
    assert serving.catalogue(again, every_cell).index is not None
    assert len(list((xreg_home / "cache" / "ann").iterdir())) == 1
    # Below the threshold there is no index: every request is scored exactly.
    small = serving.load_model(registry, "toys")
    assert serving.catalogue(small, AnnConfig(min_items=301)).index is None
