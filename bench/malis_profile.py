"""Loop seglosses.malis_weights on one sample of bench/malis_data.py, for a profiler or an A/B.

The sample: a 128^3 Voronoi volume by default, or one crop of a real segmentation (``--data
pinky40 --crop 3`` is pinky40's 128^3 crop at (0, 0, 0), one neuron; the crops are
malis_data.PINKY40_CROPS / FIB25_CROPS, the data folder --data-dir or $SEGLOSSES_DATA_DIR).

Usage (a CPU profile of where the time goes)::

    perf record -e cpu-clock -F 5000 -o /tmp/perf.data .venv/bin/python bench/malis_profile.py --calls 40
    perf report -i /tmp/perf.data --no-children --sort symbol

Prints the median and the fastest seconds per call, and CPU seconds per call, at the end (on
--threads threads; one by default).

A/B of two paths of one build (the same results, csrc/cpu/malis/tuning.h): ``--tune NAME=VALUE``.

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
    parser.add_argument("--data", choices=malis_data.DATA_SETS, default="voronoi")
    parser.add_argument("--crop", type=int, default=0, help="which crop of a real data set (its list's index)")
    parser.add_argument("--data-dir", default=malis_data.default_data_dir())
    parser.add_argument("--size", type=int, default=128, help="the Voronoi volume's size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--pred", choices=malis_data.PRED_KINDS, default="random")
    parser.add_argument("--mask", action="store_true", help="with bench/malis_data.py's mask")
    parser.add_argument("--seglosses-path", help="a directory holding another build's seglosses package")
    parser.add_argument("--tune", action="append", default=[], metavar="NAME=VALUE",
                        help="an internal path setting (csrc/cpu/malis/tuning.h), e.g. line_scatter_buckets=0")
    args = parser.parse_args()

    if args.seglosses_path:
        sys.path.insert(0, os.path.abspath(args.seglosses_path))
    else:
        common.add_repo_to_path()
    import torch

    import seglosses

    torch.set_num_threads(args.threads)
    for setting in args.tune:
        name, value = setting.split("=")
        torch.ops.seglosses._malis_set_tuning(name, int(value))
    case = malis_data.load_crop(args.data, args.pred, args.crop, size=args.size, mask=args.mask,
                                data_dir=args.data_dir, script="malis_profile.py")
    seg, affs = torch.from_numpy(case.seg), torch.from_numpy(case.affs)
    mask = None if case.mask is None else torch.from_numpy(case.mask)
    nhood = torch.tensor(malis_data.NHOOD)
    threads = args.threads
    seglosses.malis_weights(affs, seg, nhood, mask=mask, num_threads=threads)  # warm-up: workspace, code pages
    times, cpu = [], []
    for _ in range(args.calls):
        t0, c0 = time.perf_counter(), time.process_time()
        seglosses.malis_weights(affs, seg, nhood, mask=mask, num_threads=threads)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"{case.name}, {args.pred}, {threads} thread(s): {statistics.median(times):.4f} s per call "
          f"(fastest {min(times):.4f} s), CPU {statistics.median(cpu):.4f} s (medians of {args.calls})")


if __name__ == "__main__":
    main()
