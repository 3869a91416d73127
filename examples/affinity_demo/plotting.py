"""The demo's figures, and a colouring of label images in which touching segments never share a colour.

A random colour per label (the usual way) gives two touching segments similar colours often
enough that a merge looks like a split or the other way round. :func:`label_colours` colours the
segment adjacency graph of a 2D slice instead: segments are coloured greedily, most-connected
first, each with a palette colour that none of its already coloured neighbours (8-connectivity)
has, so touching segments always get different, well separated colours. Label 0 is black.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

# 12 of Kelly's colours of maximum contrast, picked greedily for the largest smallest distance
# between any two (0.285 in RGB on [0, 1]) and kept away from black (boundaries).
PALETTE = np.array([
    (255, 179, 0), (0, 83, 138), (166, 189, 215), (193, 0, 32), (129, 112, 102), (246, 118, 142),
    (147, 170, 0), (0, 125, 52), (241, 58, 19), (83, 55, 122), (206, 162, 98), (127, 24, 13),
], dtype=np.float64) / 255.0


def _palette(n: int) -> np.ndarray:
    """``n`` colours: the fixed palette, then golden-ratio hues if a slice ever needs more."""
    if n <= len(PALETTE):
        return PALETTE[:max(n, 1)]
    extra = [colorsys.hsv_to_rgb((0.618034 * i) % 1.0, 0.8, 0.95) for i in range(n - len(PALETTE))]
    return np.concatenate([PALETTE, np.array(extra)])


def segment_adjacency(labels: np.ndarray) -> np.ndarray:
    """Pairs ``[k, 2]`` (smaller label first, unique) of positive labels that touch (8-connectivity)."""
    pairs = []
    h, w = labels.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[0:h - dy, max(0, -dx):w - max(0, dx)]
        b = labels[dy:h, max(0, dx):w - max(0, -dx)]
        touch = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])], 1))
    both = np.concatenate(pairs) if pairs else np.zeros((0, 2), labels.dtype)
    return np.unique(both, axis=0) if len(both) else both.reshape(0, 2)


def colour_indices(labels: np.ndarray) -> Dict[int, int]:
    """A palette index per positive label of a 2D image, different for every two touching labels."""
    ids = [int(i) for i in np.unique(labels) if i > 0]
    neighbours: Dict[int, set] = {i: set() for i in ids}
    for a, b in segment_adjacency(labels):
        neighbours[int(a)].add(int(b))
        neighbours[int(b)].add(int(a))
    colour: Dict[int, int] = {}
    n_colours = max(len(PALETTE), max((len(n) for n in neighbours.values()), default=0) + 1)
    used = np.zeros(n_colours, np.int64)
    # Most-connected first (Welsh-Powell), ties by label. Among the free palette colours the least
    # used one, so that the picture uses the whole palette rather than its first few colours; a
    # colour beyond the palette only when every palette colour is taken by a neighbour (a segment
    # has fewer neighbours than n_colours, so some colour is always free).
    for i in sorted(ids, key=lambda i: (-len(neighbours[i]), i)):
        taken = {colour[j] for j in neighbours[i] if j in colour}
        free = [c for c in range(len(PALETTE)) if c not in taken]
        if free:
            colour[i] = min(free, key=lambda c: (used[c], c))
        else:
            colour[i] = min(c for c in range(len(PALETTE), n_colours) if c not in taken)
        used[colour[i]] += 1
    return colour


def label_colours(labels: np.ndarray) -> np.ndarray:
    """RGB image ``[H, W, 3]`` of a 2D label image: touching segments differ, label 0 is black."""
    labels = np.asarray(labels)
    colour = colour_indices(labels)
    palette = _palette(max(colour.values(), default=0) + 1)
    lut_ids = np.array(sorted(colour), dtype=np.int64)
    rgb = np.zeros(labels.shape + (3,))
    if len(lut_ids):
        pos = np.searchsorted(lut_ids, labels)
        pos = np.clip(pos, 0, len(lut_ids) - 1)
        idx = np.array([colour[i] for i in lut_ids])[pos]
        rgb = np.where((labels > 0)[..., None], palette[idx], 0.0)
    return rgb


def plot_losses(histories: Dict[str, Dict[str, List[float]]], path: Path, title: str) -> None:
    """One panel per loss term, one line per model (faint: per step, bold: moving average)."""
    import matplotlib.pyplot as plt

    names: List[str] = []
    for h in histories.values():
        names += [k for k in h if k not in names and k != "total"]
    names.append("total")
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, (label, h) in enumerate(histories.items()):
            v = h.get(name)
            if not v:
                continue
            v = np.asarray(v)
            k = max(1, min(25, len(v) // 10))
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(v)), v, color=f"C{i}", alpha=0.2, lw=0.8)
            ax.plot(np.arange(k - 1, len(v)), smooth, color=f"C{i}", lw=1.8, label=label)
        ax.set_title(name if name != "total" else "total (weighted sum)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("loss")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweeps(results: Dict[str, Dict[str, dict]], path: Path, title: str,
                decoders: Sequence[str] = ("cc", "waterz")) -> None:
    """Scores against the threshold, per decoder (rows) and score (columns), tuning and held-out."""
    import matplotlib.pyplot as plt

    keys = (("voi_split", "VOI split (bits)"), ("voi_merge", "VOI merge (bits)"),
            ("arand", "adapted Rand error"), ("cremi_score", "CREMI score"))
    xlabels = {"cc": "connected components: affinity threshold", "waterz": "waterz: merge threshold"}
    fig, axes = plt.subplots(len(decoders), len(keys), figsize=(4.2 * len(keys), 3.3 * len(decoders)),
                             squeeze=False)
    for row, decoder in enumerate(decoders):
        for i, (label, per_decoder) in enumerate(results.items()):
            r = per_decoder[decoder]
            for region, style in (("heldout", "-"), ("tune", ":")):
                rows = r["sweep"][region]
                t = [m["threshold"] for m in rows]
                for ax, (key, _) in zip(axes[row], keys):
                    ax.plot(t, [m[key] for m in rows], style, color=f"C{i}", marker=".",
                            label=f"{label} ({'held-out' if region == 'heldout' else 'tuning'})")
            for ax in axes[row]:
                ax.axvline(r["threshold"], color=f"C{i}", lw=0.8, alpha=0.6)
        for ax, (_, name) in zip(axes[row], keys):
            ax.set_title(name, fontsize=10)
            ax.set_xlabel(xlabels.get(decoder, decoder), fontsize=9)
            ax.grid(alpha=0.3)
        axes[row][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_slice(raw: np.ndarray, gt: np.ndarray, results: Dict[str, dict], path: Path, title: str,
               z: int = None) -> None:
    """Raw, ground truth, predicted affinities and both decoders' segmentations of one slice per model.

    ``results[model]`` holds ``logits`` ``[5, Z, Y, X]`` and ``decoders`` (each with ``seg`` and
    its scores).
    """
    import matplotlib.pyplot as plt

    z = raw.shape[0] // 2 if z is None else z
    decoders = list(next(iter(results.values()))["decoders"])
    cols = 3 + len(decoders)
    fig, axes = plt.subplots(len(results), cols, figsize=(3.9 * cols, 3.9 * len(results) + 0.4), squeeze=False)
    names = {"cc": "connected components", "waterz": "waterz"}
    for row, (label, r) in enumerate(results.items()):
        affs = 1.0 / (1.0 + np.exp(-r["logits"][:3, z]))
        panels = [(raw[z], f"raw (held-out, z = {z})", dict(cmap="gray")),
                  (label_colours(gt[z]), "ground truth (boundaries black)", {}),
                  (np.moveaxis(affs, 0, -1), "affinities (R, G, B = +z, +y, +x)", {})]
        for d in decoders:
            m = r["decoders"][d]
            panels.append((label_colours(m["seg"][z]),
                           f"{names.get(d, d)}, threshold {m['threshold']:g}\nVOI split {m['voi_split']:.2f} / "
                           f"merge {m['voi_merge']:.2f}, ARAND {m['arand']:.3f}", {}))
        for col, (img, sub, kw) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_title(sub, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label, fontsize=12)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
