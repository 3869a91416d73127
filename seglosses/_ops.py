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


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# Dice
# ---------------------------------------------------------------------------------------------
@torch.library.register_fake("seglosses::dice_sums")
def _dice_sums_fake(x, y, ignore_label, p):
    return x.new_empty((x.shape[0], 3, _num_classes(x)), dtype=_acc_dtype(x))


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


@torch.library.register_fake("seglosses::dice_backward")
def _dice_backward_fake(x, y, coef_a, coef_b, ignore_label, p):
    # The kernel writes the gradient in x's memory format when that layout's spatial dims collapse
    # into one stride, contiguous otherwise (csrc/dice.h: empty_grad).
    g = torch.empty_like(x)
    return g if _spatial_collapses(g) else torch.empty_like(x, memory_format=torch.contiguous_format)


def _dice_sums_setup_context(ctx, inputs, output):
    x, y, ignore_label, p = inputs
    ctx.save_for_backward(x, y)
    ctx.ignore_label = ignore_label
    ctx.p = p


def _dice_sums_backward(ctx, grad_sums):
    # grad_sums[:, 0] = dLoss/dI (the table A), grad_sums[:, 1] = dLoss/dP; T does not depend on x.
    x, y = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        coef_a = grad_sums[:, 0]
        coef_b = grad_sums[:, 1] * ctx.p
        grad_x = ops.dice_backward(x, y, coef_a, coef_b, ctx.ignore_label, ctx.p)
    return grad_x, None, None, None


torch.library.register_autograd(
    "seglosses::dice_sums", _dice_sums_backward, setup_context=_dice_sums_setup_context
)


def _dice_backward_setup_context(ctx, inputs, output):
    pass


def _dice_backward_backward(ctx, grad):
    raise RuntimeError(
        "dice_loss: second derivatives are not supported (dice_backward has no derivative); "
        "use create_graph=False, or a plain-autograd Dice for double backward"
    )


# A second derivative through the Dice loss would otherwise be silently missing.
torch.library.register_autograd(
    "seglosses::dice_backward", _dice_backward_backward, setup_context=_dice_backward_setup_context
)


# ---------------------------------------------------------------------------------------------
# MALIS and connected components
# ---------------------------------------------------------------------------------------------
@torch.library.register_fake("seglosses::malis_weights")
def _malis_weights_fake(pred, seg, gt_affs, mask, nhood, constrained, constrain_masked, num_threads, fn, pred_arg,
                        seg_arg):
    torch._check(num_threads >= 0, lambda: f"{fn}: num_threads must be >= 1, got {num_threads}")
    return torch.empty(pred.shape, dtype=torch.float32, device=pred.device)


@torch.library.register_fake("seglosses::malis_counts")
def _malis_counts_fake(pred, seg, gt_affs, mask, nhood, constrained, constrain_masked, num_threads, fn, pred_arg,
                       seg_arg):
    torch._check(num_threads >= 0, lambda: f"{fn}: num_threads must be >= 1, got {num_threads}")
    return (
        torch.empty(pred.shape, dtype=torch.int64, device=pred.device),
        torch.empty(pred.shape, dtype=torch.int64, device=pred.device),
    )


@torch.library.register_fake("seglosses::connected_components")
def _connected_components_fake(affs, nhood, threshold, singleton_background, num_threads, fn):
    torch._check(num_threads >= 0, lambda: f"{fn}: num_threads must be >= 1, got {num_threads}")
    return torch.empty((affs.shape[0],) + tuple(affs.shape[2:]), dtype=torch.int64, device=affs.device)
