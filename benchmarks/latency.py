"""Whole-catalogue recommendation latency of a registered dual model (issue 5: < 2 s on CPU).

Loads NAME (a composition or an adapter) from the registry in ``$XREG_HOME``, builds
(or reads) its cached item embeddings, then asks for the top 10 of the whole target
catalogue for the histories of ``--requests`` test users, one request at a time, and
prints the median and 95th percentile per request.  It also times ``xreg recommend``
as a user runs it, in a fresh process (model load included, item cache warm), so both
the serving latency and the command-line wall time are on record.  Usage::

    XREG_HOME=... python benchmarks/latency.py tools-x-f0.25-s0 [--requests 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="composition or adapter in the registry")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--cli-repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from xcross_registry import serving
    from xcross_registry.registry import Registry

    registry = Registry()
    start = time.perf_counter()
    model = serving.load_model(registry, args.name)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    serving.item_embeddings(model)
    cache_s = time.perf_counter() - start
    users = [u for u in model.data.test if u.history][: args.requests]
    histories = [[model.data.items[i].title for i in user.history] for user in users]
    latencies = []
    for history in histories:
        start = time.perf_counter()
        serving.recommend(model, history, top=10)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]

    history_arg = "; ".join(histories[0])
    cli = [sys.executable, "-c", "from xcross_registry.cli import main; main()",
           "recommend", args.name, "--history", history_arg, "--top", "10", "--json"]
    cli_times = []
    for _ in range(args.cli_repeats):
        start = time.perf_counter()
        subprocess.run(cli, env=os.environ, check=True, capture_output=True)
        cli_times.append(time.perf_counter() - start)

    print(f"# {args.name} on {model.domain}: {len(model.data.items)} items, "
          f"{torch.get_num_threads()} CPU threads, {len(latencies)} requests (test-user histories)")
    print(f"load model                     {load_s:7.3f} s")
    print(f"item embeddings (cache)        {cache_s:7.3f} s")
    print(f"request, whole catalogue       median {statistics.median(latencies):.3f} s   p95 {p95:.3f} s")
    print(f"xreg recommend (fresh process) median {statistics.median(cli_times):.3f} s over {len(cli_times)} runs")


if __name__ == "__main__":
    main()
