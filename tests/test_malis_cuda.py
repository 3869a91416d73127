"""MALIS, MalisLoss and connected components on CUDA (issue 15). Runs wherever torch sees a GPU;
skipped elsewhere.

The parity tests run the sample tables of malis_samples.py (the CPU tests check the same samples
against the oracle) on the GPU: weights, counts and labels must equal the CPU's bit for bit, with
the labels, GT affinities and mask on the GPU and, separately, left on the CPU. Then what the
CUDA backend promises (csrc/cuda/host_staging.cuh): one trip to the host and one back, pinned,
with exactly one host sync per call (counted with torch.cuda.set_sync_debug_mode and with the
backend's own counters), the result ordered on the caller's stream; torch.compile, opcheck, and
the errors.
"""

import dataclasses
import functools
import warnings

import numpy as np
import pytest
import torch

import seglosses
from conftest import requires_cuda
from malis_samples import (
    NN3,
    POS3,
    WeightsSample,
    blocky_seg,
    components_samples,
    gt_affinities,
    loss_samples,
    weights_samples,
)

pytestmark = requires_cuda

OPS = torch.ops.seglosses
WEIGHTS = weights_samples("cpu")
LOSSES = loss_samples("cpu")
COMPONENTS = components_samples("cpu")


@functools.lru_cache(maxsize=None)
def on_cuda(table):
    """The samples of a table built on the GPU, by name (built once, at first use)."""
    make = {"weights": weights_samples, "loss": loss_samples, "components": components_samples}[table]
    return {s.name: s for s in make("cuda")}


# --------------------------------------------------------------------------------------------------
# what the backend moves, and the host syncs
# --------------------------------------------------------------------------------------------------
COUNTERS = ("to_host_copies", "to_host_bytes", "to_device_copies", "to_device_bytes", "pageable_copies",
            "host_waits")


def transfers(fn):
    """fn()'s result and what the CUDA backend moved meanwhile ({counter: delta})."""
    before = OPS._transfer_counts()
    out = fn()
    after = OPS._transfer_counts()
    return out, {k: a - b for k, a, b in zip(COUNTERS, after, before)}


SYNC_TEXT = "synchronizing CUDA operation"  # torch's warning: "called a synchronizing CUDA operation"


def host_syncs(fn, capfd):
    """fn()'s result and the number of times the host waited for the GPU inside it, as
    torch.cuda.set_sync_debug_mode("warn") reports them: as Python warnings from Python-level
    calls, on stderr (c10's warning handler) from inside custom ops."""
    torch.cuda.synchronize()
    capfd.readouterr()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    err = capfd.readouterr().err
    return out, err.count(SYNC_TEXT) + sum(SYNC_TEXT in str(w.message) for w in caught)


def expected_waits(s: WeightsSample) -> int:
    """One per call; none when there is nothing to copy; a second trip for int64 labels on the
    GPU beyond the int32 range."""
    if s.pred.numel() == 0:
        return 0
    big = s.seg is not None and s.seg.is_cuda and s.seg.dtype == torch.int64 and int(s.seg.max()) > 2**31 - 1
    return 2 if big else 1


# --------------------------------------------------------------------------------------------------
# parity with the CPU: the sample tables
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host_inputs", [False, True], ids=["device-inputs", "host-inputs"])
@pytest.mark.parametrize("s", WEIGHTS, ids=lambda s: s.name)
def test_weights_and_counts_match_cpu_bitwise(s, host_inputs):
    cs = on_cuda("weights")[s.name]
    if host_inputs:
        if cs.seg is None and cs.gt_affs is None and cs.mask is None:
            pytest.skip("no input besides pred")
        cs = cs.with_host_inputs()
    waits = expected_waits(cs)
    w, moved = transfers(cs.weights)
    assert w.device == cs.pred.device and w.dtype == torch.float32 and w.shape == cs.pred.shape
    assert torch.equal(w.cpu(), s.weights())
    assert moved["host_waits"] == waits and moved["pageable_copies"] == 0
    assert moved["to_device_copies"] == (1 if w.numel() else 0) and moved["to_device_bytes"] == 4 * w.numel()
    (pos, neg), moved = transfers(cs.counts)
    cpos, cneg = s.counts()
    assert pos.device == neg.device == cs.pred.device and pos.dtype == neg.dtype == torch.int64
    assert torch.equal(pos.cpu(), cpos) and torch.equal(neg.cpu(), cneg)
    assert moved["host_waits"] == waits and moved["to_device_bytes"] == 16 * pos.numel()


BIG = [("voronoi-3x32^3", {}), ("voronoi-3x32^3-mask", {"mask": True}), ("voronoi-3x32^3-no-seg", {"no_seg": True}),
       ("voronoi-3x32^3-unconstrained-fp16", {"constrained": False, "dtype": torch.float16}),
       ("voronoi-2x16x40x48-mask-constrain-masked", {"shape": (16, 40, 48), "batch": 2, "mask": True,
                                                      "constrain_masked": True})]


def big_sample(device, shape=(32, 32, 32), batch=3, mask=False, no_seg=False, dtype=torch.float32, **opts):
    """A GPU-sized volume (too big for the oracle): CUDA is compared with the CPU only."""
    rng = np.random.default_rng(7)
    seg = blocky_seg(rng, shape, batch, nlabels=20, bg=0.05)
    pred = torch.from_numpy(rng.random((batch, 3) + shape).astype(np.float32)).to(device, dtype)
    gt = torch.from_numpy(gt_affinities(seg, POS3)).to(device) if no_seg else None
    m = None
    if mask:
        m = torch.ones((batch, 1) + shape, device=device)
        m[:, :, : shape[0] // 4] = 0
    return WeightsSample("big", pred, None if no_seg else torch.from_numpy(seg).to(device), POS3, gt, m, opts)


@pytest.mark.parametrize("name,kw", BIG, ids=[b[0] for b in BIG])
def test_big_volumes_match_cpu_bitwise(name, kw):
    s, cs = big_sample("cpu", **kw), big_sample("cuda", **kw)
    assert torch.equal(cs.weights().cpu(), s.weights())
    assert all(torch.equal(a.cpu(), b) for a, b in zip(cs.counts(), s.counts()))


def _loss_reference(s, cs):
    """The CPU loss and gradient of sample s computed from the GPU's sigmoid of cs.pred: the
    sweep then sees the same affinities on both devices, so the weights are the same bit for bit
    and the CUDA loss differs from this one only by rounding (the reductions' order)."""
    if not s.opts.get("sigmoid", True):
        return s.value_and_grad()
    a = torch.sigmoid(cs.pred).cpu()
    loss, grad = dataclasses.replace(s, pred=a, opts={**s.opts, "sigmoid": False}).value_and_grad()
    a = a.double()
    return loss, grad.double() * (a * (1 - a))  # through the sigmoid (in float64: one rounding less)


@pytest.mark.parametrize("host_seg", [False, True], ids=["device-gt-seg", "host-gt-seg"])
@pytest.mark.parametrize("s", LOSSES, ids=lambda s: s.name)
def test_loss_matches_cpu(s, host_seg):
    cs = on_cuda("loss")[s.name]
    if host_seg:
        if cs.gt_seg is None and cs.mask is None:
            pytest.skip("no gt_seg or mask")
        cs = dataclasses.replace(cs, gt_seg=None if cs.gt_seg is None else cs.gt_seg.cpu(),
                                 mask=None if cs.mask is None else cs.mask.cpu())
    (loss, grad), moved = transfers(cs.value_and_grad)
    ref, ref_grad = _loss_reference(s, cs)
    assert loss.device == grad.device == cs.pred.device
    assert loss.shape == ref.shape and loss.dtype == ref.dtype and grad.dtype == cs.pred.dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(s.pred.dtype, 1e-5)
    torch.testing.assert_close(loss.cpu(), ref, rtol=tol, atol=1e-7)
    torch.testing.assert_close(grad.cpu().double(), ref_grad.double(), rtol=tol, atol=tol * 1e-2)
    # Without gt_seg too: one trip each way, one wait (the components are computed on the host).
    assert moved["host_waits"] == (1 if cs.pred.numel() else 0) and moved["pageable_copies"] == 0
    assert moved["to_device_copies"] == (1 if cs.pred.numel() else 0)


@pytest.mark.parametrize("s", COMPONENTS, ids=lambda s: s.name)
def test_components_match_cpu_bitwise(s):
    cs = on_cuda("components")[s.name]
    labels, moved = transfers(cs.labels)
    assert labels.device == cs.affs.device and labels.dtype == torch.int64
    assert torch.equal(labels.cpu(), s.labels())
    n = labels.numel()
    assert moved["host_waits"] == (1 if n else 0) and moved["pageable_copies"] == 0
    assert moved["to_device_copies"] == (1 if n else 0) and moved["to_device_bytes"] == 8 * n


@pytest.mark.parametrize("fn,ndim", [(seglosses.malis_loss2d, 2), (seglosses.malis_loss3d, 3)])
def test_old_api_losses_match_cpu(fn, ndim):
    rng = np.random.default_rng(30 + ndim)
    shape = (6, 7) if ndim == 2 else (3, 4, 5)
    seg = torch.from_numpy(blocky_seg(rng, shape, 3))[:, None]
    aff = torch.from_numpy(rng.random((3, ndim) + shape).astype(np.float32))
    a_gpu = aff.cuda().requires_grad_(True)
    a_cpu = aff.clone().requires_grad_(True)
    loss_gpu, loss_cpu = fn(seg.cuda(), a_gpu), fn(seg, a_cpu)
    assert loss_gpu.device.type == "cuda"
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu.detach(), rtol=1e-6, atol=0)
    loss_gpu.backward()
    loss_cpu.backward()
    torch.testing.assert_close(a_gpu.grad.cpu(), a_cpu.grad, rtol=1e-6, atol=1e-9)


def test_seg_to_affgraph_matches_cpu():
    seg = torch.randint(0, 4, (2, 5, 6, 7), generator=torch.Generator().manual_seed(0))
    nhood = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 2]]
    out = seglosses.seg_to_affgraph(seg.cuda(), nhood)
    assert out.device.type == "cuda" and torch.equal(out.cpu(), seglosses.seg_to_affgraph(seg, nhood))


# --------------------------------------------------------------------------------------------------
# one trip each way
# --------------------------------------------------------------------------------------------------
def test_bytes_moved_per_call():
    """Exactly what crosses the bus: pred as it is, int32 labels and their (min, max), one byte
    per edge of gt_affs, the mask once however it is broadcast; the float32 weights back."""
    B, C, V = 2, 3, 4 * 5 * 6
    E = B * C * V
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(B, C, 4, 5, 6, generator=g).cuda()
    seg = torch.randint(0, 4, (B, 4, 5, 6), generator=g).cuda()
    gt = seglosses.seg_to_affgraph(seg, NN3)  # float32 on the GPU
    mask = (torch.rand(B, 1, 4, 5, 6, generator=g) > 0.3).cuda()  # broadcast over the channels
    cases = [
        (lambda: seglosses.malis_weights(pred, seg, NN3), 3, 4 * E + 4 * B * V + 16),
        (lambda: seglosses.malis_weights(pred, seg, NN3, gt_affs=gt, mask=mask), 5, 4 * E + 4 * B * V + 16 + E + B * V),
        (lambda: seglosses.malis_weights(pred, None, NN3, gt_affs=gt), 2, 4 * E + E),  # labels never cross
        (lambda: seglosses.malis_weights(pred, seg.cpu(), NN3, gt_affs=gt.cpu(), mask=mask.cpu()), 1, 4 * E),
        (lambda: seglosses.malis_weights(pred.half(), seg.to(torch.uint8), NN3), 2, 2 * E + B * V),
    ]
    for call, copies, to_host in cases:
        w, moved = transfers(call)
        assert moved == {"to_host_copies": copies, "to_host_bytes": to_host, "to_device_copies": 1,
                         "to_device_bytes": 4 * E, "pageable_copies": 0, "host_waits": 1}, moved
    # MalisLoss without gt_seg: predictions and the target's edge bytes, nothing else
    logits = torch.randn(B, C, 4, 5, 6, generator=g).cuda().requires_grad_(True)
    _, moved = transfers(lambda: seglosses.MalisLoss(NN3)(logits, gt).backward())
    assert moved == {"to_host_copies": 2, "to_host_bytes": 4 * E + E, "to_device_copies": 1,
                     "to_device_bytes": 4 * E, "pageable_copies": 0, "host_waits": 1}, moved
    # labels beyond int32: the int64 values cross again, after the first wait
    big = torch.where(seg > 0, seg * 2**40 + 7, torch.zeros_like(seg))
    w, moved = transfers(lambda: seglosses.malis_weights(pred, big, NN3))
    assert moved["host_waits"] == 2 and moved["to_host_bytes"] == 4 * E + 4 * B * V + 16 + 8 * B * V
    assert torch.equal(w, seglosses.malis_weights(pred, seg, NN3))
    # connected components: one byte per edge there, int64 labels back
    labels, moved = transfers(lambda: seglosses.affgraph_to_seg(pred, NN3))
    assert moved == {"to_host_copies": 1, "to_host_bytes": E, "to_device_copies": 1, "to_device_bytes": 8 * B * V,
                     "pageable_copies": 0, "host_waits": 1}, moved


def _sync_cases():
    g = torch.Generator().manual_seed(2)
    shape = (6, 7, 8)
    seg = torch.from_numpy(blocky_seg(np.random.default_rng(2), shape, 2)).cuda()
    target = seglosses.seg_to_affgraph(seg, POS3)
    logits = torch.randn((2, 3) + shape, generator=g).cuda().requires_grad_(True)
    mask = (torch.rand((2, 1) + shape, generator=g) > 0.2).cuda()
    probs = torch.sigmoid(logits).detach()

    return {
        "malis_weights": lambda: seglosses.malis_weights(probs, seg, POS3, gt_affs=target, mask=mask),
        "malis_weights-no-seg": lambda: seglosses.malis_weights(probs, None, POS3, gt_affs=target),
        "malis_counts": lambda: seglosses.malis_weights(probs, seg.int(), POS3, normalize=False),
        "malis_weights-host-seg": lambda: seglosses.malis_weights(probs, seg.cpu(), POS3),
        "MalisLoss-gt-seg": lambda: seglosses.MalisLoss(POS3)(logits, target, mask=mask, gt_seg=seg),
        "MalisLoss-no-gt-seg": lambda: seglosses.MalisLoss(POS3)(logits, target, mask=mask),
        "MalisLoss-crop-none": lambda: seglosses.MalisLoss(POS3, malis_crop_size=4, reduction="none")(
            logits, target, gt_seg=seg),
        "MalisLoss-host-gt-seg-mean": lambda: seglosses.MalisLoss(POS3, reduction="mean")(logits, target,
                                                                                         gt_seg=seg.cpu()),
        "malis_loss3d": lambda: seglosses.malis_loss3d(seg[:, None], probs),
        "affgraph_to_seg": lambda: seglosses.affgraph_to_seg(probs, POS3),
    }


SYNC_CASES = ["malis_weights", "malis_weights-no-seg", "malis_counts", "malis_weights-host-seg", "MalisLoss-gt-seg",
              "MalisLoss-no-gt-seg", "MalisLoss-crop-none", "MalisLoss-host-gt-seg-mean", "malis_loss3d",
              "affgraph_to_seg"]


@pytest.mark.parametrize("case", SYNC_CASES)
def test_one_host_sync_per_call(case, capfd):
    """Every MALIS call makes the host wait for the GPU once (the landing of its inputs), and
    that wait is the backend's own (counted by it too); a MalisLoss backward makes none."""
    call = _sync_cases()[case]
    call()  # warm-up: kernels loaded, pinned blocks cached
    (out, moved), syncs = host_syncs(lambda: transfers(call), capfd)
    assert syncs == 1, f"{case}: {syncs} host syncs"
    assert moved["host_waits"] == 1
    if case.startswith("MalisLoss"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            out.sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_empty_inputs_make_no_trip(capfd):
    pred = torch.rand(0, 3, 4, 4, 4, device="cuda")
    seg = torch.zeros(0, 4, 4, 4, dtype=torch.int64, device="cuda")
    (w, moved), syncs = host_syncs(lambda: transfers(lambda: seglosses.malis_weights(pred, seg, NN3)), capfd)
    assert w.shape == pred.shape and w.device.type == "cuda" and syncs == 0 and not any(moved.values())
    logits = torch.rand(2, 3, 0, 4, 4, device="cuda")
    loss, syncs = host_syncs(lambda: seglosses.MalisLoss(POS3, reduction="mean")(logits, torch.zeros_like(logits)),
                             capfd)
    assert syncs == 0 and float(loss) == 0.0


def test_result_is_ordered_on_the_callers_stream():
    """On a side stream the call stages and copies back on that stream: work queued there after
    the call sees the weights once that stream is done, while the default stream is still busy
    (so the call neither used nor waited for it); the values are the CPU's."""
    s = WEIGHTS[0]
    cs = on_cuda("weights")[s.name]
    expected = s.weights()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # the inputs, made on the default stream
    torch.cuda.current_stream().synchronize()
    torch.cuda._sleep(1_000_000_000)  # keeps the default stream busy for about half a second
    with torch.cuda.stream(side):
        # A NaN-filled block of the result's size, freed on this stream, is likely what the result
        # gets: a copy back on another stream would leave NaN (or a fresh block's garbage) for the
        # clone below.
        torch.full(cs.pred.shape, float("nan"), device="cuda")
        w = cs.weights()
        seen = w.clone()
    side.synchronize()
    default_still_busy = not torch.cuda.default_stream().query()
    torch.cuda.synchronize()
    assert default_still_busy, "the call (or its copy back) waited for the default stream"
    assert torch.equal(seen.cpu(), expected)
    assert torch.equal(cs.weights().cpu(), expected)  # and again on the default stream: bitwise repeats


# --------------------------------------------------------------------------------------------------
# torch.compile, opcheck, errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["3d-crop-gt-seg", "3d-crop-no-gt-seg-none"])
def test_torch_compile_fullgraph(name):
    torch._dynamo.reset()
    cs = on_cuda("loss")[name]
    mod = cs.module()
    compiled = torch.compile(mod, fullgraph=True)
    p1, p2 = (cs.pred.detach().clone().requires_grad_(True) for _ in range(2))
    torch.manual_seed(cs.seed)
    eager = mod(p1, cs.target, mask=cs.mask, gt_seg=cs.gt_seg)
    torch.manual_seed(cs.seed)
    comp = compiled(p2, cs.target, mask=cs.mask, gt_seg=cs.gt_seg)
    assert comp.shape == eager.shape and comp.device.type == "cuda"
    torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-7)
    eager.sum().backward()
    comp.sum().backward()
    torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["3d-nn-fp32-int64", "3d-no-seg", "2d-mask-channels", "3d-fp16-uint8",
                                  "3d-empty-volume"])
def test_opcheck(name):
    args = on_cuda("weights")[name].op_args()
    torch.library.opcheck(OPS.malis_weights.default, args)
    torch.library.opcheck(OPS.malis_counts.default, args)


def test_opcheck_connected_components():
    affs = on_cuda("components")["3d-nn"].affs
    flat = [o for r in NN3 for o in r]
    torch.library.opcheck(OPS.connected_components.default, (affs, flat, 0.5, True, 0, "affgraph_to_seg"))


def test_errors_name_the_public_function():
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(1, 3, 3, 4, 5, generator=g).cuda()
    seg = torch.randint(0, 3, (1, 3, 4, 5), generator=g)
    target = seglosses.seg_to_affgraph(seg, POS3).cuda()
    for dtype in (torch.int64, torch.int32):  # int64: checked after the trip; int32: on the host
        neg = seg.clone().to(dtype)
        neg[0, 1, 1, 1] = -3
        with pytest.raises(ValueError, match=r"^MalisLoss: gt_seg labels must be >= 0, got -3"):
            seglosses.MalisLoss()(pred, target, gt_seg=neg.cuda())
        with pytest.raises(ValueError, match=r"^malis_loss3d: seg_gt labels must be >= 0, got -3"):
            seglosses.malis_loss3d(neg[:, None].cuda(), pred)
    huge = seg.numpy().astype(np.uint64)
    huge[0, 0, 0, 0] = np.uint64(2**63 + 5)
    huge = torch.from_numpy(huge)
    with pytest.raises(ValueError, match=r"^MalisLoss: gt_seg labels must fit in int64 \(< 2\*\*63\), got 9223372036854775813"):
        seglosses.MalisLoss()(pred, target, gt_seg=huge.cuda())
    bad = pred.clone()
    bad[0, 1, 2, 3, 4] = float("nan")
    index = str(int(np.ravel_multi_index((1, 2, 3, 4), bad.shape[1:])))
    with pytest.raises(ValueError, match=r"^malis_weights: pred_affs must be finite, got -?nan in sample 0 at flat index "
                                         + index):
        seglosses.malis_weights(bad, seg.cuda(), POS3)
    flat = [o for r in POS3 for o in r]
    with pytest.raises(ValueError, match=r"^malis_weights: pred_affs must be on the CUDA device of the other arguments"):
        OPS.malis_weights(pred.cpu(), seg.cuda(), None, None, flat, True, False, 0, "malis_weights", "pred_affs",
                          "gt_seg")
    with pytest.raises(ValueError, match=r"^MalisLoss: target must be on pred's device"):
        seglosses.MalisLoss()(pred, target.cpu())
