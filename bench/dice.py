"""Dice-family benchmark: seglosses vs MONAI (and plain PyTorch), forward + backward, CPU or CUDA.

Usage::

    .venv/bin/python bench/dice.py                       # the CPU cases below
    .venv/bin/python bench/dice.py --device cuda         # the GPU cases, plus the bandwidth bound
    .venv/bin/python bench/dice.py --cases dice:2x4x32x32x32,sigmoid:2x3x32x32x32 --repeats 3 --threads 1

Options:
    --device   cpu (default) or cuda
    --cases    comma-separated KIND:SHAPE (B x C x spatial...), KIND one of dice, dice_ce, sigmoid
               (CPU default: dice:2x8x128x128x128, dice:2x4x64x64x64, dice_ce:2x8x128x128x128,
               sigmoid:2x3x128x128x128; CUDA default: dice:2x8x128x128x128, dice:2x40x128x128x128)
    --impls    subset of the implementations of each kind (default: all; see IMPLS)
    --repeats  timed repeats per (case, impl); the median is reported (default 5)
    --min-time keep repeating until the timed calls add up to this many seconds (default 1.0)
    --threads  torch.set_num_threads in every child (default: the usable cores)
    --timeout  seconds allowed per child process (default 1800)

What is measured (float32 logits x [B, C, *], every input random, seeded, the same in every process;
one forward + backward of the mean loss per call):
    dice     int64 labels y [B, *]
             seglosses  seglosses.functional.dice_loss(x, y, smooth=1e-5)
             monai      monai.losses.DiceLoss(to_onehot_y=True, softmax=True)(x, y[:, None])
             onehot     softmax + F.one_hot + sums with autograd, the textbook PyTorch version
    dice_ce  int64 labels y [B, *]
             seglosses  seglosses.functional.dice_ce_loss(x, y, smooth=1e-5)
             monai      monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)(x, y[:, None])
             torch_ce+monai_dice  F.cross_entropy(x, y) + MONAI's DiceLoss as above
    sigmoid  uint8 multi-label targets t of x's shape
             seglosses  seglosses.functional.dice_loss(x, t, activation="sigmoid", smooth=1e-5)
             monai      monai.losses.DiceLoss(sigmoid=True)(x, t)
(MONAI's default smooth_nr = smooth_dr = 1e-5, hence smooth=1e-5 for seglosses.)

Every (case, impl) runs in fresh processes (this script re-invokes itself with ``--child``):
    * a *time* child: one warm-up call, then at least ``--repeats`` timed calls and at least
      ``--min-time`` seconds of them (``x.grad = None`` before each, untimed); the median wall
      time and, on the CPU, the median CPU time of the process (all threads), which is the number
      to compare on a loaded machine; on CUDA the calls are synchronised;
    * a *mem* child (on CUDA the time child measures memory first, then time). CPU: started with glibc's mmap threshold fixed at 64 KiB (bench/common.py
      MALLOC_ENV) so that every freed tensor buffer leaves the resident set at once; warms up on an
      8^d crop (a full-size warm-up would hide scratch memory kept between calls), resets the
      resident-set high-water mark and runs one full-size call: "peak extra" = VmHWM after the
      call - VmRSS before it. CUDA: one full-size warm-up, then torch.cuda.max_memory_allocated()
      during the call minus memory_allocated() before it. Either way it is every byte the loss
      needed on top of the live inputs, including the gradient left in x.grad; the ideal is the
      gradient alone, extra / size(x) = 1.0 (issue goal: <= 1.1).
The loss values are compared with MONAI's (relative difference < 1e-4). With --device cuda the run
also measures the device's copy bandwidth (a device-to-device copy of 1 GiB, bytes read + written
per second) and reports seglosses' Dice against the bandwidth bound: the bytes a fused forward +
backward must move (x read twice, y read twice, the gradient written once) over the measured time.
Exit status 1 if a child failed or a loss check failed.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

IMPLS = {
    "dice": ("seglosses", "monai", "onehot"),
    "dice_ce": ("seglosses", "monai", "torch_ce+monai_dice"),
    "sigmoid": ("seglosses", "monai"),
}
REFERENCE_IMPL = "monai"
DEFAULT_CASES = {
    "cpu": "dice:2x8x128x128x128,dice:2x4x64x64x64,dice_ce:2x8x128x128x128,sigmoid:2x3x128x128x128",
    "cuda": "dice:2x8x128x128x128,dice:2x40x128x128x128",
}
SMOOTH = 1e-5  # MONAI's default smooth_nr / smooth_dr
LOSS_RTOL = 1e-4
COPY_BYTES = 1 << 30


def parse_case(text: str) -> tuple:
    try:
        kind, shape_text = text.split(":")
        shape = tuple(int(t) for t in shape_text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad case {text!r}: expected KIND:BxCx..., e.g. dice:2x8x128x128x128")
    if kind not in IMPLS:
        raise argparse.ArgumentTypeError(f"bad case {text!r}: KIND must be one of {', '.join(IMPLS)}")
    if len(shape) < 3 or len(shape) > 5 or min(shape) < 1 or (kind != "sigmoid" and shape[1] < 2):
        raise argparse.ArgumentTypeError(f"bad case {text!r}: need B x C x 1-3 spatial dims, all >= 1 "
                                         "(C >= 2 for label maps)")
    return kind, shape


def case_arg(kind: str, shape: tuple) -> str:
    return kind + ":" + "x".join(map(str, shape))


# ----------------------------------------------------------------------------- child side

def make_inputs(kind: str, shape: tuple, device: str):
    """x: float32 logits (requires grad); y: int64 labels in [0, C) or uint8 targets of x's shape."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.empty(shape, dtype=torch.float32)
    x.normal_(generator=gen)
    if kind == "sigmoid":
        y = (torch.rand(shape, generator=gen) > 0.5).to(torch.uint8)
    else:
        y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen, dtype=torch.int64)
    x, y = x.to(device), y.to(device)
    x.requires_grad_(True)
    return x, y


def make_loss(kind: str, impl: str, num_classes: int):
    import torch
    import torch.nn.functional as F

    if impl == "seglosses":
        common.add_repo_to_path()
        import seglosses.functional as SF

        if kind == "dice":
            return lambda x, y: SF.dice_loss(x, y, smooth=SMOOTH)
        if kind == "dice_ce":
            return lambda x, y: SF.dice_ce_loss(x, y, smooth=SMOOTH)
        return lambda x, y: SF.dice_loss(x, y, activation="sigmoid", smooth=SMOOTH)
    from monai.losses import DiceCELoss, DiceLoss

    if kind == "sigmoid" and impl == "monai":
        fn = DiceLoss(sigmoid=True)
        return lambda x, y: fn(x, y)
    if kind == "dice_ce" and impl == "monai":
        fn = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda x, y: fn(x, y.unsqueeze(1))
    if kind == "dice_ce" and impl == "torch_ce+monai_dice":
        dice = DiceLoss(to_onehot_y=True, softmax=True)
        return lambda x, y: F.cross_entropy(x, y) + dice(x, y.unsqueeze(1))
    if kind == "dice" and impl == "monai":
        fn = DiceLoss(to_onehot_y=True, softmax=True)
        return lambda x, y: fn(x, y.unsqueeze(1))
    if kind == "dice" and impl == "onehot":
        def onehot_dice(x, y):
            s = torch.softmax(x, dim=1)
            t = F.one_hot(y, num_classes).movedim(-1, 1).to(x.dtype)
            dims = tuple(range(2, x.dim()))
            inter = (s * t).sum(dims)
            denom = s.sum(dims) + t.sum(dims)
            return (1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()

        return onehot_dice
    raise ValueError(f"unknown impl {impl!r} for {kind!r}")


def child(mode: str, kind: str, shape: tuple, impl: str, device: str, repeats: int, threads: int,
          min_time: float) -> None:
    import time

    import torch

    torch.set_num_threads(threads)
    x, y = make_inputs(kind, shape, device)
    fn = make_loss(kind, impl, shape[1])
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        loss = fn(x, y)
        loss.backward()
        sync()
        return loss

    out = {"kind": kind, "impl": impl, "shape": list(shape), "threads": torch.get_num_threads(),
           "x_bytes": x.numel() * x.element_size(), "y_bytes": y.numel() * y.element_size()}
    if mode in ("mem", "both") and cuda:
        step()  # full-size warm-up: the caching allocator and kernels are ready, and counted below
        x.grad = None
        gc.collect()
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = step()
        out["extra_bytes"] = torch.cuda.max_memory_allocated() - before
        out["mem_method"] = "torch.cuda.max_memory_allocated"
        out["loss"] = float(loss.detach())
        del loss
        x.grad = None
        out["retained_bytes"] = max(0, torch.cuda.memory_allocated() - before)
    if mode == "mem" and not cuda:
        # Warm up on a small crop (code pages, thread pool, lazy init) rather than at full size, so
        # that scratch memory an implementation keeps between calls is counted, not hidden.
        crop = (slice(None), slice(None)) + tuple(slice(0, 8) for _ in shape[2:])
        xs = x.detach()[crop].contiguous().requires_grad_(True)
        ys = (y[crop] if kind == "sigmoid" else y[crop[:1] + crop[2:]]).contiguous()
        fn(xs, ys).backward()
        del xs, ys
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
    if mode in ("time", "both"):
        cpu_times = []

        def timed_step():
            t0 = time.process_time()
            step()
            cpu_times.append(time.process_time() - t0)

        def setup():
            x.grad = None

        med, times = common.median_time(timed_step, repeats, warmup=1, setup=setup, min_time=min_time)
        out["time_s"] = med
        out["times_s"] = times
        out["cpu_time_s"] = sorted(cpu_times[1:])[len(cpu_times[1:]) // 2]  # the timed calls only
        out["loss"] = float(fn(x, y).detach())
    common.emit_result(out)


def copy_bandwidth_child() -> None:
    """Device-to-device copy bandwidth: bytes read + written per second, best of 10."""
    import torch

    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = None
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        t = start.elapsed_time(end) / 1e3
        best = t if best is None else min(best, t)
    common.emit_result({"bytes_per_s": 2 * COPY_BYTES / best, "device": torch.cuda.get_device_name()})


# ----------------------------------------------------------------------------- parent side

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--cases", default=None, help="comma-separated KIND:SHAPE (see the docstring)")
    ap.add_argument("--impls", default=None, help="comma-separated implementations (default: all of each kind)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="time each (case, impl) for at least this many seconds in all (default 1.0)")
    ap.add_argument("--threads", type=int, default=common.usable_cores(),
                    help="torch threads in each child (default: usable cores)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child (default 1800)")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "CASE", "IMPL", "DEVICE"), help=argparse.SUPPRESS)
    ap.add_argument("--copy-bandwidth-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1")

    if args.copy_bandwidth_child:
        copy_bandwidth_child()
        return 0
    if args.child:
        mode, case, impl, device = args.child
        kind, shape = parse_case(case)
        child(mode, kind, shape, impl, device, args.repeats, args.threads, args.min_time)
        return 0

    try:
        cases = [parse_case(c) for c in (args.cases or DEFAULT_CASES[args.device]).split(",") if c]
    except argparse.ArgumentTypeError as exc:
        ap.error(f"--cases: {exc}")
    if not cases:
        ap.error("--cases: no case given")
    wanted = None if args.impls is None else [s for s in args.impls.split(",") if s]
    known = {i for impls in IMPLS.values() for i in impls}
    for impl in wanted or []:
        if impl not in known:
            ap.error(f"--impls: unknown {impl!r} (choose from {', '.join(sorted(known))})")

    cuda = args.device == "cuda"
    print(f"# Dice family, {args.device.upper()}, float32, forward + backward")
    print()
    extra = [common.seglosses_line(), f"threads per child: {args.threads}; repeats: at least {args.repeats} and "
             f"{args.min_time} s (median after 1 warm-up)"]
    script = os.path.abspath(__file__)
    bandwidth = None
    if cuda:
        bw = common.run_child([script, "--copy-bandwidth-child"], timeout=args.timeout)
        if "error" in bw:
            print(f"copy bandwidth child failed: {bw['error']}", file=sys.stderr)
        else:
            bandwidth = bw["bytes_per_s"]
            extra.append(f"GPU: {bw['device']}; device-to-device copy: {bandwidth / 1e9:.0f} GB/s (read + write)")
    for line in common.machine_lines(extra):
        print("- " + line)
    print(flush=True)

    rows, failed, methods, verdicts, bound_rows = [], False, set(), [], []
    for kind, shape in cases:
        case = f"{kind} [" + ",".join(map(str, shape)) + "]"
        impls = [i for i in IMPLS[kind] if wanted is None or i in wanted]
        res = {}
        for impl in impls:
            common_args = [script, "--repeats", str(args.repeats), "--threads", str(args.threads),
                           "--min-time", str(args.min_time)]
            child_args = [case_arg(kind, shape), impl, args.device]
            if cuda:  # CUDA memory statistics are the process's own: one child measures both
                mem = tim = common.run_child(common_args + ["--child", "both"] + child_args, timeout=args.timeout)
            else:
                mem = common.run_child(common_args + ["--child", "mem"] + child_args, env_extra=common.MALLOC_ENV,
                                       timeout=args.timeout)
                tim = common.run_child(common_args + ["--child", "time"] + child_args, timeout=args.timeout)
            res[impl] = (mem, tim)
            for r in (mem, tim):
                if "error" in r:
                    print(f"  {case} {impl}: child failed: {r['error']}", file=sys.stderr, flush=True)
            if "mem_method" in mem:
                methods.add(mem["mem_method"])
        ref_mem, ref_tim = res.get(REFERENCE_IMPL, ({}, {}))
        ref_loss, ref_time, ref_cpu = ref_tim.get("loss"), ref_tim.get("time_s"), ref_tim.get("cpu_time_s")
        for impl in impls:
            mem, tim = res[impl]
            if "error" in mem or "error" in tim:
                failed = True
                rows.append([case, impl] + ["error"] * 3 + ["-"] * 6)
                continue
            xb = tim["x_bytes"]
            ratio = mem["extra_bytes"] / xb
            t, ct = tim["time_s"], tim["cpu_time_s"]
            vs = f"{t / ref_time:.2f}x" if ref_time else "-"
            vs_cpu = f"{ct / ref_cpu:.2f}x" if ref_cpu and not cuda else "-"
            loss = tim["loss"]
            if ref_loss is None:
                check = "-"
            elif impl == REFERENCE_IMPL:
                check = "ref"
            else:
                rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
                rel_mem = abs(mem["loss"] - ref_loss) / max(abs(ref_loss), 1e-30)
                ok = rel < LOSS_RTOL and rel_mem < LOSS_RTOL
                failed |= not ok
                check = f"{max(rel, rel_mem):.1e} {'ok' if ok else 'FAIL'}"
            rows.append([case, impl, common.fmt_s(t), "-" if cuda else common.fmt_s(ct),
                         f"{mem['extra_bytes'] / common.MIB:.1f}", f"{ratio:.2f}",
                         f"{mem['retained_bytes'] / common.MIB:.1f}", vs, vs_cpu, f"{loss:.6f}", check])
            if impl == "seglosses":
                goal_mem = "met" if ratio <= 1.1 else "NOT met"
                base = ref_time if cuda else ref_cpu
                mine = t if cuda else ct
                what = "time" if cuda else "CPU time"
                goal_time = ("met" if mine <= 0.5 * base else "NOT met") if base else "n/a"
                verdicts.append(f"{case}: seglosses extra/size(x) = {ratio:.2f} (goal <= 1.1: {goal_mem}); "
                                f"{what} vs MONAI = {mine / base:.2f}x (goal <= 0.5x: {goal_time})" if base else
                                f"{case}: seglosses extra/size(x) = {ratio:.2f} (goal <= 1.1: {goal_mem})")
                if cuda and bandwidth and kind == "dice":
                    must = 3 * xb + 2 * tim["y_bytes"]
                    achieved = must / t
                    bound_rows.append([case, f"{must / 2**20:.0f}", common.fmt_s(t), f"{achieved / 1e9:.0f}",
                                       f"{must / bandwidth * 1e3:.2f}", f"{achieved / bandwidth:.2f}"])

    headers = ["case", "impl", "time fwd+bwd (s)", "CPU time (s)", "peak extra (MiB)", "extra / size(x)",
               "kept after (MiB)", "time vs MONAI", "CPU time vs MONAI", "loss", "rel. diff vs MONAI"]
    print(common.markdown_table(headers, rows))
    print()
    print(f"Peak extra = {'CUDA max_memory_allocated' if cuda else 'peak RSS'} during one full-size fwd+bwd minus "
          f"the memory with the inputs live; it includes x.grad. Kept after = memory still held once the loss and "
          f"x.grad are freed. Method: {', '.join(sorted(methods)) or '-'}; fresh process per (case, impl)"
          + ("" if cuda else ", glibc mmap threshold 64 KiB, warm-up on an 8^d crop") + ".")
    for v in verdicts:
        print("- " + v)
    if bound_rows:
        print()
        print(common.markdown_table(["case", "bytes that must move (MiB)", "seglosses time (s)",
                                     "achieved (GB/s)", "bandwidth bound (ms)", "fraction of copy bandwidth"],
                                    bound_rows))
        print()
        print("Bytes that must move: x read by the forward and by the backward, the labels read by both, the "
              "gradient written once; bound = those bytes / the device-to-device copy bandwidth measured above.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
