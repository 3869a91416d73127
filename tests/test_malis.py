"""Correctness of seglosses.malis_weights and the MALIS graph utilities (SPEC §3, §6).

Exact pair counts are compared with the brute-force oracle in ``malis_reference.py`` on tiny
graphs; bigger volumes are checked through invariants that follow from the definition.
"""

import contextlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from malis_reference import (
    comb2,
    connected_components_ref,
    malis_counts_prefix,
    malis_counts_ref,
    malis_counts_ref_batch,
    malis_weights_ref_batch,
    normalize_ref,
    same_partition,
    seg_to_affgraph_ref,
    to_numpy,
)
from malis_samples import reference_counts, reference_weights, weights_samples

import seglosses  # noqa: E402  (a broken build must fail loudly, not skip)

NN3 = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
NN2 = [[-1, 0], [0, -1]]

# nhoods used by the random cases: negative, positive, mixed, long-range, duplicated and zero rows.
NHOODS_2D = [
    NN2,
    [[1, 0], [0, 1]],
    [[-1, 0], [0, -1], [0, -2], [-2, 1]],
    [[0, 1], [-1, 0], [1, 1], [0, 2]],
    [[0, -1], [0, 1], [-1, 0]],  # the same edges twice (opposite offsets)
    [[0, -1], [0, 0], [-1, 0]],  # a [0, 0] self-edge row
]
NHOODS_3D = [
    NN3,
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 2], [0, -2, 1]],
    [[0, 0, 1], [0, 1, 0], [-1, 0, 0], [1, -1, 2]],
    [[0, 0, 0], [-1, 0, 0], [0, -1, 0], [0, 0, -1]],
]
SHAPES_2D = [(4, 5), (3, 6), (5, 5), (2, 7), (6, 4)]
SHAPES_3D = [(3, 3, 4), (2, 4, 4), (2, 3, 5), (1, 4, 6), (3, 2, 5)]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
# The kernel variants this CPU runs (csrc/cpu/malis/kernels.h): "baseline" and "avx2" (the portable
# kernels compiled for the x86-64 baseline and for AVX2) and "avx512" (the hand-written kernels).
ISAS = list(torch.ops.seglosses._malis_isas())


@contextlib.contextmanager
def kernel_isa(name):
    """Every MALIS call inside uses the kernel variant `name`."""
    before = torch.ops.seglosses._malis_set_isa(name)
    try:
        yield
    finally:
        torch.ops.seglosses._malis_set_isa(before)


def on_every_isa(call):
    """call() under every kernel variant; asserts that all give identical tensors; returns them."""
    results = {}
    for isa in ISAS:
        with kernel_isa(isa):
            results[isa] = call()
    first = results[ISAS[0]]
    for isa, r in results.items():
        for a, b in zip(first if isinstance(first, tuple) else (first,), r if isinstance(r, tuple) else (r,)):
            assert torch.equal(a, b), f"kernel variant {isa} differs from {ISAS[0]}"
    return first


def counts(pred, seg, nhood, **kw):
    """Exact counts, identical on every kernel variant (checked)."""
    pos, neg = on_every_isa(lambda: seglosses.malis_weights(pred, seg, nhood, normalize=False, **kw))
    assert pos.dtype == torch.int64 and neg.dtype == torch.int64
    assert pos.shape == pred.shape and neg.shape == pred.shape
    return pos.numpy(), neg.numpy()


def weights(pred, seg, nhood, **kw):
    """Normalised weights, identical on every kernel variant (checked)."""
    return on_every_isa(lambda: seglosses.malis_weights(pred, seg, nhood, **kw))


def random_seg(rng, shape, kind):
    if kind == "noise":  # many small, split pieces; lots of background
        return rng.integers(0, 4, size=shape)
    # blocky: a few Voronoi cells, some of them sharing a label (split instances), some background
    nseeds = int(rng.integers(2, 5))
    seeds = np.stack([rng.integers(0, s, size=nseeds) for s in shape], 1)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    d = ((grid[..., None, :] - seeds) ** 2).sum(-1)
    cell = d.argmin(-1)
    labels = rng.integers(1, 4, size=nseeds)  # cells can share labels -> disconnected pieces
    seg = labels[cell]
    seg[rng.random(shape) < 0.2] = 0
    return seg


def random_pred(rng, shape, quantised):
    x = rng.random(shape)
    if quantised:  # many exact ties
        x = np.round(x * 4) / 4
    return x


def random_case(seed):
    """One random tiny batched case: (pred, seg, nhood, kwargs for malis_weights)."""
    rng = np.random.default_rng(seed)
    three_d = seed % 2 == 1
    shapes, nhoods = (SHAPES_3D, NHOODS_3D) if three_d else (SHAPES_2D, NHOODS_2D)
    shape = shapes[int(rng.integers(len(shapes)))]
    nhood = nhoods[int(rng.integers(len(nhoods)))]
    batch = int(rng.integers(1, 4))
    seg = np.stack([random_seg(rng, shape, "noise" if rng.random() < 0.4 else "blocky") for _ in range(batch)])
    pred = np.stack([random_pred(rng, (len(nhood),) + shape, rng.random() < 0.5) for _ in range(batch)])
    kw = {}
    if rng.random() < 0.35:
        # broadcast over channels or full shape; float 0/1
        mshape = (batch, 1) + shape if rng.random() < 0.5 else pred.shape
        kw["mask"] = torch.from_numpy((rng.random(mshape) < 0.7).astype(np.float32))
    if rng.random() < 0.3:
        gt = np.stack([seg_to_affgraph_ref(s, nhood) for s in seg])
        flip = rng.random(gt.shape) < 0.15  # disagree with the segmentation
        gt[flip] = 1 - gt[flip]
        kw["gt_affs"] = torch.from_numpy(gt)
    nh_form = int(rng.integers(3))
    nh = [list(r) for r in nhood] if nh_form == 0 else (
        np.array(nhood) if nh_form == 1 else torch.tensor(nhood))
    return (torch.from_numpy(pred.astype(np.float32)), torch.from_numpy(seg.astype(np.int64)), nh, kw)


def ref_kw(kw):
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


# --------------------------------------------------------------------------------------------------
# The oracle itself
# --------------------------------------------------------------------------------------------------
def test_reference_line_hand_worked():
    # 1x4 line, labels [1, 1, 2, 2], nhood [[0, -1]]: edge e at voxel x joins x and x-1.
    # e0 invalid; e1 (1-0, GT 1, pred .9); e2 (2-1, GT 0, pred .3); e3 (3-2, GT 1, pred .8).
    # Constrained order: e1, e3, then e2. Pairs: (0,1) -> e1 pos; (2,3) -> e3 pos; the four
    # cross pairs all pass e2, which comes last -> neg[e2] = 4.
    pos, neg = malis_counts_ref(np.array([[[0.1, 0.9, 0.3, 0.8]]]), np.array([[1, 1, 2, 2]]), [[0, -1]])
    assert pos.ravel().tolist() == [0, 1, 0, 1]
    assert neg.ravel().tolist() == [0, 0, 4, 0]
    # Unconstrained with e2 = .95: order e2, e1, e3. (0,2): path e1,e2 -> e1 last -> neg e1;
    # (1,2): e2 -> neg e2; (0,3), (1,3): paths end with e3 (last) -> neg e3 twice.
    pred = np.array([[[0.1, 0.9, 0.95, 0.8]]])
    pos, neg = malis_counts_ref(pred, np.array([[1, 1, 2, 2]]), [[0, -1]], constrained=False)
    assert pos.ravel().tolist() == [0, 1, 0, 1]
    assert neg.ravel().tolist() == [0, 1, 1, 2]
    # Constrained ignores that e2 is predicted high: GT-1 edges go first anyway.
    pos, neg = malis_counts_ref(pred, np.array([[1, 1, 2, 2]]), [[0, -1]])
    assert neg.ravel().tolist() == [0, 0, 4, 0]


def test_reference_split_label_and_ties_hand_worked():
    # 1x3 line, labels [1, 0, 1], nhood [[0, 1]] (edge at x joins x and x+1): both edges GT 0.
    # The only labelled pair (0, 2) has equal labels and a GT-0 maximin edge: constrained counts
    # nothing; unconstrained: order e1 (.7), e0 (.2) -> maximin e0 -> pos[e0] = 1.
    pred = np.array([[[0.2, 0.7, 0.9]]])
    pos, neg = malis_counts_ref(pred, np.array([[1, 0, 1]]), [[0, 1]])
    assert pos.sum() == 0 and neg.sum() == 0
    pos, neg = malis_counts_ref(pred, np.array([[1, 0, 1]]), [[0, 1]], constrained=False)
    assert pos.ravel().tolist() == [1, 0, 0] and neg.sum() == 0

    # 2x2, seg [[1, 1], [2, 0]], nhood [[-1, 0], [0, -1]], every prediction 0.5 (all ties).
    # Flat edges: 2 = (1,0)-(0,0) GT0, 3 = (1,1)-(0,1) GT0, 5 = (0,1)-(0,0) GT1,
    # 7 = (1,1)-(1,0) GT0; 0, 1, 4, 6 invalid. Constrained order 5, 2, 3, 7 (7 closes a cycle).
    # a=(0,0), b=(0,1), c=(1,0): (a,b) -> 5 pos; (a,c) -> 2 neg; (b,c) path 5,2 -> 2 neg.
    seg = np.array([[1, 1], [2, 0]])
    pos, neg = malis_counts_ref(np.full((2, 2, 2), 0.5), seg, NN2)
    assert pos.ravel().tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert neg.ravel().tolist() == [0, 0, 2, 0, 0, 0, 0, 0]
    # Unconstrained order 2, 3, 5, 7: (b,c) path 5,2 -> 5 is last -> neg[5].
    pos, neg = malis_counts_ref(np.full((2, 2, 2), 0.5), seg, NN2, constrained=False)
    assert pos.ravel().tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert neg.ravel().tolist() == [0, 0, 1, 0, 0, 1, 0, 0]


def test_reference_counts_agree_with_prefix_connectivity():
    # Two independent oracles: spanning-forest path walk vs "add edges in order, re-run BFS".
    for seed in range(16):
        pred, seg, nhood, kw = random_case(seed)
        kw = ref_kw(kw)
        for constrained in (True, False):
            b = 0
            sub = {k: v[b] for k, v in kw.items() if k == "gt_affs"}
            a = malis_counts_ref(pred[b].numpy(), seg[b].numpy(), nhood, constrained=constrained, **sub)
            c = malis_counts_prefix(pred[b].numpy(), seg[b].numpy(), nhood, constrained=constrained, **sub)
            np.testing.assert_array_equal(a[0], c[0])
            np.testing.assert_array_equal(a[1], c[1])


def test_reference_pair_totals():
    # Constrained on a connected graph: every different-label pair is counted once.
    rng = np.random.default_rng(0)
    seg = random_seg(rng, (4, 5), "blocky")
    pred = rng.random((2, 4, 5))
    pos, neg = malis_counts_ref(pred, seg, NN2)
    sizes = np.bincount(seg[seg > 0])
    n = int((seg > 0).sum())
    assert neg.sum() == comb2(n) - sum(comb2(s) for s in sizes)
    pos, neg = malis_counts_ref(pred, seg, NN2, constrained=False)
    assert pos.sum() + neg.sum() == comb2(n)


# --------------------------------------------------------------------------------------------------
# Exact counts vs the oracle
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(64))
def test_counts_match_oracle(seed):
    pred, seg, nhood, kw = random_case(seed)
    for constrained in (True, False):
        pos, neg = counts(pred, seg, nhood, constrained=constrained, **kw)
        rpos, rneg = malis_counts_ref_batch(pred, seg, nhood, constrained=constrained, **ref_kw(kw))
        np.testing.assert_array_equal(pos, rpos, err_msg=f"pos, constrained={constrained}")
        np.testing.assert_array_equal(neg, rneg, err_msg=f"neg, constrained={constrained}")
        w = weights(pred, seg, nhood, constrained=constrained, **kw)
        assert w.dtype == torch.float32 and w.shape == pred.shape
        ref_w = malis_weights_ref_batch(pred, seg, nhood, constrained=constrained, **ref_kw(kw))
        np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6, atol=1e-7)
        if "mask" in kw and constrained:  # the earlier mask rule on the same case
            pos, neg = counts(pred, seg, nhood, constrain_masked=True, **kw)
            rpos, rneg = malis_counts_ref_batch(pred, seg, nhood, constrain_masked=True, **ref_kw(kw))
            np.testing.assert_array_equal(pos, rpos, err_msg="pos, constrain_masked")
            np.testing.assert_array_equal(neg, rneg, err_msg="neg, constrain_masked")


@pytest.mark.parametrize("seed", range(4))
def test_counts_match_oracle_medium(seed):
    # ~180 voxels, long-range nhood, quantised and continuous predictions (oracle is O(V^2)).
    rng = np.random.default_rng(100 + seed)
    nhood = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 2], [0, -2, 1]] if seed % 2 else [[0, 1], [1, 0], [-2, 1]]
    shape = (5, 6, 6) if seed % 2 else (12, 15)
    seg = np.stack([random_seg(rng, shape, "blocky")])
    pred = np.stack([random_pred(rng, (len(nhood),) + shape, seed < 2)]).astype(np.float32)
    for constrained in (True, False):
        pos, neg = counts(torch.from_numpy(pred), torch.from_numpy(seg), nhood, constrained=constrained)
        rpos, rneg = malis_counts_ref_batch(pred, seg, nhood, constrained=constrained)
        np.testing.assert_array_equal(pos, rpos)
        np.testing.assert_array_equal(neg, rneg)


@pytest.mark.parametrize("seed", range(12))
def test_cycle_filter_near_ties_match_oracle(seed):
    # The sweep leaves out the last edge of each 4-cycle, comparing order keys that drop the key's
    # lowest bit and refusing to drop on a shared maximum. Adjacent floats (equal after the dropped
    # bit), -0.0 / +0.0, exact ties and mixed signs must still give the oracle's counts; nhoods
    # with duplicated, opposite and collinear rows make degenerate "squares" that must be skipped.
    rng = np.random.default_rng(500 + seed)
    three_d = seed % 2 == 1
    if three_d:
        shape = (3, 3, 4)
        nhood = [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 2], [0, 1, 0], [0, 0, -1]]
    else:
        shape = (5, 6)
        nhood = [[0, 1], [1, 0], [0, 2], [0, -1], [1, 0], [1, 1]]
    base = np.float32(0.5) if seed % 3 else np.float32(-0.25)
    near = np.array([base, np.nextafter(base, np.float32(1)), np.nextafter(base, np.float32(-1)),
                     np.float32(0.0), np.float32(-0.0), np.float32(0.75), np.float32(-0.75)], dtype=np.float32)
    batch = 2
    pred = near[rng.integers(0, len(near), size=(batch, len(nhood)) + shape)]
    seg = np.stack([random_seg(rng, shape, "blocky" if b else "noise") for b in range(batch)])
    kw = {}
    if seed % 4 == 3:
        gt = np.stack([seg_to_affgraph_ref(s, nhood) for s in seg])
        flip = rng.random(gt.shape) < 0.15
        gt[flip] = 1 - gt[flip]
        kw["gt_affs"] = torch.from_numpy(gt)
    for constrained in (True, False):
        pos, neg = counts(torch.from_numpy(pred), torch.from_numpy(seg), nhood, constrained=constrained, **kw)
        rpos, rneg = malis_counts_ref_batch(pred, seg, nhood, constrained=constrained, **ref_kw(kw))
        np.testing.assert_array_equal(pos, rpos, err_msg=f"pos, constrained={constrained}")
        np.testing.assert_array_equal(neg, rneg, err_msg=f"neg, constrained={constrained}")


@pytest.mark.parametrize("seed", range(8))
def test_long_rows_match_oracle(seed):
    # Rows of 33-50 voxels: the vectorised kernels' full 16-edge blocks, blocks that hold several
    # labels (and a label that comes back within a block), and masked row tails; every dtype.
    rng = np.random.default_rng(900 + seed)
    three_d = seed % 2 == 1
    shape = (2, 2, 37 + seed) if three_d else (3, 33 + 2 * seed)
    nhood = (NN3 if seed % 4 == 1 else [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 3]]) if three_d else (
        NN2 if seed % 4 == 0 else [[0, 1], [1, 0], [1, -2]])
    seg = np.stack([random_seg(rng, shape, "noise" if b == 1 else "blocky") for b in range(2)])
    seg[0, ..., 5:9] = 2  # 1 2 2 2 2 1 ... within one block after a background voxel
    seg[0, ..., 4] = 1
    seg[0, ..., 9] = 1
    dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][seed % 4]
    quantised = seed >= 4  # exact ties (k/8 is exact in every dtype)
    pred = torch.from_numpy(random_pred(rng, (2, len(nhood)) + shape, False))
    pred = (torch.round(pred * 8) / 8 if quantised else pred).to(dtype)
    kw = {}
    if seed % 3 == 2:
        kw["mask"] = torch.from_numpy((rng.random(pred.shape) < 0.7).astype(np.float32))
    seg = torch.from_numpy(seg)
    for constrained in (True, False):
        pos, neg = counts(pred, seg, nhood, constrained=constrained, **kw)
        rpos, rneg = malis_counts_ref_batch(pred.double(), seg, nhood, constrained=constrained, **ref_kw(kw))
        np.testing.assert_array_equal(pos, rpos, err_msg=f"pos, constrained={constrained}, {dtype}")
        np.testing.assert_array_equal(neg, rneg, err_msg=f"neg, constrained={constrained}, {dtype}")


def _voronoi_case(rng, shape, dtype, batch=2):
    nd = len(shape)
    nhood = seglosses.mknhood3d(1) if nd == 3 else seglosses.mknhood2d(1)
    seeds = np.stack([rng.integers(0, s, size=12) for s in shape], 1)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    seg = ((grid[..., None, :] - seeds) ** 2).sum(-1).argmin(-1) + 1
    seg[rng.random(shape) < 0.05] = 0
    pred = torch.from_numpy(rng.random((batch, nhood.shape[0]) + shape)).to(dtype)
    seg = torch.from_numpy(np.stack([seg, seg[::-1].copy()][:batch]))
    return pred, seg, nhood


def test_every_kernel_variant_gives_the_same_counts_on_bigger_volumes():
    # The oracle tests run every variant on tiny graphs (counts() / weights()); here bigger volumes
    # with long rows, every dtype, with and without a mask, both mask rules.
    assert ISAS[0] == "baseline" and len(ISAS) == len(set(ISAS))
    rng = np.random.default_rng(7)
    for shape, dtype in [((20, 22, 35), torch.float32), ((18, 40), torch.float16), ((9, 10, 41), torch.bfloat16),
                         ((12, 13, 33), torch.float64)]:
        pred, seg, nhood = _voronoi_case(rng, shape, dtype)
        mask = torch.from_numpy(rng.random(pred.shape) < 0.8)
        for constrained in (True, False):
            counts(pred, seg, nhood, constrained=constrained)
            counts(pred, seg, nhood, constrained=constrained, mask=mask)
            counts(pred, seg, nhood, constrained=constrained, mask=mask, constrain_masked=True)


def test_disable_avx512_env_selects_a_portable_variant():
    # SEGLOSSES_DISABLE_AVX512 (non-empty, not "0") keeps the default off the AVX-512 kernels.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               SEGLOSSES_DISABLE_AVX512="1")
    code = "import torch, seglosses; print(torch.ops.seglosses._malis_isa())"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out in ISAS and out != "avx512", out
    if os.environ.get("SEGLOSSES_DISABLE_AVX512", "") in ("", "0"):  # this process: the best variant
        assert torch.ops.seglosses._malis_isa() == ISAS[-1]


def test_isa_override_rejects_unknown_names():
    with pytest.raises(ValueError, match="_malis_set_isa: isa must be"):
        torch.ops.seglosses._malis_set_isa("sse9")
    with kernel_isa("baseline"):
        assert torch.ops.seglosses._malis_isa() == "baseline"
    assert torch.ops.seglosses._malis_set_isa("auto") == "auto"


def test_hand_worked_cases_through_api():
    pred = torch.tensor([[[[0.1, 0.9, 0.3, 0.8]]]])
    seg = torch.tensor([[[1, 1, 2, 2]]])
    pos, neg = counts(pred, seg, [[0, -1]])
    assert pos.ravel().tolist() == [0, 1, 0, 1] and neg.ravel().tolist() == [0, 0, 4, 0]
    w = seglosses.malis_weights(pred, seg, [[0, -1]])
    torch.testing.assert_close(w.ravel(), torch.tensor([0.0, 0.5, 1.0, 0.5]))
    pred = torch.tensor([[[[0.1, 0.9, 0.95, 0.8]]]])
    pos, neg = counts(pred, seg, [[0, -1]], constrained=False)
    assert pos.ravel().tolist() == [0, 1, 0, 1] and neg.ravel().tolist() == [0, 1, 1, 2]
    pos, neg = counts(torch.full((1, 2, 2, 2), 0.5), torch.tensor([[[1, 1], [2, 0]]]), NN2)
    assert pos.ravel().tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert neg.ravel().tolist() == [0, 0, 2, 0, 0, 0, 0, 0]


def test_split_label_touching_through_gt0_gets_nothing():
    # Label 1 in two pieces separated by background: constrained MALIS counts no pair between them.
    seg = torch.tensor([[[1, 1, 0, 1, 1]]])
    pred = torch.tensor([[[[0.3, 0.9, 0.8, 0.7, 0.6]]]])
    pos, neg = counts(pred, seg, [[0, 1]])
    assert pos.ravel().tolist() == [1, 0, 0, 1, 0]
    assert neg.sum() == 0
    pos, neg = counts(pred, seg, [[0, 1]], constrained=False)
    assert pos.sum() == comb2(4) and neg.sum() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_pred_dtypes_exact(dtype):
    # Values k/8 are exact in every dtype, so ties fall the same way as in the oracle.
    for seed in (3, 4, 7, 10):
        pred, seg, nhood, kw = random_case(seed)
        pred = (torch.round(pred * 8) / 8).to(dtype)
        for constrained in (True, False):
            pos, neg = counts(pred, seg, nhood, constrained=constrained, **kw)
            rpos, rneg = malis_counts_ref_batch(pred, seg, nhood, constrained=constrained, **ref_kw(kw))
            np.testing.assert_array_equal(pos, rpos)
            np.testing.assert_array_equal(neg, rneg)
            w = weights(pred, seg, nhood, constrained=constrained, **kw)
            assert w.dtype == torch.float32 and w.shape == pred.shape
            ref_w = malis_weights_ref_batch(pred, seg, nhood, constrained=constrained, **ref_kw(kw))
            np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6, atol=1e-7)


def test_batch_samples_independent():
    pred, seg, nhood, kw = random_case(11)
    rng = np.random.default_rng(5)
    pred = torch.from_numpy(rng.random((3,) + tuple(pred.shape[1:])).astype(np.float32))
    seg = torch.from_numpy(np.stack([random_seg(rng, tuple(seg.shape[1:]), "blocky") for _ in range(3)]))
    full = seglosses.malis_weights(pred, seg, nhood)
    fpos, fneg = counts(pred, seg, nhood)
    for b in range(3):
        one = seglosses.malis_weights(pred[b:b + 1], seg[b:b + 1], nhood)
        torch.testing.assert_close(full[b:b + 1], one, rtol=0, atol=0)
        pos, neg = counts(pred[b:b + 1], seg[b:b + 1], nhood)
        np.testing.assert_array_equal(fpos[b:b + 1], pos)
        np.testing.assert_array_equal(fneg[b:b + 1], neg)


def test_seg_layouts_unbatched_and_label_dtypes():
    pred, seg, nhood, _ = random_case(13)  # 3D
    pred, seg = pred[:1], seg[:1]
    ref = malis_weights_ref_batch(pred, seg, nhood)
    # [B, 1, *spatial] segmentation
    w = seglosses.malis_weights(pred, seg[:, None], nhood)
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-6, atol=1e-7)
    # unbatched pred [C, *spatial] with seg [*spatial]
    w = seglosses.malis_weights(pred[0], seg[0], nhood)
    assert w.shape == pred[0].shape
    np.testing.assert_allclose(w.numpy(), ref[0], rtol=1e-6, atol=1e-7)
    pos, neg = seglosses.malis_weights(pred[0], seg[0], nhood, normalize=False)
    rpos, rneg = malis_counts_ref(pred[0], seg[0], nhood)
    np.testing.assert_array_equal(pos.numpy(), rpos)
    np.testing.assert_array_equal(neg.numpy(), rneg)
    # other integer label dtypes, and huge label ids (no relabelling overflow)
    for dt in (torch.int32, torch.int16, torch.uint8):
        w = seglosses.malis_weights(pred, seg.to(dt), nhood)
        np.testing.assert_allclose(w.numpy(), ref, rtol=1e-6, atol=1e-7)
    big = torch.where(seg > 0, seg * (2**40) + 7, torch.zeros_like(seg))
    w = seglosses.malis_weights(pred, big, nhood)
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-6, atol=1e-7)


def test_gt_affs_bool_equals_float():
    pred, seg, nhood, _ = random_case(17)
    rng = np.random.default_rng(17)
    gt = torch.from_numpy(rng.random(tuple(pred.shape)) < 0.5)
    for constrained in (True, False):
        a = counts(pred, seg, nhood, gt_affs=gt, constrained=constrained)
        b = counts(pred, seg, nhood, gt_affs=gt.float(), constrained=constrained)
        r = malis_counts_ref_batch(pred, seg, nhood, gt_affs=gt.numpy(), constrained=constrained)
        for x, y, z in zip(a, b, r):
            np.testing.assert_array_equal(x, z)
            np.testing.assert_array_equal(y, z)


def test_non_contiguous_inputs_and_no_inplace():
    pred, seg, nhood, kw = random_case(21)
    ref_pos, ref_neg = malis_counts_ref_batch(pred, seg, nhood)
    # a channels-last-ish permuted copy and a strided view carrying the same values
    big = torch.zeros(pred.shape[:-1] + (2 * pred.shape[-1],))
    big[..., ::2] = pred
    view = big[..., ::2]
    assert not view.is_contiguous()
    seg_t = seg.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not seg_t.is_contiguous()
    before = (view.clone(), seg_t.clone())
    pos, neg = counts(view, seg_t, nhood)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(neg, ref_neg)
    assert torch.equal(view, before[0]) and torch.equal(seg_t, before[1])


def test_constrain_masked_mask_broadcast_forms_and_counts_times_mask():
    pred, seg, nhood, _ = random_case(30)
    rng = np.random.default_rng(1)
    pos0, neg0 = counts(pred, seg, nhood)
    m_full = torch.from_numpy(rng.random(tuple(pred.shape)) < 0.6)
    m_chan = torch.from_numpy((rng.random((pred.shape[0], 1) + tuple(pred.shape[2:])) < 0.6).astype(np.uint8))
    for m in (m_full, m_chan, m_full.float()):
        keep = np.broadcast_to(m.numpy() != 0, tuple(pred.shape))
        pos, neg = counts(pred, seg, nhood, mask=m, constrain_masked=True)
        # the earlier rule never changes the order: the unmasked counts, zeroed where excluded
        np.testing.assert_array_equal(pos, np.where(keep, pos0, 0))
        np.testing.assert_array_equal(neg, np.where(keep, neg0, 0))
        w = weights(pred, seg, nhood, mask=m, constrain_masked=True).numpy()
        ref = np.stack([normalize_ref(np.where(k, p, 0), np.where(k, n, 0)) for k, p, n in zip(keep, pos0, neg0)])
        np.testing.assert_allclose(w, ref, rtol=1e-6, atol=1e-7)
        assert (w[~keep] == 0).all()


# --------------------------------------------------------------------------------------------------
# The mask rule (SPEC §3 mask; issue 12): PyTorch Connectomics' by default, the earlier one as an option
# --------------------------------------------------------------------------------------------------
# (1, 1, 5) volume, seg [1, 1, 2, 1, 1], nhood [[0, 0, 1]] (edge x joins voxels x and x + 1; the last
# is invalid), pred [.5, .9, .8, .4, .3], mask [1, 0, 0, 1, 1]. PyTC's positive pass: nothing is
# forced (the GT-0 edges 1 and 2 are outside the mask), order e1 .9, e2 .8, e0 .5, e3 .4: e2 joins
# {1, 2} and {3} (1 same-label pair, excluded), e0 then joins 2 and e3 3 same-label pairs -> weights
# 0.4 and 0.6; the negative pass counts only excluded edges. Loss .4 * .5^2 + .6 * .6^2 = 0.316.
REPRO_SEG = torch.tensor([[[[1, 1, 2, 1, 1]]]])
REPRO_PRED = torch.tensor([[[[[0.5, 0.9, 0.8, 0.4, 0.3]]]]])
REPRO_MASK = torch.tensor([[[[[1.0, 0.0, 0.0, 1.0, 1.0]]]]])


def test_mask_rule_reproducer_from_pytorch_connectomics():
    nh = [[0, 0, 1]]
    pos, neg = counts(REPRO_PRED, REPRO_SEG, nh, mask=REPRO_MASK)
    assert pos.ravel().tolist() == [2, 0, 0, 3, 0] and neg.sum() == 0
    w = weights(REPRO_PRED, REPRO_SEG, nh, mask=REPRO_MASK)
    torch.testing.assert_close(w.ravel(), torch.tensor([0.4, 0.0, 0.0, 0.6, 0.0]))
    target = seglosses.seg_to_affgraph(REPRO_SEG, nh)
    loss = seglosses.MalisLoss(nh, sigmoid=False)(REPRO_PRED, target, mask=REPRO_MASK, gt_seg=REPRO_SEG)
    torch.testing.assert_close(loss, torch.tensor(0.316))
    # The earlier rule: GT-1 edges first whatever the mask: e0 and e3 join 1 + 1 pairs -> 0.5 / 0.5.
    pos, neg = counts(REPRO_PRED, REPRO_SEG, nh, mask=REPRO_MASK, constrain_masked=True)
    assert pos.ravel().tolist() == [1, 0, 0, 1, 0] and neg.sum() == 0
    loss = seglosses.MalisLoss(nh, sigmoid=False, constrain_masked=True)(REPRO_PRED, target, mask=REPRO_MASK,
                                                                         gt_seg=REPRO_SEG)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 0.25 + 0.5 * 0.36))


def masked_case(seed):
    """A random case that always has a mask: whole-slab exclusions or random edges, 2D or 3D."""
    pred, seg, nhood, kw = random_case(1000 + seed)
    rng = np.random.default_rng(seed)
    if seed % 3 == 0:  # a block of voxels whose ground truth is not to be trusted, all channels
        m = np.ones((pred.shape[0], 1) + tuple(pred.shape[2:]), dtype=np.float32)
        m[:, :, : max(1, pred.shape[2] // 2)] = 0
    else:
        m = (rng.random(tuple(pred.shape)) < 0.6).astype(np.float32)
    kw["mask"] = torch.from_numpy(m)
    return pred, seg, nhood, kw


@pytest.mark.parametrize("seed", range(24))
def test_masked_counts_match_oracle_both_rules(seed):
    pred, seg, nhood, kw = masked_case(seed)
    for constrained in (True, False):
        for constrain_masked in (False, True):
            opts = dict(constrained=constrained, constrain_masked=constrain_masked)
            pos, neg = counts(pred, seg, nhood, **opts, **kw)
            rpos, rneg = malis_counts_ref_batch(pred, seg, nhood, **opts, **ref_kw(kw))
            np.testing.assert_array_equal(pos, rpos, err_msg=f"pos, {opts}")
            np.testing.assert_array_equal(neg, rneg, err_msg=f"neg, {opts}")
            w = weights(pred, seg, nhood, **opts, **kw)
            ref_w = malis_weights_ref_batch(pred, seg, nhood, **opts, **ref_kw(kw))
            np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6, atol=1e-7)
            keep = np.broadcast_to(kw["mask"].numpy() != 0, tuple(pred.shape))
            assert (w.numpy()[~keep] == 0).all()


def test_masked_oracles_agree_with_prefix_connectivity():
    for seed in range(10):
        pred, seg, nhood, kw = masked_case(seed)
        kw = ref_kw(kw)
        sub = {k: v[0] for k, v in kw.items()}
        for constrain_masked in (False, True):
            a = malis_counts_ref(pred[0].numpy(), seg[0].numpy(), nhood, constrain_masked=constrain_masked, **sub)
            c = malis_counts_prefix(pred[0].numpy(), seg[0].numpy(), nhood, constrain_masked=constrain_masked, **sub)
            np.testing.assert_array_equal(a[0], c[0])
            np.testing.assert_array_equal(a[1], c[1])


def test_unconstrained_mask_only_zeroes_weights():
    # Without a constraint the two rules are one: the unmasked counts, zeroed where excluded.
    pred, seg, nhood, kw = masked_case(5)
    keep = np.broadcast_to(kw["mask"].numpy() != 0, tuple(pred.shape))
    pos0, neg0 = counts(pred, seg, nhood, constrained=False)
    for constrain_masked in (False, True):
        pos, neg = counts(pred, seg, nhood, constrained=False, constrain_masked=constrain_masked, **kw)
        np.testing.assert_array_equal(pos, np.where(keep, pos0, 0))
        np.testing.assert_array_equal(neg, np.where(keep, neg0, 0))


def test_all_ones_mask_equals_no_mask_and_masked_pieces():
    pred, seg, nhood, kw = random_case(40)
    ones = torch.ones(pred.shape)
    for constrain_masked in (False, True):
        assert torch.equal(weights(pred, seg, nhood, mask=ones, constrain_masked=constrain_masked),
                           weights(pred, seg, nhood))
    # Every edge excluded: no weight at all.
    assert (weights(pred, seg, nhood, mask=torch.zeros(pred.shape)) == 0).all()


def test_masked_pair_totals_on_bigger_volumes():
    # PyTC rule, a slab excluded: every count kept is on an edge inside the mask, positive counts on
    # GT-1 edges and negative on GT-0 edges, and with the slab moved from the mask to the labels
    # (no mask, but the slab's edges... ) the weights still sum to 2 per sample.
    rng = np.random.default_rng(41)
    shape = (14, 15, 16)
    seg = torch.from_numpy(np.stack([instance_volume(rng, shape, 8) for _ in range(2)]))
    pred = torch.from_numpy(rng.random((2, 3) + shape).astype(np.float32))
    mask = torch.ones(2, 1, *shape)
    mask[:, :, 4:9] = 0
    gt = seglosses.seg_to_affgraph(seg, NN3) > 0.5
    pos, neg = counts(pred, seg, NN3, mask=mask)
    keep = np.broadcast_to(mask.numpy() != 0, tuple(pred.shape))
    assert (pos[~keep] == 0).all() and (neg[~keep] == 0).all()
    assert (pos[~gt.numpy()] == 0).all() and (neg[gt.numpy()] == 0).all()
    w = weights(pred, seg, NN3, mask=mask)
    torch.testing.assert_close(w.double().flatten(1).sum(1), torch.full((2,), 2.0, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Threads (malis_weights num_threads, MalisLoss malis_num_workers)
# --------------------------------------------------------------------------------------------------
def test_results_identical_for_any_thread_count():
    rng = np.random.default_rng(42)
    shape = (10, 11, 12)
    seg = torch.from_numpy(np.stack([instance_volume(rng, shape, 6) for _ in range(3)]))
    pred = torch.from_numpy(rng.random((3, 3) + shape).astype(np.float32))
    mask = torch.from_numpy(rng.random((3, 3) + shape) < 0.8)
    for kw in ({}, {"mask": mask}):
        ref_w = seglosses.malis_weights(pred, seg, NN3, num_threads=1, **kw)
        ref_c = seglosses.malis_weights(pred, seg, NN3, num_threads=1, normalize=False, **kw)
        for threads in (2, 3, 5, None):
            assert torch.equal(seglosses.malis_weights(pred, seg, NN3, num_threads=threads, **kw), ref_w)
            c = seglosses.malis_weights(pred, seg, NN3, num_threads=threads, normalize=False, **kw)
            assert torch.equal(c[0], ref_c[0]) and torch.equal(c[1], ref_c[1])
    target = seglosses.seg_to_affgraph(seg, NN3)
    logits = torch.from_numpy(rng.normal(size=(3, 3) + shape).astype(np.float32))
    for gt_seg in (None, seg):
        ref = seglosses.MalisLoss(NN3, reduction="none")(logits, target, mask=mask, gt_seg=gt_seg)
        for workers in (1, 2, 4):
            got = seglosses.MalisLoss(NN3, reduction="none", malis_num_workers=workers)(logits, target, mask=mask,
                                                                                        gt_seg=gt_seg)
            assert torch.equal(got, ref)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", [2]])
def test_thread_count_validation(bad):
    # The values PyTorch Connectomics' test_num_workers_validation rejects, as ValueError.
    with pytest.raises(ValueError, match=r"^MalisLoss: malis_num_workers must be an int >= 1 or None, got"):
        seglosses.MalisLoss(malis_num_workers=bad)
    with pytest.raises(ValueError, match=r"^malis_weights: num_threads must be an int >= 1 or None, got"):
        seglosses.malis_weights(GOOD_PRED, GOOD_SEG, NN3, num_threads=bad)
    assert seglosses.MalisLoss(malis_num_workers=np.int64(3)).malis_num_workers == 3


# --------------------------------------------------------------------------------------------------
# Error messages name the public function the user called
# --------------------------------------------------------------------------------------------------
def test_errors_name_the_public_function():
    pred = GOOD_PRED.clone()
    pred[0, 1, 1, 1, 1] = float("nan")
    target = seglosses.seg_to_affgraph(GOOD_SEG, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"^MalisLoss: pred must be finite, got -?nan in sample 0 at flat index"):
        seglosses.MalisLoss()(pred, target, gt_seg=GOOD_SEG)
    neg = GOOD_SEG.clone()
    neg[0, 0, 0, 0] = -3
    with pytest.raises(ValueError, match=r"^MalisLoss: gt_seg labels must be >= 0, got -3"):
        seglosses.MalisLoss()(GOOD_PRED, target, gt_seg=neg)
    with pytest.raises(ValueError, match=r"^malis_loss3d: seg_gt labels must be >= 0, got -3"):
        seglosses.malis_loss3d(neg[:, None], GOOD_PRED)
    with pytest.raises(ValueError, match=r"^malis_loss3d: pred_aff must be finite, got -?nan"):
        seglosses.malis_loss3d(GOOD_SEG[:, None], pred)
    with pytest.raises(ValueError, match=r"^malis_weights: pred_affs must be finite, got -?nan"):
        seglosses.malis_weights(pred, GOOD_SEG, NN3)
    with pytest.raises(ValueError, match=r"^malis_weights: gt_seg labels must be >= 0, got -3"):
        seglosses.malis_weights(GOOD_PRED, neg, NN3)


def test_zero_offset_row_gets_zero_weight():
    pred, seg, _, _ = random_case(1)
    nhood = [[0, 0, 0], [-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    rng = np.random.default_rng(2)
    pred = torch.from_numpy(rng.random((pred.shape[0], 4) + tuple(pred.shape[2:])).astype(np.float32))
    pred[:, 0] = 1.0  # a self-edge predicted as certain must still do nothing
    w = seglosses.malis_weights(pred, seg, nhood, constrained=False)
    assert (w[:, 0] == 0).all()
    w_nn = seglosses.malis_weights(pred[:, 1:].contiguous(), seg, NN3, constrained=False)
    torch.testing.assert_close(w[:, 1:], w_nn, rtol=0, atol=0)


def test_invalid_edges_get_zero_weight():
    rng = np.random.default_rng(3)
    seg = torch.ones(1, 3, 4, 5, dtype=torch.int64)
    seg[0, 1] = 2
    nhood = [[-1, 0, 0], [0, 0, 2], [0, -2, 1]]
    pred = torch.from_numpy(rng.random((1, 3, 3, 4, 5)).astype(np.float32))
    for constrained in (True, False):
        pos, neg = counts(pred, seg, nhood, constrained=constrained)
        w = seglosses.malis_weights(pred, seg, nhood, constrained=constrained)
        for arr in (pos, neg, w.numpy()):
            assert (arr[0, 0, 0] == 0).all()          # z - 1 < 0
            assert (arr[0, 1, :, :, 3:] == 0).all()    # x + 2 >= 5
            assert (arr[0, 2, :, :2] == 0).all()       # y - 2 < 0
            assert (arr[0, 2, :, :, 4] == 0).all()     # x + 1 >= 5
    # an offset longer than the volume: the whole channel is invalid
    w = seglosses.malis_weights(pred[:, :2], seg, [[0, 0, -10], [0, 1, 0]])
    assert (w[:, 0] == 0).all() and float(w.sum()) > 0


# --------------------------------------------------------------------------------------------------
# Invariants on bigger volumes
# --------------------------------------------------------------------------------------------------
def instance_volume(rng, shape, nlabels):
    """Voronoi cells with a one-voxel background boundary; labels reused so some are split."""
    seeds = np.stack([rng.integers(0, s, size=nlabels + 3) for s in shape], 1)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    cell = ((grid[..., None, :] - seeds) ** 2).sum(-1).argmin(-1)
    boundary = np.zeros(shape, dtype=bool)
    for ax in range(len(shape)):
        d = np.diff(cell, axis=ax) != 0
        sl = [slice(None)] * len(shape)
        sl[ax] = slice(1, None)
        boundary[tuple(sl)] |= d
    labels = rng.permutation(np.arange(1, nlabels + 4) % nlabels + 1)  # some labels twice
    seg = labels[cell]
    seg[boundary] = 0
    seg[rng.random(shape) < 0.03] = 0
    return seg


def expected_totals(seg):
    ndim = seg.ndim
    structure = ndimage.generate_binary_structure(ndim, 1)
    pos = 0
    n_by_label = []
    for lab in np.unique(seg[seg > 0]):
        pieces, npieces = ndimage.label(seg == lab, structure=structure)
        sizes = np.bincount(pieces.ravel())[1:]
        pos += sum(comb2(s) for s in sizes)
        n_by_label.append(int((seg == lab).sum()))
    n = int((seg > 0).sum())
    neg = comb2(n) - sum(comb2(k) for k in n_by_label)
    return pos, neg, comb2(n)


@pytest.mark.parametrize("shape,nhood", [((16, 16, 16), NN3), ((40, 36), NN2), ((12, 14, 10), [[1, 0, 0], [0, 1, 0], [0, 0, 1]])])
def test_pair_count_invariants(shape, nhood):
    rng = np.random.default_rng(sum(shape))
    batch = 2
    seg = np.stack([instance_volume(rng, shape, 10) for _ in range(batch)])
    pred = torch.from_numpy(rng.random((batch, len(nhood)) + shape).astype(np.float32))
    seg_t = torch.from_numpy(seg)
    pos, neg = counts(pred, seg_t, nhood)
    upos, uneg = counts(pred, seg_t, nhood, constrained=False)
    for b in range(batch):
        epos, eneg, npairs = expected_totals(seg[b])
        assert pos[b].sum() == epos
        assert neg[b].sum() == eneg
        assert upos[b].sum() + uneg[b].sum() == npairs
        assert (pos[b] >= 0).all() and (neg[b] >= 0).all()
    for constrained in (True, False):
        w = seglosses.malis_weights(pred, seg_t, nhood, constrained=constrained)
        assert w.dtype == torch.float32 and w.shape == pred.shape
        assert (w >= 0).all()
        torch.testing.assert_close(w.double().flatten(1).sum(1), torch.full((batch,), 2.0, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)


def test_big_counts_do_not_overflow():
    # One label over 64^3 voxels: C(262144, 2) ~ 3.4e10 pairs, far beyond int32.
    n = 64
    seg = torch.ones(1, n, n, n, dtype=torch.int64)
    pred = torch.rand(1, 3, n, n, n, generator=torch.Generator().manual_seed(0))
    pos, neg = counts(pred, seg, NN3)
    assert pos.sum() == comb2(n**3) and neg.sum() == 0


def test_parallel_equals_serial():
    rng = np.random.default_rng(7)
    shape = (12, 12, 12)
    seg = torch.from_numpy(np.stack([instance_volume(rng, shape, 8) for _ in range(4)]))
    pred = torch.from_numpy(rng.random((4, 3) + shape).astype(np.float32))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        w1 = seglosses.malis_weights(pred, seg, NN3)
        c1 = seglosses.malis_weights(pred, seg, NN3, normalize=False)
        torch.set_num_threads(2)
        w2 = seglosses.malis_weights(pred, seg, NN3)
        c2 = seglosses.malis_weights(pred, seg, NN3, normalize=False)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(w1, w2)
    assert torch.equal(c1[0], c2[0]) and torch.equal(c1[1], c2[1])


def test_opcheck():
    op = torch.ops.seglosses
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 3, 4, 5, generator=g)
    seg = torch.randint(0, 3, (2, 3, 4, 5), generator=g)
    gt = (torch.rand(2, 3, 3, 4, 5, generator=g) > 0.5).float()
    mask = (torch.rand(2, 3, 3, 4, 5, generator=g) > 0.2).float()
    nh = [v for row in NN3 for v in row]
    names = ("malis_weights", "pred_affs", "gt_seg")
    for args in [(pred, seg, None, None, nh, True, False, 2) + names, (pred, seg, gt, mask, nh, False, True, 1) + names,
                 (pred, seg, None, mask, nh, True, False, 0) + names, (pred, None, gt, mask, nh, True, False, 0) + names]:
        torch.library.opcheck(op.malis_weights.default, args)
        torch.library.opcheck(op.malis_counts.default, args)
    torch.library.opcheck(op.connected_components.default, (pred, nh, 0.5, True, 2, "affgraph_to_seg"))


def test_weights_are_constants():
    pred = torch.rand(1, 3, 3, 3, 4, requires_grad=True)
    seg = torch.randint(0, 3, (1, 3, 3, 4))
    w = seglosses.malis_weights(pred, seg, NN3)
    assert not w.requires_grad


def test_empty_inputs():
    w = seglosses.malis_weights(torch.rand(0, 3, 4, 4, 4), torch.zeros(0, 4, 4, 4, dtype=torch.int64), NN3)
    assert w.shape == (0, 3, 4, 4, 4)
    w = seglosses.malis_weights(torch.rand(2, 3, 0, 4, 4), torch.zeros(2, 0, 4, 4, dtype=torch.int64), NN3)
    assert w.shape == (2, 3, 0, 4, 4)
    pos, neg = seglosses.malis_weights(torch.rand(2, 2, 0, 5), torch.zeros(2, 0, 5, dtype=torch.int64), NN2,
                                       normalize=False)
    assert pos.shape == (2, 2, 0, 5) and neg.shape == (2, 2, 0, 5)


# --------------------------------------------------------------------------------------------------
# Utilities
# --------------------------------------------------------------------------------------------------
def ball_half_ok(nh, ndim, radius):
    nh = [tuple(int(v) for v in r) for r in nh.tolist()]
    assert all(len(r) == ndim for r in nh)
    assert (0,) * ndim not in nh
    assert len(set(nh)) == len(nh)
    s = set(nh)
    assert not any(tuple(-v for v in r) in s for r in nh)
    r = math.ceil(radius)
    ball = {o for o in np.ndindex(*([2 * r + 1] * ndim))}
    ball = {tuple(v - r for v in o) for o in ball}
    ball = {o for o in ball if any(o) and sum(v * v for v in o) <= radius**2}
    assert s | {tuple(-v for v in o) for o in s} == ball


def test_mknhood():
    nh3 = seglosses.mknhood3d()
    assert isinstance(nh3, torch.Tensor) and nh3.dtype == torch.int64
    assert nh3.tolist() == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert seglosses.mknhood3d(1).tolist() == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    nh2 = seglosses.mknhood2d()
    assert nh2.dtype == torch.int64
    assert nh2.tolist() == [[-1, 0], [0, -1]]
    ball_half_ok(seglosses.mknhood3d(2), 3, 2)
    ball_half_ok(seglosses.mknhood2d(3), 2, 3)


SEG_AFF_NHOODS = [NN3, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 2], [0, -2, 1], [1, -1, 0]]]


@pytest.mark.parametrize("nhood", SEG_AFF_NHOODS)
def test_seg_to_affgraph(nhood):
    rng = np.random.default_rng(4)
    seg = rng.integers(0, 3, size=(2, 3, 4, 5))
    ref = np.stack([seg_to_affgraph_ref(s, nhood) for s in seg])
    out = seglosses.seg_to_affgraph(torch.from_numpy(seg), nhood)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    np.testing.assert_array_equal(out.numpy(), ref)
    one = seglosses.seg_to_affgraph(torch.from_numpy(seg[1]), torch.tensor(nhood))
    assert one.shape == ref[1].shape
    np.testing.assert_array_equal(one.numpy(), ref[1])
    # background: no edge touching label 0 is ever 1
    bg = np.broadcast_to(seg[:, None] == 0, ref.shape)
    assert (out.numpy()[bg] == 0).all()


def test_seg_to_affgraph_2d():
    seg = torch.tensor([[1, 1, 0, 2], [1, 2, 2, 2], [0, 0, 2, 0]])
    out = seglosses.seg_to_affgraph(seg, NN2)
    np.testing.assert_array_equal(out.numpy(), seg_to_affgraph_ref(seg, NN2))
    # channel 1 (x - 1): row 0 -> [0 (invalid), 1 (1-1), 0 (0-1), 0 (2-0)]
    assert out[1, 0].tolist() == [0, 1, 0, 0]


# --------------------------------------------------------------------------------------------------
# Bad input (SPEC §6)
# --------------------------------------------------------------------------------------------------
def _raises(fn, *words, exc=(ValueError, TypeError, RuntimeError), prefix="malis_weights"):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert msg.lstrip().startswith(prefix), msg
    low = msg.lower()
    for w in words:
        assert str(w).lower() in low, f"{w!r} not in {msg!r}"
    return msg


GOOD_PRED = torch.rand(1, 3, 3, 4, 5)
GOOD_SEG = torch.randint(0, 3, (1, 3, 4, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_error_nonfinite_pred(bad):
    # A valid edge, and invalid edges (partner outside the volume, never sorted) in each channel:
    # all are checked, and the first bad value's flat index is reported, for every dtype.
    for where in [(1, 2, 3, 4), (1, 1, 0, 2), (0, 0, 2, 3), (2, 2, 3, 0)]:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            pred = GOOD_PRED.clone().to(dtype)
            pred[(0,) + where] = bad
            index = str(int(np.ravel_multi_index(where, pred.shape[1:])))
            _raises(lambda: seglosses.malis_weights(pred, GOOD_SEG, NN3), "pred_affs",
                    "nan" if bad != bad else "inf", "flat index " + index, exc=ValueError)
            _raises(lambda: seglosses.malis_weights(pred, GOOD_SEG, NN3, normalize=False), "pred_affs",
                    exc=ValueError)


def test_error_nhood_width():
    nhood = [[-1, 0], [0, -1], [-1, -1]]
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, GOOD_SEG, nhood), "nhood")


def test_error_channel_count():
    _raises(lambda: seglosses.malis_weights(GOOD_PRED[:, :2], GOOD_SEG, NN3), "nhood", "2", "3")
    nh4 = NN3 + [[0, 0, 2]]
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, GOOD_SEG, nh4), "nhood", "4", "3")


def test_error_seg_shape():
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, torch.zeros(1, 3, 4, 7, dtype=torch.int64), NN3),
            "gt_seg", "7")
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, torch.zeros(2, 3, 4, 5, dtype=torch.int64), NN3),
            "gt_seg", "2")


def test_error_mask_and_gt_affs_shape():
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, GOOD_SEG, NN3, mask=torch.ones(1, 3, 3, 4, 6)),
            "mask", "6")
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, GOOD_SEG, NN3, gt_affs=torch.ones(1, 3, 3, 9, 5)),
            "gt_affs", "9")


def test_error_negative_labels():
    seg = GOOD_SEG.clone()
    seg[0, 0, 0, 0] = -4
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, seg, NN3), "gt_seg", "-4")


def test_error_float_labels():
    _raises(lambda: seglosses.malis_weights(GOOD_PRED, GOOD_SEG.float(), NN3), "gt_seg", "float")


def test_error_wrong_rank():
    _raises(lambda: seglosses.malis_weights(torch.rand(1, 1, 3, 3, 4, 5), GOOD_SEG, NN3), "pred_affs")
    _raises(lambda: seglosses.malis_weights(torch.rand(5), GOOD_SEG, NN3), "pred_affs")


# --------------------------------------------------------------------------------------------------
# The sample table (malis_samples.py): the CUDA tests (test_malis_cuda.py) run the same samples
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", weights_samples("cpu"), ids=lambda s: s.name)
def test_weights_samples_match_oracle(s):
    pos, neg = s.counts()
    assert pos.dtype == neg.dtype == torch.int64 and pos.shape == neg.shape == s.pred.shape
    rpos, rneg = reference_counts(s)
    np.testing.assert_array_equal(pos.reshape(rpos.shape).numpy(), rpos, err_msg="pos")
    np.testing.assert_array_equal(neg.reshape(rneg.shape).numpy(), rneg, err_msg="neg")
    w = s.weights()
    assert w.dtype == torch.float32 and w.shape == s.pred.shape
    ref = reference_weights(s)
    np.testing.assert_allclose(w.reshape(ref.shape).numpy(), ref, rtol=1e-6, atol=1e-7)
    # the op, called as the Python side calls it, gives the same weights
    assert torch.equal(torch.ops.seglosses.malis_weights(*s.op_args()).reshape(w.shape), w)


def test_no_seg_means_components_of_gt_affs():
    # gt_seg=None: the labels are the connected components of gt_affs > 0.5 with singleton voxels as
    # background, computed in the same call (what MalisLoss does without gt_seg).
    pred, seg, nhood, _ = random_case(31)
    gt = seglosses.seg_to_affgraph(seg, nhood)
    labels = torch.from_numpy(np.stack([connected_components_ref(g, nhood, 0.5, singleton_background=True)
                                        for g in gt.numpy()]))
    for kw in ({}, {"constrained": False}, {"mask": torch.rand(pred.shape, generator=torch.Generator().manual_seed(1)) > 0.3}):
        assert torch.equal(weights(pred, None, nhood, gt_affs=gt, **kw), weights(pred, labels, nhood, gt_affs=gt, **kw))
        a, b = counts(pred, None, nhood, gt_affs=gt, **kw), counts(pred, labels, nhood, gt_affs=gt, **kw)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"^malis_weights: gt_seg is None, so gt_affs must be given"):
        seglosses.malis_weights(pred, None, nhood)
    flat = [o for r in nhood for o in r]
    with pytest.raises(ValueError, match=r"^malis_weights: without gt_seg the labels are the connected components"):
        torch.ops.seglosses.malis_weights(pred, None, None, None, flat, True, False, 0, "malis_weights", "pred_affs",
                                          "gt_seg")


def test_release_malis_workspace_frees_and_next_call_is_identical():
    torch.manual_seed(40)
    seg = torch.randint(1, 6, (1, 12, 12, 12))
    pred = torch.rand(1, 3, 12, 12, 12)
    nh = seglosses.mknhood3d(1)
    w1 = seglosses.malis_weights(pred, seg, nh)
    assert seglosses.release_malis_workspace() > 0
    assert seglosses.release_malis_workspace() == 0  # nothing left to free
    w2 = seglosses.malis_weights(pred, seg, nh)
    assert torch.equal(w1, w2)


def test_large_finite_double_predictions_are_accepted():
    """Finite float64 values beyond float32's range are finite: no 'must be finite' error."""
    pred = torch.tensor([[[1e300, 0.5, -1e300, 0.2]]], dtype=torch.float64)  # the last edge is invalid
    seg = torch.tensor([[1, 1, 2, 2]])
    pos, neg = seglosses.malis_weights(pred, seg, [[1]], normalize=False)
    assert pos.sum() == 2 and neg.sum() == 4
    with pytest.raises(ValueError, match="must be finite, got inf"):
        seglosses.malis_weights(torch.tensor([[[float("inf"), 0.5, 0.1, 0.2]]], dtype=torch.float64), seg, [[1]])
