"""X-Cross multi-stream execution against the naive way, on the default model (CPU).

The naive way is what a user would write with peft: one copy of the base model per
source, each a ``PeftModel`` with its adapter, run one after another layer by layer
with the same integrators applied between layers.  Both compute the same function;
this script checks that they agree and prints, for n = 2, 3, 4 sources:

* forward and training-step time ratio (naive / multi-stream),
* peak memory ratio (process peak RSS above the loaded-libraries baseline) and the
  base-weight memory ratio (bytes of distinct base-weight storages),
* integration overhead: X-Cross forward over n × one plain LoRA forward at the same
  batch (floor 1.0).

Times come from one process in which the variants' calls are interleaved round-robin,
so a change in the shared machine's load hits all of them alike; peak memory comes from
one subprocess per variant (so each peak is its own).  Usage::

    python benchmarks/multistream.py [--batch 32] [--length 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time

VARIANTS = ("multistream", "naive", "single")


def build(n: int, seed: int = 0):
    """The default base model and n random LoRA sources (rank 8, query/value/dense...)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from xcross_registry.base_model import load_base_model
    from xcross_registry.scorer import ScorerConfig
    from xcross_registry.xcross import LoraSource

    model, tokenizer, info = load_base_model(None)
    targets = ScorerConfig().resolve(info).target_modules
    sources = []
    for m in range(n):
        torch.manual_seed(seed + m)
        peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=targets))
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.02)
        sources.append(LoraSource(get_peft_model_state_dict(peft), peft.peft_config["default"], f"s{m}"))
    return model, tokenizer, sources, targets


def inputs(tokenizer, batch: int, length: int):
    import torch

    torch.manual_seed(1)
    ids = torch.randint(1000, 20000, (batch, length))
    ids[:, 0] = tokenizer.cls_token_id
    mask = torch.ones_like(ids)
    mask[batch // 2:, length // 2:] = 0  # half the rows padded
    return ids, mask


class Naive:
    """n peft model copies, run one after another, integrated between layers."""

    def __init__(self, base, sources, integrators, mix):
        from peft import get_peft_model, set_peft_model_state_dict

        self.models = []
        for source in sources:
            model = get_peft_model(copy.deepcopy(base), source.config)
            set_peft_model_state_dict(model, dict(source.state_dict))
            model.requires_grad_(False)  # frozen sources: only the integrators train
            model.eval()
            self.models.append(model)
        self.integrators, self.mix = integrators, mix

    def layer_arguments(self, ids, mask) -> None:
        """The keyword arguments (the prepared attention mask) every layer receives, as the
        model itself builds them; captured once, outside the timed region."""
        import torch

        captured = {}
        inner = self.models[0].base_model.model

        def capture(module, args, kwargs):
            captured.update(kwargs)
            captured.update(zip(("attention_mask",), args[1:]))

        handle = inner.encoder.layer[0].register_forward_pre_hook(capture, with_kwargs=True)
        with torch.no_grad():
            inner(input_ids=ids, attention_mask=mask)
        handle.remove()
        self.kwargs = captured

    def __call__(self, ids, mask):
        import torch

        inner = [model.base_model.model for model in self.models]
        states = [model.embeddings(input_ids=ids) for model in inner]
        for index in range(len(inner[0].encoder.layer)):
            outputs = []
            for model, state in zip(inner, states):
                out = model.encoder.layer[index](state, **self.kwargs)
                outputs.append(out[0] if isinstance(out, tuple) else out)
            refined, _ = self.integrators[str(index)](torch.stack(outputs), mask)
            states = list(refined)
        return torch.einsum("m,mbth->bth", self.mix, torch.stack(states))


def make_variant(variant: str, base, sources, encoder, ids, mask):
    """(forward, training step or None, base-weight storages) of one way to run it."""
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if variant == "multistream":
        run = lambda: encoder(ids, mask).hidden_state  # noqa: E731
        storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                    for p in encoder.base.parameters()}
    elif variant == "naive":
        naive = Naive(base, sources, encoder.integrators, encoder.mix)
        naive.layer_arguments(ids, mask)
        run = lambda: naive(ids, mask)  # noqa: E731
        storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                    for model in naive.models for name, p in model.named_parameters()
                    if "lora_" not in name}
    else:  # one plain LoRA model at the same batch, for the integration overhead
        from peft import get_peft_model, set_peft_model_state_dict

        single = get_peft_model(copy.deepcopy(base), sources[0].config)
        set_peft_model_state_dict(single, dict(sources[0].state_dict))
        single.eval()
        run = lambda: single(input_ids=ids, attention_mask=mask).last_hidden_state  # noqa: E731
        return (lambda: _no_grad(run)), None, {}

    def train_step():
        for p in trainable:
            p.grad = None
        run().float().pow(2).mean().backward()

    return (lambda: _no_grad(run)), train_step, storages


def _no_grad(function):
    import torch

    with torch.no_grad():
        return function()


def setup(n: int, batch: int, length: int):
    import torch

    from xcross_registry.xcross import XCrossConfig, XCrossEncoder

    torch.manual_seed(0)
    base, tokenizer, sources, _ = build(n)
    ids, mask = inputs(tokenizer, batch, length)
    return base, sources, XCrossEncoder(base, sources, XCrossConfig(init_std=0.01)), ids, mask


def memory_worker(variant: str, n: int, batch: int, length: int) -> dict:
    """Peak memory of one variant alone in this process (a forward and a training step)."""
    baseline_rss = _peak_rss()
    base, sources, encoder, ids, mask = setup(n, batch, length)
    forward, train_step, storages = make_variant(variant, base, sources, encoder, ids, mask)
    checksum = float(forward().double().abs().mean())
    train_step()
    return {"variant": variant, "n": n, "peak_rss_mb": (_peak_rss() - baseline_rss) / 1024,
            "base_weight_mb": sum(storages.values()) / 2**20, "checksum": checksum}


def timing(n: int, batch: int, length: int, repeats: int) -> dict[str, float]:
    """Median seconds of each variant's forward and training step, ``repeats`` rounds of
    interleaved calls after one warm-up call each."""
    base, sources, encoder, ids, mask = setup(n, batch, length)
    calls = {}
    for variant in VARIANTS:
        forward, train_step, _ = make_variant(variant, base, sources, encoder, ids, mask)
        calls[f"{variant} forward"] = forward
        if train_step is not None:
            calls[f"{variant} step"] = train_step
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for function in calls.values():
        function()
    for _ in range(repeats):
        for name, function in calls.items():
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(times)[len(times) // 2] for name, times in samples.items()}


def _peak_rss() -> int:
    """This process's peak resident memory in KiB.  ``VmHWM`` belongs to the current
    address space, unlike ``getrusage``'s ``ru_maxrss``, which Linux carries over from
    the parent across fork and exec (and would report the parent's peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (peak memory needs Linux)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sources", default="2,3,4")
    parser.add_argument("--memory-worker", nargs=2, metavar=("VARIANT", "N"))
    args = parser.parse_args()
    if args.memory_worker:
        variant, n = args.memory_worker[0], int(args.memory_worker[1])
        print(json.dumps(memory_worker(variant, n, args.batch, args.length)))
        return
    import torch

    print(f"# CPU threads {torch.get_num_threads()}, batch {args.batch} x {args.length} tokens, "
          f"median of {args.repeats} interleaved calls; default model all-MiniLM-L6-v2")
    print("n  forward(naive/ms)  train(naive/ms)  peak-mem(naive/ms)  base-weights(naive/ms)  "
          "overhead(ms / n*single)  |checksum diff|")
    for n in map(int, args.sources.split(",")):
        memory = {}
        for variant in ("multistream", "naive"):
            out = subprocess.run([sys.executable, __file__, "--memory-worker", variant, str(n),
                                  "--batch", str(args.batch), "--length", str(args.length)],
                                 capture_output=True, text=True, check=True)
            memory[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        seconds = timing(n, args.batch, args.length, args.repeats)
        ms, naive = memory["multistream"], memory["naive"]
        print(f"{n}  {seconds['naive forward'] / seconds['multistream forward']:6.2f}x"
              f"            {seconds['naive step'] / seconds['multistream step']:6.2f}x"
              f"          {naive['peak_rss_mb'] / ms['peak_rss_mb']:6.2f}x"
              f"             {naive['base_weight_mb'] / ms['base_weight_mb']:6.2f}x"
              f"                  {seconds['multistream forward'] / (n * seconds['single forward']):6.3f}"
              f"                 {abs(naive['checksum'] - ms['checksum']):.1e}", flush=True)
        print("   seconds: " + "; ".join(f"{name} {value:.3f}" for name, value in seconds.items())
              + f"; peak MB {ms['peak_rss_mb']:.0f} vs {naive['peak_rss_mb']:.0f}; base weights MB "
              f"{ms['base_weight_mb']:.1f} vs {naive['base_weight_mb']:.1f}", flush=True)


if __name__ == "__main__":
    main()
