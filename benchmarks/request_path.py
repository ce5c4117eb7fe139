"""One whole-catalogue request, in process: its arithmetic floor, where the time goes,
and before/after ratios of code trees and runtimes measured in one run (issue 25).

Each *arm* is a worker process that loads NAME once from ``$XREG_HOME`` with one code
tree (this checkout, or ``--baseline TREE``: e.g. the code before a change, from
``git archive COMMIT | tar -x -C TREE``) and one runtime (``torch``, ``onnx``; see
``xcross_registry/runtimes.py``).  The driver sends the test users' histories to the
arms in turn (the order rotates per request), so load from elsewhere on a shared
machine hits every arm alike; each worker times ``serving.recommend(top=10)`` itself,
so the ratios are of in-process request times.  Every arm's answers are compared
with the first arm's: exact arms must return the same items with the same scores.
Besides wall-clock times each worker reports the CPU time its thread spent on the
request (``time.thread_time``): on a shared machine a request waits for a core, which
wall time counts and CPU time does not, so CPU time is the closer estimate of a quiet
machine's wall time (printed as ``cpu`` columns, floor included).

The floor: ``torch.utils.flop_counter`` counts the floating-point operations of one
request (history encoding with every stream and hook, plus the catalogue product),
and the rate this core sustains is measured on the model's largest matrix-product
shape; floor = operations / rate.  Usage::

    XREG_HOME=... OMP_NUM_THREADS=1 python benchmarks/request_path.py tools-serve \\
        --baseline /tmp/base --arms torch,onnx --requests 60
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
MAX_REQUESTS = 2000


def worker(tree: str, runtime: str, name: str) -> None:
    """Load NAME with the code at ``tree``; answer one JSON line per history on stdin."""
    import torch

    torch.set_num_threads(1)
    from xcross_registry import serving
    from xcross_registry.registry import Registry

    model = serving.load_model(Registry(), name)
    serving.item_embeddings(model)
    if runtime != "torch":
        from xcross_registry.runtimes import use_runtime

        use_runtime(model, runtime)
    source = str(Path(serving.__file__).resolve())
    print(json.dumps({"ready": True, "source": source}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        began, cpu = time.perf_counter(), time.thread_time()
        ranked = serving.recommend(model, request["history"], top=10)
        seconds, cpu = time.perf_counter() - began, time.thread_time() - cpu
        print(json.dumps({"seconds": seconds, "cpu": cpu, "items": [r.item_id for r in ranked],
                          "scores": [r.score for r in ranked]}), flush=True)


def floor(name: str, requests: int) -> dict:
    """FLOPs of one request, the sustained rate of this core, and where the time goes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    from xcross_registry import serving
    from xcross_registry.registry import Registry

    model = serving.load_model(Registry(), name)
    embeddings = serving.item_embeddings(model)
    scorer = model.scorer
    texts = [model.template.render_query(model.match([model.data.items[i].title for i in u.history]),
                                         scorer.tokenizer, scorer.config.max_length)
             for u in model.data.test[:requests] if u.history]
    # The operations of each of the first `requests` requests (they differ with the history's
    # padded length); the floor is the median request's.
    counted = []
    with torch.inference_mode():
        for text in texts:
            inputs = scorer.tokenize([text], pad_to_multiple_of=16)
            with FlopCounterMode(display=False) as counter:
                scorer.score_embeddings(scorer.embed(**inputs), embeddings)
            counted.append((counter.get_total_flops(), inputs["input_ids"].shape[1]))
    flops, tokens = sorted(counted)[len(counted) // 2]
    streams = getattr(getattr(scorer.encoder, "xcross", None), "n_streams", 1)
    hidden = scorer.base.hidden_size
    a, b = torch.randn(streams * tokens, hidden), torch.randn(hidden, 4 * hidden)
    with torch.inference_mode():
        for _ in range(20):
            a @ b
        began, cpu = time.perf_counter(), time.thread_time()
        repeats = 200
        for _ in range(repeats):
            a @ b
        work = repeats * 2 * a.shape[0] * a.shape[1] * b.shape[1]
        rate, cpu_rate = work / (time.perf_counter() - began), work / (time.thread_time() - cpu)
    # Where a request's time goes: tokenise, encode, score, top-k (median of `requests`).
    stages: dict[str, list[float]] = {"tokenise": [], "encode": [], "catalogue product": [], "top-k": []}
    with torch.inference_mode():
        for text in texts:
            t0 = time.perf_counter()
            batch = scorer.tokenize([text], pad_to_multiple_of=16)
            t1 = time.perf_counter()
            query = scorer.embed(**batch)
            t2 = time.perf_counter()
            scores = scorer.score_embeddings(query, embeddings)
            t3 = time.perf_counter()
            torch.topk(scores[0], 10)
            t4 = time.perf_counter()
            for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[stage].append(seconds)
    return {"flops": flops, "tokens": tokens, "streams": streams, "rate": rate, "cpu_rate": cpu_rate,
            "gemm": f"[{a.shape[0]}, {a.shape[1]}] x [{b.shape[0]}, {b.shape[1]}]",
            "floor_s": flops / rate, "cpu_floor_s": flops / cpu_rate, "items": len(model.data.items),
            "stages": {k: statistics.median(v) for k, v in stages.items()}}


def start(tree: str, runtime: str, name: str, home: str | None = None, plugins: str | None = None) -> subprocess.Popen:
    """A worker of code tree ``tree``; ``home``: its ``XREG_HOME`` (default: this process's);
    ``plugins``: a plugin folder searched before the tree's own."""
    tree_path = Path(tree).resolve()
    path = ([str(Path(plugins).resolve())] if plugins else []) + [str(tree_path), str(tree_path / "plugins")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    if home:
        env["XREG_HOME"] = str(Path(home).resolve())
    return subprocess.Popen([sys.executable, str(HERE), "--worker", str(tree_path), runtime, name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(tree_path))


def ask(process: subprocess.Popen, message: dict) -> dict:
    process.stdin.write(json.dumps(message) + "\n")
    process.stdin.flush()
    return read(process)


def read(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"a worker exited with {process.wait()}")
    return json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="a dual composition or adapter in the registry at $XREG_HOME")
    parser.add_argument("--baseline", help="a source tree to compare with (its `torch` runtime is the first arm)")
    parser.add_argument("--baseline-home", help="the baseline's XREG_HOME (default: $XREG_HOME): a copy of "
                        "the registry at the schema the old code reads, when this checkout's is newer")
    parser.add_argument("--plugins", help="a plugin folder that every arm (and this process) searches first: "
                        "the same data plugin for both trees when it changed between them, so that the "
                        "model's registered data fingerprint matches in both")
    parser.add_argument("--arms", default="torch,onnx", help="runtimes of this checkout, comma-separated")
    parser.add_argument("--requests", type=int, default=60, help=f"test-user histories (<= {MAX_REQUESTS})")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if not args.name:
        parser.error("name is required")
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise SystemExit(f"--requests must be 1..{MAX_REQUESTS}")

    if args.plugins:
        sys.path.insert(0, str(Path(args.plugins).resolve()))
    here = str(HERE.parents[1])
    arms = ([(f"baseline {Path(args.baseline).name}:torch", args.baseline, "torch", args.baseline_home)]
            if args.baseline else []) + [(f"this:{runtime}", here, runtime, None) for runtime in args.arms.split(",")]
    measured = floor(args.name, min(args.requests, 30))

    from xcross_registry.registry import Registry
    from xcross_registry.subjects import resolve_subject

    registry = Registry()
    data = registry.domain_data(resolve_subject(registry, args.name).domain)
    histories = [[data.items[i].title for i in user.history] for user in data.test if user.history]
    histories = histories[:args.warmup + args.requests]

    workers = [start(tree, runtime, args.name, home, args.plugins) for _, tree, runtime, home in arms]
    try:
        sources = [read(process)["source"] for process in workers]
        times: list[list[float]] = [[] for _ in arms]
        cpus: list[list[float]] = [[] for _ in arms]
        answers: list[list[dict]] = [[] for _ in arms]
        for number, history in enumerate(histories):
            order = list(range(len(arms)))
            order = order[number % len(order):] + order[:number % len(order)]
            for k in order:
                reply = ask(workers[k], {"history": history})
                if number >= args.warmup:
                    times[k].append(reply["seconds"])
                    cpus[k].append(reply["cpu"])
                    answers[k].append(reply)
    finally:
        for process in workers:
            process.stdin.close()
            process.wait(timeout=60)

    load = os.getloadavg()
    print(f"# {args.name}: {measured['items']} items, whole-catalogue top 10, {len(times[0])} test-user "
          f"histories after {args.warmup} warm-up, 1 thread per arm, load average {load[0]:.2f} {load[1]:.2f}")
    print(f"arithmetic: {measured['flops'] / 1e9:.3f} GFLOP for the median request ({measured['streams']} stream(s) x "
          f"{measured['tokens']} tokens, hooks and catalogue product included); this core sustains "
          f"{measured['rate'] / 1e9:.1f} GFLOP/s on {measured['gemm']}; floor {measured['floor_s'] * 1e3:.1f} ms "
          f"(in CPU time {measured['cpu_rate'] / 1e9:.1f} GFLOP/s, floor {measured['cpu_floor_s'] * 1e3:.1f} ms)")
    print("stages (torch, median): " + ", ".join(f"{stage} {seconds * 1e3:.2f} ms"
                                                  for stage, seconds in measured["stages"].items()))
    first, first_cpu = statistics.median(times[0]), statistics.median(cpus[0])
    print(f"{'arm':<28} {'p50 ms':>8} {'p95 ms':>8} {'speed-up':>8} {'x floor':>8} {'cpu p50':>8} "
          f"{'speed-up':>8} {'x floor':>8} {'same top10':>10} {'max |score diff|':>16}")
    for (label, _, _, _), arm_times, arm_cpus, arm_answers, source in zip(arms, times, cpus, answers, sources):
        ordered = sorted(arm_times)
        p50, p95 = statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        cpu = statistics.median(arm_cpus)
        same = sum(a["items"] == b["items"] for a, b in zip(arm_answers, answers[0]))
        diff = max(max((abs(x - y) for x, y in zip(a["scores"], b["scores"])), default=0.0)
                   for a, b in zip(arm_answers, answers[0]))
        print(f"{label:<28} {p50 * 1e3:>8.1f} {p95 * 1e3:>8.1f} {first / p50:>7.2f}x "
              f"{p50 / measured['floor_s']:>7.2f}x {cpu * 1e3:>8.1f} {first_cpu / cpu:>7.2f}x "
              f"{cpu / measured['cpu_floor_s']:>7.2f}x {same:>4}/{len(arm_answers):<5} {diff:>16.2e}")
        print(f"  ({source})")


if __name__ == "__main__":
    main()
