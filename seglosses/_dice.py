"""What every loss of the Dice family shares: argument checks, the fused sums, and the O(B*K)
steps around them (batch reduction, the DDP all-reduce, class factors, the ``D == 0`` rule).

The compiled ops (``torch.ops.seglosses.dice_sums`` / ``dice_sigmoid_sums``, see
``csrc/seglosses.cpp``) make one pass over the logits and return per (sample, class) sums; the
loss formulas in :mod:`seglosses.functional` are plain torch on those sums, so autograd produces
the coefficient tables of the one elementwise backward pass and ``torch.compile`` traces it all.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch

from . import _checks
from ._ops import ops

#: The largest ``p`` accepted (csrc/dice_math.h: kMaxP). s^p is computed by squaring; beyond this
#: every probability below 1 underflows to 0 anyway.
MAX_P = 1024

ACTIVATIONS = ("softmax", "sigmoid")
REDUCTIONS = ("none", "mean", "sum", "batch")
LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                torch.uint16, torch.uint32, torch.uint64)
LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TARGET_DTYPES = (torch.bool,) + LABEL_DTYPES + LOGIT_DTYPES  # multi-label targets, values in [0, 1]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Rows of the sums tables (csrc/seglosses.cpp).
ROW_I, ROW_P, ROW_T, ROW_L = 0, 1, 2, 3          # label maps: [B, 4, K]
ROW_LPOS, ROW_LNEG, ROW_N = 3, 4, 5              # multi-label sigmoid: [B, 6, C]

Weight = Optional[Union[Sequence[float], torch.Tensor]]


# ----------------------------------------------------------------------------- options

def check_number(fn: str, name: str, value: Any, minimum: float = 0.0) -> float:
    """A finite real number >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{fn}: {name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def check_class_weights(fn: str, name: str, weight: Weight) -> Optional[torch.Tensor]:
    """None, or the weights as a 1-D float64 tensor of finite values >= 0.

    The values of a tensor are checked only on the CPU and outside torch.compile (reading them
    from a CUDA tensor would wait for the GPU)."""
    if weight is None:
        return None
    if isinstance(weight, torch.Tensor):
        w = weight.detach()
        if w.dtype == torch.bool or w.is_complex():
            raise TypeError(f"{fn}: {name} must hold real numbers, got dtype {w.dtype}")
        if w.dim() != 1:
            raise ValueError(f"{fn}: {name} must be a 1-D sequence of class weights, got shape {tuple(w.shape)}")
        w = w.to(torch.float64)
        if w.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_weight_values(fn, name, w.tolist())
        return w
    if isinstance(weight, (str, bytes)) or not hasattr(weight, "__len__"):
        raise TypeError(f"{fn}: {name} must be a sequence of numbers or a 1-D tensor, got {weight!r}")
    values = list(weight)
    for v in values:
        if hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
            raise ValueError(f"{fn}: {name} must be a 1-D sequence of class weights, got {weight!r}")
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{fn}: {name} must be a sequence of numbers or a 1-D tensor, got {weight!r}")
    _check_weight_values(fn, name, values)
    # Python numbers straight to float64 (no float32 rounding on the way)
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def _check_weight_values(fn: str, name: str, values: Sequence[float]) -> None:
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{fn}: {name} must hold finite values >= 0, got {list(values)}")


class Options(NamedTuple):
    """The checked options shared by the Dice family."""

    ignore_channel: int
    ignore_label: int
    smooth: float
    p: int
    reduction: str
    activation: str
    validate_labels: Optional[bool]
    process_group: Any  # None: local; else the group (WORLD for distributed=True) to all-reduce over
    distributed: bool


def check_options(fn: str, *, ignore_channel: int = -1, ignore_label: int = -1, smooth: float = 0.0, p: int = 1,
                  reduction: str = "mean", activation: str = "softmax", validate_labels: Optional[bool] = None,
                  distributed: bool = False, process_group: Any = None) -> Options:
    p = _checks.check_int(fn, "p", p)
    if not 1 <= p <= MAX_P:
        raise ValueError(f"{fn}: p must be an integer in [1, {MAX_P}], got {p!r}")
    ignore_channel = _checks.check_int(fn, "ignore_channel", ignore_channel)
    ignore_label = _checks.check_int(fn, "ignore_label", ignore_label)
    if not INT64_MIN <= ignore_label <= INT64_MAX:
        raise ValueError(f"{fn}: ignore_label must fit in int64, got {ignore_label!r}")
    smooth = check_number(fn, "smooth", smooth)
    _checks.check_choice(fn, "reduction", reduction, REDUCTIONS)
    _checks.check_choice(fn, "activation", activation, ACTIVATIONS)
    if activation == "sigmoid" and ignore_label != -1:
        raise ValueError(f"{fn}: ignore_label applies to label maps (activation='softmax'); with "
                         f"activation='sigmoid' pass mask= to leave elements out, got ignore_label={ignore_label!r}")
    if validate_labels is not None and not isinstance(validate_labels, bool):
        raise TypeError(f"{fn}: validate_labels must be None, True or False, got {validate_labels!r}")
    if not isinstance(distributed, bool):
        raise TypeError(f"{fn}: distributed must be True or False, got {distributed!r}")
    distributed = distributed or process_group is not None
    if distributed and reduction != "batch":
        raise ValueError(f"{fn}: distributed=True (or a process_group) needs reduction='batch' (the sums are "
                         f"all-reduced over the global batch), got reduction={reduction!r}")
    return Options(ignore_channel, ignore_label, smooth, p, reduction, activation, validate_labels, process_group,
                   distributed)


def label_validation(validate_labels: Optional[bool], device: torch.device) -> bool:
    """Whether the sums op validates the labels (and raises for a bad one).

    ``None`` (the default): on the CPU, where it is free, yes; on CUDA no, because reporting a bad
    label makes the host wait for the kernel (a sync per step, and no CUDA-graph capture). Without
    validation a bad label counts nowhere, identically on every device.
    """
    if validate_labels is None:
        return device.type != "cuda"
    return validate_labels


# ----------------------------------------------------------------------------- inputs

def num_classes(x: torch.Tensor, activation: str) -> int:
    """K: the channels, or 2 for a one-channel label-map (binary) loss."""
    return 2 if activation == "softmax" and x.shape[1] == 1 else x.shape[1]


def check_inputs(fn: str, x: Any, y: Any, mask: Any, activation: str) -> None:
    _checks.check_tensor(fn, "x", x)
    _checks.check_tensor(fn, "y", y)
    if x.dtype not in LOGIT_DTYPES:
        raise TypeError(f"{fn}: x must be float16, bfloat16, float32 or float64 logits, got dtype {x.dtype}")
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"{fn}: x must be [B, C, *spatial] with 1 to 3 spatial dims, got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{fn}: x must have at least one channel, got shape {tuple(x.shape)}")
    _checks.check_same_device(fn, "y", y, "x", x)
    if activation == "softmax":
        _check_label_map(fn, x, y)
    else:
        _check_sigmoid_target(fn, x, y)
    if mask is not None:
        _check_mask(fn, x, mask, activation)


def _check_label_map(fn: str, x: torch.Tensor, y: torch.Tensor) -> None:
    x_shaped = x.shape[1] > 1 and tuple(y.shape) == tuple(x.shape)
    if y.dtype not in LABEL_DTYPES:
        if y.is_floating_point() or y.dtype == torch.bool:
            hint = ("it has x's shape, so it looks like a one-hot or probability target: pass integer labels, e.g. "
                    "`y.argmax(1)`, or use activation='sigmoid' for multi-label targets" if x_shaped
                    else "pass integer labels, e.g. `y.long()` (or `y.argmax(1)` for a one-hot target)")
        else:
            hint = "pass integer labels"
        raise TypeError(f"{fn}: y must hold integer class labels (uint8, int8, int16, int32, int64, uint16, uint32 "
                        f"or uint64), got dtype {y.dtype} with shape {tuple(y.shape)}; {hint}")
    if x_shaped:
        raise ValueError(
            f"{fn}: y has x's shape {tuple(x.shape)}, i.e. one value per class: a one-hot (x-shaped) target. "
            f"With activation='softmax', y must be a label map [B, *spatial] or [B, 1, *spatial]: pass "
            f"`y.argmax(1)`; for multi-label targets of x's shape use activation='sigmoid'")
    y_spatial = tuple(y.shape[2:]) if (y.dim() == x.dim() and y.shape[1] == 1) else tuple(y.shape[1:])
    if y.dim() not in (x.dim() - 1, x.dim()) or y.shape[0] != x.shape[0] or y_spatial != tuple(x.shape[2:]):
        raise ValueError(f"{fn}: y must be a label map [B, *spatial] or [B, 1, *spatial] with x's B and spatial "
                         f"dims {tuple(x.shape[:1] + x.shape[2:])}, got shape {tuple(y.shape)}")


def _check_sigmoid_target(fn: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if y.dtype not in TARGET_DTYPES:
        raise TypeError(f"{fn}: with activation='sigmoid', y must hold targets in [0, 1] (bool, integer or floating "
                        f"point), got dtype {y.dtype}")
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"{fn}: with activation='sigmoid', y must have x's shape {tuple(x.shape)} (one target "
                         f"channel per logit channel), got shape {tuple(y.shape)}")


def _check_mask(fn: str, x: torch.Tensor, mask: Any, activation: str) -> None:
    _checks.check_tensor(fn, "mask", mask)
    _checks.check_same_device(fn, "mask", mask, "x", x)
    if mask.is_complex():
        raise TypeError(f"{fn}: mask must be bool, integer or floating point, got dtype {mask.dtype}")
    spatial = tuple(x.shape[2:])
    if activation == "softmax":
        expected = "[B, *spatial] or [B, 1, *spatial]"
        m = tuple(mask.shape[2:]) if (mask.dim() == x.dim() and mask.shape[1] == 1) else (
            tuple(mask.shape[1:]) if mask.dim() == x.dim() - 1 else None)
        ok = m is not None and len(m) == len(spatial) and mask.shape[0] in (1, x.shape[0])
    else:
        expected = "[B, C, *spatial] or [B, 1, *spatial]"
        ok = mask.dim() == x.dim() and mask.shape[0] in (1, x.shape[0]) and mask.shape[1] in (1, x.shape[1])
        m = tuple(mask.shape[2:]) if ok else None
    ok = ok and all(a in (1, b) for a, b in zip(m, spatial))
    if not ok:
        raise ValueError(f"{fn}: mask must be {expected} (or broadcastable to it) for x {tuple(x.shape)}, got shape "
                         f"{tuple(mask.shape)}")


# ----------------------------------------------------------------------------- sums

class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of a process group whose backward is the same all-reduce of the
    gradients (its adjoint): every rank computes the global-batch loss, and each rank's inputs
    get the sum over ranks of the gradient, which DDP's averaging then divides back by the world
    size, giving exactly the single-process gradient (nnU-Net's AllGatherGrad does the same)."""

    @staticmethod
    def forward(ctx, t, group):
        import torch.distributed as dist

        ctx.group = group
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(fn: str, t: torch.Tensor, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{fn}: distributed=True needs an initialised torch.distributed process group "
                           f"(torch.distributed.init_process_group), but none is initialised")
    return _AllReduceSum.apply(t, dist.group.WORLD if group is None else group)


def sums(fn: str, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor], opts: Options,
         with_ce: bool = False) -> torch.Tensor:
    """The float64 sums table of the activation: [B, 4, K] (label maps) or [B, 6, C] (sigmoid);
    summed over the batch (keeping a batch dim of 1) for reduction="batch", and all-reduced over
    the process group when distributed."""
    validate = label_validation(opts.validate_labels, x.device)
    if opts.activation == "softmax":
        table = ops.dice_sums(x, y, mask, opts.ignore_label, opts.p, with_ce, validate, fn)
    else:
        table = ops.dice_sigmoid_sums(x, y, mask, opts.p, with_ce, validate, fn)
    if opts.reduction == "batch":
        table = table.sum(0, keepdim=True)
        if opts.distributed:
            table = all_reduce_sum(fn, table, opts.process_group)
    return table


# ----------------------------------------------------------------------------- algebra

def ratio_term(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """1 - num / den, and 0 with zero gradient where den == 0 (the SPEC's D == 0 rule)."""
    nonzero = den != 0
    return torch.where(nonzero, 1 - num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(den))


def counted_classes(ignore_channel: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """[K]: 1 for the classes that count, 0 for ignore_channel (no effect outside [0, K))."""
    counted = torch.ones(K, dtype=like.dtype, device=like.device)
    if 0 <= ignore_channel < K:
        counted[ignore_channel] = 0
    return counted


def class_factors(weight: Optional[torch.Tensor], ignore_channel: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """Per-class factors [K]: w_c (or 1 / #counted classes), 0 for the ignored channel."""
    counted = counted_classes(ignore_channel, K, like)
    if weight is None:
        return counted / counted.sum().clamp_min(1)
    return weight.to(dtype=like.dtype, device=like.device) * counted


def check_length(fn: str, name: str, w: Optional[torch.Tensor], K: int, what: str) -> None:
    if w is not None and w.numel() != K:
        raise ValueError(f"{fn}: {name} must have {K} values (one per {what}), got {w.numel()}")


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """[B] (or [1] for "batch") -> the loss of the reduction."""
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.sum() / max(per_sample.shape[0], 1)
    return per_sample.sum()


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half inputs, else x's dtype."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
