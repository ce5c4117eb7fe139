"""Train the project's SASRec on a registered domain with the SASRec paper's settings
and register it, printing every validated epoch and keeping the best epoch's weights
on disk as it goes, so a run that is stopped part-way still has its curve and its best
model (``--checkpoint``).

The paper's settings (Kang & McAuley, ICDM 2018, on Amazon Video Games): 2 blocks,
d = 50, 1 head, dropout 0.5, max length 50, Adam lr 1e-3, batch 128, 200 epochs.  The
run ends early when ``--patience`` validated epochs bring no better NDCG@10 (validation:
the first ``--valid-users`` validation users against 100 uniform negatives).  Used for
docs/RESULTS.md, "Issue 23"::

    XREG_HOME=... OMP_NUM_THREADS=1 nice -n 15 python benchmarks/sasrec_video.py video \\
        --checkpoint /tmp/sasrec-video-best

Then ``xreg evaluate sasrec:video --negatives 100`` and ``--protocol full``; a stopped run's
checkpoint is scored with ``--score-checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from xcross_registry import sasrec
from xcross_registry.baselines import train_baseline
from xcross_registry.registry import Registry
from xcross_registry.sasrec import SASRecConfig

PAPER = dict(hidden_size=50, blocks=2, heads=1, dropout=0.5, max_len=50, lr=1e-3, batch_size=128,
             epochs=200, valid_negatives=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domain")
    parser.add_argument("--checkpoint", required=True, help="folder for the best epoch's weights")
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--valid-users", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=PAPER["epochs"])
    parser.add_argument("--score-checkpoint", action="store_true",
                        help="do not train: evaluate the checkpoint on every test user, 100 negatives "
                             "and the full catalogue; prints each metric as [mean, low, high] (95%% bootstrap)")
    args = parser.parse_args()
    registry = Registry()
    if args.score_checkpoint:
        score_checkpoint(registry, args.domain, args.checkpoint)
        return
    config = SASRecConfig(**{**PAPER, "epochs": args.epochs}, patience=args.patience,
                          valid_users=args.valid_users)
    best = {"ndcg@10": -1.0, "epoch": 0}
    started = time.monotonic()
    validate = sasrec._validate

    def logged(model, users, matrix):
        values = validate(model, users, matrix)
        best["epoch"] += 1
        if values["ndcg@10"] > best["ndcg@10"]:
            best["ndcg@10"] = values["ndcg@10"]
            sasrec.save_sasrec(model, model.config, args.checkpoint)
        print(json.dumps({"epoch": best["epoch"], **values, "best": best["ndcg@10"],
                          "minutes": round((time.monotonic() - started) / 60, 1)}), flush=True)
        return values

    sasrec._validate = logged  # logging and checkpointing only: training is untouched
    row = train_baseline(registry, "sasrec", args.domain, config)
    print(json.dumps({"registered": row.label, "metrics": row.metrics,
                      "run": {k: v for k, v in row.training_config["run"].items() if k != "epochs"}}),
          flush=True)


def score_checkpoint(registry: Registry, domain: str, folder: str) -> None:
    from xcross_registry.evaluation import evaluate_scores

    model, _ = sasrec.load_sasrec(folder)
    for protocol, negatives in (("sampled", 100), ("full", None)):
        result = evaluate_scores(registry, domain, sasrec.sasrec_score_function(model),
                                 subject_kind="baseline", subject_name=f"sasrec-checkpoint:{domain}",
                                 protocol=protocol, negatives=negatives)
        # the bootstrap interval too: the paper's figure is compared with an interval, not a mean
        json.dump({"protocol": result.protocol, "users": result.num_users,
                   "metrics": {k: [round(v[part], 4) for part in ("mean", "low", "high")]
                               for k, v in result.metrics.items()}}, sys.stdout)
        print(flush=True)


if __name__ == "__main__":
    main()
