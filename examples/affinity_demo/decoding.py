"""From predicted affinities to a segmentation, two ways.

- :func:`connected_components`: ``seglosses.affgraph_to_seg`` -- the connected components of the
  edges whose affinity is above a threshold (the decoder of PyTorch Connectomics' and BANIS'
  affinity pipelines).
- :func:`watershed_agglomeration`: ``waterz`` -- a watershed on the affinity graph into
  fragments, then the fragments merged along the boundaries with the highest median affinity
  until the merge score (1 - that median) reaches a threshold (Funke et al. 2018). The scoring
  function is one that waterz ships compiled, so no compiler or Boost is needed at run time.

Both are followed by the usual small-fragment clean-up (:func:`merge_small_segments`).
Affinities are probabilities ``[3, Z, Y, X]`` in the demo's convention: channel c at voxel p is
the edge (p, p + e_c).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Sequence, Tuple

import numpy as np
import torch

from seglosses import affgraph_to_seg

from .datasets import NHOOD

# Merge score of two fragments: 1 - the median affinity of the edges between them, with a
# 256-bin histogram and a 256-bin queue (one of the variants in waterz's wheels).
WATERZ_SCORING = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>"
WATERZ_QUEUE = 256


def merge_small_segments(seg: np.ndarray, min_size: int) -> np.ndarray:
    """Drop segments smaller than ``min_size`` voxels; their voxels (and any 0) join the nearest segment.

    The nearest segment is the one of the closest voxel that belongs to a kept segment
    (Euclidean distance transform). If no segment is large enough, ``seg`` is returned as it is.
    """
    from scipy import ndimage

    sizes = np.bincount(seg.ravel())
    keep = sizes[seg] >= min_size
    keep &= seg > 0
    if not keep.any():
        return seg
    if keep.all():
        return seg.copy()
    nearest = ndimage.distance_transform_edt(~keep, return_distances=False, return_indices=True)
    return seg[tuple(nearest)]


def connected_components(affs: np.ndarray, threshold: float, min_size: int) -> np.ndarray:
    """``affgraph_to_seg(affs, nhood, threshold)``, then :func:`merge_small_segments`; int64 labels."""
    seg = affgraph_to_seg(torch.from_numpy(affs), NHOOD, threshold=threshold).numpy()
    return merge_small_segments(seg, min_size)


def to_waterz_affinities(affs: np.ndarray) -> np.ndarray:
    """Our affinities (channel c at p: edge (p, p + e_c)) in waterz's convention (edge (p - e_c, p)).

    Channel c is shifted by one voxel along axis c; the first slice of that axis has no edge and
    gets 0.
    """
    out = np.zeros(affs.shape, np.float32)
    for c in range(3):
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[c], dst[c] = slice(0, -1), slice(1, None)
        out[(c, *dst)] = affs[(c, *src)]
    return out


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """waterz's C++ code prints its progress on the process's stdout: send it to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def watershed_agglomeration(affs: np.ndarray, thresholds: Sequence[float], min_size: int
                            ) -> Iterator[Tuple[float, np.ndarray]]:
    """waterz segmentations, ``(threshold, int64 labels)`` in increasing threshold order, each cleaned up.

    One watershed and one agglomeration serve every threshold (waterz merges further for each
    one), so a sweep costs little more than its largest threshold.
    """
    import waterz

    wz = to_waterz_affinities(affs)
    ordered = sorted(float(t) for t in thresholds)
    with _quiet_stdout():
        segs = waterz.agglomerate(wz, ordered, scoring_function=WATERZ_SCORING, discretize_queue=WATERZ_QUEUE)
    for t in ordered:
        with _quiet_stdout():
            seg = next(segs).astype(np.int64)  # a copy: waterz reuses its buffer for the next threshold
        yield t, merge_small_segments(seg, min_size)
