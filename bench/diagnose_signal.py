"""Which examples FLYT's meta-gradient asks for, by their true kind, on the demo pool.

    python bench/diagnose_signal.py                                   # m-flyt-demo-all, its preset settings
    python bench/diagnose_signal.py --preset m-flyt-demo --steps 60 --set downstream_loss=ce_temp
    python bench/diagnose_signal.py --save signal.npz                 # also keep the per-example records

Trains a demo preset with the package's ``Trainer`` and a :class:`~flyt_datacomp.demo.signal.Recorder`
as its observer, then prints, per window of steps, what the meta-gradient asked of each true kind of
example (help: before the softmax; push: what the scoring model received; both positive when the task
asks for more) and how each standardised input correlates with them (``flyt_datacomp.demo.signal``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from flyt_datacomp.demo.signal import Recorder, kind_signal, kinds_in_pool_order, open_pool_with_domains
from flyt_datacomp.flyt.trainer import Trainer
from flyt_datacomp.pool import Pool
from flyt_datacomp.process import torch_threads


def print_report(result: dict) -> None:
    for label, row in result.items():
        print(f"\n{label} (steps {row['steps'][0]}-{row['steps'][1]}, {row['examples']:,} example draws)")
        print(f"{'kind':<24} {'share':>6} {'help (x1e3)':>14} {'push (x1e3)':>12} {'help > 0':>9}")
        for name, v in row["kinds"].items():
            print(f"{name:<24} {v['share']:6.1%} {v['help'] * 1e3:+8.3f} ±{v['help_se'] * 1e3:5.3f} "
                  f"{v['push'] * 1e3:+12.3f} {v['help_positive']:9.1%}")
        print(f"{'input':<28} {'corr(z, help)':>14} {'corr(z, push)':>14}")
        for name, v in row["inputs"].items():
            print(f"{name:<28} {v['corr_help']:+14.3f} {v['corr_push']:+14.3f}")


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="m-flyt-demo-all")
    ap.add_argument("--steps", type=int, help="train this many steps (default: the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a training option (repeatable; JSON values: --set scoring_lr=0.01)")
    ap.add_argument("--windows", type=int, default=3, help="report the run in this many windows of steps")
    ap.add_argument("--pool-dir", type=Path, help="a built v4 demo pool [the default demo pool]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads [1, as the benchmark's runs]")
    ap.add_argument("--run-dir", type=Path, help="the training run's folder [a temporary one]")
    ap.add_argument("--save", type=Path, help="write the per-example records (npz) and the report (json beside it)")
    args = ap.parse_args()
    demo = open_pool_with_domains(args.pool_dir)
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.steps:
        overrides["steps"] = args.steps
    overrides.setdefault("checkpoint_every", 10**9)
    cfg = demo.train_config(args.preset, overrides)
    pool = Pool(str(demo.metadata_dir), progress=False)
    kind = kinds_in_pool_order(demo, pool)
    rec = Recorder()
    with tempfile.TemporaryDirectory() as tmp, torch_threads(args.threads):
        trainer = Trainer(cfg, args.run_dir or tmp, progress=True, observer=rec)
        feats = trainer.features.arrays[0] if cfg.model == "m-flyt" else None
        trainer.run()
    arrays = rec.arrays()
    inputs = {}
    if feats is not None:
        z = (feats - feats.mean(0)) / feats.std(0)
        inputs = {n: z[:, i] for i, n in enumerate(cfg.inputs)}
    bounds = np.linspace(0, cfg.steps, args.windows + 1).round().astype(int)
    windows = [(f"window {i + 1} of {args.windows}", lo, hi) for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
    windows.append(("whole run", 0, cfg.steps))
    result = kind_signal(arrays, kind, inputs, windows)
    print(f"preset {args.preset}, overrides {overrides}")
    print_report(result)
    if args.save:
        np.savez(args.save, kind=kind, **arrays, **{f"z_{n}": v for n, v in inputs.items()})
        args.save.with_suffix(".json").write_text(json.dumps({"preset": args.preset, "overrides": overrides,
                                                              "report": result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
