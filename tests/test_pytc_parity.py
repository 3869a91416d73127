"""seglosses as a drop-in for PyTorch Connectomics (PyTC) and for the old ``malis`` package API.

Each behaviour below was pinned by reading the peer's code, not by running it (PyTC's MalisLoss
needs its vendored C++ ``malis`` build):

- PyTC ``connectomics/models/losses/malis.py``: ``weighted_loss.mean()`` / ``.sum()`` / the map
  itself for "mean" / "sum" / "none", computed on the cropped tensors when ``malis_crop_size`` is
  set; the crop origin is ``torch.randint(0, n - k + 1, (1,))`` per spatial dim (z, y, x);
  ``gt_seg`` goes through ``torch.as_tensor`` (numpy arrays, uint64 from its connected
  components) and ``[Z, Y, X]`` is taken for a batch of one; every bad ``malis_crop_size`` raises
  ``ValueError`` (``tests/unit/test_malis_loss.py``).
- PyTC ``connectomics/training/losses/orchestrator.py``: the total is ``sum_t weight_t *
  loss_t(clamp(pred, -20, 20)[pred_slice], target[target_slice])``.
- HelmholtzAI Malis-Loss ``malis/malis_torch.py`` since commit d46fbaf: ``pos_loss_weight=0.5``,
  ``margin=0.3``, loss ``2 (w_p sum pos relu(1-a-m)^2 + (1-w_p) sum neg relu(a-m)^2)`` on the raw
  (unnormalised) pair counts.
"""

import numpy as np
import pytest
import torch

from malis_reference import loss_seg_ref, malis_counts_ref_batch, malis_weights_ref_batch, seg_to_affgraph_ref
from test_combined import SEED_YAML

import seglosses
from seglosses import CombinedLoss, MalisLoss, PerChannelBCEWithLogitsLoss

omegaconf = pytest.importorskip("omegaconf")
OmegaConf = omegaconf.OmegaConf

POS3 = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def blocks_case(seed=0, shape=(3, 4, 5), batch=2):
    """Two-sample blocky segmentation (as PyTC's unit tests build it), its affinities, logits."""
    seg = np.zeros((batch,) + shape, dtype=np.uint64)
    z, y, x = shape
    seg[0, :, : y // 2, :] = 1
    seg[0, :, y // 2:, :] = 2
    seg[1, : z // 2, :, : x // 2] = 4
    seg[1, : z // 2, :, x // 2:] = 5
    seg[1, z // 2:, :, :] = 6
    target = np.stack([seg_to_affgraph_ref(s.astype(np.int64), POS3) for s in seg]).astype(np.float32)
    pred = torch.randn((batch, 3) + shape, generator=torch.Generator().manual_seed(seed))
    return pred, torch.from_numpy(target), seg


def pytc_style_malis(pred, target, gt_seg, reduction, sigmoid=True):
    """PyTC's MalisLoss written from its definition: weights from the brute-force oracle,
    ``weights * (a - t)^2`` reduced with torch's own reductions."""
    a = torch.sigmoid(pred.double()) if sigmoid else pred.double()
    seg = loss_seg_ref(target, POS3) if gt_seg is None else np.asarray(gt_seg, dtype=np.int64)
    w = torch.from_numpy(malis_weights_ref_batch(a.numpy(), seg, POS3, gt_affs=target.numpy() > 0.5))
    weighted = w * (a - target.double()) ** 2
    return {"none": weighted, "sum": weighted.sum(), "mean": weighted.mean()}[reduction]


# --------------------------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("use_gt_seg", [False, True])
def test_reductions_match_pytc(reduction, use_gt_seg):
    pred, target, seg = blocks_case()
    gt_seg = seg if use_gt_seg else None
    got = MalisLoss(reduction=reduction)(pred, target, gt_seg=gt_seg)
    ref = pytc_style_malis(pred, target, gt_seg, reduction)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-9)


def test_mean_is_a_factor_of_the_elements_below_sum():
    pred, target, seg = blocks_case(shape=(12, 14, 16))
    total = MalisLoss(reduction="sum")(pred, target, gt_seg=seg)
    mean = MalisLoss(reduction="mean")(pred, target, gt_seg=seg)
    batchmean = MalisLoss(reduction="batchmean")(pred, target, gt_seg=seg)
    torch.testing.assert_close(total / mean, torch.tensor(2 * 3 * 12 * 14 * 16.0))
    torch.testing.assert_close(total / batchmean, torch.tensor(2.0))


def _pytc_crop_origin(spatial, crop):
    """PyTC's draw: one torch.randint(0, n - k + 1, (1,)) per spatial dim, in order."""
    return [int(torch.randint(0, n - k + 1, (1,)).item()) for n, k in zip(spatial, crop)]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_crop_same_window_as_pytc_and_none_is_the_cropped_map(reduction):
    pred, target, seg = blocks_case(seed=1, shape=(5, 6, 7))
    crop = (3, 4, 4)
    loss_fn = MalisLoss(malis_crop_size=list(crop), reduction=reduction)
    origins = set()
    for seed in range(4):
        torch.manual_seed(seed)
        z0, y0, x0 = _pytc_crop_origin(pred.shape[2:], crop)
        origins.add((z0, y0, x0))
        win = (slice(None), slice(None), slice(z0, z0 + 3), slice(y0, y0 + 4), slice(x0, x0 + 4))
        ref = pytc_style_malis(pred[win], target[win], seg[(slice(None),) + win[2:]], reduction)
        for gt_seg in (seg, torch.from_numpy(seg)):
            torch.manual_seed(seed)
            p = pred.clone().requires_grad_(True)
            got = loss_fn(p, target, gt_seg=gt_seg)
            if reduction == "none":
                assert got.shape == (2, 3) + crop  # the cropped map, as PyTC returns it
            torch.testing.assert_close(got.double().detach(), ref, rtol=1e-5, atol=1e-9)
            got.sum().backward()
            outside = torch.ones_like(p, dtype=torch.bool)
            outside[win] = False
            assert (p.grad[outside] == 0).all() and p.grad[win].abs().sum() > 0
    assert len(origins) > 1


# --------------------------------------------------------------------------------------------
# what PyTC passes: gt_seg types, OmegaConf
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint64", "uint32", "uint16", "int32", "int64", "uint8"])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_gt_seg_integer_types_and_numpy(dtype, as_numpy):
    pred, target, seg = blocks_case(seed=2)
    ref = MalisLoss()(pred, target, gt_seg=torch.from_numpy(seg.astype(np.int64)))
    labels = seg.astype(dtype)
    gt_seg = labels if as_numpy else torch.from_numpy(labels)
    torch.testing.assert_close(MalisLoss()(pred, target, gt_seg=gt_seg), ref, rtol=0, atol=0)
    w = seglosses.malis_weights(torch.sigmoid(pred), gt_seg, POS3, gt_affs=target)
    torch.testing.assert_close(w, seglosses.malis_weights(torch.sigmoid(pred), seg.astype(np.int64), POS3,
                                                          gt_affs=target), rtol=0, atol=0)


def test_gt_seg_large_uint64_labels_and_odd_numpy_layouts():
    pred, target, seg = blocks_case(seed=3)
    ref = MalisLoss()(pred, target, gt_seg=seg.astype(np.int64))
    big = seg + np.uint64(2**62)  # PyTC's uint64 component ids can be large: equalities are kept
    big[seg == 0] = 0
    torch.testing.assert_close(MalisLoss()(pred, target, gt_seg=big), ref, rtol=0, atol=0)
    # a read-only, negatively strided array (e.g. a flipped view of a memory-mapped volume)
    flipped = np.flip(seg[..., ::-1], axis=-1)
    flipped.setflags(write=False)
    torch.testing.assert_close(MalisLoss()(pred, target, gt_seg=flipped), ref, rtol=0, atol=0)
    # [Z, Y, X] for a batch of one, as PyTC accepts
    torch.testing.assert_close(MalisLoss()(pred[:1], target[:1], gt_seg=seg[0]),
                               MalisLoss()(pred[:1], target[:1], gt_seg=seg[:1]), rtol=0, atol=0)
    too_big = seg.copy()
    too_big[0, 0, 0, 0] = np.uint64(2**63 + 7)
    with pytest.raises(ValueError, match=r"^MalisLoss: gt_seg labels must fit in int64 \(< 2\*\*63\), got 9223372036854775815"):
        MalisLoss()(pred, target, gt_seg=too_big)
    with pytest.raises(TypeError, match=r"^MalisLoss: gt_seg must hold integer labels.*got dtype torch.float64"):
        MalisLoss()(pred, target, gt_seg=seg.astype(np.float64))


def test_omegaconf_kwargs():
    pred, target, seg = blocks_case(seed=4, shape=(5, 6, 7))
    plain = MalisLoss(POS3, malis_crop_size=[3, 4, 4], reduction="mean")
    conf = OmegaConf.create({"nhood": POS3, "crop": [3, 4, 4], "k": 3, "crop_i": ["${k}", 4, 4]})
    for crop in (conf.crop, conf.crop_i):  # a plain list, and one with an interpolation
        loss_fn = MalisLoss(conf.nhood, malis_crop_size=crop, reduction="mean")
        assert loss_fn.nhood == tuple(map(tuple, POS3)) and loss_fn.malis_crop_size == (3, 4, 4)
        torch.manual_seed(0)
        got = loss_fn(pred, target, gt_seg=seg)
        torch.manual_seed(0)
        torch.testing.assert_close(got, plain(pred, target, gt_seg=seg), rtol=0, atol=0)
    assert seglosses.seg_to_affgraph(seg[0], conf.nhood).shape == (3, 5, 6, 7)


def test_omegaconf_configs_in_combined_loss(tmp_path):
    yaml = pytest.importorskip("yaml")
    nested = OmegaConf.create(yaml.safe_load(SEED_YAML))  # the seed YAML as PyTC holds it
    pred, target, seg = blocks_case(seed=5, shape=(6, 6, 6))
    expected = CombinedLoss(yaml.safe_load(SEED_YAML))
    for cfg in (nested, nested.model, nested.model.loss, nested.model.loss.losses,
                {"losses": nested.model.loss.losses}):
        loss_fn = CombinedLoss(cfg)
        assert loss_fn.config == expected.config
        torch.manual_seed(0)
        got = loss_fn(pred, target, gt_seg=seg)
        torch.manual_seed(0)
        torch.testing.assert_close(got, expected(pred, target, gt_seg=seg), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# the seed YAML as PyTC's orchestrator computes it
# --------------------------------------------------------------------------------------------
def test_seed_yaml_total_equals_pytc_style_sum(tmp_path):
    """The seed config on a 66 x 65 x 64 volume (so that the 64^3 crop really crops), against the
    orchestrator's sum written out by hand: PyTC clamps logits to [-20, 20] first (its loss
    config's default; these logits stay inside, and the clamp is tested below)."""
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_YAML)
    loss_fn = CombinedLoss.from_yaml(path)
    g = torch.Generator().manual_seed(6)
    seg = torch.randint(1, 40, (1, 66, 65, 64), generator=g)
    seg[:, ::7] = 0
    target = seglosses.seg_to_affgraph(seg, POS3)
    pred = torch.randn(1, 3, 66, 65, 64, generator=g, requires_grad=True)

    torch.manual_seed(11)
    total, terms = loss_fn(pred, target, return_terms=True)

    torch.manual_seed(11)
    clamped = pred.clamp(-20.0, 20.0)
    bce = 1.0 * PerChannelBCEWithLogitsLoss(auto_pos_weight=True, max_pos_weight=10.0)(clamped, target)
    z0, y0, x0 = _pytc_crop_origin((66, 65, 64), (64, 64, 64))
    win = (slice(None), slice(None), slice(z0, z0 + 64), slice(y0, y0 + 64), slice(x0, x0 + 64))
    a, t = torch.sigmoid(clamped[:, 0:3][win]), target[:, 0:3][win]
    seg_cc = seglosses.affgraph_to_seg(t, POS3)  # PyTC: connected components of the cropped target
    sizes = torch.bincount(seg_cc.flatten())
    seg_cc = torch.where(sizes[seg_cc] > 1, seg_cc, 0)  # ... with singletons as background
    w = seglosses.malis_weights(a.detach(), seg_cc, POS3, gt_affs=t)
    malis = 1.0 * (w * (a - t) ** 2).mean()
    torch.testing.assert_close(terms["PerChannelBCEWithLogitsLoss"], bce.detach())
    torch.testing.assert_close(terms["MalisLoss"], malis.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(total, bce + malis, rtol=1e-6, atol=0)
    total.backward()
    assert pred.grad.abs().sum() > 0


def test_pytc_loss_section_keys(tmp_path):
    pred = torch.randn(2, 3, 4, 4, 4) * 40  # beyond PyTC's clamp
    target = (torch.rand(2, 3, 4, 4, 4) > 0.5).float()
    section = {"deep_supervision": False, "deep_supervision_clamp_min": -20.0, "deep_supervision_clamp_max": 20.0,
               "deep_supervision_weights": None, "loss_balancing": {"strategy": None},
               "losses": [{"function": "BCEWithLogitsLoss", "apply_deep_supervision": True}]}
    got = CombinedLoss({"model": {"loss": section}})(pred, target)
    torch.testing.assert_close(got, torch.nn.functional.binary_cross_entropy_with_logits(pred.clamp(-20, 20), target))
    assert not torch.isclose(got, torch.nn.functional.binary_cross_entropy_with_logits(pred, target))
    with pytest.raises(ValueError, match=r"^CombinedLoss: field 'loss_balancing': seglosses has no adaptive loss "
                                         r"weighting \(PyTorch Connectomics' 'gradnorm'\)"):
        CombinedLoss(dict(section, loss_balancing={"strategy": "gradnorm"}))


def test_pytc_pred_and_target_are_channel_selectors():
    # PyTC's term fields `pred` / `target` are channel selectors (aliases of pred_slice /
    # target_slice); a plain-tensor target must then be sliced, not silently used whole.
    torch.manual_seed(3)
    pred = torch.randn(2, 5, 4, 4, 4)
    target = (torch.rand(2, 5, 4, 4, 4) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for selector in ("1:4", 2, "2"):
        got = CombinedLoss({"losses": [{"function": "BCEWithLogitsLoss", "pred": selector, "target": selector}]})(
            pred, target)
        s = slice(1, 4) if selector == "1:4" else slice(2, 3)
        torch.testing.assert_close(got, bce(pred[:, s], target[:, s]))
    # a plain string is still seglosses' key into a dict of targets
    got = CombinedLoss({"losses": [{"function": "BCEWithLogitsLoss", "pred": "0:2", "target": "aff"}]})(
        pred, {"aff": target[:, 3:5]})
    torch.testing.assert_close(got, bce(pred[:, 0:2], target[:, 3:5]))
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('BCEWithLogitsLoss'\), field 'target': '0:3' "
                                         r"is a channel selector .* but 'target_slice' is given too"):
        CombinedLoss({"losses": [{"function": "BCEWithLogitsLoss", "target": "0:3", "target_slice": "0:3"}]})


# --------------------------------------------------------------------------------------------
# errors PyTC's tests expect as ValueError
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, (2, 4, 5, 6), "foo", (2, 0, 4), 1.5, True, (True, 4, 4), [1.5, 2, 3], (2, 4)])
def test_bad_crop_sizes_raise_value_error_at_construction(bad):
    # (2, 4) is a 2D crop: rejected at construction once the nhood says the data is 3D
    with pytest.raises(ValueError, match=r"^MalisLoss: malis_crop_size"):
        MalisLoss(POS3, malis_crop_size=bad)


def test_pytc_value_errors():
    pred, target, seg = blocks_case(seed=7)
    with pytest.raises(ValueError, match="MalisLoss: target must have pred's shape"):
        MalisLoss()(pred, target[..., :4])
    with pytest.raises(ValueError, match="MalisLoss: gt_seg must be"):
        MalisLoss()(pred, target, gt_seg=seg[..., :4])
    with pytest.raises(ValueError, match="MalisLoss: reduction"):
        MalisLoss(reduction="avg")
    with pytest.raises(ValueError, match="MalisLoss: pred has 3 channels but nhood has 2 rows"):
        MalisLoss([[1, 0, 0], [0, 1, 0]])(pred, target)
    with pytest.raises(ValueError, match="MalisLoss: malis_crop_size"):  # a 2D crop on 3D data
        MalisLoss(malis_crop_size=(2, 4))(pred, target)


def test_default_nhood_has_no_self_edge():
    # PyTC's default is its malis.mknhood3d(1), which carries a [0, 0, 0] row; ours is PyTC's
    # production convention, and our mknhood3d(1) never has a self edge.
    pred, target, seg = blocks_case(seed=8)
    torch.testing.assert_close(MalisLoss()(pred, target, gt_seg=seg), MalisLoss(POS3)(pred, target, gt_seg=seg),
                               rtol=0, atol=0)
    assert seglosses.mknhood3d(1).tolist() == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


# --------------------------------------------------------------------------------------------
# the old malis package API (HelmholtzAI Malis-Loss)
# --------------------------------------------------------------------------------------------
def _helmholtz_loss(seg, aff, nhood, margin=0.3, pos_loss_weight=0.5):
    pos, neg = malis_counts_ref_batch(aff.double().numpy(), seg[:, 0].numpy(), nhood)
    a = aff.double().numpy()
    pos_loss = (np.maximum(1 - a - margin, 0) ** 2 * pos).sum() * pos_loss_weight
    neg_loss = (np.maximum(a - margin, 0) ** 2 * neg).sum() * (1 - pos_loss_weight)
    return 2 * (pos_loss + neg_loss)


def test_old_api_defaults_are_the_packages():
    g = torch.Generator().manual_seed(9)
    seg2 = torch.randint(0, 4, (2, 1, 6, 7), generator=g)
    aff2 = torch.rand(2, 2, 6, 7, generator=g)
    seg3 = torch.randint(0, 3, (1, 1, 3, 4, 5), generator=g)
    aff3 = torch.rand(1, 3, 3, 4, 5, generator=g)
    for fn, seg, aff, nhood in ((seglosses.malis_loss2d, seg2, aff2, seglosses.mknhood2d(1).tolist()),
                                (seglosses.malis_loss3d, seg3, aff3, seglosses.mknhood3d(1).tolist())):
        got = float(fn(seg, aff))
        assert np.isclose(got, _helmholtz_loss(seg, aff, nhood), rtol=1e-5)
        assert np.isclose(float(fn(seg, aff, pos_loss_weight=0.3)), _helmholtz_loss(seg, aff, nhood, pos_loss_weight=0.3),
                          rtol=1e-5)
        assert not np.isclose(got, float(fn(seg, aff, pos_loss_weight=0.3)))


def test_old_api_names_seg_gt():
    aff = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"^malis_loss2d: seg_gt must be"):
        seglosses.malis_loss2d(torch.zeros(1, 1, 4, 5, dtype=torch.int64), aff)
    with pytest.raises(TypeError, match=r"^malis_loss2d: seg_gt must hold integer labels"):
        seglosses.malis_loss2d(torch.zeros(1, 1, 4, 4), aff)
    with pytest.raises(ValueError, match=r"^malis_loss3d: seg_gt labels must be >= 0, got -1"):
        seglosses.malis_loss3d(-torch.ones(1, 1, 2, 2, 2, dtype=torch.int64), torch.rand(1, 3, 2, 2, 2))
