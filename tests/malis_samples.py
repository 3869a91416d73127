"""Sample-inputs tables of the MALIS family (STYLE.md): one table per op, built on any device.

``weights_samples(device)``  seglosses.malis_weights (and its counts, normalize=False)
``loss_samples(device)``     seglosses.MalisLoss
``components_samples(device)`` seglosses.affgraph_to_seg / the connected_components op

The CPU tests compare every sample with the brute-force oracle of ``malis_reference.py``; the
CUDA tests (test_malis_cuda.py) compare the same samples on the GPU with the CPU, bitwise for
weights, counts and labels. So the CUDA cases are exactly the CPU ones. Each sample is built
directly on its device in its own layout (a slice of a NaN-padded tensor, a transposed or an
expanded view), from data drawn once with a fixed seed, so both devices see the same values.
Volumes are tiny (at most ~200 voxels per sample): the oracle is O(V^2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch

from malis_reference import (
    connected_components_ref,
    loss_seg_ref,
    malis_counts_ref_batch,
    malis_loss_ref,
    malis_weights_ref_batch,
    normalize_ref,
    reduce_ref,
    seg_to_affgraph_ref,
    to_numpy,
)

import seglosses

NN3 = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
NN2 = [[-1, 0], [0, -1]]
POS3 = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
POS2 = [[1, 0], [0, 1]]
LONG3 = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 2], [0, -2, 1]]
LONG2 = [[0, 1], [-1, 0], [1, 1], [0, -2]]


# --------------------------------------------------------------------------------------------------
# data and layouts
# --------------------------------------------------------------------------------------------------
def blocky_seg(rng, shape, batch, nlabels=3, bg=0.15):
    """Voronoi cells sharing labels (split instances) with some background, int64 [B, *shape]."""
    if batch == 0 or 0 in shape:
        return np.zeros((batch,) + tuple(shape), dtype=np.int64)
    out = []
    for _ in range(batch):
        seeds = np.stack([rng.integers(0, s, size=nlabels + 1) for s in shape], 1)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
        cell = ((grid[..., None, :] - seeds) ** 2).sum(-1).argmin(-1)
        seg = (np.arange(nlabels + 1) % nlabels + 1)[cell]
        seg[rng.random(shape) < bg] = 0
        out.append(seg)
    return np.stack(out).astype(np.int64)


def gt_affinities(seg, nhood, flip=0.0, rng=None):
    """seg_to_affgraph of every sample, a fraction ``flip`` of the edges flipped (float32)."""
    if seg.size == 0:
        return np.zeros((seg.shape[0], len(nhood)) + seg.shape[1:], dtype=np.float32)
    gt = np.stack([seg_to_affgraph_ref(s, nhood) for s in seg]).astype(np.float32)
    if flip:
        f = rng.random(gt.shape) < flip
        gt[f] = 1 - gt[f]
    return gt


def strided(t: torch.Tensor) -> torch.Tensor:
    """t's values as every other element of the last dim of a NaN-filled tensor (a stray read of
    the padding shows as NaN: an error for predictions, wrong counts elsewhere)."""
    big = torch.full(t.shape[:-1] + (2 * t.shape[-1],), float("nan") if t.is_floating_point() else -7,
                     dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    out = big[..., ::2]
    assert not out.is_contiguous()
    return out


def transposed(t: torch.Tensor) -> torch.Tensor:
    """t's values in a transposed layout (the last two dims swapped in memory)."""
    out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert t.shape[-1] == 1 or t.shape[-2] == 1 or not out.is_contiguous()
    return out


def expanded_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Sample 0 of t repeated over the batch as a stride-0 view."""
    return t[:1].expand((batch,) + tuple(t.shape[1:]))


def _on(device, x, dtype=None, layout: Optional[Callable] = None):
    if x is None:
        return None
    t = torch.as_tensor(x)
    t = t.to(device=device, dtype=dtype if dtype is not None else t.dtype)
    return layout(t) if layout is not None else t


# --------------------------------------------------------------------------------------------------
# malis_weights
# --------------------------------------------------------------------------------------------------
@dataclass
class WeightsSample:
    name: str
    pred: torch.Tensor
    seg: Optional[torch.Tensor]  # gt_seg as a user passes it; None: components of gt_affs
    nhood: list
    gt_affs: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    opts: dict = field(default_factory=dict)  # constrained, constrain_masked

    def weights(self, **kw):
        return seglosses.malis_weights(self.pred, self.seg, self.nhood, gt_affs=self.gt_affs, mask=self.mask,
                                       **self.opts, **kw)

    def counts(self, **kw):
        return self.weights(normalize=False, **kw)

    def with_host_inputs(self) -> "WeightsSample":
        """The same sample with seg, gt_affs and mask on the CPU (pred stays where it is)."""
        cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        return dataclasses.replace(self, name=self.name + "+host-inputs", seg=cpu(self.seg),
                                   gt_affs=cpu(self.gt_affs), mask=cpu(self.mask))

    def op_args(self):
        """The malis_weights / malis_counts op's arguments (labels as the Python side passes them)."""
        seg = self.seg
        if seg is not None and seg.dtype in (torch.uint16, torch.uint32, torch.uint64):
            seg = seg.to(torch.int64)
        if seg is not None and seg.dim() == len(self.nhood[0]):  # unbatched
            seg = seg.unsqueeze(0)
        pred = self.pred if self.pred.dim() == len(self.nhood[0]) + 2 else self.pred.unsqueeze(0)
        mask = None if self.mask is None else torch.broadcast_to(
            self.mask if self.mask.dim() == pred.dim() else self.mask.unsqueeze(0), pred.shape)
        gt = None if self.gt_affs is None else (self.gt_affs if self.gt_affs.dim() == pred.dim()
                                                else self.gt_affs.unsqueeze(0))
        flat = [o for r in self.nhood for o in r]
        return (pred, seg, gt, mask, flat, self.opts.get("constrained", True), self.opts.get("constrain_masked", False),
                0, "malis_weights", "pred_affs", "gt_seg")


def _weights_case(name, device, seed, shape, nhood, *, batch=2, pred_dtype=torch.float32, seg_dtype=torch.int64,
                  quantised=False, gt="none", mask="none", layout="contiguous", big_labels=False, no_seg=False,
                  unbatched=False, **opts):
    rng = np.random.default_rng(seed)
    seg = blocky_seg(rng, shape, batch)
    if big_labels:  # beyond int32: the CUDA backend's second trip, the host's dense relabelling
        seg = np.where(seg > 0, seg * (2**40) + 7, 0)
    pred = rng.random((batch, len(nhood)) + tuple(shape)).astype(np.float32)
    if quantised or pred_dtype in (torch.float16, torch.bfloat16):
        pred = np.round(pred * 8) / 8  # k/8 is exact in every dtype: ties fall alike in the oracle
    gt_affs = None
    if gt != "none" or no_seg:
        gt_affs = gt_affinities(seg, nhood, 0.15 if gt == "flipped" else 0.0, rng)
    m = None
    if mask == "full":
        m = (rng.random(pred.shape) < 0.7).astype(np.float32)
    elif mask == "channels":  # [B, 1, *]: broadcast over the channels
        m = (rng.random((batch, 1) + tuple(shape)) < 0.7).astype(np.float32)
    elif mask == "slab":
        m = np.ones((batch, 1) + tuple(shape), dtype=np.float32)
        m[:, :, : max(1, shape[0] // 2)] = 0

    pred_layout = {"strided": strided, "expanded": lambda t: expanded_batch(t, batch)}.get(layout)
    seg_layout = {"strided": transposed, "expanded": lambda t: expanded_batch(t, batch)}.get(layout)
    pred_t = _on(device, pred, pred_dtype, pred_layout)
    seg_t = None if no_seg else _on(device, seg, seg_dtype, seg_layout)
    gt_t = _on(device, gt_affs, torch.bool if gt == "bool" else torch.float32,
               strided if layout == "strided" else None)
    mask_t = _on(device, m, torch.bool if mask == "slab" else None)
    if mask == "channels":
        mask_t = mask_t.expand(pred_t.shape)  # an expanded view: crosses to the host once
    if unbatched:
        pred_t, seg_t = pred_t[0], None if seg_t is None else seg_t[0]
        gt_t, mask_t = None if gt_t is None else gt_t[0], None if mask_t is None else mask_t[0]
    return WeightsSample(name, pred_t, seg_t, nhood, gt_t, mask_t, opts)


def weights_samples(device="cpu") -> List[WeightsSample]:
    c = lambda name, *a, **kw: _weights_case(name, device, *a, **kw)  # noqa: E731
    return [
        c("3d-nn-fp32-int64", 0, (3, 4, 4), NN3),
        c("3d-pos-unconstrained", 1, (3, 3, 5), POS3, constrained=False),
        c("2d-pos-fp64-int32", 2, (6, 7), POS2, pred_dtype=torch.float64, seg_dtype=torch.int32),
        c("3d-fp16-uint8", 3, (2, 4, 5), NN3, pred_dtype=torch.float16, seg_dtype=torch.uint8),
        c("2d-bf16-int16", 4, (5, 6), NN2, pred_dtype=torch.bfloat16, seg_dtype=torch.int16),
        c("3d-int8", 5, (3, 4, 4), POS3, seg_dtype=torch.int8, quantised=True),
        c("2d-uint16", 6, (5, 5), NN2, seg_dtype=torch.uint16),
        c("3d-uint32", 7, (2, 4, 5), NN3, seg_dtype=torch.uint32),
        c("2d-uint64", 8, (4, 7), POS2, seg_dtype=torch.uint64),
        c("3d-labels-beyond-int32", 9, (3, 4, 4), NN3, big_labels=True),
        c("3d-long-range", 10, (3, 4, 5), LONG3),
        c("2d-long-range-ties", 11, (5, 6), LONG2, quantised=True),
        c("3d-gt-affs-flipped", 12, (3, 4, 4), NN3, gt="flipped"),
        c("2d-gt-affs-bool", 13, (5, 6), POS2, gt="bool", constrained=False),
        c("3d-no-seg", 14, (3, 4, 5), POS3, no_seg=True),
        c("2d-no-seg-mask", 15, (6, 6), POS2, no_seg=True, mask="full"),
        c("3d-mask-pytc-rule", 16, (3, 4, 4), NN3, mask="full"),
        c("3d-mask-constrain-masked", 17, (3, 4, 4), NN3, mask="full", constrain_masked=True),
        c("2d-mask-channels", 18, (5, 7), POS2, mask="channels"),
        c("2d-mask-channels-constrain-masked", 19, (5, 7), POS2, mask="channels", constrain_masked=True),
        c("3d-mask-slab-bool", 20, (4, 3, 4), POS3, mask="slab"),
        c("3d-mask-unconstrained", 21, (3, 4, 4), NN3, mask="full", constrained=False),
        c("3d-strided", 22, (3, 4, 5), NN3, gt="flipped", layout="strided"),
        c("2d-expanded-batch", 23, (5, 6), POS2, batch=3, layout="expanded"),
        c("3d-batch-4", 24, (2, 3, 4), POS3, batch=4, mask="channels"),
        c("3d-unbatched", 25, (3, 4, 4), NN3, batch=1, unbatched=True, gt="flipped"),
        c("3d-empty-batch", 26, (3, 4, 4), NN3, batch=0),
        c("3d-empty-volume", 27, (0, 4, 4), NN3, mask="full"),
        c("2d-empty-volume-no-seg", 28, (5, 0), POS2, no_seg=True),
    ]


# --------------------------------------------------------------------------------------------------
# MalisLoss
# --------------------------------------------------------------------------------------------------
@dataclass
class LossSample:
    name: str
    pred: torch.Tensor      # logits (or affinities with sigmoid=False)
    target: torch.Tensor
    nhood: list
    mask: Optional[torch.Tensor] = None
    gt_seg: Optional[torch.Tensor] = None
    opts: dict = field(default_factory=dict)  # MalisLoss options (reduction, malis_crop_size, ...)
    seed: int = 0  # torch's RNG seed before the call (the crop origin)

    def module(self):
        return seglosses.MalisLoss(self.nhood, **self.opts)

    def value_and_grad(self):
        """The loss and d(sum(loss))/d(pred); pred's gradient in pred's dtype."""
        p = self.pred.detach().clone().requires_grad_(True)
        torch.manual_seed(self.seed)
        loss = self.module()(p, self.target, mask=self.mask, gt_seg=self.gt_seg)
        (g,) = torch.autograd.grad(loss.sum(), p) if loss.numel() else (torch.zeros_like(p),)
        return loss.detach(), g

    def crop_window(self):
        """The crop this sample's call draws (SPEC §3: one draw from torch's RNG per spatial dim,
        after torch.manual_seed(seed)), as slices of the spatial dims; None without a crop."""
        crop = self.opts.get("malis_crop_size")
        if crop is None:
            return None
        spatial = self.pred.shape[2:]
        sizes = [min(k, n) for k, n in zip(crop if isinstance(crop, tuple) else (crop,) * len(spatial), spatial)]
        torch.manual_seed(self.seed)
        starts = [int(torch.randint(0, n - k + 1, ())) for k, n in zip(sizes, spatial)]
        return tuple(slice(s, s + k) for s, k in zip(starts, sizes))


def _loss_case(name, device, seed, shape, nhood, *, batch=2, dtype=torch.float32, use_gt_seg=True, mask="none",
               seg_dtype=torch.int64, **opts):
    rng = np.random.default_rng(100 + seed)
    seg = blocky_seg(rng, shape, batch)
    target = gt_affinities(seg, nhood)
    # Logits on a 1/8 grid in [-4, 4]: the sigmoid of distinct logits differs by far more than the
    # last-bit differences between the CPU's and the GPU's sigmoid, so both sweep in one order.
    pred = np.round(rng.normal(0, 1.5, size=(batch, len(nhood)) + tuple(shape)).clip(-4, 4) * 8) / 8
    if opts.get("sigmoid") is False:
        pred = np.round(1 / (1 + np.exp(-pred)) * 64) / 64
    m = None
    if mask == "full":
        m = (rng.random(pred.shape) < 0.7).astype(np.float32)
    elif mask == "voxels":  # [B, *spatial]
        m = (rng.random((batch,) + tuple(shape)) < 0.7).astype(np.float32)
    return LossSample(name, _on(device, pred, dtype), _on(device, target), nhood, _on(device, m),
                      _on(device, seg, seg_dtype) if use_gt_seg else None, opts, seed)


def loss_samples(device="cpu") -> List[LossSample]:
    c = lambda name, *a, **kw: _loss_case(name, device, *a, **kw)  # noqa: E731
    cases = []
    for r in ("sum", "mean", "batchmean", "none"):
        cases.append(c(f"3d-gt-seg-{r}", 0, (3, 3, 4), POS3, reduction=r))
        cases.append(c(f"2d-no-gt-seg-{r}", 1, (5, 6), POS2, use_gt_seg=False, reduction=r))
    return cases + [
        c("3d-no-gt-seg-long-range", 2, (3, 4, 4), LONG3, use_gt_seg=False),
        c("3d-unconstrained", 3, (3, 3, 4), POS3, constrained=False),
        c("2d-sigmoid-false", 4, (5, 6), POS2, sigmoid=False),
        c("3d-mask-pytc-rule", 5, (3, 4, 4), POS3, mask="full"),
        c("3d-mask-pytc-rule-no-gt-seg-none", 6, (3, 4, 4), POS3, mask="full", use_gt_seg=False, reduction="none"),
        c("2d-mask-constrain-masked", 7, (5, 6), POS2, mask="full", constrain_masked=True),
        c("2d-mask-voxels-constrain-masked-no-gt-seg", 8, (5, 6), POS2, mask="voxels", constrain_masked=True,
          use_gt_seg=False),
        c("3d-crop-gt-seg", 9, (4, 5, 6), POS3, malis_crop_size=3),
        c("3d-crop-no-gt-seg-none", 10, (4, 5, 6), POS3, malis_crop_size=(2, 4, 3), use_gt_seg=False,
          reduction="none"),
        c("2d-crop-mask-uint64", 11, (6, 7), POS2, malis_crop_size=(4, 100), mask="full", seg_dtype=torch.uint64),
        c("3d-fp64", 12, (3, 3, 4), POS3, dtype=torch.float64),
        c("3d-fp16-no-gt-seg", 13, (3, 3, 4), POS3, dtype=torch.float16, use_gt_seg=False),
        c("2d-bf16-int8", 14, (5, 6), POS2, dtype=torch.bfloat16, seg_dtype=torch.int8),
        c("2d-nonfinite-propagate", 15, (5, 6), POS2, nonfinite="propagate"),
        c("3d-empty-batch", 16, (3, 3, 4), POS3, batch=0, reduction="mean"),
    ]


# --------------------------------------------------------------------------------------------------
# connected components
# --------------------------------------------------------------------------------------------------
@dataclass
class ComponentsSample:
    name: str
    affs: torch.Tensor  # [B, C, *spatial]
    nhood: list
    threshold: float = 0.5
    singleton_background: bool = False  # the op's option (MalisLoss's segmentation); not public

    def labels(self):
        if not self.singleton_background:
            return seglosses.affgraph_to_seg(self.affs, self.nhood, threshold=self.threshold)
        flat = [o for r in self.nhood for o in r]
        return torch.ops.seglosses.connected_components(self.affs, flat, self.threshold, True, 0, "MalisLoss")


def components_samples(device="cpu") -> List[ComponentsSample]:
    def c(name, seed, shape, nhood, *, batch=2, dtype=torch.float32, layout=None, density=None, **kw):
        rng = np.random.default_rng(200 + seed)
        affs = rng.random((batch, len(nhood)) + tuple(shape))
        if density is not None:
            affs = (affs < density).astype(np.float64)
        return ComponentsSample(name, _on(device, affs, dtype, layout), nhood, **kw)

    return [
        c("3d-nn", 0, (3, 4, 5), NN3),
        c("3d-pos-threshold-0.3", 1, (3, 4, 4), POS3, threshold=0.3),
        c("2d-long-range-threshold-0.8", 2, (5, 6), LONG2, threshold=0.8),
        c("3d-long-range-fp64", 3, (3, 4, 5), LONG3, dtype=torch.float64),
        c("3d-fp16", 4, (2, 4, 5), NN3, dtype=torch.float16, density=0.5),
        c("2d-bool", 5, (6, 7), POS2, dtype=torch.bool, density=0.4),
        c("3d-uint8", 6, (3, 3, 4), POS3, dtype=torch.uint8, density=0.5),
        c("2d-singleton-background", 7, (6, 7), POS2, density=0.2, singleton_background=True),
        c("3d-singleton-background", 8, (3, 4, 5), LONG3, density=0.15, singleton_background=True),
        c("3d-strided", 9, (3, 4, 5), NN3, layout=strided),
        c("2d-expanded-batch", 10, (5, 6), NN2, batch=3, layout=lambda t: expanded_batch(t, 3)),
        c("3d-threshold-inf", 11, (2, 3, 4), NN3, threshold=float("inf")),
        c("3d-empty-batch", 12, (3, 4, 4), NN3, batch=0),
        c("2d-empty-volume", 13, (0, 5), NN2),
    ]


# --------------------------------------------------------------------------------------------------
# references (the CPU tests check the table against these)
# --------------------------------------------------------------------------------------------------
def reference_counts(s: WeightsSample):
    """The oracle's exact (pos, neg) counts of a weights sample, batched like s.op_args()."""
    pred, seg, gt, mask, _, constrained, constrain_masked = s.op_args()[:7]
    if pred.numel() == 0:
        return np.zeros(pred.shape, np.int64), np.zeros(pred.shape, np.int64)
    labels = loss_seg_ref(gt, s.nhood) if seg is None else to_numpy(seg)
    return malis_counts_ref_batch(pred, labels, s.nhood, gt_affs=None if gt is None else to_numpy(gt),
                                  mask=None if mask is None else to_numpy(mask), constrained=constrained,
                                  constrain_masked=constrain_masked)


def reference_weights(s: WeightsSample):
    pos, neg = reference_counts(s)
    return np.stack([normalize_ref(p, n) for p, n in zip(pos, neg)]) if len(pos) else pos.astype(np.float64)


def reference_loss_and_grad(s: LossSample):
    """The oracle's loss of a loss sample and its gradient 2 w (a - t) da/dpred, scaled by the
    reduction (zero outside the crop), in float64."""
    pred, target, gt_seg, mask = s.pred, s.target, s.gt_seg, s.mask
    reduction = s.opts.get("reduction", "sum")
    if mask is not None and mask.dim() == pred.dim() - 1:
        mask = mask.unsqueeze(1)
    full = torch.zeros(pred.shape, dtype=torch.float64)
    win = s.crop_window()
    if win is not None:
        sl = (slice(None), slice(None)) + win
        pred, target = pred[sl], target[sl]
        mask = None if mask is None else torch.broadcast_to(mask, s.pred.shape)[sl]
        gt_seg = None if gt_seg is None else gt_seg[(slice(None),) + win]
    else:
        sl = (slice(None),) * pred.dim()
    if pred.numel() == 0:
        return np.float64(0.0) if reduction != "none" else np.zeros(pred.shape), full.numpy()
    sigmoid = s.opts.get("sigmoid", True)
    opts = dict(constrained=s.opts.get("constrained", True), constrain_masked=s.opts.get("constrain_masked", False))
    seg = None if gt_seg is None else gt_seg.to(torch.int64)
    per = malis_loss_ref(pred, target, s.nhood, mask=None if mask is None else to_numpy(mask), gt_seg=seg,
                         sigmoid=sigmoid, reduction="none", **opts)
    a = to_numpy(torch.sigmoid(pred) if sigmoid else pred)
    t = (to_numpy(target) > 0.5).astype(np.float64)
    labels = loss_seg_ref(target, s.nhood) if seg is None else to_numpy(seg)
    w = malis_weights_ref_batch(a, labels, s.nhood, gt_affs=t, mask=None if mask is None else to_numpy(mask), **opts)
    g = 2 * w * (a - t) * (a * (1 - a) if sigmoid else 1)
    scale = {"none": 1.0, "sum": 1.0, "mean": 1.0 / per.size, "batchmean": 1.0 / per.shape[0]}[reduction]
    full[sl] = torch.from_numpy(g * scale)
    return reduce_ref(per, reduction), full.numpy()


def reference_labels(s: ComponentsSample):
    affs = to_numpy(s.affs)
    shape = (affs.shape[0],) + affs.shape[2:]
    if affs.size == 0:
        return np.zeros(shape, np.int64)
    out = []
    for a in affs:
        lab = connected_components_ref(a, s.nhood, s.threshold, singleton_background=s.singleton_background)
        # ids 1..n in raster order of each component's first voxel, 0 staying 0
        flat = lab.ravel()
        ids, first = np.unique(flat[flat > 0], return_index=True)
        rank = np.zeros(flat.max() + 1 if flat.size else 1, np.int64)
        rank[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1)
        out.append(rank[lab])
    return np.stack(out).reshape(shape)
