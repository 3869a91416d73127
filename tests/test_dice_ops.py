"""The Dice-family ops themselves (``torch.ops.seglosses.dice_*``), driven by the sample-inputs
table of ``dice_samples.py``: values and vector-Jacobian products against the float64 one-hot
reference, opcheck, the fake kernels' strides, label validation and where the host may wait for
the device. The CUDA side of the same table is in test_dice_cuda.py."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import seglosses
import seglosses._dice as D
import seglosses.functional as SF
from dice_reference import dice_loss_ref, sums_ref
from dice_samples import sample_inputs

SAMPLES = sample_inputs("cpu")
IDS = [s.name for s in SAMPLES]
LABEL_ROWS = ["I", "P", "T", "L"]
SIGMOID_ROWS = ["I", "P", "T", "Lpos", "Lneg", "N"]


def reference_table(s, x=None, zero_unused=True):
    """The op's table from the float64 reference, [B, rows, K]; x defaults to the sample's.
    zero_unused: the cross-entropy rows are 0 when the sample does not ask for them (the forward
    op); the backward op applies whatever coefficients it gets."""
    x = s.x if x is None else x
    r = sums_ref(x, s.y, s.ignore_label, s.p, s.mask, "softmax" if s.op == "dice_sums" else "sigmoid")
    names = LABEL_ROWS if s.op == "dice_sums" else SIGMOID_ROWS
    table = torch.stack([r[n] for n in names], 1)
    if zero_unused and not s.with_ce:
        table[:, 3:5] = 0
    return table


def tolerance(dtype):
    return 1e-12 if dtype == torch.float64 else 2e-6


def grad_tolerance(dtype):
    return {torch.float64: 1e-11, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def random_grad(s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((s.x.shape[0], s.rows, s.num_classes), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("s", SAMPLES, ids=IDS)
def test_sums_match_reference(s):
    out = s.sums()
    ref = reference_table(s)
    assert out.dtype == torch.float64 and out.shape == ref.shape
    assert torch.isfinite(out).all()  # a stray read of the NaN padding would show here
    if ref.numel() == 0:
        return
    scale = ref.abs().amax(dim=(0, 2), keepdim=True).clamp_min(1.0)  # per row
    torch.testing.assert_close(out / scale, ref / scale, rtol=0, atol=tolerance(s.x.dtype))


@pytest.mark.parametrize("s", SAMPLES, ids=IDS)
def test_backward_matches_reference(s):
    G = random_grad(s)
    g = s.backward(G)
    xr = s.x.detach().clone().requires_grad_()
    ref = reference_table(s, xr, zero_unused=False)
    (ref * G).sum().backward()
    assert g.dtype == s.x.dtype and g.shape == s.x.shape
    assert torch.isfinite(g).all()
    expected = xr.grad.double()
    tol = grad_tolerance(s.x.dtype) * max(expected.abs().max().item() if expected.numel() else 0.0, 1e-30)
    torch.testing.assert_close(g.double(), expected, rtol=grad_tolerance(s.x.dtype), atol=tol)


def _opcheck_samples():
    """opcheck is slow: one sample per (op, dtype), plus a strided layout, an expanded one and an
    empty batch."""
    picked, seen = [], set()
    for s in SAMPLES:
        key = (s.op, s.x.dtype)
        if (key not in seen and s.x.numel() <= 4000) or s.name in ("layout-slice", "sigmoid-layout-expanded",
                                                                   "empty-B", "bad-labels"):
            seen.add(key)
            picked.append(s)
    return picked


@pytest.mark.parametrize("s", _opcheck_samples(), ids=lambda s: s.name)
def test_opcheck(s):
    validate = "bad" not in s.name
    torch.library.opcheck(getattr(torch.ops.seglosses, s.op).default, s.sums_args(validate=validate))
    bw = torch.ops.seglosses.dice_backward if s.op == "dice_sums" else torch.ops.seglosses.dice_sigmoid_backward
    torch.library.opcheck(bw.default, s.backward_args(random_grad(s).float()))


@pytest.mark.parametrize("s", SAMPLES, ids=IDS)
def test_fake_kernels_predict_shapes_and_strides(s):
    from torch._subclasses.fake_tensor import FakeTensorMode

    G = random_grad(s)
    real_sums, real_grad = s.sums(), s.backward(G)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        f = lambda t: None if t is None else mode.from_tensor(t)  # noqa: E731
        fs = type(s)(**{**s.__dict__, "x": f(s.x), "y": f(s.y), "mask": f(s.mask)})
        fake_sums, fake_grad = fs.sums(), fs.backward(f(G))
    for real, fake in ((real_sums, fake_sums), (real_grad, fake_grad)):
        assert fake.shape == real.shape and fake.dtype == real.dtype and fake.stride() == real.stride()


def test_results_are_deterministic_and_thread_independent():
    torch.manual_seed(16)
    x = torch.randn(2, 5, 30, 40, 41)
    y = torch.randint(0, 5, (2, 30, 40, 41))
    t = (torch.rand(2, 5, 30, 40, 41) > 0.5)
    G = torch.randn(2, 4, 5, dtype=torch.float64)
    n0 = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append((torch.ops.seglosses.dice_sums(x, y, None, -1, 2, True, True, "t"),
                         torch.ops.seglosses.dice_backward(x, y, None, G, -1, 2),
                         torch.ops.seglosses.dice_sigmoid_sums(x, t, None, 2, True, True, "t")))
    finally:
        torch.set_num_threads(n0)
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0]))


# ----------------------------------------------------------------------------- validation


def test_bad_labels_count_nowhere_without_validation():
    """With validation off a label outside [0, K) is treated like ignore_label: the same sums,
    the same (zero) gradient there."""
    s = next(s for s in SAMPLES if s.name == "bad-labels")
    K = s.num_classes
    y_ignored = torch.where((s.y.long() < 0) | (s.y.long() >= K), torch.full_like(s.y, 99), s.y)
    ref = torch.ops.seglosses.dice_sums(s.x, y_ignored, None, 99, s.p, True, True, "t")
    assert torch.equal(s.sums(validate=False), ref)
    G = random_grad(s)
    assert torch.equal(s.backward(G), torch.ops.seglosses.dice_backward(s.x, y_ignored, None, G, 99, s.p))
    with pytest.raises(ValueError, match=r"dice_loss: y contains label 6 outside \[0, 3\)"):
        s.sums(validate=True)


def test_bad_targets_count_nowhere_without_validation():
    s = next(s for s in SAMPLES if s.name == "sigmoid-bad-targets")
    mask = torch.ones_like(s.y, dtype=torch.bool)
    mask[0, 1, 3] = mask[1, 0, 7] = False
    clean = torch.where(mask, s.y, torch.zeros_like(s.y))
    ref = torch.ops.seglosses.dice_sigmoid_sums(s.x, clean, mask, s.p, True, True, "t")
    assert torch.equal(s.sums(validate=False), ref)
    G = random_grad(s)
    assert torch.equal(s.backward(G), torch.ops.seglosses.dice_sigmoid_backward(s.x, clean, mask, G, s.p))
    with pytest.raises(ValueError, match=r"dice_loss: y contains target 1.5 outside \[0, 1\]"):
        s.sums(validate=True)


def test_label_validation_default_is_cpu_only():
    """The one decision that may make the host wait for the GPU: validate by default where it
    is free (CPU), never by default on CUDA."""
    assert D.label_validation(None, torch.device("cpu")) is True
    assert D.label_validation(None, torch.device("cuda", 0)) is False
    assert D.label_validation(True, torch.device("cuda", 0)) is True
    assert D.label_validation(False, torch.device("cpu")) is False


def test_backward_ops_cannot_validate():
    """The backward ops take no validation flag: they never look for bad labels (the forward did)."""
    for op in (torch.ops.seglosses.dice_backward, torch.ops.seglosses.dice_sigmoid_backward):
        assert "validate" not in str(op.default._schema)
    for op in (torch.ops.seglosses.dice_sums, torch.ops.seglosses.dice_sigmoid_sums):
        assert "bool validate" in str(op.default._schema)


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("loss", ["dice_loss", "dice_ce_loss", "generalized_dice_loss", "tversky_loss"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("validate", [None, True, False])
def test_validation_flag_reaches_the_forward_op_only(loss, activation, validate):
    """Every Dice-family loss passes the validation decision to its sums op, and neither the
    forward nor the backward reads a value back to the host from Python (no .item())."""
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 5)) if activation == "softmax" else torch.rand(2, 3, 4, 5)
    with _OpLog() as log:
        out = getattr(SF, loss)(x, y, activation=activation, validate_labels=validate, reduction="batch")
        out.backward()
    sums_calls = [args for name, args in log.calls if "seglosses.dice_" in name and "_sums" in name]
    backward_calls = [name for name, _ in log.calls if "seglosses.dice_" in name and "backward" in name]
    assert len(sums_calls) == 1 and len(backward_calls) == 1
    flag = sums_calls[0][6 if activation == "softmax" else 5]
    assert flag is (True if validate is None else validate)  # CPU: validated unless asked not to
    assert sums_calls[0][-1] == loss  # errors name the public function
    assert not any("_local_scalar_dense" in name or "item" in name for name, _ in log.calls)


def test_direct_backward_call_with_tables_on_another_device_is_clear():
    x = torch.randn(2, 3, 4)
    y = torch.randint(0, 3, (2, 4))
    with pytest.raises(ValueError, match=r"dice_backward: grad_sums must be on x's device \(cpu\), got meta"):
        torch.ops.seglosses.dice_backward(x, y, None, torch.zeros(2, 4, 3, device="meta"), -1, 1)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_wide_unsigned_labels(dtype):
    """uint16 / uint32 / uint64 labels are read in place; no negative ignore_label matches a large
    unsigned value, and the message shows the unsigned value."""
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 10))
    ref = torch.ops.seglosses.dice_sums(x, y, None, -1, 2, True, True, "t")
    assert torch.equal(torch.ops.seglosses.dice_sums(x, y.to(dtype), None, -1, 2, True, True, "t"), ref)
    signed = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}[dtype]
    top = 2 ** (8 * signed.itemsize) - 1
    yb = y.to(signed)
    yb[1, 4] = -1
    yb = yb.view(dtype)  # the largest value of the unsigned dtype
    with pytest.raises(ValueError, match=rf"dice_loss: y contains label {top} outside \[0, 3\) \(ignore_label=-1\)"):
        SF.dice_loss(x, yb)
    assert torch.isfinite(SF.dice_loss(x, yb, validate_labels=False))


def test_power_is_exact_for_large_p():
    """s^p by squaring: p = 1000 equals the float64 power, in O(log p)."""
    x = torch.randn(2, 3, 50, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (2, 50))
    out = torch.ops.seglosses.dice_sums(x, y, None, -1, 1000, False, True, "t")
    ref = sums_ref(x, y, -1, 1000)["P"]
    torch.testing.assert_close(out[:, 1], ref, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(SF.dice_loss(x, y, p=1000), dice_loss_ref(x, y, p=1000), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["dice_sums", "dice_sigmoid_sums"])
def test_half_conversions_are_bitwise_torchs(dtype, op):
    """The kernels read float16 / bfloat16 and write their gradients bit for bit as torch converts
    (round to nearest even): every finite 16-bit pattern as a logit gives the sums of x.float(),
    and the gradient is the float32 gradient rounded by torch."""
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    finite = every[torch.isfinite(every.float())]
    x16 = finite[: finite.numel() // 4 * 4].reshape(2, 2, -1)
    x32 = x16.float()
    if op == "dice_sums":
        y = torch.randint(0, 2, (2, x16.shape[-1]), generator=torch.Generator().manual_seed(0))
        sums = lambda x: torch.ops.seglosses.dice_sums(x, y, None, -1, 2, True, True, "t")  # noqa: E731
        backward = lambda x, G: torch.ops.seglosses.dice_backward(x, y, None, G, -1, 2)  # noqa: E731
        rows = 4
    else:
        t = torch.rand(x16.shape, generator=torch.Generator().manual_seed(0))
        sums = lambda x: torch.ops.seglosses.dice_sigmoid_sums(x, t, None, 2, True, True, "t")  # noqa: E731
        backward = lambda x, G: torch.ops.seglosses.dice_sigmoid_backward(x, t, None, G, 2)  # noqa: E731
        rows = 6
    assert torch.equal(sums(x16), sums(x32))
    for scale in (1e-6, 1.0, 1e4):  # gradients from subnormal to large
        G = torch.randn(2, rows, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
        assert torch.equal(backward(x16, G), backward(x32, G).to(dtype))
