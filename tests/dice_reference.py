"""Plain-autograd, one-hot reference for the Dice loss of SPEC section 2.

Slow and memory-hungry on purpose: softmax / sigmoid, one-hot targets and masks are materialised
and every step is an ordinary differentiable torch op, computed in float64. Gradients come from
autograd, so they flow back to ``x`` in ``x``'s own dtype.
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def probabilities(x: torch.Tensor) -> torch.Tensor:
    """Class probabilities [B, K, *] in float64: softmax over C >= 2 channels, or
    (1 - sigmoid, sigmoid) for a single channel (K = 2)."""
    x = x.double()
    if x.shape[1] == 1:
        s1 = torch.sigmoid(x[:, 0])
        return torch.stack([1.0 - s1, s1], dim=1)
    return torch.softmax(x, dim=1)


def dice_sums_ref(x: torch.Tensor, y: torch.Tensor, ignore_label: int = -1, p: int = 1
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (sample, class) sums I, P, T, each [B, K] float64, over voxels whose label is not
    ``ignore_label``. ``y`` is [B, *] or [B, 1, *]."""
    s = probabilities(x)
    K = s.shape[1]
    if y.dim() == x.dim():
        y = y[:, 0]
    y = y.long()
    valid = y != ignore_label                                    # [B, *]
    onehot = F.one_hot(torch.where(valid, y, 0), K)              # [B, *, K]
    onehot = onehot.movedim(-1, 1).double() * valid.unsqueeze(1)  # [B, K, *], 0 where ignored
    mask = valid.unsqueeze(1).double()                           # [B, 1, *]
    dims = tuple(range(2, s.dim()))
    I = (s * onehot).sum(dims)
    P = (s.pow(p) * mask).sum(dims)
    T = onehot.sum(dims)
    return I, P, T


def dice_loss_ref(x: torch.Tensor, y: torch.Tensor, weight: Optional[Sequence[float]] = None,
                  ignore_channel: int = -1, ignore_label: int = -1, smooth: float = 0.0, p: int = 1,
                  reduction: str = "mean") -> torch.Tensor:
    """The Dice loss of SPEC section 2, in float64."""
    I, P, T = dice_sums_ref(x, y, ignore_label, p)
    if reduction == "batch":
        I, P, T = I.sum(0, keepdim=True), P.sum(0, keepdim=True), T.sum(0, keepdim=True)
    N = 2.0 * I + smooth
    D = P + T + smooth
    nonzero = D != 0
    # D == 0: the term is 0 with zero gradient (the where() also guards the division).
    L = torch.where(nonzero, 1.0 - N / torch.where(nonzero, D, torch.ones_like(D)), torch.zeros_like(D))
    K = L.shape[1]
    counts = torch.ones(K, dtype=torch.float64)
    if 0 <= ignore_channel < K:
        counts[ignore_channel] = 0.0
    if weight is None:
        per_sample = (L * counts).sum(1) / counts.sum()
    else:
        w = torch.as_tensor(weight, dtype=torch.float64).reshape(K)
        per_sample = (L * (w * counts)).sum(1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean() if per_sample.numel() else per_sample.sum()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "batch":
        return per_sample[0]
    raise ValueError(f"dice_loss_ref: unknown reduction {reduction!r}")
