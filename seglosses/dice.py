"""``DiceLoss``: the module form of :func:`seglosses.functional.dice_loss`."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .functional import check_dice_options, dice_loss

__all__ = ["DiceLoss"]


class DiceLoss(nn.Module):
    """Fused, one-hot-free Dice loss on logits (see :func:`seglosses.functional.dice_loss`).

    Args:
        weight: K class weights (``sum_c w_c L_bc``, not renormalised); ``None`` averages over
            the classes that count. Kept exactly as given (not cast by ``.half()`` / ``.to()``).
        ignore_channel: a class left out of the loss; outside ``[0, K)`` it has no effect.
        ignore_label: voxels with this label contribute no loss and no gradient.
        smooth: added to the numerator and the denominator.
        p: integer exponent >= 1 of the predictions in the denominator.
        reduction: ``"none"``, ``"mean"``, ``"sum"`` or ``"batch"``.

    Shape:
        x ``[B, C, *spatial]`` logits (C == 1: binary, sigmoid), y ``[B, *spatial]`` or
        ``[B, 1, *spatial]`` integer labels -> ``[B]`` for ``"none"``, else a scalar.

    Example:
        >>> loss_fn = DiceLoss(ignore_channel=0, ignore_label=255)
        >>> x = torch.randn(2, 3, 32, 32, 32, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 32, 32, 32))
        >>> loss_fn(x, y).backward()
    """

    def __init__(
        self,
        weight: Optional[Union[Sequence[float], torch.Tensor]] = None,
        ignore_channel: int = -1,
        ignore_label: int = -1,
        smooth: float = 0.0,
        p: int = 1,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_dice_options("DiceLoss", weight, ignore_channel, ignore_label, smooth, p, reduction)
        # A tuple of Python floats, not a buffer: exact whatever .half() / .to() do to the module;
        # dice_loss puts it on the sums' dtype and device.
        self.weight = None if weight is None else tuple(torch.as_tensor(weight, dtype=torch.float64).flatten().tolist())
        self.ignore_channel = ignore_channel
        self.ignore_label = ignore_label
        self.smooth = smooth
        self.p = p
        self.reduction = reduction

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dice_loss(x, y, self.weight, self.ignore_channel, self.ignore_label, self.smooth, self.p, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"ignore_channel={self.ignore_channel}, ignore_label={self.ignore_label}, smooth={self.smooth}, "
            f"p={self.p}, reduction={self.reduction!r}"
        )
