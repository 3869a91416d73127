"""Slow, obviously correct reference for the MALIS family (tests only).

Everything here is plain Python / numpy, written from the definitions in SPEC §3 and meant for tiny
graphs (a few dozen voxels). It deliberately does NOT mirror the implementation's union-find sweep
with label histograms: the pair counts are obtained by building the maximum spanning forest and then
walking the tree path of every labelled pair to find its maximin edge (the edge of the path that
comes last in the processing order). ``malis_counts_prefix`` is a second, even more literal oracle
(re-run connectivity after every edge) used to cross-check the first one.

Conventions (SPEC §3):
- Affinity channel ``c`` at voxel ``p`` is the edge ``(p, p + nhood[c])``. An edge whose partner is
  outside the volume, or whose offset is zero, is invalid: it never connects and gets weight 0.
- Edge order (constrained): GT-1 edges by prediction descending, then GT-0 edges by prediction
  descending, ties by flat edge index (C-order over ``[C, *spatial]``). Unconstrained: prediction
  descending, ties by flat index.
- A pair (u, v) of labelled voxels (label > 0) is attributed to its maximin edge e.
  Constrained: e GT-1 and equal labels -> pos[e] += 1; e GT-0 and different labels -> neg[e] += 1.
  Unconstrained: equal labels -> pos, different -> neg.
- ``mask == 0`` excludes an edge. PyTorch Connectomics' rule (the default): constrained MALIS is two
  passes. Positive pass: GT-0 edges inside the mask last, every other edge by prediction; a pair is
  counted on its maximin edge if that edge is GT-1 and the labels are equal. Negative pass: GT-1
  edges inside the mask first, every other edge by prediction; counted if the maximin edge is GT-0
  and the labels differ. (Without a mask both passes have the order above.) ``constrain_masked``:
  the earlier rule, the unmasked order. Either way excluded edges' counts are zeroed afterwards;
  unconstrained, the mask only zeroes counts. Normalisation divides pos and neg by their own
  (masked) totals per sample, a zero total stays zero.
"""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import torch


def to_numpy(x, dtype=None):
    """Tensor / array / list -> numpy array (bfloat16 and float16 go through float64 exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    x = np.asarray(x)
    if dtype is not None:
        x = x.astype(dtype)
    return x


def nhood_array(nhood):
    return to_numpy(nhood).astype(np.int64).reshape(len(nhood), -1)


# --------------------------------------------------------------------------------------------------
# Graph: list of edges in flat C-order over [C, *spatial]
# --------------------------------------------------------------------------------------------------
def edges(shape, nhood):
    """Every edge of the graph, in flat-index order.

    Returns a list of tuples ``(flat_index, c, p, q)`` where ``p`` and ``q`` are flat voxel indices
    and ``q`` is ``None`` for an invalid edge (partner out of the volume, or zero offset).
    """
    nh = nhood_array(nhood)
    shape = tuple(int(s) for s in shape)
    assert nh.shape[1] == len(shape)
    out = []
    flat = 0
    for c in range(nh.shape[0]):
        off = nh[c]
        for p in itertools.product(*[range(s) for s in shape]):
            q = tuple(int(a + b) for a, b in zip(p, off))
            valid = any(o != 0 for o in off) and all(0 <= qi < s for qi, s in zip(q, shape))
            pf = int(np.ravel_multi_index(p, shape)) if shape else 0
            qf = int(np.ravel_multi_index(q, shape)) if valid else None
            out.append((flat, c, pf, qf))
            flat += 1
    return out


def seg_to_affgraph_ref(seg, nhood):
    """GT affinities [C, *spatial] (float32): 1 iff valid and both ends carry the same label > 0."""
    seg = to_numpy(seg).astype(np.int64)
    nh = nhood_array(nhood)
    flat_seg = seg.reshape(-1)
    affs = np.zeros((nh.shape[0],) + seg.shape, dtype=np.float32)
    flat_affs = affs.reshape(-1)
    for e, _c, p, q in edges(seg.shape, nh):
        if q is not None and flat_seg[p] == flat_seg[q] and flat_seg[p] != 0:
            flat_affs[e] = 1.0
    return affs


def connected_components_ref(affs, nhood, threshold=0.5, singleton_background=False):
    """Components of the graph whose valid edges have ``affs > threshold`` (BFS).

    Returns int64 labels [*spatial], numbered 1..n in raster order of each component's first voxel.
    With ``singleton_background`` one-voxel components get 0 (others keep their raster-order ids).
    """
    affs = to_numpy(affs)
    nh = nhood_array(nhood)
    shape = affs.shape[1:]
    nvox = int(np.prod(shape))
    adj = [[] for _ in range(nvox)]
    flat_affs = affs.reshape(-1)
    for e, _c, p, q in edges(shape, nh):
        if q is not None and flat_affs[e] > threshold:
            adj[p].append(q)
            adj[q].append(p)
    labels = np.zeros(nvox, dtype=np.int64)
    nxt = 1
    for s in range(nvox):
        if labels[s]:
            continue
        labels[s] = nxt
        members = [s]
        todo = deque([s])
        while todo:
            u = todo.popleft()
            for v in adj[u]:
                if not labels[v]:
                    labels[v] = nxt
                    members.append(v)
                    todo.append(v)
        if singleton_background and len(members) == 1:
            labels[s] = -1  # placeholder, zeroed below (keeps the component counter honest)
        nxt += 1
    labels[labels < 0] = 0
    return labels.reshape(shape)


def same_partition(a, b):
    """True iff two label arrays define the same partition of the voxels."""
    a = to_numpy(a).reshape(-1)
    b = to_numpy(b).reshape(-1)
    if a.shape != b.shape:
        return False
    fwd, bwd = {}, {}
    for x, y in zip(a.tolist(), b.tolist()):
        if fwd.setdefault(x, y) != y or bwd.setdefault(y, x) != x:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# MALIS counts
# --------------------------------------------------------------------------------------------------
def _edge_order(pred, gt1, constrained):
    """Flat edge indices in processing order."""
    n = pred.size
    if constrained:
        key = lambda e: (0 if gt1[e] else 1, -pred[e], e)  # noqa: E731
    else:
        key = lambda e: (-pred[e], e)  # noqa: E731
    return sorted(range(n), key=key)


def _gt1(seg, nhood, gt_affs, elist):
    flat_seg = seg.reshape(-1)
    n = len(elist)
    if gt_affs is not None:
        return to_numpy(gt_affs).reshape(-1)[:n] > 0.5
    gt1 = np.zeros(n, dtype=bool)
    for e, _c, p, q in elist:
        gt1[e] = q is not None and flat_seg[p] == flat_seg[q] and flat_seg[p] != 0
    return gt1


def _prepare(pred, seg, nhood, gt_affs):
    pred = to_numpy(pred).astype(np.float64)
    seg = to_numpy(seg).astype(np.int64)
    nh = nhood_array(nhood)
    if seg.ndim == pred.ndim:  # [1, *spatial]
        seg = seg[0]
    assert pred.shape == (nh.shape[0],) + seg.shape, (pred.shape, seg.shape, nh.shape)
    assert not np.isnan(pred).any()
    elist = edges(seg.shape, nh)
    gt1 = _gt1(seg, nh, gt_affs, elist)
    return pred, seg, nh, elist, gt1


def _attribute(pos, neg, e, lu, lv, gt1, constrained):
    if constrained:
        if gt1[e] and lu == lv:
            pos[e] += 1
        elif (not gt1[e]) and lu != lv:
            neg[e] += 1
    elif lu == lv:
        pos[e] += 1
    else:
        neg[e] += 1


def _apply_mask(pos, neg, mask, shape):
    if mask is not None:
        keep = np.broadcast_to(to_numpy(mask), shape) != 0
        pos = np.where(keep, pos, 0)
        neg = np.where(keep, neg, 0)
    return pos, neg


def _passes(flat_pred, gt1, keep, constrained, constrain_masked):
    """[(edge order, attribute(pos, neg, e, lu, lv))] of the sweeps that give a sample's counts."""
    n = flat_pred.size

    def standard(pos, neg, e, lu, lv):
        _attribute(pos, neg, e, lu, lv, gt1, constrained)

    if not constrained or keep is None or constrain_masked:
        return [(_edge_order(flat_pred, gt1, constrained), standard)]

    def positive(pos, neg, e, lu, lv):
        if gt1[e] and lu == lv:
            pos[e] += 1

    def negative(pos, neg, e, lu, lv):
        if not gt1[e] and lu != lv:
            neg[e] += 1

    last = sorted(range(n), key=lambda e: (1 if (not gt1[e] and keep[e]) else 0, -flat_pred[e], e))
    first = sorted(range(n), key=lambda e: (0 if (gt1[e] and keep[e]) else 1, -flat_pred[e], e))
    return [(last, positive), (first, negative)]


def _keep(mask, shape):
    return None if mask is None else (np.broadcast_to(to_numpy(mask), shape) != 0).reshape(-1)


def malis_counts_ref(pred, seg, nhood, gt_affs=None, mask=None, constrained=True, constrain_masked=False):
    """Exact (pos, neg) pair counts for ONE sample, via maximum spanning forest + path walks.

    pred: [C, *spatial]; seg: [*spatial] (or [1, *spatial]); nhood: C x ndim; gt_affs, mask:
    optional, [C, *spatial] (mask broadcastable). Returns two int64 arrays [C, *spatial].
    """
    pred, seg, nh, elist, gt1 = _prepare(pred, seg, nhood, gt_affs)
    flat_pred = pred.reshape(-1)
    pos = np.zeros(flat_pred.size, dtype=np.int64)
    neg = np.zeros(flat_pred.size, dtype=np.int64)
    for order, attribute in _passes(flat_pred, gt1, _keep(mask, pred.shape), constrained, constrain_masked):
        _forest_counts(seg.reshape(-1), elist, order, attribute, pos, neg)
    pos = pos.reshape(pred.shape)
    neg = neg.reshape(pred.shape)
    return _apply_mask(pos, neg, mask, pred.shape)


def _forest_counts(flat_seg, elist, order, attribute, pos, neg):
    """Adds to pos / neg the attribution of every labelled pair to its maximin edge in ``order``."""
    nvox = flat_seg.size
    by_index = {e: (p, q) for e, _c, p, q in elist}
    rank = {e: r for r, e in enumerate(order)}

    # Kruskal with the simplest possible bookkeeping: one component id per voxel, relabel on merge.
    comp = list(range(nvox))
    tree = [[] for _ in range(nvox)]  # voxel -> [(neighbour, edge)]
    for e in order:
        p, q = by_index[e]
        if q is None or comp[p] == comp[q]:
            continue
        old, new = comp[q], comp[p]
        comp = [new if x == old else x for x in comp]
        tree[p].append((q, e))
        tree[q].append((p, e))

    labelled = [u for u in range(nvox) if flat_seg[u] > 0]
    for u in labelled:
        # Walk the tree from u, remembering the latest-ordered edge on the path so far.
        last = {u: None}
        stack = [u]
        while stack:
            x = stack.pop()
            for y, e in tree[x]:
                if y in last:
                    continue
                prev = last[x]
                last[y] = e if prev is None or rank[e] > rank[prev] else prev
                stack.append(y)
        for v, e in last.items():
            if v > u and flat_seg[v] > 0:
                attribute(pos, neg, e, flat_seg[u], flat_seg[v])


def malis_counts_prefix(pred, seg, nhood, gt_affs=None, mask=None, constrained=True, constrain_masked=False):
    """Second oracle, straight from the definition: add edges one by one in order, recompute the
    components by BFS after each, and attribute every pair that just became connected to that edge.
    O(E * V) BFS; only for cross-checking ``malis_counts_ref`` on tiny graphs."""
    pred, seg, nh, elist, gt1 = _prepare(pred, seg, nhood, gt_affs)
    flat_pred = pred.reshape(-1)
    flat_seg = seg.reshape(-1)
    nvox = flat_seg.size
    by_index = {e: (p, q) for e, _c, p, q in elist}

    def components():
        lab = [-1] * nvox
        k = 0
        for s in range(nvox):
            if lab[s] >= 0:
                continue
            lab[s] = k
            todo = [s]
            while todo:
                x = todo.pop()
                for y in adj[x]:
                    if lab[y] < 0:
                        lab[y] = k
                        todo.append(y)
            k += 1
        return lab

    pos = np.zeros(flat_pred.size, dtype=np.int64)
    neg = np.zeros(flat_pred.size, dtype=np.int64)
    labelled = [u for u in range(nvox) if flat_seg[u] > 0]
    for order, attribute in _passes(flat_pred, gt1, _keep(mask, pred.shape), constrained, constrain_masked):
        adj = [set() for _ in range(nvox)]
        before = components()
        for e in order:
            p, q = by_index[e]
            if q is None:
                continue
            adj[p].add(q)
            adj[q].add(p)
            after = components()
            for u, v in itertools.combinations(labelled, 2):
                if before[u] != before[v] and after[u] == after[v]:
                    attribute(pos, neg, e, flat_seg[u], flat_seg[v])
            before = after
    pos = pos.reshape(pred.shape)
    neg = neg.reshape(pred.shape)
    return _apply_mask(pos, neg, mask, pred.shape)


def normalize_ref(pos, neg):
    """w = pos / sum(pos) + neg / sum(neg) for one sample (zero totals stay zero); float64."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    w = np.zeros_like(pos)
    if pos.sum() > 0:
        w += pos / pos.sum()
    if neg.sum() > 0:
        w += neg / neg.sum()
    return w


def _sample(x, b, batch_ndim):
    if x is None:
        return None
    x = to_numpy(x)
    if x.ndim == batch_ndim:
        return x[b] if x.shape[0] > 1 else x[0]
    return x


def malis_counts_ref_batch(pred, seg, nhood, gt_affs=None, mask=None, constrained=True, constrain_masked=False):
    """Batched counts: pred [B, C, *spatial], seg [B, *spatial] or [B, 1, *spatial]."""
    pred = to_numpy(pred)
    seg = to_numpy(seg)
    pos, neg = [], []
    for b in range(pred.shape[0]):
        s = seg[b]
        if s.ndim == pred.ndim - 1:  # [1, *spatial]
            s = s[0]
        m = None if mask is None else np.broadcast_to(to_numpy(mask), pred.shape)[b]
        pb, nb = malis_counts_ref(pred[b], s, nhood, _sample(gt_affs, b, pred.ndim), m, constrained, constrain_masked)
        pos.append(pb)
        neg.append(nb)
    return np.stack(pos), np.stack(neg)


def malis_weights_ref_batch(pred, seg, nhood, gt_affs=None, mask=None, constrained=True, constrain_masked=False):
    """Normalised weights [B, C, *spatial] (float64)."""
    pos, neg = malis_counts_ref_batch(pred, seg, nhood, gt_affs, mask, constrained, constrain_masked)
    return np.stack([normalize_ref(p, n) for p, n in zip(pos, neg)])


# --------------------------------------------------------------------------------------------------
# MalisLoss
# --------------------------------------------------------------------------------------------------
def loss_seg_ref(target, nhood):
    """MalisLoss's segmentation when no gt_seg is given: components of target > 0.5 over nhood,
    singleton voxels as background. target: [B, C, *spatial] -> [B, *spatial]."""
    target = to_numpy(target)
    return np.stack([connected_components_ref(t, nhood, 0.5, singleton_background=True) for t in target])


def malis_loss_ref(pred, target, nhood, mask=None, gt_seg=None, sigmoid=True, reduction="sum",
                   constrained=True, constrain_masked=False):
    """MalisLoss without crop, entirely from the oracle; float64 numpy (scalar or map).

    ``a`` is computed in pred's own dtype (as the module does) and the weights from the oracle.
    """
    pred_t = torch.as_tensor(pred)
    a_t = torch.sigmoid(pred_t) if sigmoid else pred_t
    a = to_numpy(a_t)
    t = (to_numpy(target) > 0.5).astype(np.float64)
    seg = loss_seg_ref(target, nhood) if gt_seg is None else to_numpy(gt_seg)
    w = malis_weights_ref_batch(a, seg, nhood, gt_affs=t, mask=mask, constrained=constrained,
                                constrain_masked=constrain_masked)
    per_elem = w * (a - t) ** 2
    if reduction == "none":
        return per_elem
    per_sample = per_elem.reshape(per_elem.shape[0], -1).sum(1)
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def reduce_ref(per_elem, reduction):
    """The reductions of SPEC §3 on an elementwise map: "mean" over all B·C·spatial elements (as
    PyTorch Connectomics' ``weighted_loss.mean()``), "batchmean" over samples."""
    if reduction == "none":
        return per_elem
    total = per_elem.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (per_elem.size if isinstance(per_elem, np.ndarray) else per_elem.numel())
    return total / per_elem.shape[0]


def comb2(n):
    n = int(n)
    return n * (n - 1) // 2
