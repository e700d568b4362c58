"""FLYT's validation objective on ground-truth subsets of the demo pool, beside what the benchmark says of them.

    python bench/judge_truth_subsets.py                  # both judges, 16 probe batches
    python bench/judge_truth_subsets.py --judges 2 --output judged.json

A judge (``bench/choose_demo_presets.py``) is a reference state with FLYT's objective on the held-out
validation digits: the zero-shot loss after one reference step on a probe batch, weighted, against the
same after an unweighted step (positive: the weighting helps). Here the weighting is not a scoring
model's but the ground truth's (``truth.parquet``): each probe batch's step is taken on its examples of
one true subset (the task alone; the task with each kind of noise; every correctly captioned example),
uniformly weighted. No model is involved, so what this measures is the objective itself: whether what
it prefers among known subsets is what the benchmark prefers (``flyt-datacomp benchmark --subset``
measures the same subsets; ``/bench`` has no hand in choosing them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from flyt_datacomp.demo.signal import KINDS, kinds_in_pool_order, open_pool_with_domains
from flyt_datacomp.flyt.adamw import AdamState
from flyt_datacomp.flyt.trainer import Trainer
from flyt_datacomp.flyt.validation import ZeroShotLoss, validation_gain
from flyt_datacomp.pool import Pool
from flyt_datacomp.process import torch_threads

# the true subsets, as sets of kinds (indices into KINDS)
SUBSETS = {
    "the task": (0,),
    "the task + other domains' wrong captions": (0, 3),
    "the task + clutter": (0, 4),
    "the task + digits' wrong captions": (0, 2),
    "every correct caption (the alignment oracle)": (0, 1),
}
# the judges of the preset choice: the reference's two starting states (bench/choose_demo_presets.py)
JUDGES = {"1": ("from the b32 scorer", {"reference_init": "checkpoint", "reference_pretrain_steps": 0}),
          "2": ("from the unfiltered pool", {"reference_init": "random", "reference_pretrain_steps": 200,
                                             "reference_pretrain_lr": 1e-3})}
SETTINGS = {"validation_fraction": 0.2, "validation_size": 1024, "compact_vocabulary": True, "validation_probes": 16}


def truth_scores(kind: np.ndarray, positions: torch.Tensor, members: tuple[int, ...]) -> torch.Tensor:
    """Scores whose softmax is uniform over the batch's members of the subset and zero elsewhere."""
    inside = torch.from_numpy(np.isin(kind[positions.numpy()], members))
    if not inside.any():
        raise SystemExit("a probe batch holds no example of a subset: use larger batches")
    return torch.where(inside, 0.0, -1e4).double()


def judge(demo, kind: np.ndarray, overrides: dict, run_dir: Path) -> dict:
    """Every true subset's validation gain (x 1, with its standard error) at one judge's state."""
    cfg = demo.train_config("m-flyt-demo", {**SETTINGS, **overrides})
    with torch_threads(2):
        trainer = Trainer(cfg, run_dir, progress=False)
        trainer._warm_start()
        state = trainer.judge
        adam = AdamState(state["exp_avg"], state["exp_avg_sq"], state["step"])
        out = {}
        for name, members in SUBSETS.items():
            scores = [truth_scores(kind, p["positions"], members) for p in trainer.validation.probes]
            out[name] = validation_gain(trainer.model, state["theta"], adam, trainer._ref_cfg(cfg.reference_lr),
                                        ZeroShotLoss(), trainer.validation, scores,
                                        micro_batch_size=cfg.micro_batch_size)
            shares = np.mean([float(np.isin(kind[p["positions"].numpy()], members).mean())
                              for p in trainer.validation.probes])
            out[name]["batch_share"] = float(shares)
            print(f"  {name:<46} {out[name]['val_gain'] * 1e4:+9.1f} ± {out[name]['val_gain_se'] * 1e4:5.1f}"
                  f"   (a step on {shares:.0%} of each batch)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judges", default="1,2", help="which judges: 1 (the b32 scorer's state), 2 (the unfiltered pool's)")
    ap.add_argument("--pool-dir", type=Path, help="a built v4 demo pool [the default demo pool]")
    ap.add_argument("--output", type=Path, help="write the gains as JSON")
    args = ap.parse_args()
    demo = open_pool_with_domains(args.pool_dir)
    kind = kinds_in_pool_order(demo, Pool(str(demo.metadata_dir), progress=False))
    print("kinds:", ", ".join(f"{i} {k}" for i, k in enumerate(KINDS)))
    result = {}
    for j in args.judges.split(","):
        label, overrides = JUDGES[j]
        print(f"judge {j}, {label}: validation gain x 1e4 of a step on each true subset of the probe batches")
        with tempfile.TemporaryDirectory() as tmp:
            result[label] = judge(demo, kind, overrides, Path(tmp))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
