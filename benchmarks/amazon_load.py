"""Time the ``amazon`` plugin loading the real Amazon 2018 domains.

How long ``xreg_amazon.load`` takes depends on how busy the machine is, so it is
measured here rather than asserted in a test (``tests/test_amazon_plugin.py`` checks
the counts).  Prints the median of ``--repeats`` loads of each domain, the domains
interleaved, with the load average beside it.  Usage::

    python benchmarks/amazon_load.py [--repeats 5] [--data ../shared/data/amazon18]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import xreg_amazon

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon18"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    folders = sorted(path for path in args.data.iterdir() if (path / "meta_data.json").is_file())
    if not folders:
        raise SystemExit(f"no domain folders under {args.data}")
    times: dict[str, list[float]] = {folder.name: [] for folder in folders}
    for _ in range(args.repeats):
        for folder in folders:
            start = time.perf_counter()
            xreg_amazon.load(str(folder))
            times[folder.name].append(time.perf_counter() - start)
    print(f"# median of {args.repeats} interleaved loads; load average {os.getloadavg()[0]:.2f}")
    for name, samples in times.items():
        print(f"{name:8s} {statistics.median(samples):6.2f} s   (min {min(samples):.2f}, "
              f"max {max(samples):.2f})")


if __name__ == "__main__":
    main()
