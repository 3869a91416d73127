"""Scores of a segmentation against ground truth, threshold sweeps, and the threshold choice.

Scores (lower is better for all): variation of information split = H(pred | gt) and merge =
H(gt | pred) in bits (``skimage.metrics.variation_of_information``), the adapted Rand error
(``skimage.metrics.adapted_rand_error``), and the CREMI score, their geometric mean
``sqrt((VOI split + VOI merge) * ARAND)`` (as in the CREMI challenge's evaluation). Ground-truth
label 0 (boundaries, membrane) is left out of every score: the score is about which interior
voxels end up together.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.special import expit

from .decoding import connected_components, watershed_agglomeration

# Threshold grids. Connected components: an edge joins its voxels if its affinity is above the
# threshold. waterz: fragments merge while 1 - (median affinity between them) is below it.
CC_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
WATERZ_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DECODERS = ("cc", "waterz")
SCORE_KEYS = ("voi_split", "voi_merge", "arand", "cremi_score")


def score(gt: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
    """VOI split / merge (bits), adapted Rand error and CREMI score, ignoring ground-truth label 0.

    ``segments`` counts the predicted segments that cover ground-truth voxels.
    """
    from skimage.metrics import adapted_rand_error, variation_of_information

    # Leaving label 0 out by indexing is the same as skimage's ignore_labels=[0], and twice as fast.
    counted = gt > 0
    gt, pred = gt[counted], pred[counted]
    split, merge = variation_of_information(gt, pred)
    are, _, _ = adapted_rand_error(gt, pred)
    split, merge, are = float(split), float(merge), float(are)
    return {"voi_split": split, "voi_merge": merge, "voi": split + merge, "arand": are,
            "cremi_score": math.sqrt(max(split + merge, 0.0) * max(are, 0.0)),
            "segments": int(np.count_nonzero(np.bincount(pred))) if pred.size else 0}


def decode(decoder: str, affs: np.ndarray, thresholds: Sequence[float], min_size: int
           ) -> Iterable[Tuple[float, np.ndarray]]:
    """``(threshold, segmentation)`` for every threshold, in increasing order."""
    if decoder == "cc":
        return ((float(t), connected_components(affs, t, min_size)) for t in sorted(thresholds))
    if decoder == "waterz":
        return watershed_agglomeration(affs, thresholds, min_size)
    raise ValueError(f"decode: decoder must be one of {DECODERS}, got {decoder!r}")


def grid(decoder: str) -> Tuple[float, ...]:
    return CC_THRESHOLDS if decoder == "cc" else WATERZ_THRESHOLDS


def sweep(decoder: str, logits: np.ndarray, gt: np.ndarray, min_size: int,
          keep: Optional[float] = None) -> Tuple[List[Dict[str, float]], Optional[np.ndarray]]:
    """Scores at every threshold of the decoder's grid, and the segmentation at ``keep`` (if given)."""
    affs = expit(logits[:3]).astype(np.float32)
    rows, kept = [], None
    for t, seg in decode(decoder, affs, grid(decoder), min_size):
        rows.append(dict(score(gt, seg), threshold=t))
        if keep is not None and t == keep:
            kept = seg
    return rows, kept


def choose(rows: List[Dict[str, float]]) -> float:
    """The threshold with the lowest CREMI score (ties: the lower VOI, then the lower threshold)."""
    return min(rows, key=lambda m: (m["cremi_score"], m["voi"], m["threshold"]))["threshold"]


def evaluate(tune_logits: np.ndarray, tune_gt: np.ndarray, heldout_logits: np.ndarray, heldout_gt: np.ndarray,
             min_size: int, decoders: Sequence[str] = DECODERS) -> Dict[str, dict]:
    """Per decoder: the threshold picked on the tuning region and the held-out scores there.

    Returns:
        ``{decoder: {voi_split, voi_merge, voi, arand, cremi_score, segments, threshold,
        sweep: {"tune": [...], "heldout": [...]}, "seg": held-out segmentation}}``.
    """
    out = {}
    for decoder in decoders:
        tune_rows, _ = sweep(decoder, tune_logits, tune_gt, min_size)
        chosen = choose(tune_rows)
        heldout_rows, seg = sweep(decoder, heldout_logits, heldout_gt, min_size, keep=chosen)
        at = next(m for m in heldout_rows if m["threshold"] == chosen)
        out[decoder] = dict(at, threshold=chosen, sweep={"tune": tune_rows, "heldout": heldout_rows}, seg=seg)
    return out
