"""What a faster history runtime costs in accuracy: paired NDCG@10 on a domain's test users.

For NAME (a dual model in ``$XREG_HOME``) each test user's history is encoded once per
runtime (``torch`` first, then each of ``--runtimes``, see
``xcross_registry/runtimes.py``), scored against the same cached catalogue embeddings
(plus the model's popularity prior), and ranked on two protocols: the whole catalogue
(history items left out, as serving does) and the domain's stored ``sampled`` candidate
set (1 positive + 29 negatives, what the leaderboard ranks).  It prints NDCG@10 per
runtime and the paired difference against ``torch`` with a 95% bootstrap interval, plus
how many users' top 10 of the whole catalogue are identical.  Usage::

    XREG_HOME=... OMP_NUM_THREADS=1 python benchmarks/runtime_accuracy.py tools-serve --runtimes onnx
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--runtimes", default="onnx")
    parser.add_argument("--max-users", type=int, default=0, help="0: every test user")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from xcross_registry import serving
    from xcross_registry.metrics import bootstrap_interval, full_ranks, per_user_metrics, sampled_ranks
    from xcross_registry.registry import Registry
    from xcross_registry.runtimes import use_runtime

    registry = Registry()
    model = serving.load_model(registry, args.name)
    found = serving.catalogue(model)
    candidates, _ = registry.candidate_set(model.domain, "test", "sampled", 0)
    test = model.data.test
    rows = [(k, int(u)) for k, u in enumerate(candidates.users) if len(test[int(u)].history)]
    if args.max_users:
        rows = rows[:args.max_users]
    names = ["torch", *args.runtimes.split(",")]
    results: dict[str, dict[str, np.ndarray]] = {}
    tops: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name in names:
        use_runtime(model, name)
        began = time.perf_counter()
        full, sampled, top = [], [], []
        with torch.inference_mode():
            for start in range(0, len(rows), 32):
                chunk = rows[start:start + 32]
                users = [test[u] for _, u in chunk]
                encoded = serving.encode_histories(model, [[model.data.items[i] for i in u.history] for u in users])
                scores = torch.cat([model.scorer.score_embeddings(q, found.embeddings) for q in encoded.split(1)])
                scores = scores.float().cpu()
                if found.prior is not None:
                    scores += found.prior
                scores = scores.numpy()
                exclude = np.zeros_like(scores, dtype=bool)
                for r, user in enumerate(users):
                    exclude[r, list(user.history)] = True
                positives = np.array([u.items[-1] for u in users])
                full.append(full_ranks(scores, positives, exclude))
                matrix = candidates.candidates[[k for k, _ in chunk]]
                sampled.append(sampled_ranks(np.take_along_axis(scores, matrix, axis=1)))
                masked = np.where(exclude, -np.inf, scores)
                top.append(np.argsort(-masked, axis=1, kind="stable")[:, :10])
        seconds[name] = time.perf_counter() - began
        results[name] = {"full": per_user_metrics(np.concatenate(full))["ndcg@10"],
                         "sampled": per_user_metrics(np.concatenate(sampled))["ndcg@10"]}
        tops[name] = np.concatenate(top)

    load = os.getloadavg()
    print(f"# {args.name} on {model.domain}: {len(rows)} test users, {len(model.data.items)} items; "
          f"load {load[0]:.2f} {load[1]:.2f}")
    for protocol in ("full", "sampled"):
        for name in names:
            values = results[name][protocol]
            line = f"{protocol:<8} {name:<6} NDCG@10 {values.mean():.4f}"
            if name != "torch":
                diff = values - results["torch"][protocol]
                low, high = bootstrap_interval(diff, seed=0, n_boot=2000)
                line += f"   paired difference vs torch {diff.mean():+.5f} [{low:+.5f}, {high:+.5f}]"
                line += f", users whose value moved: {int(np.count_nonzero(diff))}"
            print(line)
    for name in names[1:]:
        same = int(np.count_nonzero((tops[name] == tops["torch"]).all(axis=1)))
        print(f"{name}: identical whole-catalogue top 10 for {same} of {len(rows)} users; "
              f"encoding took {seconds[name]:.0f} s against torch's {seconds['torch']:.0f} s")


if __name__ == "__main__":
    main()
