"""PerChannelBCEWithLogitsLoss and WeightedBCEWithLogitsLoss against a direct PyTorch computation."""

import pytest
import torch
import torch.nn.functional as F

from seglosses.bce import PerChannelBCEWithLogitsLoss, WeightedBCEWithLogitsLoss


def _data(shape=(2, 3, 4, 5, 6), p=0.3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g, dtype=dtype)
    target = (torch.rand(shape, generator=g) < p).to(dtype)
    return pred, target


def _reference_per_channel(pred, target, mask=None, max_pos_weight=10.0, auto=True):
    """Loop over channels; count with Python ints; mean BCE over the channel's masked-in voxels."""
    total = pred.new_zeros(())
    for c in range(pred.shape[1]):
        x, t = pred[:, c], target[:, c]
        if mask is not None:
            m = torch.broadcast_to(mask, pred.shape)[:, c].bool()
            x, t = x[m], t[m]
        if x.numel() == 0:
            continue
        n_pos = int((t > 0.5).sum())
        n_neg = int((t <= 0.5).sum())
        pw = 1.0 if (not auto or n_pos == 0) else min(n_neg / n_pos, max_pos_weight)
        total = total + F.binary_cross_entropy_with_logits(
            x, t, pos_weight=torch.tensor(pw, dtype=pred.dtype), reduction="mean"
        )
    return total


# ---- PerChannelBCEWithLogitsLoss ---------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (3, 2, 7, 5), (4, 5, 9)])
def test_per_channel_matches_reference(shape):
    pred, target = _data(shape, p=0.3)
    pred.requires_grad_(True)
    got = PerChannelBCEWithLogitsLoss()(pred, target)
    (g_got,) = torch.autograd.grad(got, pred)
    ref = _reference_per_channel(pred, target)
    (g_ref,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g_got, g_ref)


def test_per_channel_pos_weight_values():
    pred, target = _data((2, 3, 4, 4, 4), p=0.25)
    loss = PerChannelBCEWithLogitsLoss(max_pos_weight=100.0)
    pw = loss.pos_weight(target)
    for c in range(3):
        n_pos = int(target[:, c].sum())
        assert pw[c].item() == pytest.approx((target[:, c].numel() - n_pos) / n_pos)


@pytest.mark.parametrize("mask_shape", ["channel", "single", "nochannel"])
def test_per_channel_with_mask(mask_shape):
    pred, target = _data((2, 3, 5, 6, 4), p=0.3, seed=1)
    g = torch.Generator().manual_seed(2)
    if mask_shape == "channel":
        mask = (torch.rand(2, 3, 5, 6, 4, generator=g) > 0.4).double()
        ref_mask = mask
    elif mask_shape == "single":
        mask = (torch.rand(2, 1, 5, 6, 4, generator=g) > 0.4).double()
        ref_mask = mask
    else:
        mask = (torch.rand(2, 5, 6, 4, generator=g) > 0.4).double()
        ref_mask = mask.unsqueeze(1)
    pred.requires_grad_(True)
    got = PerChannelBCEWithLogitsLoss()(pred, target, mask=mask)
    ref = _reference_per_channel(pred, target, ref_mask)
    torch.testing.assert_close(got, ref)
    (g_got,) = torch.autograd.grad(got, pred)
    assert torch.all(g_got[torch.broadcast_to(ref_mask, pred.shape) == 0] == 0)
    # The mask must change the result (the test would pass trivially otherwise).
    assert not torch.allclose(got, PerChannelBCEWithLogitsLoss()(pred, target))


def test_per_channel_mask_changes_counts():
    # Masked-out voxels are all positives: with the mask, the channel's pos_weight is #neg/#pos
    # over the masked-in voxels only.
    target = torch.zeros(1, 1, 10)
    target[0, 0, :2] = 1  # in the mask
    target[0, 0, 6:] = 1  # masked out
    mask = torch.ones(1, 1, 10)
    mask[0, 0, 6:] = 0
    loss = PerChannelBCEWithLogitsLoss(max_pos_weight=100.0)
    assert loss.pos_weight(target, mask).item() == pytest.approx(4 / 2)
    assert loss.pos_weight(target).item() == pytest.approx(4 / 6)


def test_per_channel_without_positives():
    pred, target = _data((2, 3, 4, 4, 4), p=0.3, seed=3)
    target[:, 1] = 0
    loss = PerChannelBCEWithLogitsLoss()
    assert loss.pos_weight(target)[1].item() == 1.0
    got = loss(pred, target)
    torch.testing.assert_close(got, _reference_per_channel(pred, target))
    plain = F.binary_cross_entropy_with_logits(pred[:, 1], target[:, 1])
    others = _reference_per_channel(pred[:, [0, 2]], target[:, [0, 2]])
    torch.testing.assert_close(got, plain + others)


def test_per_channel_clamps_at_max_pos_weight():
    pred, _ = _data((2, 2, 4, 4, 4), seed=4)
    target = torch.zeros_like(pred)
    target[0, 0, 0, 0, 0] = 1  # 1 positive, 127 negatives -> 127, clamped to 3
    target[:, 1, :2] = 1  # half positive -> 1, not clamped
    loss = PerChannelBCEWithLogitsLoss(max_pos_weight=3.0)
    torch.testing.assert_close(loss.pos_weight(target), torch.tensor([3.0, 1.0], dtype=torch.float64))
    got = loss(pred, target)
    ref = F.binary_cross_entropy_with_logits(
        pred[:, 0], target[:, 0], pos_weight=torch.tensor(3.0, dtype=pred.dtype)
    ) + F.binary_cross_entropy_with_logits(pred[:, 1], target[:, 1])
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got, _reference_per_channel(pred, target, max_pos_weight=3.0))


def test_per_channel_auto_pos_weight_off():
    pred, target = _data((2, 3, 4, 4), p=0.1, seed=5)
    got = PerChannelBCEWithLogitsLoss(auto_pos_weight=False)(pred, target)
    ref = sum(F.binary_cross_entropy_with_logits(pred[:, c], target[:, c]) for c in range(3))
    torch.testing.assert_close(got, ref)


def test_per_channel_reductions_sum_and_none():
    pred, target = _data((2, 3, 4, 4), p=0.2, seed=6)
    mask = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(7)) > 0.3).double()
    pw = PerChannelBCEWithLogitsLoss().pos_weight(target, mask).view(1, 3, 1, 1)
    ref_map = F.binary_cross_entropy_with_logits(pred, target, pos_weight=pw, reduction="none") * mask
    got_map = PerChannelBCEWithLogitsLoss(reduction="none")(pred, target, mask)
    assert got_map.shape == pred.shape
    torch.testing.assert_close(got_map, ref_map)
    torch.testing.assert_close(PerChannelBCEWithLogitsLoss(reduction="sum")(pred, target, mask), ref_map.sum())


def test_per_channel_soft_targets_and_no_input_change():
    pred, _ = _data((2, 2, 3, 3), seed=8)
    target = torch.rand(2, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    p0, t0 = pred.clone(), target.clone()
    got = PerChannelBCEWithLogitsLoss()(pred, target)
    torch.testing.assert_close(got, _reference_per_channel(pred, target))
    assert torch.equal(pred, p0) and torch.equal(target, t0)


def test_per_channel_half_input_gives_float32():
    pred, target = _data((2, 3, 4, 4), seed=10, dtype=torch.float32)
    got = PerChannelBCEWithLogitsLoss()(pred.half(), target.half())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _reference_per_channel(pred.half().float(), target), atol=1e-4, rtol=1e-4)


def test_per_channel_empty_batch_and_fully_masked():
    pred = torch.zeros(0, 3, 4, 4, requires_grad=True)
    out = PerChannelBCEWithLogitsLoss()(pred, torch.zeros(0, 3, 4, 4))
    assert out.item() == 0.0
    out.backward()
    pred, target = _data((1, 2, 4), seed=11)
    assert PerChannelBCEWithLogitsLoss()(pred, target, mask=torch.zeros(1, 1, 4)).item() == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reduction": "avg"}, r"PerChannelBCEWithLogitsLoss: reduction .*'avg'"),
        ({"max_pos_weight": 0.0}, r"PerChannelBCEWithLogitsLoss: max_pos_weight must be > 0, got 0.0"),
        ({"max_pos_weight": -2}, r"PerChannelBCEWithLogitsLoss: max_pos_weight must be > 0, got -2"),
    ],
)
def test_per_channel_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerChannelBCEWithLogitsLoss(**kwargs)


def test_per_channel_bad_inputs():
    loss = PerChannelBCEWithLogitsLoss()
    with pytest.raises(ValueError, match=r"PerChannelBCEWithLogitsLoss: pred and target .*\[2, 3, 4\].*\[2, 2, 4\]"):
        loss(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match=r"PerChannelBCEWithLogitsLoss: mask of shape \[2, 5\]"):
        loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match=r"PerChannelBCEWithLogitsLoss: pred must be floating point.*int64"):
        loss(torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match=r"PerChannelBCEWithLogitsLoss: max_pos_weight must be a number, got 'x'"):
        PerChannelBCEWithLogitsLoss(max_pos_weight="x")


# ---- WeightedBCEWithLogitsLoss -----------------------------------------------------------------
def test_weighted_no_weight_is_plain_bce():
    pred, target = _data((2, 3, 4, 4), seed=12)
    torch.testing.assert_close(
        WeightedBCEWithLogitsLoss()(pred, target), F.binary_cross_entropy_with_logits(pred, target)
    )


def test_weighted_with_weight_and_mask():
    pred, target = _data((2, 3, 4, 5), seed=13)
    g = torch.Generator().manual_seed(14)
    weight = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64) * 3
    mask = (torch.rand(2, 3, 4, 5, generator=g) > 0.5).double()
    pred.requires_grad_(True)
    got = WeightedBCEWithLogitsLoss()(pred, target, weight=weight, mask=mask)
    ref = F.binary_cross_entropy_with_logits(pred, target, weight=weight * mask, reduction="sum") / mask.sum()
    torch.testing.assert_close(got, ref)
    g_got, g_ref = torch.autograd.grad(got, pred)[0], torch.autograd.grad(ref, pred)[0]
    torch.testing.assert_close(g_got, g_ref)
    # weight alone: plain mean of weighted elements
    torch.testing.assert_close(
        WeightedBCEWithLogitsLoss()(pred, target, weight),
        F.binary_cross_entropy_with_logits(pred, target, weight=weight),
    )
    # a weight map without the channel dim reads as [B, 1, *]
    torch.testing.assert_close(
        WeightedBCEWithLogitsLoss()(pred, target, weight[:, 0]),
        F.binary_cross_entropy_with_logits(pred, target, weight=weight),
    )


def test_weighted_reductions():
    pred, target = _data((2, 2, 3, 3), seed=15)
    weight = torch.linspace(0.5, 2.0, 9, dtype=torch.float64).view(1, 1, 3, 3)
    ref_map = F.binary_cross_entropy_with_logits(pred, target, weight=weight, reduction="none")
    torch.testing.assert_close(WeightedBCEWithLogitsLoss("none")(pred, target, weight), ref_map)
    torch.testing.assert_close(WeightedBCEWithLogitsLoss("sum")(pred, target, weight), ref_map.sum())
    torch.testing.assert_close(WeightedBCEWithLogitsLoss("mean")(pred, target, weight), ref_map.mean())


def test_weighted_fully_masked_and_empty():
    pred, target = _data((2, 2, 3), seed=16)
    assert WeightedBCEWithLogitsLoss()(pred, target, mask=torch.zeros(2, 1, 3)).item() == 0.0
    assert WeightedBCEWithLogitsLoss()(torch.zeros(0, 2, 3), torch.zeros(0, 2, 3)).item() == 0.0


def test_weighted_bad_inputs():
    with pytest.raises(ValueError, match=r"WeightedBCEWithLogitsLoss: reduction .*'batch'"):
        WeightedBCEWithLogitsLoss(reduction="batch")
    loss = WeightedBCEWithLogitsLoss()
    with pytest.raises(ValueError, match=r"WeightedBCEWithLogitsLoss: pred and target .*\[2, 3\].*\[3, 2\]"):
        loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"WeightedBCEWithLogitsLoss: weight of shape \[4\]"):
        loss(torch.zeros(2, 3), torch.zeros(2, 3), weight=torch.ones(4))


# ---- non-finite masks and weight maps, devices --------------------------------------------------
@pytest.mark.parametrize("where", [(0, 1, 2, 3), (1, 0, 0, 0)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_mask_is_an_error(where, bad):
    # Before: one NaN gave loss 0.0 with an all-NaN gradient, or dropped its channel silently.
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    t = (torch.rand(2, 3, 4, 5) > 0.5).float()
    m = torch.ones(2, 3, 4, 5)
    m[where] = bad
    shown = "nan" if bad != bad else "inf"
    with pytest.raises(ValueError, match=rf"^PerChannelBCEWithLogitsLoss: mask must be finite, got {shown} at index "
                                         rf"\({', '.join(map(str, where))}\)"):
        PerChannelBCEWithLogitsLoss()(x, t, mask=m)
    with pytest.raises(ValueError, match=r"^PerChannelBCEWithLogitsLoss: mask must be finite"):
        PerChannelBCEWithLogitsLoss().pos_weight(t, m)
    with pytest.raises(ValueError, match=r"^WeightedBCEWithLogitsLoss: weight must be finite"):
        WeightedBCEWithLogitsLoss()(x, t, weight=m)
    with pytest.raises(ValueError, match=r"^WeightedBCEWithLogitsLoss: mask must be finite"):
        WeightedBCEWithLogitsLoss()(x, t, mask=m)
    assert x.grad is None


def test_device_and_meta_errors():
    x = torch.randn(2, 3, 4, 5)
    t = (torch.rand(2, 3, 4, 5) > 0.5).float()
    with pytest.raises(ValueError, match=r"^PerChannelBCEWithLogitsLoss: target must be on pred's device meta, got cpu"):
        PerChannelBCEWithLogitsLoss()(x.to("meta"), t)
    with pytest.raises(ValueError, match=r"^WeightedBCEWithLogitsLoss: target must be on pred's device meta, got cpu"):
        WeightedBCEWithLogitsLoss()(x.to("meta"), t)
    with pytest.raises(ValueError, match=r"^PerChannelBCEWithLogitsLoss: mask is a meta tensor"):
        PerChannelBCEWithLogitsLoss()(x, t, mask=torch.ones(2, 1, 4, 5, device="meta"))
    with pytest.raises(TypeError, match=r"^PerChannelBCEWithLogitsLoss: target must hold real numbers"):
        PerChannelBCEWithLogitsLoss()(x, t.to(torch.complex64))
    # meta in, meta out: shape propagation still works
    assert PerChannelBCEWithLogitsLoss()(x.to("meta"), t.to("meta")).device.type == "meta"
