"""Dice loss benchmark: seglosses vs MONAI vs a plain one-hot PyTorch Dice, CPU, forward+backward.

Usage::

    .venv/bin/python bench/dice.py                         # [2,8,128,128,128] and [2,4,64,64,64]
    .venv/bin/python bench/dice.py --shapes 2x4x32x32x32 --repeats 3 --threads 1
    .venv/bin/python bench/dice.py --impls seglosses,monai

Options:
    --shapes   comma-separated logits shapes B x C x spatial... (default 2x8x128x128x128,2x4x64x64x64)
    --repeats  timed repeats per (case, impl); the median is reported (default 5)
    --min-time keep repeating until the timed calls add up to this many seconds (default 1.0), so
               that millisecond-scale cases get enough calls for a stable median
    --threads  torch.set_num_threads in every child (default: the usable cores)
    --impls    subset of seglosses,monai,onehot (default: all three)
    --timeout  seconds allowed per child process (default 1800)

What is measured, for float32 logits x [B, C, *] and int64 labels y [B, *] (random, seeded, the same
in every process):
    seglosses  ``seglosses.functional.dice_loss(x, y, smooth=1e-5)``
    monai      ``monai.losses.DiceLoss(to_onehot_y=True, softmax=True)`` on (x, y[:, None])
               (its default smooth_nr = smooth_dr = 1e-5, hence smooth=1e-5 for the other two)
    onehot     softmax + ``F.one_hot`` + sums with autograd, the textbook PyTorch version
One forward + backward of the mean loss per call. Every (case, impl) runs in fresh processes (this
script re-invokes itself with ``--child``), so no implementation sees another's allocator state:
    * a *time* child with the default allocator: one warm-up call, then at least ``--repeats`` timed
      calls and at least ``--min-time`` seconds of them (``x.grad = None`` before each, untimed),
      median wall time;
    * a *mem* child started with glibc's mmap threshold fixed at 64 KiB (``bench/common.py``
      MALLOC_ENV) so that every freed tensor buffer leaves the resident set at once. It creates and
      touches x and y, warms up on an 8^d crop of them (code pages, thread pool, lazy init; a
      full-size warm-up would hide scratch memory that an implementation keeps between calls),
      then resets the resident-set high-water mark (write "5" to /proc/self/clear_refs) and runs
      one full-size call. "peak extra" = VmHWM after that call - VmRSS just before it: every byte
      the loss needed on top of the live inputs, including the gradient it leaves in ``x.grad``.
      The ideal is the gradient alone, i.e. extra / size(x) = 1.0 (issue goal: <= 1.1; MONAI
      measured ~3). "kept after" = VmRSS once the loss and ``x.grad`` are freed - VmRSS before
      (0 unless the implementation caches buffers).
The loss values of the children are compared with MONAI's (relative difference, must be < 1e-4).
Exit status 1 if a child failed or a loss check failed.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

IMPLS = ("seglosses", "monai", "onehot")
DEFAULT_SHAPES = "2x8x128x128x128,2x4x64x64x64"
SMOOTH = 1e-5  # MONAI DiceLoss default smooth_nr / smooth_dr
LOSS_RTOL = 1e-4


def parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(t) for t in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected e.g. 2x8x128x128x128")
    if len(shape) < 3 or len(shape) > 5 or min(shape) < 1 or shape[1] < 2:
        raise argparse.ArgumentTypeError(
            f"bad shape {text!r}: need B x C x 1-3 spatial dims, all >= 1, C >= 2")
    return shape


# ----------------------------------------------------------------------------- child side

def make_inputs(shape: tuple):
    """x: float32 logits (requires grad), y: int64 labels in [0, C); every page written."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.empty(shape, dtype=torch.float32)
    x.normal_(generator=gen)
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen, dtype=torch.int64)
    x.requires_grad_(True)
    return x, y


def make_loss(impl: str, num_classes: int):
    import torch
    import torch.nn.functional as F

    if impl == "seglosses":
        common.add_repo_to_path()
        from seglosses.functional import dice_loss

        return lambda x, y: dice_loss(x, y, smooth=SMOOTH)
    if impl == "monai":
        from monai.losses import DiceLoss

        fn = DiceLoss(to_onehot_y=True, softmax=True)
        return lambda x, y: fn(x, y.unsqueeze(1))
    if impl == "onehot":
        def onehot_dice(x, y):
            s = torch.softmax(x, dim=1)
            t = F.one_hot(y, num_classes).movedim(-1, 1).to(x.dtype)
            dims = tuple(range(2, x.dim()))
            inter = (s * t).sum(dims)
            denom = s.sum(dims) + t.sum(dims)
            return (1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()

        return onehot_dice
    raise ValueError(f"unknown impl {impl!r}")


def child(mode: str, shape: tuple, impl: str, repeats: int, threads: int, min_time: float = 0.0) -> None:
    import torch

    torch.set_num_threads(threads)
    x, y = make_inputs(shape)
    fn = make_loss(impl, shape[1])

    def step():
        loss = fn(x, y)
        loss.backward()
        return loss

    out = {"impl": impl, "shape": list(shape), "threads": torch.get_num_threads(),
           "x_bytes": x.numel() * x.element_size()}
    if mode == "mem":
        # Warm up on a small crop (code pages, thread pool, lazy init) rather than at full size, so
        # that scratch memory an implementation keeps between calls is counted, not hidden.
        crop = (slice(None), slice(None)) + tuple(slice(0, 8) for _ in shape[2:])
        xs = x.detach()[crop].contiguous().requires_grad_(True)
        fn(xs, y[crop[:1] + crop[2:]].contiguous()).backward()
        del xs
        gc.collect()
        common.malloc_trim()
        out["rss_inputs"] = before = common.rss_bytes()
        with common.PeakRSS() as meter:
            loss = step()
        out["extra_bytes"] = meter.extra_bytes
        out["mem_method"] = meter.method
        out["loss"] = float(loss.detach())
        del loss
        x.grad = None
        gc.collect()
        common.malloc_trim()
        out["retained_bytes"] = max(0, common.rss_bytes() - before)
    else:
        def setup():
            x.grad = None

        med, times = common.median_time(step, repeats, warmup=1, setup=setup, min_time=min_time)
        out["time_s"] = med
        out["times_s"] = times
        out["loss"] = float(fn(x, y).detach())
    common.emit_result(out)


# ----------------------------------------------------------------------------- parent side

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES,
                    help=f"comma-separated B x C x spatial shapes (default {DEFAULT_SHAPES})")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="time each (case, impl) for at least this many seconds in all (default 1.0)")
    ap.add_argument("--threads", type=int, default=common.usable_cores(),
                    help="torch threads in each child (default: usable cores)")
    ap.add_argument("--impls", default=",".join(IMPLS), help="subset of " + ",".join(IMPLS))
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child (default 1800)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SHAPE", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1")

    if args.child:
        mode, shape, impl = args.child
        child(mode, parse_shape(shape), impl, args.repeats, args.threads, args.min_time)
        return 0

    try:
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    except argparse.ArgumentTypeError as exc:
        ap.error(f"--shapes: {exc}")
    if not shapes:
        ap.error("--shapes: no shape given")
    impls = [s for s in args.impls.split(",") if s]
    for impl in impls:
        if impl not in IMPLS:
            ap.error(f"--impls: unknown {impl!r} (choose from {', '.join(IMPLS)})")

    print("# Dice loss, CPU, float32, forward + backward")
    print()
    for line in common.machine_lines([common.seglosses_line(), f"threads per child: {args.threads}; repeats: at least "
                                      f"{args.repeats} and {args.min_time} s (median after 1 warm-up)"]):
        print("- " + line)
    print(flush=True)

    script = os.path.abspath(__file__)
    rows, failed, methods, verdicts = [], False, set(), []
    for shape in shapes:
        case = "[" + ",".join(map(str, shape)) + "]"
        shape_arg = "x".join(map(str, shape))
        res = {}
        for impl in impls:
            common_args = [script, "--repeats", str(args.repeats), "--threads", str(args.threads),
                           "--min-time", str(args.min_time)]
            mem = common.run_child(common_args + ["--child", "mem", shape_arg, impl],
                                   env_extra=common.MALLOC_ENV, timeout=args.timeout)
            tim = common.run_child(common_args + ["--child", "time", shape_arg, impl],
                                   timeout=args.timeout)
            res[impl] = (mem, tim)
            for r in (mem, tim):
                if "error" in r:
                    print(f"  {case} {impl}: child failed: {r['error']}", file=sys.stderr, flush=True)
            if "mem_method" in mem:
                methods.add(mem["mem_method"])
        ref_loss = res.get("monai", ({}, {}))[1].get("loss")
        ref_time = res.get("monai", ({}, {}))[1].get("time_s")
        for impl in impls:
            mem, tim = res[impl]
            if "error" in mem or "error" in tim:
                failed = True
                rows.append([case, impl, "error", "error", "-", "-", "-", "-", "-"])
                continue
            xb = tim["x_bytes"]
            ratio = mem["extra_bytes"] / xb
            t = tim["time_s"]
            vs = f"{t / ref_time:.2f}x" if ref_time else "-"
            loss = tim["loss"]
            if ref_loss is None:
                check = "-"
            elif impl == "monai":
                check = "ref"
            else:
                rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
                rel_mem = abs(mem["loss"] - ref_loss) / max(abs(ref_loss), 1e-30)
                ok = rel < LOSS_RTOL and rel_mem < LOSS_RTOL
                failed |= not ok
                check = f"{max(rel, rel_mem):.1e} {'ok' if ok else 'FAIL'}"
            rows.append([case, impl, common.fmt_s(t), f"{mem['extra_bytes'] / common.MIB:.1f}",
                         f"{ratio:.2f}", f"{mem['retained_bytes'] / common.MIB:.1f}", vs, f"{loss:.6f}", check])
            if impl == "seglosses":
                goal_mem = "met" if ratio <= 1.1 else "NOT met"
                goal_time = ("met" if ref_time and t <= 0.5 * ref_time else "NOT met") if ref_time else "n/a"
                verdicts.append(f"{case}: seglosses extra/size(x) = {ratio:.2f} (goal <= 1.1: {goal_mem}); "
                                f"time vs MONAI = {vs} (goal <= 0.5x: {goal_time})")

    headers = ["case", "impl", "time fwd+bwd (s)", "peak extra (MiB)", "extra / size(x)", "kept after (MiB)",
               "time vs MONAI", "loss", "rel. diff vs MONAI"]
    print(common.markdown_table(headers, rows))
    print()
    sizes = ", ".join("[" + ",".join(map(str, s)) + f"]: {_numel(s) * 4 / common.MIB:.0f} MiB" for s in shapes)
    print(f"size(x) (float32 logits): {sizes}. Peak extra = peak RSS during the first full-size fwd+bwd minus "
          f"RSS with the inputs live; it includes x.grad. Kept after = RSS still held once the loss and x.grad "
          f"are freed. Method: {', '.join(sorted(methods)) or '-'}; fresh process per (case, impl), glibc mmap "
          f"threshold 64 KiB, warm-up on an 8^d crop.")
    for v in verdicts:
        print("- " + v)
    return 1 if failed else 0


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    sys.exit(main())
