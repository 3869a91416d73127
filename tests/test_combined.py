"""CombinedLoss: config forms, registry, slices, extras routing, deep supervision and errors."""

import pathlib
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglosses
from seglosses import registry as registry_mod
from seglosses.bce import PerChannelBCEWithLogitsLoss, WeightedBCEWithLogitsLoss
from seglosses.combined import CombinedLoss, register_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAS_MALIS = hasattr(seglosses, "MalisLoss")
HAS_DICE = hasattr(seglosses, "DiceLoss")
needs_malis = pytest.mark.skipif(not HAS_MALIS, reason="seglosses.MalisLoss has not landed yet (issue: MALIS)")
needs_dice = pytest.mark.skipif(not HAS_DICE, reason="seglosses.DiceLoss has not landed yet (issue: DiceLoss)")
NHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


@pytest.fixture
def registry():
    """Register test losses; the registry is restored afterwards."""
    saved = dict(registry_mod._USER_REGISTRY)
    yield register_loss
    registry_mod._USER_REGISTRY.clear()
    registry_mod._USER_REGISTRY.update(saved)


class Recorder(nn.Module):
    """A toy loss that records what it received: sum((sigmoid(pred) - target)^2) * scale."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.calls = []

    def forward(self, pred, target, mask=None, gt_seg=None):
        self.calls.append({"pred": pred, "target": target, "mask": mask, "gt_seg": gt_seg})
        if target.dim() == pred.dim() - 1:  # labels [B, *spatial]
            target = target.unsqueeze(1)
        d = (torch.sigmoid(pred) - target.to(pred.dtype)) ** 2
        if mask is not None:
            d = d * mask
        return d.mean() * self.scale


class TakesAll(nn.Module):
    def __init__(self):
        super().__init__()
        self.kwargs = []

    def forward(self, pred, target, **kwargs):
        self.kwargs.append(sorted(kwargs))
        return pred.mean() * 0 + 1.0


def _affinities(b=2, c=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, c, size, size, size, generator=g)
    aff = (torch.rand(b, c, size, size, size, generator=g) > 0.4).float()
    return pred, aff


# ---- config forms ------------------------------------------------------------------------------
TERMS = [
    {"function": "MSELoss", "weight": 2.0, "pred_slice": "0:2", "target": "a"},
    {"function": "L1Loss", "weight": 0.5, "pred_slice": "2:3", "target": "b", "target_slice": "1:2"},
]


def _check_forms_equal(loss_fn):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 3, 4, 4, generator=g)
    targets = {"a": torch.rand(2, 2, 4, 4, generator=g), "b": torch.rand(2, 2, 4, 4, generator=g)}
    total, terms = loss_fn(pred, targets, return_terms=True)
    mse = F.mse_loss(pred[:, 0:2], targets["a"])
    l1 = F.l1_loss(pred[:, 2:3], targets["b"][:, 1:2])
    torch.testing.assert_close(total, 2.0 * mse + 0.5 * l1)
    assert list(terms) == ["MSELoss", "L1Loss"]
    torch.testing.assert_close(terms["MSELoss"], mse)
    torch.testing.assert_close(terms["L1Loss"], l1)
    assert not terms["MSELoss"].requires_grad


@pytest.mark.parametrize(
    "cfg",
    [
        {"losses": TERMS},
        TERMS,
        tuple(TERMS),
        {"model": {"loss": {"losses": TERMS}, "architecture": "unet"}},
        {"loss": {"losses": TERMS}},
    ],
    ids=["dict", "list", "tuple", "pytc-nesting", "loss-nesting"],
)
def test_config_forms(cfg):
    _check_forms_equal(CombinedLoss(cfg))


@pytest.mark.parametrize("form", ["dict", "list", "pytc"])
def test_from_yaml_forms(tmp_path, form):
    body = textwrap.dedent(
        """\
        - function: MSELoss
          weight: 2.0
          pred_slice: "0:2"
          target: a
        - function: L1Loss
          weight: 0.5
          pred_slice: "2:3"
          target: b
          target_slice: "1:2"
        """
    )
    if form == "dict":
        text = "losses:\n" + textwrap.indent(body, "  ")
    elif form == "list":
        text = body
    else:
        text = "model:\n  loss:\n    losses:\n" + textwrap.indent(body, "      ")
    path = tmp_path / "loss.yaml"
    path.write_text(text)
    _check_forms_equal(CombinedLoss.from_yaml(path))
    _check_forms_equal(CombinedLoss.from_yaml(str(path)))


def test_defaults_plain_tensor_target_and_names():
    pred, aff = _affinities(size=4)
    loss_fn = CombinedLoss(
        [
            {"function": "BCEWithLogitsLoss"},
            {"function": "BCEWithLogitsLoss", "target": "ignored-with-a-tensor-target"},
            {"function": "MSELoss", "name": "mse"},
            {"function": "BCEWithLogitsLoss"},
        ]
    )
    assert loss_fn.term_names == ["BCEWithLogitsLoss", "BCEWithLogitsLoss_2", "mse", "BCEWithLogitsLoss_3"]
    assert loss_fn.term_weights == {n: 1.0 for n in loss_fn.term_names}
    total, terms = loss_fn(pred, aff, return_terms=True)
    bce = F.binary_cross_entropy_with_logits(pred, aff)
    torch.testing.assert_close(total, 3 * bce + F.mse_loss(pred, aff))
    # dict of targets with a single entry: a term without 'target' uses it
    single = CombinedLoss([{"function": "BCEWithLogitsLoss"}, {"function": "MSELoss"}])
    torch.testing.assert_close(single(pred, {"affinity": aff}), bce + F.mse_loss(pred, aff))


def test_default_name_steps_aside_for_explicit_name():
    loss_fn = CombinedLoss([{"function": "MSELoss"}, {"function": "L1Loss", "name": "MSELoss"}])
    assert loss_fn.term_names == ["MSELoss_2", "MSELoss"]


@pytest.mark.parametrize(
    "spec, channels",
    [("1:3", [1, 2]), ("2:", [2, 3, 4]), (":2", [0, 1]), ("3", [3]), (3, [3]), ("-1", [4]),
     ("-2:", [3, 4]), ([1, 4], [1, 2, 3]), (" 1 : 3 ", [1, 2])],
)
def test_slice_forms(spec, channels):
    pred = torch.randn(2, 5, 3, 3)
    target = torch.rand(2, 5, 3, 3)
    loss_fn = CombinedLoss([{"function": "MSELoss", "pred_slice": spec, "target_slice": spec}])
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred[:, channels], target[:, channels]))


# ---- the seed document's YAML ------------------------------------------------------------------
# The YAML block of ../shared/seeds/000_1fef37250d243bb4.txt (PyTorch Connectomics' MALIS docs),
# verbatim except for its indentation, which the text extraction of that page dropped.
SEED_YAML = """\
model:
  loss:
    losses:
      - function: PerChannelBCEWithLogitsLoss
        weight: 1.0
        kwargs: { auto_pos_weight: true, max_pos_weight: 10.0 }
      - function: MalisLoss
        weight: 1.0
        pred_slice: "0:3"
        target_slice: "0:3"
        kwargs:
          nhood: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
          sigmoid: true
          reduction: mean
          malis_crop_size: 64 # or e.g. [32, 64, 64] for anisotropic
"""


def test_seed_yaml_parses_with_stub_malis(tmp_path, registry):
    """Loads the seed YAML with a stand-in MalisLoss that records its kwargs and inputs."""
    made = []

    class StubMalis(nn.Module):
        def __init__(self, nhood=None, *, sigmoid=True, reduction="sum", malis_crop_size=None, constrained=True):
            super().__init__()
            made.append(dict(nhood=nhood, sigmoid=sigmoid, reduction=reduction, malis_crop_size=malis_crop_size))
            self.seen = []

        def forward(self, pred, target, mask=None, gt_seg=None):
            self.seen.append((pred.shape, target.shape, mask is not None, gt_seg is not None))
            return (torch.sigmoid(pred) - target).pow(2).mean()

    registry("MalisLoss", StubMalis, override=True)
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_YAML)
    loss_fn = CombinedLoss.from_yaml(path)
    assert made == [dict(nhood=NHOOD, sigmoid=True, reduction="mean", malis_crop_size=64)]
    assert loss_fn.term_names == ["PerChannelBCEWithLogitsLoss", "MalisLoss"]
    pred, aff = _affinities()
    seg = torch.randint(1, 4, (2, 8, 8, 8))
    total, terms = loss_fn(pred, aff, return_terms=True, gt_seg=seg)
    stub = loss_fn.losses[1]
    assert stub.seen == [(torch.Size([2, 3, 8, 8, 8]), torch.Size([2, 3, 8, 8, 8]), False, True)]
    bce = PerChannelBCEWithLogitsLoss(auto_pos_weight=True, max_pos_weight=10.0)(pred, aff)
    torch.testing.assert_close(terms["PerChannelBCEWithLogitsLoss"], bce)
    torch.testing.assert_close(total, bce + (torch.sigmoid(pred) - aff).pow(2).mean())


@needs_malis
def test_seed_yaml_runs_with_malis(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_YAML)
    loss_fn = CombinedLoss.from_yaml(path)
    pred, aff = _affinities()
    pred.requires_grad_(True)
    torch.manual_seed(0)
    total, terms = loss_fn(pred, aff, return_terms=True)
    torch.manual_seed(0)
    bce = PerChannelBCEWithLogitsLoss(auto_pos_weight=True, max_pos_weight=10.0)(pred, aff)
    malis = seglosses.MalisLoss(NHOOD, sigmoid=True, reduction="mean", malis_crop_size=64)(pred[:, 0:3], aff[:, 0:3])
    torch.testing.assert_close(terms["MalisLoss"], malis.detach())
    torch.testing.assert_close(total, bce + malis)
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


# ---- example configs ---------------------------------------------------------------------------
def test_example_bce_only_config():
    loss_fn = CombinedLoss.from_yaml(ROOT / "examples" / "configs" / "bce_only.yaml")
    pred = torch.randn(2, 5, 6, 6, 6, requires_grad=True)
    aff = (torch.rand(2, 3, 6, 6, 6) > 0.5).float()
    label = torch.randint(0, 2, (2, 6, 6, 6))
    total, terms = loss_fn(pred, {"affinity": aff, "label": label}, return_terms=True)
    torch.testing.assert_close(total, PerChannelBCEWithLogitsLoss()(pred[:, 0:3], aff))
    total.backward()
    assert pred.grad[:, 3:].abs().sum() == 0


def test_example_bce_malis_dice_config_structure(registry):
    class Stub(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def forward(self, pred, target):
            return pred.float().mean()

    if not HAS_MALIS:
        registry("MalisLoss", Stub, override=True)
    if not HAS_DICE:
        registry("DiceLoss", Stub, override=True)
    loss_fn = CombinedLoss.from_yaml(ROOT / "examples" / "configs" / "bce_malis_dice.yaml")
    terms = {t.function: t for t in loss_fn.config.terms}
    assert set(terms) == {"PerChannelBCEWithLogitsLoss", "MalisLoss", "DiceLoss"}
    assert terms["PerChannelBCEWithLogitsLoss"].pred_slice == (0, 3)
    assert terms["MalisLoss"].pred_slice == (0, 3) and terms["MalisLoss"].target == "affinity"
    assert terms["DiceLoss"].pred_slice == (3, 5) and terms["DiceLoss"].target == "label"


@needs_malis
@needs_dice
def test_example_bce_malis_dice_config_runs():
    loss_fn = CombinedLoss.from_yaml(ROOT / "examples" / "configs" / "bce_malis_dice.yaml")
    seg = torch.randint(0, 4, (2, 6, 6, 6))
    aff = seglosses.seg_to_affgraph(seg, NHOOD).float() if hasattr(seglosses, "seg_to_affgraph") else (
        torch.rand(2, 3, 6, 6, 6) > 0.5).float()
    label = (seg > 0).long()
    pred = torch.randn(2, 5, 6, 6, 6, requires_grad=True)
    total, terms = loss_fn(pred, {"affinity": aff, "label": label}, return_terms=True, gt_seg=seg)
    assert set(terms) == set(loss_fn.term_names) and len(terms) == 3
    total.backward()
    assert (pred.grad.abs().sum(dim=(0, 2, 3, 4)) > 0).all()


# ---- totals and gradients ----------------------------------------------------------------------
def test_total_is_weighted_sum_of_terms():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 6, 5, 5, 5, generator=g)
    aff = (torch.rand(2, 3, 5, 5, 5, generator=g) > 0.5).float()
    label = torch.randint(0, 2, (2, 5, 5, 5), generator=g)
    w = torch.rand(2, 1, 5, 5, 5, generator=g)
    cfg = {"losses": [
        {"function": "PerChannelBCEWithLogitsLoss", "weight": 1.5, "pred_slice": "0:3", "target": "aff",
         "kwargs": {"max_pos_weight": 4.0}},
        {"function": "WeightedBCEWithLogitsLoss", "weight": 0.25, "pred_slice": "0:3", "target": "aff"},
        {"function": "CrossEntropyLoss", "weight": 0.7, "pred_slice": "3:5", "target": "label",
         "kwargs": {"weight": [1.0, 3.0]}},
        {"function": "SmoothL1Loss", "weight": 0.0, "pred_slice": "5", "target": "aff", "target_slice": "1"},
    ]}
    loss_fn = CombinedLoss(cfg)
    total, terms = loss_fn(pred, {"aff": aff, "label": label}, return_terms=True, weight=w)
    t0 = PerChannelBCEWithLogitsLoss(max_pos_weight=4.0)(pred[:, 0:3], aff)
    t1 = WeightedBCEWithLogitsLoss()(pred[:, 0:3], aff, weight=w)
    t2 = F.cross_entropy(pred[:, 3:5], label, weight=torch.tensor([1.0, 3.0]))
    t3 = F.smooth_l1_loss(pred[:, 5:6], aff[:, 1:2])
    expected = {"PerChannelBCEWithLogitsLoss": t0, "WeightedBCEWithLogitsLoss": t1,
                "CrossEntropyLoss": t2, "SmoothL1Loss": t3}
    assert list(terms) == list(expected)
    for k in expected:
        torch.testing.assert_close(terms[k], expected[k])
    torch.testing.assert_close(total, 1.5 * t0 + 0.25 * t1 + 0.7 * t2 + 0.0 * t3)
    manual = sum(loss_fn.term_weights[k] * terms[k] for k in terms)
    torch.testing.assert_close(total.detach(), manual)


@needs_dice
def test_seglosses_dice_term_matches_direct():
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(2, 5, 4, 4, 4, generator=g)
    label = torch.randint(0, 2, (2, 4, 4, 4), generator=g)
    label[0, 0, 0, 0] = 255
    loss_fn = CombinedLoss([{"function": "DiceLoss", "weight": 0.5, "pred_slice": "3:5", "target": "label",
                             "kwargs": {"ignore_label": 255}}])
    total = loss_fn(pred, {"label": label, "other": label})
    direct = seglosses.DiceLoss(ignore_label=255)(pred[:, 3:5], label)
    torch.testing.assert_close(total, 0.5 * direct)


GRAD_TERMS = [
    ({"function": "PerChannelBCEWithLogitsLoss"}, "aff"),
    ({"function": "WeightedBCEWithLogitsLoss"}, "aff"),
    ({"function": "BCEWithLogitsLoss"}, "aff"),
    ({"function": "MSELoss"}, "aff"),
    ({"function": "L1Loss"}, "aff"),
    ({"function": "SmoothL1Loss"}, "aff"),
    ({"function": "CrossEntropyLoss"}, "label"),
    ({"function": "monai.DiceCELoss", "kwargs": {"to_onehot_y": True, "softmax": True}}, "label1"),
    ({"function": "monai.FocalLoss"}, "aff"),
    pytest.param({"function": "DiceLoss"}, "label", marks=needs_dice),
    pytest.param({"function": "MalisLoss", "kwargs": {"nhood": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}}, "aff",
                 marks=needs_malis),
]


@pytest.mark.parametrize("term, target_key", GRAD_TERMS, ids=lambda v: v["function"] if isinstance(v, dict) else v)
def test_gradient_reaches_only_the_term_slice(term, target_key):
    # pred has 7 channels; the term reads channels 2:5 (3 affinity channels) or 2:4 (2 classes).
    g = torch.Generator().manual_seed(5)
    width = 2 if target_key.startswith("label") else 3
    pred = torch.randn(2, 7, 5, 5, 5, generator=g, requires_grad=True)
    seg = torch.randint(1, 3, (2, 5, 5, 5), generator=g)
    targets = {
        "aff": (torch.rand(2, 3, 5, 5, 5, generator=g) > 0.5).float(),
        "label": (seg - 1),
        "label1": (seg - 1).unsqueeze(1),
    }
    loss_fn = CombinedLoss([dict(term, pred_slice=f"2:{2 + width}", target=target_key, weight=0.5)])
    loss_fn(pred, targets).backward()
    per_channel = pred.grad.abs().sum(dim=(0, 2, 3, 4))
    assert (per_channel[2:2 + width] > 0).all(), per_channel
    assert (per_channel[:2] == 0).all() and (per_channel[2 + width:] == 0).all(), per_channel


def test_gradient_through_every_term_at_once():
    pred = torch.randn(2, 7, 4, 4, 4, requires_grad=True)
    targets = {"aff": (torch.rand(2, 3, 4, 4, 4) > 0.5).float(), "label": torch.randint(0, 2, (2, 4, 4, 4))}
    loss_fn = CombinedLoss([
        {"function": "PerChannelBCEWithLogitsLoss", "pred_slice": "0:3", "target": "aff"},
        {"function": "CrossEntropyLoss", "pred_slice": "3:5", "target": "label"},
        {"function": "MSELoss", "pred_slice": "5", "target": "aff", "target_slice": "0"},
    ])
    loss_fn(pred, targets).backward()
    per_channel = pred.grad.abs().sum(dim=(0, 2, 3, 4))
    assert (per_channel[:6] > 0).all() and per_channel[6] == 0


# ---- MONAI -------------------------------------------------------------------------------------
def test_monai_terms_match_direct_monai():
    import monai.losses

    g = torch.Generator().manual_seed(6)
    pred = torch.randn(2, 6, 4, 4, 4, generator=g)
    label = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    binary = (torch.rand(2, 2, 4, 4, 4, generator=g) > 0.5).float()
    loss_fn = CombinedLoss([
        {"function": "monai.DiceCELoss", "weight": 0.3, "pred_slice": "0:3", "target": "label",
         "kwargs": {"to_onehot_y": True, "softmax": True, "lambda_ce": 0.5}},
        {"function": "monai.FocalLoss", "weight": 2.0, "pred_slice": "3:5", "target": "binary",
         "kwargs": {"gamma": 1.5}},
        {"function": "monai.DiceLoss", "pred_slice": "5:6", "target": "binary", "target_slice": "1:2",
         "kwargs": {"sigmoid": True}},
    ])
    total, terms = loss_fn(pred, {"label": label, "binary": binary}, return_terms=True)
    a = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.5)(pred[:, 0:3], label)
    b = monai.losses.FocalLoss(gamma=1.5)(pred[:, 3:5], binary)
    c = monai.losses.DiceLoss(sigmoid=True)(pred[:, 5:6], binary[:, 1:2])
    torch.testing.assert_close(terms["monai.DiceCELoss"], a)
    torch.testing.assert_close(terms["monai.FocalLoss"], b)
    torch.testing.assert_close(total, 0.3 * a + 2.0 * b + c)


def test_monai_masked_loss_gets_mask():
    import monai.losses

    pred = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 1, 4, 4) > 0.5).float()
    mask = (torch.rand(2, 1, 4, 4) > 0.3).float()
    loss_fn = CombinedLoss([{"function": "monai.MaskedDiceLoss", "kwargs": {"sigmoid": True}}])
    got = loss_fn(pred, target, mask=mask)
    torch.testing.assert_close(got, monai.losses.MaskedDiceLoss(sigmoid=True)(pred, target, mask=mask))
    with pytest.warns(UserWarning):  # MONAI warns when it gets no mask
        unmasked = monai.losses.MaskedDiceLoss(sigmoid=True)(pred, target)
    assert not torch.allclose(got, unmasked)


# ---- extras routing ----------------------------------------------------------------------------
def test_extras_reach_only_terms_that_take_them(registry):
    registry("Recorder", Recorder)
    registry("TakesAll", TakesAll)
    g = torch.Generator().manual_seed(7)
    pred = torch.randn(2, 4, 4, 4, generator=g)
    target = (torch.rand(2, 4, 4, 4, generator=g) > 0.5).float()
    mask_c = (torch.rand(2, 4, 4, 4, generator=g) > 0.5).float()  # pred's channel count: sliced
    seg = torch.randint(0, 3, (2, 4, 4), generator=g)
    weight = torch.rand(2, 1, 4, 4, generator=g)
    loss_fn = CombinedLoss([
        {"function": "Recorder", "pred_slice": "1:3", "target_slice": "1:3"},
        {"function": "MSELoss"},  # takes no extras: would raise TypeError if given one
        {"function": "WeightedBCEWithLogitsLoss", "pred_slice": "0:2", "target_slice": "0:2"},
        {"function": "TakesAll"},
        {"function": "Recorder", "name": "rec_full"},
    ])
    total, terms = loss_fn(pred, target, return_terms=True, mask=mask_c, gt_seg=seg, weight=weight, unused=None)
    rec = loss_fn.losses[0].calls[-1]
    assert torch.equal(rec["mask"], mask_c[:, 1:3])  # sliced like pred
    assert rec["gt_seg"] is seg  # not sliced: [B, *spatial]
    full = loss_fn.losses[4].calls[-1]
    assert full["mask"] is mask_c and full["gt_seg"] is seg
    assert loss_fn.losses[3].kwargs == [["gt_seg", "mask", "weight"]]  # None extras are not passed
    expected_bce = WeightedBCEWithLogitsLoss()(pred[:, 0:2], target[:, 0:2], weight=weight, mask=mask_c[:, 0:2])
    torch.testing.assert_close(terms["WeightedBCEWithLogitsLoss"], expected_bce)
    torch.testing.assert_close(terms["MSELoss"], F.mse_loss(pred, target))


def test_single_channel_mask_passes_as_is(registry):
    registry("Recorder", Recorder)
    pred = torch.randn(2, 3, 4, 4)
    target = torch.rand(2, 3, 4, 4)
    mask = (torch.rand(2, 1, 4, 4) > 0.5).float()
    loss_fn = CombinedLoss([{"function": "Recorder", "pred_slice": "0:2", "target_slice": "0:2"}])
    loss_fn(pred, target, mask=mask)
    assert loss_fn.losses[0].calls[-1]["mask"] is mask


def test_per_channel_bce_mask_is_sliced():
    pred = torch.randn(2, 5, 4, 4)
    target = (torch.rand(2, 3, 4, 4) > 0.5).float()
    mask = (torch.rand(2, 5, 4, 4) > 0.4).float()
    loss_fn = CombinedLoss([{"function": "PerChannelBCEWithLogitsLoss", "pred_slice": "2:5"}])
    torch.testing.assert_close(
        loss_fn(pred, target, mask=mask), PerChannelBCEWithLogitsLoss()(pred[:, 2:5], target, mask=mask[:, 2:5])
    )


# ---- register_loss -----------------------------------------------------------------------------
def test_register_loss_decorator_and_direct(registry):
    @registry("ScaledRecorder")
    class ScaledRecorder(Recorder):
        pass

    assert ScaledRecorder.__name__ == "ScaledRecorder"  # the decorator returns the class
    assert registry("Direct", Recorder) is Recorder
    assert "ScaledRecorder" in seglosses.combined.available_losses()
    pred, target = torch.randn(2, 2, 3), torch.rand(2, 2, 3)
    loss_fn = CombinedLoss([{"function": "ScaledRecorder", "kwargs": {"scale": 3.0}},
                            {"function": "Direct", "weight": 2.0}])
    total = loss_fn(pred, target)
    ref = ((torch.sigmoid(pred) - target) ** 2).mean()
    torch.testing.assert_close(total, 3.0 * ref + 2.0 * ref)
    assert isinstance(loss_fn.losses[0], ScaledRecorder)


def test_register_loss_function(registry):
    @registry("soft_l1")
    def soft_l1(pred, target, eps=1e-3, mask=None):
        d = ((pred - target) ** 2 + eps).sqrt()
        return (d * mask).sum() / mask.sum() if mask is not None else d.mean()

    pred, target = torch.randn(2, 2, 3), torch.rand(2, 2, 3)
    mask = (torch.rand(2, 2, 3) > 0.5).float()
    loss_fn = CombinedLoss([{"function": "soft_l1", "kwargs": {"eps": 0.5}}])
    torch.testing.assert_close(loss_fn(pred, target, mask=mask), soft_l1(pred, target, eps=0.5, mask=mask))
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('soft_l1'\), field 'kwargs'.*'epsilon'.*'eps'"):
        CombinedLoss([{"function": "soft_l1", "kwargs": {"epsilon": 0.5}}])


def test_register_loss_errors(registry):
    with pytest.raises(ValueError, match=r"register_loss: name 'MSELoss' is a built-in loss"):
        registry("MSELoss", Recorder)
    with pytest.raises(ValueError, match=r"register_loss: name 'DiceLoss' is a built-in loss"):
        registry("DiceLoss", Recorder)
    with pytest.raises(ValueError, match=r"register_loss: name 'monai.Mine' is reserved"):
        registry("monai.Mine", Recorder)
    with pytest.raises(ValueError, match=r"register_loss: name must be a non-empty string.*''"):
        registry("", Recorder)
    with pytest.raises(TypeError, match=r"register_loss: name must be a string, got 3"):
        registry(3, Recorder)
    with pytest.raises(TypeError, match=r"register_loss: obj for 'X' must be a class or a callable, got 5"):
        registry("X", 5)
    registry("Mine", Recorder)
    registry("Mine", Recorder)  # the same object again is fine
    with pytest.raises(ValueError, match=r"register_loss: name 'Mine' is already registered"):
        registry("Mine", TakesAll)
    registry("Mine", TakesAll, override=True)
    assert isinstance(CombinedLoss([{"function": "Mine"}]).losses[0], TakesAll)


def test_register_loss_is_exported():
    assert seglosses.register_loss is register_loss
    assert seglosses.CombinedLoss is CombinedLoss
    assert seglosses.PerChannelBCEWithLogitsLoss is PerChannelBCEWithLogitsLoss
    assert seglosses.WeightedBCEWithLogitsLoss is WeightedBCEWithLogitsLoss
    for name in ("CombinedLoss", "register_loss", "PerChannelBCEWithLogitsLoss", "WeightedBCEWithLogitsLoss"):
        assert name in seglosses.__all__


# ---- deep supervision --------------------------------------------------------------------------
def _nearest(t, size):
    """Reference resize: F.interpolate(mode='nearest') on float, cast back."""
    lead = t.dim() - len(size)
    flat = t.reshape((-1, 1) + tuple(t.shape[lead:])).double()
    out = F.interpolate(flat, size=size, mode="nearest")
    return out.reshape(tuple(t.shape[:lead]) + tuple(size)).to(t.dtype)


class FullResolutionRecorder(Recorder):
    """A Recorder that, like MalisLoss, wants gt_seg at full resolution only."""

    full_resolution_extras = ("gt_seg",)


def test_deep_supervision_matches_manual_reference(registry):
    registry("Recorder", FullResolutionRecorder)
    g = torch.Generator().manual_seed(8)
    sizes = [(8, 8, 8), (4, 4, 4), (2, 3, 2)]
    preds = [torch.randn((2, 5) + s, generator=g, requires_grad=True) for s in sizes]
    aff = (torch.rand(2, 3, 8, 8, 8, generator=g) > 0.5).float()
    label = torch.randint(0, 2, (2, 8, 8, 8), generator=g)
    label[0, 0, 0, 0] = 7 * 10**9  # would not survive a float32 round trip
    mask = (torch.rand(2, 1, 8, 8, 8, generator=g) > 0.2).float()
    seg = torch.randint(1, 5, (2, 8, 8, 8), generator=g)
    loss_fn = CombinedLoss({"losses": [
        {"function": "PerChannelBCEWithLogitsLoss", "pred_slice": "0:3", "target": "aff", "weight": 0.5},
        {"function": "Recorder", "name": "rec", "pred_slice": "0:3", "target": "label"},
        {"function": "MSELoss", "pred_slice": "3", "target": "aff", "target_slice": "0",
         "deep_supervision": False, "weight": 2.0},
    ]})
    targets = {"aff": aff, "label": label}
    total, terms = loss_fn(preds, targets, return_terms=True, mask=mask, gt_seg=seg)

    rec_calls = loss_fn.losses[1].calls
    assert len(rec_calls) == 3
    assert [c["gt_seg"] is not None for c in rec_calls] == [True, False, False]  # gt_seg only at scale 0
    # A loss that does not say so gets gt_seg resized like any spatial extra.
    registry("PlainRecorder", Recorder)
    plain = CombinedLoss([{"function": "MSELoss", "pred_slice": "0:3", "target": "aff"},
                          {"function": "PlainRecorder", "pred_slice": "0:3", "target": "label"}])
    plain(preds, targets, gt_seg=seg)
    assert [torch.equal(c["gt_seg"], _nearest(seg, s)) for c, s in zip(plain.losses[1].calls, sizes)] == [True] * 3
    for s, call in enumerate(rec_calls):
        assert call["target"].dtype == torch.int64  # labels stay integer
        assert torch.equal(call["target"], _nearest(label, sizes[s]) if s else label)
        assert torch.equal(call["mask"], _nearest(mask, sizes[s]))
    assert rec_calls[0]["target"][0, 0, 0, 0].item() == 7 * 10**9

    bce = sum(w * PerChannelBCEWithLogitsLoss()(p[:, 0:3], _nearest(aff, s), mask=_nearest(mask, s))
              for w, p, s in zip([1, 0.5, 0.25], preds, sizes))
    rec_ref = Recorder()
    rec = sum(w * rec_ref(p[:, 0:3], _nearest(label, s).unsqueeze(1).float(), mask=_nearest(mask, s))
              for w, p, s in zip([1, 0.5, 0.25], preds, sizes))
    mse = F.mse_loss(preds[0][:, 3:4], aff[:, 0:1])  # opted out: full resolution only
    torch.testing.assert_close(terms["PerChannelBCEWithLogitsLoss"], bce.detach())
    torch.testing.assert_close(terms["rec"], rec.detach())
    torch.testing.assert_close(terms["MSELoss"], mse.detach())
    torch.testing.assert_close(total, 0.5 * bce + rec + 2.0 * mse)
    total.backward()
    assert all(p.grad is not None and p.grad[:, 0:3].abs().sum() > 0 for p in preds)
    assert preds[0].grad[:, 3].abs().sum() > 0
    assert preds[1].grad[:, 3].abs().sum() == 0 and preds[2].grad[:, 3].abs().sum() == 0


def test_deep_supervision_custom_weights_and_tuple():
    g = torch.Generator().manual_seed(9)
    preds = (torch.randn(1, 2, 8, 8, generator=g), torch.randn(1, 2, 4, 4, generator=g),
             torch.randn(1, 2, 2, 2, generator=g))
    target = torch.rand(1, 2, 8, 8, generator=g)
    loss_fn = CombinedLoss({"losses": [{"function": "MSELoss", "weight": 3.0}],
                            "deep_supervision_weights": [1.0, 0.3, 0.1, 0.05]})
    ref = sum(w * F.mse_loss(p, _nearest(target, p.shape[2:])) for w, p in zip([1.0, 0.3, 0.1], preds))
    torch.testing.assert_close(loss_fn(preds, target), 3.0 * ref)
    # a single-tensor pred is not deep supervision
    torch.testing.assert_close(loss_fn(preds[0], target), 3.0 * F.mse_loss(preds[0], target))
    too_short = CombinedLoss({"losses": [{"function": "MSELoss"}], "deep_supervision_weights": [1.0, 0.5]})
    with pytest.raises(ValueError, match=r"^CombinedLoss: field 'deep_supervision_weights' has 2 values but pred has 3"):
        too_short(list(preds), target)


@needs_malis
def test_deep_supervision_malis_uses_connected_components_below_scale0(monkeypatch):
    calls = []
    orig = seglosses.MalisLoss.forward

    def spy(self, pred, target, mask=None, gt_seg=None):
        calls.append((tuple(pred.shape[2:]), gt_seg is not None))
        return orig(self, pred, target, mask=mask, gt_seg=gt_seg)

    monkeypatch.setattr(seglosses.MalisLoss, "forward", spy)
    loss_fn = CombinedLoss([{"function": "MalisLoss", "kwargs": {"nhood": NHOOD}}])
    preds = [torch.randn(1, 3, 6, 6, 6), torch.randn(1, 3, 3, 3, 3)]
    seg = torch.randint(1, 3, (1, 6, 6, 6))
    aff = (torch.rand(1, 3, 6, 6, 6) > 0.5).float()
    loss_fn(preds, aff, gt_seg=seg)
    assert calls == [((6, 6, 6), True), ((3, 3, 3), False)]


# ---- dtype / device / state_dict ---------------------------------------------------------------
def test_to_float64_and_state_dict_round_trip():
    cfg = {"losses": [
        {"function": "CrossEntropyLoss", "pred_slice": "0:2", "target": "label", "kwargs": {"weight": [1.0, 2.0]}},
        {"function": "BCEWithLogitsLoss", "pred_slice": "2:4", "target": "aff", "target_slice": "0:2",
         "kwargs": {"pos_weight": [[[3.0]], [[0.5]]]}},
    ]}
    loss_fn = CombinedLoss(cfg)
    sd = loss_fn.state_dict()
    assert set(sd) == {"losses.0.weight", "losses.1.pos_weight"}
    loss_fn = loss_fn.to(torch.float64)
    assert loss_fn.losses[0].weight.dtype == torch.float64
    g = torch.Generator().manual_seed(10)
    pred = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    targets = {"label": torch.randint(0, 2, (2, 3, 3), generator=g),
               "aff": (torch.rand(2, 3, 3, 3, generator=g) > 0.5).double()}
    total = loss_fn(pred, targets)
    assert total.dtype == torch.float64
    ref = F.cross_entropy(pred[:, 0:2], targets["label"], weight=torch.tensor([1.0, 2.0], dtype=torch.float64)) + \
        F.binary_cross_entropy_with_logits(pred[:, 2:4], targets["aff"][:, 0:2],
                                           pos_weight=torch.tensor([[[3.0]], [[0.5]]], dtype=torch.float64))
    torch.testing.assert_close(total, ref)
    # round trip into a model built with other buffers
    other = CombinedLoss({"losses": [dict(cfg["losses"][0], kwargs={"weight": [5.0, 5.0]}),
                                     dict(cfg["losses"][1], kwargs={"pos_weight": [[[1.0]], [[1.0]]]})]})
    other.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(other.double()(pred, targets), total)


# ---- config errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg, exc, match",
    [
        ({"losses": [{"function": "MSELoss"}, {"function": "DiceLos"}]}, ValueError,
         r"^CombinedLoss: term 1 \('DiceLos'\), field 'function': unknown loss 'DiceLos'; closest names: DiceLoss"),
        ([{"function": "BCEWithLogitLoss"}], ValueError,
         r"^CombinedLoss: term 0 .*field 'function'.*closest names: BCEWithLogitsLoss"),
        ([{"function": "DiceFocalLoss"}], ValueError,
         r"^CombinedLoss: term 0 \('DiceFocalLoss'\), field 'function'.*closest names: .*monai.DiceFocalLoss"),
        ([{"function": "monai.DiceCELos"}], ValueError,
         r"^CombinedLoss: term 0 \('monai.DiceCELos'\), field 'function': unknown MONAI loss.*monai.DiceCELoss"),
        ([{"weight": 1.0}], ValueError, r"^CombinedLoss: term 0, field 'function': missing"),
        ([{"function": 3}], TypeError, r"^CombinedLoss: term 0, field 'function': must be a loss name, got 3"),
        ([{"function": "MSELoss", "name": "m", "pred_slice": "a:b"}], ValueError,
         r"^CombinedLoss: term 0 \('m'\), field 'pred_slice': malformed channel slice 'a:b'"),
        ([{"function": "MSELoss", "pred_slice": "0:1:2"}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'pred_slice': malformed channel slice '0:1:2'"),
        ([{"function": "MSELoss", "pred_slice": ""}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'pred_slice': malformed channel slice ''"),
        ([{"function": "MSELoss", "target_slice": "3:1"}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'target_slice': malformed channel slice '3:1'.*empty"),
        ([{"function": "MSELoss", "target_slice": 1.5}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'target_slice': malformed channel slice 1.5"),
        ([{"function": "MSELoss"}, {"function": "L1Loss", "weight": -0.5}], ValueError,
         r"^CombinedLoss: term 1 \('L1Loss'\), field 'weight': must be a finite number >= 0, got -0.5"),
        ([{"function": "MSELoss", "weight": "2"}], TypeError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'weight': must be a number >= 0, got '2'"),
        ([{"function": "MSELoss", "weight": True}], TypeError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'weight': must be a number >= 0, got True"),
        ([{"function": "MSELoss", "weight": float("nan")}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'weight': must be a finite number >= 0, got nan"),
        ([{"function": "PerChannelBCEWithLogitsLoss", "kwargs": {"max_pos_weigth": 3}}], ValueError,
         r"^CombinedLoss: term 0 \('PerChannelBCEWithLogitsLoss'\), field 'kwargs': PerChannelBCEWithLogitsLoss "
         r"does not take the argument 'max_pos_weigth' \(value 3\); did you mean 'max_pos_weight'\?"),
        ([{"function": "PerChannelBCEWithLogitsLoss", "kwargs": {"max_pos_weight": 0}}], ValueError,
         r"^CombinedLoss: term 0 \('PerChannelBCEWithLogitsLoss'\), field 'kwargs': .*max_pos_weight must be > 0, got 0"),
        ([{"function": "monai.FocalLoss", "kwargs": {"gama": 2}}], ValueError,
         r"^CombinedLoss: term 0 \('monai.FocalLoss'\), field 'kwargs':.*'gama'.*did you mean 'gamma'"),
        ([{"function": "MSELoss", "kwargs": [1]}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'kwargs': must be a mapping"),
        ([{"function": "MSELoss", "name": "a"}, {"function": "L1Loss", "name": "a"}], ValueError,
         r"^CombinedLoss: term 1 \('a'\), field 'name': 'a' is already used"),
        ([{"function": "MSELoss", "pred_slcie": "0:1"}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'pred_slcie': unknown term field.*did you mean 'pred_slice'"),
        ([{"function": "MSELoss", "deep_supervision": "no"}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'deep_supervision': must be true or false, got 'no'"),
        ([{"function": "MSELoss", "target": [1]}], ValueError,
         r"^CombinedLoss: term 0 \('MSELoss'\), field 'target': must be a key"),
        (["MSELoss"], TypeError, r"^CombinedLoss: term 0 must be a dict with a 'function' field, got 'MSELoss'"),
        ({"model": {"loss": {"terms": []}}}, ValueError, r"^CombinedLoss: config has no 'losses' list.*\['model'\]"),
        ({"losses": []}, ValueError, r"^CombinedLoss: field 'losses' is empty"),
        ([], ValueError, r"^CombinedLoss: field 'losses' is empty"),
        ({"losses": {"function": "MSELoss"}}, ValueError, r"^CombinedLoss: field 'losses' must be a list"),
        ("MSELoss", TypeError, r"^CombinedLoss: cfg must be a dict"),
        ({"losses": [{"function": "MSELoss"}], "deep_supervision_weights": [1.0, -1]}, ValueError,
         r"^CombinedLoss: field 'deep_supervision_weights' must hold finite numbers >= 0, got \[1.0, -1\]"),
        ({"losses": [{"function": "MSELoss"}], "deep_supervision_weights": 0.5}, ValueError,
         r"^CombinedLoss: field 'deep_supervision_weights' must be a non-empty list of numbers, got 0.5"),
    ],
)
def test_config_errors(cfg, exc, match):
    with pytest.raises(exc, match=match):
        CombinedLoss(cfg)


def test_yaml_errors(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"^CombinedLoss: YAML file '.*empty.yaml' is empty"):
        CombinedLoss.from_yaml(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("losses: [\n  - function: MSELoss\n")
    with pytest.raises(ValueError, match=r"^CombinedLoss: cannot parse YAML file '.*bad.yaml'"):
        CombinedLoss.from_yaml(bad)


def test_call_errors():
    pred = torch.randn(2, 4, 3, 3)
    targets = {"aff": torch.rand(2, 3, 3, 3), "label": torch.randint(0, 2, (2, 3, 3))}
    missing = CombinedLoss([{"function": "MSELoss", "name": "m", "target": "affinity"}])
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('m'\), field 'target': key 'affinity' is not "
                                         r"among the targets; available keys: \['aff', 'label'\]"):
        missing(pred, targets)
    no_key = CombinedLoss([{"function": "MSELoss"}])
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('MSELoss'\), field 'target': the term names no "
                                         r"target key.*\['aff', 'label'\]"):
        no_key(pred, targets)
    beyond = CombinedLoss([{"function": "MSELoss", "pred_slice": "0:3", "target": "aff"},
                           {"function": "MSELoss", "pred_slice": "3:6", "target": "aff"}])
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 1 \('MSELoss_2'\), field 'pred_slice': slice '3:6' is "
                                         r"beyond the 4 channels of pred"):
        beyond(pred, targets)
    t_beyond = CombinedLoss([{"function": "MSELoss", "pred_slice": "0:2", "target_slice": "2:4", "target": "aff"}])
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('MSELoss'\), field 'target_slice': slice '2:4' is "
                                         r"beyond the 3 channels of target 'aff'"):
        t_beyond(pred, targets)
    no_channel = CombinedLoss([{"function": "MSELoss", "target_slice": "0:1", "target": "label"}])
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('MSELoss'\), field 'target_slice'.*no channel dim"):
        no_channel(pred, targets)
    not_scalar = CombinedLoss([{"function": "MSELoss", "pred_slice": "0:3", "target": "aff",
                                "kwargs": {"reduction": "none"}}])
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('MSELoss'\).*returned a tensor of shape "
                                         r"\[2, 3, 3, 3\].*needs a scalar"):
        not_scalar(pred, targets)
    with pytest.raises(TypeError, match=r"^CombinedLoss: pred must be a tensor"):
        no_key([], targets)
    with pytest.raises(TypeError, match=r"^CombinedLoss: target must be a tensor or a dict"):
        no_key(pred, [targets["aff"]])


def test_unavailable_builtin_is_reported(monkeypatch):
    # seglosses' own losses resolve lazily: a missing one fails at construction with a clear message.
    monkeypatch.delattr(seglosses, "MalisLoss", raising=False)
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('MalisLoss'\), field 'function': 'MalisLoss' is "
                                         r"a seglosses loss but could not be loaded"):
        CombinedLoss([{"function": "MalisLoss"}])
    # ... and does not affect the other terms' construction
    CombinedLoss([{"function": "PerChannelBCEWithLogitsLoss"}])


def test_inputs_not_modified():
    pred = torch.randn(2, 4, 4, 4)
    aff = (torch.rand(2, 3, 4, 4) > 0.5).float()
    mask = torch.ones(2, 4, 4, 4)
    copies = [t.clone() for t in (pred, aff, mask)]
    loss_fn = CombinedLoss([{"function": "PerChannelBCEWithLogitsLoss", "pred_slice": "1:4"}])
    loss_fn([pred, pred[:, :, ::2, ::2]], aff, mask=mask)
    for t, c in zip((pred, aff, mask), copies):
        assert torch.equal(t, c)


# ---- unknown keys, YAML file errors, call-time errors of a term ----------------------------------
@pytest.mark.parametrize("nesting", ["top", "pytc"])
def test_misspelt_top_level_key_is_an_error(tmp_path, nesting):
    section = {"losses": [{"function": "MSELoss"}], "deep_supervison_weights": [1.0, 0.5]}
    cfg = section if nesting == "top" else {"model": {"loss": section, "architecture": "unet"}, "data": {}}
    match = (r"^CombinedLoss: field 'deep_supervison_weights': unknown config key \(value \[1.0, 0.5\]\); "
             r"did you mean 'deep_supervision_weights'")
    with pytest.raises(ValueError, match=match):
        CombinedLoss(cfg)
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "loss.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=match):
        CombinedLoss.from_yaml(path)


def test_apply_deep_supervision_alias():
    preds = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    target = torch.rand(1, 2, 4, 4)
    a = CombinedLoss([{"function": "MSELoss", "apply_deep_supervision": False}])(preds, target)
    torch.testing.assert_close(a, F.mse_loss(preds[0], target))
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 0 \('MSELoss'\), field 'deep_supervision': given twice"):
        CombinedLoss([{"function": "MSELoss", "apply_deep_supervision": False, "deep_supervision": True}])


def test_from_yaml_file_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "loss.yaml"
    with pytest.raises(FileNotFoundError, match=r"^CombinedLoss.from_yaml: no such config file '.*nope/loss.yaml'"):
        CombinedLoss.from_yaml(missing)
    with pytest.raises(OSError, match=r"^CombinedLoss.from_yaml: cannot read config file"):
        CombinedLoss.from_yaml(tmp_path)  # a directory
    monkeypatch.setitem(__import__("sys").modules, "yaml", None)  # PyYAML not installed
    path = tmp_path / "loss.yaml"
    path.write_text("losses: [{function: MSELoss}]\n")
    with pytest.raises(ImportError, match=r"^CombinedLoss.from_yaml needs PyYAML.*pip install pyyaml"):
        CombinedLoss.from_yaml(path)


class Fussy(nn.Module):
    """Raises an exception of a chosen type at call time."""

    def __init__(self, exc="ValueError"):
        super().__init__()
        self.exc = exc

    def forward(self, pred, target):
        import builtins
        raise getattr(builtins, self.exc)("Fussy: bad input 42")


@pytest.mark.parametrize("exc", ["ValueError", "TypeError", "RuntimeError", "IndexError", "NotImplementedError"])
def test_call_time_errors_name_the_term_and_keep_their_type(registry, exc):
    registry("Fussy", Fussy)
    loss_fn = CombinedLoss([{"function": "MSELoss"}, {"function": "Fussy", "name": "fussy", "kwargs": {"exc": exc}}])
    import builtins
    with pytest.raises(getattr(builtins, exc), match=r"^CombinedLoss: term 1 \('fussy'\), Fussy on pred \[2, 3, 4\]: "
                                                    r"Fussy: bad input 42$") as info:
        loss_fn(torch.randn(2, 3, 4), torch.rand(2, 3, 4))
    assert type(info.value.__cause__).__name__ == exc


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11")
def test_call_time_error_keyerror_gets_a_note(registry):
    # KeyError quotes its message, so the term goes into a note instead (shown in the traceback).
    registry("Fussy", Fussy)
    with pytest.raises(KeyError) as info:
        CombinedLoss([{"function": "Fussy", "kwargs": {"exc": "KeyError"}}])(torch.randn(2, 3), torch.rand(2, 3))
    assert info.value.__notes__ == ["CombinedLoss: term 0 ('Fussy'), Fussy on pred [2, 3]"]


@needs_malis
def test_malis_nhood_mismatch_names_the_term():
    loss_fn = CombinedLoss([{"function": "PerChannelBCEWithLogitsLoss"},
                            {"function": "MalisLoss", "name": "malis", "pred_slice": "0:3",
                             "kwargs": {"nhood": [[1, 0, 0], [0, 1, 0]]}}])
    with pytest.raises(ValueError, match=r"^CombinedLoss: term 1 \('malis'\), MalisLoss on pred \[1, 3, 4, 4, 4\]: "
                                         r"MalisLoss: pred has 3 channels but nhood has 2 rows"):
        loss_fn(torch.randn(1, 3, 4, 4, 4), (torch.rand(1, 3, 4, 4, 4) > 0.5).float())


# ---- DeepSupervisionLoss on its own -------------------------------------------------------------
@needs_malis
def test_deep_supervision_loss_wrapper_matches_combined_loss():
    g = torch.Generator().manual_seed(12)
    preds = [torch.randn(2, 3, 6, 6, 6, generator=g), torch.randn(2, 3, 3, 3, 3, generator=g)]
    seg = torch.randint(1, 4, (2, 6, 6, 6), generator=g)
    aff = seglosses.seg_to_affgraph(seg, NHOOD)
    mask = (torch.rand(2, 1, 6, 6, 6, generator=g) > 0.2).float()
    malis = seglosses.MalisLoss(NHOOD)
    ds = seglosses.DeepSupervisionLoss(malis, weights=[1.0, 0.25])
    got = ds(preds, aff, mask=mask, gt_seg=seg)
    by_hand = malis(preds[0], aff, mask=mask, gt_seg=seg) + 0.25 * malis(preds[1], _nearest(aff, (3, 3, 3)),
                                                                           mask=_nearest(mask, (3, 3, 3)))
    torch.testing.assert_close(got, by_hand)
    combined = CombinedLoss({"losses": [{"function": "MalisLoss", "kwargs": {"nhood": NHOOD}}],
                             "deep_supervision_weights": [1.0, 0.25]})
    torch.testing.assert_close(combined(preds, aff, mask=mask, gt_seg=seg), got)
    torch.testing.assert_close(ds(preds[0], aff, gt_seg=seg), malis(preds[0], aff, gt_seg=seg))  # one tensor
    # with a crop: cropped at full resolution, clamped to the volume on the 3^3 scale
    cropped = seglosses.DeepSupervisionLoss(seglosses.MalisLoss(NHOOD, malis_crop_size=4, reduction="mean"), [1.0, 0.25])
    torch.manual_seed(0)
    value = cropped(preds, aff, gt_seg=seg)
    torch.manual_seed(0)
    crop_malis = seglosses.MalisLoss(NHOOD, malis_crop_size=4, reduction="mean")
    by_hand = crop_malis(preds[0], aff, gt_seg=seg) + 0.25 * crop_malis(preds[1], _nearest(aff, (3, 3, 3)))
    torch.testing.assert_close(value, by_hand)
    torch.testing.assert_close(crop_malis(preds[1], _nearest(aff, (3, 3, 3))),
                               seglosses.MalisLoss(NHOOD, reduction="mean")(preds[1], _nearest(aff, (3, 3, 3))))
    with pytest.raises(ValueError, match=r"^DeepSupervisionLoss: weights has 1 values but pred has 2 scales"):
        seglosses.DeepSupervisionLoss(malis, weights=[1.0])(preds, aff)
    with pytest.raises(ValueError, match=r"^DeepSupervisionLoss: weights must be finite numbers >= 0"):
        seglosses.DeepSupervisionLoss(malis, weights=[1.0, -1.0])


def test_config_is_frozen_and_exposed():
    loss_fn = CombinedLoss([{"function": "MSELoss", "pred_slice": "0:2", "kwargs": {"reduction": "sum"}}])
    term = loss_fn.config.terms[0]
    assert term.pred_slice == (0, 2) and str(term.pred_slice) == "0:2" and term.where == "term 0 ('MSELoss')"
    with pytest.raises(Exception):
        term.weight = 2.0
    with pytest.raises(TypeError):
        term.kwargs["reduction"] = "mean"
    assert CombinedLoss(loss_fn.config).config == loss_fn.config
    assert seglosses.available_losses() == seglosses.combined.available_losses()
    assert set(seglosses.registry.SEGLOSSES_LOSSES) <= set(seglosses.available_losses())
