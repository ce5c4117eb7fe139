"""A catalogue of a million items: the approximate index against exact scoring (issue 25).

Encoding a million titles with MiniLM takes days on this CPU, so the million item
vectors are made from a real model's vectors, and the method is printed with the
numbers:

1. the real vectors: NAME's cached item embeddings (a dual model's whole catalogue,
   e.g. the 5,820 Amazon Tools titles), and its real query vectors: the encodings of
   ``--queries`` test users' histories through the same model (``scale·q + prior``);
2. each generated item is a random chord between two real items plus Gaussian noise,
   renormalised: ``normalize(λ·e_a + (1−λ)·e_b + σ·g)``, ``λ ~ U(0, 1)``,
   ``g ~ N(0, I/H)``; the real items are kept among the million.  The script prints the
   nearest-neighbour cosine of real and generated items (on a sample) so the spread
   can be compared.

Then it builds the index as serving does (:class:`xcross_registry.ann.AnnIndex`, one
thread), and prints build time, the index's size and the process's resident memory,
recall@10 against exact scoring for each ``--nprobe``, and p50/p95 per request (one
query at a time, one thread), next to exact scoring of the same million.  Usage::

    XREG_HOME=... OMP_NUM_THREADS=1 python benchmarks/ann_catalogue.py tools-serve --items 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np

MAX_ITEMS = 5_000_000


def generate(real: np.ndarray, count: int, sigma: float, seed: int) -> np.ndarray:
    """``count`` unit vectors: the real ones, then noisy chords between random pairs."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    out[:len(real)] = real
    for start in range(len(real), count, 100_000):
        stop = min(count, start + 100_000)
        a, b = rng.integers(0, len(real), (2, stop - start))
        mix = rng.random((stop - start, 1), dtype=np.float32)
        block = mix * real[a] + (1 - mix) * real[b]
        block += rng.standard_normal(block.shape, dtype=np.float32) * (sigma / np.sqrt(real.shape[1]))
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def nearest_cosine(vectors: np.ndarray, rows: np.ndarray) -> float:
    """Median cosine of each sampled row to its nearest other row of ``vectors``."""
    best = []
    for row in rows:
        sims = vectors @ vectors[row]
        sims[row] = -np.inf
        best.append(float(sims.max()))
    return statistics.median(best)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    tops = []
    for start in range(0, len(queries), 16):
        scores = queries[start:start + 16] @ vectors.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        tops.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(tops)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a dual model in the registry at $XREG_HOME (its catalogue cache is used)")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sigma", type=float, default=0.5, help="noise norm relative to a unit vector")
    parser.add_argument("--nprobe", default="8,16,32,64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.items <= MAX_ITEMS:
        raise SystemExit(f"--items must be 1..{MAX_ITEMS}")

    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    from xcross_registry import serving
    from xcross_registry.ann import AnnConfig, AnnIndex
    from xcross_registry.registry import Registry
    from xcross_registry.serving import encode_histories

    model = serving.load_model(Registry(), args.name)
    real = serving.item_embeddings(model).numpy().astype(np.float32)
    users = [u for u in model.data.test if u.history][:args.queries]
    with torch.inference_mode():
        encoded = encode_histories(model, [[model.data.items[i] for i in u.history] for u in users])
        queries = model.scorer.mode.query_vectors(model.scorer, encoded).float().numpy()

    began = time.perf_counter()
    vectors = generate(real, args.items, args.sigma, args.seed)
    generate_s = time.perf_counter() - began
    rng = np.random.default_rng(args.seed + 1)
    real_nn = nearest_cosine(real, rng.choice(len(real), 200, replace=False))
    generated_rows = rng.choice(np.arange(len(real), len(vectors)), 200, replace=False)
    generated_nn = nearest_cosine(vectors, generated_rows)

    truth = exact_top(vectors, queries, 10)
    exact_times = []
    with torch.inference_mode():
        table = torch.from_numpy(vectors)
        for query in torch.from_numpy(queries)[:50]:
            t = time.perf_counter()
            torch.topk(table @ query, 10)
            exact_times.append(time.perf_counter() - t)

    rss_before = rss_mb()
    config = AnnConfig(min_items=1, seed=args.seed)
    began = time.perf_counter()
    index = AnnIndex.build(vectors, config)
    build_s = time.perf_counter() - began
    rss_after = rss_mb()

    load = os.getloadavg()
    print(f"# {args.items:,} items x {vectors.shape[1]} dims: {len(real):,} real item vectors of {args.name} "
          f"({model.domain}) + {args.items - len(real):,} generated (noisy chords between two real items, "
          f"sigma {args.sigma}); {len(queries)} real test-user queries; 1 thread; load {load[0]:.2f} {load[1]:.2f}")
    print(f"nearest-neighbour cosine (median of 200): real items among real {real_nn:.3f}, "
          f"generated items among all {generated_nn:.3f}; generation {generate_s:.1f} s")
    print(f"index {type(index.index).__name__}: {index.index.nlist} cells, 8-bit codes, exact re-scoring of "
          f"{config.rescore}x the asked items; build {build_s:.1f} s; serialised {index.memory_bytes() / 2**20:.0f} MiB; "
          f"process peak RSS {rss_before:.0f} -> {rss_after:.0f} MiB (float32 vectors: {vectors.nbytes / 2**20:.0f} MiB)")
    print(f"exact scoring (torch matvec + top-k): p50 {statistics.median(exact_times) * 1e3:.1f} ms, "
          f"p95 {sorted(exact_times)[int(0.95 * len(exact_times))] * 1e3:.1f} ms")
    print(f"{'nprobe':>6} {'recall@10':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for nprobe in [int(n) for n in args.nprobe.split(",")]:
        index.index.nprobe = nprobe
        times, recalls = [], []
        for query, expected in zip(queries, truth):
            t = time.perf_counter()
            found, _ = index.search(query[None, :], vectors, 10)
            times.append(time.perf_counter() - t)
            recalls.append(len(set(found[0].tolist()) & set(expected.tolist())) / 10)
        times.sort()
        print(f"{nprobe:>6} {statistics.mean(recalls):>9.4f} {statistics.median(times) * 1e3:>8.2f} "
              f"{times[int(0.95 * len(times))] * 1e3:>8.2f}")


if __name__ == "__main__":
    main()
