"""Tests for the fused, one-hot-free Dice loss (SPEC sections 2 and 6).

Every value and gradient is compared with an independent reference: MONAI's DiceLoss (the
mapping of SPEC section 2, "Exactness") or the plain-autograd one-hot reference in
``dice_reference.py``. Tensors are tiny: the CPU here has two shared cores.
"""

import math

import pytest
import torch

import seglosses
import seglosses.functional as SF
from dice_reference import dice_loss_ref, dice_sums_ref
from dice_testing import assert_close, make_labels, num_classes, raises, upstream_like, value_and_grad

try:
    import monai.losses

    HAVE_MONAI = True
except ImportError:  # pragma: no cover - MONAI is installed in the dev venv
    HAVE_MONAI = False

requires_monai = pytest.mark.skipif(not HAVE_MONAI, reason="needs monai")

REDUCTIONS = ["none", "mean", "sum", "batch"]
LABEL_DTYPES = [torch.uint8, torch.int16, torch.int32, torch.int64]
HALF_DTYPES = [torch.float16, torch.bfloat16]
W3 = [0.2, 0.5, 1.3]


# ----------------------------------------------------------------------------- helpers






def call(api, x, y, **kw):
    """The implementation, through the functional or through the module."""
    if api == "module":
        return seglosses.DiceLoss(**kw)(x, y)
    return SF.dice_loss(x, y, **kw)


def ref_value_and_grad(x, y, **kw):
    """Reference loss (float64) and gradient (x's dtype) on exactly x's values."""
    return value_and_grad(lambda a, b: dice_loss_ref(a, b, **kw), x.detach().clone(), y)




def check_against_ref(x, y, api="functional", rtol=1e-9, grad_rtol=1e-8, **kw):
    loss, g = value_and_grad(lambda a, b: call(api, a, b, **kw), x, y)
    ref_loss, ref_g = ref_value_and_grad(x, y, **kw)
    assert loss.dtype == (torch.float32 if x.dtype in HALF_DTYPES else x.dtype)
    assert g.dtype == x.dtype and g.shape == x.shape
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    assert_close(loss, ref_loss, rtol=rtol, atol=rtol)
    assert_close(g, ref_g, rtol=grad_rtol, atol_frac=grad_rtol)
    return loss, g


# ----------------------------------------------------------------------------- MONAI


def monai_dice(x, y, weight=None, ignore_channel=-1, ignore_label=-1, smooth=0.0, p=1, reduction="mean"):
    """seglosses' loss computed by MONAI with the mapping of SPEC section 2 (p in {1, 2})."""
    assert p in (1, 2) and ignore_channel in (-1, 0)
    yl = y.long()
    if yl.dim() == x.dim() - 1:
        yl = yl.unsqueeze(1)
    include_background = ignore_channel != 0
    batch = reduction == "batch"
    if weight is None and reduction in ("mean", "sum", "batch"):
        mred = "sum" if reduction == "sum" else "mean"
    else:
        mred = "none"
    fn = monai.losses.DiceLoss(
        to_onehot_y=True, softmax=True, smooth_nr=smooth, smooth_dr=smooth, squared_pred=(p == 2),
        batch=batch, include_background=include_background, ignore_index=ignore_label, reduction=mred)
    out = fn(x, yl)
    kc = x.shape[1] - (0 if include_background else 1)
    if mred == "mean":
        return out
    if mred == "sum":
        return out / kc
    f = out.reshape(kc) if batch else out.reshape(x.shape[0], kc)
    if weight is None:
        per = f.mean(-1)
    else:
        w = torch.as_tensor(weight, dtype=f.dtype)
        per = (f * (w if include_background else w[1:])).sum(-1)
    return {"none": per, "mean": per.mean(), "sum": per.sum(), "batch": per}[reduction]


def _cases_monai():
    cases = []
    for r in REDUCTIONS:
        for p in (1, 2):
            for smooth in (0.0, 1.0):
                cases.append(((2, 3, 5, 6), torch.int64, None, dict(reduction=r, p=p, smooth=smooth)))
    cases += [
        ((2, 4, 5, 6), torch.int64, 255, dict(ignore_label=255, reduction="mean")),
        ((2, 4, 5, 6), torch.uint8, 255, dict(ignore_label=255, reduction="batch", p=2)),
        ((2, 4, 5, 6), torch.uint8, 255, dict(ignore_label=255, reduction="none", smooth=1.0)),
        ((2, 4, 5, 6), torch.int64, -100, dict(ignore_label=-100, reduction="none", smooth=1.0)),
        ((2, 4, 5, 6), torch.int64, -100, dict(ignore_label=-100, reduction="sum", p=2)),
        ((2, 4, 5, 6), torch.int64, -100, dict(ignore_label=-100, reduction="batch", smooth=1.0)),
        ((2, 3, 5, 6), torch.int64, None, dict(ignore_channel=0, reduction="mean")),
        ((2, 3, 5, 6), torch.int64, None, dict(ignore_channel=0, reduction="sum", p=2, smooth=1.0)),
        ((2, 3, 5, 6), torch.int64, None, dict(ignore_channel=0, reduction="batch")),
        ((2, 3, 5, 6), torch.int64, 255, dict(ignore_channel=0, reduction="none", ignore_label=255)),
    ]
    for r in REDUCTIONS:
        cases.append(((2, 3, 5, 6), torch.int64, None, dict(weight=W3, reduction=r)))
    cases += [
        ((2, 3, 5, 6), torch.int64, 255, dict(weight=W3, p=2, smooth=1.0, ignore_label=255, reduction="mean")),
        ((2, 3, 5, 6), torch.int64, None, dict(weight=W3, ignore_channel=0, reduction="none", p=2)),
        ((2, 3, 5, 6), torch.int64, None, dict(weight=W3, ignore_channel=0, reduction="batch", smooth=1.0)),
        # 3D and 1D spatial
        ((2, 3, 4, 5, 6), torch.int64, None, dict(reduction="mean")),
        ((2, 3, 4, 5, 6), torch.int64, 255, dict(reduction="batch", p=2, smooth=1.0, ignore_label=255)),
        ((1, 5, 3, 4, 5), torch.int32, None, dict(reduction="none", weight=[0.1, 2.0, 0.7, 1.0, 0.4], p=2)),
        ((3, 3, 20), torch.int64, None, dict(reduction="sum", smooth=1.0)),
    ]
    return cases


MONAI_CASES = _cases_monai()


@requires_monai
@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("shape,ydtype,ign,kw", MONAI_CASES,
                         ids=[f"{i}-{c[3]}-{len(c[0]) - 2}d" for i, c in enumerate(MONAI_CASES)])
def test_matches_monai(api, shape, ydtype, ign, kw):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    y = make_labels(shape[0], shape[1], shape[2:], ydtype, ignore_label=ign)
    # the functional gets [B, *] labels, the module [B, 1, *]
    y_impl = y if api == "functional" else y.unsqueeze(1)
    loss, g = value_and_grad(lambda a, b: call(api, a, b, **kw), x, y_impl)
    ref_loss, ref_g = value_and_grad(lambda a, b: monai_dice(a, b, **kw), x, y)
    assert loss.dtype == torch.float64 and loss.shape == ref_loss.shape
    # MONAI's squared_pred path takes the norm of its float32 one-hot target: float32 rounding
    rtol = 1e-9 if kw.get("p", 1) == 1 else 1e-6
    assert_close(loss, ref_loss, rtol=rtol, atol=1e-12)
    assert_close(g, ref_g, rtol=10 * rtol, atol_frac=rtol)


@requires_monai
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weighted_gradient_is_not_the_unweighted_one(reduction):
    """Non-uniform weights change the gradient per class (the replaced C++ code got this wrong)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    y = make_labels(2, 3, (6, 5))
    _, g_w = value_and_grad(lambda a, b: SF.dice_loss(a, b, weight=W3, reduction=reduction), x, y)
    _, ref_w = value_and_grad(lambda a, b: monai_dice(a, b, weight=W3, reduction=reduction), x, y)
    _, ref_u = value_and_grad(lambda a, b: monai_dice(a, b, weight=[1.0] * 3, reduction=reduction), x, y)
    assert not torch.allclose(ref_w, ref_u * sum(W3) / 3, rtol=1e-3)  # the check has teeth
    assert_close(g_w, ref_w, rtol=1e-8, atol_frac=1e-9)


@requires_monai
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2])
def test_binary_matches_monai_two_channel(reduction, p):
    """C == 1 is softmax over the logits (0, x): compare with MONAI on that 2-channel input."""
    torch.manual_seed(2)
    x = torch.randn(3, 1, 5, 7, dtype=torch.float64)
    y = make_labels(3, 2, (5, 7), torch.uint8, ignore_label=255)
    kw = dict(reduction=reduction, p=p, ignore_label=255, smooth=0.5, weight=[0.4, 1.6])
    loss, g = value_and_grad(lambda a, b: SF.dice_loss(a, b, **kw), x, y)
    ref_loss, ref_g = value_and_grad(
        lambda a, b: monai_dice(torch.cat([torch.zeros_like(a), a], dim=1), b, **kw), x, y)
    rtol = 1e-9 if p == 1 else 1e-6  # see test_matches_monai
    assert_close(loss, ref_loss, rtol=rtol, atol=1e-12)
    assert_close(g, ref_g, rtol=10 * rtol, atol_frac=rtol)


# ----------------------------------------------------------------------------- own reference


def _cases_ref():
    cases = []
    for r in REDUCTIONS:
        cases.append(((2, 3, 5, 6), dict(p=3, reduction=r)))
    cases += [
        ((2, 3, 5, 6), dict(p=3, smooth=1.0, ignore_label=255, weight=W3, reduction="mean")),
        ((2, 4, 4, 5), dict(p=4, ignore_channel=2, reduction="batch")),
        ((2, 3, 5, 6), dict(ignore_channel=2, reduction="none", p=2)),
        ((2, 3, 5, 6), dict(ignore_channel=1, weight=W3, reduction="sum")),
        # an ignore_channel outside [0, K) has no effect (in particular -2 is not "the second last")
        ((2, 3, 5, 6), dict(ignore_channel=-2, reduction="mean")),
        ((2, 3, 5, 6), dict(ignore_channel=3, weight=W3, reduction="none")),
        ((2, 3, 5, 6), dict(ignore_channel=-1, weight=W3, reduction="batch", p=2)),
    ]
    # binary: sigmoid, K = 2
    for r in REDUCTIONS:
        cases.append(((2, 1, 6, 7), dict(reduction=r)))
    cases += [
        ((2, 1, 6, 7), dict(p=2, smooth=1.0, reduction="mean", ignore_label=255)),
        ((2, 1, 6, 7), dict(p=3, weight=[0.3, 1.7], reduction="none")),
        ((2, 1, 6, 7), dict(ignore_channel=0, reduction="mean")),
        ((2, 1, 6, 7), dict(ignore_channel=1, reduction="sum", p=2)),
        ((2, 1, 6, 7), dict(ignore_channel=0, weight=[0.3, 1.7], reduction="batch", smooth=1.0)),
        ((2, 1, 6, 7), dict(ignore_channel=2, weight=[0.3, 1.7], reduction="mean")),
        # 1D / 3D spatial
        ((2, 3, 17), dict(reduction="mean", p=2)),
        ((2, 1, 17), dict(reduction="none", ignore_label=255)),
        ((2, 3, 3, 4, 5), dict(reduction="sum", p=3, smooth=1.0)),
        ((2, 1, 3, 4, 5), dict(reduction="batch", p=1, weight=[2.0, 0.5])),
    ]
    return cases


REF_CASES = _cases_ref()


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("shape,kw", REF_CASES, ids=[f"{i}-{c[1]}-C{c[0][1]}" for i, c in enumerate(REF_CASES)])
def test_matches_reference(api, shape, kw):
    torch.manual_seed(3)
    x = torch.randn(*shape, dtype=torch.float64)
    ign = kw.get("ignore_label")
    y = make_labels(shape[0], num_classes(shape[1]), shape[2:], ignore_label=ign)
    check_against_ref(x, y, api=api, **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("C", [1, 3])
def test_empty_foreground_class(reduction, smooth, C):
    torch.manual_seed(4)
    K = num_classes(C)
    x = torch.randn(2, C, 5, 6, dtype=torch.float64)
    y = make_labels(2, K, (5, 6))
    y[0][y[0] == K - 1] = 0          # sample 0 has no voxel of the last class
    y[:, 1][y[:, 1] == 0] = 255      # and some ignored voxels, but class 0 stays present
    if reduction == "batch":
        y[1][y[1] == K - 1] = 0      # absent from the whole batch
    check_against_ref(x, y, reduction=reduction, smooth=smooth, ignore_label=255)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("C", [1, 3])
def test_all_voxels_ignored(reduction, smooth, C):
    """No counted voxel: D == smooth; the loss is 0 and the gradient exactly 0."""
    torch.manual_seed(5)
    x = torch.randn(2, C, 4, 5, dtype=torch.float64)
    y = torch.full((2, 4, 5), 255, dtype=torch.uint8)
    loss, g = value_and_grad(lambda a, b: SF.dice_loss(a, b, ignore_label=255, smooth=smooth,
                                                       reduction=reduction, weight=[0.5, 2.0, 1.0][:num_classes(C)]),
                             x, y)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_one_sample_fully_ignored(reduction):
    torch.manual_seed(6)
    x = torch.randn(3, 3, 4, 5, dtype=torch.float64)
    y = make_labels(3, 3, (4, 5), ignore_label=-100)
    y[1] = -100
    loss, g = check_against_ref(x, y, ignore_label=-100, reduction=reduction)
    assert torch.equal(g[1], torch.zeros_like(g[1]))
    if reduction == "none":
        assert loss[1].item() == 0.0


@pytest.mark.parametrize("ydtype", LABEL_DTYPES)
@pytest.mark.parametrize("ignore_label", [-1, 255, -100])
@pytest.mark.parametrize("with_channel", [False, True])
def test_label_dtypes_and_shapes(ydtype, ignore_label, with_channel):
    if ydtype == torch.uint8 and ignore_label < 0:
        pytest.skip("uint8 cannot hold a negative ignore_label")
    torch.manual_seed(7)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float32)
    y = make_labels(2, 4, (5, 6), ydtype, ignore_label=None if ignore_label == -1 else ignore_label)
    if with_channel:
        y = y.unsqueeze(1)
    check_against_ref(x, y, ignore_label=ignore_label, p=2, rtol=1e-5, grad_rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("spatial", [(19,), (5, 6), (3, 4, 5)], ids=["1d", "2d", "3d"])
def test_float_dtypes_and_ranks(dtype, C, spatial):
    torch.manual_seed(8)
    x = torch.randn(2, C, *spatial, dtype=dtype)
    y = make_labels(2, num_classes(C), spatial, torch.int16, ignore_label=255)
    tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-9, 1e-8)
    check_against_ref(x, y, ignore_label=255, smooth=0.5, reduction="mean", rtol=tol[0], grad_rtol=tol[1])


def _layouts():
    """(name, x builder, y builder): non-contiguous x and y views."""
    def slice_x(shape, dtype):
        big = torch.randn(shape[0], shape[1] + 3, *shape[2:], dtype=dtype)
        return big[:, 1:1 + shape[1]].requires_grad_()

    def transposed_x(shape, dtype):
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=dtype)
        return t.transpose(-1, -2).requires_grad_()

    def channels_last_x(shape, dtype):
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        return torch.randn(*shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()

    def strided_x(shape, dtype):
        big = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype)
        return big[..., ::2].requires_grad_()

    def batch_first_x(shape, dtype):  # batch is the innermost dimension in memory
        t = torch.randn(*shape[1:], shape[0], dtype=dtype)
        return t.permute(-1, *range(len(shape) - 1)).requires_grad_()

    return {"slice": slice_x, "transpose": transposed_x, "channels_last": channels_last_x,
            "strided": strided_x, "batch_innermost": batch_first_x}


LAYOUTS = _layouts()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("y_layout", ["contiguous", "transposed", "strided"])
def test_non_contiguous_inputs(layout, spatial, C, y_layout):
    torch.manual_seed(9)
    shape = (2, C, *spatial)
    x = LAYOUTS[layout](shape, torch.float64)
    assert x.shape == shape
    assert not x.is_contiguous() or (layout == "channels_last" and C == 1)  # C == 1: same strides
    K = num_classes(C)
    if y_layout == "contiguous":
        y = make_labels(2, K, spatial, torch.int32, ignore_label=255)
    elif y_layout == "transposed":
        y = make_labels(2, K, (*spatial[:-2], spatial[-1], spatial[-2]), torch.int32, ignore_label=255)
        y = y.transpose(-1, -2)
    else:
        y = make_labels(2, K, (*spatial[:-1], 2 * spatial[-1]), torch.int32, ignore_label=255)[..., ::2]
    assert y.shape == (2, *spatial)
    check_against_ref(x, y, ignore_label=255, p=2, weight=[0.2, 0.5, 1.3][:K], reduction="none")


def test_y_with_channel_dim_non_contiguous():
    torch.manual_seed(10)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = make_labels(2, 3, (4, 5)).unsqueeze(1).expand(2, 2, 4, 5)[:, 1:]  # [B, 1, *] view
    check_against_ref(x, y, reduction="mean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("C", [1, 4])
def test_extreme_logits(dtype, C):
    """Large logit gaps (exp underflows to 0) stay finite and match the reference."""
    torch.manual_seed(31)
    x = torch.randn(2, C, 6, 7) * 40
    x[0, 0, 0, :3] = torch.tensor([1e4, -1e4, 0.0])
    if dtype == torch.float16:
        x[1, -1, 1, :2] = torch.tensor([6e4, -6e4])
    x = x.to(dtype)
    y = make_labels(2, num_classes(C), (6, 7), torch.int64, ignore_label=255)
    if dtype == torch.float64:
        rtol, grad_rtol = 1e-9, 1e-8
    elif dtype == torch.float32:
        rtol, grad_rtol = 1e-5, 1e-4
    else:
        rtol, grad_rtol = 1e-5, 2e-3
    for p in (1, 2):
        check_against_ref(x, y, ignore_label=255, p=p, reduction="none", rtol=rtol, grad_rtol=grad_rtol)


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("C", [1, 4])
def test_inputs_not_modified(api, C):
    torch.manual_seed(11)
    x = torch.randn(2, C, 5, 6, dtype=torch.float32, requires_grad=True)
    K = num_classes(C)
    y = make_labels(2, K, (5, 6), torch.uint8, ignore_label=255)
    weight = torch.linspace(0.5, 1.5, K)
    x0, y0, w0 = x.detach().clone(), y.clone(), weight.clone()
    loss = call(api, x, y, weight=weight, ignore_label=255, p=2, reduction="mean")
    loss.backward()
    loss2 = call(api, x, y.unsqueeze(1), weight=weight, ignore_label=255, reduction="batch")
    loss2.backward()
    assert torch.equal(x.detach(), x0) and torch.equal(y, y0) and torch.equal(weight, w0)


def test_module_is_nn_module_and_weight_tensor():
    torch.manual_seed(12)
    m = seglosses.DiceLoss(weight=torch.tensor(W3), ignore_label=255, reduction="sum")
    assert isinstance(m, torch.nn.Module)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    y = make_labels(2, 3, (5, 6), ignore_label=255)
    loss, g = value_and_grad(m, x, y)
    ref_loss, ref_g = ref_value_and_grad(x, y, weight=W3, ignore_label=255, reduction="sum")
    assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)  # the weights may be held in float32
    assert_close(g, ref_g, rtol=1e-6, atol_frac=1e-6)


def test_module_weight_survives_half_and_to():
    """Casting the module (as a mixed-precision model does) must not round the class weights."""
    w = [0.1234567891, 0.5, 1.3]
    m = seglosses.DiceLoss(weight=torch.tensor(w, dtype=torch.float64)).half().to(torch.bfloat16)
    assert m.weight == tuple(w)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    y = make_labels(2, 3, (5, 6))
    loss, _ = value_and_grad(m, x, y)
    ref_loss, _ = ref_value_and_grad(x, y, weight=w)
    assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)


# No voxel-sized temporaries (the dispatch-log test): test_dice_family.py, for every loss of the family.


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("C,p,reduction,extra", [
    (3, 1, "mean", {}),
    (3, 2, "none", dict(ignore_label=255)),
    (3, 2, "batch", dict(weight=W3, ignore_channel=0)),
    (3, 3, "sum", {}),
    (1, 1, "sum", {}),
    (1, 2, "batch", dict(ignore_label=255)),
    (1, 2, "none", dict(weight=[0.7, 1.4])),
])
def test_gradcheck(C, p, reduction, extra):
    torch.manual_seed(13)
    x = torch.randn(2, C, 2, 3, dtype=torch.float64, requires_grad=True)
    y = make_labels(2, num_classes(C), (2, 3), ignore_label=extra.get("ignore_label"), ignore_frac=0.3)
    fn = lambda a: SF.dice_loss(a, y, smooth=1.0, p=p, reduction=reduction, **extra)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("C", [1, 4])
def test_half_precision(dtype, reduction, C):
    torch.manual_seed(14)
    x = torch.randn(2, C, 6, 7, 8).to(dtype)
    y = make_labels(2, num_classes(C), (6, 7, 8), torch.uint8, ignore_label=255)
    kw = dict(reduction=reduction, ignore_label=255, p=2, smooth=1.0)
    loss, g = value_and_grad(lambda a, b: SF.dice_loss(a, b, **kw), x, y)
    assert loss.dtype == torch.float32
    assert g.dtype == dtype and g.shape == x.shape
    # the reference runs in float64 on exactly the same (rounded) input values
    ref_loss, ref_g = ref_value_and_grad(x.double(), y, **kw)
    assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    rtol = 2e-3 if dtype == torch.float16 else 1.6e-2
    assert_close(g, ref_g.to(dtype), rtol=rtol, atol_frac=rtol)


def test_fp16_gradient_survives_loss_scaling():
    """Under loss scaling the fp16 gradient is computed in float32, scaled, then cast: the
    unscaled values lie below fp16's normal range, the scaled ones must not be flushed."""
    torch.manual_seed(15)
    x = torch.randn(2, 3, 16, 48, 48).to(torch.float16).requires_grad_()
    y = make_labels(2, 3, (16, 48, 48), torch.int64)
    loss = SF.dice_loss(x, y)
    (loss * 65536).backward()
    xr = x.detach().double().requires_grad_()
    (dice_loss_ref(xr, y) * 65536).backward()
    expected = xr.grad.to(torch.float16)
    # the check has teeth: without scaling most gradients would be fp16 subnormals or zero
    assert (xr.grad.abs() / 65536 < 6.1e-5).float().mean() > 0.9
    nz, nz_ref = (x.grad != 0).sum().item(), (expected != 0).sum().item()
    assert nz >= 0.999 * nz_ref
    assert_close(x.grad, expected, rtol=2e-3, atol_frac=1e-3)


# Thread determinism, the ops themselves (values, opcheck, fake strides): test_dice_ops.py.
# CUDA: test_dice_cuda.py. The rest of the Dice family (DiceCE, Generalized Dice, Tversky,
# sigmoid, masks, DDP): test_dice_family.py, test_dice_ddp.py.


# ----------------------------------------------------------------------------- torch.compile

# inductor compiles C++ on this 2-core machine: one test uses it, the others aot_eager (which
# still traces the ops through their fake kernels and AOT autograd).


@pytest.mark.parametrize("C,backend", [(3, "inductor"), (1, "aot_eager")])
def test_torch_compile_fullgraph(C, backend):
    torch._dynamo.reset()
    torch.manual_seed(21)
    K = num_classes(C)
    x = torch.randn(2, C, 6, 7)
    y = make_labels(2, K, (6, 7), torch.uint8, ignore_label=255)
    w = [0.2, 0.5, 1.3][:K]

    def f(a, b):
        return SF.dice_loss(a, b, weight=w, ignore_label=255, smooth=1.0, p=2, reduction="mean") * 2.0

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    loss, g = value_and_grad(f, x, y)
    closs, cg = value_and_grad(compiled, x, y)
    assert_close(closs, loss, rtol=1e-6, atol=1e-7)
    assert_close(cg, g, rtol=1e-5, atol_frac=1e-6)
    ref_loss = 2.0 * dice_loss_ref(x, y, weight=w, ignore_label=255, smooth=1.0, p=2)
    assert_close(closs, ref_loss, rtol=1e-5, atol=1e-6)


def test_torch_compile_module_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(22)
    m = seglosses.DiceLoss(ignore_channel=0, reduction="batch")
    x = torch.randn(2, 3, 4, 5, 6)
    y = make_labels(2, 3, (4, 5, 6), torch.int64)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    closs, cg = value_and_grad(compiled, x, y)
    ref_loss, ref_g = ref_value_and_grad(x, y, ignore_channel=0, reduction="batch")
    assert_close(closs, ref_loss, rtol=1e-5, atol=1e-6)
    assert_close(cg, ref_g, rtol=1e-4, atol_frac=1e-5)


# ----------------------------------------------------------------------------- bad input




# DiceLoss may check its options when it is built, naming itself rather than the functional.
FN = {"functional": "dice_loss", "module": "(dice_loss|DiceLoss)"}


@pytest.fixture
def xy():
    torch.manual_seed(23)
    return torch.randn(2, 3, 4, 5), make_labels(2, 3, (4, 5))


@pytest.mark.parametrize("api", ["functional", "module"])
def test_error_x_rank(api):
    with raises(ValueError, "x", r"(\b2\b|5, 3)", fn=FN[api]):
        call(api, torch.randn(5, 3), torch.zeros(5, dtype=torch.int64))
    with raises(ValueError, "x", r"(\b6\b|1, 2, 2, 2, 2, 2)", fn=FN[api]):  # 4 spatial dims
        call(api, torch.randn(1, 2, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2, dtype=torch.int64))


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("yshape,value", [
    ((2, 4, 6), r"4, 6"),          # spatial mismatch
    ((3, 4, 5), r"3, 4, 5"),       # batch mismatch
    ((2, 2, 4, 5), r"2, 2, 4, 5"), # a channel dimension that is not 1
    ((2, 20), r"2, 20"),           # flattened
])
def test_error_y_shape(api, xy, yshape, value):
    x, _ = xy
    with raises(ValueError, "y", value, fn=FN[api]):
        call(api, x, torch.zeros(yshape, dtype=torch.int64))


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("ydtype", [torch.float32, torch.float64, torch.float16])
def test_error_float_labels(api, xy, ydtype):
    x, y = xy
    with raises(TypeError, "y", "float", fn=FN[api]):
        call(api, x, y.to(ydtype))


@pytest.mark.parametrize("api", ["functional", "module"])
def test_error_integer_logits(api, xy):
    x, y = xy
    with raises(TypeError, "x", "int", fn=FN[api]):
        call(api, (x * 10).to(torch.int32), y)


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("C,ydtype,bad,ign", [
    (3, torch.int64, 7, -1),
    (3, torch.int64, 3, 255),        # == K
    (3, torch.int64, -3, -1),        # negative, not the ignore_label
    (3, torch.int64, 255, -100),     # 255 is only special when it is the ignore_label
    (3, torch.uint8, 200, 255),
    (3, torch.int16, -100, 255),
    (1, torch.int32, 5, 255),        # binary: K = 2
    # an ignore_label the label dtype cannot hold ignores nothing (no wrap-around)
    (3, torch.uint8, 255, -1),
    (3, torch.uint8, 156, -100),
    (3, torch.int16, -1, 65535),
    (3, torch.int32, -1, 2**32 - 1),
])
def test_error_label_out_of_range(api, C, ydtype, bad, ign):
    torch.manual_seed(24)
    x = torch.randn(2, C, 4, 5)
    y = make_labels(2, num_classes(C), (4, 5), torch.int64)
    y[1, 2, 3] = bad
    with raises(ValueError, "y", rf"(?<![\d.]){bad}(?![\d.])", fn=FN[api]):
        call(api, x, y.to(ydtype), ignore_label=ign)


@pytest.mark.parametrize("api", ["functional", "module"])
def test_error_p(api, xy):
    x, y = xy
    with raises(ValueError, "p", r"\b0\b", fn=FN[api]):
        call(api, x, y, p=0)
    with raises(ValueError, "p", r"-2\b", fn=FN[api]):
        call(api, x, y, p=-2)
    with raises((ValueError, TypeError), "p", r"1\.5", fn=FN[api]):
        call(api, x, y, p=1.5)


@pytest.mark.parametrize("api", ["functional", "module"])
def test_error_reduction(api, xy):
    x, y = xy
    with raises(ValueError, "reduction", "foo", fn=FN[api]):
        call(api, x, y, reduction="foo")


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("C,weight,value", [
    (3, [1.0, 2.0], r"\b2\b"),
    (3, [1.0, 2.0, 3.0, 4.0], r"\b4\b"),
    (1, [1.0, 2.0, 3.0], r"\b3\b"),     # binary: K = 2
])
def test_error_weight_length(api, C, weight, value):
    torch.manual_seed(25)
    x = torch.randn(2, C, 4, 5)
    y = make_labels(2, num_classes(C), (4, 5))
    with raises(ValueError, "weight", value, fn=FN[api]):
        call(api, x, y, weight=weight)


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 1, 0), (0, 1, 3, 0, 2)],
                         ids=["empty-batch", "empty-volume", "empty-1d-binary", "empty-both-3d"])
def test_empty_inputs_give_zero_loss(api, reduction, shape):
    x = torch.randn(*shape, requires_grad=True)
    y = torch.zeros(shape[:1] + shape[2:], dtype=torch.int64)
    loss = call(api, x, y, reduction=reduction, smooth=0.0)
    expected_shape = (shape[0],) if reduction == "none" else ()
    assert loss.shape == expected_shape and loss.dtype == torch.float32
    assert torch.equal(loss.detach(), torch.zeros(expected_shape))
    loss.sum().backward()
    assert x.grad is None or (x.grad.shape == x.shape and not x.grad.any())
    loss1 = call(api, x, y, reduction=reduction, smooth=1.0)
    assert torch.equal(loss1.detach(), torch.zeros(expected_shape))


def test_double_backward_raises_instead_of_silently_missing():
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (1, 4, 4))
    (g,) = torch.autograd.grad(SF.dice_loss(x, y), x, create_graph=True)
    with pytest.raises(RuntimeError, match="dice_loss: second derivatives are not supported"):
        g.sum().backward()