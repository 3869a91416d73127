"""MALIS weights benchmark: seglosses.malis_weights vs the PyPI package malis 1.0, CPU.

Usage::

    bash bench/setup_malis_venv.sh            # once: builds bench/.malis-venv with malis==1.0
    .venv/bin/python bench/malis.py           # 64^3 and 128^3
    .venv/bin/python bench/malis.py --sizes 32,48 --repeats 3 --peer-repeats 1   # quick check
    .venv/bin/python bench/malis.py --no-peer                                     # seglosses only

Options:
    --sizes         comma-separated cube edge lengths (default 64,128)
    --labels        Voronoi seeds = labels per sample (default 200)
    --repeats       timed repeats for seglosses, median reported, after 1 warm-up (default 5)
    --peer-repeats  timed repeats for malis 1.0, median reported, no warm-up (default 2)
    --min-time      both sides repeat each timing until the timed calls add up to this many
                    seconds (default 2; a 64^3 call of ~0.01 s then gets ~200 samples, not 5)
    --seed          RNG seed of the data (default 0)
    --no-peer       skip malis 1.0
    --peer-python   interpreter that has malis 1.0 (default bench/.malis-venv/bin/python)
    --timeout       seconds allowed per child process (default 3600)

Data, per size s and sample (two samples, seeded with numpy's default_rng): a segmentation of
``--labels`` labels (1..n, no background) from a Voronoi diagram of uniformly random seed points
(each voxel takes the label of its nearest seed, scipy.spatial.cKDTree), and random float32 predicted
affinities in [0, 1) of shape [3, s, s, s] for nhood [[1,0,0],[0,1,0],[0,0,1]]: channel c at voxel p
is the edge (p, p + nhood[c]). Both implementations get the same arrays with the same convention
(malis 1.0's ``nodelist_like`` also pairs p with p + nhood[c]), so their pair counts are comparable.

The parent makes the data, saves it to a temporary .npz file and runs every measurement in a fresh
child process (this script re-invoked with ``--child``): seglosses under the current interpreter,
malis 1.0 under ``--peer-python``.

What is timed, per call (constrained MALIS, normalised weights, gt affinities derived from gt_seg):
    seglosses  ``seglosses.malis_weights(pred, gt_seg, nhood)`` (one call does both passes).
               "1 thread, batch 1": torch.set_num_threads(1), pred [1, 3, s, s, s].
               "2 threads, batch 2": torch.set_num_threads(2), pred [2, 3, s, s, s]; time / 2.
    malis 1.0  in its own venv, in a subprocess. Its API has no batch and no constrained MALIS
               entry point, only ``malis_loss_weights(seg, node1, node2, edge_weight, pos)`` (one
               Kruskal pass counting same-label pairs if pos=1, different-label pairs if pos=0,
               into a uint64 array per edge). The constrained weights are computed as the malis
               authors' own wrapper does (``MalisWeights.get_edge_weights`` of the malis
               repository): gt_affs = ``malis.seg_to_affgraph(seg, nhood)``; positive pass on the
               prediction with GT-0 edges set to 0, negative pass with GT-1 edges set to 1; counts
               of the other class's edges zeroed; each pass divided by its own total; summed.
               The edge lists (``malis.nodelist_like``, cast to uint64) are built once per shape
               outside the timing, as that wrapper does in its constructor.
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
Both totals do not depend on the order of tied edges, so with the shared edge convention the two
implementations should agree exactly. With every voxel labelled and a connected grid, the exact
negative total is C(N, 2) - sum_l C(n_l, 2), printed as "expected"; the positive total is the sum
over the labels' 6-connected pieces of C(|piece|, 2), at most sum_l C(n_l, 2) (a discretised
Voronoi cell can fall into pieces). The column reports; it does not assert.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PEER_PYTHON = os.path.join(HERE, ".malis-venv", "bin", "python")
NHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


# ----------------------------------------------------------------------------- data

def make_data(size: int, n_labels: int, seed: int, batch: int = 2):
    """seg: int64 [batch, s, s, s] labels 1..n_labels (Voronoi); affs: float32 [batch, 3, s, s, s]."""
    import numpy as np
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    grid = np.indices((size, size, size), dtype=np.float64).reshape(3, -1).T + 0.5
    segs = []
    for _ in range(batch):
        seeds = rng.uniform(0.0, size, size=(n_labels, 3))
        _, nearest = cKDTree(seeds).query(grid, k=1)
        segs.append((nearest + 1).astype(np.int64).reshape(size, size, size))
    seg = np.stack(segs)
    affs = rng.random((batch, len(NHOOD), size, size, size), dtype=np.float32)
    return seg, affs


def expected_counts(seg0):
    """(upper bound of the positive total, exact negative total) for one fully labelled sample."""
    import numpy as np

    n_l = np.bincount(seg0.ravel()).astype(object)  # Python ints: no overflow
    same = int(sum(int(n) * (int(n) - 1) // 2 for n in n_l))
    n = int(seg0.size)
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
    # This file is bench/malis.py: take bench/ off the path so that `import malis` is the package.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
    sys.modules.pop("malis", None)
    import malis

    if not hasattr(malis, "malis_loss_weights"):
        raise ImportError(f"{malis.__file__} is not the malis 1.0 package")
    return malis


_PEER = {}  # data and edge lists, set before the pool forks


def _peer_sample(b: int):
    """Constrained MALIS weights of sample b with malis 1.0. Returns (weights, pos total, neg total)."""
    return peer_weights(_PEER["malis"], _PEER["seg"][b], _PEER["affs"][b], _PEER["nhood"],
                        _PEER["node1"], _PEER["node2"])


def peer_edges(malis, shape, nhood):
    """malis 1.0 edge lists for a volume shape, as the uint64 arrays malis_loss_weights takes."""
    import numpy as np

    node1, node2 = malis.nodelist_like(tuple(shape), nhood)
    return node1.astype(np.uint64).ravel(), node2.astype(np.uint64).ravel()


def peer_weights(malis, seg_b, aff_b, nhood, node1, node2):
    """Constrained MALIS weights of one sample [3, *] with malis 1.0 (the malis authors' two-pass
    scheme). Returns (weights, pos total, neg total)."""
    import numpy as np

    gt_affs = malis.seg_to_affgraph(seg_b, nhood)
    seg_flat = seg_b.astype(np.uint64).ravel()
    weights = np.zeros(aff_b.shape, dtype=np.float32)
    totals = []
    for pos in (1, 0):
        pass_affs = np.copy(aff_b)
        pass_affs[gt_affs == (1 - pos)] = 1 - pos
        counts = malis.malis_loss_weights(seg_flat, node1, node2, pass_affs.astype(np.float32).ravel(), pos)
        counts = counts.reshape(aff_b.shape)
        counts[gt_affs == (1 - pos)] = 0
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
    nhood = np.asarray(NHOOD, dtype=np.int32)
    node1, node2 = peer_edges(malis, seg.shape[1:], nhood)
    _PEER.update(malis=malis, seg=seg, affs=affs, nhood=nhood, node1=node1, node2=node2)
    out = {"malis_file": malis.__file__, "numpy": np.__version__}

    if mode == "mem":
        small = tuple(min(8, n) for n in seg.shape[1:])  # warm-up on a small crop: code, lazy init
        sl = (slice(None),) + tuple(slice(0, n) for n in small)
        peer_weights(malis, np.ascontiguousarray(seg[0][sl[1:]]), np.ascontiguousarray(affs[0][sl]), nhood,
                     *peer_edges(malis, small, nhood))
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
    p1, g1 = pred[:1].contiguous(), gt[:1].contiguous()
    out = {"seglosses_file": seglosses.__file__}

    torch.set_num_threads(1)
    if mode == "mem":
        sl = (slice(None), slice(None)) + tuple(slice(0, 8) for _ in range(p1.dim() - 2))
        seglosses.malis_weights(p1[sl].contiguous(), g1[sl[:1] + sl[2:]].contiguous(), NHOOD)  # warm-up, small
        measure_memory(out, lambda: seglosses.malis_weights(p1, g1, NHOOD))
        return

    out["t1"], out["t1_all"] = common.median_time(lambda: seglosses.malis_weights(p1, g1, NHOOD), repeats,
                                                  min_time=min_time)
    pos, neg = seglosses.malis_weights(p1, g1, NHOOD, normalize=False)
    out["pos"], out["neg"] = int(pos.sum()), int(neg.sum())
    torch.set_num_threads(2)
    t2, t2_all = common.median_time(lambda: seglosses.malis_weights(pred, gt, NHOOD), repeats, min_time=min_time)
    out["t2"], out["t2_all"] = t2 / 2, [t / 2 for t in t2_all]
    w = seglosses.malis_weights(pred, gt, NHOOD)
    out["wsum"] = [float(w[b].double().sum()) for b in range(w.shape[0])]
    if not np.isfinite(out["wsum"]).all():
        raise RuntimeError(f"non-finite weights: sums {out['wsum']}")
    common.emit_result(out)


# ----------------------------------------------------------------------------- parent

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,128", help="comma-separated cube sizes (default 64,128)")
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
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "MODE", "DATA_NPZ"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        impl, mode, path = args.child
        if impl == "malis":
            peer_child(mode, path, args.peer_repeats, args.min_time)
        else:
            seglosses_child(mode, path, args.repeats, args.min_time)
        return 0

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

    print("# MALIS weights (constrained, normalised), CPU, 3 nearest-neighbour edges")
    print()
    for line in common.machine_lines([common.seglosses_line(), peer_note,
                                      f"repeats: seglosses >= {args.repeats} (median after 1 warm-up), "
                                      f"malis 1.0 >= {args.peer_repeats} (median, no warm-up); both until "
                                      f"{args.min_time:g} s of timed calls"]):
        print("- " + line)
    print(flush=True)

    rows, notes, failed, methods = [], [], False, set()
    tmpdir = tempfile.mkdtemp(prefix="seglosses-malis-bench-")
    try:
        for size in sizes:
            case = f"{size}^3"
            t0 = time.perf_counter()
            seg, affs = make_data(size, args.labels, args.seed + size)
            exp_pos, exp_neg = expected_counts(seg[0])
            n_present = len(np.unique(seg[0]))
            print(f"{case}: data made in {time.perf_counter() - t0:.1f} s ({n_present} labels in sample 0; "
                  f"expected counts: pos <= {exp_pos}, neg = {exp_neg})", flush=True)

            path = os.path.join(tmpdir, f"data{size}.npz")
            np.savez(path, seg=seg, affs=affs)
            me = os.path.abspath(__file__)
            rep = ["--repeats", str(args.repeats), "--peer-repeats", str(args.peer_repeats),
                   "--min-time", str(args.min_time)]
            sl = common.run_child([me, "--child", "seglosses", "time", path] + rep, timeout=args.timeout)
            if "error" not in sl:
                mem = common.run_child([me, "--child", "seglosses", "mem", path] + rep,
                                       env_extra=common.MALLOC_ENV, timeout=args.timeout)
                sl["extra_bytes"], sl["retained_bytes"] = mem.get("extra_bytes"), mem.get("retained_bytes")
                methods.add(mem.get("mem_method", "-"))
            else:
                print(f"  seglosses failed: {sl['error']}", file=sys.stderr, flush=True)
                failed = True

            peer = None
            if peer_ok:
                peer = common.run_child([me, "--child", "malis", "time", path] + rep,
                                        python=args.peer_python, timeout=args.timeout)
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

            if "error" in sl:
                rows.append([case, "seglosses", "-", "error", "-", "-", "-", "-"])
            else:
                exact = "neg = expected" if sl["neg"] == exp_neg else "neg != expected!"
                rows.append([case, "seglosses", "1 thread, batch 1", common.fmt_s(sl["t1"]), speedup("t1"),
                             mib(sl), mib(sl, "retained_bytes"), f"{counts(sl)} ({exact})"])
                rows.append([case, "seglosses", "2 threads, batch 2", common.fmt_s(sl["t2"]), speedup("t2"),
                             "-", "-", "-"])
            if peer is None:
                rows.append([case, "malis 1.0", "-", "skipped" if args.no_peer else "not installed", "-", "-", "-", "-"])
            elif "error" in peer:
                rows.append([case, "malis 1.0", "-", "error", "-", "-", "-", "-"])
            else:
                if "error" not in sl:
                    same = (peer["pos"] == sl["pos"], peer["neg"] == sl["neg"])
                    tag = "same as seglosses" if all(same) else (
                        "differs from seglosses in " + " and ".join(
                            n for n, s in zip(("pos", "neg"), same) if not s))
                else:
                    tag = ""
                rows.append([case, "malis 1.0", "1 process, batch 1", common.fmt_s(peer["t1"]), "1x",
                             mib(peer), mib(peer, "retained_bytes"), f"{counts(peer)} {tag}".strip()])
                if "t2" in peer:
                    rows.append([case, "malis 1.0", "2 processes, batch 2", common.fmt_s(peer["t2"]), "1x", "-", "-", "-"])
            if "error" not in sl and size == 128:
                notes.append(f"128^3, one core: {common.fmt_s(sl['t1'])} s per sample "
                             f"(goal <= 0.2 s: {'met' if sl['t1'] <= 0.2 else 'NOT met'})")
            if "error" not in sl and peer and "error" not in peer:
                s1 = peer["t1"] / sl["t1"]
                notes.append(f"{case}: speed-up vs malis 1.0 on one core: {s1:.1f}x "
                             f"(goal >= 30x: {'met' if s1 >= 30 else 'NOT met'})")
    finally:
        try:
            os.rmdir(tmpdir)
        except OSError:
            pass

    print()
    headers = ["size", "impl", "threads / batch", "s / sample", "speed-up vs malis 1.0",
               "peak extra (MiB)", "kept after (MiB)", "sanity: pair counts of sample 0"]
    print(common.markdown_table(headers, rows))
    print()
    print("Peak extra: peak RSS during the first full-size call for one sample (1 thread / 1 process) minus "
          "RSS with the data loaded; kept after: RSS still held once the weights are freed. Fresh process, "
          "glibc mmap threshold 64 KiB, warm-up on an 8^3 crop; method: "
          f"{', '.join(sorted(methods)) or '-'}. It includes the returned weights, float32 [3, s, s, s] = "
          f"{', '.join(f'{12 * s**3 / common.MIB:.1f} MiB at {s}^3' for s in sizes)}.")
    for n in notes:
        print("- " + n)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
