"""History runtimes: the folded copy and ONNX Runtime rank as PyTorch does, ONNX from a
cached export."""

from __future__ import annotations

import pytest

from xcross_registry.errors import ValidationError
from xcross_registry.runtimes import RUNTIMES, runtime


def test_unknown_runtime_names_the_known_ones():
    assert set(RUNTIMES) >= {"torch", "folded", "folded-bf16", "onnx", "onnx-int8"} and runtime("torch").exact
    with pytest.raises(ValidationError, match="unknown runtime 'tvm': use torch, folded, folded-bf16, onnx, onnx-int8"):
        runtime("tvm")


@pytest.mark.slow
def test_onnx_runtime_ranks_like_torch_and_exports_once(xreg_home, tiny_base, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
    from xcross_registry import adapters, runtimes, serving
    from xcross_registry.registry import Registry
    from xcross_registry.scorer import ScorerConfig
    from xcross_registry.training import TrainingConfig

    registry = Registry()
    registry.add_domain("toys", "synthetic", "toys?users=60&items=100&max_len=8")
    adapters.train_adapter(registry, "toys", base_model=tiny_base, scorer_config=ScorerConfig(mode="dual", max_length=64),
                           training_config=TrainingConfig(epochs=1, max_users=16, batch_size=8, negatives=3,
                                                          valid_users=10))
    model = serving.load_model(registry, "toys")
    histories = [[model.data.items[i].title for i in user.history] for user in model.data.test[:4]]
    exact = [serving.recommend(model, history, top=10) for history in histories]
    for name in ("folded", "onnx"):
        runtimes.use_runtime(model, name)
        fast = [serving.recommend(model, history, top=10) for history in histories]
        for mine, theirs in zip(fast, exact):
            assert [r.score for r in mine] == pytest.approx([r.score for r in theirs], abs=1e-4)
    assert len(list((xreg_home / "cache" / "onnx").glob("*.onnx"))) == 1
    monkeypatch.setattr(runtimes, "_export", lambda *a: pytest.fail("exported again"))
    again = serving.load_model(registry, "toys")
    runtimes.use_runtime(again, "onnx")
    assert [r.item_id for r in serving.recommend(again, histories[0], top=10)] == [r.item_id for r in fast[0]]
    # int8 quantises the cached export (no new export) into a file of its own; its
    # scores are close to, not equal to, the float ones.
    runtimes.use_runtime(again, "onnx-int8")
    quantised = serving.recommend(again, histories[0], top=10)
    assert len(quantised) == 10 and len(list((xreg_home / "cache" / "onnx").glob("*-int8.onnx"))) == 1
    assert [r.score for r in quantised] == pytest.approx([r.score for r in exact[0]], abs=0.5)
