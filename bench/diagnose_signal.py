"""Which examples FLYT's meta-gradient asks for, by their true kind, on the demo pool.

    python bench/diagnose_signal.py                                   # m-flyt-demo-all, its preset settings
    python bench/diagnose_signal.py --preset m-flyt-demo --steps 60 --set downstream_loss=ce_temp
    python bench/diagnose_signal.py --save signal.npz                 # also keep the per-example records

FLYT's premise is that the examples a model should train on to do well on the task receive the most
helpful signal. This trains a demo preset with the package's ``Trainer`` and, at every step, reads the
per-example meta-gradient of the upstream batch (``StepResult.grad_scores``, dL_down/ds_i) together
with the batch's weights w = softmax(s). Two per-example quantities are reported, both signed so that
positive means "the task asks for more of this example":

* help_i = -(dL_down/dw_i - sum_j w_j dL_down/dw_j) = -(dL_down/ds_i) / w_i: how much the downstream
  loss after the reference step falls when example i gets more weight, relative to the batch's
  weighted mean. It does not depend on i's own weight: it is the example's signal before the softmax;
* push_i = -B dL_down/ds_i = B w_i help_i: what the scoring model actually receives. Examples the
  model already weights down get little push either way.

Each is averaged over the steps of a window of the run, per true kind of example from
``truth.parquet`` (which training never reads): the task (a digit with its correct caption,
near-duplicates included), aligned not the task (letters, shapes, textures with correct captions),
a digit with a wrong caption, another domain with a wrong caption, clutter. Then, per mixing input,
the correlation over the window's examples of help and push with the standardised input.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from flyt_datacomp.demo import DemoPool, build_demo_pool
from flyt_datacomp.demo.domains import TARGET_DOMAIN
from flyt_datacomp.demo.report import read_truth, truth_categories
from flyt_datacomp.flyt.trainer import Trainer
from flyt_datacomp.pool import Pool
from flyt_datacomp.process import torch_threads
from flyt_datacomp.uids import hex_to_uids, lookup, uid_order

KINDS = ("the task", "aligned, not the task", "digit, wrong caption", "other, wrong caption", "clutter")


def kinds_in_pool_order(demo: DemoPool, pool: Pool) -> np.ndarray:
    """Each pool example's kind (an index into :data:`KINDS`), from truth.parquet."""
    truth = read_truth(demo.truth_path)
    uids = hex_to_uids(np.asarray(truth["uid"]), source=str(demo.truth_path))
    order = uid_order(uids)
    pos = lookup(uids[order], pool.uids)
    if (pos < 0).any():
        raise SystemExit(f"{demo.truth_path} lacks {int((pos < 0).sum())} of the pool's uids")
    cat = truth_categories(truth).astype(str)[order][pos]
    domain = np.char.partition(cat, "/")[:, 0]
    kind = np.full(len(cat), -1)
    kind[np.isin(cat, [f"{TARGET_DOMAIN}/correct", f"{TARGET_DOMAIN}/near_duplicate"])] = 0
    kind[(domain != TARGET_DOMAIN) & (np.char.endswith(cat, "/correct") | np.char.endswith(cat, "/near_duplicate"))] = 1
    kind[cat == f"{TARGET_DOMAIN}/wrong"] = 2
    kind[cat == "other/wrong"] = 3
    kind[cat == "clutter/clutter"] = 4
    if (kind < 0).any():
        raise SystemExit(f"unknown truth categories: {sorted(set(cat[kind < 0]))}")
    return kind


class Recorder:
    """The trainer's observer: per step, the batch's pool positions, scores and dL_down/ds."""

    def __init__(self):
        self.steps, self.positions, self.scores, self.grads = [], [], [], []

    def __call__(self, step, batch, scores, result) -> None:
        self.steps.append(np.full(len(scores), step))
        self.positions.append(batch["positions"].numpy())
        self.scores.append(scores.double().cpu().numpy())
        self.grads.append(result.grad_scores.double().cpu().numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {"step": np.concatenate(self.steps), "position": np.concatenate(self.positions),
                "score": np.concatenate(self.scores), "grad": np.concatenate(self.grads)}


def help_and_push(rec: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per record: help = -(dL/ds) / w and push = -B dL/ds, w the softmax of the step's scores."""
    step, score, grad = rec["step"], rec["score"], rec["grad"]
    w = np.empty_like(score)
    size = np.empty_like(score)
    for s in np.unique(step):
        m = step == s
        e = np.exp(score[m] - score[m].max())
        w[m] = e / e.sum()
        size[m] = m.sum()
    return -grad / w, -grad * size


def report(rec: dict[str, np.ndarray], kind: np.ndarray, inputs: dict[str, np.ndarray], windows) -> dict:
    help_, push = help_and_push(rec)
    k = kind[rec["position"]]
    out = {}
    for label, lo, hi in windows:
        m = (rec["step"] > lo) & (rec["step"] <= hi)
        row = {"steps": [int(lo) + 1, int(hi)], "examples": int(m.sum()), "kinds": {}, "inputs": {}}
        for i, name in enumerate(KINDS):
            mk = m & (k == i)
            if mk.any():
                row["kinds"][name] = {"share": float(mk.sum() / m.sum()), "help": float(help_[mk].mean()),
                                      "help_se": float(help_[mk].std() / np.sqrt(mk.sum())),
                                      "push": float(push[mk].mean()), "help_positive": float((help_[mk] > 0).mean())}
        for name, z in inputs.items():
            zi = z[rec["position"][m]]
            row["inputs"][name] = {"corr_help": float(np.corrcoef(zi, help_[m])[0, 1]),
                                   "corr_push": float(np.corrcoef(zi, push[m])[0, 1])}
        out[label] = row
    return out


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
    demo = DemoPool.open(args.pool_dir) if args.pool_dir else build_demo_pool(progress=False)
    if demo.version == "v3":
        raise SystemExit("a v3 pool has one domain: use a v4 pool")
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
    result = report(arrays, kind, inputs, windows)
    print(f"preset {args.preset}, overrides {overrides}")
    print_report(result)
    if args.save:
        np.savez(args.save, kind=kind, **arrays, **{f"z_{n}": v for n, v in inputs.items()})
        args.save.with_suffix(".json").write_text(json.dumps({"preset": args.preset, "overrides": overrides,
                                                              "report": result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
