"""The Dice family on CUDA (issue 15). Everything here runs wherever torch sees a GPU and is
skipped elsewhere.

The parity table is the sample-inputs table of dice_samples.py (the CPU tests compare the same
samples with the float64 reference), plus the GPU-sized samples: CUDA sums and gradients must
equal the CPU kernels' for every sample. Then: no host synchronisation in a forward + backward
(torch.cuda.set_sync_debug_mode), CUDA-graph capture, torch.compile, a side stream, bitwise
repeats, peak memory, the bad-label report beyond 2^31 voxels, opcheck, device mismatches.
"""

import functools

import pytest
import torch

import seglosses
import seglosses.functional as SF
from conftest import requires_cuda
from dice_reference import dice_ce_loss_ref, dice_loss_ref
from dice_samples import big_samples, sample_inputs
from dice_testing import assert_close, make_labels, raises, value_and_grad

pytestmark = requires_cuda

SMALL = sample_inputs("cpu")
BIG = big_samples()
CASES = [(s.name, s) for s in SMALL] + BIG  # (name, sample or build(device))
SAMPLES = SMALL


@functools.lru_cache(maxsize=None)
def cuda_samples():
    return {s.name: s for s in sample_inputs("cuda")}


def sums_tolerance(dtype):
    return 1e-11 if dtype == torch.float64 else 3e-5  # float accumulation in different orders


def grad_tolerance(dtype):
    return {torch.float64: 1e-11, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def compare_tables(actual, expected, dtype):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == torch.float64
    if expected.numel() == 0:
        return
    scale = expected.abs().amax(dim=(0, 2), keepdim=True).clamp_min(1.0)  # per row
    torch.testing.assert_close(actual.cpu() / scale, expected / scale, rtol=0, atol=sums_tolerance(dtype))


@pytest.mark.parametrize("name,case", CASES, ids=[c[0] for c in CASES])
def test_cuda_matches_cpu(name, case):
    """Sums and gradient of every sample, CUDA vs the CPU kernels (validation off on both; the
    sample's bad labels, if any, count nowhere on both), and the gradient's strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    # Built on the GPU in the sample's own layout (a slice of a NaN-padded tensor, expanded, ...),
    # then copied to the CPU (where the layout may become contiguous: same values).
    cs = case("cuda") if callable(case) else cuda_samples()[name]
    s = cs.to("cpu")
    compare_tables(cs.sums(validate=False), s.sums(validate=False), s.x.dtype)
    G = torch.randn((s.x.shape[0], s.rows, s.num_classes), generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    g_cpu, g_cuda = s.backward(G), cs.backward(G.cuda())
    assert g_cuda.device.type == "cuda" and g_cuda.dtype == g_cpu.dtype and g_cuda.stride() == g_cpu.stride()
    assert torch.isfinite(g_cuda).all()  # a stray read of the NaN padding would show here
    if g_cpu.numel():  # compared on the GPU: the big samples have a billion elements
        tol = grad_tolerance(s.x.dtype)
        cmp = torch.float64 if s.x.dtype == torch.float64 else torch.float32
        expected = g_cpu.to("cuda", cmp)
        err = (g_cuda.to(cmp) - expected).abs() - tol * expected.abs()
        assert err.max().item() <= tol * expected.abs().max().item(), (err.max().item(), tol)
        del expected, err
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        f = lambda t: None if t is None else mode.from_tensor(t)  # noqa: E731
        fs = type(cs)(**{**cs.__dict__, "x": f(cs.x), "y": f(cs.y), "mask": f(cs.mask)})
        fake = fs.backward(f(G.cuda()))
    assert fake.shape == g_cuda.shape and fake.stride() == g_cuda.stride()


@pytest.mark.parametrize("s", [s for s in SAMPLES if s.x.numel() <= 4000][:8], ids=lambda s: s.name)
def test_cuda_opcheck(s):
    cs = s.to("cuda")
    torch.library.opcheck(getattr(torch.ops.seglosses, s.op).default, cs.sums_args(validate=False))
    bw = torch.ops.seglosses.dice_backward if s.op == "dice_sums" else torch.ops.seglosses.dice_sigmoid_backward
    torch.library.opcheck(bw.default, cs.backward_args(torch.randn(s.x.shape[0], s.rows, s.num_classes,
                                                                   device="cuda")))


def _family(activation):
    """(name, module, target) for every loss of the family, on CUDA."""
    g = torch.Generator().manual_seed(2)
    if activation == "softmax":
        y = make_labels(2, 5, (16, 17, 18), torch.uint8, ignore_label=255).cuda()
        mask = (torch.rand(2, 1, 16, 17, 18, generator=g) > 0.2).cuda()
        kw = dict(ignore_label=255)
    else:
        y = (torch.rand(2, 5, 16, 17, 18, generator=g) > 0.5).cuda()
        mask = (torch.rand(2, 5, 16, 17, 18, generator=g) > 0.2).cuda()
        kw = {}
    mods = [seglosses.DiceLoss(weight=[0.1, 0.2, 0.3, 0.2, 0.2], p=2, activation=activation, **kw),
            seglosses.DiceCELoss(ce_weight=[1.0, 2.0, 0.5, 1.0, 1.0], activation=activation, **kw),
            seglosses.GeneralizedDiceLoss(activation=activation, reduction="batch", **kw),
            seglosses.TverskyLoss(alpha=0.3, beta=0.7, activation=activation, reduction="none", **kw)]
    return mods, y, mask


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_no_host_sync_in_forward_and_backward(activation):
    """Without label validation (the CUDA default) a forward + backward of every loss never makes
    the host wait for the GPU; asking for validation does (the check has teeth)."""
    mods, y, mask = _family(activation)
    x = torch.randn(2, 5, 16, 17, 18, device="cuda", requires_grad=True)
    for m in mods:  # warm-up: kernels loaded, class weights copied to the GPU once
        m(x, y, mask).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for m in mods:
            x.grad = None
            m(x, y, mask).sum().backward()
        with pytest.raises(RuntimeError, match="synchroniz"):
            SF.dice_loss(x, y, mask=mask, activation=activation, validate_labels=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_cuda_graph_capture(activation):
    mods, y, mask = _family(activation)
    m = mods[1]  # DiceCE: every row of the sums
    x = torch.randn(2, 5, 16, 17, 18, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x.grad = None
            m(x, y, mask).backward()
    torch.cuda.current_stream().wait_stream(side)
    eager_loss, eager_grad = m(x, y, mask).detach(), torch.autograd.grad(m(x, y, mask), x)[0]
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        static_loss = m(x, y, mask)
        static_loss.backward()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_loss, eager_loss) and torch.equal(x.grad, eager_grad)


def test_cuda_torch_compile_fullgraph():
    torch._dynamo.reset()
    mods, y, mask = _family("softmax")
    m = mods[1]
    x = torch.randn(2, 5, 16, 17, 18, device="cuda")
    compiled = torch.compile(lambda a, b, c: m(a, b, c), fullgraph=True)
    closs, cg = value_and_grad(lambda a, b: compiled(a, b, mask), x, y)
    loss, g = value_and_grad(lambda a, b: m(a, b, mask), x, y)
    assert_close(closs, loss, rtol=1e-5, atol=1e-6)
    assert_close(cg, g, rtol=1e-4, atol_frac=1e-5)


def test_cuda_side_stream_and_bitwise_repeats():
    x = torch.randn(2, 41, 24, 25, 26, device="cuda")
    y = make_labels(2, 41, (24, 25, 26), torch.int64, ignore_label=255).cuda()
    G = torch.randn(2, 4, 41, device="cuda", dtype=torch.float64)
    runs = []
    for i in range(3):
        stream = torch.cuda.Stream() if i == 2 else torch.cuda.current_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            runs.append((torch.ops.seglosses.dice_sums(x, y, None, 255, 2, True, False, "t"),
                         torch.ops.seglosses.dice_backward(x, y, None, G, 255, 2)))
        torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0]))


@pytest.mark.parametrize("C", [8, 40])
@pytest.mark.parametrize("loss", ["DiceLoss", "DiceCELoss", "GeneralizedDiceLoss", "TverskyLoss"])
def test_cuda_peak_memory(C, loss):
    """Forward + backward allocate at most 1.1x the logits (the gradient; with K > 8 the
    forward's softmax statistics, 2 / K of the logits, are freed before the backward)."""
    x = torch.randn(2, C, 64, 64, 64, device="cuda", requires_grad=True)
    y = make_labels(2, C, (64, 64, 64), torch.uint8, ignore_label=255).cuda()
    m = getattr(seglosses, loss)(ignore_label=255)
    m(x, y).backward()  # warm-up (kernels, caching allocator)
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    (g,) = torch.autograd.grad(m(x, y), x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= 1.1 * x.numel() * x.element_size(), (peak, x.numel() * x.element_size())
    assert g.shape == x.shape and torch.isfinite(g).all()


def test_cuda_losses_match_reference():
    torch.manual_seed(3)
    x = torch.randn(2, 9, 6, 7, 8, dtype=torch.float64)
    y = make_labels(2, 9, (6, 7, 8), torch.int16, ignore_label=-100)
    mask = torch.rand(2, 6, 7, 8) > 0.3
    kw = dict(ignore_label=-100, p=3, smooth=0.5, ce_weight=torch.linspace(0.2, 2.0, 9).tolist())
    loss, g = value_and_grad(lambda a, b: SF.dice_ce_loss(a, b, mask=mask.cuda(), **kw), x.cuda(), y.cuda())
    ref, ref_g = value_and_grad(lambda a, b: dice_ce_loss_ref(a, b, mask=mask, **kw), x, y)
    assert_close(loss.cpu(), ref, rtol=1e-10, atol=1e-12)
    assert_close(g.cpu(), ref_g, rtol=1e-9, atol_frac=1e-10)


@pytest.mark.parametrize("ydtype", [torch.int64, torch.uint8])
def test_cuda_bad_label_with_and_without_validation(ydtype):
    x = torch.randn(2, 3, 40, 40, device="cuda")
    y = make_labels(2, 3, (40, 40), torch.int64)
    y[1, 3, 5] = 9
    y[0, 30, 2] = 7  # first in (sample, voxel) order, as on the CPU
    y = y.to(ydtype).cuda()
    with raises(ValueError, "y", r"label 7 outside"):
        SF.dice_loss(x, y, validate_labels=True)
    # off (the CUDA default): bad labels count nowhere, as on the CPU with validation off
    assert_close(SF.dice_loss(x, y), SF.dice_loss(x.cpu(), y.cpu(), validate_labels=False), rtol=1e-5)
    assert_close(SF.dice_loss(x, y), dice_loss_ref(x.cpu(), y.cpu()).float(), rtol=1e-5)


def test_cuda_bad_label_report_beyond_2_31_voxels():
    S = 2**31 + 100
    x = torch.zeros(1, 1, 1, dtype=torch.float16, device="cuda").expand(1, 2, S)  # no memory for x
    y = torch.zeros(1, S, dtype=torch.uint8, device="cuda")
    y[0, 2**31 + 50] = 5
    y[0, 2**31 + 70] = 9
    with raises(ValueError, "y", r"label 5 outside \[0, 2\)"):
        torch.ops.seglosses.dice_sums(x, y, None, -1, 1, False, True, "dice_loss")
    del y
    torch.cuda.empty_cache()


def test_cuda_device_mismatch():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    y = make_labels(2, 3, (4, 5))
    with raises(ValueError, "y", "cpu"):
        SF.dice_loss(x, y)
    with pytest.raises(ValueError, match=r"dice_backward: x must be on the CUDA device of the other tensors, got cpu"):
        torch.ops.seglosses.dice_backward(x.cpu(), y, None, torch.zeros(2, 4, 3, device="cuda"), -1, 1)
    with pytest.raises(ValueError, match=r"dice_sums: y must be on x's device"):
        torch.ops.seglosses.dice_sums(x, y, None, -1, 1, False, False, "t")
