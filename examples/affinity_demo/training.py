"""Training one model with the CombinedLoss of a YAML config on random patches of a training region."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from seglosses import CombinedLoss

from .datasets import sample_batch
from .model import make_model


def train(config: Path, region: Dict[str, np.ndarray], *, steps: int, patch: int, batch: int, lr: float,
          seed: int, quiet: bool = False, label: str = "") -> dict:
    """Train a fresh U-Net with Adam; every config gets the same initialisation and patches for a seed.

    Returns:
        ``model``, ``history`` (every loss term and ``total`` per step), ``train_s`` (wall),
        ``train_cpu_s`` (this process's CPU time).
    """
    from tqdm import tqdm

    loss_fn = CombinedLoss.from_yaml(config)
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng([seed, 1])  # the same patches for every config
    history: Dict[str, List[float]] = {name: [] for name in loss_fn.term_names}
    history["total"] = []
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), desc=f"{label or config.stem:>18}", unit="step", dynamic_ncols=True,
               disable=quiet, mininterval=0.5)
    for _ in bar:
        raw, aff, lab, seg = sample_batch(region, patch, batch, rng)
        pred = model(raw)
        total, terms = loss_fn(pred, {"affinity": aff, "label": lab}, gt_seg=seg, return_terms=True)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        for k, v in terms.items():
            history[k].append(float(v))
        history["total"].append(float(total.detach()))
        bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in history.items()}, refresh=False)
    bar.close()
    return {"model": model, "history": history, "train_s": time.perf_counter() - t0,
            "train_cpu_s": time.process_time() - c0}
