"""Correctness of seglosses.affgraph_to_seg and the connected_components op (SPEC §3 utilities).

Compared with the BFS reference ``connected_components_ref`` of ``malis_reference.py`` (same ids:
components numbered 1..n in raster order of their first voxel) and with scipy.ndimage.label.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

from malis_reference import connected_components_ref, same_partition
from malis_samples import components_samples, reference_labels

import seglosses  # noqa: E402  (a broken build must fail loudly, not skip)

NN3 = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
NN2 = [[-1, 0], [0, -1]]
OP = torch.ops.seglosses.connected_components


def check_raster_numbering(lab):
    flat = lab.ravel()
    assert flat.min() == 1  # every voxel labelled
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    np.testing.assert_array_equal(order, np.arange(1, len(order) + 1))


def instance_volume(rng, shape, nlabels):
    """Voronoi cells with a one-voxel background boundary; labels reused so some are split."""
    seeds = np.stack([rng.integers(0, s, size=nlabels + 3) for s in shape], 1)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    cell = ((grid[..., None, :] - seeds) ** 2).sum(-1).argmin(-1)
    boundary = np.zeros(shape, dtype=bool)
    for ax in range(len(shape)):
        sl = [slice(None)] * len(shape)
        sl[ax] = slice(1, None)
        boundary[tuple(sl)] |= np.diff(cell, axis=ax) != 0
    seg = rng.permutation(np.arange(1, nlabels + 4) % nlabels + 1)[cell]
    seg[boundary] = 0
    return seg


def test_matches_scipy():
    rng = np.random.default_rng(8)
    fg = rng.random((2, 6, 7, 8)) < 0.55
    seg = fg.astype(np.int64)  # one label: affinity 1 between face-adjacent foreground voxels
    affs = seglosses.seg_to_affgraph(torch.from_numpy(seg), NN3)
    out = seglosses.affgraph_to_seg(affs, NN3)
    assert out.dtype == torch.int64 and out.shape == seg.shape
    structure = ndimage.generate_binary_structure(3, 1)
    for b in range(2):
        lab, n = ndimage.label(fg[b], structure=structure)
        lab = lab.astype(np.int64)  # background voxels are single-voxel components of their own
        lab[lab == 0] = n + 1 + np.arange(int((lab == 0).sum()))
        assert same_partition(out[b], lab)
        check_raster_numbering(out[b].numpy())


@pytest.mark.parametrize("nhood", [NN2, [[0, 1], [1, 0], [2, -1]], [[0, -2], [-1, 1]], [[1, 0], [0, 1], [0, 0]]])
def test_2d_general_nhood_and_thresholds(nhood):
    rng = np.random.default_rng(9)
    affs = rng.random((3, len(nhood), 5, 6)).astype(np.float32)
    for thr in (0.5, 0.3, 0.8):
        out = seglosses.affgraph_to_seg(torch.from_numpy(affs), nhood, threshold=thr)
        for b in range(3):
            np.testing.assert_array_equal(out[b].numpy(), connected_components_ref(affs[b], nhood, thr))
    one = seglosses.affgraph_to_seg(torch.from_numpy(affs[0]), nhood)
    np.testing.assert_array_equal(one.numpy(), connected_components_ref(affs[0], nhood))


@pytest.mark.parametrize("nhood", [NN3, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 2], [0, -2, 1], [-1, 1, -1]],
                                   [[0, 0, -3], [1, 0, 0]]])
def test_3d_long_range_and_negative_offsets(nhood):
    rng = np.random.default_rng(10 + len(nhood))
    affs = rng.random((2, len(nhood), 3, 4, 5)).astype(np.float32)
    for thr in (0.5, 0.25):
        out = seglosses.affgraph_to_seg(torch.from_numpy(affs), nhood, threshold=thr)
        for b in range(2):
            np.testing.assert_array_equal(out[b].numpy(), connected_components_ref(affs[b], nhood, thr))


def test_threshold_is_strict():
    affs = torch.full((2, 3, 3), 0.5)
    out = seglosses.affgraph_to_seg(affs, NN2)
    assert out.flatten().tolist() == list(range(1, 10))
    out = seglosses.affgraph_to_seg(affs, NN2, threshold=0.4)
    assert (out == 1).all()


def test_singleton_background():
    # The op's singleton_background (MalisLoss's segmentation of target affinities): one-voxel
    # components get 0, the others are numbered 1..n in raster order of their first voxel.
    rng = np.random.default_rng(11)
    for nhood, shape in ((NN2, (6, 7)), ([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 2]], (3, 4, 5))):
        affs = (rng.random((2, len(nhood)) + shape) < 0.2).astype(np.float32)
        flat = [o for r in nhood for o in r]
        out = OP(torch.from_numpy(affs), flat, 0.5, True, 0, "MalisLoss")
        for b in range(2):
            ref = connected_components_ref(affs[b], nhood, 0.5, singleton_background=True)
            got = out[b].numpy()
            np.testing.assert_array_equal(got == 0, ref == 0)
            assert (got == 0).any() and same_partition(got, ref)
            check_raster_numbering(got[got > 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.bool, torch.int64])
def test_affinity_dtypes(dtype):
    rng = np.random.default_rng(12)
    affs = rng.random((2, 3, 3, 4, 5)) < 0.5  # 0 / 1: exact in every dtype
    ref = [connected_components_ref(a.astype(np.float64), NN3) for a in affs]
    out = seglosses.affgraph_to_seg(torch.from_numpy(affs).to(dtype), NN3)
    for b in range(2):
        np.testing.assert_array_equal(out[b].numpy(), ref[b])


def test_roundtrip_seg_affgraph_seg():
    rng = np.random.default_rng(10)
    seg = instance_volume(rng, (8, 9, 10), 6)
    affs = seglosses.seg_to_affgraph(torch.from_numpy(seg), NN3)
    out = seglosses.affgraph_to_seg(affs, NN3).numpy()
    structure = ndimage.generate_binary_structure(3, 1)
    # every connected piece of every label is one component; background voxels are singletons
    expect = np.zeros_like(seg)
    nxt = 1
    for lab in np.unique(seg[seg > 0]):
        pieces, n = ndimage.label(seg == lab, structure=structure)
        expect[pieces > 0] = pieces[pieces > 0] + nxt - 1
        nxt += n
    expect[seg == 0] = nxt + np.arange(int((seg == 0).sum()))
    assert same_partition(out, expect)


def test_empty_and_thread_counts():
    assert seglosses.affgraph_to_seg(torch.rand(0, 3, 4, 4, 4), NN3).shape == (0, 4, 4, 4)
    assert seglosses.affgraph_to_seg(torch.rand(2, 3, 0, 4, 4), NN3).shape == (2, 0, 4, 4)
    affs = torch.rand(5, 3, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    flat = [o for r in NN3 for o in r]
    ref = OP(affs, flat, 0.5, False, 1, "affgraph_to_seg")
    for threads in (2, 3, 8, 0):
        assert torch.equal(OP(affs, flat, 0.5, False, threads, "affgraph_to_seg"), ref)


def test_opcheck():
    affs = torch.rand(2, 3, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    flat = [o for r in NN3 for o in r]
    torch.library.opcheck(OP.default, (affs, flat, 0.5, True, 2, "affgraph_to_seg"))
    torch.library.opcheck(OP.default, (affs, flat, 0.3, False, 0, "affgraph_to_seg"))


def test_errors_name_the_public_function():
    with pytest.raises(ValueError, match=r"^affgraph_to_seg: affs has 2 channels but nhood has 3 rows"):
        seglosses.affgraph_to_seg(torch.rand(1, 2, 3, 4, 5), NN3)
    with pytest.raises(ValueError, match=r"^affgraph_to_seg: affs must be"):
        seglosses.affgraph_to_seg(torch.rand(3, 4), NN3)
    # the op names the caller it is given (MalisLoss calls it for its segmentation)
    with pytest.raises(ValueError, match=r"^MalisLoss: nhood must have one row of 3 offsets per channel"):
        OP(torch.rand(1, 3, 3, 4, 5), [1, 0, 0, 0, 1], 0.5, True, 1, "MalisLoss")
    with pytest.raises(ValueError, match=r"^MalisLoss: num_threads must be >= 1"):
        OP(torch.rand(1, 3, 3, 4, 5), [o for r in NN3 for o in r], 0.5, True, -1, "MalisLoss")


# The sample table (malis_samples.py): the CUDA tests (test_malis_cuda.py) run the same samples.
@pytest.mark.parametrize("s", components_samples("cpu"), ids=lambda s: s.name)
def test_components_samples_match_reference(s):
    labels = s.labels()
    assert labels.dtype == torch.int64 and labels.shape == (s.affs.shape[0],) + tuple(s.affs.shape[2:])
    np.testing.assert_array_equal(labels.numpy(), reference_labels(s))
