"""Correctness of seglosses.MalisLoss / functional.malis_loss (SPEC §3, §6).

Values are checked against the brute-force oracle in ``malis_reference.py`` (tiny volumes) and
against a direct computation from ``seglosses.malis_weights``.
"""

import numpy as np
import pytest
import torch

from malis_reference import (
    loss_seg_ref,
    malis_counts_ref_batch,
    malis_loss_ref,
    malis_weights_ref_batch,
    normalize_ref,
    reduce_ref,
    seg_to_affgraph_ref,
    to_numpy,
)
from malis_samples import loss_samples, reference_loss_and_grad

import seglosses  # noqa: E402  (a broken build must fail loudly, not skip)

POS3 = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # MalisLoss's default nhood (PyTorch Connectomics)
POS2 = [[1, 0], [0, 1]]
NN3 = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def make_case(seed, shape, nhood, batch=2, nlabels=3, bg=0.15):
    """Blocky instance segmentation, its GT affinities (float 0/1) and random logits."""
    rng = np.random.default_rng(seed)
    segs = []
    for _ in range(batch):
        nseeds = nlabels + 1
        seeds = np.stack([rng.integers(0, s, size=nseeds) for s in shape], 1)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
        cell = ((grid[..., None, :] - seeds) ** 2).sum(-1).argmin(-1)
        seg = (np.arange(nseeds) % nlabels + 1)[cell]
        seg[rng.random(shape) < bg] = 0
        segs.append(seg)
    seg = np.stack(segs).astype(np.int64)
    target = np.stack([seg_to_affgraph_ref(s, nhood) for s in seg])
    pred = rng.normal(0, 1.5, size=(batch, len(nhood)) + tuple(shape)).astype(np.float32)
    return torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(seg)


def oracle_loss(pred, target, nhood, reduction="sum", **kw):
    return reduce_ref(malis_loss_ref(pred, target, nhood, reduction="none", **kw), reduction)


def direct_loss(pred, target, nhood, mask=None, gt_seg=None, sigmoid=True, reduction="sum"):
    """MalisLoss from its definition, with the weights from seglosses.malis_weights."""
    a = torch.sigmoid(pred) if sigmoid else pred
    t = (target > 0.5).to(a.dtype)
    seg = torch.from_numpy(loss_seg_ref(target, nhood)) if gt_seg is None else gt_seg
    w = seglosses.malis_weights(a.detach(), seg, nhood, gt_affs=target > 0.5, mask=mask)
    return reduce_ref(w * (a - t) ** 2, reduction)


def close(x, ref, rtol=1e-5, atol=1e-7):
    np.testing.assert_allclose(to_numpy(x), to_numpy(ref), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("three_d", [False, True])
@pytest.mark.parametrize("use_gt_seg", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "none"])
def test_loss_matches_oracle(three_d, use_gt_seg, reduction):
    shape, nhood = ((3, 3, 4), POS3) if three_d else ((5, 6), POS2)
    pred, target, seg = make_case(1 + three_d, shape, nhood)
    gt_seg = seg if use_gt_seg else None
    loss = seglosses.MalisLoss(reduction=reduction)(pred, target, gt_seg=gt_seg)  # nhood=None -> POS
    ref = oracle_loss(pred, target, nhood, gt_seg=gt_seg, reduction=reduction)
    if reduction == "none":
        assert loss.shape == pred.shape
    else:
        assert loss.dim() == 0
    close(loss, ref)
    close(loss, direct_loss(pred, target, nhood, gt_seg=gt_seg, reduction=reduction).detach())


@pytest.mark.parametrize("constrained", [True, False])
def test_loss_explicit_nhood_long_range(constrained):
    nhood = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 2], [0, -2, 1]]
    pred, target, seg = make_case(5, (2, 4, 4), nhood)
    for gt_seg in (None, seg):
        loss = seglosses.MalisLoss(nhood, constrained=constrained)(pred, target, gt_seg=gt_seg)
        ref = malis_loss_ref(pred, target, nhood, gt_seg=gt_seg, constrained=constrained)
        close(loss, ref)


def test_sigmoid_false():
    pred, target, seg = make_case(6, (4, 6), POS2)
    prob = torch.sigmoid(pred)
    loss = seglosses.MalisLoss(sigmoid=False)(prob, target, gt_seg=seg)
    close(loss, malis_loss_ref(prob, target, POS2, gt_seg=seg, sigmoid=False))
    close(loss, seglosses.MalisLoss()(pred, target, gt_seg=seg), rtol=1e-5)


def test_functional_equals_module():
    pred, target, seg = make_case(7, (3, 3, 4), POS3)
    mask = (torch.rand(pred.shape, generator=torch.Generator().manual_seed(0)) < 0.8).float()
    for kw in ({}, {"mask": mask}, {"gt_seg": seg}, {"mask": mask, "gt_seg": seg}):
        for reduction in ("sum", "mean", "batchmean", "none"):
            m = seglosses.MalisLoss(POS3, reduction=reduction)(pred, target, **kw)
            f = seglosses.functional.malis_loss(pred, target, nhood=POS3, reduction=reduction, **kw)
            torch.testing.assert_close(m, f, rtol=0, atol=0)


def test_weights_carry_no_gradient():
    pred, target, seg = make_case(8, (3, 3, 4), POS3)
    for gt_seg in (None, seg):
        p = pred.clone().requires_grad_(True)
        loss = seglosses.MalisLoss()(p, target, gt_seg=gt_seg)
        loss.backward()
        a = torch.sigmoid(pred)
        seg_used = torch.from_numpy(loss_seg_ref(target, POS3)) if gt_seg is None else gt_seg
        w = seglosses.malis_weights(a, seg_used, POS3, gt_affs=target > 0.5)
        expect = 2 * w * (a - target) * a * (1 - a)
        torch.testing.assert_close(p.grad, expect, rtol=1e-5, atol=1e-8)
        assert p.grad.dtype == pred.dtype


def test_reductions_mean_over_elements_batchmean_over_samples():
    pred, target, seg = make_case(9, (3, 4, 4), POS3, batch=2)
    for gt_seg in (None, seg):
        batchmean = seglosses.MalisLoss(reduction="batchmean")(pred, target, gt_seg=gt_seg)
        mean = seglosses.MalisLoss(reduction="mean")(pred, target, gt_seg=gt_seg)
        total = seglosses.MalisLoss(reduction="sum")(pred, target, gt_seg=gt_seg)
        per = seglosses.MalisLoss(reduction="none")(pred, target, gt_seg=gt_seg)
        singles = [seglosses.MalisLoss()(pred[b:b + 1], target[b:b + 1],
                                         gt_seg=None if gt_seg is None else gt_seg[b:b + 1]) for b in range(2)]
        close(batchmean, (singles[0] + singles[1]) / 2)
        close(total, singles[0] + singles[1])
        # PyTorch Connectomics (and every torch loss): "mean" is the mean of the elementwise map
        close(mean, per.mean())
        close(mean, total / (2 * 3 * 3 * 4 * 4))


def test_seg_layout_b1_spatial():
    pred, target, seg = make_case(10, (3, 3, 4), POS3)
    a = seglosses.MalisLoss()(pred, target, gt_seg=seg)
    b = seglosses.MalisLoss()(pred, target, gt_seg=seg[:, None])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_mask_pytorch_connectomics_rule_matches_oracle(reduction):
    # The default mask rule: the ground truth constrains only edges inside the mask (SPEC §3).
    pred, target, seg = make_case(14, (5, 6), POS2)
    rng = np.random.default_rng(14)
    mask = torch.from_numpy((rng.random(tuple(pred.shape)) < 0.6).astype(np.float32))
    for gt_seg in (None, seg):
        got = seglosses.MalisLoss(reduction=reduction)(pred, target, mask=mask, gt_seg=gt_seg)
        close(got, malis_loss_ref(pred, target, POS2, mask=mask.numpy(), gt_seg=gt_seg, reduction=reduction))
        old = seglosses.MalisLoss(reduction=reduction, constrain_masked=True)(pred, target, mask=mask, gt_seg=gt_seg)
        close(old, malis_loss_ref(pred, target, POS2, mask=mask.numpy(), gt_seg=gt_seg, reduction=reduction,
                                  constrain_masked=True))


def test_constrain_masked_never_changes_topology():
    pred, target, seg = make_case(11, (4, 6), POS2)
    rng = np.random.default_rng(11)
    keep = rng.random(tuple(pred.shape)) < 0.6
    mask = torch.from_numpy(keep.astype(np.float32))
    loss = seglosses.MalisLoss(reduction="none", constrain_masked=True)
    for gt_seg in (None, seg):
        got = loss(pred, target, mask=mask, gt_seg=gt_seg)
        # From the oracle's definition: counts WITHOUT mask, zeroed where excluded, then normalised.
        a = torch.sigmoid(pred).double().numpy()
        t = target.numpy().astype(np.float64)
        s = loss_seg_ref(target, POS2) if gt_seg is None else seg.numpy()
        pos0, neg0 = malis_counts_ref_batch(torch.sigmoid(pred), s, POS2, gt_affs=target.numpy())
        w = np.stack([normalize_ref(np.where(k, p, 0), np.where(k, n, 0)) for k, p, n in zip(keep, pos0, neg0)])
        close(got, w * (a - t) ** 2, rtol=1e-5)
        assert (got.numpy()[~keep] == 0).all()
        # mask broadcast over channels
        mchan = mask[:, :1]
        got = loss(pred, target, mask=mchan, gt_seg=gt_seg)
        k2 = np.broadcast_to(keep[:, :1], keep.shape)
        w = np.stack([normalize_ref(np.where(k, p, 0), np.where(k, n, 0)) for k, p, n in zip(k2, pos0, neg0)])
        close(got, w * (a - t) ** 2, rtol=1e-5)
        # mask broadcast over the batch
        mbatch = mask[:1]
        got = loss(pred, target, mask=mbatch, gt_seg=gt_seg)
        k3 = np.broadcast_to(keep[:1], keep.shape)
        w = np.stack([normalize_ref(np.where(k, p, 0), np.where(k, n, 0)) for k, p, n in zip(k3, pos0, neg0)])
        close(got, w * (a - t) ** 2, rtol=1e-5)


def test_zero_offset_row_gets_zero_weight():
    nhood = [[0, 0, 0]] + POS3
    pred, target, seg = make_case(12, (3, 3, 4), nhood)
    target[:, 0] = (seg > 0).float()  # old code marks labelled voxels' self-edges as 1
    pred[:, 0] = -3.0                 # ... and a bad prediction there must still cost nothing
    p = pred.clone().requires_grad_(True)
    for gt_seg in (None, seg):
        per = seglosses.MalisLoss(nhood, reduction="none")(p, target, gt_seg=gt_seg)
        assert (per[:, 0] == 0).all()
        ref = seglosses.MalisLoss(POS3, reduction="none")(pred[:, 1:], target[:, 1:], gt_seg=gt_seg)
        close(per[:, 1:].detach(), ref)
        p.grad = None
        per.sum().backward()
        assert (p.grad[:, 0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("three_d", [False, True])
def test_pred_dtypes(dtype, three_d):
    shape, nhood = ((4, 5, 6), POS3) if three_d else ((8, 9), POS2)
    pred, target, seg = make_case(13, shape, nhood)
    pred = pred.to(dtype)
    a = torch.sigmoid(pred)
    w = seglosses.malis_weights(a, seg, nhood, gt_affs=target > 0.5)
    assert w.dtype == torch.float32 and w.shape == pred.shape
    p = pred.clone().requires_grad_(True)
    loss = seglosses.MalisLoss()(p, target.to(dtype), gt_seg=seg)
    assert torch.isfinite(loss).all() and loss.dim() == 0
    loss.backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad).all()
    if dtype in (torch.float32, torch.float64):  # half types may reorder near-ties: no value check
        ref = seglosses.MalisLoss()(pred.float(), target, gt_seg=seg)
        close(loss.float().detach(), ref.detach(), rtol=1e-5)
    loss2 = seglosses.MalisLoss()(pred, target.to(dtype))  # CC path
    assert torch.isfinite(loss2)


def test_inputs_not_modified():
    pred, target, seg = make_case(14, (3, 3, 4), POS3)
    mask = torch.ones_like(pred)
    before = [x.clone() for x in (pred, target, seg, mask)]
    p = pred.clone().requires_grad_(True)
    seglosses.MalisLoss(malis_crop_size=2)(p, target, mask=mask, gt_seg=seg).backward()
    seglosses.MalisLoss()(pred, target, mask=mask).sum()
    for x, y in zip((p.detach(), target, seg, mask), before):
        assert torch.equal(x, y)


# --------------------------------------------------------------------------------------------------
# crop
# --------------------------------------------------------------------------------------------------
def windows(shape, crop):
    import itertools
    crop = [min(c, s) for c, s in zip(crop, shape)]
    for origin in itertools.product(*[range(s - c + 1) for s, c in zip(shape, crop)]):
        yield tuple(slice(o, o + c) for o, c in zip(origin, crop))


def crop_refs(pred, target, nhood, gt_seg, crop, mask=None):
    out = []
    for win in windows(tuple(pred.shape[2:]), crop):
        sl = (slice(None), slice(None)) + win
        g = None if gt_seg is None else gt_seg[(slice(None),) + win]
        m = None if mask is None else mask[sl]
        out.append((win, malis_loss_ref(pred[sl], target[sl], nhood, mask=m, gt_seg=g)))
    return out


def match_window(loss, grad, refs, shape):
    """The windows whose oracle loss equals ``loss`` and outside which ``grad`` is exactly zero."""
    hits = []
    for win, ref in refs:
        if not np.isclose(float(loss), ref, rtol=1e-5, atol=1e-8):
            continue
        outside = torch.ones(shape, dtype=torch.bool)
        outside[(slice(None), slice(None)) + win] = False
        if (grad[outside] == 0).all():
            hits.append(win)
    return hits


@pytest.mark.parametrize("use_gt_seg", [False, True])
@pytest.mark.parametrize("crop,shape,nhood", [((3, 4), (6, 7), POS2), (2, (3, 4, 4), POS3), ((2, 100), (5, 6), POS2)])
def test_crop_is_one_window_and_reproducible(use_gt_seg, crop, shape, nhood):
    pred, target, seg = make_case(15, shape, nhood)
    gt_seg = seg if use_gt_seg else None
    crop_t = tuple(crop) if isinstance(crop, tuple) else (crop,) * len(shape)
    refs = crop_refs(pred, target, nhood, gt_seg, crop_t)
    loss_fn = seglosses.MalisLoss(malis_crop_size=crop)
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        p = pred.clone().requires_grad_(True)
        loss = loss_fn(p, target, gt_seg=gt_seg)
        loss.backward()
        hits = match_window(loss.detach(), p.grad, refs, pred.shape)
        assert hits, f"seed {seed}: loss {float(loss)} is not the loss of any crop window"
        seen.add(tuple((s.start, s.stop) for s in hits[0]))
        torch.manual_seed(seed)
        again = loss_fn(pred, target, gt_seg=gt_seg)
        torch.testing.assert_close(again, loss.detach(), rtol=0, atol=0)
    assert len(seen) > 1, "different seeds should give different crop origins"


def test_crop_larger_than_volume_is_clamped():
    pred, target, seg = make_case(16, (3, 4, 5), POS3)
    full = seglosses.MalisLoss()(pred, target)
    for crop in (100, (3, 4, 5), (7, 40, 5)):
        torch.manual_seed(0)
        close(seglosses.MalisLoss(malis_crop_size=crop)(pred, target), full, rtol=1e-6)
        close(seglosses.MalisLoss(malis_crop_size=crop)(pred, target, gt_seg=seg),
              seglosses.MalisLoss()(pred, target, gt_seg=seg), rtol=1e-6)


@pytest.mark.parametrize("mask_shape", ["full", "channel"])
@pytest.mark.parametrize("seg_b1", [False, True])
def test_crop_applies_to_mask_and_gt_seg(mask_shape, seg_b1):
    pred, target, seg = make_case(17, (5, 6), POS2, batch=2)
    mshape = pred.shape if mask_shape == "full" else (2, 1, 5, 6)
    mask = (torch.rand(mshape, generator=torch.Generator().manual_seed(3)) < 0.7).float()
    refs = crop_refs(pred, target, POS2, seg, (3, 3), mask=torch.broadcast_to(mask, pred.shape))
    for seed in range(4):
        torch.manual_seed(seed)
        p = pred.clone().requires_grad_(True)
        loss = seglosses.MalisLoss(malis_crop_size=3)(p, target, mask=mask, gt_seg=seg[:, None] if seg_b1 else seg)
        loss.backward()
        assert match_window(loss.detach(), p.grad, refs, pred.shape)


def u_shape_case():
    # 4 x 5 image, one instance shaped like a U: the base is the last row.
    #   1 0 0 0 1
    #   1 0 0 0 1
    #   1 0 0 0 1
    #   1 1 1 1 1
    seg = torch.tensor([[1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]])[None]
    target = torch.from_numpy(seg_to_affgraph_ref(seg[0], POS2))[None]
    pred = torch.from_numpy(np.random.default_rng(18).normal(0, 1.5, (1, 2, 4, 5)).astype(np.float32))
    return pred, target, seg


def test_crop_cut_u_stays_one_instance_with_gt_seg():
    # A (3, 5) crop starts at row 0 or row 1. From row 0 it drops the base: inside the crop the two
    # arms (3 voxels each) are not connected. With gt_seg they are still ONE label: constrained
    # MALIS gives no pair between them (they only meet through GT-0 edges) and there is no other
    # label, so there are no negative counts at all. Without gt_seg the connected components of
    # the cropped target make them two instances: 3 x 3 = 9 negative pairs between the arms.
    pred, target, seg = u_shape_case()
    top = (slice(None), slice(None), slice(0, 3), slice(0, 5))
    pc, tc, sc = pred[top], target[top], seg[:, 0:3]
    a = torch.sigmoid(pc)
    _, neg_gt = seglosses.malis_weights(a, sc, POS2, gt_affs=tc > 0.5, normalize=False)
    cc = torch.from_numpy(loss_seg_ref(tc, POS2))
    _, neg_cc = seglosses.malis_weights(a, cc, POS2, gt_affs=tc > 0.5, normalize=False)
    assert int(neg_gt.sum()) == 0
    assert int(neg_cc.sum()) == 9
    pos_ref, neg_ref = malis_counts_ref_batch(a, cc, POS2, gt_affs=tc.numpy())
    assert neg_ref.sum() == 9
    # loss difference = the negative half of the weights: sum neg/9 * (a - t)^2
    t = tc.numpy().astype(np.float64)
    neg_term = float((neg_ref / 9.0 * (a.double().numpy() - t) ** 2).sum())
    assert neg_term > 0
    loss_fn = seglosses.MalisLoss(malis_crop_size=(3, 5))
    seen = {0: 0, 1: 0}
    ref_top_gt = malis_loss_ref(pc, tc, POS2, gt_seg=sc)
    ref_top_cc = malis_loss_ref(pc, tc, POS2)
    ref_bottom = malis_loss_ref(pred[:, :, 1:4], target[:, :, 1:4], POS2, gt_seg=seg[:, 1:4])
    assert not np.isclose(ref_top_gt, ref_bottom, rtol=1e-3)
    for seed in range(24):
        torch.manual_seed(seed)
        l_gt = float(loss_fn(pred, target, gt_seg=seg))
        torch.manual_seed(seed)
        l_cc = float(loss_fn(pred, target))
        if np.isclose(l_gt, ref_top_gt, rtol=1e-5):
            seen[0] += 1
            assert np.isclose(l_cc, ref_top_cc, rtol=1e-5)
            assert np.isclose(l_cc - l_gt, neg_term, rtol=1e-4, atol=1e-7)
        else:
            assert np.isclose(l_gt, ref_bottom, rtol=1e-5)
            seen[1] += 1
            # rows 1..3 keep the base: the U is connected, both paths see one instance
            assert np.isclose(l_cc, l_gt, rtol=1e-5)
    assert seen[0] > 0 and seen[1] > 0


# --------------------------------------------------------------------------------------------------
# torch.compile, old API
# --------------------------------------------------------------------------------------------------
def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    pred, target, seg = make_case(19, (3, 4, 4), POS3)
    mod = seglosses.MalisLoss(POS3)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    for gt_seg in (seg, None):
        p1 = pred.clone().requires_grad_(True)
        p2 = pred.clone().requires_grad_(True)
        eager = mod(p1, target, gt_seg=gt_seg)
        comp = compiled(p2, target, gt_seg=gt_seg)
        torch.testing.assert_close(comp, eager, rtol=1e-6, atol=0)
        eager.backward()
        comp.backward()
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-6, atol=0)


def test_old_api_smoke():
    g = torch.Generator().manual_seed(0)
    seg2 = torch.randint(0, 3, (2, 1, 6, 7), generator=g)
    aff2 = torch.rand(2, 2, 6, 7, generator=g).requires_grad_(True)
    loss = seglosses.malis_loss2d(seg2, aff2)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert aff2.grad is not None and torch.isfinite(aff2.grad).all() and aff2.grad.abs().sum() > 0
    seg3 = torch.randint(0, 3, (1, 1, 4, 5, 6), generator=g)
    aff3 = torch.rand(1, 3, 4, 5, 6, generator=g).requires_grad_(True)
    loss = seglosses.malis_loss3d(seg3, aff3)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert aff3.grad is not None and torch.isfinite(aff3.grad).all() and aff3.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# empty input, bad input (SPEC §6)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 3, 4, 4, 4), (2, 3, 0, 4, 4), (0, 2, 5, 5), (1, 2, 5, 0)])
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_empty_gives_zero_loss(shape, reduction):
    pred = torch.zeros(shape, requires_grad=True)
    target = torch.zeros(shape)
    loss = seglosses.MalisLoss(reduction=reduction)(pred, target)
    assert loss.dim() == 0 and float(loss.detach()) == 0.0
    loss.backward()
    gt_seg = torch.zeros((shape[0],) + shape[2:], dtype=torch.int64)
    loss = seglosses.MalisLoss(reduction=reduction)(pred, target, gt_seg=gt_seg)
    assert float(loss.detach()) == 0.0
    per = seglosses.MalisLoss(reduction="none")(pred, target)
    assert per.shape == shape


def _raises(fn, *words, prefix="MalisLoss", exc=(ValueError, TypeError, RuntimeError)):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert msg.lstrip().startswith(prefix), msg
    for w in words:
        assert str(w).lower() in msg.lower(), f"{w!r} not in {msg!r}"
    return msg


P = torch.randn(1, 3, 3, 4, 5)
T = (torch.rand(1, 3, 3, 4, 5) > 0.5).float()
S = torch.randint(0, 3, (1, 3, 4, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_error_nonfinite_pred(bad):
    pred = P.clone()
    pred[0, 2, 1, 1, 1] = bad
    word = "nan" if bad != bad else "inf"
    if bad != bad:
        _raises(lambda: seglosses.MalisLoss()(pred, T), word, exc=ValueError, prefix="MalisLoss")
    # probabilities fed straight to MALIS
    prob = torch.sigmoid(P)
    prob[0, 2, 1, 1, 1] = bad
    _raises(lambda: seglosses.MalisLoss(sigmoid=False)(prob, T, gt_seg=S), word, exc=ValueError,
            prefix="MalisLoss")


@pytest.mark.parametrize("crop", [0, -3, (4, 0, 4), (2, -3, 2)])
def test_error_crop_size(crop):
    shown = "0" if 0 in (crop if isinstance(crop, tuple) else (crop,)) else "-3"
    _raises(lambda: seglosses.MalisLoss(malis_crop_size=crop)(P, T), "malis_crop_size", shown, exc=ValueError)


def test_error_reduction():
    _raises(lambda: seglosses.MalisLoss(reduction="bogus")(P, T), "reduction", "bogus", exc=ValueError)
    _raises(lambda: seglosses.functional.malis_loss(P, T, reduction="bogus"), "reduction", "bogus",
            exc=ValueError, prefix=("malis_loss", "MalisLoss"))


def test_error_shapes():
    _raises(lambda: seglosses.MalisLoss()(P, T[..., :4]), "target", "4")
    _raises(lambda: seglosses.MalisLoss()(P, T, gt_seg=torch.zeros(1, 3, 4, 7, dtype=torch.int64)), "gt_seg", "7")
    _raises(lambda: seglosses.MalisLoss()(P, T, mask=torch.ones(1, 3, 3, 4, 6)), "mask", "6")
    _raises(lambda: seglosses.MalisLoss([[1, 0, 0], [0, 1, 0]])(P, T), "nhood", "2")
    _raises(lambda: seglosses.MalisLoss([[1, 0], [0, 1], [1, 1]])(P, T), "nhood")
    _raises(lambda: seglosses.MalisLoss()(torch.randn(4, 5), torch.zeros(4, 5)), "pred")


def test_error_labels():
    neg = S.clone()
    neg[0, 1, 1, 1] = -2
    _raises(lambda: seglosses.MalisLoss()(P, T, gt_seg=neg), "gt_seg", "-2", prefix="MalisLoss")
    _raises(lambda: seglosses.MalisLoss()(P, T, gt_seg=S.float()), "gt_seg", "float",
            prefix="MalisLoss")


# --------------------------------------------------------------------------------------------------
# The sample table (malis_samples.py): the CUDA tests (test_malis_cuda.py) run the same samples
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", loss_samples("cpu"), ids=lambda s: s.name)
def test_loss_samples_match_oracle(s):
    loss, grad = s.value_and_grad()
    ref, ref_grad = reference_loss_and_grad(s)
    win = s.crop_window()
    if s.opts.get("reduction") == "none":
        expect = s.pred[(slice(None), slice(None)) + win].shape if win is not None else s.pred.shape
        assert loss.shape == expect
    else:
        assert loss.dim() == 0
    assert loss.dtype == torch.promote_types(s.pred.dtype, torch.float32) and grad.dtype == s.pred.dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(s.pred.dtype, 1e-5)
    close(loss, ref, rtol=tol, atol=1e-7)
    close(grad, ref_grad, rtol=tol, atol=tol * 1e-2)


def test_old_api_loss_does_not_overflow_in_half_precision():
    """Raw pair counts exceed float16's range; the legacy loss is computed in float32."""
    torch.manual_seed(41)
    seg = torch.randint(1, 30, (1, 1, 200, 200))
    aff = torch.rand(1, 2, 200, 200)
    ref = seglosses.malis_loss2d(seg, aff)
    half = seglosses.malis_loss2d(seg, aff.half().float().half())
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert torch.allclose(half, seglosses.malis_loss2d(seg, aff.half().float()), rtol=1e-6)
    assert ref > 65504  # would be inf in float16


# --------------------------------------------------------------------------------------------------
# hardening: torch.compile with a crop, non-finite predictions under mixed precision, bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph_with_crop(reduction):
    torch._dynamo.reset()
    pred, target, seg = make_case(21, (5, 6, 7), POS3)
    mod = seglosses.MalisLoss(POS3, malis_crop_size=(3, 4, 4), reduction=reduction)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    for gt_seg in (seg, None):
        p1 = pred.clone().requires_grad_(True)
        p2 = pred.clone().requires_grad_(True)
        torch.manual_seed(3)
        eager = mod(p1, target, gt_seg=gt_seg)
        torch.manual_seed(3)
        comp = compiled(p2, target, gt_seg=gt_seg)
        assert comp.shape == eager.shape == ((2, 3, 3, 4, 4) if reduction == "none" else ())
        torch.testing.assert_close(comp, eager, rtol=1e-6, atol=0)
        eager.sum().backward()
        comp.sum().backward()
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-6, atol=0)


def test_nonfinite_raise_or_propagate_with_a_grad_scaler_step():
    """A NaN in the network's output (an fp16 overflow upstream): with nonfinite="propagate" the
    loss and the gradients are NaN, GradScaler skips the step and lowers its scale, and the next
    clean step trains; with the default the step raises."""
    torch.manual_seed(0)
    seg = torch.randint(1, 4, (1, 4, 5, 6))
    target = seglosses.seg_to_affgraph(seg, POS3)
    model = torch.nn.Conv3d(1, 3, kernel_size=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    clean = torch.randn(1, 1, 4, 5, 6)
    overflowed = clean.clone()
    overflowed[0, 0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        seglosses.MalisLoss(POS3)(model(overflowed), target, gt_seg=seg)
    loss_fn = seglosses.MalisLoss(POS3, nonfinite="propagate")

    def step(x):
        opt.zero_grad()
        loss = loss_fn(model(x), target, gt_seg=seg)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = step(overflowed)
    assert torch.isnan(loss) and not torch.isfinite(model.weight.grad).all()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # step skipped
    assert scaler.get_scale() == 2.0 ** 7
    loss = step(clean)
    assert torch.isfinite(loss)
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # training goes on
    # on finite input both modes agree
    p = torch.randn(1, 3, 4, 5, 6)
    torch.testing.assert_close(loss_fn(p, target, gt_seg=seg), seglosses.MalisLoss(POS3)(p, target, gt_seg=seg),
                               rtol=0, atol=0)
    _raises(lambda: seglosses.MalisLoss(nonfinite="nan"), "nonfinite", "'nan'", exc=ValueError)


@pytest.mark.parametrize(
    "radius, exc, shown",
    [("2", TypeError, "'2'"), (None, TypeError, "None"), (True, TypeError, "True"),
     (float("inf"), ValueError, "inf"), (float("nan"), ValueError, "nan"), (1e6, ValueError, "1000000.0"),
     (0.5, ValueError, "0.5"), (17, ValueError, "17")],
)
def test_error_mknhood_radius(radius, exc, shown):
    for fn in (seglosses.mknhood2d, seglosses.mknhood3d):
        msg = _raises(lambda: fn(radius), "radius", shown, prefix=fn.__name__, exc=exc)
        if exc is ValueError:
            assert "16" in msg
    assert len(seglosses.mknhood3d(16)) == 8538 and len(seglosses.mknhood2d(16)) == 398


def test_error_nhood_empty_and_complex_inputs():
    _raises(lambda: seglosses.MalisLoss([]), "nhood", "at least one offset row", exc=ValueError)
    _raises(lambda: seglosses.malis_weights(P, S, []), "nhood", "at least one", prefix="malis_weights", exc=ValueError)
    cplx = T.to(torch.complex64)
    _raises(lambda: seglosses.malis_weights(torch.sigmoid(P), S, POS3, gt_affs=cplx), "gt_affs", "complex",
            prefix="malis_weights", exc=TypeError)
    _raises(lambda: seglosses.affgraph_to_seg(cplx, POS3), "affs", "complex", prefix="affgraph_to_seg", exc=TypeError)
    _raises(lambda: seglosses.MalisLoss()(P, cplx), "target", "complex", exc=TypeError)


def test_error_affgraph_to_seg_threshold():
    affs = torch.rand(1, 3, 3, 4, 5)
    for bad in ("abc", None, True, [0.5]):
        _raises(lambda: seglosses.affgraph_to_seg(affs, POS3, threshold=bad), "threshold", repr(bad),
                prefix="affgraph_to_seg", exc=TypeError)
    _raises(lambda: seglosses.affgraph_to_seg(affs, POS3, threshold=float("nan")), "threshold", "nan",
            prefix="affgraph_to_seg", exc=ValueError)
    assert seglosses.affgraph_to_seg(affs, POS3, threshold=float("-inf")).max() == 1  # every edge joins


def test_error_meta_tensors_with_real_pred():
    meta_seg = S.to("meta")
    _raises(lambda: seglosses.MalisLoss()(P, T, gt_seg=meta_seg), "gt_seg", "meta", exc=ValueError)
    _raises(lambda: seglosses.malis_weights(torch.sigmoid(P), meta_seg, POS3), "gt_seg", "meta",
            prefix="malis_weights", exc=ValueError)
    _raises(lambda: seglosses.MalisLoss()(P, T, mask=torch.ones(1, 1, 3, 4, 5, device="meta")), "mask", "meta",
            exc=ValueError)


def test_seg_to_affgraph_rejects_negative_labels_like_malis_weights():
    seg = S.clone()
    seg[0, 2, 1, 3] = -4
    _raises(lambda: seglosses.seg_to_affgraph(seg, POS3), "seg", "-4", prefix="seg_to_affgraph", exc=ValueError)
    _raises(lambda: seglosses.malis_weights(torch.sigmoid(P), seg, POS3), "gt_seg", "-4", prefix="malis_weights",
            exc=ValueError)
    # the unsigned types and numpy arrays give the same affinities as int64
    for labels in (S.to(torch.uint64), S.to(torch.uint16), S.numpy().astype(np.uint32)):
        torch.testing.assert_close(seglosses.seg_to_affgraph(labels, POS3), seglosses.seg_to_affgraph(S, POS3))
