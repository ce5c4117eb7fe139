"""Training and evaluation throughput of the default scorer on CPU (sequences per second).

For each mode (cross, dual) and for the head-only baseline, trains for a fixed number
of steps on real Amazon Toys histories (``../shared/data/amazon18/Toys``; a synthetic
domain when that is absent) and scores a fixed number of users' 1+29 candidates,
printing examples/s for both and the ratio of each to the dual LoRA scorer, all
measured in this one run.  The ``bf16`` rows train under bfloat16 autocast, which
CPUs with bf16 instructions (AVX512-BF16, AMX) run faster than float32.  Usage::

    python benchmarks/throughput.py [--steps 20] [--users 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon18" / "Toys"


def load_data():
    if DATA.is_dir():
        import xreg_amazon

        return xreg_amazon.load(str(DATA)), xreg_amazon.TEMPLATE, f"Amazon Toys ({DATA})"
    import xreg_synthetic

    return xreg_synthetic.load("toys"), xreg_synthetic.TEMPLATE, "synthetic toys (real data absent)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from xcross_registry.candidates import sample_candidates
    from xcross_registry.scorer import Scorer, ScorerConfig
    from xcross_registry.scoring import score_candidates
    from xcross_registry.training import TrainingConfig, train_scorer

    data, template, source = load_data()
    candidates = sample_candidates(data, "test", "sampled", seed=0, max_users=args.users)
    print(f"# {source}; all-MiniLM-L6-v2 on CPU, {args.threads} threads; training: batch 16, "
          f"15 negatives, {args.steps} steps; evaluation: {args.users} users x 30 candidates")
    rows = []
    variants = (("dual LoRA", "dual", False, False), ("dual LoRA bf16", "dual", False, True),
                ("cross LoRA", "cross", False, False), ("cross LoRA bf16", "cross", False, True),
                ("dual head-only", "dual", True, False), ("cross head-only", "cross", True, False))
    for label, mode, head_only, bf16 in variants:
        torch.manual_seed(0)
        scorer = Scorer.create(None, ScorerConfig(mode=mode, max_length=96), head_only=head_only)
        config = TrainingConfig(epochs=1, batch_size=16, negatives=15, max_users=8 * args.steps,
                                prefixes_per_user=2, valid_users=0, device="cpu", bf16=bf16)
        result = train_scorer(scorer, data, template, config)
        evaluation = None
        if not bf16:  # evaluation always runs in float32; bf16 is a training option
            start = time.perf_counter()
            score_candidates(scorer, data, template, "test", candidates.candidates, candidates.users.tolist())
            evaluation = len(candidates.users) / (time.perf_counter() - start)
        rows.append((label, result.sequences_per_second, evaluation))
    reference = rows[0]
    print(f"{'scorer':16s} {'train seq/s':>12s} {'eval users/s':>13s} {'train ratio':>12s} {'eval ratio':>11s}")
    for label, train, evaluation in rows:
        evaluated = (f"{evaluation:13.2f}", f"{evaluation / reference[2]:11.2f}") if evaluation else ("-", "-")
        print(f"{label:16s} {train:12.2f} {evaluated[0]:>13s} {train / reference[1]:12.2f} {evaluated[1]:>11s}")


if __name__ == "__main__":
    main()
