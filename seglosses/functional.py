"""Functional forms of the seglosses losses.

The Dice family (:func:`dice_loss`, :func:`dice_ce_loss`, :func:`generalized_dice_loss`,
:func:`tversky_loss`) is fused and one-hot-free: one pass over the logits accumulates per (sample,
class) sums with the activation computed on the fly, the formulas below are plain torch on those
O(B*K) sums, and the backward pass is one elementwise kernel that allocates only the gradient.

Options shared by the whole family:

- ``activation="softmax"`` (label maps): ``y`` holds integer class labels ``[B, *spatial]`` or
  ``[B, 1, *spatial]``; ``s = softmax(x, dim=1)`` over C >= 2 channels (K = C classes), or for
  C == 1 the binary case ``s_1 = sigmoid(x)``, ``s_0 = 1 - s_1`` (K = 2).
  ``activation="sigmoid"`` (multi-label): each of the C channels is its own binary problem with
  ``s_c = sigmoid(x_c)`` against ``y`` of x's shape (bool, integer or float in [0, 1], read in
  place); K = C.
- Per sample b and class c, over the voxels that count: ``I = sum s t``, ``P = sum s^p``,
  ``T = sum t^p`` (``t = [y == c]`` for label maps, the target otherwise).
- A voxel counts unless its label is ``ignore_label`` or ``mask`` is 0 there (masked voxels and
  ignored labels count nowhere: no loss, no gradient, no cross-entropy).
- ``validate_labels``: a label outside ``[0, K)`` that is not ``ignore_label`` (or, for sigmoid,
  a target outside ``[0, 1]``) raises a ``ValueError`` that names the value when validation is on;
  when it is off, that voxel (element) counts nowhere, like an ignored one, on every device.
  ``None`` (default) validates on the CPU, where it is free, and not on CUDA, where reporting a
  bad label would make the host wait for the GPU every step (and break CUDA-graph capture).
- ``reduction``: ``"none"`` (``[B]``), ``"mean"`` / ``"sum"`` over the batch, ``"batch"`` (the
  sums are added over the batch before the ratio; a scalar).
- ``distributed=True`` (or a ``process_group``), with ``reduction="batch"``: the sums are
  all-reduced over the ranks with autograd, so every rank computes the loss of the global batch,
  and after DDP averages the gradients the parameters get exactly the single-process gradient.
- The loss is float32 for half inputs, else x's dtype; the gradient has x's dtype, computed in
  float32 (float64 for double) and multiplied by the incoming gradient before the cast.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from . import _checks, _dice
from ._dice import ROW_I, ROW_L, ROW_LNEG, ROW_LPOS, ROW_N, ROW_P, ROW_T, Weight

__all__ = ["dice_loss", "dice_ce_loss", "generalized_dice_loss", "tversky_loss"]

W_TYPES = ("square", "simple", "uniform")


def _dice_terms(table: torch.Tensor, smooth: float) -> torch.Tensor:
    """[B, K] Dice loss terms 1 - (2I + smooth) / (P + T + smooth) (0 where the denominator is 0)."""
    I, P, T = table[:, ROW_I], table[:, ROW_P], table[:, ROW_T]
    return _dice.ratio_term(2 * I + smooth, P + T + smooth)


def _dice_per_sample(fn: str, x, y, mask, opts: _dice.Options, weight: Optional[torch.Tensor], with_ce: bool):
    """Checked inputs -> (per-sample Dice loss [B'] , sums table, K)."""
    _dice.check_inputs(fn, x, y, mask, opts.activation)
    K = _dice.num_classes(x, opts.activation)
    _dice.check_length(fn, "weight", weight, K, "class")
    table = _dice.sums(fn, x, y, mask, opts, with_ce=with_ce)
    terms = _dice_terms(table, opts.smooth)
    per_sample = (terms * _dice.class_factors(weight, opts.ignore_channel, K, terms)).sum(1)
    return per_sample, table, K


def dice_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: Weight = None,
    ignore_channel: int = -1,
    ignore_label: int = -1,
    smooth: float = 0.0,
    p: int = 1,
    reduction: str = "mean",
    *,
    activation: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    validate_labels: Optional[bool] = None,
    distributed: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """Fused, one-hot-free Dice loss on logits.

    ``L_bc = 1 - (2 I + smooth) / (P + T + smooth)`` per sample and class (0, with zero
    gradient, where the denominator is 0), then the mean over the classes that count (or the
    ``weight``-ed sum), then ``reduction``. Neither a one-hot target nor a softmax tensor is ever
    materialised. See the module docstring for the options shared by the Dice family.

    Args:
        x: logits ``[B, C, *spatial]`` with 1 to 3 spatial dims; float16, bfloat16, float32 or
            float64; any memory layout; CPU or CUDA.
        y: ``activation="softmax"``: integer labels ``[B, *spatial]`` or ``[B, 1, *spatial]``
            (uint8, int8, int16, int32, int64, uint16, uint32, uint64); ``"sigmoid"``: targets of
            x's shape (bool, integer or floating point in [0, 1]). On x's device.
        weight: K class weights >= 0; the loss is ``sum_c w_c L_bc`` (not renormalised). ``None``
            averages ``L_bc`` over the classes that count.
        ignore_channel: a class left out of the loss (an index outside ``[0, K)`` has no effect).
        ignore_label: voxels with this label count nowhere (label maps only).
        smooth: added to numerator and denominator (>= 0).
        p: integer exponent in ``[1, 1024]`` of the predictions (and targets) in the denominator.
        reduction: ``"none"``, ``"mean"``, ``"sum"`` or ``"batch"``.
        activation: ``"softmax"`` (label maps) or ``"sigmoid"`` (multi-label).
        mask: optional, 0 where a voxel counts nowhere: ``[B, *spatial]`` / ``[B, 1, *spatial]``
            for label maps, ``[B, C, *spatial]`` / ``[B, 1, *spatial]`` for sigmoid (or
            broadcastable to it); bool, integer or float (nonzero = counts, as ``mask.bool()``).
        validate_labels: ``True`` / ``False``, or ``None``: validate on the CPU only.
        distributed: all-reduce the sums over the default process group (``reduction="batch"``).
        process_group: the group to all-reduce over (implies ``distributed``).

    Returns:
        The loss: float32 for half inputs, otherwise x's dtype.

    Raises:
        TypeError: x not floating point, y of the wrong kind (e.g. float labels for softmax).
        ValueError: bad shapes (e.g. a one-hot target for softmax), p outside [1, 1024], an
            unknown reduction or activation, a weight of the wrong length, or (with validation)
            a label outside ``[0, K)`` that is not ``ignore_label`` (the message names it).
        RuntimeError: ``distributed=True`` without an initialised process group.

    Shape:
        x ``[B, C, *]``, y as above -> ``[B]`` for ``"none"``, else ``[]``.

    Example:
        >>> x = torch.randn(2, 4, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 4, (2, 16, 16, 16))
        >>> loss = dice_loss(x, y, ignore_channel=0)
        >>> loss.backward()
    """
    fn = "dice_loss"
    opts = _dice.check_options(fn, ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=p,
                               reduction=reduction, activation=activation, validate_labels=validate_labels,
                               distributed=distributed, process_group=process_group)
    w = _dice.check_class_weights(fn, "weight", weight)
    per_sample, _, _ = _dice_per_sample(fn, x, y, mask, opts, w, with_ce=False)
    return _dice.reduce(per_sample, opts.reduction).to(_dice.loss_dtype(x))


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 with zero gradient where den == 0 (nothing counted)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(den))


def _ce_parts(table: torch.Tensor, ce_weight: Optional[torch.Tensor], activation: str):
    """Per sample: the (weighted) cross-entropy sum over the counted voxels and its normaliser."""
    if activation == "softmax":
        # torch's CrossEntropyLoss: sum_v w_{y_v} (-log s_{y_v}) / sum_v w_{y_v}; per class the
        # kernel sums -log s_c over the voxels of class c (row L) and T counts them.
        w = torch.ones_like(table[0, 0]) if ce_weight is None else ce_weight.to(table)
        return (table[:, ROW_L] * w).sum(1), (table[:, ROW_T] * w).sum(1)
    # torch's BCEWithLogitsLoss(pos_weight=ce_weight): mean over the counted elements of
    # pos_weight_c t softplus(-x) + (1 - t) softplus(x).
    lpos = table[:, ROW_LPOS] if ce_weight is None else table[:, ROW_LPOS] * ce_weight.to(table)
    return (lpos + table[:, ROW_LNEG]).sum(1), table[:, ROW_N].sum(1)


def dice_ce_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    weight: Weight = None,
    ignore_channel: int = -1,
    ignore_label: int = -1,
    smooth: float = 0.0,
    p: int = 1,
    reduction: str = "mean",
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    ce_weight: Weight = None,
    activation: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    validate_labels: Optional[bool] = None,
    distributed: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """``lambda_dice * dice_loss + lambda_ce * cross-entropy``, both from one fused pass.

    The cross-entropy comes from the same activation in the same pass over the logits:
    ``activation="softmax"``: torch's ``CrossEntropyLoss`` (``ignore_index=ignore_label``,
    ``weight=ce_weight``: the ``ce_weight``-ed mean over the voxels that count; for C == 1 the
    two classes are the logits ``(0, x)``). ``"sigmoid"``: torch's ``BCEWithLogitsLoss`` with
    ``pos_weight=ce_weight`` (one value per channel), the mean over the elements that count.
    ``ignore_channel`` and ``weight`` apply to the Dice term only; masked voxels and ignored
    labels count in neither term.

    Reductions: ``"mean"`` and ``"batch"`` use the cross-entropy mean over all counted voxels of
    the batch (what torch, MONAI and nnU-Net compute); ``"none"`` gives per sample the Dice term
    plus that sample's cross-entropy mean, ``"sum"`` their sum over the batch. Where nothing
    counts, the cross-entropy term is 0.

    Args:
        x, y, weight, ignore_channel, ignore_label, smooth, p, reduction, activation, mask,
        validate_labels, distributed, process_group: as in :func:`dice_loss`.
        lambda_dice: weight of the Dice term (>= 0).
        lambda_ce: weight of the cross-entropy term (>= 0).
        ce_weight: class weights of the cross-entropy (K values >= 0; sigmoid: per-channel
            ``pos_weight``).

    Returns:
        The loss: float32 for half inputs, otherwise x's dtype.

    Raises:
        TypeError, ValueError, RuntimeError: as :func:`dice_loss`; also for a bad ``lambda_*``
            or a ``ce_weight`` of the wrong length.

    Shape:
        x ``[B, C, *]``, y as in :func:`dice_loss` -> ``[B]`` for ``"none"``, else ``[]``.

    Example:
        >>> x = torch.randn(2, 4, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 4, (2, 16, 16, 16))
        >>> dice_ce_loss(x, y, ignore_channel=0).backward()
    """
    fn = "dice_ce_loss"
    opts = _dice.check_options(fn, ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=p,
                               reduction=reduction, activation=activation, validate_labels=validate_labels,
                               distributed=distributed, process_group=process_group)
    w = _dice.check_class_weights(fn, "weight", weight)
    cw = _dice.check_class_weights(fn, "ce_weight", ce_weight)
    lambda_dice = _dice.check_number(fn, "lambda_dice", lambda_dice)
    lambda_ce = _dice.check_number(fn, "lambda_ce", lambda_ce)
    if isinstance(x, torch.Tensor) and x.dim() >= 2:
        _dice.check_length(fn, "ce_weight", cw, _dice.num_classes(x, opts.activation),
                           "class" if opts.activation == "softmax" else "channel")
    dice, table, _ = _dice_per_sample(fn, x, y, mask, opts, w, with_ce=True)
    ce_num, ce_den = _ce_parts(table, cw, opts.activation)
    if opts.reduction in ("mean", "batch"):
        loss = lambda_dice * _dice.reduce(dice, opts.reduction) + lambda_ce * _safe_div(ce_num.sum(), ce_den.sum())
    else:
        loss = _dice.reduce(lambda_dice * dice + lambda_ce * _safe_div(ce_num, ce_den), opts.reduction)
    return loss.to(_dice.loss_dtype(x))


def generalized_dice_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    w_type: str = "square",
    ignore_channel: int = -1,
    ignore_label: int = -1,
    smooth: float = 0.0,
    p: int = 1,
    reduction: str = "mean",
    activation: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    validate_labels: Optional[bool] = None,
    distributed: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """Generalized Dice loss (Sudre et al. 2017), fused and one-hot-free.

    Per sample (or over the batch for ``"batch"``), with class weights ``w_c`` from the target
    mass T: ``1 / T^2`` (``w_type="square"``), ``1 / T`` (``"simple"``) or 1 (``"uniform"``);
    a class that counts but is absent (T == 0) gets the largest weight of the present classes
    (0 if none is present), as in MONAI and NiftyNet:
    ``L = 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c (P_c + T_c) + smooth)`` (0 where the
    denominator is 0). The weights are constants (no gradient flows through them).

    Equal to MONAI's ``GeneralizedDiceLoss`` (``to_onehot_y=True, softmax=True`` or
    ``sigmoid=True``, ``smooth_nr = smooth_dr = smooth``, ``batch = reduction == "batch"``,
    ``include_background = ignore_channel != 0``) for p = 1, except where MONAI is known to be
    off: it computes the weights in float32 whatever the input dtype (we use float64), and it
    returns 0/0 = NaN for a sample without any counted class at smooth = 0 (we return 0). MONAI
    has no ``ignore_label``, ``mask`` or ``p``.

    Args:
        w_type: ``"square"``, ``"simple"`` or ``"uniform"``.
        x, y, ignore_channel, ignore_label, smooth, p, reduction, activation, mask,
        validate_labels, distributed, process_group: as in :func:`dice_loss`.

    Returns:
        The loss: float32 for half inputs, otherwise x's dtype.

    Raises:
        TypeError, ValueError, RuntimeError: as :func:`dice_loss`, and for an unknown ``w_type``.

    Shape:
        x ``[B, C, *]``, y as in :func:`dice_loss` -> ``[B]`` for ``"none"``, else ``[]``.

    Example:
        >>> x = torch.randn(2, 4, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 4, (2, 16, 16, 16))
        >>> generalized_dice_loss(x, y, w_type="simple").backward()
    """
    fn = "generalized_dice_loss"
    opts = _dice.check_options(fn, ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=p,
                               reduction=reduction, activation=activation, validate_labels=validate_labels,
                               distributed=distributed, process_group=process_group)
    _checks.check_choice(fn, "w_type", w_type, W_TYPES)
    _dice.check_inputs(fn, x, y, mask, opts.activation)
    K = _dice.num_classes(x, opts.activation)
    table = _dice.sums(fn, x, y, mask, opts)
    I, P, T = table[:, ROW_I], table[:, ROW_P], table[:, ROW_T]
    counted = _dice.counted_classes(opts.ignore_channel, K, T).bool()
    present = (T > 0) & counted
    if w_type == "uniform":
        w = counted.to(T.dtype).expand_as(T)
    else:
        safe_T = torch.where(present, T, torch.ones_like(T))
        w = torch.where(present, 1 / (safe_T * safe_T if w_type == "square" else safe_T), torch.zeros_like(T))
        w = torch.where(counted & ~present, w.amax(1, keepdim=True), w)
    w = w.detach()
    num = 2 * (w * I).sum(1) + opts.smooth
    den = (w * (P + T)).sum(1) + opts.smooth
    return _dice.reduce(_dice.ratio_term(num, den), opts.reduction).to(_dice.loss_dtype(x))


def tversky_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    weight: Weight = None,
    ignore_channel: int = -1,
    ignore_label: int = -1,
    smooth: float = 0.0,
    reduction: str = "mean",
    activation: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    validate_labels: Optional[bool] = None,
    distributed: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """Tversky loss (Salehi et al. 2017), fused and one-hot-free.

    Per sample and class, with the soft true positives ``TP = I``, false positives
    ``FP = sum s (1 - t) = P - I`` and false negatives ``FN = sum (1 - s) t = T - I`` (p = 1):
    ``L_bc = 1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth)`` (0 where the denominator is
    0), then the class mean (or ``weight``-ed sum) and ``reduction`` as in :func:`dice_loss`.
    ``alpha`` weights false positives and ``beta`` false negatives, as in MONAI's
    ``TverskyLoss``, which this equals with ``smooth_nr = smooth_dr = smooth``,
    ``batch = reduction == "batch"`` and ``include_background = ignore_channel != 0``;
    alpha = beta = 0.5 is the Dice loss with smooth halved in its formula.

    Args:
        alpha: weight of the false positives (>= 0).
        beta: weight of the false negatives (>= 0).
        x, y, weight, ignore_channel, ignore_label, smooth, reduction, activation, mask,
        validate_labels, distributed, process_group: as in :func:`dice_loss`.

    Returns:
        The loss: float32 for half inputs, otherwise x's dtype.

    Raises:
        TypeError, ValueError, RuntimeError: as :func:`dice_loss`, and for a bad alpha / beta.

    Shape:
        x ``[B, C, *]``, y as in :func:`dice_loss` -> ``[B]`` for ``"none"``, else ``[]``.

    Example:
        >>> x = torch.randn(2, 4, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 4, (2, 16, 16, 16))
        >>> tversky_loss(x, y, alpha=0.3, beta=0.7).backward()
    """
    fn = "tversky_loss"
    opts = _dice.check_options(fn, ignore_channel=ignore_channel, ignore_label=ignore_label, smooth=smooth, p=1,
                               reduction=reduction, activation=activation, validate_labels=validate_labels,
                               distributed=distributed, process_group=process_group)
    alpha = _dice.check_number(fn, "alpha", alpha)
    beta = _dice.check_number(fn, "beta", beta)
    w = _dice.check_class_weights(fn, "weight", weight)
    _dice.check_inputs(fn, x, y, mask, opts.activation)
    K = _dice.num_classes(x, opts.activation)
    _dice.check_length(fn, "weight", w, K, "class")
    table = _dice.sums(fn, x, y, mask, opts)
    I, P, T = table[:, ROW_I], table[:, ROW_P], table[:, ROW_T]
    terms = _dice.ratio_term(I + opts.smooth, I + alpha * (P - I) + beta * (T - I) + opts.smooth)
    per_sample = (terms * _dice.class_factors(w, opts.ignore_channel, K, terms)).sum(1)
    return _dice.reduce(per_sample, opts.reduction).to(_dice.loss_dtype(x))


# MALIS lives in seglosses/malis.py (it needs the nhood helpers); re-exported here so that every
# loss has a functional form in one namespace. Imported last: malis.py imports this module's deps.
from .malis import malis_loss, malis_weights  # noqa: E402

__all__ += ["malis_loss", "malis_weights"]
