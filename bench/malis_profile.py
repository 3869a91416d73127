"""Loop seglosses.malis_weights on one 128^3 Voronoi sample of bench/malis_data.py, for a profiler.

Usage (a CPU profile of where the time goes)::

    perf record -e cpu-clock -F 5000 -o /tmp/perf.data .venv/bin/python bench/malis_profile.py --calls 40
    perf report -i /tmp/perf.data --no-children --sort symbol

Prints the median seconds per call and CPU seconds per call (one thread) at the end.

A/B against another build (e.g. main's, built in a second checkout): run both side by side,
alternating, and compare the CPU times::

    for i in 1 2 3; do
        .venv/bin/python bench/malis_profile.py --calls 15
        .venv/bin/python bench/malis_profile.py --calls 15 --seglosses-path ../other-checkout
    done
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import malis_data  # noqa: E402  (the data of bench/malis_weights.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--pred", choices=malis_data.PRED_KINDS, default="random")
    parser.add_argument("--mask", action="store_true", help="with bench/malis_data.py's mask")
    parser.add_argument("--seglosses-path", help="a directory holding another build's seglosses package")
    args = parser.parse_args()

    if args.seglosses_path:
        sys.path.insert(0, os.path.abspath(args.seglosses_path))
    else:
        common.add_repo_to_path()
    import torch

    import seglosses

    torch.set_num_threads(1)
    case = next(malis_data.load_cases("voronoi", args.pred, sizes=[args.size], n_labels=200, seed=0, batch=1,
                                      mask=args.mask, data_dir=""))
    seg, affs = torch.from_numpy(case.seg), torch.from_numpy(case.affs)
    mask = None if case.mask is None else torch.from_numpy(case.mask)
    nhood = torch.tensor(malis_data.NHOOD)
    seglosses.malis_weights(affs, seg, nhood, mask=mask)  # warm-up: workspace, code pages
    times, cpu = [], []
    for _ in range(args.calls):
        t0, c0 = time.perf_counter(), time.process_time()
        seglosses.malis_weights(affs, seg, nhood, mask=mask)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"{args.size}^3, 1 thread: {statistics.median(times):.4f} s per call, CPU {statistics.median(cpu):.4f} s "
          f"(medians of {args.calls})")


if __name__ == "__main__":
    main()
