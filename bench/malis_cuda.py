"""MALIS on CUDA: where the time of a call goes (``bench/malis_weights.py --device cuda``).

The sweep runs on the host, so a CUDA call is: inputs to the host (one trip, pinned), the sweep,
the weights back (one trip, pinned, asynchronous). For each case, per call:

    D->H, H->D   the copies' own GPU time, from the torch profiler's memcpy records of one real call
                 (their names also say whether the host side was pinned); where the profiler records
                 no CUDA activity, the time of one pinned copy of as many bytes, timed with CUDA events
    sweep        the same computation on the host alone: the op on the host copies of the inputs
                 (wall time, median)
    total        the call end to end, wall time, median, with the GPU idle before and the copy back
                 finished after (torch.cuda.synchronize on both sides)
    other        total - D->H - sweep - H->D: device-side preparation (thresholds, int32 labels),
                 launches, the one host wait, Python
    bytes        what the backend moved (its own counters: torch.ops.seglosses._transfer_counts)
    peak GPU     torch.cuda.max_memory_allocated during one call, above what was allocated before
                 (the weights it returns included)

Cases (batch and size from the options; default 3 x 128^3, Voronoi labels, random predictions):
    malis_weights, gt_seg          float32 pred, int64 labels on the GPU (they cross as int32)
    malis_weights, no gt_seg       the components of gt_affs on the host (MalisLoss without gt_seg)
    MalisLoss fwd+bwd, gt_seg      the training step's MALIS part, logits on the GPU
    MalisLoss fwd+bwd, no gt_seg
"""

from __future__ import annotations

import statistics
import time

import common
import malis_data
from malis_data import NHOOD


def _cuda_time_ms(fn, torch) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def profiled_copies(call, torch):
    """(D->H ms, H->D ms, all pinned?) of one call from the profiler, or None without CUDA records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    d2h = h2d = 0.0
    pinned, seen = True, False
    for e in prof.events():
        name = e.name
        if "Memcpy" not in name or ("DtoH" not in name and "HtoD" not in name):
            continue
        seen = True
        ms = e.time_range.elapsed_us() / 1e3
        if "DtoH" in name:
            d2h += ms
        else:
            h2d += ms
        pinned &= "Pinned" in name
    return (d2h, h2d, pinned) if seen else None


def equivalent_copies(to_host_bytes, to_device_bytes, torch):
    """(D->H ms, H->D ms) of one pinned copy of as many bytes each way (the profiler's fallback)."""
    dev = torch.empty(max(to_host_bytes, to_device_bytes, 1), dtype=torch.uint8, device="cuda")
    host = torch.empty(dev.shape, dtype=torch.uint8, pin_memory=True)
    d2h = _cuda_time_ms(lambda: host[:to_host_bytes].copy_(dev[:to_host_bytes], non_blocking=True), torch)
    h2d = _cuda_time_ms(lambda: dev[:to_device_bytes].copy_(host[:to_device_bytes], non_blocking=True), torch)
    return d2h, h2d


def wall_ms(fn, repeats, torch):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_cuda(args) -> int:
    import torch

    common.add_repo_to_path()
    import seglosses

    if not torch.cuda.is_available():
        print("malis_weights --device cuda: torch sees no GPU")
        return 1
    size = 128 if args.sizes == "64,128" else int(args.sizes.split(",")[0])  # the CPU default -> 128
    batch = args.batch or 3
    t0 = time.perf_counter()
    (case,) = malis_data.load_cases("voronoi", "random", sizes=[size], n_labels=args.labels, seed=args.seed,
                                    batch=batch, mask=False, data_dir=args.data_dir)
    made = time.perf_counter() - t0
    dev = torch.device("cuda")
    pred = torch.from_numpy(case.affs).to(dev)
    seg = torch.from_numpy(case.seg).to(dev)
    gt = seglosses.seg_to_affgraph(seg, NHOOD) > 0.5  # bool, on the GPU
    logits = torch.logit(pred.clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    target = gt.float()

    def loss_step(gt_seg):
        def step():
            logits.grad = None
            seglosses.MalisLoss(NHOOD)(logits, target, gt_seg=gt_seg).backward()
        return step

    host = {"pred": pred.cpu(), "seg": seg.cpu().int(), "gt": gt.cpu()}
    cases = [
        ("malis_weights, gt_seg", lambda: seglosses.malis_weights(pred, seg, NHOOD, gt_affs=gt),
         lambda: seglosses.malis_weights(host["pred"], host["seg"], NHOOD, gt_affs=host["gt"])),
        ("malis_weights, no gt_seg", lambda: seglosses.malis_weights(pred, None, NHOOD, gt_affs=gt),
         lambda: seglosses.malis_weights(host["pred"], None, NHOOD, gt_affs=host["gt"])),
        ("MalisLoss fwd+bwd, gt_seg", loss_step(seg),
         lambda: seglosses.malis_weights(host["pred"], host["seg"], NHOOD, gt_affs=host["gt"])),
        ("MalisLoss fwd+bwd, no gt_seg", loss_step(None),
         lambda: seglosses.malis_weights(host["pred"], None, NHOOD, gt_affs=host["gt"])),
    ]
    print(f"# MALIS on CUDA: {batch} x {size}^3, {args.labels} Voronoi labels, random predictions, "
          f"3 nearest-neighbour edges")
    print()
    for line in common.machine_lines([common.seglosses_line(), f"GPU: {torch.cuda.get_device_name(0)}, "
                                      f"CUDA {torch.version.cuda}", f"repeats: {args.repeats} (median, 1 warm-up)",
                                      f"data made in {made:.1f} s"]):
        print("- " + line)
    print(flush=True)

    rows, methods, failed = [], set(), False
    for name, call, host_call in cases:
        try:
            call()  # warm-up: kernels, pinned blocks, the MALIS workspace
            before = torch.ops.seglosses._transfer_counts()
            call()
            torch.cuda.synchronize()
            moved = [a - b for a, b in zip(torch.ops.seglosses._transfer_counts(), before)]
            to_host, to_device, pageable, waits = moved[1], moved[3], moved[4], moved[5]
            prof = profiled_copies(call, torch)
            if prof is not None:
                d2h, h2d, pinned = prof
                methods.add("profiler")
            else:
                d2h, h2d = equivalent_copies(to_host, to_device, torch)
                pinned = pageable == 0
                methods.add("pinned copies of as many bytes (no profiler records)")
            sweep = wall_ms(host_call, args.repeats, torch)
            total = wall_ms(call, args.repeats, torch)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = call()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            del out
        except Exception as exc:  # a row that failed is reported, the others still run
            print(f"{name}: failed: {exc}", flush=True)
            rows.append([name] + ["error"] * 9)
            failed = True
            continue
        rows.append([name, f"{d2h:.2f}", f"{sweep:.1f}", f"{h2d:.2f}", f"{total:.1f}",
                     f"{max(0.0, total - d2h - sweep - h2d):.1f}", f"{100 * (d2h + h2d) / total:.1f} %",
                     f"{to_host / common.MIB:.1f} / {to_device / common.MIB:.1f}",
                     f"{waits}{'' if pinned else ' (PAGEABLE)'}", f"{peak / common.MIB:.1f}"])
        failed |= waits != 1 or not pinned
    print(common.markdown_table(["case", "D->H ms", "sweep ms", "H->D ms", "total ms", "other ms",
                                 "transfer share", "MiB D->H / H->D", "host waits", "peak GPU MiB"], rows))
    print()
    print(f"Copy times: {', '.join(sorted(methods)) or '-'}. The sweep column is the same op on host copies "
          f"of the inputs (the host part of a call); 'other' is what remains of the total. A call must wait "
          f"for the GPU exactly once and copy from pinned memory, else the row counts as a failure.")
    return 1 if failed else 0
