"""Approximate nearest-neighbour retrieval for catalogues of millions (FAISS).

Why FAISS, and which index.  A dual model ranks a catalogue by inner products
``(scale·q + prior) · d_i + w · log(1 + count_i)``; exactly, that is one pass over all
N item vectors per request (1.5 GB of float32 at N = 1 million and 384 dimensions: far
past 50 ms on one core).  FAISS's inverted-file index (IVF) cuts it to the ``nprobe``
nearest of ``nlist`` k-means cells.  We chose FAISS over USearch because an IVF index
builds in minutes on one CPU core (k-means on a sample, then one assignment pass; an
HNSW graph over a million vectors takes far longer to insert on one core), builds
deterministically from a seed, and stores the cells' vectors as 8-bit scalar codes
(``IVF…,SQ8``: a quarter of the float32 size), while the exact float32 embeddings that
the exact path keeps anyway re-score the candidates it returns.  So an approximate
answer's items carry their exact scores, and only which items are found is
approximate (recall@10 against exact scoring is measured in
``benchmarks/ann_catalogue.py``).

The popularity prior is folded in as one more dimension (``d_i`` gets ``log(1+count_i)``,
the query gets ``w``), so the index ranks exactly what the model scores.

Below :attr:`AnnConfig.min_items` a catalogue is always scored exactly, and exact
scoring stays available for any catalogue (``exact=True``).  Index files are FAISS's
own binary format (no pickle), written beside the cached item embeddings under a key
that includes the model's digest.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ValidationError


@dataclass(frozen=True)
class AnnConfig:
    """When and how a catalogue gets an index.

    ``min_items``: catalogues smaller than this are scored exactly (an exact pass over
    100k items costs about as much as one history encoding).  ``nlist``: k-means cells
    (0: ``2·sqrt(N)`` rounded to a power of two, at least 39 training points each).  ``nprobe``: cells searched per query.
    ``rescore``: candidates taken from the 8-bit codes and re-scored exactly, per item
    asked for (a request for the top 10 re-scores ``10·rescore``).  ``train_size``:
    vectors k-means trains on.  ``seed`` makes the index the same on every build."""

    min_items: int = 100_000
    nlist: int = 0
    nprobe: int = 32
    rescore: int = 10
    train_size: int = 131_072
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_items", "nprobe", "rescore", "train_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"ann {name} must be a positive integer, not {value!r}")
        if not isinstance(self.nlist, int) or self.nlist < 0:
            raise ValidationError(f"ann nlist must be 0 (automatic) or positive, not {self.nlist!r}")

    def cells(self, items: int) -> int:
        """The number of k-means cells for a catalogue of ``items``."""
        if self.nlist:
            return self.nlist
        return max(1, min(items // 39, 2 ** round(math.log2(2 * math.sqrt(items)))))

    def key(self) -> str:
        """What distinguishes this index from other builds over the same vectors."""
        return f"ivf{self.nlist}-sq8-t{self.train_size}-s{self.seed}"


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - the `ann` extra is missing
        raise ValidationError("approximate retrieval needs FAISS: pip install 'xcross-registry[ann]'") from exc
    return faiss


class AnnIndex:
    """An IVF index with 8-bit codes over ``vectors [N, D]``, plus exact re-scoring."""

    def __init__(self, index: Any, config: AnnConfig) -> None:
        self.index = index
        self.config = config
        self.index.nprobe = config.nprobe

    @classmethod
    def build(cls, vectors: np.ndarray, config: AnnConfig) -> "AnnIndex":
        """Train k-means on a seeded sample of ``vectors`` and add all of them."""
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        count, dim = vectors.shape
        cells = config.cells(count)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, cells, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = config.seed
        sample = vectors
        if count > config.train_size:
            rows = np.random.default_rng(config.seed).choice(count, config.train_size, replace=False)
            sample = vectors[np.sort(rows)]
        index.train(sample)
        index.add(vectors)
        return cls(index, config)

    def search(self, queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The approximate top ``k`` rows of ``vectors`` for each query: item indices
        ``[B, k]`` (−1 where fewer were found) and their exact inner products."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        depth = min(self.index.ntotal, k * self.config.rescore)
        _, found = self.index.search(queries, depth)
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row, (query, candidates) in enumerate(zip(queries, found)):
            candidates = candidates[candidates >= 0]
            exact = vectors[candidates] @ query
            best = np.argsort(-exact, kind="stable")[:k]
            indices[row, :len(best)] = candidates[best]
            scores[row, :len(best)] = exact[best]
        return indices, scores

    def save(self, path: Path) -> None:
        """Write FAISS's binary format to a temporary file and rename it into place."""
        faiss = _faiss()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, config: AnnConfig, items: int) -> "AnnIndex | None":
        """The index stored at ``path``, or None when it is absent, damaged or not over
        ``items`` vectors (a cache is rebuilt, never trusted)."""
        faiss = _faiss()
        if not path.is_file():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            return None
        if index.ntotal != items:
            return None
        return cls(index, config)

    def memory_bytes(self) -> int:
        """Bytes of the serialised index (codes, lists, centroids)."""
        return int(_faiss().serialize_index(self.index).nbytes)
