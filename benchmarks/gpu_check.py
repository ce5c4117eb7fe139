"""GPU check (issues 4, 5, 6): bf16 training on CUDA agrees with the CPU fp32 path, and
how many candidates per second X-Cross and plain LoRA score.

1. Trains a domain adapter and an X-Cross composition (two sources) for ``--steps``
   steps in bf16 autocast on the GPU, then scores the same fixed candidates with the
   trained weights twice: bf16 on the GPU and fp32 on the CPU. Prints the max and mean
   absolute score difference and the rank agreement (Spearman) per model.
2. Scores candidates with plain LoRA and X-Cross (n = 2, 3) in bf16 at a batch that
   fills the GPU, printing scored candidates per second and the X-Cross/LoRA ratio.

Synthetic domains and the bundled MiniLM, so it needs no data files::

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py [--steps 300] [--device cuda]

(``--device cpu --steps 5 --batch 64`` runs the same code on a CPU, as a smoke test.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4096, help="candidates per scoring call")
    args = parser.parse_args()
    import xreg_synthetic
    from peft import get_peft_model_state_dict

    from xcross_registry.base_model import load_base_model
    from xcross_registry.scorer import Scorer, ScorerConfig
    from xcross_registry.scoring import score_candidates
    from xcross_registry.training import TrainingConfig, train_scorer
    from xcross_registry.xcross import LoraSource, XCrossConfig, XCrossEncoder, XCrossStates

    device = torch.device(args.device)
    template = xreg_synthetic.TEMPLATE
    domains = {name: xreg_synthetic.load(f"{name}?users=2000&items=400") for name in ("toys", "sports", "tools")}
    target = domains["tools"]
    users = list(range(64))
    rng = np.random.default_rng(0)
    matrix = np.array([[target.test[u].target, *rng.choice(len(target.items), 15, replace=False)]
                       for u in users])

    def steps_config(data) -> TrainingConfig:
        per_epoch = max(1, len(data.train) * 2 // 16)
        return TrainingConfig(epochs=max(1, -(-args.steps // per_epoch)), batch_size=16, negatives=15,
                              prefixes_per_user=2, max_users=min(len(data.train), args.steps * 8),
                              bf16=device.type == "cuda", valid_users=0, device=device.type)

    def agreement(label: str, scorer) -> None:
        scorer.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            low = score_candidates(scorer, target, template, "test", matrix, users)
        scorer.to("cpu").float()
        high = score_candidates(scorer, target, template, "test", matrix, users)
        difference = np.abs(low - high)
        ranks = [np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]
                 for a, b in zip(low, high)]
        print(f"{label}: bf16 {device.type} vs fp32 cpu: max |diff| {difference.max():.4f}, "
              f"mean |diff| {difference.mean():.4f}, mean Spearman {np.mean(ranks):.4f}", flush=True)

    sources = []
    for name in ("toys", "sports"):
        torch.manual_seed(0)
        scorer = Scorer.create(None, ScorerConfig(mode="cross", max_length=64)).to(device)
        start = time.perf_counter()
        train_scorer(scorer, domains[name], template, steps_config(domains[name]))
        print(f"adapter {name}: {args.steps} steps in {time.perf_counter() - start:.1f} s", flush=True)
        peft_model = scorer.encoder.model
        sources.append(LoraSource({k: v.detach().float().cpu() for k, v in
                                   get_peft_model_state_dict(peft_model).items()},
                                  peft_model.peft_config["default"], name))
        agreement(f"adapter {name}", scorer)

    def composed(n: int):
        model, tokenizer, info = load_base_model(None)
        encoder = XCrossStates(XCrossEncoder(model, (sources * 2)[:n], XCrossConfig()))
        return Scorer(encoder, tokenizer, ScorerConfig(mode="cross", max_length=64).resolve(info), info)

    scorer = composed(2).to(device)
    start = time.perf_counter()
    train_scorer(scorer, target, template, steps_config(target))
    print(f"X-Cross n=2: {args.steps} steps in {time.perf_counter() - start:.1f} s", flush=True)
    agreement("X-Cross n=2", scorer)

    texts_per_call = args.batch
    print(f"# scoring throughput, bf16={device.type == 'cuda'}, {texts_per_call} candidates per call")
    rates = {}
    for label, build in (("LoRA", lambda: Scorer.create(None, ScorerConfig(mode="cross", max_length=64))),
                         ("X-Cross n=2", lambda: composed(2)), ("X-Cross n=3", lambda: composed(3))):
        model = build().to(device).eval()
        wide = np.tile(matrix, (1, max(1, texts_per_call // (16 * len(users)))))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            score_candidates(model, target, template, "test", wide[:4], users[:4], batch_size=texts_per_call)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            score_candidates(model, target, template, "test", wide, users, batch_size=texts_per_call)
            if device.type == "cuda":
                torch.cuda.synchronize()
        rates[label] = wide.size / (time.perf_counter() - start)
        print(f"{label}: {rates[label]:.0f} candidates/s "
              f"({rates[label] / rates['LoRA']:.2f}x of LoRA)", flush=True)


if __name__ == "__main__":
    main()
