"""metrics.json: what a run measured, its mean and spread over seeds, and the markdown table of it.

The README's demo tables are :func:`markdown_table` of the committed ``examples/results/*/metrics.json``
(``examples/render_readme_tables.py`` writes them; ``tests/test_readme.py`` checks them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

SUMMARY_KEYS = ("voi_split", "voi_merge", "arand", "cremi_score")
MODEL_NAMES = {"bce_only": "BCE only", "bce_malis_dice": "BCE + MALIS + Dice"}
DECODER_NAMES = {"cc": "connected components", "waterz": "waterz (watershed + median agglomeration)"}


def mean_std(values: List[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std}


def summarise(runs: List[dict]) -> Dict[str, dict]:
    """Per decoder: mean and spread over the runs (seeds) of every score, and the thresholds."""
    out = {}
    for decoder in runs[0]["decoders"]:
        rows = [r["decoders"][decoder] for r in runs]
        out[decoder] = {k: mean_std([m[k] for m in rows]) for k in SUMMARY_KEYS}
        out[decoder]["thresholds"] = [m["threshold"] for m in rows]
    return out


def write(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _fmt(stat: Dict[str, float], n: int, digits: int) -> str:
    if n > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def markdown_table(metrics: dict) -> str:
    """The held-out scores of every model and decoder, mean ± standard deviation over the seeds."""
    s = metrics["settings"]
    seeds = s["seeds"]
    n = len(seeds)
    lines = ["| model | decoder | threshold (picked on the tuning region) | VOI split | VOI merge | "
             "adapted Rand error | CREMI score |",
             "|---|---|---|---:|---:|---:|---:|"]
    decoders = list(next(iter(metrics["models"].values()))["summary"])
    for decoder in decoders:
        for name, model in metrics["models"].items():
            m = model["summary"][decoder]
            thresholds = ", ".join(f"{t:g}" for t in m["thresholds"])
            top = max(row["threshold"] for r in model["runs"] for row in r["decoders"][decoder]["sweep"]["tune"])
            if top in m["thresholds"]:
                thresholds += f" ({top:g} = the top of the swept grid)"
            lines.append(f"| {MODEL_NAMES.get(name, name)} | {DECODER_NAMES.get(decoder, decoder)} | {thresholds} | "
                         f"{_fmt(m['voi_split'], n, 3)} | {_fmt(m['voi_merge'], n, 3)} | "
                         f"{_fmt(m['arand'], n, 3)} | {_fmt(m['cremi_score'], n, 3)} |")
    train_s = {name: mean_std([r["train_s"] for r in model["runs"]])["mean"] for name, model in metrics["models"].items()}
    per_model = ", ".join(f"{MODEL_NAMES.get(k, k)} {v:.0f} s" for k, v in train_s.items())
    spread = f"mean ± standard deviation over seeds {', '.join(map(str, seeds))}" if n > 1 else f"seed {seeds[0]}"
    lines.append("")
    lines += comparison(metrics)
    lines.append(f"{spread}; {s['steps']} steps of {s['batch_size']} x {s['patch_size']}³ patches per model, "
                 f"training time per model: {per_model} ({s['threads']} torch threads, {metrics['environment']['machine']}); "
                 f"lower is better everywhere.")
    return "\n".join(lines)


def comparison(metrics: dict, base: str = "bce_only", other: str = "bce_malis_dice") -> List[str]:
    """One sentence per decoder: does ``other`` beat ``base`` on the CREMI score, seed by seed?"""
    models = metrics["models"]
    if base not in models or other not in models:
        return []
    lines = []
    for decoder in models[base]["summary"]:
        a = [r["decoders"][decoder]["cremi_score"] for r in models[base]["runs"]]
        b = [r["decoders"][decoder]["cremi_score"] for r in models[other]["runs"]]
        diff = [y - x for x, y in zip(a, b)]
        better = sum(d < 0 for d in diff)
        d = mean_std(diff)
        spread = f" ± {d['std']:.3f}" if len(diff) > 1 else ""
        verdict = ("lower (better)" if better == len(diff) else "higher (worse)" if better == 0 and all(x > 0 for x in diff)
                   else "not consistently different")
        lines.append(f"- {DECODER_NAMES.get(decoder, decoder)}: {MODEL_NAMES.get(other, other)} minus "
                     f"{MODEL_NAMES.get(base, base)}, CREMI score {d['mean']:+.3f}{spread}; better in {better} of "
                     f"{len(diff)} seed(s): {verdict}.")
    lines.append("")
    return lines
