"""A short run of the end-to-end demo (examples/train_affinities.py): a few steps on a tiny volume."""

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("monai")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

DEMO = Path(__file__).resolve().parent.parent / "examples" / "train_affinities.py"
TINY = ["--steps", "3", "--volume-size", "24", "--patch-size", "16", "--threads", "2", "--quiet"]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("train_affinities", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(demo, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    return demo.main(TINY + ["--out-dir", str(out_dir)]), out_dir


def test_demo_help(demo, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--steps", "--patch-size", "--out-dir", "--config", "--seed", "--volume-size", "--threshold",
                 "--threads"):
        assert flag in out


def test_demo_short_run(tiny_run, capsys):
    out, out_dir = tiny_run
    results = out["results"]
    assert list(results) == ["bce_only", "bce_malis_dice"]
    for label, r in results.items():
        # both configs trained for the requested steps, every term logged every step
        assert set(r["history"]) >= {"bce", "total"}
        assert all(len(v) == 3 for v in r["history"].values())
        assert all(math.isfinite(x) for v in r["history"].values() for x in v)
        # a segmentation of the held-out volume: every voxel in a segment 1..n
        for seg in r["seg"].values():  # raw, clean, tuned
            assert seg.shape == (24, 24, 24)
            assert seg.min() >= 1
        assert r["logits"].shape == (5, 24, 24, 24)
        # finite metrics for every variant
        assert set(r["metrics"]) == {"raw", "clean", "clean, tuned threshold"}
        for m in r["metrics"].values():
            for key in ("voi_split", "voi_merge", "voi", "arand"):
                assert isinstance(m[key], float) and math.isfinite(m[key]) and m[key] >= 0, (label, key, m)
            assert m["segments"] >= 1
    assert {"bce", "malis", "dice", "total"} <= set(results["bce_malis_dice"]["history"])
    for name in ("loss_curves.png", "prediction_slice.png", "threshold_sweep.png", "metrics.md", "metrics.json"):
        path = out_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("loss_curves.png", "prediction_slice.png", "threshold_sweep.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| bce_malis_dice | clean |" in out["table"]


def test_demo_is_deterministic(demo, tiny_run, tmp_path):
    out, _ = tiny_run
    again = demo.main(TINY + ["--out-dir", str(tmp_path), "--config", str(demo.CONFIG_DIR / "bce_malis_dice.yaml")])
    a, b = out["results"]["bce_malis_dice"], again["results"]["bce_malis_dice"]
    assert a["history"] == b["history"]
    assert a["metrics"] == b["metrics"]
