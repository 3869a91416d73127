"""Short runs of the end-to-end demo (examples/train_affinities.py): a few steps on small volumes."""

import json
import math
from pathlib import Path

import pytest

from demo_helpers import EXAMPLES, fib25_dir, load_script

pytest.importorskip("monai")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("waterz")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

DEMO = EXAMPLES / "train_affinities.py"
TINY = ["--steps", "3", "--patch-size", "16", "--threads", "2", "--quiet"]
SYNTHETIC = ["--data", "synthetic", "--volume-size", "24"] + TINY
PNGS = ("loss_curves.png", "prediction_slice.png", "threshold_sweep.png")


@pytest.fixture(scope="module")
def demo():
    return load_script(DEMO)


@pytest.fixture(scope="module")
def tiny_run(demo, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    return demo.main(SYNTHETIC + ["--out-dir", str(out_dir)]), out_dir


def test_demo_help(demo, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--steps", "--patch-size", "--out-dir", "--config", "--seed", "--seeds", "--volume-size",
                 "--threads", "--data", "--data-dir", "--cache-dir", "--quiet"):
        assert flag in out


def _check_outputs(out, out_dir, data, steps, shape):
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(out["metrics"]))
    assert metrics["data"] == data and metrics["settings"]["steps"] == steps
    assert list(metrics["models"]) == ["bce_only", "bce_malis_dice"]
    for label, model in metrics["models"].items():
        for run in model["runs"]:
            assert run["steps"] == steps and run["seed"] in metrics["settings"]["seeds"]
            assert run["train_s"] > 0 and run["eval_s"] > 0
            for decoder in ("cc", "waterz"):
                m = run["decoders"][decoder]
                for key in ("voi_split", "voi_merge", "arand", "cremi_score", "threshold"):
                    assert math.isfinite(m[key]) and m[key] >= 0, (label, decoder, key, m)
                assert m["threshold"] in [r["threshold"] for r in m["sweep"]["tune"]]
                assert len(m["sweep"]["heldout"]) == len(m["sweep"]["tune"]) > 1
        for decoder in ("cc", "waterz"):
            assert set(model["summary"][decoder]) >= {"voi_split", "voi_merge", "arand", "cremi_score", "thresholds"}
    for label, r in out["first"].items():
        assert r["logits"].shape == (5, *shape)
        assert all(len(v) == steps and all(math.isfinite(x) for x in v) for v in r["history"].values())
        for m in r["decoders"].values():
            assert m["seg"].shape == shape and m["seg"].min() >= 1
    assert {"bce", "malis", "dice", "total"} <= set(out["first"]["bce_malis_dice"]["history"])
    for name in PNGS:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "| BCE + MALIS + Dice | connected components |" in out["table"]
    assert (out_dir / "metrics.md").read_text() == out["table"] + "\n"


def test_demo_synthetic_short_run(tiny_run):
    out, out_dir = tiny_run
    _check_outputs(out, out_dir, "synthetic", 3, (24, 24, 24))


def test_demo_is_deterministic(demo, tiny_run, tmp_path):
    out, _ = tiny_run
    again = demo.main(SYNTHETIC + ["--out-dir", str(tmp_path), "--config", str(demo.CONFIG_DIR / "bce_malis_dice.yaml")])
    a, b = out["metrics"]["models"]["bce_malis_dice"]["runs"][0], again["metrics"]["models"]["bce_malis_dice"]["runs"][0]
    assert a["final_losses"] == b["final_losses"]
    assert a["decoders"] == b["decoders"]


def test_demo_fib25_short_run(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLOSSES_DATA_DIR", str(fib25_dir()))
    out = demo.main(["--fib25-yx", "16", "--steps", "2", "--patch-size", "16", "--threads", "2", "--quiet",
                     "--out-dir", str(tmp_path)])  # --data left to its default: fib25, found
    _check_outputs(out, tmp_path, "fib25", 2, (80, 16, 16))


def test_demo_falls_back_to_synthetic(demo, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SEGLOSSES_DATA_DIR", raising=False)
    from affinity_demo import fib25

    monkeypatch.setattr(fib25, "DEFAULT_DATA_DIR", tmp_path / "nothing-here")
    monkeypatch.setattr(fib25, "can_download", lambda *a, **k: (False, "ConnectionError"))
    name, folder = demo.choose_data(demo.parse_args(["--cache-dir", str(tmp_path / "no-cache")]))
    assert (name, folder) == ("synthetic", None)
    line = capsys.readouterr().out.strip()
    assert line.startswith("data: synthetic, because FIB-25 is not available") and "ConnectionError" in line
    with pytest.raises(SystemExit):
        demo.choose_data(demo.parse_args(["--data", "fib25", "--cache-dir", str(tmp_path / "no-cache")]))
    assert "cannot be downloaded" in capsys.readouterr().err


def test_demo_bad_data_dir_names_the_file(demo, tmp_path, capsys):
    (tmp_path / "grayscale_maps").mkdir()
    with pytest.raises(SystemExit):
        demo.main(["--data-dir", str(tmp_path), "--steps", "1", "--quiet", "--out-dir", str(tmp_path / "out")])
    assert "missing file" in capsys.readouterr().err
