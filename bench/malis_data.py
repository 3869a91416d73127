"""Data sets of the MALIS benchmarks (bench/malis_weights.py, bench/malis_profile.py).

A case is one labelled volume with predicted affinities for nhood [[1,0,0],[0,1,0],[0,0,1]] (channel
c at voxel p is the edge (p, p + nhood[c])), batched: seg int64 [batch, *s], affs float32
[batch, 3, *s], mask float32 [batch, 1, *s] or None.

Data sets (``--data``):
    voronoi   synthetic: ``--labels`` Voronoi cells of uniformly random seeds (no background), one
              cube per ``--sizes`` entry; every sample of the batch is a different volume.
    pinky40   real: the pinky40 512^3 dense neuron segmentation (PyPI ``crackle-codec`` decodes
              it): the 128^3 crops at (z, y, x) = (0, 384, 192), (192, 192, 192), (384, 384, 384),
              (0, 0, 0), and the 256^3 crop at (0, 0, 0).
    fib25     real: FIB-25's dense ground truth (``body = mapping[stack]``, PyPI ``h5py``): the
              128^3 crop at (0, 0, 0) and the whole 250^3 volume.
For the real data sets the batch repeats the crop (batch 2: the same sample twice).

Prediction kinds (``--pred``):
    random    uniform random affinities in [0, 1).
    smooth    a plausible network output: per channel,
              ``sigmoid(3 * (2 * gt_aff - 1) + 6 * gaussian_filter(noise, 2))`` with gt_aff the
              ground-truth affinity of the labels and noise standard normal (scipy.ndimage,
              sigma 2 voxels), so predictions are confident where the labels are and wrong in
              spatially coherent blobs.
Both are drawn from numpy's default_rng with a fixed seed (``--seed``).

Mask (``--mask``): the first quarter of the z-slices is excluded (mask 0 on every channel), the
rest included: the region whose ground truth is not to be trusted, as PyTorch Connectomics' mask.

The real data live in ``--data-dir`` (default: env ``SEGLOSSES_DATA_DIR``, else ``../shared/data``
relative to the repository root); a data set whose files (or decoder package) are missing is
skipped with a message.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
PINKY40_CROPS = [((0, 384, 192), 128), ((192, 192, 192), 128), ((384, 384, 384), 128), ((0, 0, 0), 128),
                 ((0, 0, 0), 256)]
FIB25_CROPS = [((0, 0, 0), 128), ((0, 0, 0), 250)]
DATA_SETS = ("voronoi", "pinky40", "fib25")
PRED_KINDS = ("random", "smooth")


@dataclass
class Case:
    name: str          # e.g. "pinky40 128^3 @ (0, 384, 192)"
    seg: np.ndarray    # int64 [batch, *s]
    affs: np.ndarray   # float32 [batch, 3, *s]
    mask: Optional[np.ndarray] = None  # float32 [batch, 1, *s]


def default_data_dir() -> str:
    return os.environ.get("SEGLOSSES_DATA_DIR") or os.path.join(REPO, "..", "shared", "data")


def voronoi_labels(size: int, n_labels: int, rng) -> np.ndarray:
    """int64 [s, s, s] labels 1..n_labels: each voxel takes the label of its nearest random seed."""
    from scipy.spatial import cKDTree

    grid = np.indices((size, size, size), dtype=np.float64).reshape(3, -1).T + 0.5
    seeds = rng.uniform(0.0, size, size=(n_labels, 3))
    _, nearest = cKDTree(seeds).query(grid, k=1)
    return (nearest + 1).astype(np.int64).reshape(size, size, size)


def gt_affinities(seg: np.ndarray) -> np.ndarray:
    """float32 [3, *s]: 1 where (p, p + nhood[c]) is valid and both ends carry one non-zero label."""
    out = np.zeros((3,) + seg.shape, dtype=np.float32)
    for c in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[c] = slice(0, -1)
        b[c] = slice(1, None)
        sa, sb = seg[tuple(a)], seg[tuple(b)]
        out[(c,) + tuple(a)] = (sa == sb) & (sa != 0)
    return out


def predictions(seg: np.ndarray, kind: str, rng) -> np.ndarray:
    """float32 [3, *s] predicted affinities of one sample (see the module docstring)."""
    if kind == "random":
        return rng.random((3,) + seg.shape, dtype=np.float32)
    from scipy.ndimage import gaussian_filter

    gt = gt_affinities(seg)
    out = np.empty_like(gt)
    for c in range(3):
        noise = gaussian_filter(rng.standard_normal(seg.shape).astype(np.float32), 2)
        out[c] = 1.0 / (1.0 + np.exp(-(3.0 * (2.0 * gt[c] - 1.0) + 6.0 * noise)))
    return out


def slab_mask(shape: Tuple[int, ...], batch: int) -> np.ndarray:
    mask = np.ones((batch, 1) + tuple(shape), dtype=np.float32)
    mask[:, :, : shape[0] // 4] = 0
    return mask


def _pinky40(data_dir: str) -> np.ndarray:
    import crackle  # PyPI crackle-codec

    with open(os.path.join(data_dir, "pinky40", "connectomics.npy.ckl.gz"), "rb") as f:
        return crackle.decompress(gzip.decompress(f.read()))


def _fib25(data_dir: str) -> np.ndarray:
    import h5py

    with open(os.path.join(data_dir, "fib25", "groundtruth.h5.gz"), "rb") as f:
        raw = gzip.decompress(f.read())
    with h5py.File(io.BytesIO(raw), "r") as h5:
        stack = h5["stack"][()]
        transforms = h5["transforms"][()]
    mapping = np.zeros(int(max(stack.max(), transforms[:, 0].max())) + 1, dtype=np.int64)
    mapping[transforms[:, 0]] = transforms[:, 1]
    return mapping[stack]


def load_cases(data: str, pred: str, *, sizes: List[int], n_labels: int, seed: int, batch: int, mask: bool,
               data_dir: str, log=print) -> Iterator[Case]:
    """The cases of one data set and prediction kind (a missing data set yields none, with a message)."""
    rng = np.random.default_rng(seed)
    if data == "voronoi":
        for size in sizes:
            seg = np.stack([voronoi_labels(size, n_labels, rng) for _ in range(batch)])
            affs = np.stack([predictions(s, pred, rng) for s in seg])
            yield Case(f"voronoi {size}^3", seg, affs, slab_mask(seg.shape[1:], batch) if mask else None)
        return
    loaders = {"pinky40": (_pinky40, PINKY40_CROPS, "crackle-codec"), "fib25": (_fib25, FIB25_CROPS, "h5py")}
    loader, crops, package = loaders[data]
    try:
        volume = loader(data_dir)
    except FileNotFoundError as exc:
        log(f"{data}: skipped: data not found ({exc.filename}); set --data-dir or SEGLOSSES_DATA_DIR")
        return
    except ImportError as exc:
        log(f"{data}: skipped: {exc} (pip install {package}, pinned in requirements-dev.txt)")
        return
    for origin, size in crops:
        sl = tuple(slice(o, o + size) for o in origin)
        one = np.ascontiguousarray(volume[sl]).astype(np.int64)
        seg = np.stack([one] * batch)
        affs = np.stack([predictions(one, pred, rng)] * batch)
        yield Case(f"{data} {size}^3 @ {origin}", seg, affs, slab_mask(one.shape, batch) if mask else None)


def load_crop(data: str, pred: str, crop: int, *, size: int, mask: bool, data_dir: str, script: str) -> Case:
    """Case number crop of load_cases (one batch-1 sample, seed 0, 200 Voronoi labels of size^3);
    exits naming script when the data set has no such crop. The cases before it are made too:
    their predictions draw from the same generator."""
    cases = list(itertools.islice(load_cases(data, pred, sizes=[size], n_labels=200, seed=0, batch=1, mask=mask,
                                             data_dir=data_dir), crop + 1))
    if crop >= len(cases):
        sys.exit(f"{script}: no crop {crop} of {data} (it has {len(cases)})")
    return cases[crop]
