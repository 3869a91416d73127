"""A/B of the Dice kernels of two builds: CPU time per call of the forward (``dice_sums``) and the
backward (``dice_backward``) op, one thread, fresh processes alternating between the builds.

Usage::

    .venv/bin/python bench/dice_ab.py --before /path/to/old/checkout --after .
    .venv/bin/python bench/dice_ab.py --before ../main --after . --cases 2x4x64x64x64:1:float32 --rounds 3

Each build is a seglosses source tree with its extension built in place (``seglosses/_C*.so``), or
a folder holding such a ``seglosses`` package. Both the op schemas before the Dice family
(``dice_sums(x, y, ignore_label, p)``) and after it are understood. The reported number is the
minimum CPU time (``time.process_time``) over ``--calls`` calls: the minimum is what is left when
other jobs on a shared machine are not in the way, so two builds compare side by side even under
load. int64 labels, random logits, ignore_label = -1.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

DEFAULT_CASES = ("2x4x64x64x64:1:float32,2x8x64x64x64:2:float32,2x4x64x64x64:1:float16,"
                 "2x4x64x64x64:1:bfloat16,2x4x64x64x64:3:float64,2x1x64x64x64:2:float32,"
                 "2x40x32x32x32:1:float32")


def child(tree: str, shape: tuple, p: int, dtype: str, calls: int) -> None:
    import time

    import torch

    sys.path.insert(0, tree)
    import seglosses  # noqa: F401

    ops = torch.ops.seglosses
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(getattr(torch, dtype))
    K = 2 if shape[1] == 1 else shape[1]
    y = torch.randint(0, K, (shape[0],) + shape[2:], generator=g)
    a, b = torch.randn(shape[0], K, generator=g), torch.randn(shape[0], K, generator=g)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if len(ops.dice_sums.default._schema.arguments) == 4:  # the schema before the Dice family
        fwd = lambda: ops.dice_sums(x, y, -1, p)  # noqa: E731
        bwd = lambda: ops.dice_backward(x, y, a.to(acc), b.to(acc), -1, p)  # noqa: E731
    else:
        table = torch.zeros(shape[0], 4, K, dtype=torch.float64)
        table[:, 0], table[:, 1] = a, b / p  # the same vector-Jacobian product
        fwd = lambda: ops.dice_sums(x, y, None, -1, p, False, True, "bench")  # noqa: E731
        bwd = lambda: ops.dice_backward(x, y, None, table, -1, p)  # noqa: E731
    out = {"tree": tree}
    for name, f in (("forward_s", fwd), ("backward_s", bwd)):
        f()
        best = float("inf")
        for _ in range(calls):
            t0 = time.process_time()
            f()
            best = min(best, time.process_time() - t0)
        out[name] = best
    common.emit_result(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="seglosses tree (built in place) of the 'before' build")
    ap.add_argument("--after", default=common.REPO_ROOT, help="seglosses tree of the 'after' build (default: this one)")
    ap.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated SHAPE:P:DTYPE (default: %(default)s)")
    ap.add_argument("--calls", type=int, default=15, help="timed calls per op and process (default 15)")
    ap.add_argument("--rounds", type=int, default=2, help="process pairs per case (default 2)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        tree, shape, p, dtype, calls = args.child
        child(tree, tuple(int(v) for v in shape.split("x")), int(p), dtype, int(calls))
        return 0
    if not args.before:
        ap.error("--before is required")
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    print("# Dice kernels, before / after: minimum CPU time per call (ms), 1 thread")
    print()
    for line in common.machine_lines([f"before: {trees['before']}", f"after: {trees['after']}"]):
        print("- " + line)
    print()
    rows, failed = [], False
    script = os.path.abspath(__file__)
    for case in [c for c in args.cases.split(",") if c]:
        shape, p, dtype = case.split(":")
        best = {k: [float("inf"), float("inf")] for k in trees}
        for _ in range(args.rounds):
            for which, tree in trees.items():
                r = common.run_child([script, "--child", tree, shape, p, dtype, str(args.calls)])
                if "error" in r:
                    print(f"{case} {which}: {r['error']}", file=sys.stderr)
                    failed = True
                    continue
                best[which] = [min(best[which][0], r["forward_s"]), min(best[which][1], r["backward_s"])]
        b, a = best["before"], best["after"]
        rows.append([f"[{shape.replace('x', ',')}]", p, dtype, f"{b[0] * 1e3:.2f} / {a[0] * 1e3:.2f}",
                     f"{b[1] * 1e3:.2f} / {a[1] * 1e3:.2f}", f"{a[0] / b[0]:.2f}x", f"{a[1] / b[1]:.2f}x"])
    print(common.markdown_table(["logits", "p", "dtype", "forward before / after", "backward before / after",
                                 "forward after/before", "backward after/before"], rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
