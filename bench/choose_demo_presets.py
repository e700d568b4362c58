"""Choose the demo's FLYT settings on the validation objective alone (never on the benchmark's test digits).

    python bench/choose_demo_presets.py --output choice.json          # the default demo pool, all candidates
    python bench/choose_demo_presets.py --candidates 150-steps,paper-ce  # some of them

Every candidate trains M-FLYT over the demo's 7 store inputs (the ``m-flyt-demo-all`` preset with
settings replaced) on the default demo pool with the same validation split of the downstream digits
(``validation_fraction`` 0.2: about 90 of the 449 downstream digits, never trained on). Each run logs its
validation gain at every checkpoint and keeps its best checkpoint. Then every candidate's scoring model,
and the hand-made mixes of the same inputs (the equal-weight standardised sum, the ImageNet-weighted sum
given by ``--in-weights``), are measured by the same *judges*, each as it is and rescaled to unit
standard deviation over the pool (the ranking alone, since a sharper score concentrates a batch's
weight and so moves the objective by its scale too): a judge is a reference model state with
FLYT's objective on the held-out digits (its downstream loss after one reference step, ``flyt.validation``),
16 fixed probe batches; the gain of a score is how much more that step lowers the held-out loss than an
unweighted step (positive: the score helps), with its standard error over the probes. The judges are
the two starting states the candidates' references use (the demo's b32 scorer, and a CLIP trained on the
unfiltered pool) and a later stage of the latter (trained three times as long), and every judge
measures the held-out loss of the model's own zero-shot classifier (``validation_loss`` zero_shot),
whatever loss a candidate trained with. Nothing here reads the test
digits or ``truth.parquet``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from flyt_datacomp.demo import build_demo_pool
from flyt_datacomp.flyt.models import MixingModel, load_scoring_model
from flyt_datacomp.flyt.trainer import Trainer
from flyt_datacomp.process import torch_threads

VALIDATION = {"validation_fraction": 0.2, "validation_size": 1024, "compact_vocabulary": True}
# the paper's schedule shape (AdamW, betas 0.9/0.98, decoupled decay, linear warm-up then cosine), scaled to
# the demo: lr x wd x steps of a few units so that the weights settle where the signal puts them
PAPER = {"steps": 600, "warmup_steps": 60, "scoring_lr": 0.02, "scoring_weight_decay": 0.5, "checkpoint_every": 50}
# the two reference starts: the demo's b32 scorer, or a CLIP trained on the unfiltered pool (the paper's start;
# 200 plain CLIP steps, the benchmark recipe's length)
B32 = {"reference_init": "checkpoint", "reference_pretrain_steps": 0}
UNFILTERED = {"reference_init": "random", "reference_pretrain_steps": 200, "reference_pretrain_lr": 1e-3}
CANDIDATES: dict[str, dict] = {
    "150-steps": {**B32, "steps": 150, "warmup_steps": 10, "scoring_weight_decay": 0.0, "checkpoint_every": 25},
    "paper-ce": {**PAPER, **B32},
    "paper-ce-pairwise": {**PAPER, **B32, "mixing": "pairwise"},
    "paper-cetemp": {**PAPER, **B32, "downstream_loss": "ce_temp"},
    "paper-cetemp-pairwise": {**PAPER, **B32, "downstream_loss": "ce_temp", "mixing": "pairwise"},
    "paper-ce-unfiltered": {**PAPER, **UNFILTERED},
    "paper-cetemp-unfiltered": {**PAPER, **UNFILTERED, "downstream_loss": "ce_temp"},
    "paper-cetemp-unfiltered-pairwise": {**PAPER, **UNFILTERED, "downstream_loss": "ce_temp", "mixing": "pairwise"},
}
JUDGE_PROBES = 16
# the judges: a reference state each (the two starts the candidates use), all judging by the held-out
# loss of the model's own zero-shot classifier (validation_loss zero_shot), whatever loss a candidate trained with
JUDGES = {"from the b32 scorer": B32, "from the unfiltered pool": UNFILTERED,
          "from the unfiltered pool, 3x longer": {**UNFILTERED, "reference_pretrain_steps": 600}}


def _train(args: tuple[str, dict, str, str]) -> tuple[str, str, float]:
    name, overrides, runs, inputs_dir = args
    demo = build_demo_pool(progress=False)
    cfg = demo.train_config("m-flyt-demo-all", {**VALIDATION, **overrides, "inputs_dir": inputs_dir})
    out = Path(runs) / name
    t0 = time.perf_counter()
    with torch_threads(1):
        result = Trainer(cfg, out, progress=False).run() if not (out / "scoring_model.pt").exists() else {}
    return name, str(out / "scoring_model.pt"), time.perf_counter() - t0 if result else 0.0


def judge(demo, inputs_dir: str, overrides: dict, models: dict[str, torch.nn.Module], run_dir: Path,
          unit: bool = True) -> dict:
    """Every model's validation gain at the starting reference state of a configuration."""
    cfg = demo.train_config("m-flyt-demo-all", {**VALIDATION, **overrides, "inputs_dir": inputs_dir,
                                                "validation_probes": JUDGE_PROBES})
    with torch_threads(2):
        trainer = Trainer(cfg, run_dir, progress=False)
        trainer._warm_start()
        trainer.step = cfg.warmup_steps  # the full reference learning rate
        features = torch.from_numpy(np.asarray(trainer.features.arrays[0], dtype=np.float32))
        out = {}
        for name, m in models.items():
            out[name] = trainer.validation_gain(m)
            print(f"  {name:<36} {out[name]['val_gain'] * 1e4:+8.3f} ± {out[name]['val_gain_se'] * 1e4:6.3f}", flush=True)
            if not unit:
                continue
            scaled = copy.deepcopy(m)  # the same ranking at unit std over the pool: what the ranking alone is worth
            with torch.no_grad():
                scaled.weight.div_(m(features).std())
            out[f"{name} (unit std)"] = trainer.validation_gain(scaled)
            print(f"  {name + ' (unit std)':<36} {out[name + ' (unit std)']['val_gain'] * 1e4:+8.3f}", flush=True)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", help="comma-separated names [all]: " + ", ".join(CANDIDATES))
    ap.add_argument("--runs", type=Path, default=Path("choose-runs"), help="where the candidates train [./choose-runs]")
    ap.add_argument("--inputs-dir", help="the 7-input store [the benchmark table's]")
    ap.add_argument("--in-weights", help="the ImageNet-weighted sum's weights per input, name=w,... (judged too)")
    ap.add_argument("--judges", help="comma-separated judge numbers, 1-based [all]: " + "; ".join(
        f"{i + 1}: {j}" for i, j in enumerate(JUDGES)))
    ap.add_argument("--no-unit", action="store_true", help="judge each model at the scale it writes only")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    demo = build_demo_pool(progress=False)
    inputs_dir = args.inputs_dir or str(demo.root / "benchmark" / "table" / "inputs")
    args.runs.mkdir(parents=True, exist_ok=True)
    jobs = [(n, CANDIDATES[n], str(args.runs), inputs_dir) for n in names]
    with ProcessPoolExecutor(args.jobs) as pool:
        trained = {n: (p, t) for n, p, t in pool.map(_train, jobs)}
    models = {n: load_scoring_model(p)[0] for n, (p, _) in trained.items()}
    first = next(iter(models.values()))
    stats = (first.mean.double().numpy(), first.std.double().numpy())
    hand = {"standardised sum": np.ones(len(first.input_names))}
    if args.in_weights:
        w = dict(x.split("=") for x in args.in_weights.split(","))
        hand["ImageNet-weighted sum"] = np.array([float(w[n]) for n in first.input_names])
    for label, weights in hand.items():
        m = MixingModel(first.input_names, *stats)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(weights))
        models[label] = m
    results = {}
    chosen = [int(j) - 1 for j in args.judges.split(",")] if args.judges else range(len(JUDGES))
    for i in chosen:
        label, family = list(JUDGES.items())[i]
        print(f"\njudge: {label} (gain x1e4 ± s.e.)", flush=True)
        results[label] = judge(demo, inputs_dir, family, models, args.runs / f"judge-{os.getpid()}-{len(results)}",
                               unit=not args.no_unit)
    runs = {n: {"seconds": t, "metrics": [json.loads(x) for x in (args.runs / n / "metrics.jsonl").read_text().splitlines()
                                          if "val_gain" in x]} for n, (_, t) in trained.items()}
    print("\nown validation gain per run (x1e4): selected checkpoint, last checkpoint")
    for n, r in runs.items():
        gains = [(m["step"], m["val_gain"]) for m in r["metrics"]]
        best = max(gains, key=lambda g: g[1]) if gains else (0, float("nan"))
        print(f"  {n:<36} step {best[0]:>4}: {best[1] * 1e4:+8.3f}   last: {gains[-1][1] * 1e4:+8.3f}"
              f"   weights: {json.dumps({k: round(v, 2) for k, v in models[n].mixing_weights().items()})}")
    if args.output:
        args.output.write_text(json.dumps({"judges": results, "runs": runs,
                                           "weights": {n: m.mixing_weights() for n, m in models.items()}}, indent=1))


if __name__ == "__main__":
    main()
