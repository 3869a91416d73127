"""The Dice family as modules: ``DiceLoss``, ``DiceCELoss``, ``GeneralizedDiceLoss``,
``TverskyLoss`` (the module forms of the functions in :mod:`seglosses.functional`).

Every one takes ``forward(x, y, mask=None)``; the options shared by the family (activation, mask,
label validation, reductions, DDP) are described in :mod:`seglosses.functional`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from . import _checks, _dice
from .functional import W_TYPES, dice_ce_loss, dice_loss, generalized_dice_loss, tversky_loss

__all__ = ["DiceLoss", "DiceCELoss", "GeneralizedDiceLoss", "TverskyLoss"]


def _weight_tuple(fn: str, name: str, weight: _dice.Weight) -> Optional[Tuple[float, ...]]:
    # A tuple of Python floats, not a buffer: exact whatever .half() / .to() do to the module; the
    # functional puts it on the sums' dtype and device.
    w = _dice.check_class_weights(fn, name, weight)
    return None if w is None else tuple(w.cpu().tolist())


class _DiceFamilyLoss(nn.Module):
    """Keeps the options shared by the family, checked once at construction."""

    def __init__(self, name: str, *, ignore_channel: int, ignore_label: int, smooth: float, p: int, reduction: str,
                 activation: str, validate_labels: Optional[bool], distributed: bool, process_group: Any) -> None:
        super().__init__()
        opts = _dice.check_options(name, ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=p,
                                   reduction=reduction, activation=activation, validate_labels=validate_labels,
                                   distributed=distributed, process_group=process_group)
        self.ignore_channel = opts.ignore_channel
        self.ignore_label = opts.ignore_label
        self.smooth = smooth
        self.p = opts.p
        self.reduction = reduction
        self.activation = activation
        self.validate_labels = validate_labels
        self.distributed = distributed
        self.process_group = process_group

    def _on_device(self, values: Optional[Tuple[float, ...]], device: torch.device) -> Optional[torch.Tensor]:
        """The weights as a float64 tensor on x's device, copied there once: a host-to-device copy
        per call would make every step wait for the GPU."""
        if values is None:
            return None
        cache = self.__dict__.setdefault("_weights_on_device", {})
        key = (values, device)
        if key not in cache:
            cache[key] = torch.tensor(values, dtype=torch.float64).to(device)
        return cache[key]

    def _common(self) -> dict:
        return dict(ignore_channel=self.ignore_channel, ignore_label=self.ignore_label, smooth=self.smooth,
                    reduction=self.reduction, activation=self.activation, validate_labels=self.validate_labels,
                    distributed=self.distributed, process_group=self.process_group)

    def extra_repr(self) -> str:
        text = (f"activation={self.activation!r}, ignore_channel={self.ignore_channel}, "
                f"ignore_label={self.ignore_label}, smooth={self.smooth}, p={self.p}, reduction={self.reduction!r}")
        return text + (", distributed=True" if self.distributed or self.process_group is not None else "")


class DiceLoss(_DiceFamilyLoss):
    """Fused, one-hot-free Dice loss on logits (see :func:`seglosses.functional.dice_loss`).

    Args:
        weight: K class weights (``sum_c w_c L_bc``, not renormalised); ``None`` averages over
            the classes that count. Kept exactly as given (not cast by ``.half()`` / ``.to()``).
        ignore_channel: a class left out of the loss; outside ``[0, K)`` it has no effect.
        ignore_label: voxels with this label contribute no loss and no gradient (label maps).
        smooth: added to the numerator and the denominator.
        p: integer exponent in ``[1, 1024]`` of the predictions in the denominator.
        reduction: ``"none"``, ``"mean"``, ``"sum"`` or ``"batch"``.
        activation: ``"softmax"`` (integer label maps; C == 1: binary sigmoid) or ``"sigmoid"``
            (multi-label: a target of x's shape, bool / integer / float in [0, 1]).
        validate_labels: raise for labels outside ``[0, K)``; ``None``: on the CPU only (free
            there; on CUDA it would wait for the GPU). Off: such voxels count nowhere.
        distributed: with ``reduction="batch"``, all-reduce the sums over the DDP ranks so that
            every rank computes the global-batch loss (and DDP yields the single-process gradient).
        process_group: the group for ``distributed`` (default: the world).

    Shape:
        x ``[B, C, *spatial]`` logits; y ``[B, *spatial]`` / ``[B, 1, *spatial]`` labels, or x's
        shape for sigmoid; mask (optional) broadcastable to y's layout -> ``[B]`` for
        ``"none"``, else a scalar.

    Example:
        >>> loss_fn = DiceLoss(ignore_channel=0, ignore_label=255)
        >>> x = torch.randn(2, 3, 32, 32, 32, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 32, 32, 32))
        >>> loss_fn(x, y).backward()
    """

    def __init__(self, weight: _dice.Weight = None, ignore_channel: int = -1, ignore_label: int = -1,
                 smooth: float = 0.0, p: int = 1, reduction: str = "mean", *, activation: str = "softmax",
                 validate_labels: Optional[bool] = None, distributed: bool = False, process_group: Any = None) -> None:
        super().__init__("DiceLoss", ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=p,
                         reduction=reduction, activation=activation, validate_labels=validate_labels,
                         distributed=distributed, process_group=process_group)
        self.weight = _weight_tuple("DiceLoss", "weight", weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return dice_loss(x, y, self._on_device(self.weight, x.device), p=self.p, mask=mask, **self._common())


class DiceCELoss(_DiceFamilyLoss):
    """Dice + cross-entropy from one fused pass (see :func:`seglosses.functional.dice_ce_loss`).

    ``lambda_dice * Dice + lambda_ce * CE``: softmax CE with torch's ``ignore_index`` /
    class-``weight`` semantics (``ce_weight``), or for ``activation="sigmoid"`` BCE-with-logits
    with ``pos_weight=ce_weight``. Same values as MONAI's ``DiceCELoss`` and as torch's CE plus
    :class:`DiceLoss`.

    Args:
        weight, ignore_channel, ignore_label, smooth, p, reduction, activation, validate_labels,
        distributed, process_group: as in :class:`DiceLoss` (``weight`` and ``ignore_channel``
            act on the Dice term).
        lambda_dice: weight of the Dice term (>= 0).
        lambda_ce: weight of the cross-entropy term (>= 0).
        ce_weight: class weights of the cross-entropy (sigmoid: per-channel ``pos_weight``).

    Shape:
        as :class:`DiceLoss`.

    Example:
        >>> loss_fn = DiceCELoss(ignore_label=255, lambda_ce=0.5)
        >>> x = torch.randn(2, 3, 32, 32, 32, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 32, 32, 32))
        >>> loss_fn(x, y).backward()
    """

    def __init__(self, weight: _dice.Weight = None, ignore_channel: int = -1, ignore_label: int = -1,
                 smooth: float = 0.0, p: int = 1, reduction: str = "mean", *, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, ce_weight: _dice.Weight = None, activation: str = "softmax",
                 validate_labels: Optional[bool] = None, distributed: bool = False, process_group: Any = None) -> None:
        super().__init__("DiceCELoss", ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=p,
                         reduction=reduction, activation=activation, validate_labels=validate_labels,
                         distributed=distributed, process_group=process_group)
        self.weight = _weight_tuple("DiceCELoss", "weight", weight)
        self.ce_weight = _weight_tuple("DiceCELoss", "ce_weight", ce_weight)
        self.lambda_dice = _dice.check_number("DiceCELoss", "lambda_dice", lambda_dice)
        self.lambda_ce = _dice.check_number("DiceCELoss", "lambda_ce", lambda_ce)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return dice_ce_loss(x, y, weight=self._on_device(self.weight, x.device), p=self.p,
                            lambda_dice=self.lambda_dice, lambda_ce=self.lambda_ce,
                            ce_weight=self._on_device(self.ce_weight, x.device), mask=mask, **self._common())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lambda_dice={self.lambda_dice}, lambda_ce={self.lambda_ce}"


class GeneralizedDiceLoss(_DiceFamilyLoss):
    """Generalized Dice loss, fused (see :func:`seglosses.functional.generalized_dice_loss`).

    Args:
        w_type: class weights from the target mass T: ``"square"`` (1/T^2), ``"simple"`` (1/T)
            or ``"uniform"``.
        ignore_channel, ignore_label, smooth, p, reduction, activation, validate_labels,
        distributed, process_group: as in :class:`DiceLoss`.

    Shape:
        as :class:`DiceLoss`.

    Example:
        >>> loss_fn = GeneralizedDiceLoss(w_type="square")
        >>> x = torch.randn(2, 3, 32, 32, 32, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 32, 32, 32))
        >>> loss_fn(x, y).backward()
    """

    def __init__(self, w_type: str = "square", ignore_channel: int = -1, ignore_label: int = -1,
                 smooth: float = 0.0, p: int = 1, reduction: str = "mean", *, activation: str = "softmax",
                 validate_labels: Optional[bool] = None, distributed: bool = False, process_group: Any = None) -> None:
        super().__init__("GeneralizedDiceLoss", ignore_channel=ignore_channel, ignore_label=ignore_label,
                         smooth=smooth, p=p, reduction=reduction, activation=activation,
                         validate_labels=validate_labels, distributed=distributed, process_group=process_group)
        self.w_type = _checks.check_choice("GeneralizedDiceLoss", "w_type", w_type, W_TYPES)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return generalized_dice_loss(x, y, w_type=self.w_type, p=self.p, mask=mask, **self._common())

    def extra_repr(self) -> str:
        return f"w_type={self.w_type!r}, " + super().extra_repr()


class TverskyLoss(_DiceFamilyLoss):
    """Tversky loss, fused (see :func:`seglosses.functional.tversky_loss`).

    Args:
        alpha: weight of the false positives (MONAI's meaning).
        beta: weight of the false negatives.
        weight, ignore_channel, ignore_label, smooth, reduction, activation, validate_labels,
        distributed, process_group: as in :class:`DiceLoss`.

    Shape:
        as :class:`DiceLoss`.

    Example:
        >>> loss_fn = TverskyLoss(alpha=0.3, beta=0.7, ignore_channel=0)
        >>> x = torch.randn(2, 3, 32, 32, 32, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 32, 32, 32))
        >>> loss_fn(x, y).backward()
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, weight: _dice.Weight = None, ignore_channel: int = -1,
                 ignore_label: int = -1, smooth: float = 0.0, reduction: str = "mean", *, activation: str = "softmax",
                 validate_labels: Optional[bool] = None, distributed: bool = False, process_group: Any = None) -> None:
        super().__init__("TverskyLoss", ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=1,
                         reduction=reduction, activation=activation, validate_labels=validate_labels,
                         distributed=distributed, process_group=process_group)
        self.alpha = _dice.check_number("TverskyLoss", "alpha", alpha)
        self.beta = _dice.check_number("TverskyLoss", "beta", beta)
        self.weight = _weight_tuple("TverskyLoss", "weight", weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return tversky_loss(x, y, alpha=self.alpha, beta=self.beta, weight=self._on_device(self.weight, x.device),
                            mask=mask, **self._common())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, " + super().extra_repr()
