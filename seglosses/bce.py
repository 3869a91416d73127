"""Binary cross-entropy losses for affinity and multi-label segmentation (SPEC §4).

Both losses take logits and compute BCE with :func:`torch.nn.functional.binary_cross_entropy_with_logits`
(numerically stable), with an optional mask that excludes voxels from the loss and from every count.

* :class:`PerChannelBCEWithLogitsLoss` re-balances each channel by its own positive / negative
  ratio, the per-channel BCE used by PyTorch Connectomics affinity configs.
* :class:`WeightedBCEWithLogitsLoss` takes a per-voxel weight map at call time.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks

__all__ = ["PerChannelBCEWithLogitsLoss", "WeightedBCEWithLogitsLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(cls: str, reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{cls}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _shape(t: Tensor) -> list:
    return list(t.shape)


def _compute_dtype(pred: Tensor) -> torch.dtype:
    # Half inputs are computed (and returned) in float32, like the rest of seglosses.
    return torch.float32 if pred.dtype in (torch.float16, torch.bfloat16) else pred.dtype


def _check_pred_target(cls: str, pred: object, target: object) -> None:
    if not isinstance(pred, Tensor):
        raise TypeError(f"{cls}: pred must be a torch.Tensor, got {type(pred).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"{cls}: target must be a torch.Tensor, got {type(target).__name__}")
    if not pred.is_floating_point():
        raise TypeError(f"{cls}: pred must be floating point (logits), got dtype {pred.dtype}")
    if pred.shape != target.shape:
        raise ValueError(
            f"{cls}: pred and target must have the same shape, got pred {_shape(pred)} "
            f"and target {_shape(target)}"
        )
    _checks.check_real_tensor(cls, "target", target)
    if target.device != pred.device:
        raise ValueError(f"{cls}: target must be on pred's device {pred.device}, got {target.device}")


def _expand_map(cls: str, arg: str, m: Optional[Tensor], pred: Tensor, dtype: torch.dtype) -> Optional[Tensor]:
    """Broadcast a mask / weight map to pred's shape; a map without the channel dim gets one.

    A NaN / inf in it is an error: it would make the loss 0 or drop a channel while the
    gradient turns NaN."""
    if m is None:
        return None
    if not isinstance(m, Tensor):
        raise TypeError(f"{cls}: {arg} must be a torch.Tensor or None, got {type(m).__name__}")
    _checks.check_real_tensor(cls, arg, m)
    _checks.check_has_data(cls, arg, m, "pred", pred)
    _checks.check_finite(cls, arg, m)
    given = _shape(m)
    if m.dim() == pred.dim() - 1 and pred.dim() >= 2 and m.shape[0] == pred.shape[0]:
        m = m.unsqueeze(1)  # [B, *spatial] -> [B, 1, *spatial]
    try:
        out = torch.broadcast_to(m, pred.shape)
    except RuntimeError:
        raise ValueError(
            f"{cls}: {arg} of shape {given} cannot be broadcast to pred's shape {_shape(pred)}"
        ) from None
    return out.to(device=pred.device, dtype=dtype)


class PerChannelBCEWithLogitsLoss(nn.Module):
    r"""BCE-with-logits with an automatic positive weight per channel.

    For every channel ``c``, over the batch and all spatial positions (only the masked-in ones
    when a mask is given), ``pos_weight_c = min(#neg_c / #pos_c, max_pos_weight)``, where a
    voxel is positive when ``target > 0.5``; a channel without positives gets ``pos_weight = 1``.
    The positive weights are constants (no gradient flows through them).

    The elementwise loss is
    ``l = -(pos_weight_c * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))``.

    Args:
        auto_pos_weight: compute ``pos_weight_c`` as above; ``False`` uses 1 for every channel
            (plain BCE averaged per channel and summed over channels).
        max_pos_weight: upper clamp of ``pos_weight_c``; must be > 0.
        reduction: ``"mean"``: the loss is averaged per channel (over the masked-in elements of
            that channel; a channel with none contributes 0) and summed over channels.
            ``"sum"``: sum of the masked elementwise loss. ``"none"``: the elementwise loss
            map, zero where the mask is 0.

    Shape:
        - pred: ``[B, C, *spatial]`` logits, any floating dtype.
        - target: same shape as pred; values in [0, 1] (soft targets are allowed).
        - mask: optional, broadcastable to pred (``[B, *spatial]`` is read as
          ``[B, 1, *spatial]``), finite; 0 excludes a voxel. Non-binary masks act as weights.
        - output: scalar, or pred's shape with ``reduction="none"``. float32 for half inputs,
          else pred's dtype.

    Raises:
        ValueError: on an unknown reduction, ``max_pos_weight <= 0``, mismatched shapes,
            a target on another device than pred, a mask that does not broadcast or holds
            NaN / inf (the message names the value and its index), or pred with fewer than 2 dims.
        TypeError: when pred / target / mask are not tensors or pred is not floating point.

    Example:
        >>> loss_fn = PerChannelBCEWithLogitsLoss(max_pos_weight=5.0)
        >>> pred = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> target = (torch.rand(2, 3, 8, 8, 8) > 0.8).float()
        >>> loss = loss_fn(pred, target)
        >>> loss.backward()
    """

    def __init__(self, auto_pos_weight: bool = True, max_pos_weight: float = 10.0, reduction: str = "mean") -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(auto_pos_weight, bool):
            raise TypeError(f"{name}: auto_pos_weight must be a bool, got {auto_pos_weight!r}")
        if isinstance(max_pos_weight, bool) or not isinstance(max_pos_weight, (int, float)):
            raise TypeError(f"{name}: max_pos_weight must be a number, got {max_pos_weight!r}")
        if not max_pos_weight > 0:  # also rejects NaN
            raise ValueError(f"{name}: max_pos_weight must be > 0, got {max_pos_weight!r}")
        self.auto_pos_weight = auto_pos_weight
        self.max_pos_weight = float(max_pos_weight)
        self.reduction = _check_reduction(name, reduction)

    def extra_repr(self) -> str:
        return (
            f"auto_pos_weight={self.auto_pos_weight}, max_pos_weight={self.max_pos_weight}, "
            f"reduction={self.reduction!r}"
        )

    def pos_weight(self, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The per-channel positive weights ``[C]`` used for ``target`` (and ``mask``)."""
        name = type(self).__name__
        if not isinstance(target, Tensor) or target.dim() < 2:
            raise ValueError(f"{name}: target must be a tensor [B, C, *spatial], got {target!r}")
        return self._pos_weight(target, _expand_map(name, "mask", mask, target, torch.float64))

    def _pos_weight(self, target: Tensor, m: Optional[Tensor]) -> Tensor:
        """pos_weight for a mask already expanded to target's shape (or None)."""
        dtype = torch.float64
        with torch.no_grad():
            pos = (target.detach() > 0.5).to(dtype)
            valid = torch.ones_like(pos) if m is None else (m != 0).to(dtype)
            dims = [d for d in range(target.dim()) if d != 1]
            n_pos = (pos * valid).sum(dim=dims)
            n_neg = ((1 - pos) * valid).sum(dim=dims)
            if not self.auto_pos_weight:
                return torch.ones_like(n_pos)
            w = torch.where(n_pos > 0, n_neg / n_pos.clamp(min=1), torch.ones_like(n_pos))
            return w.clamp(max=self.max_pos_weight)

    def forward(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        name = type(self).__name__
        _check_pred_target(name, pred, target)
        if pred.dim() < 2:
            raise ValueError(f"{name}: pred must be [B, C, *spatial] (at least 2 dims), got shape {_shape(pred)}")
        dtype = _compute_dtype(pred)
        m = _expand_map(name, "mask", mask, pred, dtype)
        x = pred.to(dtype)
        t = target.detach().to(dtype)
        pw = self._pos_weight(target, m).to(device=pred.device, dtype=dtype)
        pw = pw.view([1, -1] + [1] * (pred.dim() - 2))
        elem = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
        if m is not None:
            elem = elem * m
        if self.reduction == "none":
            return elem
        if self.reduction == "sum":
            return elem.sum()
        dims = [d for d in range(pred.dim()) if d != 1]
        per_channel_sum = elem.sum(dim=dims)
        if m is None:
            count = torch.full_like(per_channel_sum, float(pred.numel() // max(pred.shape[1], 1)))
        else:
            count = m.sum(dim=dims)
        # A channel with no (masked-in) element contributes 0, with zero gradient.
        per_channel = torch.where(count > 0, per_channel_sum / count.clamp(min=1e-12), torch.zeros_like(per_channel_sum))
        return per_channel.sum()


class WeightedBCEWithLogitsLoss(nn.Module):
    r"""BCE-with-logits with an optional per-voxel weight map and mask.

    The elementwise loss ``l = w * m * BCE(x, t)`` uses the weight map ``w`` (1 when omitted)
    and the mask ``m`` (1 when omitted).

    Args:
        reduction: ``"mean"``: sum of ``l`` divided by the number of masked-in elements
            (the sum of the mask broadcast to pred; all elements without a mask; 0 when that is
            0). ``"sum"``: sum of ``l``. ``"none"``: the map ``l``.

    Shape:
        - pred: ``[B, C, *spatial]`` (any shape with at least 1 dim) logits.
        - target: same shape as pred, values in [0, 1].
        - weight: optional, broadcastable to pred (``[B, *spatial]`` is read as
          ``[B, 1, *spatial]``). Constant: no gradient flows to it.
        - mask: optional, broadcastable to pred like ``weight``; 0 excludes an element.
        - output: scalar, or pred's shape with ``reduction="none"``. float32 for half inputs,
          else pred's dtype.

    Raises:
        ValueError: on an unknown reduction, mismatched shapes, a target on another device than
            pred, or a weight / mask that does not broadcast to pred or holds NaN / inf.
        TypeError: when an input is not a tensor or pred is not floating point.

    Example:
        >>> loss_fn = WeightedBCEWithLogitsLoss()
        >>> pred = torch.randn(2, 1, 16, 16, requires_grad=True)
        >>> target = (torch.rand(2, 1, 16, 16) > 0.5).float()
        >>> weight = 1.0 + 4.0 * target  # up-weight foreground
        >>> loss_fn(pred, target, weight=weight).backward()
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(type(self).__name__, reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        name = type(self).__name__
        _check_pred_target(name, pred, target)
        dtype = _compute_dtype(pred)
        w = _expand_map(name, "weight", weight, pred, dtype)
        m = _expand_map(name, "mask", mask, pred, dtype)
        elem = F.binary_cross_entropy_with_logits(pred.to(dtype), target.detach().to(dtype), reduction="none")
        if w is not None:
            elem = elem * w.detach()
        if m is not None:
            elem = elem * m
        if self.reduction == "none":
            return elem
        total = elem.sum()
        if self.reduction == "sum":
            return total
        count = m.sum() if m is not None else torch.tensor(float(pred.numel()), dtype=dtype, device=pred.device)
        return torch.where(count > 0, total / count.clamp(min=1e-12), total * 0)

