"""Loads the compiled operators and registers their fake kernels and autograd formulas.

Every operator lives in ``torch.ops.seglosses`` (declared in ``csrc/seglosses.cpp``). The
fake (meta) kernels here give shapes and dtypes without data, so ``torch.compile`` and
``torch.library.opcheck`` work; the autograd formula of ``dice_sums`` is built from the
registered ``dice_backward`` op.
"""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.seglosses)
except ImportError as exc:
    from ._load_diagnostics import explain_load_failure

    # The message carries the loader's own text where it helps; Python's "circular import" guess
    # for a missing _C would only mislead.
    raise ImportError(explain_load_failure(exc)) from None

ops = torch.ops.seglosses


def _num_classes(x: torch.Tensor) -> int:
    return 2 if x.shape[1] == 1 else x.shape[1]


# ---------------------------------------------------------------------------------------------
# Dice family (schemas and semantics: csrc/seglosses.cpp)
# ---------------------------------------------------------------------------------------------
DICE_LABEL_ROWS = 4  # I, P, T, L
DICE_SIGMOID_ROWS = 6  # I, P, T, Lpos, Lneg, N


def _check_devices_fake(op, x, **others):
    for name, t in others.items():
        if t is not None:
            torch._check_value(t.device == x.device,
                               lambda: f"{op}: {name} must be on x's device ({x.device}), got {t.device}")


def _check_logits_fake(op, x, p):
    torch._check(3 <= x.dim() <= 5, lambda: f"{op}: x must be [B, C, *spatial] with 1 to 3 spatial dims")
    torch._check(x.is_floating_point(), lambda: f"{op}: x must be floating point, got {x.dtype}")
    torch._check(x.shape[1] >= 1, lambda: f"{op}: x must have at least one channel")
    torch._check(1 <= p <= 1024, lambda: f"{op}: p must be an integer in [1, 1024], got {p}")


@torch.library.register_fake("seglosses::dice_sums")
def _dice_sums_fake(x, y, mask, ignore_label, p, with_ce, validate, api):
    _check_logits_fake("dice_sums", x, p)
    _check_devices_fake("dice_sums", x, y=y, mask=mask)
    torch._check(y.shape[0] == x.shape[0], lambda: "dice_sums: y must have x's batch size")
    return x.new_empty((x.shape[0], DICE_LABEL_ROWS, _num_classes(x)), dtype=torch.float64)


@torch.library.register_fake("seglosses::dice_sigmoid_sums")
def _dice_sigmoid_sums_fake(x, t, mask, p, with_ce, validate, api):
    _check_logits_fake("dice_sigmoid_sums", x, p)
    _check_devices_fake("dice_sigmoid_sums", x, t=t, mask=mask)
    torch._check(t.shape == x.shape, lambda: "dice_sigmoid_sums: t must have x's shape")
    return x.new_empty((x.shape[0], DICE_SIGMOID_ROWS, x.shape[1]), dtype=torch.float64)


def _spatial_collapses(t: torch.Tensor) -> bool:
    """Whether dims 2.. of t collapse into one stride (mirrors collapsed_stride in csrc/dice.h)."""
    expected = None
    for d in range(t.dim() - 1, 1, -1):
        if t.shape[d] == 1:
            continue
        if expected is not None and t.stride(d) != expected:
            return False
        expected = t.stride(d) * t.shape[d]
    return True


def _grad_like(x: torch.Tensor) -> torch.Tensor:
    # The kernels write the gradient in x's memory format when that layout's spatial dims collapse
    # into one stride, contiguous otherwise (csrc/dice.h: empty_grad).
    g = torch.empty_like(x)
    return g if _spatial_collapses(g) else torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("seglosses::dice_backward")
def _dice_backward_fake(x, y, mask, grad_sums, ignore_label, p):
    _check_logits_fake("dice_backward", x, p)
    _check_devices_fake("dice_backward", x, y=y, mask=mask, grad_sums=grad_sums)
    return _grad_like(x)


@torch.library.register_fake("seglosses::dice_sigmoid_backward")
def _dice_sigmoid_backward_fake(x, t, mask, grad_sums, p):
    _check_logits_fake("dice_sigmoid_backward", x, p)
    _check_devices_fake("dice_sigmoid_backward", x, t=t, mask=mask, grad_sums=grad_sums)
    return _grad_like(x)


def _dice_sums_setup_context(ctx, inputs, output):
    x, y, mask, ignore_label, p, with_ce, validate, api = inputs
    ctx.save_for_backward(x, y, mask)
    ctx.ignore_label = ignore_label
    ctx.p = p


def _dice_sums_backward(ctx, grad_sums):
    x, y, mask = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = ops.dice_backward(x, y, mask, grad_sums, ctx.ignore_label, ctx.p)
    return grad_x, None, None, None, None, None, None, None


torch.library.register_autograd(
    "seglosses::dice_sums", _dice_sums_backward, setup_context=_dice_sums_setup_context
)


def _dice_sigmoid_sums_setup_context(ctx, inputs, output):
    x, t, mask, p, with_ce, validate, api = inputs
    ctx.save_for_backward(x, t, mask)
    ctx.p = p


def _dice_sigmoid_sums_backward(ctx, grad_sums):
    x, t, mask = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = ops.dice_sigmoid_backward(x, t, mask, grad_sums, ctx.p)
    return grad_x, None, None, None, None, None, None


torch.library.register_autograd(
    "seglosses::dice_sigmoid_sums", _dice_sigmoid_sums_backward, setup_context=_dice_sigmoid_sums_setup_context
)


def _no_setup_context(ctx, inputs, output):
    pass


def _dice_double_backward(ctx, grad):
    raise RuntimeError(
        "dice_loss: second derivatives are not supported (the Dice backward ops have no derivative); "
        "use create_graph=False, or a plain-autograd Dice for double backward"
    )


# A second derivative through a Dice-family loss would otherwise be silently missing.
for _name in ("seglosses::dice_backward", "seglosses::dice_sigmoid_backward"):
    torch.library.register_autograd(_name, _dice_double_backward, setup_context=_no_setup_context)


# ---------------------------------------------------------------------------------------------
# MALIS and connected components
# ---------------------------------------------------------------------------------------------
def _check_malis_args(pred, seg, gt_affs, mask, num_threads, fn, pred_arg, seg_arg):
    """The checks of the MALIS ops that need no data (csrc/cpu/malis_cpu.cpp, csrc/cuda/malis_cuda.cu)."""
    torch._check(num_threads >= 0, lambda: f"{fn}: num_threads must be >= 1, got {num_threads}")
    torch._check(seg is not None or gt_affs is not None,
                 lambda: f"{fn}: without {seg_arg} the labels are the connected components of gt_affs, "
                         f"so gt_affs must be given")
    for name, t in ((seg_arg, seg), ("gt_affs", gt_affs), ("mask", mask)):
        # With pred on CUDA the others may stay on the CPU (the ops read them on the host).
        if t is not None:
            torch._check(t.device == pred.device or (pred.device.type == "cuda" and t.device.type == "cpu"),
                         lambda: f"{fn}: {name} must be on {pred_arg}'s device {pred.device} or on the CPU, "
                                 f"got {t.device}")


@torch.library.register_fake("seglosses::malis_weights")
def _malis_weights_fake(pred, seg, gt_affs, mask, nhood, constrained, constrain_masked, num_threads, fn, pred_arg,
                        seg_arg):
    _check_malis_args(pred, seg, gt_affs, mask, num_threads, fn, pred_arg, seg_arg)
    return torch.empty(pred.shape, dtype=torch.float32, device=pred.device)


@torch.library.register_fake("seglosses::malis_counts")
def _malis_counts_fake(pred, seg, gt_affs, mask, nhood, constrained, constrain_masked, num_threads, fn, pred_arg,
                       seg_arg):
    _check_malis_args(pred, seg, gt_affs, mask, num_threads, fn, pred_arg, seg_arg)
    return (
        torch.empty(pred.shape, dtype=torch.int64, device=pred.device),
        torch.empty(pred.shape, dtype=torch.int64, device=pred.device),
    )


@torch.library.register_fake("seglosses::connected_components")
def _connected_components_fake(affs, nhood, threshold, singleton_background, num_threads, fn):
    torch._check(num_threads >= 0, lambda: f"{fn}: num_threads must be >= 1, got {num_threads}")
    return torch.empty((affs.shape[0],) + tuple(affs.shape[2:]), dtype=torch.int64, device=affs.device)
