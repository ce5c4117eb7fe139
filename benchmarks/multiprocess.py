"""Training throughput on 1 and 2 processes (examples per second and their ratio).

Trains the default scorer (the bundled all-MiniLM-L6-v2) for a fixed number of
optimiser steps on real Amazon Toys histories (``../shared/data/amazon18/Toys``; a
synthetic domain when that is absent), first in one process, then under
``accelerate launch`` on two CPU processes joined over gloo, which split every batch
between them.  Both runs take the same steps over the same examples; the rate is the
examples seen by all processes over the training loop's wall time (model loading
excluded), as recorded in the run record.  The two settings alternate ``--repeats``
times and the best rate of each is compared, so that a burst of load from other
programs on a shared machine does not decide the ratio.  Usage::

    python benchmarks/multiprocess.py [--steps 20] [--repeats 2] [--threads 1] [--mode dual]

``--threads`` is the torch threads of each process: 1 process x T threads against
2 processes x T threads each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon18" / "Toys"
MARK = "RESULT "


def load_data():
    if DATA.is_dir():
        import xreg_amazon

        return xreg_amazon.load(str(DATA)), xreg_amazon.TEMPLATE, f"Amazon Toys ({DATA})"
    import xreg_synthetic

    return xreg_synthetic.load("toys"), xreg_synthetic.TEMPLATE, "synthetic toys (real data absent)"


def worker(args: argparse.Namespace) -> None:
    """One training run; the main process prints its run record on a RESULT line."""
    import torch

    torch.set_num_threads(args.threads)
    from xcross_registry.scorer import Scorer, ScorerConfig
    from xcross_registry.training import TrainingConfig, is_main_process, train_scorer

    data, template, source = load_data()
    torch.manual_seed(0)
    scorer = Scorer.create(None, ScorerConfig(mode=args.mode, max_length=96))
    config = TrainingConfig(epochs=1, batch_size=args.batch_size, negatives=15, prefixes_per_user=1,
                            max_users=args.steps * args.batch_size, valid_users=0, lr=3e-4)
    result = train_scorer(scorer, data, template, config)
    if is_main_process():
        print(MARK + json.dumps({"source": source, **result.run_record()}), flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(processes: int, args: argparse.Namespace) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps), "--threads",
              str(args.threads), "--mode", args.mode, "--batch-size", str(args.batch_size)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--num_cpu_threads_per_process", str(args.threads), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(free_port()), *script]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or len(lines) != 1:
        sys.exit(f"{processes}-process run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len(MARK):])


def main() -> None:
    from xcross_registry.scoring_modes import SCORING_MODES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mode", choices=sorted(SCORING_MODES), default="dual")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    records = [run(processes, args) for _ in range(args.repeats) for processes in (1, 2)]
    print(f"# {records[0]['source']}; all-MiniLM-L6-v2 {args.mode} LoRA on CPU ({os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end), {args.threads} thread(s) per process; "
          f"batch {args.batch_size}, 15 negatives, {args.steps} steps")
    print(f"{'processes':>9s} {'examples':>9s} {'steps':>6s} {'train s':>8s} {'examples/s':>11s}")
    for record in records:
        print(f"{record['processes']:9d} {record['examples_seen']:9d} {record['optimizer_steps']:6d} "
              f"{record['train_seconds']:8.2f} {record['examples_per_second']:11.2f}")
    best = {p: max(r["examples_per_second"] for r in records if r["processes"] == p) for p in (1, 2)}
    print(f"best examples/s: 1 process {best[1]:.2f}, 2 processes {best[2]:.2f}; "
          f"ratio {best[2] / best[1]:.2f}")


if __name__ == "__main__":
    main()
