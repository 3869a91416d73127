"""Synthetic EM-like volumes with known ground truth (the demo's data when FIB-25 is not at hand).

"Neurons" are the cells of a 3D Voronoi tessellation (jittered-grid seeds, nearest-seed labels);
the voxels next to a boundary between two cells form a dark membrane about 2 voxels thick. To
make it harder than thresholding: every cell has its own brightness and texture, ~10 % of the
membrane is missing (holes the network has to bridge from context), dark round "mitochondria"
sit inside some cells (they look like membrane but must not split a cell), and the image is
blurred and noisy. Everything is deterministic from the random generator passed in.
"""

from __future__ import annotations

from typing import Dict

import numpy as np


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
