"""MALIS: weights, the loss module, and affinity-graph utilities.

Conventions (SPEC §3): affinity channel ``c`` at voxel ``p`` is the edge ``(p, p + nhood[c])``;
edges whose partner lies outside the volume are invalid and get weight 0. Label 0 is background:
part of the graph, never part of a counted pair, and every edge touching it has ground-truth
affinity 0.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from ._ops import ops
from ._plain import to_plain

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

NhoodLike = Union[Sequence[Sequence[int]], torch.Tensor, np.ndarray]
LabelsLike = Union[torch.Tensor, np.ndarray]
MALIS_REDUCTIONS = ("none", "mean", "batchmean", "sum")
NONFINITE_MODES = ("raise", "propagate")
# mknhood2d / mknhood3d enumerate (2r+1)^ndim candidate offsets, and every offset they return is
# one affinity channel: mknhood3d(16) already has 8,538. A larger radius is a mistake, not a
# neighbourhood, and would run for hours.
MAX_NHOOD_RADIUS = 16


# ---------------------------------------------------------------------------------------------
# Neighbourhoods and affinity graphs
# ---------------------------------------------------------------------------------------------
def _check_radius(fn: str, radius: Any) -> float:
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real):
        raise TypeError(f"{fn}: radius must be a number >= 1, got {radius!r}")
    if not 1 <= radius <= MAX_NHOOD_RADIUS:  # also rejects NaN
        raise ValueError(
            f"{fn}: radius must be a number in [1, {MAX_NHOOD_RADIUS}] (each offset is one affinity "
            f"channel; mknhood3d({MAX_NHOOD_RADIUS}) already has 8,538), got {radius!r}"
        )
    return float(radius)


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

    Raises:
        TypeError: when radius is not a number.
        ValueError: when radius is outside ``[1, 16]`` or NaN.
    """
    return _mknhood(2, _check_radius("mknhood2d", radius))


def mknhood3d(radius: float = 1) -> torch.Tensor:
    """Negative-half 3D neighbourhood within ``radius`` (no self edge), nearest first.

    ``mknhood3d(1)`` is ``[[-1, 0, 0], [0, -1, 0], [0, 0, -1]]``.

    Raises:
        TypeError: when radius is not a number.
        ValueError: when radius is outside ``[1, 16]`` or NaN.
    """
    return _mknhood(3, _check_radius("mknhood3d", radius))


Rows = Tuple[Tuple[int, ...], ...]


def _as_nhood(fn: str, nhood: NhoodLike) -> Rows:
    """Validated nhood as a tuple of rows of Python ints (constants under torch.compile)."""
    if isinstance(nhood, tuple) and all(isinstance(r, tuple) and all(type(o) is int for o in r) for r in nhood):
        rows = nhood  # already validated
    else:
        nhood = to_plain(nhood)
        try:
            t = torch.as_tensor(nhood)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{fn}: nhood must be a list of integer offsets, got {nhood!r}") from exc
        if t.numel() == 0:
            raise ValueError(f"{fn}: nhood must hold at least one offset row ([C, ndim], C >= 1, ndim 1 to 3), got {nhood!r}")
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


def _labels(fn: str, name: str, seg: LabelsLike, *, op_checks_sign: bool = False) -> torch.Tensor:
    """Segmentation labels (a tensor or numpy array of any integer type) as a tensor the MALIS
    ops read: unsigned types wider than uint8 become int64. Rejects labels < 0 and uint64 labels
    beyond int64, naming the value.

    ``op_checks_sign``: the labels go to a MALIS op, which checks the sign itself; then labels on
    a GPU are not read here (that would make the host wait for the GPU; the op checks them after
    its one trip to the host), except uint64 ones, whose wrap-around only this check can name."""
    if isinstance(seg, np.ndarray):
        seg = torch.from_numpy(np.require(seg, requirements=("C", "W")))  # torch needs writable, no negative strides
    _checks.check_label_tensor(fn, name, seg, _checks.SEG_DTYPES)
    unsigned64 = seg.dtype == torch.uint64
    if seg.dtype in (torch.uint16, torch.uint32, torch.uint64):
        seg = seg.to(torch.int64)  # exact, except uint64 >= 2**63, which wraps to negative (checked next)
    read_here = seg.device.type == "cpu" or unsigned64 or not op_checks_sign
    # A data check (a host sync on a GPU), skipped while torch.compile traces; the kernel checks the sign too.
    if read_here and seg.numel() and seg.device.type != "meta" and not torch.compiler.is_compiling():
        lowest = int(seg.min())
        if lowest < 0 and unsigned64:
            raise ValueError(f"{fn}: {name} labels must fit in int64 (< 2**63), got {lowest + 2**64}")
        if lowest < 0:
            raise ValueError(f"{fn}: {name} labels must be >= 0, got {lowest}")
    return seg


def seg_to_affgraph(seg: LabelsLike, nhood: NhoodLike) -> torch.Tensor:
    """Ground-truth affinities of a segmentation.

    An edge's affinity is 1 iff it is valid and both ends carry the same non-zero label.

    Args:
        seg: integer labels >= 0 ``[*spatial]`` or ``[B, *spatial]`` (a tensor of any integer
            dtype, uint64 included, or a numpy array), any device.
        nhood: ``[C, ndim]`` offsets, ``ndim = len(spatial)``.

    Returns:
        float32 affinities ``[C, *spatial]`` or ``[B, C, *spatial]`` on seg's device.

    Raises:
        ValueError: for negative labels (as :func:`malis_weights`), a seg whose rank does not
            match the nhood width, or a malformed nhood.
        TypeError: for non-integer labels.
    """
    fn = "seg_to_affgraph"
    seg = _labels(fn, "seg", seg)
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

    Raises:
        TypeError: for complex affinities or a threshold that is not a number.
        ValueError: for a NaN threshold, or affs / nhood that do not match.

    Example:
        >>> seg = affgraph_to_seg(pred_affs, mknhood3d(1), threshold=0.5)
    """
    fn = "affgraph_to_seg"
    _checks.check_real_tensor(fn, "affs", affs)
    threshold = _checks.check_number(fn, "threshold", threshold, allow_inf=True)
    nh = _as_nhood(fn, nhood)
    a, batched = _split_batch(fn, "affs", affs, len(nh[0]))
    if a.shape[1] != len(nh):
        raise ValueError(f"{fn}: affs has {a.shape[1]} channels but nhood has {len(nh)} rows")
    labels = ops.connected_components(a.detach(), _flat(nh), threshold, False, 0, fn)
    return labels if batched else labels[0]


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def _num_threads(fn: str, name: str, value) -> int:
    """Validated thread count for the ops: an int >= 1, or None -> 0 (torch.get_num_threads()).

    Raises ValueError for any bad value (PyTorch Connectomics' tests expect ValueError for
    ``malis_num_workers`` of 0, -1, 1.5, True, "2" and [2]).
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{fn}: {name} must be an int >= 1 or None, got {value!r}")
    return int(value)


def _op_device(t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """t on the device the MALIS ops read it from: pred's, except that a CPU tensor beside a CUDA
    pred stays on the CPU (the ops compute on the host: moving it to the GPU would only bring it
    back)."""
    return t if (t.device.type == "cpu" and pred.device.type == "cuda") else t.to(pred.device)


def _prepare_seg(fn: str, name: str, gt_seg: LabelsLike, pred: torch.Tensor) -> torch.Tensor:
    """gt_seg as [B, *spatial] matching pred [B, C, *spatial], for the MALIS ops (_op_device).

    Also takes [B, 1, *spatial], and [*spatial] when B is 1 (as PyTorch Connectomics does)."""
    s = _labels(fn, name, gt_seg, op_checks_sign=True)
    spatial = tuple(pred.shape[2:])
    if s.dim() == pred.dim() and s.shape[1] == 1:
        s = s.squeeze(1)
    elif s.dim() == pred.dim() - 2 and pred.shape[0] == 1:
        s = s.unsqueeze(0)
    if s.dim() != pred.dim() - 1 or tuple(s.shape[1:]) != spatial or s.shape[0] != pred.shape[0]:
        raise ValueError(
            f"{fn}: {name} must be [B, *spatial] or [B, 1, *spatial] matching pred {tuple(pred.shape)}, "
            f"got {tuple(gt_seg.shape)}"
        )
    _checks.check_has_data(fn, name, s, "pred", pred)
    return _op_device(s, pred)


def _prepare_mask(fn: str, mask: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    _checks.check_real_tensor(fn, "mask", mask)
    _checks.check_has_data(fn, "mask", mask, "pred", pred)
    m = mask
    if m.dim() == pred.dim() - 1 and m.shape[0] == pred.shape[0]:
        m = m.unsqueeze(1)  # [B, *spatial] -> [B, 1, *spatial]
    try:
        return _op_device(torch.broadcast_to(m, pred.shape), pred)
    except RuntimeError as exc:
        raise ValueError(
            f"{fn}: mask must be broadcastable to pred {tuple(pred.shape)}, got {tuple(mask.shape)}"
        ) from exc


def malis_weights(
    pred_affs: torch.Tensor,
    gt_seg: Optional[LabelsLike],
    nhood: NhoodLike,
    *,
    gt_affs: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    constrained: bool = True,
    normalize: bool = True,
    constrain_masked: bool = False,
    num_threads: Optional[int] = None,
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
        gt_seg: integer labels >= 0, ``[B, *spatial]`` or ``[B, 1, *spatial]`` (or unbatched); a
            tensor of any integer dtype (uint64 included, values below 2**63) or a numpy array.
            ``None``: the connected components of ``gt_affs > 0.5`` over nhood, singleton voxels
            as background (what :class:`MalisLoss` does without gt_seg); needs gt_affs.
        nhood: ``[C, ndim]`` offsets (negative, positive or long-range).
        gt_affs: ground-truth affinities like pred (``> 0.5`` is 1); default: from gt_seg.
        mask: broadcastable to pred; 0 excludes an edge. PyTorch Connectomics' rule: the ground
            truth constrains only edges inside the mask. Excluded edges keep their predicted
            place in both constrained passes (in the positive pass only GT-0 edges inside the
            mask go last, in the negative pass only GT-1 edges inside the mask go first), get
            weight 0 and are left out of the totals. With ``constrained=False`` there is no
            constraint to lift: the mask only zeroes weights (and totals).
        constrained: constrained (default) or original MALIS.
        normalize: divide positive and negative counts by their own per-sample totals (a zero
            total stays zero) and return float32 weights; else exact int64 ``(pos, neg)`` counts.
        constrain_masked: the earlier mask rule: excluded edges stay constrained (one sweep as
            without a mask) and only their weights are zeroed.
        num_threads: the most threads this call may use (samples run in parallel), an int >= 1;
            ``None``: ``torch.get_num_threads()``. Capped by torch's intra-op thread pool. The
            result does not depend on it.

    Returns:
        float32 weights shaped like pred, or ``(pos, neg)`` int64 counts; on pred's device; no
        gradient flows through them.

    Raises:
        ValueError: shapes, nhood width or channel count that do not match, negative labels, or
            non-finite predictions (the message names the value).
        TypeError: non-float predictions, non-integer labels or complex gt_affs.

    Note:
        On CUDA the sweep runs on the host: one call copies its inputs to pinned host memory in
        one trip (labels as int32 where they fit, gt_affs and mask as one byte per edge), waits
        for the GPU once, and copies the weights back without waiting, on the current stream.
        gt_seg, gt_affs and mask on the CPU beside a CUDA pred are read where they are. Labels
        above 2**31 - 1 cross a second time (as int64); uint64 labels on the GPU are range-checked
        first (one more wait).

    Example:
        >>> w = malis_weights(torch.sigmoid(logits), seg, mknhood3d(1))
    """
    fn = "malis_weights"
    threads = _num_threads(fn, "num_threads", num_threads)
    _checks.check_float_tensor(fn, "pred_affs", pred_affs)
    nh = _as_nhood(fn, nhood)
    pred, batched = _split_batch(fn, "pred_affs", pred_affs, len(nh[0]))
    if pred.shape[1] != len(nh):
        raise ValueError(f"{fn}: pred_affs has {pred.shape[1]} channels but nhood has {len(nh)} rows")
    if gt_seg is None and gt_affs is None:
        raise ValueError(f"{fn}: gt_seg is None, so gt_affs must be given (its connected components are the labels)")
    # an unbatched seg fits the batch of one
    seg = None if gt_seg is None else _prepare_seg(fn, "gt_seg", gt_seg, pred)
    gt = None
    if gt_affs is not None:
        _checks.check_real_tensor(fn, "gt_affs", gt_affs)
        gt = gt_affs if batched else gt_affs.unsqueeze(0)
        if gt.shape != pred.shape:
            raise ValueError(f"{fn}: gt_affs must have pred's shape {tuple(pred_affs.shape)}, got {tuple(gt_affs.shape)}")
        _checks.check_has_data(fn, "gt_affs", gt, "pred_affs", pred)
        gt = _op_device(gt.detach(), pred)
    m = None
    if mask is not None:
        m = _prepare_mask(fn, mask if batched else mask.unsqueeze(0), pred)
    args = (pred.detach(), seg, gt, m, _flat(nh), bool(constrained), bool(constrain_masked), threads, fn, "pred_affs",
            "gt_seg")
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
def _crop_sizes(fn: str, crop: Any, ndim: Optional[int] = None) -> Optional[Union[int, Tuple[int, ...]]]:
    """Validated malis_crop_size: an int >= 1, or a tuple of one int >= 1 per spatial dim (1 to 3
    dims, ``ndim`` when known). Wrong types raise an error that is both a TypeError and a
    ValueError (PyTorch Connectomics raises ValueError for every bad value)."""
    crop = to_plain(crop)
    if crop is None:
        return None
    if isinstance(crop, (np.ndarray, torch.Tensor)):
        crop = crop.tolist()
    many = isinstance(crop, (list, tuple))
    for k in crop if many else [crop]:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise _checks.ArgumentTypeError(
                f"{fn}: malis_crop_size must be an int or one int per spatial dim, got {crop!r}"
            )
        if k < 1:
            raise ValueError(f"{fn}: malis_crop_size must hold integers >= 1, got {crop!r}")
    if many and (len(crop) != ndim if ndim is not None else not 1 <= len(crop) <= 3):
        dims = f"{ndim} spatial dims" if ndim is not None else "1 to 3 spatial dims"
        raise ValueError(f"{fn}: malis_crop_size must be an int or one int per spatial dim ({dims}), got {crop!r}")
    return tuple(int(k) for k in crop) if many else int(crop)


def _random_crop(sizes: Sequence[int], tensors: Sequence[Optional[torch.Tensor]]) -> list:
    """One random window of ``sizes`` (clamped to the volume) cut from every tensor's trailing
    spatial dims; the origin comes from torch's global RNG, one draw per dim, shared by all.

    Eagerly the window is a slice (a view). While torch.compile traces, a slice start read back
    from a tensor would be a data-dependent shape (a graph break, an internal error under
    fullgraph=True), so there the window is gathered by advanced indexing with the drawn index
    ranges, which keeps every shape static; it costs a copy (about 10x a slice), so only there.
    """
    spatial = tensors[0].shape[-len(sizes):]
    sizes = [min(k, n) for k, n in zip(sizes, spatial)]
    starts = [torch.randint(0, n - k + 1, ()) for k, n in zip(sizes, spatial)]
    if torch.compiler.is_compiling():
        ranges = [s + torch.arange(k) for s, k in zip(starts, sizes)]
        grids = torch.meshgrid(*ranges, indexing="ij")

        def cut(t: torch.Tensor) -> torch.Tensor:
            lead = (slice(None),) * (t.dim() - len(sizes))
            return t[lead + tuple(g.to(t.device) for g in grids)]
    else:
        window = tuple(slice(int(s), int(s) + k) for s, k in zip(starts, sizes))

        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[(slice(None),) * (t.dim() - len(sizes)) + window]

    return [None if t is None else cut(t) for t in tensors]


def _reduce(loss_map: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss_map
    total = loss_map.sum()
    if reduction == "sum":
        return total
    count = loss_map.numel() if reduction == "mean" else loss_map.shape[0]
    return total / max(count, 1)  # an empty batch or volume gives 0, not NaN


def malis_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    nhood: Optional[NhoodLike] = None,
    mask: Optional[torch.Tensor] = None,
    gt_seg: Optional[LabelsLike] = None,
    *,
    sigmoid: bool = True,
    reduction: str = "sum",
    malis_crop_size: Optional[Union[int, Sequence[int]]] = None,
    constrained: bool = True,
    nonfinite: str = "raise",
    constrain_masked: bool = False,
    malis_num_workers: Optional[int] = None,
) -> torch.Tensor:
    """MALIS loss: per sample ``sum_e w_e (a_e - t_e)^2`` with ``a = sigmoid(pred)``.

    See :class:`MalisLoss` for the arguments. ``nhood=None`` uses ``[[1,0,0],[0,1,0],[0,0,1]]``
    (``[[1,0],[0,1]]`` in 2D), the convention of PyTorch Connectomics configs.
    """
    fn = "MalisLoss"
    threads = _num_threads(fn, "malis_num_workers", malis_num_workers)
    _checks.check_float_tensor(fn, "pred", pred)
    _checks.check_real_tensor(fn, "target", target)
    _checks.check_choice(fn, "reduction", reduction, MALIS_REDUCTIONS)
    _checks.check_choice(fn, "nonfinite", nonfinite, NONFINITE_MODES)
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
    seg = _prepare_seg(fn, "gt_seg", gt_seg, pred) if gt_seg is not None else None
    m = _prepare_mask(fn, mask, pred) if mask is not None else None

    a = torch.sigmoid(pred) if sigmoid else pred
    t = target.to(a.dtype) if target.dtype == torch.bool else target
    if crop is not None:
        sizes = crop if isinstance(crop, tuple) else (crop,) * ndim
        a, t, m, seg = _random_crop(sizes, [a, t, m, seg])

    # Without gt_seg the op labels the connected components of gt_affs itself (on CUDA in the same
    # trip to the host as the sweep).
    gt_affs = t > 0.5
    swept = a.detach()
    if nonfinite == "propagate":
        # The sweep needs an order, so it sees non-finite predictions as 0; the loss map below
        # still reads them, so the loss and the gradient come out NaN / inf (a GradScaler then
        # skips the step).
        swept = torch.where(torch.isfinite(swept), swept, torch.zeros_like(swept))
    w = ops.malis_weights(swept, seg, gt_affs, m, _flat(nh), bool(constrained), bool(constrain_masked), threads, fn,
                          "pred", "gt_seg")
    return _reduce(w * (a - t) ** 2, reduction)


class MalisLoss(nn.Module):
    """Constrained MALIS loss on affinity logits (Turaga et al. 2009; Funke et al. 2018).

    Per sample ``sum_e w_e (a_e - t_e)^2`` with ``a = sigmoid(pred)`` and ``w`` the normalised
    MALIS weights of ``a`` (constants: no gradient flows through them). Ground-truth affinities
    are ``target > 0.5``; the segmentation is ``gt_seg`` when given, otherwise the connected
    components of ``target > 0.5`` over ``nhood`` with singleton voxels as background.

    A drop-in for PyTorch Connectomics' ``MalisLoss``: the same arguments (OmegaConf values
    included), the same reductions, and ``ValueError`` where it raises one.

    Args:
        nhood: ``[C, ndim]`` offsets; ``None``: ``[[1,0,0],[0,1,0],[0,0,1]]`` (2D ``[[1,0],[0,1]]``).
        sigmoid: apply the sigmoid to ``pred`` (``False``: pred already holds affinities).
        reduction: ``"sum"`` of ``w (a - t)^2`` over everything (the default, as PyTorch
            Connectomics); ``"mean"``: that sum divided by the number of elements B·C·spatial
            (of the crop, with a crop), as PyTorch Connectomics and every torch loss;
            ``"batchmean"``: divided by B (the mean of the per-sample sums); ``"none"``: the
            elementwise map ``w (a - t)^2``, pred's shape, or the crop's shape with a crop.
        malis_crop_size: an int or one int per spatial dim: one random crop per call, origin
            drawn from torch's RNG and shared across the batch, applied to pred, target, mask and
            gt_seg (a crop larger than the volume is clamped). ``None``: the full volume.
        constrained: constrained MALIS (default) or the original one.
        nonfinite: what a NaN / inf affinity does. ``"raise"`` (default): a ValueError naming the
            value. ``"propagate"``: the loss (and the gradient) come out NaN / inf, like any torch
            loss, so that mixed-precision training with a ``torch.amp.GradScaler`` skips the step
            after an fp16 overflow and goes on. (With ``sigmoid=True`` an inf logit is a finite
            affinity; a NaN logit is not.)
        constrain_masked: the earlier mask rule (see :func:`malis_weights`): masked-out edges
            stay constrained and only their weights are zeroed. Default ``False``: PyTorch
            Connectomics' rule, the ground truth constrains only edges inside the mask.
        malis_num_workers: the most threads one call may use (PyTorch Connectomics' argument),
            an int >= 1; ``None``: ``torch.get_num_threads()``. The loss does not depend on it.

    Shape:
        pred, target ``[B, C, *spatial]`` (2D or 3D, ``C = len(nhood)``); mask broadcastable to
        pred (0 = excluded); gt_seg ``[B, *spatial]`` or ``[B, 1, *spatial]`` (``[*spatial]``
        when B is 1), a tensor of any integer dtype (uint64 included) or a numpy array.

    Raises:
        ValueError: shapes, nhood width, channel count, crop sizes or options that are wrong,
            negative labels, non-finite affinities (with ``nonfinite="raise"``).
        TypeError: non-float pred, non-integer gt_seg, complex target. A malis_crop_size of the
            wrong type raises an error that is a TypeError and a ValueError.

    Note:
        Under ``torch.compile`` the loss traces into one graph (``fullgraph=True``), with or
        without ``malis_crop_size``. The MALIS sweep itself runs in C++ outside the graph; on
        CUDA it is one trip to the host and back per call (see :func:`malis_weights`), and
        without gt_seg the connected components of the target are computed in that same visit.

    Example:
        >>> loss_fn = MalisLoss(malis_crop_size=64)
        >>> loss = loss_fn(logits, gt_affs, gt_seg=seg)
    """

    # Extras that only match the full-resolution output: deep supervision
    # (seglosses.DeepSupervisionLoss, CombinedLoss) does not pass them to lower scales, where
    # MALIS uses the connected components of the resized target instead.
    full_resolution_extras = ("gt_seg",)

    def __init__(
        self,
        nhood: Optional[NhoodLike] = None,
        *,
        sigmoid: bool = True,
        reduction: str = "sum",
        malis_crop_size: Optional[Union[int, Sequence[int]]] = None,
        constrained: bool = True,
        nonfinite: str = "raise",
        constrain_masked: bool = False,
        malis_num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        fn = "MalisLoss"
        _checks.check_choice(fn, "reduction", reduction, MALIS_REDUCTIONS)
        _checks.check_choice(fn, "nonfinite", nonfinite, NONFINITE_MODES)
        self.nhood = None if nhood is None else _as_nhood(fn, nhood)
        self.malis_crop_size = _crop_sizes(fn, malis_crop_size, None if self.nhood is None else len(self.nhood[0]))
        self.sigmoid = bool(sigmoid)
        self.reduction = reduction
        self.constrained = bool(constrained)
        self.nonfinite = nonfinite
        self.constrain_masked = bool(constrain_masked)
        _num_threads(fn, "malis_num_workers", malis_num_workers)
        self.malis_num_workers = malis_num_workers

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        gt_seg: Optional[LabelsLike] = None,
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
            nonfinite=self.nonfinite,
            constrain_masked=self.constrain_masked,
            malis_num_workers=self.malis_num_workers,
        )

    def extra_repr(self) -> str:
        nh = None if self.nhood is None else [list(r) for r in self.nhood]
        return (
            f"nhood={nh}, sigmoid={self.sigmoid}, reduction={self.reduction!r}, "
            f"malis_crop_size={self.malis_crop_size}, constrained={self.constrained}, nonfinite={self.nonfinite!r}, "
            f"constrain_masked={self.constrain_masked}, malis_num_workers={self.malis_num_workers}"
        )


# ---------------------------------------------------------------------------------------------
# The older API (malis package style)
# ---------------------------------------------------------------------------------------------
def _old_api_loss(fn: str, seg_gt: LabelsLike, pred_aff: torch.Tensor, nhood: NhoodLike, margin: float,
                  pos_loss_weight: float) -> torch.Tensor:
    _checks.check_float_tensor(fn, "pred_aff", pred_aff)
    margin = _checks.check_number(fn, "margin", margin)
    pos_loss_weight = _checks.check_number(fn, "pos_loss_weight", pos_loss_weight)
    nh = _as_nhood(fn, nhood)
    if pred_aff.dim() != len(nh[0]) + 2 or pred_aff.shape[1] != len(nh):
        raise ValueError(
            f"{fn}: pred_aff must be [B, {len(nh)}, *spatial] with {len(nh[0])} spatial dims, got {tuple(pred_aff.shape)}"
        )
    seg = _prepare_seg(fn, "seg_gt", seg_gt, pred_aff)
    pos, neg = ops.malis_counts(pred_aff.detach(), seg, None, None, _flat(nh), True, True, 0, fn, "pred_aff",
                                "seg_gt")
    # Pair counts exceed float16's range: compute in float32 (float64 for double predictions).
    a = pred_aff.to(torch.float64 if pred_aff.dtype == torch.float64 else torch.float32)
    pos_loss = (F.relu(1 - a - margin) ** 2 * pos.to(a.dtype)).sum() * pos_loss_weight
    neg_loss = (F.relu(a - margin) ** 2 * neg.to(a.dtype)).sum() * (1 - pos_loss_weight)
    return 2 * (pos_loss + neg_loss)


def malis_loss2d(seg_gt: LabelsLike, pred_aff: torch.Tensor, margin: float = 0.3, pos_loss_weight: float = 0.5):
    """The ``malis`` package's 2D loss, batched: ``seg_gt`` ``[B, 1, H, W]``, ``pred_aff``
    ``[B, 2, H, W]`` affinities in [0, 1] over ``mknhood2d(1)``. Uses the raw constrained pair
    counts ``pos, neg`` and ``2 (w_p sum pos relu(1-a-m)^2 + (1-w_p) sum neg relu(a-m)^2)``,
    computed in float32 (float64 for double inputs), as the counts overflow float16.

    The defaults are the package's: ``margin=0.3`` and ``pos_loss_weight=0.5`` (HelmholtzAI
    Malis-Loss since its commit d46fbaf; 0.3 before)."""
    return _old_api_loss("malis_loss2d", seg_gt, pred_aff, mknhood2d(1), margin, pos_loss_weight)


def malis_loss3d(seg_gt: LabelsLike, pred_aff: torch.Tensor, margin: float = 0.3, pos_loss_weight: float = 0.5):
    """The ``malis`` package's 3D loss, batched (any batch size): ``seg_gt`` ``[B, 1, D, H, W]``,
    ``pred_aff`` ``[B, 3, D, H, W]`` affinities in [0, 1] over ``mknhood3d(1)``; see
    :func:`malis_loss2d` for the formula."""
    return _old_api_loss("malis_loss3d", seg_gt, pred_aff, mknhood3d(1), margin, pos_loss_weight)
