#!/usr/bin/env python
"""End-to-end demo of seglosses: train a small 3D affinity network on synthetic EM-like data.

What it does, in order (``make demo`` runs it with no arguments, about 2 minutes on 2 CPU cores):

1. **Data.** Two synthetic EM-like volumes with known ground truth, deterministic from ``--seed``:
   a training volume and a separate held-out volume. "Neurons" are the cells of a 3D Voronoi
   tessellation (jittered-grid seeds, nearest-seed labels); the voxels near a boundary between
   two cells form a dark membrane about 2 voxels thick. To make it harder than thresholding:
   every cell has its own brightness and texture, ~10 % of the membrane is missing (holes in the
   membrane that the network has to bridge from context), dark round "mitochondria" sit inside
   some cells (they look like membrane but must not split a cell), and the image is blurred and
   noisy. Ground truth: ``seg`` = the Voronoi labels with membrane voxels set to 0
   (background), the semantic labels ``label`` = 0 on membrane, 1 inside cells.
2. **Training.** A MONAI 3D U-Net with 5 output channels (3 affinities for the nhood
   ``[[1,0,0],[0,1,0],[0,0,1]]`` + 2 semantic classes) is trained with Adam on random patches
   (random flips) of the training volume, with a :class:`seglosses.CombinedLoss` read from a YAML
   config. Targets: ``affinity = seg_to_affgraph(seg, nhood)`` (computed on a patch one voxel
   larger, so that edges leaving the patch get their true value), ``label``, and ``gt_seg=seg``
   passed as an extra (only MALIS takes it). By default two models are trained with the same
   seed, the same patches and the same number of steps: BCE only (``bce_only.yaml``) and
   BCE + MALIS + Dice (``bce_malis_dice.yaml``).
3. **Evaluation.** Each model predicts the held-out volume (MONAI sliding window, patch-sized
   windows, Gaussian blending). The affinities are segmented with
   ``seglosses.affgraph_to_seg(sigmoid(affs), nhood, threshold)`` (connected components of the
   edges above the threshold). Three variants are scored:

   - ``raw``: the connected components at ``--threshold`` (0.5 by default) as they come (every
     voxel labelled; voxels cut off by low affinities on all sides become tiny segments);
   - ``clean``: the same, after the usual small-fragment clean-up: segments smaller than
     ``--min-size`` voxels are dropped and their voxels are given to the nearest remaining
     segment (``skimage.segmentation.expand_labels``);
   - ``clean, tuned threshold``: ``clean`` at the threshold (from a fixed grid, 0.3 to 0.995)
     with the lowest VOI on the *training* volume, picked per model -- a loss can shift how
     affinities are calibrated, so one fixed threshold may favour one model. The held-out volume
     is never used to pick anything.

   Ground truth is the held-out Voronoi labelling with membrane voxels as 0; voxels that are
   membrane in the ground truth are left out of every score (``ignore_labels=[0]``), because the
   boundary voxels belong to no neuron -- the score is about which interior voxels end up
   together. Scores: variation of information split = H(pred | gt) and merge = H(gt | pred) in
   bits (``skimage.metrics.variation_of_information``) and the adapted Rand error
   (``skimage.metrics.adapted_rand_error``); lower is better for all of them. ``segments``
   counts the predicted segments that cover at least one ground-truth cell voxel.
4. **Output.** A markdown table on stdout (and ``metrics.md`` / ``metrics.json``), timings, and
   PNGs in ``--out-dir`` (default ``examples/output/``): ``loss_curves.png`` (every loss term
   of every run), ``prediction_slice.png`` (raw / ground truth / predicted affinities /
   segmentations of one held-out slice for every model) and ``threshold_sweep.png`` (VOI split,
   merge and adapted Rand error against the threshold, on both volumes).

Everything is seeded (``torch.manual_seed`` and a ``numpy.random.Generator``): two runs with the
same arguments and thread count print the same numbers.

Usage::

    python examples/train_affinities.py                      # the default demo
    python examples/train_affinities.py --steps 3000 --volume-size 96 --threads 8
    python examples/train_affinities.py --config examples/configs/bce_malis_dice.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

# Run from a source checkout without installing: the in-place build lives in the repo root.
_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "seglosses" / "__init__.py").is_file() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402

import seglosses  # noqa: E402
from seglosses import CombinedLoss, affgraph_to_seg, seg_to_affgraph  # noqa: E402

NHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # affinity channel c: edge (p, p + NHOOD[c])
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIGS = [CONFIG_DIR / "bce_only.yaml", CONFIG_DIR / "bce_malis_dice.yaml"]


# ---------------------------------------------------------------------------------------------
# Synthetic EM-like data
# ---------------------------------------------------------------------------------------------
def make_volume(size: int, rng: np.random.Generator, cell_size: float = 14.0, gap_fraction: float = 0.1,
                blur: float = 0.8, noise: float = 0.08) -> Dict[str, np.ndarray]:
    """One synthetic EM-like volume with its ground truth.

    Args:
        size: edge length of the cubic volume in voxels.
        rng: the random generator (everything random comes from it).
        cell_size: spacing of the jittered grid of Voronoi seeds (about the cell diameter).
        gap_fraction: about this fraction of the membrane is missing from the image.
        blur: sigma of the Gaussian blur of the image.
        noise: standard deviation of the additive Gaussian noise (intensities are in [0, 1]).

    Returns:
        ``raw`` float32 ``[size]*3`` (zero mean, unit variance), ``cells`` int64 (Voronoi labels
        1..n, every voxel), ``seg`` int64 (``cells`` with membrane voxels 0), ``gaps`` bool
        (membrane voxels not drawn in ``raw``), ``mito`` bool (the dark balls inside cells).
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    # Seeds on a jittered grid that extends one cell beyond the volume, so cells at the border
    # look like the others.
    ticks = np.arange(-cell_size / 2, size + cell_size, cell_size)
    grid = np.stack(np.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)
    seeds = grid + rng.uniform(-0.35, 0.35, grid.shape) * cell_size
    coords = np.stack(np.meshgrid(*([np.arange(size)] * 3), indexing="ij"), -1).reshape(-1, 3)
    _, nearest = cKDTree(seeds).query(coords)
    shape = (size,) * 3
    # Relabel the cells that occur to 1..n in raster order of their first voxel.
    _, first, cells = np.unique(nearest, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    cells = (order[cells] + 1).reshape(shape).astype(np.int64)
    # Membrane: every voxel with a 6-neighbour in another cell (2 voxels thick, one per side).
    membrane = np.zeros(shape, bool)
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        diff = cells[tuple(lo)] != cells[tuple(hi)]
        membrane[tuple(lo)] |= diff
        membrane[tuple(hi)] |= diff
    seg = np.where(membrane, 0, cells)

    n = int(cells.max())
    brightness = rng.uniform(0.55, 0.85, n + 1)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    texture *= 0.06 / max(texture.std(), 1e-6)
    img = brightness[cells] + texture

    # Holes in the membrane: where a smooth random field is high, the membrane is not drawn.
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    gaps = membrane & (field > np.quantile(field[membrane], 1.0 - gap_fraction)) if membrane.any() else membrane
    drawn = membrane & ~gaps
    img[drawn] = 0.15 + 0.03 * rng.standard_normal(int(drawn.sum()))

    # Dark "mitochondria": a small ball in about half of the cells, away from the membrane.
    depth = ndimage.distance_transform_edt(~membrane)
    mito = np.zeros(shape, bool)
    zz, yy, xx = np.meshgrid(*([np.arange(size)] * 3), indexing="ij")
    candidates = np.flatnonzero(depth >= 3.5)
    used = set()
    for i in rng.permutation(candidates):
        c = np.unravel_index(i, shape)
        if cells[c] in used:
            continue
        used.add(cells[c])
        if rng.random() < 0.5:
            continue
        r = rng.uniform(1.5, min(3.0, depth[c] - 1.0))
        mito |= ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r) & (cells == cells[c])
    img[mito] = 0.3

    img = ndimage.gaussian_filter(img, blur) + noise * rng.standard_normal(shape)
    raw = ((img - img.mean()) / img.std()).astype(np.float32)
    return {"raw": raw, "cells": cells, "seg": seg, "gaps": gaps, "mito": mito}


def sample_batch(vol: Dict[str, np.ndarray], patch: int, batch: int, rng: np.random.Generator):
    """Random patches with random flips: raw ``[B,1,P,P,P]``, affinities, labels, gt_seg."""
    size = vol["raw"].shape[0]
    p1 = min(patch + 1, size)
    raws, segs = [], []
    for _ in range(batch):
        o = rng.integers(0, size - p1 + 1, 3)
        sl = tuple(slice(a, a + p1) for a in o)
        r, s = vol["raw"][sl], vol["seg"][sl]
        for ax in range(3):
            if rng.random() < 0.5:
                r, s = np.flip(r, ax), np.flip(s, ax)
        raws.append(np.ascontiguousarray(r))
        segs.append(np.ascontiguousarray(s))
    raw = torch.from_numpy(np.stack(raws))[:, None]
    seg = torch.from_numpy(np.stack(segs))
    # Affinities on the patch one voxel larger, then cropped: edges that leave the patch keep
    # their true value instead of being "invalid".
    aff = seg_to_affgraph(seg, NHOOD)
    crop = (slice(None),) * 2 + (slice(0, patch),) * 3
    aff, raw = aff[crop], raw[crop]
    seg = seg[crop[1:]]
    return raw, aff, (seg > 0).long(), seg


# ---------------------------------------------------------------------------------------------
# Model, training, prediction
# ---------------------------------------------------------------------------------------------
def make_model() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=5, channels=(16, 32, 64), strides=(2, 2),
                num_res_units=1)


def train(config: Path, train_vol: Dict[str, np.ndarray], args) -> dict:
    """Train one model with the CombinedLoss of ``config``; returns the model and the loss history."""
    from tqdm import tqdm

    loss_fn = CombinedLoss.from_yaml(config)
    torch.manual_seed(args.seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng([args.seed, 1])  # the same patches for every config
    history: Dict[str, List[float]] = {name: [] for name in loss_fn.term_names}
    history["total"] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(args.steps), desc=f"{config.stem:>15}", unit="step", dynamic_ncols=True,
               disable=args.quiet, mininterval=0.5)
    for _ in bar:
        raw, aff, lab, seg = sample_batch(train_vol, args.patch_size, args.batch_size, rng)
        pred = model(raw)
        total, terms = loss_fn(pred, {"affinity": aff, "label": lab}, gt_seg=seg, return_terms=True)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        for k, v in terms.items():
            history[k].append(float(v))
        history["total"].append(float(total.detach()))
        bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in history.items()}, refresh=False)
    bar.close()
    return {"model": model, "history": history, "train_s": time.perf_counter() - t0}


@torch.no_grad()
def predict(model: torch.nn.Module, raw: np.ndarray, patch: int) -> np.ndarray:
    """Logits ``[5, *raw.shape]`` of the whole volume, by sliding window with Gaussian blending."""
    from monai.inferers import sliding_window_inference

    model.eval()
    x = torch.from_numpy(raw)[None, None]
    out = sliding_window_inference(x, roi_size=(patch,) * 3, sw_batch_size=4, predictor=model,
                                   overlap=0.5, mode="gaussian")
    return out[0].numpy()


def segment(logits: np.ndarray, threshold: float, min_size: int) -> Dict[str, np.ndarray]:
    """Affinities -> connected components (``raw``) and the small-fragment clean-up (``clean``)."""
    from skimage.segmentation import expand_labels

    affs = torch.sigmoid(torch.from_numpy(logits[:3]))
    raw_seg = affgraph_to_seg(affs, NHOOD, threshold=threshold).numpy()
    sizes = np.bincount(raw_seg.ravel())
    clean = np.where(sizes[raw_seg] >= min_size, raw_seg, 0)
    if clean.any():
        clean = expand_labels(clean, distance=max(clean.shape))
    else:  # nothing is large enough: keep the raw segmentation
        clean = raw_seg
    return {"raw": raw_seg, "clean": clean}


THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


def threshold_sweep(logits: np.ndarray, gt: np.ndarray, min_size: int,
                    grid: Sequence[float] = THRESHOLDS) -> List[Dict[str, float]]:
    """Scores of the ``clean`` segmentation at every threshold of ``grid``."""
    return [dict(score(gt, segment(logits, t, min_size)["clean"]), threshold=float(t)) for t in grid]


def score(gt: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
    """VOI split / merge (bits) and adapted Rand error, ignoring ground-truth label 0 (membrane)."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    split, merge = variation_of_information(gt, pred, ignore_labels=[0])
    are, _, _ = adapted_rand_error(gt, pred, ignore_labels=[0])
    return {"voi_split": float(split), "voi_merge": float(merge), "voi": float(split + merge),
            "arand": float(are), "segments": int(len(np.unique(pred[gt > 0])))}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def _label_cmap(n: int, seed: int = 0):
    from matplotlib.colors import ListedColormap

    colors = np.random.default_rng(seed).uniform(0.15, 1.0, (max(n, 1) + 1, 3))
    colors[0] = 0.0
    return ListedColormap(colors)


def _shuffle_labels(seg: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random permutation of the labels > 0, so that neighbouring segments get distinct colours."""
    n = int(seg.max())
    perm = np.concatenate([[0], np.random.default_rng(seed).permutation(n) + 1])
    return perm[seg]


def plot_losses(runs: Dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    names: List[str] = []
    for r in runs.values():
        names += [k for k in r["history"] if k not in names and k != "total"]
    names.append("total")
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, (label, r) in enumerate(runs.items()):
            v = r["history"].get(name)
            if not v:
                continue
            v = np.asarray(v)
            k = max(1, min(25, len(v) // 10))
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            color = f"C{i}"
            ax.plot(np.arange(len(v)), v, color=color, alpha=0.2, lw=0.8)
            ax.plot(np.arange(k - 1, len(v)), smooth, color=color, lw=1.8, label=label)
        ax.set_title(name if name != "total" else "total (weighted sum)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("loss")
    fig.suptitle("Loss terms per training step (faint: per step, bold: moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_thresholds(results: Dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, (label, r) in enumerate(results.items()):
        color = f"C{i}"
        for key, sweep, style in (("held-out", r["test_sweep"], "-"), ("training", r["train_sweep"], ":")):
            t = [m["threshold"] for m in sweep]
            axes[0].plot(t, [m["voi_split"] for m in sweep], style, color=color, marker=".", label=f"{label} ({key})")
            axes[1].plot(t, [m["voi_merge"] for m in sweep], style, color=color, marker=".", label=f"{label} ({key})")
            axes[2].plot(t, [m["arand"] for m in sweep], style, color=color, marker=".", label=f"{label} ({key})")
        for ax in axes:
            ax.axvline(r["tuned_threshold"], color=color, lw=0.8, alpha=0.6)
    from matplotlib.ticker import NullFormatter

    ticks = [0.3, 0.5, 0.7, 0.9, 0.97, 0.99]
    for ax, title in zip(axes, ("VOI split (bits)", "VOI merge (bits)", "adapted Rand error")):
        ax.set_xscale("logit")
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("affinity threshold (logit scale)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[2].legend(fontsize=8)
    fig.suptitle("'clean' segmentation vs. threshold (vertical lines: thresholds picked on the training volume)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_slice(test_vol: Dict[str, np.ndarray], results: Dict[str, dict], path: Path, z: Optional[int] = None) -> None:
    import matplotlib.pyplot as plt

    raw, gt = test_vol["raw"], test_vol["seg"]
    z = raw.shape[0] // 2 if z is None else z
    rows = len(results)
    fig, axes = plt.subplots(rows, 6, figsize=(20, 3.7 * rows + 0.3), squeeze=False)

    def labels(seg, title, seed):
        n = int(seg.max())
        return _shuffle_labels(seg, seed)[z], title, dict(cmap=_label_cmap(n, seed), interpolation="nearest",
                                                           vmin=0, vmax=max(n, 1))

    def scores(m):
        return f"VOI split {m['voi_split']:.2f} / merge {m['voi_merge']:.2f}, ARAND {m['arand']:.3f}"

    for row, (label, r) in enumerate(results.items()):
        affs = 1.0 / (1.0 + np.exp(-r["logits"][:3, z]))
        fixed, tuned = r["metrics"]["clean"], r["metrics"]["clean, tuned threshold"]
        panels = [
            (raw[z], f"raw (held-out volume, z = {z})", dict(cmap="gray")),
            labels(gt, "ground truth (membrane black)", 0),
            (np.moveaxis(affs, 0, -1), "affinities (R, G, B = +z, +y, +x)", {}),
            (affs[1:].min(0), "min(+y, +x affinity)", dict(cmap="gray", vmin=0, vmax=1)),
            labels(r["seg"]["clean"], f"segmentation, threshold {fixed['threshold']:.2f}\n{scores(fixed)}", 1),
            labels(r["seg"]["tuned"], f"segmentation, tuned threshold {tuned['threshold']:.2f}\n{scores(tuned)}", 1),
        ]
        for col, (img, title, kw) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(img, **kw)
            ax.set_title(title, fontsize=9.5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label, fontsize=12)
    fig.suptitle("One slice of the 3D held-out volume (segmentations: 'clean' variant, scores over the whole volume)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a small 3D U-Net on synthetic EM-like data with seglosses' CombinedLoss "
                    "(BCE only vs BCE + MALIS + Dice) and compare the segmentations of a held-out volume.",
        epilog="Outputs: a metrics table on stdout; loss_curves.png, prediction_slice.png, "
               "threshold_sweep.png, metrics.md and metrics.json in --out-dir.")
    p.add_argument("--config", nargs="+", type=Path, default=None, metavar="YAML",
                   help="one or more CombinedLoss YAML configs; one model is trained per config "
                        "(default: examples/configs/bce_only.yaml examples/configs/bce_malis_dice.yaml)")
    p.add_argument("--steps", type=int, default=1000, help="training steps per model (default: %(default)s)")
    p.add_argument("--patch-size", type=int, default=32,
                   help="edge of the cubic training patches and of the sliding window, a multiple of 4 "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2, help="patches per step (default: %(default)s)")
    p.add_argument("--volume-size", type=int, default=64,
                   help="edge of the cubic training and held-out volumes (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="affinity threshold of affgraph_to_seg for the 'raw' and 'clean' rows (default: %(default)s)")
    p.add_argument("--min-size", type=int, default=20,
                   help="'clean' segmentation: segments smaller than this many voxels are merged into their "
                        "neighbours (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data, the initialisation and the patches (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's default, %d here)" % torch.get_num_threads())
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "output",
                   help="where the PNGs and metrics files go (default: examples/output)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.patch_size < 4 or args.patch_size % 4:
        p.error(f"--patch-size must be a multiple of 4 (the U-Net downsamples twice), got {args.patch_size}")
    if args.volume_size < args.patch_size:
        p.error(f"--volume-size ({args.volume_size}) must be at least --patch-size ({args.patch_size})")
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.config is None:
        args.config = list(DEFAULT_CONFIGS)
    if not 0.0 <= args.threshold < 1.0:
        p.error(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.min_size < 1:
        p.error(f"--min-size must be >= 1, got {args.min_size}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if len({c.stem for c in args.config}) != len(args.config):
        p.error(f"--config: the file names must differ (they label the runs), got {[str(c) for c in args.config]}")
    for c in args.config:
        if not c.is_file():
            p.error(f"--config: no such file {c}")
    return args


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _markdown_table(results: Dict[str, dict]) -> str:
    lines = ["| model | segmentation | threshold | VOI split | VOI merge | VOI total | adapted Rand error | segments |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for variant in next(iter(results.values()))["metrics"]:
        for label, r in results.items():
            m = r["metrics"][variant]
            lines.append(f"| {label} | {variant} | {m['threshold']:.2f} | {m['voi_split']:.3f} | {m['voi_merge']:.3f} | "
                         f"{m['voi']:.3f} | {m['arand']:.4f} | {m['segments']} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    t_start = time.perf_counter()
    torch.set_flush_denormal(True)  # tiny weights/gradients otherwise slow the CPU down a lot
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    print(f"seglosses {seglosses.__version__}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"seed {args.seed}, volumes {args.volume_size}^3, patches {args.batch_size} x {args.patch_size}^3, "
          f"{args.steps} steps per model, Adam lr {args.lr}, "
          f"U-Net with {sum(p.numel() for p in make_model().parameters()):,} parameters")

    t0 = time.perf_counter()
    data_rng = np.random.default_rng([args.seed, 0])
    train_vol = make_volume(args.volume_size, data_rng)
    test_vol = make_volume(args.volume_size, data_rng)
    n_cells = len(np.unique(test_vol["seg"])) - 1
    print(f"data: training volume {int(train_vol['cells'].max())} cells, held-out volume {n_cells} cells, "
          f"membrane {100 * np.mean(test_vol['seg'] == 0):.0f}% of voxels ({time.perf_counter() - t0:.1f} s)")

    results: Dict[str, dict] = {}
    timings = []
    for config in args.config:
        label = config.stem
        terms = " + ".join(f"{w:g} * {n}" for n, w in CombinedLoss.from_yaml(config).term_weights.items())
        print(f"\n== {label}: loss = {terms}   ({config})")
        run = train(config, train_vol, args)
        t1 = time.perf_counter()
        # The threshold of the third variant is the one with the lowest VOI on the training volume
        # (never picked on the held-out one); the held-out sweep is only plotted.
        train_sweep = threshold_sweep(predict(run["model"], train_vol["raw"], args.patch_size),
                                      train_vol["seg"], args.min_size)
        tuned = min(train_sweep, key=lambda m: (m["voi"], m["threshold"]))["threshold"]
        logits = predict(run["model"], test_vol["raw"], args.patch_size)
        test_sweep = threshold_sweep(logits, test_vol["seg"], args.min_size)
        fixed = segment(logits, args.threshold, args.min_size)
        variants = {
            "raw": (args.threshold, fixed["raw"]),
            "clean": (args.threshold, fixed["clean"]),
            "clean, tuned threshold": (tuned, segment(logits, tuned, args.min_size)["clean"]),
        }
        fixed["tuned"] = variants["clean, tuned threshold"][1]
        metrics = {k: dict(score(test_vol["seg"], seg), threshold=thr) for k, (thr, seg) in variants.items()}
        eval_s = time.perf_counter() - t1
        results[label] = {"history": run["history"], "logits": logits, "seg": fixed, "metrics": metrics,
                          "threshold": args.threshold, "tuned_threshold": tuned, "train_sweep": train_sweep,
                          "test_sweep": test_sweep, "train_s": run["train_s"], "eval_s": eval_s}
        timings.append(f"{label}: training {run['train_s']:.1f} s ({1000 * run['train_s'] / args.steps:.0f} ms/step), "
                       f"prediction + segmentation + metrics {eval_s:.1f} s")
        print(timings[-1])

    plot_losses(results, args.out_dir / "loss_curves.png")
    plot_slice(test_vol, results, args.out_dir / "prediction_slice.png")
    plot_thresholds(results, args.out_dir / "threshold_sweep.png")
    table = _markdown_table(results)
    (args.out_dir / "metrics.md").write_text(table + "\n")
    (args.out_dir / "metrics.json").write_text(json.dumps(
        {label: {k: r[k] for k in ("metrics", "tuned_threshold", "train_sweep", "test_sweep", "train_s", "eval_s")}
         for label, r in results.items()},
        indent=2) + "\n")

    total_s = time.perf_counter() - t_start
    print(f"\nHeld-out volume {args.volume_size}^3, {n_cells} ground-truth cells; segmentation = "
          f"affgraph_to_seg(sigmoid(affs), nhood, threshold).\n'raw': as is; 'clean': segments < {args.min_size} "
          f"voxels merged into their neighbours; 'tuned threshold': the threshold with the lowest VOI\non the "
          f"training volume. Ground-truth membrane voxels are ignored. VOI in bits; lower is better everywhere.\n"
          f"'segments': predicted segments covering ground-truth cell voxels.\n")
    print(table)
    print("\nTimings (torch threads %d):" % torch.get_num_threads())
    for t in timings:
        print("  " + t)
    print(f"  total {total_s:.1f} s")
    print(f"Figures: {', '.join(str(args.out_dir / f) for f in ('loss_curves.png', 'prediction_slice.png', 'threshold_sweep.png'))}")
    return {"results": results, "table": table, "total_s": total_s, "out_dir": args.out_dir}


if __name__ == "__main__":
    main()
