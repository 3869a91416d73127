"""What the demo trains and scores on: a training region, a tuning region and a held-out region.

A :class:`Dataset` holds three regions, each a dict of numpy arrays:

- ``train``: ``raw`` (float32, normalised) and ``seg`` (int64 instance labels, boundaries 0) --
  the only arrays training reads;
- ``tune``: ``raw`` and ``gt`` -- where the decoders' thresholds are picked (a part of the
  training data: the held-out region is never used to pick anything);
- ``heldout``: ``raw`` and ``gt`` -- where the scores are reported.

``gt`` is the instance labelling with the boundary voxels as 0, and 0 is left out of every score.

FIB-25 is split along z: the training region is the first slices, the held-out region the last
ones, with a gap between them, so that no training patch (nor its one-voxel margin for the
affinities) touches a held-out voxel. Each region is a copy of its slab, so training cannot read
anything else. Its ground truth is made the way connectomics pipelines make it: the body labels
with the instance boundaries eroded (:func:`erode_instance_boundaries`), so the membranes are
background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from seglosses import seg_to_affgraph

NHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # affinity channel c: edge (p, p + NHOOD[c])

# FIB-25 split along z (250 slices, 10 nm): training 0-159, a gap of 10 slices, held-out 170-249.
# The thresholds are tuned on the quarter of the training region next to the gap (half the size
# of the held-out region: the sweeps cost about as much as training a model, so it is kept small).
FIB25_TRAIN = (0, 160)
FIB25_HELDOUT = (170, 250)
FIB25_TUNE = (120, 160)
FIB25_EROSION = 1  # voxels removed on each side of every boundary between two bodies


@dataclass
class Dataset:
    name: str
    train: Dict[str, np.ndarray]
    tune: Dict[str, np.ndarray]
    heldout: Dict[str, np.ndarray]
    description: str
    regions: Dict[str, str] = field(default_factory=dict)


def erode_instance_boundaries(labels: np.ndarray, radius: int = 1) -> np.ndarray:
    """Set to 0 every voxel whose window holds more than one positive label.

    The window is the cube of ``2 * radius + 1`` voxels per axis around the voxel (clipped at the
    volume's border). This is the ground-truth preprocessing of PyTorch Connectomics'
    ``SegErosionInstanced`` (Kisuk Lee's rule) with one half-size per axis, so that an isotropic
    volume gets an isotropic erosion: the boundary between two touching instances becomes a band
    of ``2 * radius`` background voxels, while an instance's border with background is left alone.
    Negative labels and 0 stay as they are.

    Args:
        labels: integer instance labels (any number of dims).
        radius: window half-size in voxels, >= 0 (0 returns a copy).

    Returns:
        A new array (the input is not modified).
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    if radius < 0:
        raise ValueError(f"erode_instance_boundaries: radius must be >= 0, got {radius}")
    labels = np.asarray(labels)
    if radius == 0 or labels.size == 0:
        return labels.copy()
    size = 2 * radius + 1
    positive = labels > 0
    largest = labels.max(initial=0)
    # One positive label in the window <=> the window's largest label equals its smallest
    # positive one (background is replaced by a value above every label for the minimum).
    win_max = maximum_filter(labels, size=size, mode="nearest")
    win_min = minimum_filter(np.where(positive, labels, largest + 1), size=size, mode="nearest")
    return np.where(positive & (win_max != win_min), 0, labels)


def normalise(raw: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((raw.astype(np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def fib25_dataset(volume: Dict[str, np.ndarray], erosion: int = FIB25_EROSION, yx: Optional[int] = None) -> Dataset:
    """Split the FIB-25 volume (``raw`` uint8, ``bodies`` int64, 250^3) into the demo's regions.

    Args:
        volume: :func:`fib25.load_fib25`'s output.
        erosion: boundary erosion of the ground truth, in voxels.
        yx: keep only the central ``yx`` x ``yx`` voxels in y and x (for quick runs and tests);
            ``None`` keeps everything.
    """
    raw, bodies = volume["raw"], volume["bodies"]
    if yx is not None:
        if not 1 <= yx <= min(raw.shape[1:]):
            raise ValueError(f"fib25_dataset: yx must be in [1, {min(raw.shape[1:])}], got {yx}")
        o1, o2 = (raw.shape[1] - yx) // 2, (raw.shape[2] - yx) // 2
        raw, bodies = raw[:, o1:o1 + yx, o2:o2 + yx], bodies[:, o1:o1 + yx, o2:o2 + yx]
    (t0, t1), (h0, h1), (u0, u1) = FIB25_TRAIN, FIB25_HELDOUT, FIB25_TUNE
    if not (0 <= t0 < t1 < h0 < h1 <= raw.shape[0] and t0 <= u0 < u1 <= t1):
        raise AssertionError("FIB-25 regions must be ordered train < gap < held-out, tune inside train")
    # Intensities are normalised with the training region's statistics only.
    train_raw = raw[t0:t1]
    mean, std = float(train_raw.mean()), float(train_raw.std())
    train_seg = erode_instance_boundaries(bodies[t0:t1], erosion)
    heldout_gt = erode_instance_boundaries(bodies[h0:h1], erosion)
    train = {"raw": normalise(train_raw, mean, std), "seg": train_seg}
    tune = {"raw": train["raw"][u0 - t0:u1 - t0].copy(), "gt": train_seg[u0 - t0:u1 - t0].copy()}
    heldout = {"raw": normalise(raw[h0:h1], mean, std), "gt": heldout_gt}
    n_train = len(np.unique(train_seg)) - 1
    n_heldout = len(np.unique(heldout_gt)) - 1
    desc = (f"FIB-25 {raw.shape[0]}x{raw.shape[1]}x{raw.shape[2]} (10 nm): training z {t0}-{t1 - 1} "
            f"({n_train} bodies), held-out z {h0}-{h1 - 1} ({n_heldout} bodies), gap {h0 - t1} slices; "
            f"boundaries eroded by {erosion} voxel(s): {100 * np.mean(heldout_gt == 0):.0f}% of held-out "
            f"voxels are boundary")
    regions = {"train": f"z {t0}:{t1}", "tune": f"z {u0}:{u1}", "heldout": f"z {h0}:{h1}",
               "erosion": str(erosion)}
    return Dataset("fib25", train, tune, heldout, desc, regions)


def synthetic_dataset(size: int, seed: int) -> Dataset:
    """Two synthetic volumes from ``seed``: one to train and tune on, one held out."""
    from .synthetic import make_volume

    rng = np.random.default_rng([seed, 0])
    train_vol = make_volume(size, rng)
    test_vol = make_volume(size, rng)
    train = {"raw": train_vol["raw"], "seg": train_vol["seg"]}
    tune = {"raw": train_vol["raw"], "gt": train_vol["seg"]}
    heldout = {"raw": test_vol["raw"], "gt": test_vol["seg"]}
    n_cells = len(np.unique(test_vol["seg"])) - 1
    desc = (f"synthetic {size}^3 (seed {seed}): training volume {int(train_vol['cells'].max())} cells, held-out "
            f"volume {n_cells} cells, membrane {100 * np.mean(test_vol['seg'] == 0):.0f}% of voxels")
    regions = {"train": "training volume", "tune": "training volume", "heldout": "second volume"}
    return Dataset("synthetic", train, tune, heldout, desc, regions)


def sample_batch(region: Dict[str, np.ndarray], patch: int, batch: int, rng: np.random.Generator
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random patches with random flips from a training region.

    Returns:
        raw ``[B, 1, P, P, P]`` float32, affinities ``[B, 3, P, P, P]`` (``seg_to_affgraph`` of the
        labels on a patch one voxel larger, then cropped, so that edges leaving the patch keep
        their true value), semantic labels ``[B, P, P, P]`` (1 inside an instance, 0 on
        boundaries) and the instance labels ``[B, P, P, P]`` (``gt_seg`` for MALIS).
    """
    shape = np.array(region["raw"].shape)
    p1 = np.minimum(patch + 1, shape)
    raws, segs = [], []
    for _ in range(batch):
        o = rng.integers(0, shape - p1 + 1)
        sl = tuple(slice(a, a + n) for a, n in zip(o, p1))
        r, s = region["raw"][sl], region["seg"][sl]
        for ax in range(3):
            if rng.random() < 0.5:
                r, s = np.flip(r, ax), np.flip(s, ax)
        raws.append(np.ascontiguousarray(r))
        segs.append(np.ascontiguousarray(s))
    raw = torch.from_numpy(np.stack(raws))[:, None]
    seg = torch.from_numpy(np.stack(segs))
    aff = seg_to_affgraph(seg, NHOOD)
    crop = (slice(None),) * 2 + (slice(0, patch),) * 3
    aff, raw = aff[crop], raw[crop]
    seg = seg[crop[1:]]
    return raw, aff, (seg > 0).long(), seg
