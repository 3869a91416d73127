"""Where one MALIS call's memory is: the resident size each memory mapping gained during the call.

MALIS keeps its scratch in per-thread buffers of a few MiB and more, each a mapping of its own
(csrc/cpu/malis/workspace.h), so the mappings that grew during one first call (after a warm-up on
an 8^3 crop, as bench/malis_weights.py's peak-extra column) are its buffers and the returned
weights. Linux only (/proc/self/smaps). Usage::

    .venv/bin/python bench/malis_buffers.py --data pinky40 --crop 3
    .venv/bin/python bench/malis_buffers.py --data fib25 --seglosses-path ../other-checkout

Prints the call's peak extra memory, then one line per mapping that gained more than 512 KiB:
its size, what it gained, and how much of that is on 2 MiB pages.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import malis_data  # noqa: E402


def mappings() -> dict:
    """(start, end) -> [resident KiB, anonymous huge-page KiB] of every mapping of this process."""
    out, current = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                current = (int(m.group(1), 16), int(m.group(2), 16))
                out[current] = [0, 0]
            elif line.startswith("Rss:"):
                out[current][0] = int(line.split()[1])
            elif line.startswith("AnonHugePages:"):
                out[current][1] = int(line.split()[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=malis_data.DATA_SETS, default="voronoi")
    parser.add_argument("--crop", type=int, default=0, help="which crop of a real data set (its list's index)")
    parser.add_argument("--pred", choices=malis_data.PRED_KINDS, default="random")
    parser.add_argument("--data-dir", default=malis_data.default_data_dir())
    parser.add_argument("--seglosses-path", help="a directory holding another build's seglosses package")
    args = parser.parse_args()
    if not os.path.exists("/proc/self/smaps"):
        sys.exit("malis_buffers.py: needs Linux's /proc/self/smaps")

    if args.seglosses_path:
        sys.path.insert(0, os.path.abspath(args.seglosses_path))
    else:
        common.add_repo_to_path()
    import torch

    import seglosses

    torch.set_num_threads(1)
    case = malis_data.load_crop(args.data, args.pred, args.crop, size=128, mask=False, data_dir=args.data_dir,
                                script="malis_buffers.py")
    seg, affs = torch.from_numpy(case.seg), torch.from_numpy(case.affs)
    nhood = malis_data.NHOOD
    tiny = (Ellipsis, slice(0, 8), slice(0, 8), slice(0, 8))
    seglosses.malis_weights(affs[tiny].contiguous(), seg[tiny].contiguous(), nhood)  # code pages, small buffers
    gc.collect()
    common.malloc_trim()
    before = mappings()
    with common.PeakRSS() as peak:
        weights = seglosses.malis_weights(affs, seg, nhood)
    after = mappings()
    print(f"{case.name}, {args.pred}: peak extra {peak.extra_bytes / 2**20:.1f} MiB ({peak.method})")
    total = 0
    rss_before = {start: rss for (start, _), (rss, _) in before.items()}
    for (start, end), (rss, huge) in sorted(after.items()):
        gained = rss - rss_before.get(start, 0)  # a mapping that grew keeps its start
        if gained > 512:
            total += gained
            print(f"  mapping {(end - start) / 2**20:7.1f} MiB: +{gained / 1024:6.1f} MiB resident "
                  f"({huge / 1024:.1f} MiB on 2 MiB pages)")
    print(f"  sum {total / 1024:.1f} MiB")
    del weights


if __name__ == "__main__":
    main()
