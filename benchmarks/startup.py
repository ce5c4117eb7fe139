"""Start-up cost of registry commands against bare Python.

Runs ``python -c pass``, ``xreg --help`` and ``xreg domains`` interleaved, ``--repeats``
times each, in a throw-away ``XREG_HOME``, and prints the median wall time of each and
the difference to bare Python (the goal: within 0.4 s).  Usage::

    python benchmarks/startup.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

XREG = [sys.executable, "-c", "from xcross_registry.cli import main; main()"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "xreg --help": [*XREG, "--help"],
    "xreg domains": [*XREG, "domains"],
    "xreg plugins": [*XREG, "plugins"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        # Bytecode caches as an installed package has them (pip compiles on install);
        # a sandbox that sets PYTHONDONTWRITEBYTECODE would otherwise recompile every run.
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
               "XREG_HOME": home}
        subprocess.run([*XREG, "init"], env=env, check=True, capture_output=True)
        for command in COMMANDS.values():  # warm-up: writes missing caches, fills the OS cache
            subprocess.run(command, env=env, check=True, capture_output=True)
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(args.repeats):
            for name, command in COMMANDS.items():
                start = time.perf_counter()
                subprocess.run(command, env=env, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    bare = statistics.median(times["python -c pass"])
    print(f"# median of {args.repeats} interleaved runs; registry in a fresh XREG_HOME")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:16s} {median:6.3f} s   +{median - bare:5.3f} s over bare Python   "
              f"ratio {median / bare:5.2f}")


if __name__ == "__main__":
    main()
