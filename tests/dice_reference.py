"""Plain-autograd, one-hot references for the Dice family (SPEC section 2 and issue 13).

Slow and memory-hungry on purpose: softmax / sigmoid, one-hot targets and masks are materialised
and every step is an ordinary differentiable torch op, computed in float64. Gradients come from
autograd, so they flow back to ``x`` in ``x``'s own dtype. Nothing here calls seglosses.
"""

from typing import Dict, Optional, Sequence

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


def _label_map(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[B, *] or [B, 1, *] (mask or labels) -> [B, *] broadcast to x's batch and spatial dims."""
    if t.dim() == x.dim():
        t = t[:, 0]
    return t.expand((x.shape[0],) + tuple(x.shape[2:]))


def sums_ref(x: torch.Tensor, y: torch.Tensor, ignore_label: int = -1, p: int = 1,
             mask: Optional[torch.Tensor] = None, activation: str = "softmax") -> Dict[str, torch.Tensor]:
    """Per (sample, class) sums [B, K] in float64 over the voxels that count.

    softmax (label maps): I = sum s [y=c], P = sum s^p, T = sum [y=c], L = sum_{y=c} -log s_c.
    sigmoid (targets of x's shape): I = sum s t, P = sum s^p, T = sum t^p,
    Lpos = sum t softplus(-x), Lneg = sum (1-t) softplus(x), N = number of counted elements.
    A voxel counts unless its label is ignore_label, it is masked (mask == 0) or (softmax) its
    label lies outside [0, K) (what the ops do with validation off)."""
    dims = tuple(range(2, x.dim()))
    if activation == "sigmoid":
        xd = x.double()
        t = y.double()
        valid = torch.ones_like(xd)
        if mask is not None:
            valid = valid * mask.bool().double().expand_as(xd)
        valid = valid * ((t >= 0) & (t <= 1)).double()
        t = torch.where(valid > 0, t, torch.zeros_like(t))
        s = torch.sigmoid(xd)
        return {
            "I": (s * t * valid).sum(dims), "P": (s.pow(p) * valid).sum(dims), "T": (t.pow(p) * valid).sum(dims),
            "Lpos": (t * F.softplus(-xd) * valid).sum(dims), "Lneg": ((1 - t) * F.softplus(xd) * valid).sum(dims),
            "N": valid.sum(dims),
        }
    s = probabilities(x)
    K = s.shape[1]
    lab = _label_map(x, y).long()
    valid = (lab != ignore_label) & (lab >= 0) & (lab < K)
    if mask is not None:
        valid = valid & _label_map(x, mask).bool()
    onehot = F.one_hot(torch.where(valid, lab, 0), K).movedim(-1, 1).double() * valid.unsqueeze(1)
    vmask = valid.unsqueeze(1).double()
    nll = -torch.log(s)
    return {
        "I": (s * onehot).sum(dims), "P": (s.pow(p) * vmask).sum(dims), "T": onehot.sum(dims),
        "L": torch.where(onehot > 0, nll, torch.zeros_like(nll)).sum(dims),
    }


def dice_sums_ref(x, y, ignore_label=-1, p=1, mask=None):
    """(I, P, T) of a label map, each [B, K] float64."""
    r = sums_ref(x, y, ignore_label, p, mask)
    return r["I"], r["P"], r["T"]


def _ratio(num, den):
    nonzero = den != 0
    # den == 0: the term is 0 with zero gradient (the where() also guards the division).
    return torch.where(nonzero, 1.0 - num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(den))


def _batch(r: Dict[str, torch.Tensor], reduction: str) -> Dict[str, torch.Tensor]:
    return {k: v.sum(0, keepdim=True) for k, v in r.items()} if reduction == "batch" else r


def _class_mean(L, weight, ignore_channel):
    K = L.shape[1]
    counts = torch.ones(K, dtype=torch.float64)
    if 0 <= ignore_channel < K:
        counts[ignore_channel] = 0.0
    if weight is None:
        return (L * counts).sum(1) / counts.sum()
    w = torch.as_tensor(weight, dtype=torch.float64).reshape(K)
    return (L * (w * counts)).sum(1)


def _reduce(per_sample, reduction):
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean() if per_sample.numel() else per_sample.sum()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "batch":
        return per_sample[0]
    raise ValueError(f"unknown reduction {reduction!r}")


def dice_loss_ref(x: torch.Tensor, y: torch.Tensor, weight: Optional[Sequence[float]] = None,
                  ignore_channel: int = -1, ignore_label: int = -1, smooth: float = 0.0, p: int = 1,
                  reduction: str = "mean", mask=None, activation="softmax") -> torch.Tensor:
    """The Dice loss of SPEC section 2, in float64."""
    r = _batch(sums_ref(x, y, ignore_label, p, mask, activation), reduction)
    L = _ratio(2.0 * r["I"] + smooth, r["P"] + r["T"] + smooth)
    return _reduce(_class_mean(L, weight, ignore_channel), reduction)


def cross_entropy_ref(x, y, ignore_label=-1, ce_weight=None, mask=None, activation="softmax", reduction="mean"):
    """torch's CrossEntropyLoss (softmax; C == 1 as logits (0, x)) or BCEWithLogitsLoss
    (sigmoid, pos_weight=ce_weight), over the voxels that count: the mean over the batch
    ("mean" / "batch") or per sample ("none"; "sum" adds those), 0 where nothing counts."""
    xd = x.double()
    if activation == "sigmoid":
        valid = ((y.double() >= 0) & (y.double() <= 1)).double()
        if mask is not None:
            valid = valid * mask.bool().double().expand_as(xd)
        t = torch.where(valid > 0, y.double(), torch.zeros_like(xd))
        pw = None if ce_weight is None else torch.as_tensor(ce_weight, dtype=torch.float64).view(1, -1, *[1] * (x.dim() - 2))
        el = F.binary_cross_entropy_with_logits(xd, t, pos_weight=pw, reduction="none") * valid
        num, den = el.flatten(1).sum(1), valid.flatten(1).sum(1)
    else:
        logits = torch.cat([torch.zeros_like(xd), xd], 1) if x.shape[1] == 1 else xd
        K = logits.shape[1]
        lab = _label_map(x, y).long()
        valid = (lab != ignore_label) & (lab >= 0) & (lab < K)
        if mask is not None:
            valid = valid & _label_map(x, mask).bool()
        target = torch.where(valid, lab, torch.full_like(lab, -100))
        w = None if ce_weight is None else torch.as_tensor(ce_weight, dtype=torch.float64)
        el = F.cross_entropy(logits, target, weight=w, ignore_index=-100, reduction="none")  # 0 where ignored
        wv = (torch.ones(K, dtype=torch.float64) if w is None else w)[torch.where(valid, lab, 0)] * valid
        num, den = el.flatten(1).sum(1), wv.flatten(1).sum(1)
    if reduction in ("mean", "batch"):
        return num.sum() / den.sum() if den.sum() > 0 else num.sum() * 0
    per = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    return per if reduction == "none" else per.sum()


def dice_ce_loss_ref(x, y, weight=None, ignore_channel=-1, ignore_label=-1, smooth=0.0, p=1, reduction="mean",
                     lambda_dice=1.0, lambda_ce=1.0, ce_weight=None, mask=None, activation="softmax"):
    d = dice_loss_ref(x, y, weight, ignore_channel, ignore_label, smooth, p,
                      "none" if reduction in ("none", "sum") else reduction, mask, activation)
    ce = cross_entropy_ref(x, y, ignore_label, ce_weight, mask, activation, "none" if reduction == "sum" else reduction)
    if reduction == "sum":
        return (lambda_dice * d + lambda_ce * ce).sum()
    return lambda_dice * d + lambda_ce * ce


def generalized_dice_loss_ref(x, y, w_type="square", ignore_channel=-1, ignore_label=-1, smooth=0.0, p=1,
                              reduction="mean", mask=None, activation="softmax"):
    """Generalized Dice with MONAI's rule for absent classes (the largest weight of the present
    classes), weights in float64."""
    r = _batch(sums_ref(x, y, ignore_label, p, mask, activation), reduction)
    I, P, T = r["I"], r["P"], r["T"]
    keep = [c for c in range(I.shape[1]) if c != ignore_channel]
    I, P, T = I[:, keep], P[:, keep], T[:, keep]
    rows = []
    for b in range(T.shape[0]):
        w = []
        for c in range(T.shape[1]):
            t = T[b, c].item()
            w.append(1.0 if w_type == "uniform" else (0.0 if t == 0 else (1 / t**2 if w_type == "square" else 1 / t)))
        top = max(w) if w else 0.0
        w = [top if T[b, c].item() == 0 and w_type != "uniform" else w[c] for c in range(T.shape[1])]
        wt = torch.tensor(w, dtype=torch.float64)
        rows.append(_ratio(2 * (wt * I[b]).sum() + smooth, (wt * (P[b] + T[b])).sum() + smooth))
    per = torch.stack(rows) if rows else torch.zeros(0, dtype=torch.float64)
    return _reduce(per, reduction)


def tversky_loss_ref(x, y, alpha=0.5, beta=0.5, weight=None, ignore_channel=-1, ignore_label=-1, smooth=0.0,
                     reduction="mean", mask=None, activation="softmax"):
    """Tversky with FP = sum s (1 - t) and FN = sum (1 - s) t, written out (not from P - I)."""
    dims = tuple(range(2, x.dim()))
    if activation == "sigmoid":
        s = torch.sigmoid(x.double())
        t = y.double()
        valid = torch.ones_like(s) if mask is None else mask.bool().double().expand_as(s)
    else:
        s = probabilities(x)
        K = s.shape[1]
        lab = _label_map(x, y).long()
        v = (lab != ignore_label) & (lab >= 0) & (lab < K)
        if mask is not None:
            v = v & _label_map(x, mask).bool()
        t = F.one_hot(torch.where(v, lab, 0), K).movedim(-1, 1).double()
        valid = v.unsqueeze(1).double().expand_as(s)
    tp, fp, fn = (s * t * valid).sum(dims), (s * (1 - t) * valid).sum(dims), ((1 - s) * t * valid).sum(dims)
    if reduction == "batch":
        tp, fp, fn = tp.sum(0, keepdim=True), fp.sum(0, keepdim=True), fn.sum(0, keepdim=True)
    L = _ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    return _reduce(_class_mean(L, weight, ignore_channel), reduction)
