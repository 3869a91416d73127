#!/usr/bin/env python
"""End-to-end demo of seglosses: train a small 3D affinity network on real (or synthetic) EM.

What it does, in order (``make demo`` runs it with no arguments):

1. **Data** (``affinity_demo/fib25.py``, ``datasets.py``, ``synthetic.py``). By default the
   FIB-25 volume (a real 250^3 FIB-SEM cube of the Drosophila medulla at 10 nm with dense
   neuron labels, Janelia FlyEM, CC BY) when a local copy is found (``--data-dir``,
   ``$SEGLOSSES_DATA_DIR``, ``../shared/data/fib25`` beside the repository, or the download
   cache) or can be downloaded; otherwise synthetic Voronoi "neurons". One line says which and
   why. FIB-25 is split along z into a training region and a held-out region with a gap between
   them; the training ground truth is the body labels with the instance boundaries eroded by one
   voxel (PyTorch Connectomics' ``SegErosionInstanced``), so the membranes are background.
2. **Training** (``training.py``, ``model.py``). A MONAI 3D U-Net with 5 outputs (3 affinities for
   the nhood ``[[1,0,0],[0,1,0],[0,0,1]]`` + 2 classes, boundary / inside) trained with Adam on
   random flipped patches of the training region, with the :class:`seglosses.CombinedLoss` of each
   ``--config``. By default two models with the same seed, initialisation, patches and steps:
   BCE only and BCE + MALIS (full patch, no crop) + Dice. A progress bar shows the loss terms.
3. **Decoding and scores** (``decoding.py``, ``scoring.py``). Each model predicts the tuning
   region (a part of the training data) and the held-out region (sliding window). Two decoders,
   each followed by the small-fragment clean-up (segments under ``--min-size`` voxels join their
   nearest neighbour): connected components of the thresholded affinities
   (``seglosses.affgraph_to_seg``) and waterz (watershed + agglomeration by median affinity).
   Each decoder's threshold is swept; the one with the lowest CREMI score on the tuning region is
   picked, and the held-out region is scored there: VOI split / merge, adapted Rand error
   (``skimage.metrics``) and the CREMI score ``sqrt((VOI split + VOI merge) * ARAND)``, with the
   boundary voxels of the ground truth left out.
4. **Output** (``report.py``, ``plotting.py``) in ``--out-dir``: ``metrics.json`` (every score,
   threshold and sweep per seed, model and decoder, their mean and spread over ``--seeds``,
   steps, seconds, settings), ``metrics.md``, ``loss_curves.png``, ``prediction_slice.png`` (raw,
   ground truth, affinities and both segmentations of a held-out slice; touching segments always
   get different colours) and ``threshold_sweep.png``.

Everything is seeded; with the same arguments and the same number of torch threads two runs give
the same numbers.

Usage::

    python examples/train_affinities.py                         # the default demo
    python examples/train_affinities.py --seeds 0 1 2 --threads 2 --out-dir examples/results/fib25
    python examples/train_affinities.py --data synthetic --steps 3000 --volume-size 96
    python examples/train_affinities.py --data fib25 --data-dir /path/to/fib25
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

# Run from a source checkout without installing: the in-place build lives in the repo root, the
# demo's modules beside this file.
_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
if (_REPO / "seglosses" / "__init__.py").is_file() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402

import seglosses  # noqa: E402
from seglosses import CombinedLoss  # noqa: E402

from affinity_demo import datasets, fib25, plotting, report, scoring  # noqa: E402
from affinity_demo.model import make_model, predict  # noqa: E402
from affinity_demo.training import train  # noqa: E402

CONFIG_DIR = _HERE / "configs"
DEFAULT_CONFIGS = [CONFIG_DIR / "bce_only.yaml", CONFIG_DIR / "bce_malis_dice.yaml"]
# Defaults per data set: FIB-25's are sized so that the default run (two models, decoding and
# scores) takes about 6 minutes on 2 CPU cores.
DEFAULTS = {"synthetic": {"steps": 1000, "patch_size": 32}, "fib25": {"steps": 800, "patch_size": 48}}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a small 3D U-Net on FIB-25 (or synthetic) EM with seglosses' CombinedLoss "
                    "(BCE only vs BCE + MALIS + Dice) and compare the segmentations of a held-out region.",
        epilog="Outputs in --out-dir: metrics.json, metrics.md, loss_curves.png, prediction_slice.png, "
               "threshold_sweep.png.")
    p.add_argument("--data", choices=("synthetic", "fib25"), default=None,
                   help="the volume (default: fib25 when a local copy is found or it can be downloaded, "
                        "else synthetic)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"folder with the FIB-25 files, read in place (default: ${fib25.ENV_DATA_DIR}, "
                        f"else ../shared/data/fib25 beside the repository, else the download cache)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where FIB-25 is downloaded to (default: %s)" % fib25.default_cache_dir())
    p.add_argument("--config", nargs="+", type=Path, default=None, metavar="YAML",
                   help="one or more CombinedLoss YAML configs; one model is trained per config "
                        "(default: examples/configs/bce_only.yaml examples/configs/bce_malis_dice.yaml)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per model (default: %d synthetic, %d fib25)"
                        % (DEFAULTS["synthetic"]["steps"], DEFAULTS["fib25"]["steps"]))
    p.add_argument("--patch-size", type=int, default=None,
                   help="edge of the cubic training patches and of the sliding window, a multiple of 4 "
                        "(default: %d synthetic, %d fib25)"
                        % (DEFAULTS["synthetic"]["patch_size"], DEFAULTS["fib25"]["patch_size"]))
    p.add_argument("--batch-size", type=int, default=2, help="patches per step (default: %(default)s)")
    p.add_argument("--volume-size", type=int, default=64,
                   help="synthetic data: edge of the cubic training and held-out volumes (default: %(default)s)")
    p.add_argument("--fib25-yx", type=int, default=None, metavar="N",
                   help="FIB-25: use only the central N x N voxels in y and x of every region, for quick "
                        "tries (default: all 250)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--min-size", type=int, default=20,
                   help="segments smaller than this many voxels are merged into their neighbours "
                        "(default: %(default)s)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None,
                       help="seed of the initialisation, the patches and the synthetic data (default: 0)")
    seeds.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                       help="repeat the comparison for every seed and report mean and spread")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's default, %d here); results are reproducible "
                        "for a given thread count" % torch.get_num_threads())
    p.add_argument("--out-dir", type=Path, default=_HERE / "output",
                   help="where the PNGs and metrics files go (default: examples/output)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.patch_size is not None and (args.patch_size < 4 or args.patch_size % 4):
        p.error(f"--patch-size must be a multiple of 4 (the U-Net downsamples twice), got {args.patch_size}")
    if args.fib25_yx is not None and not 16 <= args.fib25_yx <= 250:
        p.error(f"--fib25-yx must be in [16, 250], got {args.fib25_yx}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.min_size < 1:
        p.error(f"--min-size must be >= 1, got {args.min_size}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.config is None:
        args.config = list(DEFAULT_CONFIGS)
    if len({c.stem for c in args.config}) != len(args.config):
        p.error(f"--config: the file names must differ (they label the runs), got {[str(c) for c in args.config]}")
    for c in args.config:
        if not c.is_file():
            p.error(f"--config: no such file {c}")
    args.seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must differ, got {args.seeds}")
    args.parser = p
    return args


def choose_data(args: argparse.Namespace) -> tuple:
    """``(name, folder)``: the data set to use and FIB-25's folder (``None`` for synthetic); prints why."""
    if args.data == "synthetic":
        print("data: synthetic (--data synthetic)")
        return "synthetic", None
    folder, where = fib25.locate(args.data_dir, args.cache_dir)
    if folder is not None:
        print(f"data: fib25, from {where}")
        return "fib25", folder
    ok, why = fib25.can_download()
    if ok:
        cache = args.cache_dir or fib25.default_cache_dir()
        print(f"data: fib25, downloading to {cache} ({where}); the sha256 of every file is checked")
        return "fib25", fib25.fetch_fib25(cache)
    if args.data == "fib25":
        args.parser.error(f"--data fib25: {where}, and it cannot be downloaded ({why}); "
                          f"pass --data-dir or set ${fib25.ENV_DATA_DIR}")
    print(f"data: synthetic, because FIB-25 is not available ({where}; download: {why}); "
          f"pass --data-dir or set ${fib25.ENV_DATA_DIR} to use it")
    return "synthetic", None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_one(config: Path, data: datasets.Dataset, args: argparse.Namespace, seed: int, label: str) -> dict:
    """Train one model, decode and score it; returns the run's record and its big arrays apart."""
    run = train(config, data.train, steps=args.steps, patch=args.patch_size, batch=args.batch_size, lr=args.lr,
                seed=seed, quiet=args.quiet, label=label)
    t0, c0 = time.perf_counter(), time.process_time()
    tune_logits = predict(run["model"], data.tune["raw"], args.patch_size)
    heldout_logits = predict(run["model"], data.heldout["raw"], args.patch_size)
    decoders = scoring.evaluate(tune_logits, data.tune["gt"], heldout_logits, data.heldout["gt"], args.min_size)
    record = {"seed": seed, "steps": args.steps, "train_s": run["train_s"], "train_cpu_s": run["train_cpu_s"],
              "eval_s": time.perf_counter() - t0, "eval_cpu_s": time.process_time() - c0,
              "final_losses": {k: float(np.mean(v[-50:])) for k, v in run["history"].items()},
              "decoders": {d: {k: v for k, v in m.items() if k != "seg"} for d, m in decoders.items()}}
    return {"record": record, "history": run["history"], "logits": heldout_logits, "decoders": decoders}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    t_start = time.perf_counter()
    torch.set_flush_denormal(True)  # tiny weights/gradients otherwise slow the CPU down a lot
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name, folder = choose_data(args)
    for key, value in DEFAULTS[name].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    n_params = sum(p.numel() for p in make_model().parameters())
    machine = f"{_cpu_name()}, {os.cpu_count()} CPUs"
    print(f"seglosses {seglosses.__version__}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"machine: {machine}, torch threads {torch.get_num_threads()}")
    print(f"seeds {args.seeds}, patches {args.batch_size} x {args.patch_size}^3, {args.steps} steps per model, "
          f"Adam lr {args.lr}, U-Net with {n_params:,} parameters")

    t0 = time.perf_counter()
    try:
        fib25_data = datasets.fib25_dataset(fib25.load_fib25(folder), yx=args.fib25_yx) if name == "fib25" else None
    except fib25.DataError as e:
        args.parser.error(str(e))
    runs: Dict[str, List[dict]] = {c.stem: [] for c in args.config}
    first: Dict[str, dict] = {}  # the first seed's arrays, for the figures
    for seed in args.seeds:
        data = fib25_data if fib25_data is not None else datasets.synthetic_dataset(args.volume_size, seed)
        if seed == args.seeds[0] or fib25_data is None:
            print(f"data: {data.description} ({time.perf_counter() - t0:.1f} s)")
        for config in args.config:
            label = config.stem if len(args.seeds) == 1 else f"{config.stem} seed {seed}"
            out = run_one(config, data, args, seed, label)
            runs[config.stem].append(out["record"])
            r = out["record"]
            best = ", ".join(f"{d} {m['cremi_score']:.3f} (threshold {m['threshold']:g})"
                             for d, m in r["decoders"].items())
            print(f"{label}: trained in {r['train_s']:.1f} s ({1000 * r['train_s'] / args.steps:.0f} ms/step), "
                  f"decoded and scored in {r['eval_s']:.1f} s; held-out CREMI score {best}")
            if seed == args.seeds[0]:
                first[config.stem] = out
        if seed == args.seeds[0]:
            first_data = data

    metrics = {
        "data": name,
        "description": first_data.description,
        "regions": first_data.regions,
        "command": "python examples/train_affinities.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"steps": args.steps, "patch_size": args.patch_size, "batch_size": args.batch_size,
                     "lr": args.lr, "min_size": args.min_size, "seeds": args.seeds,
                     "threads": torch.get_num_threads(), "model_parameters": n_params,
                     **({"volume_size": args.volume_size} if name == "synthetic" else {})},
        "environment": {"seglosses": seglosses.__version__, "torch": torch.__version__,
                        "python": platform.python_version(), "machine": machine},
        "models": {label: {"config": os.path.relpath(config, _REPO) if config.is_relative_to(_REPO) else str(config),
                           "loss": " + ".join(f"{w:g} * {n}" for n, w in
                                              CombinedLoss.from_yaml(config).term_weights.items()),
                           "summary": report.summarise(runs[label]), "runs": runs[label]}
                   for label, config in ((c.stem, c) for c in args.config)},
    }
    metrics["total_s"] = time.perf_counter() - t_start
    table = report.markdown_table(metrics)
    report.write(args.out_dir / "metrics.json", metrics)
    (args.out_dir / "metrics.md").write_text(table + "\n", encoding="utf-8")
    seed_note = f"seed {args.seeds[0]}"
    plotting.plot_losses({k: v["history"] for k, v in first.items()}, args.out_dir / "loss_curves.png",
                         f"{name}: loss terms per training step, {seed_note} (faint: per step, bold: moving average)")
    plotting.plot_slice(first_data.heldout["raw"], first_data.heldout["gt"], first, args.out_dir / "prediction_slice.png",
                        f"{name}: one slice of the held-out region, {seed_note} (scores over the whole region)")
    plotting.plot_sweeps({k: v["decoders"] for k, v in first.items()}, args.out_dir / "threshold_sweep.png",
                         f"{name}: scores vs threshold, {seed_note} (solid: held-out, dotted: tuning region; "
                         f"vertical lines: thresholds picked on the tuning region)")

    print(f"\n{first_data.description}\nHeld-out scores; ground-truth boundary voxels are left out; VOI in bits.\n")
    print(table)
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    print(f"Outputs: {args.out_dir}/ metrics.json, metrics.md, loss_curves.png, prediction_slice.png, "
          f"threshold_sweep.png")
    return {"metrics": metrics, "table": table, "first": first, "out_dir": args.out_dir}


if __name__ == "__main__":
    main()
