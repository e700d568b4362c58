"""FLYT's signal to an M-FLYT model, over a run: what the meta-gradient asks of each input.

Each step the trainer logs, per mixing weight phi_k, its meta-gradient dL_down/dphi_k (in
``metrics.jsonl``, key ``meta_gradient``). The *pull* on an input is minus that: positive when one
more unit of weight on the input lowers the downstream loss after the reference step, i.e. when the
task asks for more of it. Over a run, per input:

* ``mean`` and ``rms``: the mean and root mean square of the pull over the steps;
* ``ratio``: mean / rms, the consistency of the pull in [-1, 1]. AdamW moves a weight by about
  ``lr * ratio`` per step, whatever the gradient's size, and with decoupled weight decay ``wd`` a
  weight settles near ``ratio / wd``: an input pulled the same way every step ends high, one whose pull
  keeps changing sign ends near zero;
* ``agreement``: the share of steps whose pull has the sign of the mean pull (0.5: a coin flip).

:func:`summarize` computes these from the metric records, :func:`format_signal_table` prints them
beside the learned weights, :func:`plot_signal` draws weights and pulls over the steps.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

KEY = "meta_gradient"
SIGNAL_PLOT = "signal.png"


def read_records(metrics_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The readable lines of a run's ``metrics.jsonl`` (a line cut short by a kill is skipped)."""
    records = []
    for line in Path(metrics_path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def pulls(records: list[dict[str, Any]]) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(steps, input names, pulls (steps x inputs), weights (steps x inputs)) of the records that
    carry a meta-gradient; empty arrays when none does (an E-FLYT run, or a run before logging)."""
    rows = [r for r in records if isinstance(r.get(KEY), dict) and isinstance(r.get("mixing_weights"), dict)]
    if not rows:
        return np.zeros(0), [], np.zeros((0, 0)), np.zeros((0, 0))
    names = list(rows[-1][KEY])
    rows = [r for r in rows if list(r[KEY]) == names and list(r["mixing_weights"]) == names]
    steps = np.array([int(r["step"]) for r in rows])
    pull = -np.array([[float(r[KEY][n]) for n in names] for r in rows])
    weight = np.array([[float(r["mixing_weights"][n]) for n in names] for r in rows])
    return steps, names, pull, weight


def summarize(records: list[dict[str, Any]], *, since_step: int = 0) -> dict[str, dict[str, float]]:
    """Per input: its last weight and the pull's mean, rms, ratio and sign agreement over the steps
    after ``since_step``. ``{}`` when the records carry no meta-gradient."""
    steps, names, pull, weight = pulls(records)
    if not names:
        return {}
    keep = steps > since_step
    if not keep.any():
        keep = np.ones_like(steps, dtype=bool)
    p = pull[keep]
    out = {}
    for k, name in enumerate(names):
        mean = float(p[:, k].mean())
        rms = float(math.sqrt((p[:, k] ** 2).mean()))
        sign = np.sign(mean) if mean != 0 else 1.0
        out[name] = {"weight": float(weight[-1, k]), "mean": mean, "rms": rms,
                     "ratio": mean / rms if rms > 0 else 0.0,
                     "agreement": float((np.sign(p[:, k]) == sign).mean())}
    return out


def format_signal_table(summary: dict[str, dict[str, float]], *, title: str = "") -> str:
    """The learned weights beside what the meta-gradient asked of each input (largest weight first)."""
    if not summary:
        return ""
    width = max(len("input"), *(len(k) for k in summary))
    head = f"{'input':<{width}}  {'weight':>8}  {'pull mean':>10}  {'pull rms':>9}  {'mean/rms':>8}  {'agree':>6}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["weight"]):
        lines.append(f"{name:<{width}}  {s['weight']:+8.4f}  {s['mean']:+10.3e}  {s['rms']:9.3e}  "
                     f"{s['ratio']:+8.3f}  {s['agreement']:6.1%}")
    lines.append("pull = -dL_down/d(weight) per step (positive: the task asks for more of the input); "
                 "mean/rms: its consistency; agree: steps pulling the mean's way")
    return "\n".join(lines)


def plot_signal(records: list[dict[str, Any]], path: str | os.PathLike, *, title: str = "") -> bool:
    """Weights and pulls (a moving mean over a tenth of the run) over the steps, as a PNG at
    ``path``; False (nothing written) when the records carry no meta-gradient."""
    steps, names, pull, weight = pulls(records)
    if not names:
        return False
    from ..plots import save_curves

    window = max(1, len(steps) // 10)
    kernel = np.ones(window) / window
    smooth = np.stack([np.convolve(pull[:, k], kernel, mode="valid") for k in range(len(names))], axis=1)
    save_curves(path, [
        ("mixing weight (on the standardised input)", steps, weight),
        (f"pull = -dL_down/dweight, mean of {window} steps", steps[window - 1:], smooth),
    ], names, title=title or "FLYT's signal per input")
    return True
