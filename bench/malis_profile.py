"""Loop seglosses.malis_weights on one 128^3 sample of bench/malis.py's data, for a profiler.

Usage (a CPU profile of where the time goes)::

    perf record -e cpu-clock -F 5000 -o /tmp/perf.data .venv/bin/python bench/malis_profile.py --calls 40
    perf report -i /tmp/perf.data --no-children --sort symbol

Prints the median seconds per call (one thread) at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import malis as bench_malis  # noqa: E402  (bench/malis.py: the same data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()

    common.add_repo_to_path()
    import torch

    import seglosses

    torch.set_num_threads(1)
    seg, affs = bench_malis.make_data(args.size, 200, 0, batch=1)
    seg, affs = torch.from_numpy(seg), torch.from_numpy(affs)
    nhood = torch.tensor(bench_malis.NHOOD)
    seglosses.malis_weights(affs, seg, nhood)  # warm-up: workspace, code pages
    times = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        seglosses.malis_weights(affs, seg, nhood)
        times.append(time.perf_counter() - t0)
    print(f"{args.size}^3, 1 thread: {statistics.median(times):.4f} s per call (median of {args.calls})")


if __name__ == "__main__":
    main()
