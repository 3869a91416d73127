"""Functional forms of the seglosses losses."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import _checks
from ._ops import ops

__all__ = ["dice_loss"]

DICE_REDUCTIONS = ("none", "mean", "sum", "batch")


def _dice_class_weights(
    weight: Optional[Union[Sequence[float], torch.Tensor]],
    ignore_channel: int,
    K: int,
    like: torch.Tensor,
) -> torch.Tensor:
    """Per-class factors [K]: w_c (or 1 / #counted classes), 0 for the ignored channel."""
    counted = torch.ones(K, dtype=like.dtype, device=like.device)
    if 0 <= ignore_channel < K:
        counted[ignore_channel] = 0
    if weight is None:
        return counted / counted.sum()
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    return w * counted


def check_dice_options(fn, weight, ignore_channel, ignore_label, smooth, p, reduction):
    """Validates the options shared by ``dice_loss`` and ``DiceLoss``; returns p, ignore_channel, ignore_label."""
    p = _checks.check_int(fn, "p", p, minimum=1)
    ignore_channel = _checks.check_int(fn, "ignore_channel", ignore_channel)
    ignore_label = _checks.check_int(fn, "ignore_label", ignore_label)
    _checks.check_choice(fn, "reduction", reduction, DICE_REDUCTIONS)
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not smooth >= 0:
        raise ValueError(f"{fn}: smooth must be a number >= 0, got {smooth!r}")
    if weight is not None and torch.as_tensor(weight).dim() != 1:
        raise ValueError(f"{fn}: weight must be a 1-D sequence of class weights, got shape {tuple(torch.as_tensor(weight).shape)}")
    return p, ignore_channel, ignore_label


def dice_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: Optional[Union[Sequence[float], torch.Tensor]] = None,
    ignore_channel: int = -1,
    ignore_label: int = -1,
    smooth: float = 0.0,
    p: int = 1,
    reduction: str = "mean",
) -> torch.Tensor:
    """Fused, one-hot-free Dice loss on logits.

    For sample ``b`` and class ``c``, over voxels whose label is not ``ignore_label``:
    ``I = sum s_c [y=c]``, ``P = sum s_c^p``, ``T = sum [y=c]`` and
    ``L_bc = 1 - (2 I + smooth) / (P + T + smooth)`` (0, with zero gradient, where the
    denominator is 0). ``s = softmax(x, dim=1)``; with one channel, ``s_1 = sigmoid(x)`` and
    ``s_0 = 1 - sigmoid(x)`` (two classes). Neither a one-hot target nor a softmax tensor is
    ever materialised: the forward pass keeps O(B*K) sums and the backward pass allocates only
    the gradient.

    Args:
        x: logits ``[B, C, *spatial]`` with 1 to 3 spatial dims; float16, bfloat16, float32 or
            float64; any memory layout; CPU or CUDA.
        y: integer labels ``[B, *spatial]`` or ``[B, 1, *spatial]`` on x's device.
        weight: K class weights; the loss is ``sum_c w_c L_bc`` (not renormalised). ``None``
            averages ``L_bc`` over the classes that count.
        ignore_channel: a class left out of the loss (an index outside ``[0, K)`` has no effect).
        ignore_label: voxels with this label contribute nothing.
        smooth: added to numerator and denominator.
        p: integer exponent >= 1 of the predictions in the denominator.
        reduction: ``"none"`` (per sample, ``[B]``), ``"mean"`` / ``"sum"`` over the batch, or
            ``"batch"`` (sums over the whole batch before the ratio; a scalar).

    Returns:
        The loss: float32 for half inputs, otherwise x's dtype.

    Raises:
        TypeError: x not floating point, y not integer.
        ValueError: bad shapes, p < 1, unknown reduction, weight of the wrong length, or a label
            outside ``[0, K)`` that is not ``ignore_label`` (the message names the label).

    Shape:
        x ``[B, C, *]``, y ``[B, *]`` or ``[B, 1, *]`` -> ``[B]`` for ``"none"``, else ``[]``.

    Example:
        >>> x = torch.randn(2, 4, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 4, (2, 16, 16, 16))
        >>> loss = dice_loss(x, y, ignore_channel=0)
        >>> loss.backward()
    """
    fn = "dice_loss"
    _checks.check_float_tensor(fn, "x", x)
    _checks.check_label_tensor(fn, "y", y)
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"{fn}: x must be [B, C, *spatial] with 1 to 3 spatial dims, got shape {tuple(x.shape)}")
    y_spatial = tuple(y.shape[2:]) if (y.dim() == x.dim() and y.shape[1] == 1) else tuple(y.shape[1:])
    if y.dim() not in (x.dim() - 1, x.dim()) or y.shape[0] != x.shape[0] or y_spatial != tuple(x.shape[2:]):
        raise ValueError(
            f"{fn}: y must be [B, *spatial] or [B, 1, *spatial] matching x {tuple(x.shape)}, got {tuple(y.shape)}"
        )
    _checks.check_same_device(fn, "y", y, "x", x)
    if x.shape[1] < 1:
        raise ValueError(f"{fn}: x must have at least one channel, got shape {tuple(x.shape)}")
    p, ignore_channel, ignore_label = check_dice_options(fn, weight, ignore_channel, ignore_label, smooth, p, reduction)
    K = 2 if x.shape[1] == 1 else x.shape[1]
    if weight is not None and torch.as_tensor(weight).numel() != K:
        raise ValueError(f"{fn}: weight must have {K} values (one per class), got {torch.as_tensor(weight).numel()}")

    sums = ops.dice_sums(x, y, ignore_label, p)  # [B, 3, K]: I, P, T
    if reduction == "batch":
        sums = sums.sum(0, keepdim=True)
    inter, pred, true = sums.unbind(1)
    num = 2 * inter + smooth
    den = pred + true + smooth
    nonzero = den != 0
    per_class = torch.where(nonzero, 1 - num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(den))
    per_sample = (per_class * _dice_class_weights(weight, ignore_channel, K, per_class)).sum(1)
    if reduction == "none":
        return per_sample
    if reduction == "batch":
        return per_sample.sum()
    total = per_sample.sum()
    return total / max(x.shape[0], 1) if reduction == "mean" else total


# MALIS lives in seglosses/malis.py (it needs the nhood helpers); re-exported here so that every
# loss has a functional form in one namespace. Imported last: malis.py imports this module's deps.
from .malis import malis_loss, malis_weights  # noqa: E402

__all__ += ["malis_loss", "malis_weights"]
