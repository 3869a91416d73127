"""The sort paths of MALIS (csrc/cpu/malis/radix_sort.h) give the same counts.

A part of fewer items than the tuning's ``msd_items`` is sorted by LSD radix passes; a bigger one
first by its keys' top 16 bits into buckets (scattered item by item, or with many buckets a cache
line at a time), each sorted in cache, and a bucket crowded with one top-16-bit value (smooth
predictions near 1; any 256^3 sample) by one more MSD pass and a last pass per sub-bucket. The LSD
path is the one the oracle tests reach on tiny inputs; here volumes big enough for crowded buckets
are counted on every path (``_malis_set_tuning`` picks it), which must agree bit for bit.
"""

import contextlib

import numpy as np
import pytest
import torch

import seglosses

NN3 = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
SHAPE = (48, 48, 48)  # ~165k first-group items after the cycle filter: crowded buckets of > 2^15


# (msd_items, line_scatter_buckets): no sort by buckets; by buckets, scattered item by item; by
# buckets, scattered a line at a time
PATHS = [(1 << 40, 0), (2, 1 << 40), (2, 0)]


@contextlib.contextmanager
def sort_path(msd_items, line_scatter_buckets):
    set_tuning = torch.ops.seglosses._malis_set_tuning
    set_tuning("msd_items", msd_items)
    set_tuning("line_scatter_buckets", line_scatter_buckets)
    try:
        yield
    finally:
        set_tuning("reset", 0)


def assert_every_path_counts_the_same(pred, seg, **kw):
    results = []
    for path in PATHS:
        with sort_path(*path):
            pos, neg = seglosses.malis_weights(pred, seg, NN3, normalize=False, num_threads=1, **kw)
        results.append((path, pos.numpy(), neg.numpy()))
    (_, pos_lsd, neg_lsd), rest = results[0], results[1:]
    assert pos_lsd.sum() > 0
    for path, pos, neg in rest:
        np.testing.assert_array_equal(pos, pos_lsd, err_msg=f"pos, path {path}")
        np.testing.assert_array_equal(neg, neg_lsd, err_msg=f"neg, path {path}")


def one_top_value(rng, n, levels=None):
    """Predictions that all share their float32 top 16 bits: [255/256, 1) (sign, exponent and 7
    mantissa bits fixed); levels: that many distinct values only (ties, and sub-buckets whose last
    8 key bits are all equal)."""
    u = rng.random(n)
    if levels is not None:
        u = np.floor(u * levels) / levels
    return (np.float32(255 / 256) + u.astype(np.float32) * np.float32(1 / 256 - 2**-24)).astype(np.float32)


def labels(rng, n_labels):
    if n_labels == 1:
        return np.ones((1,) + SHAPE, dtype=np.int64)
    # slabs of labels along the first axis, a few background voxels
    seg = np.repeat(np.arange(1, n_labels + 1), -(-SHAPE[0] // n_labels))[: SHAPE[0]]
    seg = np.broadcast_to(seg[:, None, None], SHAPE).copy()
    seg[rng.random(SHAPE) < 0.01] = 0
    return seg[None].astype(np.int64)


CASES = {
    "one value, every low bit": lambda rng, n: one_top_value(rng, n),
    "one value, 64 levels (ties)": lambda rng, n: one_top_value(rng, n, levels=64),
    "half one value, half uniform": lambda rng, n: np.where(rng.random(n) < 0.5, one_top_value(rng, n),
                                                            rng.random(n, dtype=np.float32)),
}


@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("n_labels", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_crowded_buckets_count_as_the_lsd_sort(case, n_labels, constrained):
    rng = np.random.default_rng(len(case) * 10 + n_labels)
    seg = torch.from_numpy(labels(rng, n_labels))
    n = 3 * int(np.prod(SHAPE))
    pred = torch.from_numpy(CASES[case](rng, n).reshape((1, 3) + SHAPE))
    assert_every_path_counts_the_same(pred, seg, constrained=constrained)


@pytest.mark.parametrize("shape", [SHAPE, (37, 41, 29)])
def test_uniform_predictions_count_as_the_lsd_sort(shape):
    """Buckets of several top-16-bit values each, whose first and last lines are shared with their
    neighbours (odd sizes move where they start)."""
    rng = np.random.default_rng(3)
    seg = torch.ones((1,) + shape, dtype=torch.int64)
    pred = torch.from_numpy(rng.random((1, 3) + shape, dtype=np.float32))
    assert_every_path_counts_the_same(pred, seg)
