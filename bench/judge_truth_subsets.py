"""FLYT's validation objective on ground-truth subsets of the demo pool, one step and n steps ahead.

    python bench/judge_truth_subsets.py                                  # both judges, one step, 16 probes
    python bench/judge_truth_subsets.py --judges 2 --horizon 1,5,20,50,100 --output horizon.json
    python bench/judge_truth_subsets.py --write-subsets truth/    # only write the subsets, for `benchmark --subset`

A judge (``bench/choose_demo_presets.py``) is a reference state with FLYT's objective on the held-out
validation digits. Here the weighting it judges is the ground truth's: a step on each batch's examples
of one true subset (``flyt_datacomp.demo.objective``). ``flyt-datacomp benchmark --subset`` measures the
same subsets (``--write-subsets`` writes them, and the whole pool, as subset files; ``bench/diagnose_horizon.py``
follows them along the benchmark's run); nothing here chooses anything.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from flyt_datacomp.demo.objective import SUBSETS, horizon_gains, one_step_gains
from flyt_datacomp.demo.signal import KINDS, kinds_in_pool_order, open_pool_with_domains
from flyt_datacomp.flyt.trainer import Trainer
from flyt_datacomp.io import write_json
from flyt_datacomp.pool import Pool
from flyt_datacomp.process import torch_threads
from flyt_datacomp.uids import write_subset

# the judges of the preset choice: the reference's two starting states (bench/choose_demo_presets.py)
JUDGES = {"1": ("from the b32 scorer", {"reference_init": "checkpoint", "reference_pretrain_steps": 0}),
          "2": ("from the unfiltered pool", {"reference_init": "random", "reference_pretrain_steps": 200,
                                             "reference_pretrain_lr": 1e-3})}
SETTINGS = {"validation_fraction": 0.2, "validation_size": 1024, "compact_vocabulary": True, "validation_probes": 16}


def write_subsets(pool: Pool, kind: np.ndarray, folder: Path) -> None:
    """Each true subset, and the whole pool, as a DataComp subset file (each example once)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, members in {**SUBSETS, "the whole pool": tuple(range(len(KINDS)))}.items():
        path = folder / (name.split(" (")[0].replace("'", "").replace(" + ", "_").replace(" ", "_") + ".npy")
        write_subset(path, pool.uids, np.isin(kind, members).astype(np.int64),
                     info={"rule": f"ground truth (truth.parquet): {name}"})
        print(f"{path}: {int(np.isin(kind, members).sum()):,} examples")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judges", default="1,2", help="which judges: 1 (the b32 scorer's state), 2 (the unfiltered pool's)")
    ap.add_argument("--horizon", help="step counts n (comma separated): the gain n steps ahead instead of one")
    ap.add_argument("--repeats", type=int, default=4, help="--horizon: independent sequences of batches")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (the reference's initialisation, the batches)")
    ap.add_argument("--pool-dir", type=Path, help="a built v4 demo pool [the default demo pool]")
    ap.add_argument("--output", type=Path, help="write the gains as JSON")
    ap.add_argument("--write-subsets", type=Path, metavar="DIR", help="only write the true subsets as subset files here")
    args = ap.parse_args()
    demo = open_pool_with_domains(args.pool_dir)
    pool = Pool(str(demo.metadata_dir), progress=False)
    kind = kinds_in_pool_order(demo, pool)
    if args.write_subsets:
        write_subsets(pool, kind, args.write_subsets)
        return
    print("kinds:", ", ".join(f"{i} {k}" for i, k in enumerate(KINDS)))
    result = {}
    for j in args.judges.split(","):
        label, overrides = JUDGES[j]
        cfg = demo.train_config("m-flyt-demo", {**SETTINGS, **overrides, "seed": args.seed}, progress=False)
        with tempfile.TemporaryDirectory() as tmp, torch_threads(2):
            trainer = Trainer(cfg, Path(tmp), progress=False)
            trainer._warm_start()
            if args.horizon:
                at = sorted({int(n) for n in args.horizon.split(",")})
                print(f"judge {j}, {label}: gain x 1e4 after n steps on each true subset, n = {at}")
                result[label] = got = horizon_gains(trainer, kind, at, args.repeats)
                for name in SUBSETS:
                    print(f"  {name:<46} " + "  ".join(f"{got[name][n]['gain'] * 1e4:+8.1f} ± "
                                                       f"{got[name][n]['se'] * 1e4:5.1f}" for n in at))
            else:
                print(f"judge {j}, {label}: validation gain x 1e4 of a step on each true subset of the probe batches")
                result[label] = got = one_step_gains(trainer, kind)
                for name, v in got.items():
                    print(f"  {name:<46} {v['val_gain'] * 1e4:+9.1f} ± {v['val_gain_se'] * 1e4:5.1f}"
                          f"   (a step on {v['batch_share']:.0%} of each batch)")
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
