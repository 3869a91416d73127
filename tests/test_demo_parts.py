"""The demo's parts against slow, obviously correct references: erosion, colouring, decoders, scores."""

import itertools
import math

import numpy as np
import pytest

import demo_helpers  # noqa: F401  (puts examples/ on sys.path)

pytest.importorskip("skimage")

from affinity_demo import datasets, decoding, plotting, report, scoring  # noqa: E402


def _erode_reference(labels, radius):
    """Kisuk Lee's rule voxel by voxel: keep a label iff its window holds at most one positive label."""
    out = labels.copy()
    for p in itertools.product(*(range(n) for n in labels.shape)):
        window = labels[tuple(slice(max(0, c - radius), c + radius + 1) for c in p)]
        if len(set(window[window > 0].tolist())) > 1:
            out[p] = 0
    return out


@pytest.mark.parametrize("radius", [1, 2])
def test_erosion_matches_the_voxel_by_voxel_rule(radius):
    rng = np.random.default_rng(radius)
    labels = rng.integers(0, 4, (7, 8, 9)) * (rng.random((7, 8, 9)) < 0.9)
    labels = np.repeat(labels, 2, axis=2)  # some runs of one label
    keep = labels.copy()
    got = datasets.erode_instance_boundaries(labels, radius)
    assert np.array_equal(labels, keep)  # the input is not modified
    assert np.array_equal(got, _erode_reference(labels, radius))


def test_erosion_makes_a_band_between_touching_instances():
    labels = np.ones((4, 6, 6), np.int64)
    labels[:, :, 3:] = 2
    labels[:, 0, :] = 0  # a border with background is left alone
    got = datasets.erode_instance_boundaries(labels, 1)
    assert (got[:, 1:, 2:4] == 0).all()  # two voxels of background where 1 and 2 touch
    assert (got[:, 1:, :2] == 1).all() and (got[:, 1:, 4:] == 2).all()
    assert np.array_equal(datasets.erode_instance_boundaries(labels, 0), labels)
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        datasets.erode_instance_boundaries(labels, -1)


def _voronoi(shape, n, seed):
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, (n, 2)) * shape
    yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return d.argmin(-1) + 1


@pytest.mark.parametrize("seed", range(4))
def test_touching_segments_never_share_a_colour(seed):
    labels = _voronoi((60, 70), 80, seed)
    labels[np.random.default_rng(seed).random(labels.shape) < 0.05] = 0  # some background
    rgb = plotting.label_colours(labels)
    assert rgb.shape == (60, 70, 3)
    assert (rgb[labels == 0] == 0).all()
    # every 8-neighbour pair of different positive labels: clearly different colours
    palette_gap = min(np.linalg.norm(a - b) for a, b in itertools.combinations(plotting.PALETTE, 2))
    assert palette_gap > 0.28 and np.linalg.norm(plotting.PALETTE, axis=1).min() > 0.45  # and far from black
    h, w = labels.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[0:h - dy, max(0, -dx):w - max(0, dx)]
        b = labels[dy:h, max(0, dx):w - max(0, -dx)]
        ca = rgb[0:h - dy, max(0, -dx):w - max(0, dx)]
        cb = rgb[dy:h, max(0, dx):w - max(0, -dx)]
        touch = (a != b) & (a > 0) & (b > 0)
        assert touch.any()
        assert np.linalg.norm(ca[touch] - cb[touch], axis=-1).min() >= palette_gap - 1e-9
    # one colour per segment
    for lab in np.unique(labels[labels > 0]):
        assert len(np.unique(rgb[labels == lab], axis=0)) == 1


def test_colouring_of_a_star_needs_more_than_the_palette():
    labels = np.zeros((3, 2 * len(plotting.PALETTE) + 3), np.int64)  # more neighbours than colours
    labels[1, :] = 1  # one segment touching 14 others
    labels[0, ::2] = np.arange(2, 2 + labels[0, ::2].size)
    colours = plotting.colour_indices(labels)
    for a, b in plotting.segment_adjacency(labels):
        assert colours[int(a)] != colours[int(b)]
    # a hub with many neighbours does not push anything off the palette: only the hub and its
    # neighbours, which touch nothing else, are there, so the palette is always enough
    assert max(colours.values()) < len(plotting.PALETTE)


def _blocks():
    seg = np.zeros((6, 8, 10), np.int64)
    seg[:, :4, :5], seg[:, :4, 5:], seg[:, 4:, :] = 1, 2, 3
    return seg


def test_waterz_convention():
    pytest.importorskip("waterz")  # in requirements-dev.txt; absent from a bare GPU-machine venv
    from seglosses import seg_to_affgraph
    import torch

    seg = _blocks()
    affs = seg_to_affgraph(torch.from_numpy(seg), datasets.NHOOD).numpy().astype(np.float32)
    wz = decoding.to_waterz_affinities(affs)
    # waterz's channel c at p is the edge (p - e_c, p): ours at p - e_c
    assert np.array_equal(wz[0, 1:], affs[0, :-1]) and (wz[0, 0] == 0).all()
    assert np.array_equal(wz[2, :, :, 1:], affs[2, :, :, :-1]) and (wz[2, :, :, 0] == 0).all()
    # perfect affinities: both decoders give the ground truth back (up to label names)
    noisy = np.clip(affs * 0.9 + 0.05, 0, 1).astype(np.float32)
    cc = decoding.connected_components(noisy, 0.5, 1)
    (_, ws), = list(decoding.watershed_agglomeration(noisy, [0.5], 1))
    for seg_pred in (cc, ws):
        m = scoring.score(seg, seg_pred)
        assert m["voi_split"] == pytest.approx(0, abs=1e-12) and m["voi_merge"] == pytest.approx(0, abs=1e-12)
        assert m["arand"] == pytest.approx(0, abs=1e-12) and m["segments"] == 3


def test_merge_small_segments():
    seg = _blocks()
    seg[2, 1, 1] = 7  # a one-voxel fragment inside segment 1
    seg[0, 0, 9] = 0
    out = decoding.merge_small_segments(seg, 2)
    assert out[2, 1, 1] == 1 and out[0, 0, 9] == 2 and seg[2, 1, 1] == 7  # input untouched
    assert np.array_equal(decoding.merge_small_segments(seg, 10 ** 6), seg)  # nothing kept: as is


def test_scores_and_cremi():
    gt = np.array([1, 1, 2, 2, 0, 0])
    merged = np.array([5, 5, 5, 5, 9, 8])  # label 0 of gt is left out
    m = scoring.score(gt, merged)
    assert m["voi_split"] == pytest.approx(0) and m["voi_merge"] == pytest.approx(1.0)  # 1 bit
    assert m["cremi_score"] == pytest.approx(math.sqrt((m["voi_split"] + m["voi_merge"]) * m["arand"]))
    assert m["segments"] == 1
    rows = [dict(threshold=0.3, cremi_score=0.5, voi=1.0), dict(threshold=0.5, cremi_score=0.4, voi=2.0),
            dict(threshold=0.7, cremi_score=0.4, voi=1.5)]
    assert scoring.choose(rows) == 0.7


def test_summary_mean_and_spread():
    assert report.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0}
    assert report.mean_std([4.0]) == {"mean": 4.0, "std": 0.0}


def test_waterz_scoring_function_ships_compiled():
    # The demo's scoring function is one of the variants in waterz's wheels, so the demo needs no
    # compiler and no Boost headers at run time (any other one would be compiled on first use).
    waterz_agglomerate = pytest.importorskip("waterz._agglomerate")
    assert waterz_agglomerate._load_prebuilt(decoding.WATERZ_SCORING, decoding.WATERZ_QUEUE) is not None
