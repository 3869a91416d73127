"""The fused Dice family beyond the plain softmax Dice (issue 13): DiceCELoss, GeneralizedDiceLoss,
TverskyLoss, the multi-label sigmoid activation and masks, on every loss.

References: MONAI's losses in float64 for every option that maps (values and gradients), and
the plain-autograd one-hot references of dice_reference.py for what MONAI lacks (p >= 3, masks
with every reduction, uint8 / bool targets, ignore_label in DiceCE / Generalized Dice).
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import seglosses
import seglosses.functional as SF
from dice_reference import (dice_ce_loss_ref, dice_loss_ref, generalized_dice_loss_ref, sums_ref,
                            tversky_loss_ref)
from dice_testing import assert_close, make_labels, raises, upstream_like, value_and_grad

monai_losses = pytest.importorskip("monai.losses")

REDUCTIONS = ["none", "mean", "sum", "batch"]
LOSSES = {  # functional, module, reference
    "dice": (SF.dice_loss, seglosses.DiceLoss, dice_loss_ref),
    "dice_ce": (SF.dice_ce_loss, seglosses.DiceCELoss, dice_ce_loss_ref),
    "generalized": (SF.generalized_dice_loss, seglosses.GeneralizedDiceLoss, generalized_dice_loss_ref),
    "tversky": (SF.tversky_loss, seglosses.TverskyLoss, tversky_loss_ref),
}


def onehot(y, K):
    """[B, *] labels -> [B, K, *] float64 one-hot (what MONAI wants without to_onehot_y)."""
    return F.one_hot(y.long(), K).movedim(-1, 1).double()


def check(fn, ref, x, y, rtol=1e-10, grad_rtol=1e-9):
    loss, g = value_and_grad(fn, x, y)
    ref_loss, ref_g = value_and_grad(ref, x, y)
    assert loss.shape == ref_loss.shape and loss.dtype == ref_loss.dtype
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    assert_close(loss, ref_loss, rtol=rtol, atol=rtol)
    assert_close(g, ref_g, rtol=grad_rtol, atol_frac=grad_rtol)
    return loss


def monai_reduce(out, reduction, batch_axes=2):
    """MONAI's "none" output [B, K, 1...] -> our per-sample class mean [B]."""
    return out.reshape(out.shape[0], -1).mean(1) if reduction == "none" else out


# ----------------------------------------------------------------------------- MONAI parity


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("p,smooth,weighted", [(1, 1e-5, False), (2, 0.5, False), (1, 0.0, True)])
def test_dice_ce_matches_monai(batch, include_background, p, smooth, weighted):
    """MONAI's DiceCELoss(weight=w): its Dice term weights the class mean (w_c / #classes in our
    terms) and its CE is torch's CrossEntropyLoss(weight=w)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    y = make_labels(2, 4, (5, 6)).unsqueeze(1)
    w = torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=torch.float64) if weighted else None
    m = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background, batch=batch,
                                smooth_nr=smooth, smooth_dr=smooth, squared_pred=p == 2, weight=w,
                                lambda_dice=0.7, lambda_ce=1.3)
    kc = 4 if include_background else 3
    ours = dict(smooth=smooth, p=p, ignore_channel=-1 if include_background else 0, lambda_dice=0.7, lambda_ce=1.3,
                reduction="batch" if batch else "mean", weight=None if w is None else (w / kc).tolist(),
                ce_weight=w)
    rtol = 1e-10 if p == 1 else 1e-6  # MONAI's squared_pred path takes norms of its float32 one-hot target
    check(lambda a, b: SF.dice_ce_loss(a, b, **ours), m, x, y, rtol=rtol, grad_rtol=10 * rtol)
    check(lambda a, b: seglosses.DiceCELoss(**ours)(a, b), m, x, y, rtol=rtol, grad_rtol=10 * rtol)


def test_dice_ce_sigmoid_one_channel_matches_monai():
    """One channel with sigmoid: MONAI's DiceCELoss uses BCE-with-logits with pos_weight=weight."""
    torch.manual_seed(1)
    x = torch.randn(3, 1, 6, 7, dtype=torch.float64)
    t = (torch.rand(3, 1, 6, 7) > 0.5).double()
    m = monai_losses.DiceCELoss(sigmoid=True, weight=torch.tensor([2.5], dtype=torch.float64), smooth_nr=0.1,
                                smooth_dr=0.1)
    check(lambda a, b: SF.dice_ce_loss(a, b.to(torch.uint8), activation="sigmoid", ce_weight=[2.5], smooth=0.1), m, x, t)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "batch"])
@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("include_background", [True, False])
def test_generalized_dice_matches_monai(reduction, w_type, include_background):
    """Sample 0 lacks class 2 (MONAI gives absent classes the largest weight of the present ones).
    MONAI computes the weights in float32, hence the tolerance."""
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    y = make_labels(3, 4, (5, 6))
    y[0][y[0] == 2] = 1
    batch = reduction == "batch"
    m = monai_losses.GeneralizedDiceLoss(to_onehot_y=True, softmax=True, include_background=include_background,
                                         batch=batch, w_type=w_type, smooth_nr=1e-5, smooth_dr=1e-5,
                                         reduction="none" if reduction == "none" else ("sum" if reduction == "sum" else "mean"))
    kw = dict(w_type=w_type, ignore_channel=-1 if include_background else 0, smooth=1e-5, reduction=reduction)
    check(lambda a, b: SF.generalized_dice_loss(a, b, **kw), lambda a, b: m(a, b.unsqueeze(1)).reshape(-1).squeeze(0)
          if reduction != "none" else m(a, b.unsqueeze(1)).reshape(-1), x, y, rtol=1e-7, grad_rtol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,beta", [(0.3, 0.7), (0.5, 0.5), (1.0, 0.0)])
@pytest.mark.parametrize("include_background", [True, False])
def test_tversky_matches_monai(reduction, alpha, beta, include_background):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    y = make_labels(2, 4, (5, 6), ignore_label=255)
    m = monai_losses.TverskyLoss(to_onehot_y=True, softmax=True, include_background=include_background,
                                 batch=reduction == "batch", alpha=alpha, beta=beta, smooth_nr=0.2, smooth_dr=0.2,
                                 ignore_index=255, reduction="none" if reduction in ("none", "sum") else "mean")
    K = 4 if include_background else 3

    def monai_ref(a, b):
        out = m(a, b.unsqueeze(1))
        if reduction == "none":
            return out.mean(1)
        return out.sum() / K if reduction == "sum" else out  # MONAI sums over B and classes

    kw = dict(alpha=alpha, beta=beta, ignore_channel=-1 if include_background else 0, ignore_label=255, smooth=0.2,
              reduction=reduction)
    check(lambda a, b: SF.tversky_loss(a, b, **kw), monai_ref, x, y)
    check(lambda a, b: seglosses.TverskyLoss(**kw)(a, b), monai_ref, x, y)


@pytest.mark.parametrize("reduction", ["mean", "batch"])
@pytest.mark.parametrize("p,soft", [(1, False), (2, False), (1, True), (2, True)])
def test_sigmoid_dice_matches_monai(reduction, p, soft):
    """Multi-label: MONAI's DiceLoss(sigmoid=True) on a target of x's shape (soft or binary)."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    t = torch.rand(2, 3, 5, 6, dtype=torch.float64) if soft else (torch.rand(2, 3, 5, 6) > 0.5).double()
    m = monai_losses.DiceLoss(sigmoid=True, squared_pred=p == 2, batch=reduction == "batch", smooth_nr=1e-5,
                              smooth_dr=1e-5)
    ours = lambda a, b: SF.dice_loss(a, b if soft else b.bool(), activation="sigmoid", p=p, smooth=1e-5,  # noqa: E731
                                     reduction=reduction)
    check(ours, m, x, t, rtol=1e-10 if p == 1 else 1e-9, grad_rtol=1e-8)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_masked_dice_matches_monai_masked_dice(activation):
    """MONAI's MaskedDiceLoss multiplies prediction and (one-hot) target by a one-channel mask:
    masked voxels count nowhere, as with our mask. (Per-channel masks: the reference tests.)"""
    torch.manual_seed(5)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    y = make_labels(2, 3, (6, 7))
    mask = (torch.rand(2, 1, 6, 7) > 0.3)
    if activation == "softmax":
        m = monai_losses.MaskedDiceLoss(softmax=True, smooth_nr=0.1, smooth_dr=0.1)
        target, ours_y = onehot(y, 3), y
    else:
        m = monai_losses.MaskedDiceLoss(sigmoid=True, smooth_nr=0.1, smooth_dr=0.1)
        target = (torch.rand(2, 3, 6, 7) > 0.5).double()
        ours_y = target.to(torch.uint8)
    check(lambda a, b: SF.dice_loss(a, ours_y, activation=activation, mask=mask, smooth=0.1),
          lambda a, b: m(a, target, mask=mask.double()), x, y)


# ----------------------------------------------------------------------------- own references

CASES = []
for _loss in LOSSES:
    for _act in ("softmax", "sigmoid"):
        for _red in REDUCTIONS:
            CASES.append((_loss, _act, _red))


def _inputs(activation, C=3, seed=6, tdtype=torch.uint8, mask_kind="label"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 5, 7, dtype=torch.float64, generator=g) * 2
    if activation == "softmax":
        K = 2 if C == 1 else C
        y = make_labels(2, K, (5, 7), torch.int32, ignore_label=255)
        mask = torch.rand(2, 1, 5, 7, generator=g) > 0.3
    else:
        y = (torch.rand(2, C, 5, 7, generator=g) > 0.5).to(tdtype) if tdtype in (torch.bool, torch.uint8) else \
            torch.rand(2, C, 5, 7, generator=g, dtype=torch.float64).to(tdtype)
        mask = torch.rand(2, C if mask_kind == "full" else 1, 5, 7, generator=g) > 0.3
    return x, y, mask


def _kw(loss, activation, reduction, p=3):
    kw = dict(reduction=reduction, smooth=0.25, ignore_channel=1, activation=activation)
    if activation == "softmax":
        kw["ignore_label"] = 255
    if loss in ("dice", "dice_ce", "generalized"):
        kw["p"] = p
    if loss == "dice_ce":
        kw.update(lambda_dice=0.6, lambda_ce=1.4, ce_weight=[0.5, 2.0, 1.0], weight=[0.2, 0.5, 1.3])
    if loss == "tversky":
        kw.update(alpha=0.3, beta=0.8, weight=[0.2, 0.5, 1.3])
    if loss == "generalized":
        kw["w_type"] = "simple"
    return kw


@pytest.mark.parametrize("loss,activation,reduction", CASES, ids=["-".join(c) for c in CASES])
def test_matches_reference_with_mask(loss, activation, reduction):
    """Every loss x activation x reduction, with a mask, p = 3 (beyond MONAI), class weights."""
    fn, module, ref = LOSSES[loss]
    x, y, mask = _inputs(activation)
    kw = _kw(loss, activation, reduction)
    check(lambda a, b: fn(a, b, mask=mask, **kw), lambda a, b: ref(a, b, mask=mask, **kw), x, y)
    mod_kw = {k: v for k, v in kw.items()}
    check(lambda a, b: module(**mod_kw)(a, b, mask), lambda a, b: ref(a, b, mask=mask, **kw), x, y)


@pytest.mark.parametrize("tdtype", [torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32,
                                    torch.float64])
@pytest.mark.parametrize("mask_kind", ["channel", "full"])
def test_sigmoid_target_dtypes_and_masks(tdtype, mask_kind):
    x, y, mask = _inputs("sigmoid", tdtype=tdtype, mask_kind=mask_kind, seed=7)
    kw = _kw("dice_ce", "sigmoid", "mean", p=2)
    check(lambda a, b: SF.dice_ce_loss(a, b, mask=mask, **kw), lambda a, b: dice_ce_loss_ref(a, b, mask=mask, **kw),
          x, y)


def test_sigmoid_target_is_read_in_place():
    """A uint8 / bool target is not copied to float: no op output of the target's size."""
    x = torch.randn(2, 3, 8, 9, 10, requires_grad=True)
    t = (torch.rand(2, 3, 8, 9, 10) > 0.5).to(torch.uint8)
    with _BigAllocations([x, t], t.numel() // 3) as log:
        SF.dice_loss(x, t, activation="sigmoid")
    assert log.big == []


def test_binary_label_map_cross_entropy_is_ce_on_zero_and_x():
    """C == 1 with a label map: the two classes are the logits (0, x) for the CE as for the Dice."""
    torch.manual_seed(8)
    x = torch.randn(3, 1, 5, 6, dtype=torch.float64)
    y = make_labels(3, 2, (5, 6), torch.uint8, ignore_label=255)
    kw = dict(ignore_label=255, ce_weight=[0.3, 1.7], lambda_dice=0.0)
    check(lambda a, b: SF.dice_ce_loss(a, b, **kw),
          lambda a, b: F.cross_entropy(torch.cat([torch.zeros_like(a), a], 1), b.long(), weight=torch.tensor(
              [0.3, 1.7], dtype=torch.float64), ignore_index=255), x, y)


def test_dice_ce_is_torch_ce_plus_our_dice():
    torch.manual_seed(9)
    x = torch.randn(2, 5, 4, 5, 6, dtype=torch.float64)
    y = make_labels(2, 5, (4, 5, 6), ignore_label=-100)
    w = torch.tensor([0.1, 1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    check(lambda a, b: SF.dice_ce_loss(a, b, ignore_label=-100, ce_weight=w, p=2, smooth=1.0),
          lambda a, b: F.cross_entropy(a, b, weight=w, ignore_index=-100) + SF.dice_loss(a, b, ignore_label=-100, p=2,
                                                                                          smooth=1.0), x, y)


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_everything_masked_or_ignored_gives_zero(loss, reduction):
    fn = LOSSES[loss][0]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 5))
    out = fn(x, y, mask=torch.zeros(2, 4, 5, dtype=torch.bool), reduction=reduction)
    out.sum().backward()
    assert torch.equal(out.detach(), torch.zeros_like(out)) and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("loss,activation,reduction", [
    ("dice", "softmax", "mean"), ("dice_ce", "softmax", "none"), ("generalized", "sigmoid", "batch"),
    ("tversky", "sigmoid", "sum"), ("dice_ce", "sigmoid", "batch"), ("generalized", "softmax", "none")])
def test_gradcheck(loss, activation, reduction):
    fn = LOSSES[loss][0]
    x, y, mask = _inputs(activation, seed=10)
    x = x[..., :3, :3].contiguous().requires_grad_()
    y, mask = y[..., :3, :3], mask[..., :3, :3]
    kw = _kw(loss, activation, reduction, p=2)
    assert torch.autograd.gradcheck(lambda a: fn(a, y, mask=mask, **kw), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss,activation", [("dice_ce", "softmax"), ("dice_ce", "sigmoid"),
                                             ("generalized", "softmax"), ("tversky", "sigmoid")])
def test_half_precision_with_loss_scaling(dtype, loss, activation):
    """Half logits: the loss is float32; the gradient is computed in float32 and multiplied by
    the (scaled) incoming gradient before the cast, so it is not flushed to zero."""
    fn = LOSSES[loss][0]
    torch.manual_seed(11)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 16, 32, 32, generator=g).to(dtype).requires_grad_()
    y = make_labels(2, 3, (16, 32, 32), torch.uint8) if activation == "softmax" else \
        (torch.rand(2, 3, 16, 32, 32, generator=g) > 0.5)
    kw = _kw(loss, activation, "mean", p=2)
    kw.pop("ignore_label", None)
    loss_value = fn(x, y, **kw)
    assert loss_value.dtype == torch.float32
    (loss_value * 65536).backward()
    xr = x.detach().double().requires_grad_()
    (LOSSES[loss][2](xr, y, **kw) * 65536).backward()
    expected = xr.grad.to(dtype)
    assert (xr.grad.abs() / 65536 < 6.1e-5).float().mean() > 0.5  # unscaled, most would underflow fp16
    nz, nz_ref = (x.grad != 0).sum().item(), (expected != 0).sum().item()
    assert nz >= 0.999 * nz_ref
    assert_close(x.grad, expected, rtol=2e-3 if dtype == torch.float16 else 1.6e-2, atol_frac=2e-3)


# ----------------------------------------------------------------------------- memory


class _BigAllocations(TorchDispatchMode):
    """Records every op output larger than ``limit`` elements that is not a view of ``known``."""

    def __init__(self, known, limit):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.limit = limit
        self.big = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.numel() > self.limit
                    and t.untyped_storage().data_ptr() not in self.known):
                self.big.append((str(func), tuple(t.shape)))
        return out


MEMORY_CASES = [
    ("dice", "softmax", 4, "none"), ("dice", "softmax", 1, "mean"), ("dice", "softmax", 3, "batch"),
    ("dice_ce", "softmax", 4, "mean"), ("dice_ce", "sigmoid", 3, "none"), ("generalized", "softmax", 3, "batch"),
    ("tversky", "sigmoid", 2, "sum"), ("dice", "sigmoid", 3, "mean"),
]


@pytest.mark.parametrize("loss,activation,C,reduction", MEMORY_CASES, ids=["-".join(map(str, c)) for c in MEMORY_CASES])
def test_no_voxel_sized_temporaries(loss, activation, C, reduction):
    """SPEC: forward keeps only x, y (mask) and O(B*K) sums; backward allocates only the gradient.
    No op output (one-hot, softmax, float copy of a target, [B, K, *] temporaries) larger than a
    label map, and nothing voxel-sized saved for backward but the inputs."""
    torch.manual_seed(32)
    fn = LOSSES[loss][0]
    x = torch.randn(2, C, 8, 9, 10, requires_grad=True)
    if activation == "softmax":
        y = make_labels(2, 2 if C == 1 else C, (8, 9, 10), torch.uint8, ignore_label=255).unsqueeze(1)
        mask = torch.rand(2, 1, 8, 9, 10) > 0.2
        extra = dict(ignore_label=255)
    else:
        y = (torch.rand(2, C, 8, 9, 10) > 0.5).to(torch.uint8)
        mask = torch.rand(2, 1, 8, 9, 10) > 0.2
        extra = {}
    limit = 2 * 8 * 9 * 10  # a label map
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with _BigAllocations([x, y, mask], limit) as fwd:
            out = fn(x, y, mask=mask, reduction=reduction, activation=activation, **extra)
    assert fwd.big == []
    known = fwd.known
    for t in saved:
        assert t.untyped_storage().data_ptr() in known or t.numel() <= 6 * 2 * C, tuple(t.shape)
    with _BigAllocations([x, y, mask], limit) as bwd:
        (g,) = torch.autograd.grad(out, x, upstream_like(out))
    assert len(bwd.big) <= 1 and all(shape == tuple(x.shape) for _, shape in bwd.big), bwd.big
    ref_g = value_and_grad(lambda a, b: LOSSES[loss][2](a, b, mask=mask, reduction=reduction, activation=activation,
                                                        **extra), x.detach(), y)[1]
    assert_close(g, ref_g, rtol=1e-4, atol_frac=1e-5)


# ----------------------------------------------------------------------------- compile, registry


@pytest.mark.parametrize("loss,activation", [("dice_ce", "softmax"), ("tversky", "sigmoid"), ("generalized", "softmax")])
def test_torch_compile_fullgraph(loss, activation):
    torch._dynamo.reset()
    fn, module, ref = LOSSES[loss]
    x, y, mask = _inputs(activation, seed=12)
    x = x.float()
    kw = _kw(loss, activation, "batch", p=2)
    m = module(**kw)
    compiled = torch.compile(lambda a, b, c: m(a, b, c), fullgraph=True, backend="aot_eager")
    closs, cg = value_and_grad(lambda a, b: compiled(a, b, mask), x, y)
    ref_loss, ref_g = value_and_grad(lambda a, b: ref(a, b, mask=mask, **kw), x, y)
    assert_close(closs, ref_loss.float(), rtol=1e-5, atol=1e-6)
    assert_close(cg, ref_g, rtol=1e-4, atol_frac=1e-5)


@pytest.mark.parametrize("name", ["DiceLoss", "DiceCELoss", "GeneralizedDiceLoss", "TverskyLoss"])
def test_combined_loss_routes_the_mask(name):
    """Registered by name; CombinedLoss passes mask= because forward takes it."""
    torch.manual_seed(13)
    pred = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    y = make_labels(2, 3, (6, 7))
    mask = torch.rand(2, 1, 6, 7) > 0.3
    cfg = [{"function": name, "weight": 0.5, "pred_slice": "2:5", "kwargs": {"smooth": 0.1}}]
    total = seglosses.CombinedLoss(cfg)(pred, y, mask=mask)
    expected = 0.5 * getattr(seglosses, name)(smooth=0.1)(pred[:, 2:5], y, mask)
    assert_close(total, expected, rtol=1e-12)
    unmasked = 0.5 * getattr(seglosses, name)(smooth=0.1)(pred[:, 2:5], y)
    assert not torch.allclose(total, unmasked)


# ----------------------------------------------------------------------------- bad input

ALL_FNS = [("dice_loss", SF.dice_loss), ("dice_ce_loss", SF.dice_ce_loss),
           ("generalized_dice_loss", SF.generalized_dice_loss), ("tversky_loss", SF.tversky_loss)]


@pytest.fixture
def xy():
    torch.manual_seed(23)
    return torch.randn(2, 4, 6, 7), make_labels(2, 4, (6, 7))


@pytest.mark.parametrize("name,fn", ALL_FNS)
def test_one_hot_float_target_is_explained(name, fn, xy):
    x, y = xy
    with pytest.raises(TypeError, match=rf"^{name}: y must hold integer class labels.*float32.*x's shape.*"
                                        r"pass integer labels, e\.g\. `y\.argmax\(1\)`"):
        fn(x, onehot(y, 4).float())
    with pytest.raises(TypeError, match=rf"^{name}: y must hold integer class labels.*`y\.long\(\)`"):
        fn(x, y.float())


@pytest.mark.parametrize("name,fn", ALL_FNS)
def test_x_shaped_integer_target_is_explained(name, fn, xy):
    """Not "expected (2, 4, 6, 7), got (2, 4, 6, 7)": say that it is a one-hot target."""
    x, y = xy
    with pytest.raises(ValueError, match=rf"^{name}: y has x's shape \(2, 4, 6, 7\).*one-hot.*`y\.argmax\(1\)`.*"
                                         r"activation='sigmoid'"):
        fn(x, onehot(y, 4).long())
    assert torch.isfinite(fn(x, onehot(y, 4).long(), activation="sigmoid"))  # the right shape for sigmoid


@pytest.mark.parametrize("name,fn", ALL_FNS)
@pytest.mark.parametrize("p,exc,value", [(2**31, ValueError, "2147483648"), (2**32 + 1, ValueError, "4294967297"),
                                         (2**31 - 1, ValueError, "2147483647"), (1025, ValueError, "1025"),
                                         (2**70, ValueError, str(2**70)), (True, TypeError, "True")])
def test_absurd_p_is_rejected(name, fn, xy, p, exc, value):
    """p used to be narrowed to int (p = 2**31 gave a wrong loss, 2**32 + 1 acted as 1) and the
    power took O(p) per voxel; now s^p is by squaring and p is bounded."""
    if name == "tversky_loss":
        pytest.skip("tversky_loss has no p")
    x, y = xy
    with raises(exc, "p", value, fn=name):
        fn(x, y, p=p)


def test_p_up_to_the_maximum_is_fast_and_right(xy):
    x, y = xy
    x = x.double()
    assert_close(SF.dice_loss(x, y, p=1024), dice_loss_ref(x, y, p=1024), rtol=1e-12)
    assert_close(SF.dice_loss(x, y, p=2**10 - 1, smooth=1.0), dice_loss_ref(x, y, p=2**10 - 1, smooth=1.0), rtol=1e-12)


@pytest.mark.parametrize("name,fn", ALL_FNS)
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70])
def test_ignore_label_beyond_int64(name, fn, xy, value):
    x, y = xy
    with raises(ValueError, "ignore_label", str(value), fn=name):
        fn(x, y, ignore_label=value)


@pytest.mark.parametrize("name,fn", [ALL_FNS[0], ALL_FNS[1], ALL_FNS[3]])
@pytest.mark.parametrize("weight,exc", [("abc", TypeError), ([1.0, "a", 2.0, 3.0], TypeError), ([[1.0] * 4], ValueError),
                                        ([1.0, -1.0, 1.0, 1.0], ValueError), ([1.0, float("nan"), 1.0, 1.0], ValueError),
                                        (3.0, TypeError)])
def test_bad_weight(name, fn, xy, weight, exc):
    x, y = xy
    with raises(exc, "weight", "", fn=name):
        fn(x, y, weight=weight)


@pytest.mark.parametrize("kw,exc,arg,value", [
    (dict(activation="relu"), ValueError, "activation", "relu"),
    (dict(activation="sigmoid", ignore_label=255), ValueError, "ignore_label", "255"),
    (dict(distributed=True), ValueError, "distributed", "mean"),
    (dict(distributed=True, reduction="batch"), RuntimeError, "distributed", "process group"),
    (dict(validate_labels="yes"), TypeError, "validate_labels", "yes"),
    (dict(smooth=float("inf")), ValueError, "smooth", "inf"),
    (dict(lambda_ce=-1.0), ValueError, "lambda_ce", "-1"),
    (dict(ce_weight=[1.0, 2.0]), ValueError, "ce_weight", "2"),
])
def test_bad_options(xy, kw, exc, arg, value):
    x, y = xy
    with raises(exc, arg, value, fn="dice_ce_loss"):
        SF.dice_ce_loss(x, y, **kw)


def test_bad_family_specific_options(xy):
    x, y = xy
    with raises(ValueError, "w_type", "cubic", fn="generalized_dice_loss"):
        SF.generalized_dice_loss(x, y, w_type="cubic")
    with raises(ValueError, "alpha", "-0.5", fn="tversky_loss"):
        SF.tversky_loss(x, y, alpha=-0.5)
    with raises(ValueError, "w_type", "cubic", fn="GeneralizedDiceLoss"):
        seglosses.GeneralizedDiceLoss(w_type="cubic")
    with raises(ValueError, "beta", "nan", fn="TverskyLoss"):
        seglosses.TverskyLoss(beta=float("nan"))


@pytest.mark.parametrize("mask_shape,activation", [((2, 4, 6, 7), "softmax"), ((2, 6), "softmax"),
                                                   ((2, 2, 6, 7), "sigmoid"), ((3, 1, 6, 7), "sigmoid")])
def test_bad_mask_shape(xy, mask_shape, activation):
    x, y = xy
    if activation == "sigmoid":
        y = torch.rand(x.shape)
    with raises(ValueError, "mask", ", ".join(map(str, mask_shape))):
        SF.dice_loss(x, y, mask=torch.ones(mask_shape, dtype=torch.bool), activation=activation)


def test_bad_sigmoid_target(xy):
    x, _ = xy
    with raises(ValueError, "y", r"2, 4, 6\)"):
        SF.dice_loss(x, torch.rand(2, 4, 6), activation="sigmoid")
    with raises(TypeError, "y", "complex64"):
        SF.dice_loss(x, torch.zeros(x.shape, dtype=torch.complex64), activation="sigmoid")
    t = torch.rand(x.shape)
    t[1, 2, 3, 4] = -0.5
    with raises(ValueError, "y", r"-0\.5"):
        SF.dice_loss(x, t, activation="sigmoid")
    with raises(ValueError, "y", r"target 2 outside"):
        SF.dice_loss(x, (t > 0.5).long() * 2, activation="sigmoid")


def test_inputs_not_modified(xy):
    x, y = xy
    x = x.requires_grad_()
    mask = torch.rand(2, 6, 7) > 0.5
    t = torch.rand(x.shape)
    snapshot = [x.detach().clone(), y.clone(), mask.clone(), t.clone()]
    SF.dice_ce_loss(x, y, mask=mask, ce_weight=[1.0, 2.0, 3.0, 4.0]).backward()
    SF.generalized_dice_loss(x, t, mask=mask.unsqueeze(1), activation="sigmoid").backward()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, [x.detach(), y, mask, t]))
