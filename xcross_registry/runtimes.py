"""How a served catalogue ranker encodes request histories: a table of runtimes.

A whole-catalogue request is one history encoding plus one matrix-vector product; the
encoding is nearly all of its cost (``benchmarks/request_path.py`` prints the split and
the arithmetic floor).  The runtime that encodes it is a serving choice, not part of
the model: the catalogue's item embeddings are always PyTorch's, cached per model.

* ``torch`` (default): the scorer itself, in PyTorch eager mode under inference mode.
  Exact: a history scores the same in any batch, as evaluation scores it.
* ``folded``: a copy of the scorer with every LoRA update folded into its base weights
  (one matrix per X-Cross stream) and packed for oneDNN (:mod:`xcross_registry.folding`):
  no LoRA products and no hook per Linear.  Float32; embeddings move by ~3e-7.
* ``folded-bf16``: the same with bfloat16 products (float32 accumulation, everything
  else float32), on CPUs that multiply bfloat16 in hardware (AVX512-BF16, AMX); the
  fastest runtime that keeps rankings within the accuracy bound (docs/RESULTS.md).
* ``onnx``: the scorer's ``embed`` (encoder, X-Cross streams and hooks included,
  pooling, normalisation) exported once to ONNX and run by ONNX Runtime in float32.
  Its embeddings differ from PyTorch's in the last float bits (≤ 3e-7 measured on
  Tools), so it is opt-in; its paired NDCG@10 difference and speed are in
  ``docs/RESULTS.md`` (issue 25).  The exported file is cached under
  ``$XREG_HOME/cache/onnx`` by the model's digest and the exporting versions.

* ``onnx-int8``: the same export with int8 weights (ONNX Runtime's dynamic
  quantisation); faster again, and it changes rankings measurably: opt-in, with its
  paired NDCG@10 difference in ``docs/RESULTS.md``.

PyTorch's own dynamic int8 (``torch.ao``) was measured and not kept (RESULTS).
A new runtime is one :class:`Runtime` subclass registered in :data:`RUNTIMES`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from . import settings
from .errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from .subjects import LoadedSubject

Embed = Callable[..., "Tensor"]  # embed(input_ids=…, attention_mask=…) -> [B, H] float32


class Runtime(ABC):
    """One way of running a loaded model's history encoder."""

    name: ClassVar[str]
    exact: ClassVar[bool]  # whether it gives PyTorch's embeddings bit for bit

    @abstractmethod
    def embedder(self, model: "LoadedSubject") -> Embed | None:
        """The function that embeds tokenised histories (None: the scorer's own)."""

    def check(self) -> None:
        """Raise :class:`ValidationError` if this machine cannot run it (asked when the
        runtime is chosen, so that a service refuses to start rather than to load)."""


class TorchRuntime(Runtime):
    name = "torch"
    exact = True

    def embedder(self, model: "LoadedSubject") -> Embed | None:
        return None


class FoldedRuntime(Runtime):
    """The scorer's copy with every LoRA update folded into its base weights and packed
    for oneDNN (:mod:`xcross_registry.folding`): one product per Linear and no hook."""

    name = "folded"
    exact = False
    precision = "float32"

    def embedder(self, model: "LoadedSubject") -> Embed:
        from .folding import serving_copy

        return serving_copy(model.scorer, self.precision).embed


class FoldedBf16Runtime(FoldedRuntime):
    """``folded`` with bfloat16 products (float32 accumulation; everything else float32),
    on CPUs that multiply bfloat16 in hardware."""

    name = "folded-bf16"
    precision = "bfloat16"

    def check(self) -> None:
        from .folding import require_bfloat16

        require_bfloat16()


class OnnxRuntime(Runtime):
    """The scorer's ``embed`` exported to ONNX, run by ONNX Runtime on this process's
    torch thread count (the ``onnx`` extra)."""

    name = "onnx"
    exact = False

    def embedder(self, model: "LoadedSubject") -> Embed:
        try:
            import onnxruntime
        except ImportError as exc:
            raise ValidationError("--runtime onnx needs ONNX Runtime: pip install 'xcross-registry[onnx]'") from exc
        import torch

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(self._file(model)), options,
                                               providers=["CPUExecutionProvider"])

        def embed(input_ids: "Tensor", attention_mask: "Tensor") -> "Tensor":
            output = session.run(None, {"input_ids": input_ids.cpu().numpy(),
                                        "attention_mask": attention_mask.cpu().numpy()})[0]
            return torch.from_numpy(output)

        return embed

    def _file(self, model: "LoadedSubject") -> Path:
        """The ONNX file this runtime runs."""
        return self._exported(model)

    def _exported(self, model: "LoadedSubject") -> Path:
        """The model's float32 ONNX file, exported on first use and kept in the cache."""
        import onnxruntime
        import torch

        versions = f"{model.digest}:{torch.__version__}:{onnxruntime.__version__}:{model.scorer.config.max_length}"
        path = settings.home() / "cache" / "onnx" / f"{hashlib.sha256(versions.encode()).hexdigest()}.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            _cache_checked(path, lambda tmp: _export(model, tmp))
        return path


def _cache_checked(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file that ONNX Runtime must load first, so that
    the cache never holds a file it cannot run."""
    import onnxruntime

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _export(model: "LoadedSubject", target: Path) -> None:
    """Trace the scorer's ``embed`` with a dynamic batch and length into ``target``."""
    import torch

    scorer = model.scorer

    class Embedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scorer = scorer

        def forward(self, input_ids: "Tensor", attention_mask: "Tensor") -> "Tensor":
            return self.scorer.embed(input_ids, attention_mask)

    length = min(32, scorer.config.max_length)
    example = (torch.full((2, length), 1000, dtype=torch.long), torch.ones(2, length, dtype=torch.long))
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=scorer.config.max_length)
    shapes = ({0: batch, 1: tokens}, {0: batch, 1: tokens})
    with torch.no_grad():
        program = torch.onnx.export(Embedding().eval(), example, dynamic_shapes=shapes, dynamo=True,
                                    input_names=["input_ids", "attention_mask"], output_names=["xreg_history_vector"],
                                    verbose=False)
    program.save(str(target))


class OnnxInt8Runtime(OnnxRuntime):
    """The ``onnx`` export with its matrix products' weights quantised to int8 (ONNX
    Runtime's dynamic quantisation, one scale per tensor; activations quantised per
    call).  About twice ``onnx``'s speed on a CPU with VNNI, at an accuracy cost that is
    measured, not negligible (docs/RESULTS.md): opt-in only."""

    name = "onnx-int8"
    exact = False

    def _file(self, model: "LoadedSubject") -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source = self._exported(model)
        path = source.with_name(source.stem + "-int8.onnx")
        if not path.is_file():
            _cache_checked(path, lambda tmp: quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                                                              per_channel=False))
        return path


RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (TorchRuntime, FoldedRuntime, FoldedBf16Runtime,
                                                                  OnnxRuntime, OnnxInt8Runtime)}


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise ValidationError(f"unknown runtime {name!r}: use {', '.join(RUNTIMES)}")
    chosen = RUNTIMES[name]()
    chosen.check()
    return chosen


def use_runtime(model: "LoadedSubject", name: str) -> None:
    """Encode ``model``'s request histories with the runtime ``name`` from now on."""
    embed = runtime(name).embedder(model)
    model.derived["runtime"] = name
    if embed is None:
        model.derived.pop("embed", None)
    else:
        model.derived["embed"] = embed
