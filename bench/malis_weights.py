"""MALIS weights benchmark: seglosses.malis_weights vs the PyPI package malis 1.0, CPU.

Usage::

    bash bench/setup_malis_venv.sh            # once: builds bench/.malis-venv with malis==1.0
    .venv/bin/python bench/malis_weights.py                       # every data set, both kinds
    .venv/bin/python bench/malis_weights.py --data voronoi --sizes 64,128 --pred random
    .venv/bin/python bench/malis_weights.py --data pinky40,fib25 --pred random,smooth --mask
    .venv/bin/python bench/malis_weights.py --data voronoi --sizes 32,48 --repeats 3 --peer-repeats 1 --min-time 0
    .venv/bin/python bench/malis_weights.py --no-peer                                     # seglosses only
    python bench/malis_weights.py --device cuda        # on a GPU: transfer vs sweep time, 3 x 128^3 (malis_cuda.py)

Options:
    --data          comma-separated data sets: voronoi, pinky40, fib25 (default: all three; see
                    bench/malis_data.py for what each holds and how predictions are made)
    --pred          comma-separated prediction kinds: random, smooth (default: both)
    --mask          with a mask (the first quarter of the z-slices excluded): both sides apply
                    PyTorch Connectomics' mask rule, so the rows measure its cost
    --data-dir      where pinky40/ and fib25/ are (default: env SEGLOSSES_DATA_DIR, else
                    ../shared/data relative to the repository root); a missing one is skipped
    --sizes         voronoi cube edge lengths (default 64,128)
    --labels        voronoi seeds = labels per sample (default 200)
    --repeats       timed repeats for seglosses, median reported, after 1 warm-up (default 5)
    --peer-repeats  timed repeats for malis 1.0, median reported, no warm-up (default 2)
    --min-time      both sides repeat each timing until the timed calls add up to this many
                    seconds (default 2; a 64^3 call of ~0.01 s then gets ~200 samples, not 5)
    --seed          RNG seed of the data (default 0)
    --no-peer       skip malis 1.0
    --peer-python   interpreter that has malis 1.0 (default bench/.malis-venv/bin/python)
    --timeout       seconds allowed per child process (default 3600)
    --device        cpu (default: everything above) or cuda: the CUDA mode of bench/malis_cuda.py
                    (one voronoi cube of --sizes, default 128, batch --batch, default 3; no peer)
    --batch         samples per call in the CUDA mode (default 3)

Both implementations get the same arrays with the same edge convention (malis 1.0's
``nodelist_like`` also pairs p with p + nhood[c]), so their pair counts are comparable.

The parent makes the data, saves it to a temporary .npz file and runs every measurement in a fresh
child process (this script re-invoked with ``--child``): seglosses under the current interpreter,
malis 1.0 under ``--peer-python``.

What is timed, per call (constrained MALIS, normalised weights, gt affinities derived from gt_seg):
    seglosses  ``seglosses.malis_weights(pred, gt_seg, nhood[, mask=mask])`` (one call does both
               passes). "1 thread, batch 1": torch.set_num_threads(1), one sample.
               "2 threads, batch 1": torch.set_num_threads(2), the same sample.
               "2 threads, batch 2": torch.set_num_threads(2), two samples; time / 2.
               Also "CPU s": the process CPU time of the 1-thread call (time.process_time), the
               number to compare on a loaded machine.
    malis 1.0  in its own venv, in a subprocess. Its API has no batch and no constrained MALIS
               entry point, only ``malis_loss_weights(seg, node1, node2, edge_weight, pos)`` (one
               Kruskal pass counting same-label pairs if pos=1, different-label pairs if pos=0,
               into a uint64 array per edge). The constrained weights are computed as PyTorch
               Connectomics' MalisLoss does (and, without a mask, the malis authors' own
               ``MalisWeights.get_edge_weights``): gt_affs = ``malis.seg_to_affgraph(seg, nhood)``;
               positive pass on the prediction with GT-0 edges (inside the mask) set to 0,
               negative pass with GT-1 edges (inside the mask) set to 1; counts of the other
               class's edges and of excluded edges zeroed; each pass divided by its own total;
               summed. The edge lists (``malis.nodelist_like``, cast to uint64) are built once per
               shape outside the timing, as that wrapper does in its constructor.
               "1 process, batch 1": one sample per call.
               "2 processes, batch 2": a multiprocessing pool of 2 forked workers (already warm,
               data inherited), one sample each, wall time of the pair / 2; only the count totals
               are sent back, so no transfer is charged to the peer. malis 1.0 is single-threaded,
               so two processes are its fair use of two cores.
    Each time is seconds per sample; "speed-up vs malis 1.0" compares rows of the same
    threads/batch kind.

Memory (batch-1 rows): a separate child started with ``common.MALLOC_ENV`` (glibc mmap threshold
64 KiB, so freed buffers leave the resident set) loads the data, warms up on an 8^3 crop (code pages,
lazy initialisation), resets the resident-set high-water mark via /proc/self/clear_refs and runs one
full-size call. "peak extra" = VmHWM after - VmRSS before, including the returned weights;
"kept after" = VmRSS once the weights are dropped - VmRSS before: scratch memory that the library
keeps for its next call (seglosses keeps a per-thread workspace; so a warm-up at full size would hide
its peak, hence the small one). See ``bench/common.py`` for the method.

Sanity column: total positive and negative pair counts of sample 0 (seglosses with
normalize=False; malis 1.0 from its per-edge count arrays, after zeroing the other class's edges).
Without a mask and without exact ties both totals do not depend on the order of tied edges, so the
two implementations should agree exactly. Without a mask the exact negative total is
C(N, 2) - sum_l C(n_l, 2) over the labelled voxels (the grid is connected), printed as "expected".
The column reports; it does not assert.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import malis_data  # noqa: E402
from malis_data import NHOOD  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PEER_PYTHON = os.path.join(HERE, ".malis-venv", "bin", "python")


# ----------------------------------------------------------------------------- data

def expected_counts(seg0):
    """(upper bound of the positive total, exact negative total) for one sample, no mask."""
    import numpy as np

    n_l = np.bincount(seg0.ravel())[1:].astype(object)  # labelled voxels per label; Python ints
    same = int(sum(int(n) * (int(n) - 1) // 2 for n in n_l))
    n = int(sum(n_l))
    return same, n * (n - 1) // 2 - same


# ----------------------------------------------------------------------------- malis 1.0 side

def _import_malis():
    """malis 1.0 does ``from scipy.misc import comb``; SciPy moved comb to scipy.special."""
    import types
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # scipy.misc is deprecated
    try:
        import scipy.misc
    except ImportError:  # SciPy without scipy.misc at all
        import scipy

        scipy.misc = types.ModuleType("scipy.misc")
        sys.modules["scipy.misc"] = scipy.misc
    import scipy.special

    scipy.misc.comb = scipy.special.comb
    import malis

    if not hasattr(malis, "malis_loss_weights"):
        raise ImportError(f"{malis.__file__} is not the malis 1.0 package")
    return malis


_PEER = {}  # data and edge lists, set before the pool forks


def _peer_sample(b: int):
    """Constrained MALIS weights of sample b with malis 1.0. Returns (weights, pos total, neg total)."""
    mask = None if _PEER["mask"] is None else _PEER["mask"][b]
    return peer_weights(_PEER["malis"], _PEER["seg"][b], _PEER["affs"][b], _PEER["nhood"],
                        _PEER["node1"], _PEER["node2"], mask)


def peer_edges(malis, shape, nhood):
    """malis 1.0 edge lists for a volume shape, as the uint64 arrays malis_loss_weights takes."""
    import numpy as np

    node1, node2 = malis.nodelist_like(tuple(shape), nhood)
    return node1.astype(np.uint64).ravel(), node2.astype(np.uint64).ravel()


def peer_weights(malis, seg_b, aff_b, nhood, node1, node2, mask_b=None):
    """Constrained MALIS weights of one sample [3, *] with malis 1.0 (PyTorch Connectomics' two
    passes; mask_b [1, *] or None). Returns (weights, pos total, neg total)."""
    import numpy as np

    gt_affs = malis.seg_to_affgraph(seg_b, nhood)
    seg_flat = seg_b.astype(np.uint64).ravel()
    inside = None if mask_b is None else np.broadcast_to(mask_b == 1, aff_b.shape)
    weights = np.zeros(aff_b.shape, dtype=np.float32)
    totals = []
    for pos in (1, 0):
        pass_affs = np.copy(aff_b)
        other = gt_affs == (1 - pos)
        pass_affs[other if inside is None else other & inside] = 1 - pos
        counts = malis.malis_loss_weights(seg_flat, node1, node2, pass_affs.astype(np.float32).ravel(), pos)
        counts = counts.reshape(aff_b.shape)
        counts[other] = 0
        if inside is not None:
            counts[~inside] = 0
        total = int(counts.sum(dtype=np.int64))
        totals.append(total)
        w = counts.astype(np.float32)
        if total != 0:
            w /= np.float32(total)
        weights += w
    return weights, totals[0], totals[1]


def _peer_pool_task(b: int):
    t0 = time.perf_counter()
    _, pos, neg = _peer_sample(b)
    return b, pos, neg, time.perf_counter() - t0


def peer_child(mode: str, data_path: str, repeats: int, min_time: float) -> None:
    """Runs under bench/.malis-venv/bin/python: numpy + malis 1.0, no torch."""
    import multiprocessing as mp

    import numpy as np

    malis = _import_malis()
    data = np.load(data_path)
    seg, affs = data["seg"], data["affs"]
    mask = data["mask"] if "mask" in data.files else None
    nhood = np.asarray(NHOOD, dtype=np.int32)
    node1, node2 = peer_edges(malis, seg.shape[1:], nhood)
    _PEER.update(malis=malis, seg=seg, affs=affs, mask=mask, nhood=nhood, node1=node1, node2=node2)
    out = {"malis_file": malis.__file__, "numpy": np.__version__}

    if mode == "mem":
        small = tuple(min(8, n) for n in seg.shape[1:])  # warm-up on a small crop: code, lazy init
        sl = (slice(None),) + tuple(slice(0, n) for n in small)
        peer_weights(malis, np.ascontiguousarray(seg[0][sl[1:]]), np.ascontiguousarray(affs[0][sl]), nhood,
                     *peer_edges(malis, small, nhood), None if mask is None else np.ascontiguousarray(mask[0][sl]))
        measure_memory(out, lambda: _peer_sample(0))
        return

    times = []
    while len(times) < repeats or sum(times) < min_time:
        t0 = time.perf_counter()
        _, pos, neg = _peer_sample(0)
        times.append(time.perf_counter() - t0)
    out["t1"], out["t1_all"] = float(np.median(times)), times
    out["pos"], out["neg"] = pos, neg

    if seg.shape[0] >= 2:
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            pool.map(_peer_noop, [0, 1])  # start both workers before timing
            times2 = []
            while len(times2) < repeats or sum(times2) < min_time:
                t0 = time.perf_counter()
                pool.map(_peer_pool_task, [0, 1], chunksize=1)
                times2.append((time.perf_counter() - t0) / 2)
        out["t2"], out["t2_all"] = float(np.median(times2)), times2
    common.emit_result(out)


def _peer_noop(_):
    return os.getpid()


# ----------------------------------------------------------------------------- both sides

def measure_memory(out: dict, call) -> None:
    """Peak RSS of one ``call()`` above the RSS before it, and the RSS still held once its result
    is dropped (scratch buffers a library keeps for the next call). Emits ``out``."""
    import gc

    gc.collect()
    common.malloc_trim()
    before = common.rss_bytes()
    with common.PeakRSS() as meter:
        result = call()
    del result
    gc.collect()
    common.malloc_trim()
    out["extra_bytes"], out["mem_method"] = meter.extra_bytes, meter.method
    out["retained_bytes"] = max(0, common.rss_bytes() - before)
    common.emit_result(out)


# ----------------------------------------------------------------------------- seglosses side

def seglosses_child(mode: str, data_path: str, repeats: int, min_time: float) -> None:
    """Runs under the project's venv (torch + seglosses)."""
    import numpy as np
    import torch

    common.add_repo_to_path()
    import seglosses

    data = np.load(data_path)
    pred = torch.from_numpy(data["affs"])
    gt = torch.from_numpy(data["seg"])
    mask = torch.from_numpy(data["mask"]) if "mask" in data.files else None
    p1, g1 = pred[:1].contiguous(), gt[:1].contiguous()
    m1 = None if mask is None else mask[:1].contiguous()
    out = {"seglosses_file": seglosses.__file__}

    def call(p, g, m, **kw):
        return seglosses.malis_weights(p, g, NHOOD, mask=m, **kw)

    torch.set_num_threads(1)
    if mode == "mem":
        sl = (slice(None), slice(None)) + tuple(slice(0, 8) for _ in range(p1.dim() - 2))
        call(p1[sl].contiguous(), g1[sl[:1] + sl[2:]].contiguous(), None if m1 is None else m1[sl].contiguous())
        measure_memory(out, lambda: call(p1, g1, m1))
        return

    out["t1"], out["t1_all"] = common.median_time(lambda: call(p1, g1, m1), repeats, min_time=min_time)
    cpu = []
    for _ in range(max(3, repeats)):
        t0 = time.process_time()
        call(p1, g1, m1)
        cpu.append(time.process_time() - t0)
    out["cpu1"] = float(np.median(cpu))
    pos, neg = call(p1, g1, m1, normalize=False)
    out["pos"], out["neg"] = int(pos.sum()), int(neg.sum())
    torch.set_num_threads(2)
    out["t21"], out["t21_all"] = common.median_time(lambda: call(p1, g1, m1), repeats, min_time=min_time)
    t2, t2_all = common.median_time(lambda: call(pred, gt, mask), repeats, min_time=min_time)
    out["t2"], out["t2_all"] = t2 / 2, [t / 2 for t in t2_all]
    w = call(pred, gt, mask)
    out["wsum"] = [float(w[b].double().sum()) for b in range(w.shape[0])]
    if not np.isfinite(out["wsum"]).all():
        raise RuntimeError(f"non-finite weights: sums {out['wsum']}")
    common.emit_result(out)


# ----------------------------------------------------------------------------- parent

def _csv(ap, name, value, choices):
    items = [v for v in value.split(",") if v]
    bad = [v for v in items if v not in choices]
    if not items or bad:
        ap.error(f"--{name}: expected a comma-separated subset of {', '.join(choices)}, got {value!r}")
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=",".join(malis_data.DATA_SETS), help="data sets (default: all)")
    ap.add_argument("--pred", default=",".join(malis_data.PRED_KINDS), help="prediction kinds (default: both)")
    ap.add_argument("--mask", action="store_true", help="with a mask (PyTorch Connectomics' rule)")
    ap.add_argument("--data-dir", default=malis_data.default_data_dir(),
                    help="pinky40/ and fib25/ (default: $SEGLOSSES_DATA_DIR or ../shared/data)")
    ap.add_argument("--sizes", default="64,128", help="voronoi cube sizes (default 64,128)")
    ap.add_argument("--labels", type=int, default=200, help="Voronoi labels per sample (default 200)")
    ap.add_argument("--repeats", type=int, default=5, help="seglosses timed repeats (default 5)")
    ap.add_argument("--peer-repeats", type=int, default=2, help="malis 1.0 timed repeats (default 2)")
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="repeat each timing until the timed calls add up to this many seconds (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ap.add_argument("--no-peer", action="store_true", help="skip malis 1.0")
    ap.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON,
                    help="python with malis 1.0 (default bench/.malis-venv/bin/python)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process (default 3600)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bench/malis_cuda.py's table")
    ap.add_argument("--batch", type=int, default=None, help="samples per call in the CUDA mode (default 3)")
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "MODE", "DATA_NPZ"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import malis_cuda

        return malis_cuda.run_cuda(args)

    if args.child:
        impl, mode, path = args.child
        if impl == "malis":
            peer_child(mode, path, args.peer_repeats, args.min_time)
        else:
            seglosses_child(mode, path, args.repeats, args.min_time)
        return 0

    data_sets = _csv(ap, "data", args.data, malis_data.DATA_SETS)
    kinds = _csv(ap, "pred", args.pred, malis_data.PRED_KINDS)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        ap.error(f"--sizes: expected integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 2 or args.labels < 1 or args.repeats < 1 or args.peer_repeats < 1:
        ap.error("--sizes must be >= 2; --labels, --repeats and --peer-repeats >= 1")

    import numpy as np

    peer_ok = not args.no_peer and os.path.exists(args.peer_python)
    if args.no_peer:
        peer_note = "malis 1.0: skipped (--no-peer)"
    elif peer_ok:
        peer_note = f"malis 1.0: {args.peer_python}"
    else:
        peer_note = "malis 1.0: not installed: run bench/setup_malis_venv.sh"

    mask_note = ", mask: first quarter of z excluded (PyTorch Connectomics' rule)" if args.mask else ""
    print(f"# MALIS weights (constrained, normalised), CPU, 3 nearest-neighbour edges{mask_note}")
    print()
    for line in common.machine_lines([common.seglosses_line(), peer_note,
                                      f"repeats: seglosses >= {args.repeats} (median after 1 warm-up), "
                                      f"malis 1.0 >= {args.peer_repeats} (median, no warm-up); both until "
                                      f"{args.min_time:g} s of timed calls", f"data: {args.data_dir}"]):
        print("- " + line)
    print(flush=True)

    rows, notes, failed, methods, volumes = [], [], False, set(), set()
    tmpdir = tempfile.mkdtemp(prefix="seglosses-malis-bench-")
    me = os.path.abspath(__file__)
    rep = ["--repeats", str(args.repeats), "--peer-repeats", str(args.peer_repeats), "--min-time", str(args.min_time)]
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        for data in data_sets:
            for kind in kinds:
                cases = malis_data.load_cases(data, kind, sizes=sizes, n_labels=args.labels, seed=args.seed, batch=2,
                                              mask=args.mask, data_dir=args.data_dir, log=log)
                for case in cases:
                    failed |= run_case(case, kind, args, peer_ok, me, rep, tmpdir, rows, notes, methods, np)
                    volumes.add(tuple(case.seg.shape[1:]))
    finally:
        try:
            os.rmdir(tmpdir)
        except OSError:
            pass

    print()
    headers = ["case", "pred", "impl", "threads / batch", "s / sample", "CPU s (1 thread)", "speed-up vs malis 1.0",
               "peak extra (MiB)", "kept after (MiB)", "sanity: pair counts of sample 0"]
    print(common.markdown_table(headers, rows))
    print()
    print("Peak extra: peak RSS during the first full-size call for one sample (1 thread / 1 process) minus "
          "RSS with the data loaded; kept after: RSS still held once the weights are freed. Fresh process, "
          "glibc mmap threshold 64 KiB, warm-up on an 8^3 crop; method: "
          f"{', '.join(sorted(methods)) or '-'}. It includes the returned weights, float32 [3, *s] = "
          f"{', '.join(f'{12 * int(np.prod(v)) / common.MIB:.1f} MiB at {v}' for v in sorted(volumes))}.")
    for n in notes:
        print("- " + n)
    return 1 if failed else 0


def run_case(case, kind, args, peer_ok, me, rep, tmpdir, rows, notes, methods, np) -> bool:
    """Measures one case on both sides and appends its table rows; returns whether seglosses failed."""
    seg, affs = case.seg, case.affs
    exp_pos, exp_neg = expected_counts(seg[0])
    n_present = len(np.unique(seg[0]))
    print(f"{case.name}, {kind}: {n_present} labels in sample 0; expected counts without a mask: "
          f"pos <= {exp_pos}, neg = {exp_neg}", flush=True)
    path = os.path.join(tmpdir, "data.npz")
    arrays = {"seg": seg, "affs": affs}
    if case.mask is not None:
        arrays["mask"] = case.mask
    np.savez(path, **arrays)
    failed = False
    sl = common.run_child([me, "--child", "seglosses", "time", path] + rep, timeout=args.timeout)
    if "error" not in sl:
        mem = common.run_child([me, "--child", "seglosses", "mem", path] + rep, env_extra=common.MALLOC_ENV,
                               timeout=args.timeout)
        sl["extra_bytes"], sl["retained_bytes"] = mem.get("extra_bytes"), mem.get("retained_bytes")
        methods.add(mem.get("mem_method", "-"))
    else:
        print(f"  seglosses failed: {sl['error']}", file=sys.stderr, flush=True)
        failed = True
    peer = None
    if peer_ok:
        peer = common.run_child([me, "--child", "malis", "time", path] + rep, python=args.peer_python,
                                timeout=args.timeout)
        if "error" in peer:
            print(f"  malis 1.0 failed: {peer['error']}", file=sys.stderr, flush=True)
        else:
            mem = common.run_child([me, "--child", "malis", "mem", path] + rep, python=args.peer_python,
                                   env_extra=common.MALLOC_ENV, timeout=args.timeout)
            peer["extra_bytes"], peer["retained_bytes"] = mem.get("extra_bytes"), mem.get("retained_bytes")
            methods.add(mem.get("mem_method", "-"))
    os.remove(path)

    def speedup(key):
        if "error" in sl or not peer or "error" in peer or key not in peer:
            return "-"
        return f"{peer[key] / sl[key]:.1f}x"

    def counts(d):
        return f"pos {d['pos']}, neg {d['neg']}"

    def mib(d, key="extra_bytes"):
        return "-" if d.get(key) is None else f"{d[key] / common.MIB:.1f}"

    name = case.name
    if "error" in sl:
        rows.append([name, kind, "seglosses", "-", "error", "-", "-", "-", "-", "-"])
    else:
        exact = "" if case.mask is not None else (" (neg = expected)" if sl["neg"] == exp_neg else " (neg != expected!)")
        rows.append([name, kind, "seglosses", "1 thread, batch 1", common.fmt_s(sl["t1"]), common.fmt_s(sl["cpu1"]),
                     speedup("t1"), mib(sl), mib(sl, "retained_bytes"), f"{counts(sl)}{exact}"])
        rows.append([name, kind, "seglosses", "2 threads, batch 1", common.fmt_s(sl["t21"]), "-", "-", "-", "-", "-"])
        rows.append([name, kind, "seglosses", "2 threads, batch 2", common.fmt_s(sl["t2"]), "-", speedup("t2"), "-",
                     "-", "-"])
    if peer is None:
        rows.append([name, kind, "malis 1.0", "-", "skipped" if args.no_peer else "not installed", "-", "-", "-", "-",
                     "-"])
    elif "error" in peer:
        rows.append([name, kind, "malis 1.0", "-", "error", "-", "-", "-", "-", "-"])
    else:
        tag = ""
        if "error" not in sl:
            same = (peer["pos"] == sl["pos"], peer["neg"] == sl["neg"])
            tag = "same as seglosses" if all(same) else (
                "differs from seglosses in " + " and ".join(n for n, s in zip(("pos", "neg"), same) if not s))
        rows.append([name, kind, "malis 1.0", "1 process, batch 1", common.fmt_s(peer["t1"]), "-", "1x", mib(peer),
                     mib(peer, "retained_bytes"), f"{counts(peer)} {tag}".strip()])
        if "t2" in peer:
            rows.append([name, kind, "malis 1.0", "2 processes, batch 2", common.fmt_s(peer["t2"]), "-", "1x", "-",
                         "-", "-"])
    if "error" not in sl:
        voxels = int(np.prod(seg.shape[1:]))
        notes.append(f"{name}, {kind}: one core {common.fmt_s(sl['t1'])} s per sample "
                     f"({1e9 * sl['t1'] / voxels:.1f} ns per voxel); batch 1 on 2 threads "
                     f"{sl['t21'] / sl['t1']:.2f}x the one-thread time")
        if peer and "error" not in peer:
            notes.append(f"{name}, {kind}: speed-up vs malis 1.0 on one core: {peer['t1'] / sl['t1']:.1f}x")
    return failed


if __name__ == "__main__":
    sys.exit(main())
