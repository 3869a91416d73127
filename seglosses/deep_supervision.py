"""Deep supervision: one loss applied to every output scale of a network, weighted per scale.

In the spirit of MONAI's ``DeepSupervisionLoss``: the wrapped loss sees one scale at a time, with
the target and the spatial extras (masks, weight maps) resized to that scale by nearest
neighbour, exactly (integer labels stay integer). A loss that takes an extra which only matches
the full-resolution output (MALIS's ``gt_seg``: a resized segmentation is not the segmentation
of the resized affinities) names it in its class attribute ``full_resolution_extras``; such an
extra reaches scale 0 only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["DeepSupervisionLoss", "deep_supervised", "resize_nearest", "scale_weights"]


def resize_nearest(t: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of the last ``len(size)`` dims; any dtype, values kept exactly.

    Picks source index ``min(floor(i * in / out), in - 1)``, the rule of
    ``F.interpolate(mode="nearest")``, so integer labels stay integer (and exact).
    """
    n = len(size)
    for k, out_size in enumerate(size):
        dim = t.dim() - n + k
        in_size = t.shape[dim]
        if in_size == out_size:
            continue
        scale = torch.tensor(in_size / out_size, dtype=torch.float32)
        idx = (torch.arange(out_size, dtype=torch.float32) * scale).floor().to(torch.int64)
        idx = idx.clamp(max=in_size - 1).to(t.device)
        t = t.index_select(dim, idx)
    return t


def scale_weights(levels: int, weights: Optional[Sequence[float]] = None) -> Tuple[float, ...]:
    """The first ``levels`` of ``weights``, or ``1, 1/2, 1/4, ...`` when None."""
    if weights is None:
        return tuple(0.5 ** s for s in range(levels))
    if len(weights) < levels:
        raise ValueError(f"DeepSupervisionLoss: weights has {len(weights)} values but pred has {levels} scales")
    return tuple(float(w) for w in weights[:levels])


def _at_scale(t: Any, full: Tuple[int, ...], size: Tuple[int, ...]) -> Any:
    """A tensor whose trailing dims are the full-resolution spatial shape, resized to ``size``;
    anything else (other shapes, non-tensors) as it is."""
    n = len(full)
    if not isinstance(t, Tensor) or n == 0 or t.dim() < n + 1 or tuple(t.shape[-n:]) != full:
        return t
    if len(size) != n or size == full:
        return t
    return resize_nearest(t, size)


def deep_supervised(
    loss: Callable[..., Tensor],
    preds: Sequence[Tensor],
    target: Tensor,
    weights: Sequence[float],
    full_resolution_extras: Sequence[str] = (),
    **extras: Any,
) -> Tensor:
    """``sum_s weights[s] * loss(preds[s], target at scale s, **extras at scale s)``.

    Args:
        loss: called once per scale with a weight other than 0 (all scales when there is one).
        preds: ``[B, C, *spatial]`` outputs at decreasing scales, the first at full resolution.
        target: resized to each scale when its trailing dims are the full-resolution shape.
        weights: one weight per scale (at least ``len(preds)``).
        full_resolution_extras: names of extras passed to scale 0 only.
        **extras: resized like the target.

    Returns:
        The weighted sum; 0 (connected to preds[0]) when every weight is 0.
    """
    full = tuple(preds[0].shape[2:])
    total: Optional[Tensor] = None
    for s, (p, w) in enumerate(zip(preds, weights)):
        if w == 0 and len(preds) > 1:
            continue
        size = tuple(p.shape[2:])
        kw = {k: _at_scale(v, full, size) for k, v in extras.items() if s == 0 or k not in full_resolution_extras}
        value = loss(p, _at_scale(target, full, size), **kw)
        value = value if w == 1.0 else value * w
        total = value if total is None else total + value
    return preds[0].sum() * 0 if total is None else total


class DeepSupervisionLoss(nn.Module):
    """Applies ``loss`` to every output of a deeply supervised network, weighted per scale.

    Args:
        loss: the loss for one scale, ``loss(pred, target, **extras)``; its
            ``full_resolution_extras`` attribute (if any) names extras for scale 0 only.
        weights: one weight per scale; None: ``1, 1/2, 1/4, ...``.

    Shape:
        - pred: ``[B, C, *spatial]``, or a list / tuple of such tensors at decreasing scales
          (the first at full resolution). A single tensor is passed to ``loss`` as it is.
        - target and extras: at full resolution; tensors whose trailing dims are pred[0]'s
          spatial shape are resized to each scale by nearest neighbour, others pass as they are.

    Raises:
        ValueError: when ``weights`` has fewer values than pred has scales, or holds negative
            or non-finite values.

    Example:
        >>> ds = DeepSupervisionLoss(MalisLoss(), weights=[1.0, 0.5])
        >>> loss = ds([logits, logits_half], gt_affs, gt_seg=seg)   # gt_seg only at scale 0
    """

    def __init__(self, loss: Callable[..., Tensor], weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(not (w >= 0 and w != float("inf")) for w in weights):
                raise ValueError(f"DeepSupervisionLoss: weights must be finite numbers >= 0, got {weights!r}")
        self.loss = loss
        self.weights = weights

    def forward(self, pred: Union[Tensor, Sequence[Tensor]], target: Tensor, **extras: Any) -> Tensor:
        if isinstance(pred, Tensor):
            return self.loss(pred, target, **extras)
        preds = list(pred)
        if not preds or not all(isinstance(p, Tensor) for p in preds):
            raise TypeError("DeepSupervisionLoss: pred must be a tensor or a non-empty list of tensors")
        return deep_supervised(
            self.loss, preds, target, scale_weights(len(preds), self.weights),
            getattr(self.loss, "full_resolution_extras", ()), **extras,
        )
