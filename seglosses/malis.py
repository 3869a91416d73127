"""MALIS: weights, the loss module, and affinity-graph utilities.

Conventions (SPEC §3): affinity channel ``c`` at voxel ``p`` is the edge ``(p, p + nhood[c])``;
edges whose partner lies outside the volume are invalid and get weight 0. Label 0 is background:
part of the graph, never part of a counted pair, and every edge touching it has ground-truth
affinity 0.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from ._ops import ops

__all__ = [
    "MalisLoss",
    "affgraph_to_seg",
    "malis_loss",
    "malis_loss2d",
    "malis_loss3d",
    "malis_weights",
    "mknhood2d",
    "mknhood3d",
    "release_malis_workspace",
    "seg_to_affgraph",
]

NhoodLike = Union[Sequence[Sequence[int]], torch.Tensor]
MALIS_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------------------------
# Neighbourhoods and affinity graphs
# ---------------------------------------------------------------------------------------------
def _mknhood(ndim: int, radius: float) -> torch.Tensor:
    r = int(radius)
    offsets = [
        o
        for o in itertools.product(range(-r, r + 1), repeat=ndim)
        if 0 < sum(d * d for d in o) <= radius * radius and next(d for d in o if d != 0) < 0
    ]
    offsets.sort(key=lambda o: (sum(d * d for d in o), o))
    return torch.tensor(offsets, dtype=torch.int64).reshape(-1, ndim)


def mknhood2d(radius: float = 1) -> torch.Tensor:
    """Negative-half 2D neighbourhood within ``radius`` (no self edge), nearest first.

    ``mknhood2d(1)`` is ``[[-1, 0], [0, -1]]``.
    """
    if not radius >= 1:
        raise ValueError(f"mknhood2d: radius must be >= 1, got {radius!r}")
    return _mknhood(2, radius)


def mknhood3d(radius: float = 1) -> torch.Tensor:
    """Negative-half 3D neighbourhood within ``radius`` (no self edge), nearest first.

    ``mknhood3d(1)`` is ``[[-1, 0, 0], [0, -1, 0], [0, 0, -1]]``.
    """
    if not radius >= 1:
        raise ValueError(f"mknhood3d: radius must be >= 1, got {radius!r}")
    return _mknhood(3, radius)


Rows = Tuple[Tuple[int, ...], ...]


def _as_nhood(fn: str, nhood: NhoodLike) -> Rows:
    """Validated nhood as a tuple of rows of Python ints (constants under torch.compile)."""
    if isinstance(nhood, tuple) and all(isinstance(r, tuple) and all(type(o) is int for o in r) for r in nhood):
        rows = nhood  # already validated
    else:
        try:
            t = torch.as_tensor(nhood)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{fn}: nhood must be a list of integer offsets, got {nhood!r}") from exc
        if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{fn}: nhood must hold integers, got dtype {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{fn}: nhood must be [C, ndim] with ndim 1 to 3, got shape {tuple(t.shape)}")
        rows = tuple(tuple(int(o) for o in r) for r in t.tolist())
    if len(rows) < 1 or not 1 <= len(rows[0]) <= 3 or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"{fn}: nhood must be [C, ndim] with C >= 1 and ndim 1 to 3, got {rows!r}")
    return rows


def _flat(rows: Rows) -> list:
    return [o for r in rows for o in r]


def _default_nhood(ndim: int) -> Rows:
    return tuple(tuple(int(i == j) for j in range(ndim)) for i in range(ndim))


def _split_batch(fn: str, name: str, t: torch.Tensor, ndim: int) -> Tuple[torch.Tensor, bool]:
    """[C, *spatial] -> [1, C, *spatial]; returns (batched tensor, was_batched)."""
    if t.dim() == ndim + 2:
        return t, True
    if t.dim() == ndim + 1:
        return t.unsqueeze(0), False
    raise ValueError(
        f"{fn}: {name} must be [B, C, *spatial] or [C, *spatial] with {ndim} spatial dims "
        f"(the nhood width), got shape {tuple(t.shape)}"
    )


def seg_to_affgraph(seg: torch.Tensor, nhood: NhoodLike) -> torch.Tensor:
    """Ground-truth affinities of a segmentation.

    An edge's affinity is 1 iff it is valid and both ends carry the same non-zero label.

    Args:
        seg: integer labels ``[*spatial]`` or ``[B, *spatial]``, any device.
        nhood: ``[C, ndim]`` offsets, ``ndim = len(spatial)``.

    Returns:
        float32 affinities ``[C, *spatial]`` or ``[B, C, *spatial]`` on seg's device.
    """
    fn = "seg_to_affgraph"
    _checks.check_label_tensor(fn, "seg", seg)
    nh = _as_nhood(fn, nhood)
    ndim = len(nh[0])
    if seg.dim() not in (ndim, ndim + 1):
        raise ValueError(f"{fn}: seg must be [*spatial] or [B, *spatial] with {ndim} spatial dims, got {tuple(seg.shape)}")
    batched = seg.dim() == ndim + 1
    s = seg if batched else seg.unsqueeze(0)
    spatial = s.shape[1:]
    out = torch.zeros((s.shape[0], len(nh)) + tuple(spatial), dtype=torch.float32, device=seg.device)
    for c, off in enumerate(nh):
        src = [slice(None)]
        dst = [slice(None)]
        if any(abs(o) >= n for o, n in zip(off, spatial)):
            continue  # no valid edge
        for o, n in zip(off, spatial):
            src.append(slice(max(0, -o), min(n, n - o)))
            dst.append(slice(max(0, o), min(n, n + o)))
        a, b = s[tuple(src)], s[tuple(dst)]
        out[(slice(None), c) + tuple(src[1:])] = ((a == b) & (a > 0)).to(torch.float32)
    return out if batched else out[0]


def affgraph_to_seg(affs: torch.Tensor, nhood: NhoodLike, threshold: float = 0.5) -> torch.Tensor:
    """Connected components of the graph whose edges have ``affs > threshold``.

    Args:
        affs: affinities ``[C, *spatial]`` or ``[B, C, *spatial]`` (float, bool or integer).
        nhood: ``[C, ndim]`` offsets.
        threshold: an edge joins its voxels when its affinity is strictly greater.

    Returns:
        int64 labels ``[*spatial]`` / ``[B, *spatial]`` on affs' device: every voxel labelled,
        components numbered 1..n per sample in raster order of their first voxel.

    Example:
        >>> seg = affgraph_to_seg(pred_affs, mknhood3d(1), threshold=0.5)
    """
    fn = "affgraph_to_seg"
    _checks.check_tensor(fn, "affs", affs)
    nh = _as_nhood(fn, nhood)
    a, batched = _split_batch(fn, "affs", affs, len(nh[0]))
    if a.shape[1] != len(nh):
        raise ValueError(f"{fn}: affs has {a.shape[1]} channels but nhood has {len(nh)} rows")
    labels = ops.connected_components(a.detach(), _flat(nh), float(threshold), False)
    return labels if batched else labels[0]


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def _prepare_seg(fn: str, gt_seg: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """gt_seg as [B, *spatial] matching pred [B, C, *spatial]."""
    _checks.check_label_tensor(fn, "gt_seg", gt_seg)
    spatial = tuple(pred.shape[2:])
    s = gt_seg
    if s.dim() == pred.dim() and s.shape[1] == 1:
        s = s.squeeze(1)
    if s.dim() != pred.dim() - 1 or tuple(s.shape[1:]) != spatial or s.shape[0] != pred.shape[0]:
        raise ValueError(
            f"{fn}: gt_seg must be [B, *spatial] or [B, 1, *spatial] matching pred {tuple(pred.shape)}, "
            f"got {tuple(gt_seg.shape)}"
        )
    return s.to(pred.device)


def _prepare_mask(fn: str, mask: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    _checks.check_tensor(fn, "mask", mask)
    m = mask
    if m.dim() == pred.dim() - 1 and m.shape[0] == pred.shape[0]:
        m = m.unsqueeze(1)  # [B, *spatial] -> [B, 1, *spatial]
    try:
        return torch.broadcast_to(m, pred.shape).to(pred.device)
    except RuntimeError as exc:
        raise ValueError(
            f"{fn}: mask must be broadcastable to pred {tuple(pred.shape)}, got {tuple(mask.shape)}"
        ) from exc


def malis_weights(
    pred_affs: torch.Tensor,
    gt_seg: torch.Tensor,
    nhood: NhoodLike,
    *,
    gt_affs: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    constrained: bool = True,
    normalize: bool = True,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """MALIS edge weights from one Kruskal sweep per sample.

    Constrained (Funke et al. 2018, the default): GT-1 edges by predicted affinity descending,
    then GT-0 edges by predicted affinity descending, ties by flat edge index (C-order over
    ``[C, *spatial]``). A merging GT-1 edge counts the same-label pairs it joins, a merging GT-0
    edge the different-label pairs (labelled voxels only). ``constrained=False`` is the original
    MALIS (Turaga et al. 2009): one sweep on the prediction alone, both counts on any edge. The
    order uses the prediction rounded to float32.

    Args:
        pred_affs: predicted affinities ``[B, C, *spatial]`` or ``[C, *spatial]`` (2D or 3D),
            float16 / bfloat16 / float32 / float64, CPU or CUDA. Must be finite.
        gt_seg: integer labels >= 0, ``[B, *spatial]`` or ``[B, 1, *spatial]`` (or unbatched).
        nhood: ``[C, ndim]`` offsets (negative, positive or long-range).
        gt_affs: ground-truth affinities like pred (``> 0.5`` is 1); default: from gt_seg.
        mask: broadcastable to pred; 0 excludes an edge. Excluded edges stay in the sweep (the
            topology never changes) but get weight 0 and are left out of the totals.
        constrained: constrained (default) or original MALIS.
        normalize: divide positive and negative counts by their own per-sample totals (a zero
            total stays zero) and return float32 weights; else exact int64 ``(pos, neg)`` counts.

    Returns:
        float32 weights shaped like pred, or ``(pos, neg)`` int64 counts; on pred's device; no
        gradient flows through them.

    Raises:
        ValueError: shapes, nhood width or channel count that do not match, negative labels, or
            non-finite predictions (the message names the value).
        TypeError: non-float predictions or non-integer labels.

    Example:
        >>> w = malis_weights(torch.sigmoid(logits), seg, mknhood3d(1))
    """
    fn = "malis_weights"
    _checks.check_float_tensor(fn, "pred_affs", pred_affs)
    nh = _as_nhood(fn, nhood)
    pred, batched = _split_batch(fn, "pred_affs", pred_affs, len(nh[0]))
    if pred.shape[1] != len(nh):
        raise ValueError(f"{fn}: pred_affs has {pred.shape[1]} channels but nhood has {len(nh)} rows")
    seg = gt_seg if batched or not isinstance(gt_seg, torch.Tensor) else gt_seg.unsqueeze(0)
    seg = _prepare_seg(fn, seg, pred)
    gt = None
    if gt_affs is not None:
        _checks.check_tensor(fn, "gt_affs", gt_affs)
        gt = gt_affs if batched else gt_affs.unsqueeze(0)
        if gt.shape != pred.shape:
            raise ValueError(f"{fn}: gt_affs must have pred's shape {tuple(pred_affs.shape)}, got {tuple(gt_affs.shape)}")
        gt = gt.detach().to(pred.device)
    m = None
    if mask is not None:
        m = _prepare_mask(fn, mask if batched else mask.unsqueeze(0), pred)
    args = (pred.detach(), seg, gt, m, _flat(nh), bool(constrained))
    if normalize:
        w = ops.malis_weights(*args)
        return w if batched else w[0]
    pos, neg = ops.malis_counts(*args)
    return (pos, neg) if batched else (pos[0], neg[0])


def release_malis_workspace() -> int:
    """Frees the scratch memory MALIS keeps per thread between calls.

    :func:`malis_weights` (and so :class:`MalisLoss`) keeps its sort and union-find buffers for the
    next call, about 80 bytes per voxel (3 edges per voxel) in every thread that ran a sample, so
    a training loop pays no page faults. Call this after training to give that memory back; the
    next MALIS call allocates again. Waits for running MALIS calls to finish.

    Returns:
        The number of bytes freed.
    """
    return int(ops.release_malis_workspace())


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------
def _crop_sizes(fn: str, crop, ndim: Optional[int] = None) -> Optional[Tuple[int, ...]]:
    """Validates malis_crop_size (an int >= 1 or one per spatial dim); with ndim, one per dim."""
    if crop is None:
        return None
    many = isinstance(crop, (list, tuple))
    sizes = [_checks.check_int(fn, "malis_crop_size", k, minimum=1) for k in (crop if many else [crop])]
    if many and (len(sizes) != ndim if ndim is not None else not 1 <= len(sizes) <= 3):
        raise ValueError(f"{fn}: malis_crop_size must be an int or one int per spatial dim, got {crop!r}")
    return tuple(sizes * (ndim if not many and ndim is not None else 1))


def malis_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    nhood: Optional[NhoodLike] = None,
    mask: Optional[torch.Tensor] = None,
    gt_seg: Optional[torch.Tensor] = None,
    *,
    sigmoid: bool = True,
    reduction: str = "sum",
    malis_crop_size: Optional[Union[int, Sequence[int]]] = None,
    constrained: bool = True,
) -> torch.Tensor:
    """MALIS loss: per sample ``sum_e w_e (a_e - t_e)^2`` with ``a = sigmoid(pred)``.

    See :class:`MalisLoss` for the arguments. ``nhood=None`` uses ``[[1,0,0],[0,1,0],[0,0,1]]``
    (``[[1,0],[0,1]]`` in 2D), the convention of PyTorch Connectomics configs.
    """
    fn = "MalisLoss"
    _checks.check_float_tensor(fn, "pred", pred)
    _checks.check_tensor(fn, "target", target)
    _checks.check_choice(fn, "reduction", reduction, MALIS_REDUCTIONS)
    if not 4 <= pred.dim() <= 5:
        raise ValueError(f"{fn}: pred must be [B, C, H, W] or [B, C, D, H, W], got shape {tuple(pred.shape)}")
    ndim = pred.dim() - 2
    nh = _default_nhood(ndim) if nhood is None else _as_nhood(fn, nhood)
    if len(nh[0]) != ndim:
        raise ValueError(f"{fn}: nhood rows must have {ndim} offsets (pred has {ndim} spatial dims), got shape {(len(nh), len(nh[0]))}")
    if pred.shape[1] != len(nh):
        raise ValueError(f"{fn}: pred has {pred.shape[1]} channels but nhood has {len(nh)} rows (C must be len(nhood))")
    if target.shape != pred.shape:
        raise ValueError(f"{fn}: target must have pred's shape {tuple(pred.shape)}, got {tuple(target.shape)}")
    _checks.check_same_device(fn, "target", target, "pred", pred)
    crop = _crop_sizes(fn, malis_crop_size, ndim)
    seg = _prepare_seg(fn, gt_seg, pred) if gt_seg is not None else None
    m = _prepare_mask(fn, mask, pred) if mask is not None else None

    a = torch.sigmoid(pred) if sigmoid else pred
    t = target.to(a.dtype) if target.dtype == torch.bool else target
    region = None
    if crop is not None:
        spatial = pred.shape[2:]
        sizes = [min(k, n) for k, n in zip(crop, spatial)]
        starts = [int(torch.randint(0, n - k + 1, ()).item()) for k, n in zip(sizes, spatial)]
        region = tuple(slice(s, s + k) for s, k in zip(starts, sizes))
        index = (slice(None), slice(None)) + region
        a, t = a[index], t[index]
        m = m[index] if m is not None else None
        seg = seg[(slice(None),) + region] if seg is not None else None

    gt_affs = t > 0.5
    if seg is None:
        seg = ops.connected_components(gt_affs, _flat(nh), 0.5, True)
    w = ops.malis_weights(a.detach(), seg, gt_affs, m, _flat(nh), bool(constrained))
    loss_map = w * (a - t) ** 2
    if reduction == "none":
        if region is not None:  # back to pred's shape, zero outside the crop
            pad = []
            for r, n in zip(reversed(region), reversed(pred.shape[2:])):
                pad += [r.start, n - r.stop]
            loss_map = F.pad(loss_map, pad)
        return loss_map
    total = loss_map.sum()
    return total if reduction == "sum" else total / max(pred.shape[0], 1)


class MalisLoss(nn.Module):
    """Constrained MALIS loss on affinity logits (Turaga et al. 2009; Funke et al. 2018).

    Per sample ``sum_e w_e (a_e - t_e)^2`` with ``a = sigmoid(pred)`` and ``w`` the normalised
    MALIS weights of ``a`` (constants: no gradient flows through them). Ground-truth affinities
    are ``target > 0.5``; the segmentation is ``gt_seg`` when given, otherwise the connected
    components of ``target > 0.5`` over ``nhood`` with singleton voxels as background.

    Args:
        nhood: ``[C, ndim]`` offsets; ``None``: ``[[1,0,0],[0,1,0],[0,0,1]]`` (2D ``[[1,0],[0,1]]``).
        sigmoid: apply the sigmoid to ``pred`` (``False``: pred already holds affinities).
        reduction: ``"sum"`` over the batch (as PyTorch Connectomics), ``"mean"`` over samples,
            or ``"none"`` for the elementwise map ``w (a - t)^2`` (pred's shape).
        malis_crop_size: an int or one int per spatial dim: one random crop per call, origin
            drawn from torch's RNG and shared across the batch, applied to pred, target, mask and
            gt_seg (a crop larger than the volume is clamped). ``None``: the full volume.
        constrained: constrained MALIS (default) or the original one.

    Shape:
        pred, target ``[B, C, *spatial]`` (2D or 3D, ``C = len(nhood)``); mask broadcastable to
        pred (0 = excluded); gt_seg ``[B, *spatial]`` or ``[B, 1, *spatial]``.

    Note:
        Under ``torch.compile`` the loss traces into one graph (``fullgraph=True``) when
        ``malis_crop_size`` is ``None``; drawing the crop origin reads a random number back to
        Python, which is a graph break.

    Example:
        >>> loss_fn = MalisLoss(malis_crop_size=64)
        >>> loss = loss_fn(logits, gt_affs, gt_seg=seg)
    """

    def __init__(
        self,
        nhood: Optional[NhoodLike] = None,
        *,
        sigmoid: bool = True,
        reduction: str = "sum",
        malis_crop_size: Optional[Union[int, Sequence[int]]] = None,
        constrained: bool = True,
    ) -> None:
        super().__init__()
        fn = "MalisLoss"
        _checks.check_choice(fn, "reduction", reduction, MALIS_REDUCTIONS)
        _crop_sizes(fn, malis_crop_size)
        self.nhood = None if nhood is None else _as_nhood(fn, nhood)
        self.sigmoid = bool(sigmoid)
        self.reduction = reduction
        self.malis_crop_size = malis_crop_size
        self.constrained = bool(constrained)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        gt_seg: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return malis_loss(
            pred,
            target,
            self.nhood,
            mask,
            gt_seg,
            sigmoid=self.sigmoid,
            reduction=self.reduction,
            malis_crop_size=self.malis_crop_size,
            constrained=self.constrained,
        )

    def extra_repr(self) -> str:
        nh = None if self.nhood is None else [list(r) for r in self.nhood]
        return (
            f"nhood={nh}, sigmoid={self.sigmoid}, reduction={self.reduction!r}, "
            f"malis_crop_size={self.malis_crop_size}, constrained={self.constrained}"
        )


# ---------------------------------------------------------------------------------------------
# The older API (malis package style)
# ---------------------------------------------------------------------------------------------
def _old_api_loss(fn: str, seg_gt: torch.Tensor, pred_aff: torch.Tensor, nhood: NhoodLike, margin: float,
                  pos_loss_weight: float) -> torch.Tensor:
    _checks.check_float_tensor(fn, "pred_aff", pred_aff)
    nh = _as_nhood(fn, nhood)
    if pred_aff.dim() != len(nh[0]) + 2 or pred_aff.shape[1] != len(nh):
        raise ValueError(
            f"{fn}: pred_aff must be [B, {len(nh)}, *spatial] with {len(nh[0])} spatial dims, got {tuple(pred_aff.shape)}"
        )
    seg = _prepare_seg(fn, seg_gt, pred_aff)
    pos, neg = ops.malis_counts(pred_aff.detach(), seg, None, None, _flat(nh), True)
    # Pair counts exceed float16's range: compute in float32 (float64 for double predictions).
    a = pred_aff.to(torch.float64 if pred_aff.dtype == torch.float64 else torch.float32)
    pos_loss = (F.relu(1 - a - margin) ** 2 * pos.to(a.dtype)).sum() * pos_loss_weight
    neg_loss = (F.relu(a - margin) ** 2 * neg.to(a.dtype)).sum() * (1 - pos_loss_weight)
    return 2 * (pos_loss + neg_loss)


def malis_loss2d(seg_gt: torch.Tensor, pred_aff: torch.Tensor, margin: float = 0.3, pos_loss_weight: float = 0.3):
    """The ``malis`` package's 2D loss, batched: ``seg_gt`` ``[B, 1, H, W]``, ``pred_aff``
    ``[B, 2, H, W]`` affinities in [0, 1] over ``mknhood2d(1)``. Uses the raw constrained pair
    counts ``pos, neg`` and ``2 (w_p sum pos relu(1-a-m)^2 + (1-w_p) sum neg relu(a-m)^2)``,
    computed in float32 (float64 for double inputs), as the counts overflow float16."""
    return _old_api_loss("malis_loss2d", seg_gt, pred_aff, mknhood2d(1), margin, pos_loss_weight)


def malis_loss3d(seg_gt: torch.Tensor, pred_aff: torch.Tensor, margin: float = 0.3, pos_loss_weight: float = 0.3):
    """The ``malis`` package's 3D loss, batched (any batch size): ``seg_gt`` ``[B, 1, D, H, W]``,
    ``pred_aff`` ``[B, 3, D, H, W]`` affinities in [0, 1] over ``mknhood3d(1)``; see
    :func:`malis_loss2d` for the formula."""
    return _old_api_loss("malis_loss3d", seg_gt, pred_aff, mknhood3d(1), margin, pos_loss_weight)
